//! End-to-end encryption: Olm and Megolm on vodozemac, in a core that does
//! no I/O.
//!
//! [`CryptoMachine`] holds the device's Olm account (its private keys never
//! leave it), its Olm sessions, the device lists of other users, and the
//! Megolm sessions of encrypted rooms. It takes in what a `/sync` response
//! brings ([`SyncChanges`]) and the responses to the requests it hands out
//! ([`OutgoingRequest`]); sending those requests is the caller's job.
//!
//! Devices are accepted only with a valid self-signature and never with
//! changed identity keys ([`RefusedDevice`] reports the others). Room keys
//! are accepted only over Olm, from a known device of the sender, after the
//! spec's checks on the Olm payload. Megolm decryption detects replays and
//! reports why an event could not be decrypted ([`DecryptionError`]).
//!
//! The whole machine can be pickled ([`CryptoMachine::pickle`]) for an
//! encrypted store and restored. Not here yet: cross-signing, key backup and
//! key requests.

mod devices;
mod error;
mod machine;
mod megolm;
mod olm;
mod pickle;
mod requests;

pub use devices::{RefusedDevice, TrackedDevice};
pub use error::{CryptoError, DecryptionError, PayloadProblem, RefusalReason};
pub use machine::CryptoMachine;
pub use megolm::{DEFAULT_ROTATION_PERIOD_MS, DEFAULT_ROTATION_PERIOD_MSGS, DecryptedRoomEvent, RoomSettings};
pub use requests::{
    OutgoingRequest, RequestKind, ResponseOutcome, RoomKeyInfo, SyncChanges, SyncOutcome, ToDeviceEvent,
    ToDeviceFailure, UnreachableDevice, UserDevice,
};

/// The Olm algorithm name, `m.olm.v1.curve25519-aes-sha2`.
pub const OLM_V1: &str = "m.olm.v1.curve25519-aes-sha2";

/// The Megolm algorithm name, `m.megolm.v1.aes-sha2`.
pub const MEGOLM_V1: &str = "m.megolm.v1.aes-sha2";

#[cfg(test)]
mod tests;
