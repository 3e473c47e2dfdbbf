//! End-to-end encryption endpoints: keys, cross-signing, to-device messages
//! and server-side key backup. The rules live in `service::keys`,
//! `service::to_device` and `service::backup`.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedRoomId, OwnedUserId,
    api::client::{
        backup::{
            add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
            delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
            get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
            get_latest_backup_info, update_backup_version,
        },
        keys::{claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys},
        to_device::send_event_to_device,
    },
    serde::Raw,
};
use serde_json::Value;

use super::account::require_password;
use crate::{
    api::Ruma,
    err,
    error::{Error, Result},
    service::{Services, backup::Scope, sync::StreamToken},
};

/// `POST /_matrix/client/v3/keys/upload`
pub async fn upload_keys_route(
    s: Arc<Services>,
    body: Ruma<upload_keys::v3::Request>,
) -> Result<upload_keys::v3::Response> {
    let req = &body.body;
    let counts = s
        .upload_keys(body.user()?, body.device()?, req.device_keys.as_ref(), &req.one_time_keys, &req.fallback_keys)
        .await?;
    Ok(upload_keys::v3::Response::new(counts))
}

/// `POST /_matrix/client/v3/keys/query`
pub async fn get_keys_route(s: Arc<Services>, body: Ruma<get_keys::v3::Request>) -> Result<get_keys::v3::Response> {
    // Every user asked about is local, so the answer never waits: `timeout` is met trivially.
    s.query_keys(body.user()?, &body.body.device_keys)
}

/// `POST /_matrix/client/v3/keys/claim`
pub async fn claim_keys_route(
    s: Arc<Services>,
    body: Ruma<claim_keys::v3::Request>,
) -> Result<claim_keys::v3::Response> {
    s.claim_keys(&body.body.one_time_keys).await
}

/// `GET /_matrix/client/v3/keys/changes`
pub async fn get_key_changes_route(
    s: Arc<Services>,
    body: Ruma<get_key_changes::v3::Request>,
) -> Result<get_key_changes::v3::Response> {
    let from = StreamToken::parse(&body.body.from)?;
    let to = StreamToken::parse(&body.body.to)?;
    let changes = s.device_list_changes(body.user()?, from.pos.saturating_sub(1), to.pos.saturating_sub(1))?;
    let mut response = get_key_changes::v3::Response::new(Vec::new(), Vec::new());
    response.changed = changes.changed.into_iter().collect();
    response.left = changes.left.into_iter().collect();
    Ok(response)
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`
pub async fn upload_signing_keys_route(
    s: Arc<Services>,
    body: Ruma<upload_signing_keys::v3::Request>,
) -> Result<upload_signing_keys::v3::Response> {
    let user_id = body.user()?.to_owned();
    let req = &body.body;
    let (master, ssk, usk) = (req.master_key.as_ref(), req.self_signing_key.as_ref(), req.user_signing_key.as_ref());
    // As the spec requires: interactive auth unless these are the user's first
    // keys or exactly the keys already stored.
    if s.signing_upload_needs_auth(&user_id, master, ssk, usk)? {
        require_password(&s, req.auth.as_ref(), &user_id, &body.remote_str()).await?;
    }
    s.upload_signing_keys(&user_id, master, ssk, usk).await?;
    Ok(upload_signing_keys::v3::Response::new())
}

/// `POST /_matrix/client/v3/keys/signatures/upload`
pub async fn upload_signatures_route(
    s: Arc<Services>,
    body: Ruma<upload_signatures::v3::Request>,
) -> Result<upload_signatures::v3::Response> {
    let signed: BTreeMap<OwnedUserId, BTreeMap<String, Value>> =
        serde_json::from_value(serde_json::to_value(&body.body.signed_keys).map_err(Error::internal)?)
            .map_err(|e| err!(BadJson, "Invalid signed keys: {e}"))?;
    let failures = s.upload_signatures(body.user()?, &signed).await?;
    let mut response = upload_signatures::v3::Response::new();
    for (user, keys) in failures {
        let mut out = BTreeMap::new();
        for (key_id, (errcode, error)) in keys {
            let failure = serde_json::from_value(serde_json::json!({ "errcode": errcode, "error": error }))
                .map_err(Error::internal)?;
            out.insert(key_id, failure);
        }
        response.failures.insert(user, out);
    }
    Ok(response)
}

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
pub async fn send_to_device_route(
    s: Arc<Services>,
    body: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response> {
    let req = &body.body;
    s.send_to_device(body.user()?, body.device()?, &req.event_type.to_string(), req.txn_id.as_str(), &req.messages)
        .await?;
    Ok(send_event_to_device::v3::Response::new())
}

// ----- key backup -----

fn algorithm_value(raw: &Raw<ruma::api::client::backup::BackupAlgorithm>) -> Result<Value> {
    serde_json::from_str(raw.json().get()).map_err(|e| err!(BadJson, "Invalid backup algorithm: {e}"))
}

fn stored_algorithm(v: &Value) -> Result<Raw<ruma::api::client::backup::BackupAlgorithm>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(v).map_err(Error::internal)?))
}

/// What both backup-info endpoints answer: algorithm, count, etag and version.
fn backup_info(
    s: &Services,
    user_id: &ruma::UserId,
    (version, record): (u64, crate::service::backup::BackupVersion),
) -> Result<(Raw<ruma::api::client::backup::BackupAlgorithm>, ruma::UInt, String, String)> {
    Ok((
        stored_algorithm(&record.algorithm)?,
        s.backup_count(user_id, version)?,
        record.etag.to_string(),
        version.to_string(),
    ))
}

fn sessions_value(
    rooms: impl IntoIterator<Item = (OwnedRoomId, BTreeMap<String, Value>)>,
) -> BTreeMap<OwnedRoomId, BTreeMap<String, Value>> {
    rooms.into_iter().collect()
}

fn session_values(
    sessions: &BTreeMap<String, Raw<ruma::api::client::backup::KeyBackupData>>,
) -> Result<BTreeMap<String, Value>> {
    sessions
        .iter()
        .map(|(id, raw)| {
            serde_json::from_str(raw.json().get())
                .map(|v| (id.clone(), v))
                .map_err(|e| err!(BadJson, "Invalid key data for session {id}: {e}"))
        })
        .collect()
}

/// `POST /_matrix/client/v3/room_keys/version`
pub async fn create_backup_version_route(
    s: Arc<Services>,
    body: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response> {
    let version = s.create_backup(body.user()?, algorithm_value(&body.body.algorithm)?).await?;
    Ok(create_backup_version::v3::Response::new(version))
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`
pub async fn update_backup_version_route(
    s: Arc<Services>,
    body: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response> {
    s.update_backup(body.user()?, &body.body.version, algorithm_value(&body.body.algorithm)?).await?;
    Ok(update_backup_version::v3::Response::new())
}

/// `GET /_matrix/client/v3/room_keys/version`
pub async fn get_latest_backup_info_route(
    s: Arc<Services>,
    body: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response> {
    let user_id = body.user()?;
    let found = s.current_backup(user_id)?.ok_or_else(|| err!(NotFound, "No current backup version"))?;
    let (algorithm, count, etag, version) = backup_info(&s, user_id, found)?;
    Ok(get_latest_backup_info::v3::Response::new(algorithm, count, etag, version))
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`
pub async fn get_backup_info_route(
    s: Arc<Services>,
    body: Ruma<get_backup_info::v3::Request>,
) -> Result<get_backup_info::v3::Response> {
    let user_id = body.user()?;
    let found = s.backup_version(user_id, &body.body.version)?;
    let (algorithm, count, etag, version) = backup_info(&s, user_id, found)?;
    Ok(get_backup_info::v3::Response::new(algorithm, count, etag, version))
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`
pub async fn delete_backup_version_route(
    s: Arc<Services>,
    body: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response> {
    s.delete_backup(body.user()?, &body.body.version).await?;
    Ok(delete_backup_version::v3::Response::new())
}

/// `PUT /_matrix/client/v3/room_keys/keys`
pub async fn add_backup_keys_route(
    s: Arc<Services>,
    body: Ruma<add_backup_keys::v3::Request>,
) -> Result<add_backup_keys::v3::Response> {
    let mut rooms = Vec::new();
    for (room_id, backup) in &body.body.rooms {
        rooms.push((room_id.clone(), session_values(&backup.sessions)?));
    }
    let (etag, count) = s.add_backup_keys(body.user()?, &body.body.version, sessions_value(rooms)).await?;
    Ok(add_backup_keys::v3::Response::new(etag, count))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn add_backup_keys_for_room_route(
    s: Arc<Services>,
    body: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let rooms = sessions_value([(body.body.room_id.clone(), session_values(&body.body.sessions)?)]);
    let (etag, count) = s.add_backup_keys(body.user()?, &body.body.version, rooms).await?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, count))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn add_backup_keys_for_session_route(
    s: Arc<Services>,
    body: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let req = &body.body;
    let sessions = session_values(&BTreeMap::from([(req.session_id.clone(), req.session_data.clone())]))?;
    let (etag, count) =
        s.add_backup_keys(body.user()?, &req.version, sessions_value([(req.room_id.clone(), sessions)])).await?;
    Ok(add_backup_keys_for_session::v3::Response::new(etag, count))
}

/// `GET /_matrix/client/v3/room_keys/keys`
pub async fn get_backup_keys_route(
    s: Arc<Services>,
    body: Ruma<get_backup_keys::v3::Request>,
) -> Result<get_backup_keys::v3::Response> {
    let stored = s.backup_keys(body.user()?, &body.body.version, Scope::All)?;
    let rooms = stored
        .into_iter()
        .map(|(room, sessions)| (room, ruma::api::client::backup::RoomKeyBackup::new(sessions)))
        .collect();
    Ok(get_backup_keys::v3::Response::new(rooms))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn get_backup_keys_for_room_route(
    s: Arc<Services>,
    body: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let mut stored = s.backup_keys(body.user()?, &body.body.version, Scope::Room(&body.body.room_id))?;
    Ok(get_backup_keys_for_room::v3::Response::new(stored.remove(&body.body.room_id).unwrap_or_default()))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn get_backup_keys_for_session_route(
    s: Arc<Services>,
    body: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let req = &body.body;
    let mut stored = s.backup_keys(body.user()?, &req.version, Scope::Session(&req.room_id, &req.session_id))?;
    let data = stored
        .remove(&req.room_id)
        .and_then(|mut m| m.remove(&req.session_id))
        .ok_or_else(|| err!(NotFound, "No backed-up key for this session"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(data))
}

/// `DELETE /_matrix/client/v3/room_keys/keys`
pub async fn delete_backup_keys_route(
    s: Arc<Services>,
    body: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response> {
    let (etag, count) = s.delete_backup_keys(body.user()?, &body.body.version, Scope::All).await?;
    Ok(delete_backup_keys::v3::Response::new(etag, count))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn delete_backup_keys_for_room_route(
    s: Arc<Services>,
    body: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let (etag, count) = s.delete_backup_keys(body.user()?, &body.body.version, Scope::Room(&body.body.room_id)).await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, count))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn delete_backup_keys_for_session_route(
    s: Arc<Services>,
    body: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let req = &body.body;
    let (etag, count) =
        s.delete_backup_keys(body.user()?, &req.version, Scope::Session(&req.room_id, &req.session_id)).await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(etag, count))
}
