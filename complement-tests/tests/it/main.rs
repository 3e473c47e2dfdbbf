//! Black-box tests: each starts the real `homeserver` binary and talks HTTPS to it.

mod accounts;
mod admin_cli;
mod browser;
mod client_sdk;
mod devices;
mod directory;
mod discovery;
mod e2ee_js;
mod e2ee_sdk;
mod email;
mod ephemeral;
mod errors;
mod keys;
mod lifecycle;
mod login;
mod matrix_sdk_client;
mod mfa;
mod pages;
mod profile;
mod push;
mod register;
mod room_extras;
mod rooms;
mod security;
mod sso;
mod sync;
