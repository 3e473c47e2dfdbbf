//! Server-side key backup (`/room_keys`): versions with their public
//! `auth_data`, and the encrypted Megolm sessions clients store in them.
//! Session data is opaque to the server: it is encrypted to the backup's
//! public key on the client.

use std::collections::BTreeMap;

use ruma::{OwnedRoomId, RoomId, UInt, UserId, serde::Raw};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Services;
use crate::{
    err,
    error::{Error, Result},
    storage::{Batch, StorageError, codec, trees},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupVersion {
    pub algorithm: Value,
    /// Bumped whenever the stored keys change.
    pub etag: u64,
    /// Deleted versions are kept as markers: their number is never reused and
    /// deleting them again succeeds.
    #[serde(default)]
    pub deleted: bool,
}

/// `(room, session) → key data` selection for reads and deletes.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    All,
    Room(&'a RoomId),
    Session(&'a RoomId, &'a str),
}

fn corrupt(e: impl std::fmt::Display) -> Error {
    StorageError::Corrupt { tree: trees::USERVERSION_BACKUP, reason: e.to_string() }.into()
}

fn parse_version(version: &str) -> Option<u64> {
    version.parse().ok().filter(|v: &u64| v.to_string() == version)
}

fn scope_prefix(user_id: &UserId, version: u64, scope: Scope<'_>) -> Vec<u8> {
    match scope {
        Scope::All => codec::prefix(&[user_id.as_str().into(), version.into()]),
        Scope::Room(room) => codec::prefix(&[user_id.as_str().into(), version.into(), room.as_str().into()]),
        Scope::Session(room, session) => {
            codec::key(&[user_id.as_str().into(), version.into(), room.as_str().into(), session.into()])
        }
    }
}

/// Whether `new` should replace `old` (the spec's order: verified first,
/// then the lower first message index, then the lower forwarded count).
fn better(new: &Value, old: &Value) -> bool {
    let verified = |v: &Value| v["is_verified"].as_bool().unwrap_or(false);
    let index = |v: &Value| v["first_message_index"].as_u64().unwrap_or(u64::MAX);
    let forwarded = |v: &Value| v["forwarded_count"].as_u64().unwrap_or(u64::MAX);
    if verified(new) != verified(old) {
        return verified(new);
    }
    if index(new) != index(old) {
        return index(new) < index(old);
    }
    forwarded(new) < forwarded(old)
}

impl Services {
    fn backup_versions(&self, user_id: &UserId) -> Result<Vec<(u64, BackupVersion)>> {
        let tree = self.db.tree(trees::USERVERSION_BACKUP)?;
        let prefix = codec::prefix(&[user_id.as_str().into()]);
        let mut out = Vec::new();
        for item in tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let version = codec::trailing_u64(&k).ok_or_else(|| corrupt("bad key"))?;
            out.push((version, serde_json::from_slice(&v).map_err(corrupt)?));
        }
        Ok(out)
    }

    /// The current (newest, not deleted) backup version.
    pub fn current_backup(&self, user_id: &UserId) -> Result<Option<(u64, BackupVersion)>> {
        Ok(self.backup_versions(user_id)?.into_iter().rev().find(|(_, v)| !v.deleted))
    }

    /// A version that exists and is not deleted, or 404.
    pub fn backup_version(&self, user_id: &UserId, version: &str) -> Result<(u64, BackupVersion)> {
        let not_found = || err!(NotFound, "Unknown backup version {version:?}");
        let number = parse_version(version).ok_or_else(not_found)?;
        let tree = self.db.tree(trees::USERVERSION_BACKUP)?;
        let record: BackupVersion = tree
            .get(&codec::key(&[user_id.as_str().into(), number.into()]))?
            .map(|b| serde_json::from_slice(&b).map_err(corrupt))
            .transpose()?
            .ok_or_else(not_found)?;
        if record.deleted {
            return Err(not_found());
        }
        Ok((number, record))
    }

    /// The number of keys in a version.
    pub fn backup_count(&self, user_id: &UserId, version: u64) -> Result<UInt> {
        let tree = self.db.tree(trees::USERVERSIONROOMSESSION_BACKUPKEY)?;
        let n = tree.scan_prefix(&scope_prefix(user_id, version, Scope::All)).count();
        Ok(UInt::try_from(n as u64).unwrap_or(UInt::MAX))
    }

    /// `POST /room_keys/version`: a new version, which becomes the current one.
    pub async fn create_backup(&self, user_id: &UserId, algorithm: Value) -> Result<String> {
        check_algorithm(&algorithm)?;
        let _guard = self.locks.lock(format!("backup:{user_id}")).await;
        let next = self.backup_versions(user_id)?.last().map_or(1, |(v, _)| v + 1);
        let algorithm = serde_json::json!({ "algorithm": algorithm["algorithm"], "auth_data": algorithm["auth_data"] });
        let record = BackupVersion { algorithm, etag: 0, deleted: false };
        let mut batch = Batch::new();
        batch.insert(
            trees::USERVERSION_BACKUP,
            codec::key(&[user_id.as_str().into(), next.into()]),
            serde_json::to_vec(&record).map_err(Error::internal)?,
        );
        self.db.commit(batch).await?;
        Ok(next.to_string())
    }

    /// `PUT /room_keys/version/{version}`: only `auth_data` may change.
    pub async fn update_backup(&self, user_id: &UserId, version: &str, algorithm: Value) -> Result<()> {
        check_algorithm(&algorithm)?;
        if let Some(v) = algorithm.get("version")
            && v.as_str() != Some(version)
        {
            return Err(err!(InvalidParam, "The version in the body does not match the version in the path"));
        }
        let _guard = self.locks.lock(format!("backup:{user_id}")).await;
        let (number, mut record) = self.backup_version(user_id, version)?;
        if record.algorithm["algorithm"] != algorithm["algorithm"] {
            return Err(err!(InvalidParam, "The algorithm does not match the backup's algorithm"));
        }
        record.algorithm = serde_json::json!({
            "algorithm": algorithm["algorithm"],
            "auth_data": algorithm["auth_data"],
        });
        let mut batch = Batch::new();
        batch.insert(
            trees::USERVERSION_BACKUP,
            codec::key(&[user_id.as_str().into(), number.into()]),
            serde_json::to_vec(&record).map_err(Error::internal)?,
        );
        self.db.commit(batch).await?;
        Ok(())
    }

    /// `DELETE /room_keys/version/{version}`: the version and all its keys.
    pub async fn delete_backup(&self, user_id: &UserId, version: &str) -> Result<()> {
        let not_found = || err!(NotFound, "Unknown backup version {version:?}");
        let number = parse_version(version).ok_or_else(not_found)?;
        let _guard = self.locks.lock(format!("backup:{user_id}")).await;
        let tree = self.db.tree(trees::USERVERSION_BACKUP)?;
        let key = codec::key(&[user_id.as_str().into(), number.into()]);
        let mut record: BackupVersion =
            tree.get(&key)?.map(|b| serde_json::from_slice(&b).map_err(corrupt)).transpose()?.ok_or_else(not_found)?;
        if record.deleted {
            return Ok(());
        }
        record.deleted = true;
        let mut batch = Batch::new();
        batch.insert(trees::USERVERSION_BACKUP, key, serde_json::to_vec(&record).map_err(Error::internal)?);
        self.backup_removals(user_id, number, Scope::All, &mut batch)?;
        self.db.commit(batch).await?;
        Ok(())
    }

    fn backup_removals(&self, user_id: &UserId, version: u64, scope: Scope<'_>, batch: &mut Batch) -> Result<usize> {
        let tree = self.db.tree(trees::USERVERSIONROOMSESSION_BACKUPKEY)?;
        let mut n = 0;
        let prefix = scope_prefix(user_id, version, scope);
        let keys: Vec<Vec<u8>> = match scope {
            Scope::Session(..) => tree.get(&prefix)?.map(|_| prefix.clone()).into_iter().collect(),
            _ => tree.scan_prefix(&prefix).map(|i| i.map(|(k, _)| k)).collect::<Result<_, _>>()?,
        };
        for k in keys {
            batch.remove(trees::USERVERSIONROOMSESSION_BACKUPKEY, k);
            n += 1;
        }
        Ok(n)
    }

    /// Stores sessions in the current version, keeping the better of an
    /// existing and a new copy. Returns the new etag and count.
    pub async fn add_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        rooms: BTreeMap<OwnedRoomId, BTreeMap<String, Value>>,
    ) -> Result<(String, UInt)> {
        let _guard = self.locks.lock(format!("backup:{user_id}")).await;
        let (number, mut record) = self.backup_version(user_id, version)?;
        let current = self.current_backup(user_id)?.map(|(v, _)| v);
        if current != Some(number) {
            return Err(Error::WrongRoomKeysVersion { current_version: current.map(|v| v.to_string()) });
        }
        let tree = self.db.tree(trees::USERVERSIONROOMSESSION_BACKUPKEY)?;
        let mut batch = Batch::new();
        for (room_id, sessions) in &rooms {
            for (session_id, data) in sessions {
                check_key_data(data)?;
                let k = scope_prefix(user_id, number, Scope::Session(room_id, session_id));
                let keep_old = match tree.get(&k)? {
                    Some(old) => !better(data, &serde_json::from_slice::<Value>(&old).map_err(corrupt)?),
                    None => false,
                };
                if !keep_old {
                    batch.insert(
                        trees::USERVERSIONROOMSESSION_BACKUPKEY,
                        k,
                        serde_json::to_vec(data).map_err(Error::internal)?,
                    );
                }
            }
        }
        self.commit_key_change(user_id, number, &mut record, batch).await
    }

    /// Reads stored sessions: `room → session → data`.
    pub fn backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        scope: Scope<'_>,
    ) -> Result<BTreeMap<OwnedRoomId, BTreeMap<String, Raw<ruma::api::client::backup::KeyBackupData>>>> {
        let (number, _) = self.backup_version(user_id, version)?;
        let tree = self.db.tree(trees::USERVERSIONROOMSESSION_BACKUPKEY)?;
        let base = codec::prefix(&[user_id.as_str().into(), number.into()]);
        let prefix = scope_prefix(user_id, number, scope);
        let items: Vec<(Vec<u8>, Vec<u8>)> = match scope {
            Scope::Session(..) => tree.get(&prefix)?.map(|v| (prefix.clone(), v)).into_iter().collect(),
            _ => tree.scan_prefix(&prefix).collect::<Result<_, _>>()?,
        };
        let mut out: BTreeMap<OwnedRoomId, BTreeMap<String, _>> = BTreeMap::new();
        for (k, v) in items {
            let parts = codec::split_str(&k[base.len()..]).ok_or_else(|| corrupt("bad key"))?;
            let [room, session] = parts[..] else { return Err(corrupt("bad key")) };
            let room = OwnedRoomId::try_from(room).map_err(corrupt)?;
            let raw =
                serde_json::value::RawValue::from_string(String::from_utf8(v).map_err(corrupt)?).map_err(corrupt)?;
            out.entry(room).or_default().insert(session.to_owned(), Raw::from_json(raw));
        }
        Ok(out)
    }

    /// Deletes stored sessions; returns the new etag and count.
    pub async fn delete_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        scope: Scope<'_>,
    ) -> Result<(String, UInt)> {
        let _guard = self.locks.lock(format!("backup:{user_id}")).await;
        let (number, mut record) = self.backup_version(user_id, version)?;
        let mut batch = Batch::new();
        self.backup_removals(user_id, number, scope, &mut batch)?;
        self.commit_key_change(user_id, number, &mut record, batch).await
    }

    /// Commits a change of a version's keys (if `batch` holds any) with a new
    /// etag; returns the etag and count the endpoints answer.
    async fn commit_key_change(
        &self,
        user_id: &UserId,
        number: u64,
        record: &mut BackupVersion,
        mut batch: Batch,
    ) -> Result<(String, UInt)> {
        if !batch.is_empty() {
            record.etag += 1;
            batch.insert(
                trees::USERVERSION_BACKUP,
                codec::key(&[user_id.as_str().into(), number.into()]),
                serde_json::to_vec(&record).map_err(Error::internal)?,
            );
            self.db.commit(batch).await?;
        }
        Ok((record.etag.to_string(), self.backup_count(user_id, number)?))
    }
}

/// A backup algorithm object: a named algorithm with an `auth_data` object.
fn check_algorithm(algorithm: &Value) -> Result<()> {
    if !algorithm["algorithm"].is_string() {
        return Err(err!(BadJson, "`algorithm` must be a string"));
    }
    if !algorithm["auth_data"].is_object() {
        return Err(err!(BadJson, "`auth_data` must be an object"));
    }
    Ok(())
}

/// Backed-up session data: indexes, a verification flag, and opaque `session_data`.
fn check_key_data(data: &Value) -> Result<()> {
    let ok = data["first_message_index"].is_u64()
        && data["forwarded_count"].is_u64()
        && data["is_verified"].is_boolean()
        && data["session_data"].is_object();
    if !ok {
        return Err(err!(BadJson, "Key data needs first_message_index, forwarded_count, is_verified and session_data"));
    }
    Ok(())
}
