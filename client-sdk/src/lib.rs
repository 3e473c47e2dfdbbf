//! Hearth's Rust client library.
//!
//! End-to-end encryption is built on vodozemac; every private key is
//! generated on the device and never leaves it. This crate starts with the
//! device identity: the Olm account and the signed device keys a client
//! publishes.

pub mod crypto;
pub mod device;

pub use device::{DeviceIdentity, DeviceKeysError};
/// The ruma version whose types this crate's API uses.
pub use ruma;
