//! What goes in and out of the [`CryptoMachine`](super::CryptoMachine): the
//! requests it asks the caller to send, what a `/sync` response brings it,
//! and what it reports back.
//!
//! Request and response bodies are plain JSON ([`serde_json::Value`]) in the
//! shape the Client-Server API defines for each endpoint, so the HTTP layer
//! can send them as they are and hand the response body back unchanged.

use std::collections::BTreeMap;

use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId};
use serde_json::Value;

use super::devices::RefusedDevice;
use super::error::DecryptionError;

/// A user and one of their devices.
pub type UserDevice = (OwnedUserId, OwnedDeviceId);

/// A request the caller must send to the homeserver. Once it was sent, the
/// caller reports the response body with
/// [`CryptoMachine::mark_request_sent`](super::CryptoMachine::mark_request_sent),
/// or the failure with
/// [`CryptoMachine::mark_request_failed`](super::CryptoMachine::mark_request_failed).
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingRequest {
    /// The unique ID of the request. To-device requests use it as their
    /// transaction ID too, so resending one is idempotent on the server.
    pub id: String,
    /// The endpoint and the body to send.
    pub kind: RequestKind,
}

/// The endpoint a request goes to, with its JSON body.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestKind {
    /// `POST /_matrix/client/v3/keys/upload`: device keys (first upload
    /// only), signed one-time keys and a signed fallback key.
    KeysUpload {
        /// The request body.
        body: Value,
    },
    /// `POST /_matrix/client/v3/keys/query` for users whose device list is
    /// outdated.
    KeysQuery {
        /// The request body.
        body: Value,
    },
    /// `POST /_matrix/client/v3/keys/claim`: one `signed_curve25519` key for
    /// each device that has no Olm session yet.
    KeysClaim {
        /// The request body.
        body: Value,
    },
    /// `PUT /_matrix/client/v3/sendToDevice/{event_type}/{txn_id}`.
    ToDevice {
        /// The event type of every message (`m.room.encrypted`).
        event_type: String,
        /// The transaction ID, equal to the request ID.
        txn_id: String,
        /// The request body: `{"messages": {user: {device: content}}}`.
        body: Value,
    },
}

impl OutgoingRequest {
    /// The HTTP method of the request.
    pub fn method(&self) -> &'static str {
        match self.kind {
            RequestKind::ToDevice { .. } => "PUT",
            _ => "POST",
        }
    }

    /// The path of the request, below the homeserver's base URL.
    pub fn path(&self) -> String {
        match &self.kind {
            RequestKind::KeysUpload { .. } => "/_matrix/client/v3/keys/upload".to_owned(),
            RequestKind::KeysQuery { .. } => "/_matrix/client/v3/keys/query".to_owned(),
            RequestKind::KeysClaim { .. } => "/_matrix/client/v3/keys/claim".to_owned(),
            RequestKind::ToDevice { event_type, txn_id, .. } => {
                format!("/_matrix/client/v3/sendToDevice/{event_type}/{txn_id}")
            }
        }
    }

    /// The JSON body of the request.
    pub fn body(&self) -> &Value {
        match &self.kind {
            RequestKind::KeysUpload { body }
            | RequestKind::KeysQuery { body }
            | RequestKind::KeysClaim { body }
            | RequestKind::ToDevice { body, .. } => body,
        }
    }
}

/// The end-to-end encryption parts of a `/sync` response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncChanges {
    /// `to_device.events`: the to-device events, encrypted or not.
    pub to_device_events: Vec<Value>,
    /// `device_lists.changed`: users whose devices changed.
    pub changed_users: Vec<OwnedUserId>,
    /// `device_lists.left`: users who no longer share an encrypted room.
    pub left_users: Vec<OwnedUserId>,
    /// `device_one_time_keys_count`, when the response has it.
    pub one_time_key_counts: Option<BTreeMap<String, u64>>,
    /// `device_unused_fallback_key_types`, when the response has it.
    pub unused_fallback_key_types: Option<Vec<String>>,
}

impl SyncChanges {
    /// Picks the end-to-end encryption parts out of a raw `/sync` response
    /// body. Entries that are not valid user IDs are skipped.
    pub fn from_sync_response(sync: &Value) -> Self {
        let users = |list: &Value| -> Vec<OwnedUserId> {
            list.as_array()
                .map(|list| list.iter().filter_map(Value::as_str).filter_map(|user| UserId::parse(user).ok()).collect())
                .unwrap_or_default()
        };
        Self {
            to_device_events: sync["to_device"]["events"].as_array().cloned().unwrap_or_default(),
            changed_users: users(&sync["device_lists"]["changed"]),
            left_users: users(&sync["device_lists"]["left"]),
            one_time_key_counts: sync.get("device_one_time_keys_count").and_then(Value::as_object).map(|counts| {
                counts.iter().filter_map(|(algorithm, count)| Some((algorithm.clone(), count.as_u64()?))).collect()
            }),
            unused_fallback_key_types: sync
                .get("device_unused_fallback_key_types")
                .and_then(Value::as_array)
                .map(|types| types.iter().filter_map(Value::as_str).map(str::to_owned).collect()),
        }
    }
}

/// A to-device event handed back to the caller, decrypted if it came
/// encrypted.
#[derive(Debug, Clone, PartialEq)]
pub struct ToDeviceEvent {
    /// The `sender` of the event, as the server reported it (and, for Olm
    /// events, as the decrypted payload confirmed it).
    pub sender: OwnedUserId,
    /// The event type (the decrypted type for Olm events).
    pub event_type: String,
    /// The event content (the decrypted content for Olm events).
    pub content: Value,
    /// The Curve25519 key of the Olm session, when the event came encrypted.
    pub sender_key: Option<String>,
    /// The sending device, for encrypted events: a tracked device of the
    /// sender whose keys match the session and the payload. `None` for
    /// plaintext events.
    pub sender_device: Option<OwnedDeviceId>,
}

/// A to-device event that was refused, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToDeviceFailure {
    /// The `sender` of the event as the server reported it.
    pub sender: String,
    /// The outer event type (usually `m.room.encrypted`).
    pub event_type: String,
    /// Why the event was refused.
    pub reason: DecryptionError,
}

/// A Megolm room key that was received over Olm and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomKeyInfo {
    /// The room the key is for.
    pub room_id: OwnedRoomId,
    /// The Megolm session ID.
    pub session_id: String,
    /// The user who shared the key.
    pub sender: OwnedUserId,
    /// The device that shared the key.
    pub sender_device: OwnedDeviceId,
    /// The Curve25519 key of that device (the Olm session's key).
    pub sender_key: String,
}

/// What the machine made of the to-device part of a sync.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncOutcome {
    /// To-device events for the caller: plaintext ones as they came,
    /// encrypted ones decrypted and validated. Room keys are not listed here.
    pub to_device_events: Vec<ToDeviceEvent>,
    /// Room keys stored.
    pub room_keys: Vec<RoomKeyInfo>,
    /// Events refused, with the reason.
    pub failures: Vec<ToDeviceFailure>,
    /// Encrypted events (room keys included) from devices not known yet:
    /// the Ed25519 key in their payload cannot be checked, so they are kept
    /// until the sender's devices were queried (the machine asks for that
    /// query) and reported by `mark_request_sent` then.
    pub deferred_events: usize,
}

/// A device a `/keys/claim` request found no usable one-time key for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreachableDevice {
    /// The owner of the device.
    pub user_id: OwnedUserId,
    /// The device.
    pub device_id: OwnedDeviceId,
    /// Why no Olm session could be created.
    pub reason: String,
}

/// What the machine made of the response to one of its requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseOutcome {
    /// Devices from a `/keys/query` response that were refused: bad
    /// self-signature, changed identity keys, and so on.
    pub refused_devices: Vec<RefusedDevice>,
    /// Devices that disappeared from a user's device list.
    pub removed_devices: Vec<UserDevice>,
    /// Users whose homeserver failed to answer a `/keys/query`.
    pub failed_users: Vec<OwnedUserId>,
    /// Devices a `/keys/claim` gave no usable one-time key for. They are not
    /// claimed again for a few minutes and get no room keys meanwhile.
    pub unreachable_devices: Vec<UnreachableDevice>,
    /// Deferred encrypted events that passed every check now that the
    /// sender's devices are known.
    pub to_device_events: Vec<ToDeviceEvent>,
    /// Deferred room keys that could be stored now that the sender's devices
    /// are known.
    pub room_keys: Vec<RoomKeyInfo>,
    /// Deferred events that were refused after all.
    pub failures: Vec<ToDeviceFailure>,
}
