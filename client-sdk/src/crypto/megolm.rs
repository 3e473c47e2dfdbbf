//! Megolm (`m.megolm.v1.aes-sha2`): the outbound session of each room this
//! device sends in, its rotation rules, and the inbound sessions received
//! from others, with replay detection.

use std::collections::{BTreeMap, BTreeSet, btree_map::Entry};

use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use vodozemac::megolm::{
    DecryptionError as MegolmDecryptionError, GroupSession, InboundGroupSession, MegolmMessage, SessionConfig,
    SessionOrdering,
};

use super::MEGOLM_V1;
use super::error::{DecryptionError, str_field};
use super::requests::UserDevice;

/// The default `rotation_period_ms` of `m.room.encryption`: one week.
pub const DEFAULT_ROTATION_PERIOD_MS: u64 = 604_800_000;

/// The default `rotation_period_msgs` of `m.room.encryption`.
pub const DEFAULT_ROTATION_PERIOD_MSGS: u64 = 100;

/// When a room's outbound Megolm session must be replaced, as its
/// `m.room.encryption` state event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSettings {
    /// The longest time, in milliseconds, a session is used for.
    pub rotation_period_ms: u64,
    /// The most messages a session encrypts.
    pub rotation_period_msgs: u64,
}

impl Default for RoomSettings {
    fn default() -> Self {
        Self { rotation_period_ms: DEFAULT_ROTATION_PERIOD_MS, rotation_period_msgs: DEFAULT_ROTATION_PERIOD_MSGS }
    }
}

impl RoomSettings {
    /// Reads the content of an `m.room.encryption` state event. A missing or
    /// invalid period takes its default; a period of zero counts as one.
    pub fn from_encryption_content(content: &Value) -> Self {
        let period = |name: &str, default: u64| content[name].as_u64().unwrap_or(default).max(1);
        Self {
            rotation_period_ms: period("rotation_period_ms", DEFAULT_ROTATION_PERIOD_MS),
            rotation_period_msgs: period("rotation_period_msgs", DEFAULT_ROTATION_PERIOD_MSGS),
        }
    }
}

/// This device's current outbound session in a room.
#[derive(Serialize, Deserialize)]
pub(crate) struct OutboundGroup {
    #[serde(with = "super::pickle::group_session")]
    pub(crate) session: GroupSession,
    pub(crate) session_id: String,
    pub(crate) created_ms: u64,
    /// The devices whose `m.room_key` was sent (and marked sent).
    pub(crate) shared_with: BTreeSet<UserDevice>,
}

impl OutboundGroup {
    /// A new session, created now.
    pub(crate) fn new(now_ms: u64) -> Self {
        let session = GroupSession::new(SessionConfig::version_1());
        Self { session_id: session.session_id(), session, created_ms: now_ms, shared_with: BTreeSet::new() }
    }

    /// How many messages the session encrypted.
    pub(crate) fn messages(&self) -> u64 {
        u64::from(self.session.message_index())
    }

    /// Whether the session was used for too long or for too many messages.
    pub(crate) fn expired(&self, settings: &RoomSettings, now_ms: u64) -> bool {
        self.messages() >= settings.rotation_period_msgs
            || now_ms.saturating_sub(self.created_ms) >= settings.rotation_period_ms
    }

    /// The content of the `m.room_key` event that shares the session from its
    /// current message index on.
    pub(crate) fn room_key_content(&self, room_id: &RoomId) -> Value {
        json!({
            "algorithm": MEGOLM_V1,
            "room_id": room_id,
            "session_id": self.session_id,
            "session_key": self.session.session_key().to_base64(),
            "shared_history": false,
        })
    }

    /// Encrypts an event for the room; returns the base64 ciphertext.
    pub(crate) fn encrypt(
        &mut self,
        room_id: &RoomId,
        event_type: &str,
        content: &Value,
    ) -> Result<String, serde_json::Error> {
        let plaintext = serde_json::to_string(&json!({ "type": event_type, "content": content, "room_id": room_id }))?;
        Ok(self.session.encrypt(plaintext.as_bytes()).to_base64())
    }
}

/// A received Megolm session, with who shared it and which message indices
/// were already decrypted (for replay detection).
#[derive(Serialize, Deserialize)]
pub(crate) struct InboundGroup {
    #[serde(with = "super::pickle::inbound_group_session")]
    pub(crate) session: InboundGroupSession,
    /// The user who shared the room key over Olm.
    pub(crate) sender: OwnedUserId,
    /// Their device.
    pub(crate) sender_device: OwnedDeviceId,
    /// That device's Ed25519 key.
    pub(crate) sender_ed25519: String,
    /// Message index → the ID of the event that used it first.
    pub(crate) seen: BTreeMap<u32, String>,
}

/// A room event decrypted with Megolm.
#[derive(Debug, Clone, PartialEq)]
pub struct DecryptedRoomEvent {
    /// The whole event, with `type` and `content` replaced by the decrypted
    /// ones (other fields such as `event_id`, `sender` and `unsigned` kept).
    pub event: Value,
    /// The decrypted event type.
    pub event_type: String,
    /// The decrypted content.
    pub content: Value,
    /// The sender, who is also the user who shared the room key.
    pub sender: OwnedUserId,
    /// The device that shared the room key over Olm.
    pub sender_device: OwnedDeviceId,
    /// That device's Curve25519 key.
    pub sender_key: String,
    /// That device's Ed25519 key.
    pub sender_ed25519: String,
    /// The Megolm session ID.
    pub session_id: String,
    /// The Megolm message index of the event.
    pub message_index: u32,
}

/// The inbound Megolm sessions, per room, keyed by the Curve25519 key of the
/// device that shared them and the session ID.
#[derive(Default)]
pub(crate) struct InboundStore {
    rooms: BTreeMap<OwnedRoomId, BTreeMap<(String, String), InboundGroup>>,
}

/// One stored inbound session: room, (sender key, session ID), session.
type InboundEntry = (OwnedRoomId, (String, String), InboundGroup);

impl Serialize for InboundStore {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.rooms.iter().flat_map(|(room, sessions)| sessions.iter().map(move |(key, group)| (room, key, group))),
        )
    }
}

impl<'de> Deserialize<'de> for InboundStore {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut store = Self::default();
        for (room, key, group) in Vec::<InboundEntry>::deserialize(deserializer)? {
            store.rooms.entry(room).or_default().insert(key, group);
        }
        Ok(store)
    }
}

impl InboundStore {
    /// Stores a session received from the device with Curve25519 key
    /// `sender_key`. Returns whether something was stored: a session that is
    /// already known is only replaced by one that starts at an earlier
    /// message index. A session ID known from another room or device, or one
    /// that does not connect to the known session, is refused.
    pub(crate) fn add(
        &mut self,
        room_id: &RoomId,
        sender_key: &str,
        mut group: InboundGroup,
    ) -> Result<bool, DecryptionError> {
        let session_id = group.session.session_id();
        for (known_room, sessions) in &self.rooms {
            for (known_key, known_id) in sessions.keys() {
                if *known_id == session_id && (known_room.as_str() != room_id.as_str() || known_key != sender_key) {
                    return Err(DecryptionError::ConflictingRoomKey { session_id });
                }
            }
        }
        let sessions = self.rooms.entry(room_id.to_owned()).or_default();
        match sessions.entry((sender_key.to_owned(), session_id.clone())) {
            Entry::Vacant(slot) => {
                slot.insert(group);
                Ok(true)
            }
            Entry::Occupied(mut slot) => {
                let known = slot.get_mut();
                match known.session.compare(&mut group.session) {
                    SessionOrdering::Worse => {
                        // The new copy reaches further back; the replay
                        // record stays.
                        known.session = group.session;
                        Ok(true)
                    }
                    SessionOrdering::Equal | SessionOrdering::Better => Ok(false),
                    SessionOrdering::Unconnected => Err(DecryptionError::ConflictingRoomKey { session_id }),
                }
            }
        }
    }

    /// Whether a session with this ID is known in the room.
    pub(crate) fn contains(&self, room_id: &RoomId, session_id: &str) -> bool {
        self.rooms.get(room_id).is_some_and(|sessions| sessions.keys().any(|(_, id)| id == session_id))
    }

    /// Decrypts an `m.room.encrypted` room event of `room_id`.
    ///
    /// The session is looked up by room and session ID only: the event's
    /// `sender_key` and `device_id` are deprecated and not trusted. The
    /// event's sender must be the user who shared the session, the payload
    /// must name the same room, and a message index decrypted before may only
    /// come again with the same event ID.
    pub(crate) fn decrypt(&mut self, room_id: &RoomId, event: &Value) -> Result<DecryptedRoomEvent, DecryptionError> {
        if event["type"].as_str() != Some("m.room.encrypted") {
            return Err(DecryptionError::Malformed("not an m.room.encrypted event".to_owned()));
        }
        let sender = UserId::parse(str_field(event, "sender")?)
            .map_err(|_| DecryptionError::Malformed("`sender` is not a user ID".to_owned()))?;
        let event_id = str_field(event, "event_id")?;
        if let Some(found) = event.get("room_id").and_then(Value::as_str)
            && found != room_id.as_str()
        {
            return Err(DecryptionError::WrongRoom { expected: room_id.to_string(), found: found.to_owned() });
        }
        let content = &event["content"];
        let algorithm = str_field(content, "algorithm")?;
        if algorithm != MEGOLM_V1 {
            return Err(DecryptionError::UnsupportedAlgorithm(algorithm.to_owned()));
        }
        let session_id = str_field(content, "session_id")?;
        let message = MegolmMessage::from_base64(str_field(content, "ciphertext")?)
            .map_err(|e| DecryptionError::Malformed(format!("ciphertext: {e}")))?;

        let Some((sender_key, group)) = self.find_mut(room_id, session_id) else {
            return Err(DecryptionError::UnknownSession { session_id: session_id.to_owned() });
        };
        if group.sender != sender {
            return Err(DecryptionError::SenderMismatch { sender: sender.to_string() });
        }
        let decrypted = group.session.decrypt(&message).map_err(|e| match e {
            MegolmDecryptionError::UnknownMessageIndex(first_known, index) => {
                DecryptionError::UnknownMessageIndex { first_known, index }
            }
            other => DecryptionError::Tampered(other.to_string()),
        })?;
        let plaintext: Value = serde_json::from_slice(&decrypted.plaintext)
            .map_err(|e| DecryptionError::Malformed(format!("decrypted payload: {e}")))?;
        let payload_room = str_field(&plaintext, "room_id")?;
        if payload_room != room_id.as_str() {
            return Err(DecryptionError::WrongRoom { expected: room_id.to_string(), found: payload_room.to_owned() });
        }
        let event_type = str_field(&plaintext, "type")?.to_owned();
        let clear_content = plaintext["content"].clone();
        if !clear_content.is_object() {
            return Err(DecryptionError::Malformed("the decrypted payload has no `content` object".to_owned()));
        }

        let index = decrypted.message_index;
        match group.seen.entry(index) {
            Entry::Occupied(first) if first.get() != event_id => {
                return Err(DecryptionError::Replay {
                    index,
                    first_event_id: first.get().clone(),
                    event_id: event_id.to_owned(),
                });
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(slot) => {
                slot.insert(event_id.to_owned());
            }
        }

        let mut clear_event = event.clone();
        clear_event["type"] = json!(event_type);
        clear_event["content"] = clear_content.clone();
        Ok(DecryptedRoomEvent {
            event: clear_event,
            event_type,
            content: clear_content,
            sender,
            sender_device: group.sender_device.clone(),
            sender_key: sender_key.clone(),
            sender_ed25519: group.sender_ed25519.clone(),
            session_id: session_id.to_owned(),
            message_index: index,
        })
    }

    /// The session with this ID in the room, with the Curve25519 key of the
    /// device that shared it.
    fn find_mut(&mut self, room_id: &RoomId, session_id: &str) -> Option<(&String, &mut InboundGroup)> {
        self.rooms
            .get_mut(room_id)?
            .iter_mut()
            .find(|((_, id), _)| id == session_id)
            .map(|((sender_key, _), group)| (sender_key, group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_settings_come_from_the_encryption_event_with_the_spec_defaults() {
        assert_eq!(
            RoomSettings::default(),
            RoomSettings { rotation_period_ms: 604_800_000, rotation_period_msgs: 100 }
        );
        let content = json!({ "algorithm": MEGOLM_V1, "rotation_period_ms": 3_600_000, "rotation_period_msgs": 5 });
        assert_eq!(
            RoomSettings::from_encryption_content(&content),
            RoomSettings { rotation_period_ms: 3_600_000, rotation_period_msgs: 5 }
        );
        let content = json!({ "algorithm": MEGOLM_V1, "rotation_period_msgs": 0 });
        assert_eq!(
            RoomSettings::from_encryption_content(&content),
            RoomSettings { rotation_period_ms: DEFAULT_ROTATION_PERIOD_MS, rotation_period_msgs: 1 }
        );
    }
}
