//! Devices and their sessions: access tokens (256-bit random, stored only as
//! SHA-256 hashes), refresh tokens, expiry, last-seen tracking.

use std::sync::Arc;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use super::locks::UserLocks;
use crate::{
    config::Config,
    error::{Error, ErrorKind, Result},
    storage::{Batch, Db, StorageError, codec, trees},
    util::{now_ms, random_token},
};

/// A device of a user, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    pub display_name: Option<String>,
    pub last_seen_ip: Option<String>,
    pub last_seen_ts: Option<u64>,
    pub created_ts: u64,
    /// Hex SHA-256 of the current access token.
    pub access_token_hash: String,
    /// Hex SHA-256 of the current refresh token, if the device has one.
    pub refresh_token_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
    /// Milliseconds since the epoch after which the access token is expired.
    expires_at: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshSession {
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
}

/// Tokens handed to a client.
#[derive(Debug, Clone)]
pub struct Issued {
    pub device_id: OwnedDeviceId,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in_ms: Option<u64>,
}

/// The outcome of looking up an access token.
#[derive(Debug, Clone)]
pub enum TokenStatus {
    Valid {
        user_id: OwnedUserId,
        device_id: OwnedDeviceId,
    },
    /// The token existed but expired; a refresh token can renew the session.
    Expired {
        user_id: OwnedUserId,
    },
    Unknown,
}

pub struct Service {
    config: Arc<Config>,
    db: Db,
    locks: Arc<UserLocks>,
}

fn token_hash(token: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

fn device_key(user_id: &UserId, device_id: &DeviceId) -> Vec<u8> {
    codec::key(&[user_id.as_str().into(), device_id.as_str().into()])
}

fn decode<T: for<'de> Deserialize<'de>>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt { tree, reason: e.to_string() }.into())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

/// A new device ID: ten upper-case letters, like other servers hand out.
pub fn generate_device_id() -> OwnedDeviceId {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let id: String = (0..10).map(|_| rng.gen_range(b'A'..=b'Z') as char).collect();
    id.into()
}

impl Service {
    pub fn new(config: Arc<Config>, db: Db, locks: Arc<UserLocks>) -> Self {
        Self { config, db, locks }
    }

    pub fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<Device>> {
        let tree = self.db.tree(trees::USERDEVICEID_DEVICE)?;
        tree.get(&device_key(user_id, device_id))?.map(|b| decode(trees::USERDEVICEID_DEVICE, &b)).transpose()
    }

    pub fn devices(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, Device)>> {
        let tree = self.db.tree(trees::USERDEVICEID_DEVICE)?;
        let prefix = codec::prefix(&[user_id.as_str().into()]);
        let mut out = Vec::new();
        for item in tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let id = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|_| StorageError::Corrupt { tree: trees::USERDEVICEID_DEVICE, reason: "bad key".into() })?;
            out.push((OwnedDeviceId::from(id), decode(trees::USERDEVICEID_DEVICE, &v)?));
        }
        Ok(out)
    }

    /// Removes a device and its tokens (writes added to `batch`; the caller holds the user's lock).
    pub fn remove_device_batch(&self, user_id: &UserId, device_id: &DeviceId, batch: &mut Batch) -> Result<bool> {
        let Some(device) = self.device(user_id, device_id)? else { return Ok(false) };
        self.remove_tokens(&device, batch);
        batch.remove(trees::USERDEVICEID_DEVICE, device_key(user_id, device_id));
        Ok(true)
    }

    fn remove_tokens(&self, device: &Device, batch: &mut Batch) {
        if let Ok(h) = hex::decode(&device.access_token_hash) {
            batch.remove(trees::TOKENHASH_SESSION, h);
        }
        if let Some(h) = device.refresh_token_hash.as_ref().and_then(|h| hex::decode(h).ok()) {
            batch.remove(trees::REFRESHHASH_SESSION, h);
        }
    }

    fn new_tokens(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        with_refresh: bool,
        batch: &mut Batch,
    ) -> (Issued, String, Option<String>) {
        let access_token = random_token("hat_");
        let access_hash = token_hash(&access_token);
        let (refresh_token, refresh_hash, expires_in_ms) = if with_refresh {
            let t = random_token("hrt_");
            let h = token_hash(&t);
            let lifetime = self.config.auth.access_token_lifetime_secs * 1000;
            let rs = RefreshSession { user_id: user_id.to_owned(), device_id: device_id.to_owned() };
            batch.insert(trees::REFRESHHASH_SESSION, h.clone(), encode(&rs));
            (Some(t), Some(hex::encode(h)), Some(lifetime))
        } else {
            (None, None, None)
        };
        let session = Session {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            expires_at: expires_in_ms.map(|ms| now_ms() + ms),
        };
        batch.insert(trees::TOKENHASH_SESSION, access_hash.clone(), encode(&session));
        (
            Issued { device_id: device_id.to_owned(), access_token, refresh_token, expires_in_ms },
            hex::encode(access_hash),
            refresh_hash,
        )
    }

    /// Logs a device in: creates it (or reuses the given ID, replacing its
    /// tokens) and issues tokens. Durable when this returns.
    pub async fn login(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        with_refresh: bool,
        remote_ip: Option<String>,
    ) -> Result<Issued> {
        let _guard = self.locks.lock(user_id).await;
        let mut batch = Batch::new();
        let issued = self.login_batch(user_id, device_id, display_name, with_refresh, remote_ip, &mut batch)?;
        self.db.commit(batch).await?;
        Ok(issued)
    }

    /// The writes of a login (the caller holds the user's lock, or is creating the user).
    pub fn login_batch(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        with_refresh: bool,
        remote_ip: Option<String>,
        batch: &mut Batch,
    ) -> Result<Issued> {
        let device_id = device_id.unwrap_or_else(generate_device_id);
        let existing = self.device(user_id, &device_id)?;
        if let Some(old) = &existing {
            self.remove_tokens(old, batch);
        }
        let (issued, access_hash, refresh_hash) = self.new_tokens(user_id, &device_id, with_refresh, batch);
        let now = now_ms();
        let device = Device {
            display_name: display_name.or_else(|| existing.as_ref().and_then(|d| d.display_name.clone())),
            last_seen_ip: remote_ip,
            last_seen_ts: Some(now),
            created_ts: existing.as_ref().map_or(now, |d| d.created_ts),
            access_token_hash: access_hash,
            refresh_token_hash: refresh_hash,
        };
        batch.insert(trees::USERDEVICEID_DEVICE, device_key(user_id, &device_id), encode(&device));
        Ok(issued)
    }

    /// Looks up an access token.
    pub fn authenticate(&self, token: &str) -> Result<TokenStatus> {
        let tree = self.db.tree(trees::TOKENHASH_SESSION)?;
        let Some(bytes) = tree.get(&token_hash(token))? else { return Ok(TokenStatus::Unknown) };
        let session: Session = decode(trees::TOKENHASH_SESSION, &bytes)?;
        if session.expires_at.is_some_and(|t| now_ms() >= t) {
            return Ok(TokenStatus::Expired { user_id: session.user_id });
        }
        Ok(TokenStatus::Valid { user_id: session.user_id, device_id: session.device_id })
    }

    /// Exchanges a refresh token for a new access token and refresh token.
    /// The old pair stops working.
    pub async fn refresh(&self, refresh_token: &str) -> Result<(OwnedUserId, Issued)> {
        let tree = self.db.tree(trees::REFRESHHASH_SESSION)?;
        let hash = token_hash(refresh_token);
        let Some(bytes) = tree.get(&hash)? else {
            return Err(Error::new(ErrorKind::UnknownToken { soft_logout: false }, "Unknown refresh token"));
        };
        let rs: RefreshSession = decode(trees::REFRESHHASH_SESSION, &bytes)?;
        // Re-read under the lock: a concurrent refresh may have spent the token.
        let _guard = self.locks.lock(&rs.user_id).await;
        if tree.get(&hash)?.is_none() {
            return Err(Error::new(ErrorKind::UnknownToken { soft_logout: false }, "Unknown refresh token"));
        }
        let Some(mut device) = self.device(&rs.user_id, &rs.device_id)? else {
            return Err(Error::new(ErrorKind::UnknownToken { soft_logout: false }, "Unknown refresh token"));
        };
        if device.refresh_token_hash.as_deref() != Some(hex::encode(&hash).as_str()) {
            return Err(Error::new(ErrorKind::UnknownToken { soft_logout: false }, "Unknown refresh token"));
        }
        let mut batch = Batch::new();
        self.remove_tokens(&device, &mut batch);
        let (issued, access_hash, refresh_hash) = self.new_tokens(&rs.user_id, &rs.device_id, true, &mut batch);
        device.access_token_hash = access_hash;
        device.refresh_token_hash = refresh_hash;
        batch.insert(trees::USERDEVICEID_DEVICE, device_key(&rs.user_id, &rs.device_id), encode(&device));
        self.db.commit(batch).await?;
        Ok((rs.user_id, issued))
    }

    /// Updates a device's display name. Returns false if there is no such device.
    pub async fn set_display_name(&self, user_id: &UserId, device_id: &DeviceId, name: Option<String>) -> Result<bool> {
        let _guard = self.locks.lock(user_id).await;
        let Some(mut device) = self.device(user_id, device_id)? else { return Ok(false) };
        device.display_name = name;
        let mut batch = Batch::new();
        batch.insert(trees::USERDEVICEID_DEVICE, device_key(user_id, device_id), encode(&device));
        self.db.commit(batch).await?;
        Ok(true)
    }

    /// Records when and from where a device was last seen, at most once a
    /// minute; skipped when another write for the user is in progress.
    pub fn touch(&self, user_id: &UserId, device_id: &DeviceId, ip: &str) -> Result<()> {
        let Some(_guard) = self.locks.try_lock(user_id) else { return Ok(()) };
        let Some(mut device) = self.device(user_id, device_id)? else { return Ok(()) };
        let now = now_ms();
        let stale = device.last_seen_ts.is_none_or(|t| now.saturating_sub(t) > 60_000);
        if stale || device.last_seen_ip.as_deref() != Some(ip) {
            device.last_seen_ts = Some(now);
            device.last_seen_ip = Some(ip.to_owned());
            let mut batch = Batch::new();
            batch.insert(trees::USERDEVICEID_DEVICE, device_key(user_id, device_id), encode(&device));
            // Last-seen data is advisory: it is written but the request does not wait for a flush.
            self.db.apply(batch)?;
        }
        Ok(())
    }
}
