//! The second login factor: TOTP (RFC 6238: SHA-1, 6 digits, 30-second
//! steps, one step of tolerance each way) with single-use recovery codes.
//!
//! A user's record is sealed with XChaCha20-Poly1305 under the server's MFA
//! key (`mfa.key_file`, or `data_dir/mfa.key` generated on first start) with
//! the user ID as associated data, so the database never holds a TOTP secret
//! in the clear and a record cannot be moved to another user. Recovery codes
//! are stored as SHA-256 hashes (they are random, 50 bits each, so a slow
//! hash adds nothing). A code is accepted once: the time step it matched is
//! remembered, and a code of that step or an earlier one is refused.

use std::path::Path;
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload, rand_core::RngCore};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ruma::UserId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Builder, Secret, Totp};

use super::locks::UserLocks;
use crate::{
    config::Config,
    err,
    error::{Error, Result},
    storage::{Batch, Db, StorageError, trees},
    util::{constant_time_eq, now_ms},
};

/// The TOTP step in seconds.
const STEP_SECS: u64 = 30;
/// Accepted steps before and after the current one.
const SKEW: u64 = 1;
/// How many recovery codes enabling issues.
const RECOVERY_CODES: usize = 10;
/// The nonce length of XChaCha20-Poly1305.
const NONCE_LEN: usize = 24;

/// What the database holds for a user (sealed).
#[derive(Serialize, Deserialize)]
struct Record {
    /// The raw TOTP secret (20 random bytes).
    secret: Vec<u8>,
    /// Whether the user confirmed a code: only then is the factor required.
    active: bool,
    /// The last time step a code was accepted for.
    last_step: Option<u64>,
    /// SHA-256 (hex) of the recovery codes not used yet.
    recovery: Vec<String>,
}

/// What an enrolment hands to the user.
#[derive(Debug, Serialize)]
pub struct Enrolment {
    /// The secret, base32 as authenticator apps take it.
    pub secret: String,
    /// The `otpauth://totp/…` URI (what a QR code encodes).
    pub otpauth_uri: String,
}

/// A user's second-factor state.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Status {
    /// Whether logins need the code.
    pub enabled: bool,
    /// Whether an enrolment waits for its confirming code.
    pub pending: bool,
    /// Unused recovery codes.
    pub recovery_codes_left: usize,
}

/// The verdict on a code offered at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A current TOTP code, not used before.
    Accepted,
    /// An unused recovery code, now used up.
    RecoveryCodeUsed,
    /// A valid code of a time step already used.
    Replayed,
    /// Not a valid code.
    Wrong,
}

pub struct Service {
    db: Db,
    cipher: XChaCha20Poly1305,
    locks: Arc<UserLocks>,
    issuer: String,
}

impl Service {
    /// Opens the service with the configured key, generating
    /// `data_dir/mfa.key` (mode 0600) when none is configured.
    pub fn new(config: &Config, db: Db, locks: Arc<UserLocks>) -> Result<Self> {
        let key = load_or_generate_key(&config.mfa_key_path()).map_err(Error::internal)?;
        Ok(Self { db, cipher: XChaCha20Poly1305::new(&key.into()), locks, issuer: config.server_name.clone() })
    }

    fn load(&self, user_id: &UserId) -> Result<Option<Record>> {
        let corrupt = |reason: String| -> Error { StorageError::Corrupt { tree: trees::USERID_TOTP, reason }.into() };
        let Some(sealed) = self.db.tree(trees::USERID_TOTP)?.get(user_id.as_bytes())? else {
            return Ok(None);
        };
        if sealed.len() < NONCE_LEN {
            return Err(corrupt("truncated record".to_owned()));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: user_id.as_bytes() })
            .map_err(|_| corrupt("record does not decrypt with the MFA key".to_owned()))?;
        serde_json::from_slice(&plain).map(Some).map_err(|e| corrupt(e.to_string()))
    }

    async fn store(&self, user_id: &UserId, record: Option<&Record>) -> Result<()> {
        let mut batch = Batch::new();
        match record {
            None => batch.remove(trees::USERID_TOTP, user_id.as_bytes().to_vec()),
            Some(record) => {
                let plain = serde_json::to_vec(record).expect("serializes");
                let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
                let ciphertext = self
                    .cipher
                    .encrypt(&nonce, Payload { msg: &plain, aad: user_id.as_bytes() })
                    .map_err(|_| Error::internal("sealing the MFA record failed"))?;
                let mut sealed = nonce.to_vec();
                sealed.extend_from_slice(&ciphertext);
                batch.insert(trees::USERID_TOTP, user_id.as_bytes().to_vec(), sealed);
            }
        }
        Ok(self.db.commit(batch).await?)
    }

    fn totp(&self, user_id: &UserId, secret: &[u8]) -> Result<Totp> {
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(6)
            .with_skew(SKEW as u16)
            .with_step_duration(STEP_SECS)
            .with_secret(secret.to_vec())
            // The otpauth label is `issuer:account`, so the account name
            // cannot hold the user ID's colon: the issuer is the server name.
            .with_account_name(user_id.localpart())
            .with_issuer(Some(self.issuer.as_str()))
            .build()
            .map_err(|e| Error::internal(format!("TOTP: {e}")))
    }

    /// The user's state.
    pub fn status(&self, user_id: &UserId) -> Result<Status> {
        Ok(match self.load(user_id)? {
            None => Status { enabled: false, pending: false, recovery_codes_left: 0 },
            Some(r) => Status { enabled: r.active, pending: !r.active, recovery_codes_left: r.recovery.len() },
        })
    }

    /// Whether logins of the user need a second factor.
    pub fn is_enabled(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.load(user_id)?.is_some_and(|r| r.active))
    }

    /// Starts (or restarts) an enrolment with a new secret. Refused while
    /// the factor is enabled.
    pub async fn begin(&self, user_id: &UserId) -> Result<Enrolment> {
        let _guard = self.locks.lock(user_id).await;
        if self.load(user_id)?.is_some_and(|r| r.active) {
            return Err(err!(Forbidden, "TOTP is already enabled; disable it before enrolling again"));
        }
        let mut secret = vec![0u8; 20];
        OsRng.fill_bytes(&mut secret);
        let totp = self.totp(user_id, &secret)?;
        let enrolment = Enrolment {
            secret: Secret::from(secret.clone()).to_base32(),
            otpauth_uri: totp.to_url().map_err(|e| Error::internal(format!("TOTP URI: {e}")))?,
        };
        self.store(user_id, Some(&Record { secret, active: false, last_step: None, recovery: Vec::new() })).await?;
        Ok(enrolment)
    }

    /// The enrolment waiting for its confirming code, with its QR code
    /// (a PNG, base64) for the account page.
    pub fn pending_enrolment(&self, user_id: &UserId) -> Result<Option<(Enrolment, String)>> {
        let Some(record) = self.load(user_id)?.filter(|r| !r.active) else { return Ok(None) };
        let totp = self.totp(user_id, &record.secret)?;
        let enrolment = Enrolment {
            secret: Secret::from(record.secret).to_base32(),
            otpauth_uri: totp.to_url().map_err(|e| Error::internal(format!("TOTP URI: {e}")))?,
        };
        let qr = totp.to_qr_base64().map_err(|e| Error::internal(format!("TOTP QR code: {e}")))?;
        Ok(Some((enrolment, qr)))
    }

    /// Confirms an enrolment with a current code: the factor becomes active
    /// and the recovery codes are returned, the only time they are shown.
    pub async fn confirm(&self, user_id: &UserId, code: &str) -> Result<Vec<String>> {
        let _guard = self.locks.lock(user_id).await;
        let Some(mut record) = self.load(user_id)?.filter(|r| !r.active) else {
            return Err(err!(Forbidden, "No TOTP enrolment is waiting for confirmation"));
        };
        let Some(step) = self.matching_step(user_id, &record, code)? else {
            return Err(err!(Forbidden, "The code is not valid"));
        };
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        record.active = true;
        record.last_step = Some(step);
        record.recovery = codes.iter().map(|c| hash_code(c)).collect();
        self.store(user_id, Some(&record)).await?;
        Ok(codes)
    }

    /// Checks a code (TOTP or recovery) at login or in user-interactive
    /// auth. A TOTP code is accepted once; a recovery code is used up.
    pub async fn verify(&self, user_id: &UserId, code: &str) -> Result<Verdict> {
        let _guard = self.locks.lock(user_id).await;
        let Some(mut record) = self.load(user_id)?.filter(|r| r.active) else {
            return Ok(Verdict::Wrong);
        };
        if let Some(step) = self.matching_step(user_id, &record, code)? {
            if record.last_step.is_some_and(|last| step <= last) {
                return Ok(Verdict::Replayed);
            }
            record.last_step = Some(step);
            self.store(user_id, Some(&record)).await?;
            return Ok(Verdict::Accepted);
        }
        let hashed = hash_code(code);
        if let Some(i) = record.recovery.iter().position(|h| constant_time_eq(h.as_bytes(), hashed.as_bytes())) {
            record.recovery.remove(i);
            self.store(user_id, Some(&record)).await?;
            return Ok(Verdict::RecoveryCodeUsed);
        }
        Ok(Verdict::Wrong)
    }

    /// Removes the factor (the caller checked the password and a code).
    pub async fn disable(&self, user_id: &UserId) -> Result<()> {
        let _guard = self.locks.lock(user_id).await;
        self.store(user_id, None).await
    }

    /// The time step a 6-digit code matches, within the tolerance.
    fn matching_step(&self, user_id: &UserId, record: &Record, code: &str) -> Result<Option<u64>> {
        let code = code.trim();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        // totp-rs compares in constant time and returns the matched step.
        Ok(self.totp(user_id, &record.secret)?.check(code, now_ms() / 1000))
    }
}

/// A random recovery code: 10 characters of base32 in two groups of five.
fn recovery_code() -> String {
    let mut bytes = [0u8; 7];
    OsRng.fill_bytes(&mut bytes);
    let encoded = Secret::from(bytes.to_vec()).to_base32().to_lowercase();
    format!("{}-{}", &encoded[..5], &encoded[5..10])
}

/// The stored form of a recovery code: case and dashes do not matter.
fn hash_code(code: &str) -> String {
    let normal: String = code.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_lowercase();
    hex::encode(Sha256::digest(normal.as_bytes()))
}

/// Reads the 32-byte key (raw, or 64 hex digits), or generates it.
fn load_or_generate_key(path: &Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let raw = hex::decode(text.trim()).unwrap_or(bytes);
            raw.try_into().map_err(|_| {
                std::io::Error::other(format!("{}: the MFA key must be 32 bytes (64 hex digits)", path.display()))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            OsRng.fill_bytes(&mut key);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            std::io::Write::write_all(&mut options.open(path)?, hex::encode(key).as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}
