//! The client's local store: a sled database whose values are encrypted
//! with a key derived from a passphrase.
//!
//! The key is derived with Argon2id (19 MiB, two passes) from the
//! passphrase and a random salt kept in the store. Each value is sealed with
//! XChaCha20-Poly1305 under a fresh random nonce, with the value's name as
//! associated data, so a value cannot be moved under another name unnoticed.
//! The names of the values and the salt are the only things in the clear;
//! the crypto state, the access token and the sync token are all sealed.

use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload, rand_core::RngCore};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The name of the value that proves the passphrase is right.
const CHECK: &str = "check";
/// What that value holds.
const CHECK_VALUE: &[u8] = b"hearth client store";
/// The salt of the key derivation, in the clear.
const SALT: &str = "salt";
/// The prefix of sealed values' keys in the database.
const SEALED_PREFIX: &str = "sealed:";
/// Argon2id memory in KiB, passes and lanes.
const ARGON2_M_KIB: u32 = 19 * 1024;
const ARGON2_T: u32 = 2;
const ARGON2_P: u32 = 1;
/// The nonce length of XChaCha20-Poly1305.
const NONCE_LEN: usize = 24;

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The passphrase does not open this store.
    #[error("wrong passphrase for the store")]
    WrongPassphrase,
    /// A value could not be decrypted or parsed: the store was damaged or
    /// tampered with.
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("store database error: {0}")]
    Database(#[from] sled::Error),
}

/// An encrypted key-value store in a directory.
pub struct Store {
    db: sled::Db,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store in `path`, creating it (with a new salt) if it does
    /// not exist. A store that exists must be opened with the passphrase it
    /// was created with.
    pub fn open(path: &Path, passphrase: &str) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).cache_capacity(4 << 20).open()?;
        let salt = match db.get(SALT)? {
            Some(salt) => salt.to_vec(),
            None => {
                let mut salt = vec![0u8; 16];
                OsRng.fill_bytes(&mut salt);
                db.insert(SALT, salt.as_slice())?;
                salt
            }
        };
        let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32))
            .map_err(|e| StoreError::Corrupt(format!("key derivation parameters: {e}")))?;
        let mut key = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase.as_bytes(), &salt, &mut key)
            .map_err(|e| StoreError::Corrupt(format!("key derivation: {e}")))?;
        let store = Self { db, cipher: XChaCha20Poly1305::new(&key.into()) };
        key.fill(0);

        match store.get_bytes(CHECK) {
            Ok(Some(check)) if check == CHECK_VALUE => {}
            Ok(Some(_)) | Err(StoreError::Corrupt(_)) => return Err(StoreError::WrongPassphrase),
            Ok(None) => store.put_bytes(CHECK, CHECK_VALUE)?,
            Err(e) => return Err(e),
        }
        Ok(store)
    }

    /// Reads and decrypts the value `name`.
    pub fn get_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(sealed) = self.db.get(format!("{SEALED_PREFIX}{name}"))? else {
            return Ok(None);
        };
        if sealed.len() < NONCE_LEN {
            return Err(StoreError::Corrupt(format!("value `{name}` is truncated")));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: name.as_bytes() })
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("value `{name}` does not decrypt")))
    }

    /// Encrypts and writes the value `name`, durably: the store is flushed
    /// before this returns.
    pub fn put_bytes(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(&nonce, Payload { msg: value, aad: name.as_bytes() })
            .map_err(|_| StoreError::Corrupt(format!("value `{name}` could not be encrypted")))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        self.db.insert(format!("{SEALED_PREFIX}{name}"), sealed)?;
        self.db.flush()?;
        Ok(())
    }

    /// Reads the JSON value `name`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.get_bytes(name)?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("value `{name}`: {e}")))
            })
            .transpose()
    }

    /// Writes `value` as JSON under `name`, durably.
    pub fn put<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(format!("value `{name}`: {e}")))?;
        self.put_bytes(name, &bytes)
    }

    /// Removes the value `name`, durably.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.db.remove(format!("{SEALED_PREFIX}{name}"))?;
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_sealed_and_only_the_right_passphrase_opens_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path, "correct horse").unwrap();
            store.put("secret", &serde_json::json!({ "private": "PRIVATE-KEY-MATERIAL" })).unwrap();
            assert_eq!(store.get::<serde_json::Value>("secret").unwrap().unwrap()["private"], "PRIVATE-KEY-MATERIAL");
        }
        // Nothing in the files shows the value.
        for entry in std::fs::read_dir(&path).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                assert!(!bytes.windows(20).any(|w| w == b"PRIVATE-KEY-MATERIAL"), "{}", path.display());
            }
        }
        assert!(matches!(Store::open(&path, "wrong"), Err(StoreError::WrongPassphrase)));
        let store = Store::open(&path, "correct horse").unwrap();
        assert!(store.get::<serde_json::Value>("secret").unwrap().is_some());

        // A value moved under another name does not decrypt.
        let sealed = store.db.get("sealed:secret").unwrap().unwrap();
        store.db.insert("sealed:other", sealed).unwrap();
        assert!(matches!(store.get_bytes("other"), Err(StoreError::Corrupt(_))));
        store.remove("secret").unwrap();
        assert!(store.get_bytes("secret").unwrap().is_none());
    }
}
