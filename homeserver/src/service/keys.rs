//! End-to-end encryption support: device keys, one-time and fallback keys,
//! cross-signing keys and their signatures, the device-list change stream
//! and compromised keys.
//!
//! The server holds public keys only. Everything it is given is checked
//! before it is stored: the identity a key claims, its algorithms, and every
//! signature against the key that made it. A request that fails any check
//! stores nothing.

use std::collections::{BTreeMap, BTreeSet};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, DeviceId, OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId,
    OwnedUserId, UInt, UserId,
    encryption::{CrossSigningKey, DeviceKeys, OneTimeKey},
    serde::{Base64, Raw},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Services;
use crate::{
    err,
    error::{Error, Result},
    storage::{Batch, StorageError, codec, trees},
    util::now_ms,
};

/// Device-key algorithms a device may announce.
const KNOWN_ALGORITHMS: &[&str] =
    &["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2", "m.olm.v2.curve25519-aes-sha2", "m.megolm.v2.aes-sha2"];

/// The only one-time and fallback key algorithm: signed curve25519 keys.
const SIGNED_CURVE25519: &str = "signed_curve25519";

/// Cross-signing key usages, as stored.
pub const MASTER: &str = "master";
pub const SELF_SIGNING: &str = "self_signing";
pub const USER_SIGNING: &str = "user_signing";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FallbackKey {
    key_id: String,
    key: Value,
    used: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Compromised {
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
    ts: u64,
}

/// Users whose devices a syncing user must re-query, and users it no longer shares a room with.
#[derive(Debug, Default)]
pub struct DeviceListChanges {
    pub changed: BTreeSet<OwnedUserId>,
    pub left: BTreeSet<OwnedUserId>,
}

fn corrupt(tree: &'static str, e: impl std::fmt::Display) -> Error {
    StorageError::Corrupt { tree, reason: e.to_string() }.into()
}

fn device_key(user_id: &UserId, device_id: &DeviceId) -> Vec<u8> {
    codec::key(&[user_id.as_str().into(), device_id.as_str().into()])
}

fn device_prefix(user_id: &UserId, device_id: &DeviceId) -> Vec<u8> {
    codec::prefix(&[user_id.as_str().into(), device_id.as_str().into()])
}

/// Parses a client-supplied object as canonical JSON (integers in range, no floats).
fn canonical(json: &str, what: &str) -> Result<CanonicalJsonObject> {
    serde_json::from_str::<CanonicalJsonObject>(json).map_err(|e| err!(InvalidParam, "Invalid {what}: {e}"))
}

fn to_value(object: &CanonicalJsonObject) -> Value {
    serde_json::to_value(object).expect("canonical JSON serializes")
}

fn obj<'a>(o: &'a CanonicalJsonObject, field: &str) -> Option<&'a CanonicalJsonObject> {
    match o.get(field) {
        Some(CanonicalJsonValue::Object(m)) => Some(m),
        _ => None,
    }
}

fn string<'a>(o: &'a CanonicalJsonObject, field: &str) -> Option<&'a str> {
    match o.get(field) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

/// An unpadded-base64 ed25519 or curve25519 public key: 32 bytes.
fn is_public_key(s: &str) -> bool {
    Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(s).is_ok_and(|b| b.as_bytes().len() == 32)
}

/// Whether `object` carries a valid ed25519 signature by `signer`'s key `key_id`
/// (e.g. `ed25519:DEVICE`), made with `public_key` (unpadded base64).
pub fn signature_valid(object: &CanonicalJsonObject, signer: &str, key_id: &str, public_key: &str) -> bool {
    let Some(signature) = obj(object, "signatures").and_then(|s| obj(s, signer)).and_then(|s| string(s, key_id)) else {
        return false;
    };
    let (Ok(key), Ok(signature)) = (
        Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(public_key),
        Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(signature),
    ) else {
        return false;
    };
    let Ok(canonical) = ruma::signatures::to_canonical_json_string_for_signing(object) else { return false };
    ruma::signatures::verify_canonical_json_bytes(
        &ruma::SigningKeyAlgorithm::Ed25519,
        key.as_bytes(),
        signature.as_bytes(),
        canonical.as_bytes(),
    )
    .is_ok()
}

/// The object without `signatures` and `unsigned`: what a signature covers.
fn signed_part(object: &CanonicalJsonObject) -> CanonicalJsonObject {
    let mut o = object.clone();
    o.remove("signatures");
    o.remove("unsigned");
    o
}

/// Adds `signer`'s signature `key_id` → `sig` to `object`.
fn add_signature(object: &mut CanonicalJsonObject, signer: &str, key_id: &str, sig: &str) {
    let sigs = object.entry("signatures".into()).or_insert_with(|| CanonicalJsonValue::Object(Default::default()));
    if let CanonicalJsonValue::Object(sigs) = sigs {
        let by = sigs.entry(signer.into()).or_insert_with(|| CanonicalJsonValue::Object(Default::default()));
        if let CanonicalJsonValue::Object(by) = by {
            by.insert(key_id.into(), CanonicalJsonValue::String(sig.into()));
        }
    }
}

/// The ed25519 key of a stored device-keys object.
fn device_ed25519(keys: &CanonicalJsonObject, device_id: &str) -> Option<String> {
    obj(keys, "keys").and_then(|k| string(k, &format!("ed25519:{device_id}"))).map(str::to_owned)
}

/// A cross-signing key's one public key (`ed25519:<key>` → `<key>`).
fn cross_signing_public_key(key: &CanonicalJsonObject) -> Option<String> {
    let keys = obj(key, "keys")?;
    let mut it = keys.iter();
    let (id, value) = it.next()?;
    if it.next().is_some() {
        return None;
    }
    let CanonicalJsonValue::String(value) = value else { return None };
    (id.strip_prefix("ed25519:") == Some(value.as_str()) && is_public_key(value)).then(|| value.clone())
}

/// Checks a cross-signing key's shape: owner, usage and one ed25519 key.
fn check_cross_signing_key(user_id: &UserId, key: &CanonicalJsonObject, usage: &str) -> Result<String> {
    if string(key, "user_id") != Some(user_id.as_str()) {
        return Err(err!(InvalidParam, "The {usage} key's user_id is not the uploading user"));
    }
    let usages = match key.get("usage") {
        Some(CanonicalJsonValue::Array(a)) => a.clone(),
        _ => return Err(err!(InvalidParam, "The {usage} key has no usage")),
    };
    if !usages.iter().any(|u| matches!(u, CanonicalJsonValue::String(s) if s == usage)) {
        return Err(err!(InvalidParam, "The {usage} key does not declare the usage {usage:?}"));
    }
    cross_signing_public_key(key)
        .ok_or_else(|| err!(InvalidParam, "The {usage} key must hold exactly one ed25519 key named after itself"))
}

impl Services {
    // ----- reading -----

    pub fn device_keys(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<CanonicalJsonObject>> {
        let tree = self.db.tree(trees::USERDEVICEID_DEVICEKEYS)?;
        tree.get(&device_key(user_id, device_id))?
            .map(|b| serde_json::from_slice(&b).map_err(|e| corrupt(trees::USERDEVICEID_DEVICEKEYS, e)))
            .transpose()
    }

    fn all_device_keys(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, CanonicalJsonObject)>> {
        let tree = self.db.tree(trees::USERDEVICEID_DEVICEKEYS)?;
        let prefix = codec::prefix(&[user_id.as_str().into()]);
        let mut out = Vec::new();
        for item in tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let id = std::str::from_utf8(&k[prefix.len()..]).map_err(|e| corrupt(trees::USERDEVICEID_DEVICEKEYS, e))?;
            let keys = serde_json::from_slice(&v).map_err(|e| corrupt(trees::USERDEVICEID_DEVICEKEYS, e))?;
            out.push((OwnedDeviceId::from(id), keys));
        }
        Ok(out)
    }

    pub fn cross_signing_key(&self, user_id: &UserId, usage: &str) -> Result<Option<CanonicalJsonObject>> {
        let tree = self.db.tree(trees::USERUSAGE_CROSSSIGNINGKEY)?;
        tree.get(&codec::key(&[user_id.as_str().into(), usage.into()]))?
            .map(|b| serde_json::from_slice(&b).map_err(|e| corrupt(trees::USERUSAGE_CROSSSIGNINGKEY, e)))
            .transpose()
    }

    /// Unclaimed one-time keys of a device, per algorithm.
    pub fn one_time_key_counts(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
        let tree = self.db.tree(trees::USERDEVICEKEYID_ONETIMEKEY)?;
        let prefix = device_prefix(user_id, device_id);
        let mut counts: BTreeMap<OneTimeKeyAlgorithm, UInt> = BTreeMap::new();
        for item in tree.scan_prefix(&prefix) {
            let (k, _) = item?;
            let id =
                std::str::from_utf8(&k[prefix.len()..]).map_err(|e| corrupt(trees::USERDEVICEKEYID_ONETIMEKEY, e))?;
            let algorithm = id.split_once(':').map_or(id, |(a, _)| a);
            *counts.entry(algorithm.into()).or_default() += UInt::from(1u32);
        }
        // Clients top up from zero, so a known algorithm with no keys is reported as 0.
        counts.entry(SIGNED_CURVE25519.into()).or_default();
        Ok(counts)
    }

    /// Algorithms for which the device has a fallback key that was never handed out.
    pub fn unused_fallback_key_types(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Vec<OneTimeKeyAlgorithm>> {
        let tree = self.db.tree(trees::USERDEVICEALG_FALLBACKKEY)?;
        let prefix = device_prefix(user_id, device_id);
        let mut out = Vec::new();
        for item in tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let key: FallbackKey =
                serde_json::from_slice(&v).map_err(|e| corrupt(trees::USERDEVICEALG_FALLBACKKEY, e))?;
            if !key.used {
                let alg = std::str::from_utf8(&k[prefix.len()..])
                    .map_err(|e| corrupt(trees::USERDEVICEALG_FALLBACKKEY, e))?;
                out.push(alg.into());
            }
        }
        Ok(out)
    }

    fn is_compromised(&self, key: &str) -> Result<bool> {
        Ok(self.db.tree(trees::KEY_COMPROMISED)?.get(key.as_bytes())?.is_some())
    }

    // ----- uploading device, one-time and fallback keys -----

    /// `POST /keys/upload`: validates everything, then stores it in one write.
    pub async fn upload_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        device_keys: Option<&Raw<DeviceKeys>>,
        one_time_keys: &BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
        fallback_keys: &BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
    ) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
        let guard = self.locks.lock(user_id).await;
        let mut batch = Batch::new();
        let stored = self.device_keys(user_id, device_id)?;
        let mut identity_changed = false;

        let ed25519 = match device_keys {
            Some(raw) => {
                let keys = canonical(raw.json().get(), "device_keys")?;
                let ed25519 = self.check_device_keys(user_id, device_id, &keys, stored.as_ref())?;
                if stored.as_ref().map(signed_part) != Some(signed_part(&keys)) {
                    // New, or the same identity keys re-announced with other fields: keep the
                    // signatures others made of the stored version.
                    let mut merged = keys.clone();
                    if let Some(old) = &stored
                        && obj(old, "keys") == obj(&keys, "keys")
                        && let Some(sigs) = obj(old, "signatures")
                    {
                        for (signer, by) in sigs {
                            if let CanonicalJsonValue::Object(by) = by {
                                for (kid, sig) in by {
                                    if let CanonicalJsonValue::String(sig) = sig
                                        && signer != user_id.as_str()
                                    {
                                        add_signature(&mut merged, signer, kid, sig);
                                    }
                                }
                            }
                        }
                    }
                    merged.remove("unsigned");
                    batch.insert(
                        trees::USERDEVICEID_DEVICEKEYS,
                        device_key(user_id, device_id),
                        serde_json::to_vec(&merged).map_err(Error::internal)?,
                    );
                    identity_changed = true;
                }
                Some(ed25519)
            }
            None => stored.as_ref().and_then(|k| device_ed25519(k, device_id.as_str())),
        };

        if !one_time_keys.is_empty() || !fallback_keys.is_empty() {
            let Some(ed25519) = ed25519.as_deref() else {
                return Err(err!(InvalidParam, "Upload the device keys before one-time or fallback keys"));
            };
            let otk_tree = self.db.tree(trees::USERDEVICEKEYID_ONETIMEKEY)?;
            for (id, raw) in one_time_keys {
                let key = check_one_time_key(user_id, device_id, id, raw, ed25519)?;
                let k = codec::key(&[user_id.as_str().into(), device_id.as_str().into(), id.as_str().into()]);
                let bytes = serde_json::to_vec(&key).map_err(Error::internal)?;
                match otk_tree.get(&k)? {
                    Some(existing) if existing == bytes => {}
                    Some(_) => {
                        return Err(err!(
                            InvalidParam,
                            "One-time key {id} already exists with different content; key IDs cannot be reused"
                        ));
                    }
                    None => batch.insert(trees::USERDEVICEKEYID_ONETIMEKEY, k, bytes),
                }
            }
            let fallback_tree = self.db.tree(trees::USERDEVICEALG_FALLBACKKEY)?;
            let mut seen = BTreeSet::new();
            for (id, raw) in fallback_keys {
                let key = check_one_time_key(user_id, device_id, id, raw, ed25519)?;
                let algorithm = id.algorithm().to_string();
                if !seen.insert(algorithm.clone()) {
                    return Err(err!(InvalidParam, "More than one fallback key for {algorithm}"));
                }
                let k = codec::key(&[user_id.as_str().into(), device_id.as_str().into(), algorithm.as_str().into()]);
                let existing: Option<FallbackKey> = fallback_tree
                    .get(&k)?
                    .map(|b| serde_json::from_slice(&b).map_err(|e| corrupt(trees::USERDEVICEALG_FALLBACKKEY, e)))
                    .transpose()?;
                let value = to_value(&key);
                if existing.as_ref().is_some_and(|e| e.key_id == id.as_str() && e.key == value) {
                    continue; // the same key again: keep its used flag
                }
                let record = FallbackKey { key_id: id.to_string(), key: value, used: false };
                batch.insert(
                    trees::USERDEVICEALG_FALLBACKKEY,
                    k,
                    serde_json::to_vec(&record).map_err(Error::internal)?,
                );
            }
        }

        if identity_changed {
            let user = user_id.to_owned();
            self.rooms
                .commit_at_next_position(batch, Some(guard), move |stream, batch| {
                    record_key_change(batch, stream, &user)
                })
                .await?;
        } else if !batch.is_empty() {
            self.db.commit(batch).await?;
            drop(guard);
        }
        self.one_time_key_counts(user_id, device_id)
    }

    /// Validates uploaded device keys; returns their ed25519 key.
    fn check_device_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        keys: &CanonicalJsonObject,
        stored: Option<&CanonicalJsonObject>,
    ) -> Result<String> {
        if string(keys, "user_id") != Some(user_id.as_str()) || string(keys, "device_id") != Some(device_id.as_str()) {
            return Err(err!(
                Forbidden,
                "The device keys' user_id and device_id must be this session's user and device"
            ));
        }
        let algorithms = match keys.get("algorithms") {
            Some(CanonicalJsonValue::Array(a)) if !a.is_empty() => a,
            _ => return Err(err!(InvalidParam, "The device keys must list their algorithms")),
        };
        for a in algorithms {
            match a {
                CanonicalJsonValue::String(s) if KNOWN_ALGORITHMS.contains(&s.as_str()) => {}
                other => return Err(err!(InvalidParam, "Unknown encryption algorithm {other}")),
            }
        }
        let key_map = obj(keys, "keys").ok_or_else(|| err!(InvalidParam, "The device keys have no keys"))?;
        for (id, value) in key_map {
            let (algorithm, name) = id.split_once(':').unwrap_or((id.as_str(), ""));
            if !matches!(algorithm, "ed25519" | "curve25519") {
                return Err(err!(InvalidParam, "Unknown key algorithm in {id}"));
            }
            if name != device_id.as_str() {
                return Err(err!(InvalidParam, "Key {id} is not named after the device"));
            }
            match value {
                CanonicalJsonValue::String(k) if is_public_key(k) => {
                    if self.is_compromised(k)? {
                        return Err(err!(Forbidden, "Key {id} has been declared compromised and cannot be used"));
                    }
                }
                _ => return Err(err!(InvalidParam, "Key {id} is not a 32-byte unpadded base64 public key")),
            }
        }
        let ed25519 = device_ed25519(keys, device_id.as_str())
            .ok_or_else(|| err!(InvalidParam, "The device keys need an ed25519 key"))?;
        if string(key_map, &format!("curve25519:{device_id}")).is_none() {
            return Err(err!(InvalidParam, "The device keys need a curve25519 key"));
        }
        if !signature_valid(keys, user_id.as_str(), &format!("ed25519:{device_id}"), &ed25519) {
            return Err(err!(InvalidParam, "The device keys' self-signature does not verify"));
        }
        if let Some(old) = stored
            && obj(old, "keys") != Some(key_map)
        {
            return Err(err!(Forbidden, "This device's identity keys are already uploaded and cannot be replaced"));
        }
        Ok(ed25519)
    }

    // ----- querying and claiming -----

    /// `POST /keys/query` for local users, as `querier` sees them.
    pub fn query_keys(
        &self,
        querier: &UserId,
        wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<ruma::api::client::keys::get_keys::v3::Response> {
        let mut response = ruma::api::client::keys::get_keys::v3::Response::new();
        for (user_id, devices) in wanted {
            if self.remote_key_failure(user_id, &mut response.failures) {
                continue;
            }
            let records: BTreeMap<OwnedDeviceId, _> = self.sessions.devices(user_id)?.into_iter().collect();
            let mut out = BTreeMap::new();
            for (device_id, mut keys) in self.all_device_keys(user_id)? {
                if !devices.is_empty() && !devices.contains(&device_id) {
                    continue;
                }
                let Some(record) = records.get(&device_id) else { continue };
                self.merge_visible_signatures(querier, user_id, device_id.as_str(), &mut keys)?;
                let mut unsigned = CanonicalJsonObject::new();
                if let Some(name) = &record.display_name {
                    unsigned.insert("device_display_name".into(), CanonicalJsonValue::String(name.clone()));
                }
                keys.insert("unsigned".into(), CanonicalJsonValue::Object(unsigned));
                out.insert(device_id, Raw::from_json(to_raw(&keys)?));
            }
            response.device_keys.insert(user_id.clone(), out);
            for usage in [MASTER, SELF_SIGNING, USER_SIGNING] {
                if usage == USER_SIGNING && user_id != querier {
                    continue;
                }
                let Some(mut key) = self.cross_signing_key(user_id, usage)? else { continue };
                if let Some(pk) = cross_signing_public_key(&key) {
                    self.merge_visible_signatures(querier, user_id, &pk, &mut key)?;
                }
                let raw = Raw::from_json(to_raw(&key)?);
                match usage {
                    MASTER => response.master_keys.insert(user_id.clone(), raw),
                    SELF_SIGNING => response.self_signing_keys.insert(user_id.clone(), raw),
                    _ => response.user_signing_keys.insert(user_id.clone(), raw),
                };
            }
        }
        Ok(response)
    }

    /// For a user of another server, notes in `failures` that it cannot be
    /// asked (no federation yet) and returns true.
    fn remote_key_failure(&self, user_id: &UserId, failures: &mut BTreeMap<String, Value>) -> bool {
        if user_id.server_name().as_str() == self.config.server_name {
            return false;
        }
        failures.insert(
            user_id.server_name().to_string(),
            serde_json::json!({ "status": 503, "message": "Federation is not available" }),
        );
        true
    }

    /// Adds the signatures of `target`'s key `key_id` made by `querier` (only the signer sees them).
    fn merge_visible_signatures(
        &self,
        querier: &UserId,
        target: &UserId,
        key_id: &str,
        object: &mut CanonicalJsonObject,
    ) -> Result<()> {
        let tree = self.db.tree(trees::KEYSIGNER_SIGNATURE)?;
        let prefix = codec::prefix(&[target.as_str().into(), key_id.into(), querier.as_str().into()]);
        for item in tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let signer_key =
                std::str::from_utf8(&k[prefix.len()..]).map_err(|e| corrupt(trees::KEYSIGNER_SIGNATURE, e))?;
            let sig = std::str::from_utf8(&v).map_err(|e| corrupt(trees::KEYSIGNER_SIGNATURE, e))?;
            add_signature(object, querier.as_str(), signer_key, sig);
        }
        Ok(())
    }

    /// `POST /keys/claim`: hands out each one-time key once; then the fallback key.
    pub async fn claim_keys(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
    ) -> Result<ruma::api::client::keys::claim_keys::v3::Response> {
        let mut response = ruma::api::client::keys::claim_keys::v3::Response::new(BTreeMap::new());
        for (user_id, devices) in wanted {
            if self.remote_key_failure(user_id, &mut response.failures) {
                continue;
            }
            // One user at a time under that user's lock: a key read here is removed
            // before any other claim can read it.
            let _guard = self.locks.lock(user_id).await;
            let otks = self.db.tree(trees::USERDEVICEKEYID_ONETIMEKEY)?;
            let fallbacks = self.db.tree(trees::USERDEVICEALG_FALLBACKKEY)?;
            let mut batch = Batch::new();
            let mut claimed = BTreeMap::new();
            for (device_id, algorithm) in devices {
                let device_pfx = device_prefix(user_id, device_id);
                let mut alg_pfx = device_pfx.clone();
                alg_pfx.extend_from_slice(format!("{algorithm}:").as_bytes());
                let mut found = None;
                if let Some(item) = otks.scan_prefix(&alg_pfx).next() {
                    let (k, v) = item?;
                    let id = std::str::from_utf8(&k[device_pfx.len()..])
                        .map_err(|e| corrupt(trees::USERDEVICEKEYID_ONETIMEKEY, e))?
                        .to_owned();
                    let key: Value =
                        serde_json::from_slice(&v).map_err(|e| corrupt(trees::USERDEVICEKEYID_ONETIMEKEY, e))?;
                    batch.remove(trees::USERDEVICEKEYID_ONETIMEKEY, k);
                    found = Some((id, key));
                } else {
                    let k =
                        codec::key(&[user_id.as_str().into(), device_id.as_str().into(), algorithm.as_str().into()]);
                    if let Some(bytes) = fallbacks.get(&k)? {
                        let mut fb: FallbackKey =
                            serde_json::from_slice(&bytes).map_err(|e| corrupt(trees::USERDEVICEALG_FALLBACKKEY, e))?;
                        found = Some((fb.key_id.clone(), fb.key.clone()));
                        if !fb.used {
                            fb.used = true;
                            batch.insert(
                                trees::USERDEVICEALG_FALLBACKKEY,
                                k,
                                serde_json::to_vec(&fb).map_err(Error::internal)?,
                            );
                        }
                    }
                }
                if let Some((id, key)) = found {
                    let id = OwnedOneTimeKeyId::try_from(id.as_str())
                        .map_err(|e| corrupt(trees::USERDEVICEKEYID_ONETIMEKEY, e))?;
                    let raw: Raw<OneTimeKey> =
                        Raw::from_json(serde_json::value::to_raw_value(&key).map_err(Error::internal)?);
                    claimed.entry(device_id.clone()).or_insert_with(BTreeMap::new).insert(id, raw);
                }
            }
            if !batch.is_empty() {
                self.db.commit(batch).await?;
            }
            if !claimed.is_empty() {
                response.one_time_keys.insert(user_id.clone(), claimed);
            }
        }
        Ok(response)
    }

    // ----- cross-signing -----

    /// `POST /keys/device_signing/upload` (after user-interactive auth).
    pub async fn upload_signing_keys(
        &self,
        user_id: &UserId,
        master: Option<&Raw<CrossSigningKey>>,
        self_signing: Option<&Raw<CrossSigningKey>>,
        user_signing: Option<&Raw<CrossSigningKey>>,
    ) -> Result<()> {
        let guard = self.locks.lock(user_id).await;
        let parse =
            |raw: Option<&Raw<CrossSigningKey>>, usage: &str| -> Result<Option<(CanonicalJsonObject, String)>> {
                raw.map(|r| {
                    let key = canonical(r.json().get(), &format!("{usage} key"))?;
                    let pk = check_cross_signing_key(user_id, &key, usage)?;
                    Ok((key, pk))
                })
                .transpose()
            };
        let master = parse(master, MASTER)?;
        let self_signing = parse(self_signing, SELF_SIGNING)?;
        let user_signing = parse(user_signing, USER_SIGNING)?;
        if master.is_none() && self_signing.is_none() && user_signing.is_none() {
            return Err(err!(MissingParam, "No cross-signing key given"));
        }
        let master_pk = match &master {
            Some((_, pk)) => pk.clone(),
            None => self
                .cross_signing_key(user_id, MASTER)?
                .as_ref()
                .and_then(cross_signing_public_key)
                .ok_or_else(|| err!(InvalidParam, "Upload a master key first"))?,
        };
        for (key, usage) in [(&self_signing, SELF_SIGNING), (&user_signing, USER_SIGNING)] {
            if let Some((key, _)) = key
                && !signature_valid(key, user_id.as_str(), &format!("ed25519:{master_pk}"), &master_pk)
            {
                return Err(err!(InvalidParam, "The {usage} key is not signed by the master key"));
            }
        }
        for (_, pk) in [&master, &self_signing, &user_signing].into_iter().flatten() {
            if self.is_compromised(pk)? {
                return Err(err!(Forbidden, "Key {pk} has been declared compromised and cannot be used"));
            }
        }
        let mut batch = Batch::new();
        let replaced_master = master.is_some()
            && self.cross_signing_key(user_id, MASTER)?.as_ref().and_then(cross_signing_public_key).as_ref()
                != Some(&master_pk);
        for (key, usage) in
            [(master, MASTER), (self_signing.clone(), SELF_SIGNING), (user_signing.clone(), USER_SIGNING)]
        {
            let k = codec::key(&[user_id.as_str().into(), usage.into()]);
            match key {
                // The same key again (a retried upload) keeps the signatures stored with it.
                Some((key, _))
                    if self.cross_signing_key(user_id, usage)?.as_ref().map(signed_part) == Some(signed_part(&key)) => {
                }
                Some((mut key, _)) => {
                    key.remove("unsigned");
                    batch.insert(
                        trees::USERUSAGE_CROSSSIGNINGKEY,
                        k,
                        serde_json::to_vec(&key).map_err(Error::internal)?,
                    )
                }
                // A new master key invalidates subkeys it did not sign.
                None if replaced_master && usage != MASTER => batch.remove(trees::USERUSAGE_CROSSSIGNINGKEY, k),
                None => {}
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let user = user_id.to_owned();
        self.rooms
            .commit_at_next_position(batch, Some(guard), move |stream, batch| record_key_change(batch, stream, &user))
            .await?;
        Ok(())
    }

    /// Whether a cross-signing upload must pass user-interactive auth: it
    /// may skip it only when the user has no master key yet, or when it
    /// repeats exactly the keys already stored.
    pub fn signing_upload_needs_auth(
        &self,
        user_id: &UserId,
        master: Option<&Raw<CrossSigningKey>>,
        self_signing: Option<&Raw<CrossSigningKey>>,
        user_signing: Option<&Raw<CrossSigningKey>>,
    ) -> Result<bool> {
        if self.cross_signing_key(user_id, MASTER)?.is_none() {
            return Ok(false);
        }
        if master.is_none() {
            return Ok(true);
        }
        for (raw, usage) in [(master, MASTER), (self_signing, SELF_SIGNING), (user_signing, USER_SIGNING)] {
            let Some(raw) = raw else { continue };
            let Ok(new) = canonical(raw.json().get(), usage) else { return Ok(true) };
            if self.cross_signing_key(user_id, usage)?.as_ref().map(signed_part) != Some(signed_part(&new)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `POST /keys/signatures/upload`: verifies each signature against the
    /// signing key it names; returns failures per user and key.
    pub async fn upload_signatures(
        &self,
        uploader: &UserId,
        signed: &BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    ) -> Result<BTreeMap<OwnedUserId, BTreeMap<String, (String, String)>>> {
        let mut failures: BTreeMap<OwnedUserId, BTreeMap<String, (String, String)>> = BTreeMap::new();
        let mut changed = BTreeSet::new();
        let mut batch = Batch::new();
        let ssk = self.cross_signing_key(uploader, SELF_SIGNING)?.as_ref().and_then(cross_signing_public_key);
        let usk = self.cross_signing_key(uploader, USER_SIGNING)?.as_ref().and_then(cross_signing_public_key);
        for (target, keys) in signed {
            for (key_id, object) in keys {
                let result =
                    self.check_signature_upload(uploader, target, key_id, object, ssk.as_deref(), usk.as_deref());
                match result {
                    Ok(SignatureWrite::OwnKey { tree_key, tree, object }) => {
                        batch.insert(tree, tree_key, serde_json::to_vec(&object).map_err(Error::internal)?);
                        changed.insert(target.clone());
                    }
                    Ok(SignatureWrite::OtherUser { key, signature }) => {
                        batch.insert(trees::KEYSIGNER_SIGNATURE, key, signature.into_bytes());
                        changed.insert(target.clone());
                    }
                    Err(e) => {
                        let (_, body) = e.to_status_and_body();
                        let code = body["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned();
                        let message = body["error"].as_str().unwrap_or_default().to_owned();
                        failures.entry(target.clone()).or_default().insert(key_id.clone(), (code, message));
                    }
                }
            }
        }
        if !batch.is_empty() {
            self.rooms
                .commit_at_next_position(batch, None::<()>, move |stream, batch| {
                    for user in &changed {
                        record_key_change(batch, stream, user);
                    }
                })
                .await?;
        }
        Ok(failures)
    }

    fn check_signature_upload(
        &self,
        uploader: &UserId,
        target: &UserId,
        key_id: &str,
        object: &Value,
        ssk: Option<&str>,
        usk: Option<&str>,
    ) -> Result<SignatureWrite> {
        let object = canonical(&object.to_string(), "signed object")?;
        let new_sigs: Vec<(String, String)> = obj(&object, "signatures")
            .and_then(|s| obj(s, uploader.as_str()))
            .map(|by| {
                by.iter()
                    .filter_map(|(k, v)| match v {
                        CanonicalJsonValue::String(s) => Some((k.clone(), s.clone())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if new_sigs.is_empty() {
            return Err(err!(InvalidSignature, "No signature by {uploader} on {key_id}"));
        }
        let master = self.cross_signing_key(target, MASTER)?;
        let master_pk = master.as_ref().and_then(cross_signing_public_key);
        if target == uploader {
            if let Some(mut stored) = self.device_keys(target, key_id.into())? {
                // A device of the uploader, signed by the uploader's self-signing key.
                if signed_part(&stored) != signed_part(&object) {
                    return Err(err!(InvalidParam, "The signed device keys differ from the stored ones"));
                }
                let ssk = ssk.ok_or_else(|| err!(InvalidParam, "No self-signing key to verify with"))?;
                let kid = format!("ed25519:{ssk}");
                if !new_sigs.iter().any(|(k, _)| *k == kid) || !signature_valid(&object, uploader.as_str(), &kid, ssk) {
                    return Err(err!(InvalidSignature, "The signature by the self-signing key does not verify"));
                }
                let sig = new_sigs.iter().find(|(k, _)| *k == kid).map(|(_, s)| s.clone()).unwrap_or_default();
                add_signature(&mut stored, uploader.as_str(), &kid, &sig);
                return Ok(SignatureWrite::OwnKey {
                    tree: trees::USERDEVICEID_DEVICEKEYS,
                    tree_key: codec::key(&[target.as_str().into(), key_id.into()]),
                    object: stored,
                });
            }
            // The uploader's own master key, signed by one of their devices.
            let (Some(mut master), Some(master_pk)) = (master, master_pk) else {
                return Err(err!(NotFound, "Unknown key {key_id}"));
            };
            if key_id != master_pk {
                return Err(err!(NotFound, "Unknown key {key_id}"));
            }
            if signed_part(&master) != signed_part(&object) {
                return Err(err!(InvalidParam, "The signed master key differs from the stored one"));
            }
            let mut verified = false;
            for (kid, sig) in &new_sigs {
                let Some(device) = kid.strip_prefix("ed25519:") else { continue };
                let Some(device_keys) = self.device_keys(uploader, device.into())? else { continue };
                let Some(ed) = device_ed25519(&device_keys, device) else { continue };
                if signature_valid(&object, uploader.as_str(), kid, &ed) {
                    add_signature(&mut master, uploader.as_str(), kid, sig);
                    verified = true;
                }
            }
            if !verified {
                return Err(err!(InvalidSignature, "No signature by one of the uploader's devices verifies"));
            }
            return Ok(SignatureWrite::OwnKey {
                tree: trees::USERUSAGE_CROSSSIGNINGKEY,
                tree_key: codec::key(&[target.as_str().into(), MASTER.into()]),
                object: master,
            });
        }
        // Another user's master key, signed by the uploader's user-signing key.
        let (Some(master), Some(master_pk)) = (master, master_pk) else {
            return Err(err!(NotFound, "{target} has no master key"));
        };
        if key_id != master_pk {
            return Err(err!(InvalidParam, "Only another user's master key can be signed"));
        }
        if signed_part(&master) != signed_part(&object) {
            return Err(err!(InvalidParam, "The signed master key differs from the stored one"));
        }
        let usk = usk.ok_or_else(|| err!(InvalidParam, "No user-signing key to verify with"))?;
        let kid = format!("ed25519:{usk}");
        let Some((_, sig)) = new_sigs.iter().find(|(k, _)| *k == kid) else {
            return Err(err!(InvalidSignature, "No signature by the user-signing key"));
        };
        if !signature_valid(&object, uploader.as_str(), &kid, usk) {
            return Err(err!(InvalidSignature, "The signature by the user-signing key does not verify"));
        }
        Ok(SignatureWrite::OtherUser {
            key: codec::key(&[target.as_str().into(), key_id.into(), uploader.as_str().into(), kid.as_str().into()]),
            signature: sig.clone(),
        })
    }

    // ----- device removal, compromise and the change stream -----

    /// Adds the removal of a device's keys and pending to-device messages to `batch`.
    pub fn remove_device_keys_batch(&self, user_id: &UserId, device_id: &DeviceId, batch: &mut Batch) -> Result<()> {
        batch.remove(trees::USERDEVICEID_DEVICEKEYS, device_key(user_id, device_id));
        let prefix = device_prefix(user_id, device_id);
        for tree in
            [trees::USERDEVICEKEYID_ONETIMEKEY, trees::USERDEVICEALG_FALLBACKKEY, trees::USERDEVICESTREAM_TODEVICE]
        {
            for item in self.db.tree(tree)?.scan_prefix(&prefix) {
                let (k, _) = item?;
                batch.remove(tree, k);
            }
        }
        Ok(())
    }

    /// Declares a device's identity keys compromised: they are refused from
    /// now on, the device is logged out and its keys withdrawn, and the
    /// change is announced to everyone sharing a room with the user.
    pub async fn compromise_device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Vec<String>> {
        let keys = self.device_keys(user_id, device_id)?;
        let device = self.sessions.device(user_id, device_id)?;
        if keys.is_none() && device.is_none() {
            return Err(err!(NotFound, "No such device {device_id} of {user_id}"));
        }
        let mut marked = Vec::new();
        let mut batch = Batch::new();
        if let Some(key_map) = keys.as_ref().and_then(|k| obj(k, "keys")) {
            for value in key_map.values() {
                if let CanonicalJsonValue::String(k) = value {
                    let record =
                        Compromised { user_id: user_id.to_owned(), device_id: device_id.to_owned(), ts: now_ms() };
                    batch.insert(
                        trees::KEY_COMPROMISED,
                        k.as_bytes().to_vec(),
                        serde_json::to_vec(&record).map_err(Error::internal)?,
                    );
                    marked.push(k.clone());
                }
            }
        }
        self.remove_devices(user_id, DeviceSelection::One(device_id), batch).await?;
        tracing::warn!(user = %user_id, device = %device_id, keys = marked.len(), "device keys declared compromised");
        Ok(marked)
    }

    /// Removes devices with their tokens, keys and to-device messages in one
    /// write, plus whatever `batch` already holds, and announces the change.
    pub async fn remove_devices(&self, user_id: &UserId, which: DeviceSelection<'_>, mut batch: Batch) -> Result<()> {
        let guard = self.locks.lock(user_id).await;
        let removed = self.remove_devices_batch(user_id, which, &mut batch)?;
        self.commit_device_removal(user_id, batch, guard, !removed.is_empty()).await
    }

    /// The writes that remove devices (the caller holds the user's lock).
    pub fn remove_devices_batch(
        &self,
        user_id: &UserId,
        which: DeviceSelection<'_>,
        batch: &mut Batch,
    ) -> Result<Vec<OwnedDeviceId>> {
        let ids: Vec<OwnedDeviceId> = match which {
            DeviceSelection::One(id) => vec![id.to_owned()],
            DeviceSelection::List(ids) => ids.to_vec(),
            DeviceSelection::AllExcept(keep) => self
                .sessions
                .devices(user_id)?
                .into_iter()
                .map(|(id, _)| id)
                .filter(|id| Some(id.as_ref()) != keep)
                .collect(),
        };
        let mut removed = Vec::new();
        for id in ids {
            let had_device = self.sessions.remove_device_batch(user_id, &id, batch)?;
            let had_keys = self.device_keys(user_id, &id)?.is_some();
            if had_device || had_keys {
                self.remove_device_keys_batch(user_id, &id, batch)?;
                removed.push(id);
            }
        }
        Ok(removed)
    }

    /// Every user who shares a joined room with `user_id` (as a joined or invited member), and the user.
    pub fn users_sharing_rooms(&self, user_id: &UserId) -> Result<BTreeSet<OwnedUserId>> {
        let mut out = BTreeSet::new();
        out.insert(user_id.to_owned());
        for (room_id, record) in self.rooms.user_rooms(user_id)? {
            if record.membership != "join" {
                continue;
            }
            for (member, membership) in self.rooms.members(&room_id)? {
                if membership == "join" || membership == "invite" {
                    out.insert(member);
                }
            }
        }
        Ok(out)
    }

    /// Whose devices `user_id` must re-query after `since`, up to `upto`:
    /// users whose keys changed and who share a room, users who started
    /// sharing a room, and users who no longer share any.
    pub fn device_list_changes(&self, user_id: &UserId, since: u64, upto: u64) -> Result<DeviceListChanges> {
        let mut out = DeviceListChanges::default();
        if upto <= since {
            return Ok(out);
        }
        // First the candidates, cheaply; who shares a room is only worked out
        // when there is one (most syncs have none).
        let mut key_changed = Vec::new();
        let tree = self.db.tree(trees::STREAMUSER_KEYCHANGE)?;
        let from = codec::u64_bytes(since + 1);
        let to = codec::u64_bytes(upto + 1);
        for item in tree.range(&from, Some(&to), false) {
            let (k, _) = item?;
            let user = std::str::from_utf8(&k[9..]).map_err(|e| corrupt(trees::STREAMUSER_KEYCHANGE, e))?;
            if let Ok(user) = UserId::parse(user) {
                key_changed.push(user);
            }
        }
        // (room, member) pairs whose membership changed, and rooms joined or left since `since`.
        let mut member_changes = Vec::new();
        let mut joined_rooms = Vec::new();
        let mut left_rooms = Vec::new();
        for (room_id, record) in self.rooms.user_rooms(user_id)? {
            match record.membership.as_str() {
                "join" if record.stream > since => joined_rooms.push(room_id),
                "join" => {
                    for (_, pdu) in self.rooms.timeline(&room_id, since + 1, upto + 1, false, usize::MAX)? {
                        if pdu.kind.to_string() != "m.room.member" {
                            continue;
                        }
                        if let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
                            && target != user_id
                        {
                            member_changes.push((room_id.clone(), target));
                        }
                    }
                }
                "leave" | "ban" if record.stream > since => left_rooms.push(room_id),
                _ => {}
            }
        }
        if key_changed.is_empty() && member_changes.is_empty() && joined_rooms.is_empty() && left_rooms.is_empty() {
            return Ok(out);
        }

        let sharing = self.users_sharing_rooms(user_id)?;
        out.changed.extend(key_changed.into_iter().filter(|u| sharing.contains(u)));
        for room_id in joined_rooms {
            // Newly joined: every member's devices are new to this user.
            for (member, membership) in self.rooms.members(&room_id)? {
                if member != user_id && (membership == "join" || membership == "invite") {
                    out.changed.insert(member);
                }
            }
        }
        for (room_id, target) in member_changes {
            if sharing.contains(&target) {
                let now = self.rooms.membership(&target, &room_id)?;
                if now.is_some_and(|m| m.membership == "join" || m.membership == "invite") {
                    out.changed.insert(target);
                }
            } else {
                out.left.insert(target);
            }
        }
        for room_id in left_rooms {
            for (member, _) in self.rooms.members(&room_id)? {
                if !sharing.contains(&member) {
                    out.left.insert(member);
                }
            }
        }
        out.left.retain(|u| !sharing.contains(u));
        for u in &out.left {
            out.changed.remove(u);
        }
        Ok(out)
    }
}

/// Which devices to remove.
#[derive(Debug, Clone, Copy)]
pub enum DeviceSelection<'a> {
    One(&'a DeviceId),
    List(&'a [OwnedDeviceId]),
    /// Every device except the given one (all when `None`).
    AllExcept(Option<&'a DeviceId>),
}

enum SignatureWrite {
    /// The uploader's own device keys or master key with a new signature merged in.
    OwnKey { tree: &'static str, tree_key: Vec<u8>, object: CanonicalJsonObject },
    /// The uploader's signature of another user's master key.
    OtherUser { key: Vec<u8>, signature: String },
}

/// Notes that `user_id`'s devices or keys changed at `stream`.
pub fn record_key_change(batch: &mut Batch, stream: u64, user_id: &UserId) {
    batch.insert(trees::STREAMUSER_KEYCHANGE, codec::key(&[stream.into(), user_id.as_str().into()]), Vec::new());
}

fn to_raw(object: &CanonicalJsonObject) -> Result<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(object).map_err(Error::internal)
}

/// Validates one uploaded one-time or fallback key: `signed_curve25519:<id>`
/// with a 32-byte key signed by the device's ed25519 key.
fn check_one_time_key(
    user_id: &UserId,
    device_id: &DeviceId,
    id: &OwnedOneTimeKeyId,
    raw: &Raw<OneTimeKey>,
    ed25519: &str,
) -> Result<CanonicalJsonObject> {
    if id.algorithm().as_str() != SIGNED_CURVE25519 {
        return Err(err!(InvalidParam, "Unsupported one-time key algorithm in {id}; use signed_curve25519"));
    }
    let key = canonical(raw.json().get(), "one-time key")
        .map_err(|_| err!(InvalidParam, "One-time key {id} must be a signed key object"))?;
    if !string(&key, "key").is_some_and(is_public_key) {
        return Err(err!(InvalidParam, "One-time key {id} is not a 32-byte unpadded base64 key"));
    }
    if !signature_valid(&key, user_id.as_str(), &format!("ed25519:{device_id}"), ed25519) {
        return Err(err!(InvalidParam, "One-time key {id} is not signed by this device's ed25519 key"));
    }
    let mut key = key;
    key.remove("unsigned");
    Ok(key)
}
