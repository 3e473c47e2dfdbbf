//! The errors of the crypto core and the reasons an event could not be
//! decrypted or a device was refused.

use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId};
use serde_json::Value;

use crate::device::DeviceKeysError;

/// An operation of the [`CryptoMachine`](super::CryptoMachine) failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A JSON value could not be built or read.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    /// A JSON object could not be turned into canonical JSON for signing.
    #[error(transparent)]
    Canonical(#[from] DeviceKeysError),
    /// `mark_request_sent` or `mark_request_failed` was called with an ID the
    /// machine did not hand out, or one already marked.
    #[error("no pending request with ID {0}")]
    UnknownRequest(String),
    /// The server's response to a request could not be understood.
    #[error("malformed server response: {0}")]
    MalformedResponse(String),
    /// No room key was shared in the room yet, or not with every current
    /// device of its members: call `share_room_key` first.
    #[error("the room key of {0} is not shared with every current device; call share_room_key first")]
    RoomKeyNotShared(OwnedRoomId),
    /// The room key must be rotated (too old, used for too many messages, or
    /// a member or device left): call `share_room_key` first.
    #[error("the room key of {0} must be rotated; call share_room_key first")]
    RoomKeyExpired(OwnedRoomId),
    /// The device is not among the tracked devices of the user.
    #[error("unknown device {device_id} of {user_id}")]
    UnknownDevice {
        /// The user the device was looked up for.
        user_id: OwnedUserId,
        /// The device that is not known.
        device_id: OwnedDeviceId,
    },
    /// There is no Olm session with the device: claim a one-time key first.
    #[error("no Olm session with device {device_id} of {user_id}")]
    NoOlmSession {
        /// The owner of the device.
        user_id: OwnedUserId,
        /// The device without a session.
        device_id: OwnedDeviceId,
    },
    /// vodozemac refused to encrypt an Olm message.
    #[error("Olm encryption failed: {0}")]
    OlmEncryption(String),
    /// An event could not be decrypted.
    #[error(transparent)]
    Decryption(#[from] DecryptionError),
}

/// Why an encrypted event (a to-device Olm event or a Megolm room event)
/// could not be decrypted or was rejected after decryption.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptionError {
    /// A field is missing or has the wrong type or format.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// The event is not encrypted with an algorithm this machine handles in
    /// that place.
    #[error("unsupported encryption algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// The Olm event carries no ciphertext for this device's Curve25519 key.
    #[error("the event carries no ciphertext for this device")]
    NotForThisDevice,
    /// A normal (type 1) Olm message that no session with the sender's key
    /// can decrypt.
    #[error("no Olm session with {sender_key} can decrypt this message")]
    NoOlmSession {
        /// The sender's Curve25519 key.
        sender_key: String,
    },
    /// A pre-key message could not establish a new Olm session (for example
    /// its one-time key was already used).
    #[error("cannot create an Olm session from the pre-key message: {0}")]
    OlmSessionCreation(String),
    /// The Olm session matching the message failed to decrypt it.
    #[error("Olm decryption failed: {0}")]
    OlmDecryption(String),
    /// The decrypted Olm payload failed the spec's validation.
    #[error("the Olm payload failed validation: {0}")]
    InvalidPayload(PayloadProblem),
    /// The room key came from a Curve25519 key that belongs to no known
    /// device of the sender, even after querying the sender's devices.
    #[error("the sending device is unknown, so the ownership of its key is unproven")]
    UnknownSenderDevice,
    /// A room key reuses the ID of a session known from another room or
    /// sender, or does not connect to the known session with that ID.
    #[error("room key for session {session_id} conflicts with a known session")]
    ConflictingRoomKey {
        /// The session ID of the refused room key.
        session_id: String,
    },
    /// A room key must arrive encrypted with Olm; this one was plaintext.
    #[error("room keys must arrive encrypted with Olm")]
    RoomKeyNotEncrypted,
    /// No room key for this Megolm session was received (yet).
    #[error("unknown Megolm session {session_id}: its room key has not been received")]
    UnknownSession {
        /// The Megolm session ID the event names.
        session_id: String,
    },
    /// The room key received starts after the message's index.
    #[error("the room key starts at message index {first_known}, the message has index {index}")]
    UnknownMessageIndex {
        /// The first index the stored session can decrypt.
        first_known: u32,
        /// The index of the message.
        index: u32,
    },
    /// The signature or MAC did not verify, or the padding was wrong: the
    /// ciphertext was altered or forged.
    #[error("the ciphertext was tampered with: {0}")]
    Tampered(String),
    /// The message index was already decrypted for another event: a replay.
    #[error("replay attack: message index {index} was already used by event {first_event_id}, not {event_id}")]
    Replay {
        /// The Megolm message index seen twice.
        index: u32,
        /// The event that used this index first.
        first_event_id: String,
        /// The event that reuses it.
        event_id: String,
    },
    /// The event, or its decrypted payload, belongs to another room.
    #[error("the event is for room {found}, expected {expected}")]
    WrongRoom {
        /// The room the event was decrypted for.
        expected: String,
        /// The room the event or its payload names.
        found: String,
    },
    /// The event's sender is not the user who shared the Megolm session.
    #[error("the sender {sender} does not own the Megolm session")]
    SenderMismatch {
        /// The `sender` of the event.
        sender: String,
    },
}

/// Which of the spec's checks on a decrypted Olm payload failed. Every check
/// must pass for the payload to be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadProblem {
    /// `sender` in the payload is not the `sender` of the to-device event.
    #[error("`sender` does not match the sender of the event")]
    Sender,
    /// `recipient` in the payload is not this user.
    #[error("`recipient` is not this user")]
    Recipient,
    /// `recipient_keys.ed25519` in the payload is not this device's key.
    #[error("`recipient_keys.ed25519` is not this device's Ed25519 key")]
    RecipientKeys,
    /// `keys.ed25519` in the payload is not the Ed25519 key of the device
    /// that owns the Curve25519 key of the Olm session.
    #[error("`keys.ed25519` is not the Ed25519 key of the sending device")]
    SenderKeys,
    /// `sender_device_keys` names another user, other keys, or its
    /// self-signature does not verify.
    #[error("`sender_device_keys` is inconsistent or not validly signed")]
    SenderDeviceKeys,
}

/// Why a device returned by `/keys/query` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefusalReason {
    /// The `user_id` or `device_id` inside the device keys does not match
    /// where the response put them.
    #[error("the user or device ID inside the device keys does not match the response")]
    IdMismatch,
    /// The device does not publish a valid Ed25519 and Curve25519 key.
    #[error("the device does not publish valid ed25519 and curve25519 keys")]
    MissingKeys,
    /// The device keys are not signed by the device's own Ed25519 key.
    #[error("the device's self-signature does not verify")]
    BadSignature,
    /// The device was seen before with other identity keys.
    #[error("the device's identity keys changed from what was seen before")]
    KeysChanged,
    /// The server returned keys for this very device that are not its own.
    #[error("the server returned keys for this device that are not its own")]
    NotOurKeys,
}

/// A string field of a JSON object, or a [`DecryptionError::Malformed`]
/// naming the field.
pub(crate) fn str_field<'v>(value: &'v Value, name: &str) -> Result<&'v str, DecryptionError> {
    value[name].as_str().ok_or_else(|| DecryptionError::Malformed(format!("missing or invalid `{name}`")))
}
