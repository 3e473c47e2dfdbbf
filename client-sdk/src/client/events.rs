//! What the client hands to its caller: room events, decrypted where they
//! were encrypted, and the rooms it knows about.

use std::collections::BTreeSet;

use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::{DecryptionError, RefusedDevice, RoomSettings, ToDeviceFailure};

/// How a room event was protected.
#[derive(Debug, Clone, PartialEq)]
pub enum Encryption {
    /// It was sent in the clear.
    None,
    /// It was encrypted with Megolm and decrypted here.
    Decrypted {
        /// The device whose room key decrypted it.
        sender_device: OwnedDeviceId,
        /// The Megolm session ID.
        session_id: String,
    },
    /// It is encrypted and could not be decrypted, for this reason.
    Undecryptable(DecryptionError),
}

/// A room event, as the caller sees it: for an encrypted event, the
/// decrypted type and content (or the reason it could not be decrypted).
#[derive(Debug, Clone, PartialEq)]
pub struct RoomEvent {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The event ID.
    pub event_id: String,
    /// The sender.
    pub sender: OwnedUserId,
    /// When the sender's server received it, in milliseconds since the epoch.
    pub origin_server_ts: u64,
    /// The event type: the decrypted one for an encrypted event, or
    /// `m.room.encrypted` when it could not be decrypted.
    pub event_type: String,
    /// The content: the decrypted one, or the encrypted one when it could
    /// not be decrypted.
    pub content: Value,
    /// Whether it was encrypted, and how decryption went.
    pub encryption: Encryption,
}

impl RoomEvent {
    /// The `body` of an `m.room.message`, if this is one.
    pub fn text(&self) -> Option<&str> {
        (self.event_type == "m.room.message").then(|| self.content["body"].as_str()).flatten()
    }

    /// Whether the event was encrypted and decrypted.
    pub fn was_encrypted(&self) -> bool {
        matches!(self.encryption, Encryption::Decrypted { .. })
    }
}

/// The user's membership of a room, as far as this client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Membership {
    /// Joined.
    Join,
    /// Invited, not joined yet.
    Invite,
    /// Left, kicked or banned.
    Leave,
}

/// What the client knows about a room from its syncs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// The room ID.
    pub room_id: OwnedRoomId,
    /// This user's membership.
    pub membership: Membership,
    /// The room's name, if it has one.
    pub name: Option<String>,
    /// The canonical alias, if any.
    pub alias: Option<String>,
    /// The encryption settings, for an encrypted room.
    pub encryption: Option<RoomSettings>,
    /// Who invited this user, for an invite.
    pub inviter: Option<OwnedUserId>,
    /// Joined and invited members (known for joined rooms).
    pub members: BTreeSet<OwnedUserId>,
}

impl RoomInfo {
    pub(crate) fn new(room_id: OwnedRoomId, membership: Membership) -> Self {
        Self { room_id, membership, name: None, alias: None, encryption: None, inviter: None, members: BTreeSet::new() }
    }

    /// The name to show: the room name, the alias or the room ID.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().or(self.alias.as_deref()).unwrap_or(self.room_id.as_str())
    }
}

/// What one sync brought.
#[derive(Debug, Clone, Default)]
pub struct SyncBatch {
    /// The new non-state timeline events of joined rooms, in order,
    /// decrypted where they were encrypted. Events that could not be
    /// decrypted earlier and can now (their room key arrived late) are added
    /// at the end.
    pub events: Vec<RoomEvent>,
    /// Rooms this user was newly invited to.
    pub invites: Vec<RoomInfo>,
    /// Devices of other users that were refused (bad signature, changed
    /// identity keys): they get no room keys and their keys are not trusted.
    pub refused_devices: Vec<RefusedDevice>,
    /// Encrypted to-device messages that were rejected, with the reason.
    pub to_device_failures: Vec<ToDeviceFailure>,
    /// The token this batch ends at.
    pub next_batch: String,
}
