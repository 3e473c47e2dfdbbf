//! Device tracking: the devices of other users as `/keys/query` returns
//! them, accepted only when their self-signature verifies and their identity
//! keys never change.

use std::collections::BTreeMap;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};

use super::error::RefusalReason;
use super::requests::UserDevice;

use crate::device::canonical;

/// A device of a user, accepted from a `/keys/query` response after its
/// self-signature verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedDevice {
    /// The owner of the device.
    pub user_id: OwnedUserId,
    /// The device ID.
    pub device_id: OwnedDeviceId,
    /// The device's Ed25519 fingerprint key, unpadded base64.
    pub ed25519: String,
    /// The device's Curve25519 identity key, unpadded base64.
    pub curve25519: String,
    /// The encryption algorithms the device supports.
    pub algorithms: Vec<String>,
    /// The display name from the `unsigned` part, if any (not signed).
    pub display_name: Option<String>,
}

impl TrackedDevice {
    /// Reads a signed `DeviceKeys` object that the server returned as device
    /// `device_id` of `user_id`, and checks it: the IDs inside must match, it
    /// must carry an Ed25519 and a Curve25519 key, and it must be signed by
    /// its own Ed25519 key.
    pub fn from_device_keys(user_id: &UserId, device_id: &DeviceId, keys: &Value) -> Result<Self, RefusalReason> {
        let user_matches = keys["user_id"].as_str() == Some(user_id.as_str());
        let device_matches = keys["device_id"].as_str() == Some(device_id.as_str());
        if !user_matches || !device_matches {
            return Err(RefusalReason::IdMismatch);
        }
        let ed25519 = keys["keys"][format!("ed25519:{device_id}")].as_str().ok_or(RefusalReason::MissingKeys)?;
        let curve25519 = keys["keys"][format!("curve25519:{device_id}")].as_str().ok_or(RefusalReason::MissingKeys)?;
        if Ed25519PublicKey::from_base64(ed25519).is_err() || Curve25519PublicKey::from_base64(curve25519).is_err() {
            return Err(RefusalReason::MissingKeys);
        }
        if !verify_signature(keys, user_id.as_str(), device_id.as_str(), ed25519) {
            return Err(RefusalReason::BadSignature);
        }
        let algorithms = keys["algorithms"]
            .as_array()
            .map(|list| list.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Self {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            ed25519: ed25519.to_owned(),
            curve25519: curve25519.to_owned(),
            algorithms,
            display_name: keys["unsigned"]["device_display_name"].as_str().map(str::to_owned),
        })
    }

    /// Whether the device lists `algorithm` among the ones it supports.
    pub fn supports(&self, algorithm: &str) -> bool {
        self.algorithms.iter().any(|supported| supported.as_str() == algorithm)
    }
}

/// A device from a `/keys/query` response that was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedDevice {
    /// The owner of the device.
    pub user_id: OwnedUserId,
    /// The device ID.
    pub device_id: OwnedDeviceId,
    /// Why it was refused.
    pub reason: RefusalReason,
}

/// Checks the signature `signatures.<user_id>.ed25519:<device_id>` of a
/// signed JSON object against an Ed25519 key, over the object's canonical
/// JSON without `signatures` and `unsigned`.
pub(crate) fn verify_signature(object: &Value, user_id: &str, device_id: &str, ed25519: &str) -> bool {
    let key_id = format!("ed25519:{device_id}");
    let Some(signature) = object["signatures"][user_id][key_id].as_str() else { return false };
    let Ok(key) = Ed25519PublicKey::from_base64(ed25519) else { return false };
    let Ok(signature) = Ed25519Signature::from_base64(signature) else { return false };
    let Ok(text) = canonical(object) else { return false };
    key.verify(text.as_bytes(), &signature).is_ok()
}

/// This device's own identity, so that a `/keys/query` response about it
/// can be checked rather than stored.
pub(crate) struct OwnKeys<'a> {
    pub(crate) user_id: &'a UserId,
    pub(crate) device_id: &'a DeviceId,
    pub(crate) ed25519: String,
    pub(crate) curve25519: String,
}

/// What a `/keys/query` response changed for one user.
#[derive(Default)]
pub(crate) struct QueryChanges {
    pub(crate) refused: Vec<RefusedDevice>,
    pub(crate) removed: Vec<UserDevice>,
}

/// The device list of one user and the tracking flags the spec describes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct UserDevices {
    devices: BTreeMap<OwnedDeviceId, TrackedDevice>,
    /// Whether the machine keeps this user's device list up to date.
    tracked: bool,
    /// Whether the list must be queried again.
    outdated: bool,
    /// Bumped whenever the list becomes outdated, so that a query that was
    /// already in flight does not clear a newer `outdated` flag.
    generation: u64,
}

/// The device lists of all users the machine knows about.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DeviceStore {
    users: BTreeMap<OwnedUserId, UserDevices>,
}

impl DeviceStore {
    /// Starts tracking a user; a newly tracked user is outdated.
    pub(crate) fn track(&mut self, user_id: &UserId) {
        let user = self.users.entry(user_id.to_owned()).or_default();
        if !user.tracked {
            user.tracked = true;
            user.outdated = true;
            user.generation += 1;
        }
    }

    /// `device_lists.changed`: a tracked user's list is outdated.
    pub(crate) fn mark_changed(&mut self, user_id: &UserId) {
        if let Some(user) = self.users.get_mut(user_id)
            && user.tracked
        {
            user.outdated = true;
            user.generation += 1;
        }
    }

    /// `device_lists.left`: the user is no longer tracked. The devices are
    /// kept, but will be queried again if the user is tracked again.
    pub(crate) fn mark_left(&mut self, user_id: &UserId) {
        if let Some(user) = self.users.get_mut(user_id) {
            user.tracked = false;
        }
    }

    /// Whether the user's device list cannot be relied on: untracked or
    /// outdated.
    pub(crate) fn is_outdated(&self, user_id: &UserId) -> bool {
        self.users.get(user_id).is_none_or(|user| !user.tracked || user.outdated)
    }

    /// The tracked users whose list is outdated, with their generation.
    pub(crate) fn outdated_users(&self) -> Vec<(OwnedUserId, u64)> {
        self.users
            .iter()
            .filter(|(_, user)| user.tracked && user.outdated)
            .map(|(user_id, user)| (user_id.clone(), user.generation))
            .collect()
    }

    /// The known devices of a user.
    pub(crate) fn devices(&self, user_id: &UserId) -> Vec<&TrackedDevice> {
        self.users.get(user_id).map(|user| user.devices.values().collect()).unwrap_or_default()
    }

    /// One known device.
    pub(crate) fn get(&self, user_id: &UserId, device_id: &DeviceId) -> Option<&TrackedDevice> {
        self.users.get(user_id)?.devices.get(device_id)
    }

    /// The known device of `user_id` that owns a Curve25519 key.
    pub(crate) fn find_by_curve25519(&self, user_id: &UserId, curve25519: &str) -> Option<&TrackedDevice> {
        self.users.get(user_id)?.devices.values().find(|device| device.curve25519 == curve25519)
    }

    /// A `/keys/query` for the user failed on the server side: the list
    /// stays as it is, and is not asked for again until it changes.
    pub(crate) fn query_failed(&mut self, user_id: &UserId, generation: u64) {
        if let Some(user) = self.users.get_mut(user_id)
            && user.generation == generation
        {
            user.outdated = false;
        }
    }

    /// Applies the devices a `/keys/query` response returned for a user.
    ///
    /// New devices are accepted when their self-signature verifies. A device
    /// seen before keeps the identity keys it had: a response with other keys
    /// (or a bad signature) is refused and the old entry kept. Devices absent
    /// from the response are removed. This device itself is never stored, but
    /// refused when the server returns other keys for it.
    pub(crate) fn apply_query(
        &mut self,
        user_id: &UserId,
        generation: u64,
        response: &Map<String, Value>,
        own: &OwnKeys<'_>,
    ) -> QueryChanges {
        let mut changes = QueryChanges::default();
        let user = self.users.entry(user_id.to_owned()).or_default();
        let mut devices = BTreeMap::new();
        for (device_id, keys) in response {
            let device_id = <&DeviceId>::from(device_id.as_str());
            let refuse =
                |reason| RefusedDevice { user_id: user_id.to_owned(), device_id: device_id.to_owned(), reason };
            if user_id.as_str() == own.user_id.as_str() && device_id.as_str() == own.device_id.as_str() {
                let ours = TrackedDevice::from_device_keys(user_id, device_id, keys)
                    .is_ok_and(|device| device.ed25519 == own.ed25519 && device.curve25519 == own.curve25519);
                if !ours {
                    changes.refused.push(refuse(RefusalReason::NotOurKeys));
                }
                continue;
            }
            let known = user.devices.get(device_id);
            match TrackedDevice::from_device_keys(user_id, device_id, keys) {
                Ok(device) => match known {
                    Some(old) if old.ed25519 != device.ed25519 || old.curve25519 != device.curve25519 => {
                        changes.refused.push(refuse(RefusalReason::KeysChanged));
                        devices.insert(device_id.to_owned(), old.clone());
                    }
                    _ => {
                        devices.insert(device_id.to_owned(), device);
                    }
                },
                Err(reason) => {
                    changes.refused.push(refuse(reason));
                    if let Some(old) = known {
                        devices.insert(device_id.to_owned(), old.clone());
                    }
                }
            }
        }
        for device_id in user.devices.keys() {
            if !devices.contains_key(device_id) {
                changes.removed.push((user_id.to_owned(), device_id.clone()));
            }
        }
        user.devices = devices;
        if user.generation == generation {
            user.outdated = false;
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use ruma::{device_id, user_id};
    use serde_json::json;

    use super::*;
    use crate::device::DeviceIdentity;

    #[test]
    fn self_signed_device_keys_are_accepted_and_tampered_ones_refused() {
        let identity = DeviceIdentity::new();
        let alice = user_id!("@alice:example.org");
        let keys = identity.device_keys(alice, device_id!("DEV")).unwrap();

        let device = TrackedDevice::from_device_keys(alice, device_id!("DEV"), &keys).unwrap();
        assert_eq!(device.ed25519, identity.ed25519());
        assert_eq!(device.curve25519, identity.curve25519());
        assert!(device.supports("m.megolm.v1.aes-sha2"));

        // Listed under another device ID or user: refused.
        assert_eq!(TrackedDevice::from_device_keys(alice, device_id!("OTHER"), &keys), Err(RefusalReason::IdMismatch));
        assert_eq!(
            TrackedDevice::from_device_keys(user_id!("@bob:example.org"), device_id!("DEV"), &keys),
            Err(RefusalReason::IdMismatch)
        );

        // A swapped Curve25519 key breaks the self-signature.
        let mut tampered = keys.clone();
        tampered["keys"]["curve25519:DEV"] = json!(DeviceIdentity::new().curve25519());
        assert_eq!(
            TrackedDevice::from_device_keys(alice, device_id!("DEV"), &tampered),
            Err(RefusalReason::BadSignature)
        );

        // No keys at all.
        let mut keyless = keys.clone();
        keyless["keys"] = json!({});
        assert_eq!(
            TrackedDevice::from_device_keys(alice, device_id!("DEV"), &keyless),
            Err(RefusalReason::MissingKeys)
        );

        // The unsigned display name does not take part in the signature.
        let mut named = keys;
        named["unsigned"] = json!({ "device_display_name": "Alice's laptop" });
        let named = TrackedDevice::from_device_keys(alice, device_id!("DEV"), &named).unwrap();
        assert_eq!(named.display_name.as_deref(), Some("Alice's laptop"));
    }

    #[test]
    fn a_query_in_flight_does_not_clear_a_newer_outdated_flag() {
        let mut store = DeviceStore::default();
        let bob = user_id!("@bob:example.org");
        store.track(bob);
        let (_, generation) = store.outdated_users().pop().unwrap();
        // Bob's devices change while the query is in flight.
        store.mark_changed(bob);
        let own = OwnKeys {
            user_id: user_id!("@alice:example.org"),
            device_id: device_id!("ALICE"),
            ed25519: String::new(),
            curve25519: String::new(),
        };
        store.apply_query(bob, generation, &Map::new(), &own);
        assert!(store.is_outdated(bob));
        let (_, newer) = store.outdated_users().pop().unwrap();
        store.apply_query(bob, newer, &Map::new(), &own);
        assert!(!store.is_outdated(bob));
    }
}
