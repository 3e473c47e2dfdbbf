//! Hearth: a Matrix homeserver in one binary.
//!
//! Layers, each calling only the one below it:
//! `api` (HTTP, ruma types) → `service` (rules) → `storage` (the only code that knows the database).

pub mod admin;
pub mod api;
pub mod config;
pub mod error;
pub mod server;
pub mod service;
pub mod storage;
pub mod tls;
pub mod util;
