//! Hearth's Rust client library: a Matrix client with end-to-end
//! encryption on vodozemac.
//!
//! - [`Client`] talks to a homeserver (reqwest with rustls, ruma's request
//!   and response types): registration, login, devices, profile, rooms,
//!   messages, history and a sync loop. Sending into an encrypted room
//!   encrypts; receiving decrypts; events that cannot be decrypted are
//!   handed over with the reason.
//! - [`crypto::CryptoMachine`] is the end-to-end encryption core (Olm and
//!   Megolm), which does no I/O. Every private key is generated on the
//!   device and never leaves it.
//! - [`Store`] keeps the session and the crypto state in a sled database
//!   encrypted with a key derived (Argon2id) from a passphrase.
//! - [`TlsTrust`] says which server certificates to accept: the system's
//!   CAs, a CA file, or a pinned fingerprint for a self-signed server.

mod client;
pub mod crypto;
pub mod device;
mod error;
pub mod store;
mod tls;

pub use client::{
    Client, DeviceInfo, Encryption, LOGIN_PASSWORD_TOTP, Membership, MessagesPage, NewRoom, Registration, RoomEvent,
    RoomInfo, Session, SyncBatch,
};
pub use device::{DeviceIdentity, DeviceKeysError};
pub use error::ClientError;
/// The ruma version whose types this crate's API uses.
pub use ruma;
pub use store::{Store, StoreError};
pub use tls::{TlsTrust, pem_fingerprint};
