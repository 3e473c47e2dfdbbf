//! Accounts: creation, passwords (argon2id, hashed off the async workers),
//! admin flag, deactivation, profiles and third-party identifiers.

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{
    config::Config,
    err,
    error::{Error, Result},
    storage::{Batch, Db, codec, trees},
    util::now_ms,
};

/// The stored account record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    /// argon2id PHC string; `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub deactivated: bool,
    pub created_ts: u64,
}

/// Displayname and avatar.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

/// A third-party identifier attached to an account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThreePid {
    pub medium: String,
    pub address: String,
    pub added_at: u64,
    pub validated_at: Option<u64>,
}

/// What a new account starts with.
#[derive(Debug, Clone, Default)]
pub struct NewAccount {
    pub password: Option<String>,
    pub admin: bool,
    pub displayname: Option<String>,
    pub email: Option<String>,
    /// Whether `email` was verified (with a code sent to it).
    pub email_verified: bool,
}

pub struct Service {
    config: Arc<Config>,
    db: Db,
    /// Serialises account creation so two requests cannot take one name.
    create_lock: Mutex<()>,
    /// A hash of a fixed string with the configured parameters, for timing equalisation.
    dummy_hash: tokio::sync::OnceCell<String>,
}

fn decode<T: for<'de> Deserialize<'de>>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| crate::storage::StorageError::Corrupt { tree, reason: e.to_string() }.into())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

/// Checks a localpart against the spec's user ID grammar (`[a-z0-9._=\-/+]+`).
pub fn validate_localpart(localpart: &str, server_name: &str) -> Result<()> {
    if localpart.is_empty() {
        return Err(err!(InvalidUsername, "The username must not be empty"));
    }
    if !localpart.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+')) {
        return Err(err!(InvalidUsername, "Usernames may only contain lower-case letters, digits and . _ = - / +"));
    }
    if localpart.len() + server_name.len() + 2 > 255 {
        return Err(err!(InvalidUsername, "The user ID would be longer than 255 bytes"));
    }
    Ok(())
}

impl Service {
    pub fn new(config: Arc<Config>, db: Db) -> Self {
        Self { config, db, create_lock: Mutex::new(()), dummy_hash: tokio::sync::OnceCell::new() }
    }

    fn argon2(&self) -> Result<Argon2<'static>> {
        let a = &self.config.auth;
        let params = Params::new(a.argon2_memory_kib, a.argon2_iterations, a.argon2_parallelism, None)
            .map_err(Error::internal)?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Hashes a password on a blocking thread.
    pub async fn hash_password(&self, password: String) -> Result<String> {
        let argon2 = self.argon2()?;
        tokio::task::spawn_blocking(move || {
            argon2.hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(Error::internal)
        })
        .await
        .map_err(Error::internal)?
    }

    /// Checks a password against an account on a blocking thread.
    pub async fn check_password(&self, account: &Account, password: String) -> Result<bool> {
        let Some(hash) = account.password_hash.clone() else { return Ok(false) };
        let argon2 = self.argon2()?;
        tokio::task::spawn_blocking(move || argon2.verify_password(password.as_bytes(), hash.as_str()).is_ok())
            .await
            .map_err(Error::internal)
    }

    /// Runs one verification against a throw-away hash, taking as long as a real check.
    pub async fn check_password_timing_only(&self, password: String) -> Result<()> {
        let dummy = self
            .dummy_hash
            .get_or_init(|| async { self.hash_password("hearth timing equaliser".into()).await.unwrap_or_default() })
            .await
            .clone();
        let account = Account { password_hash: Some(dummy), admin: false, deactivated: false, created_ts: 0 };
        self.check_password(&account, password).await?;
        Ok(())
    }

    pub fn check_password_strength(&self, password: &str) -> Result<()> {
        if password.chars().count() < self.config.auth.min_password_length {
            return Err(err!(
                WeakPassword,
                "The password must be at least {} characters long",
                self.config.auth.min_password_length
            ));
        }
        let classes: [fn(char) -> bool; 4] =
            [|c| c.is_lowercase(), |c| c.is_uppercase(), |c| c.is_numeric(), |c| !c.is_alphanumeric()];
        let mixed = classes.iter().filter(|class| password.chars().any(class)).count();
        if mixed < usize::from(self.config.auth.min_password_classes) {
            return Err(err!(
                WeakPassword,
                "The password must mix at least {} of: lowercase letters, uppercase letters, digits, other characters",
                self.config.auth.min_password_classes
            ));
        }
        Ok(())
    }

    pub fn user_id(&self, localpart: &str) -> Result<OwnedUserId> {
        validate_localpart(localpart, &self.config.server_name)?;
        UserId::parse(format!("@{localpart}:{}", self.config.server_name))
            .map_err(|_| err!(InvalidUsername, "Invalid username"))
    }

    /// Resolves what a client typed at login (localpart or full ID) to a local user ID.
    pub fn resolve_login_user(&self, user: &str) -> Result<OwnedUserId> {
        if user.starts_with('@') {
            let id = UserId::parse(user.to_lowercase()).map_err(|_| err!(InvalidParam, "Invalid user ID"))?;
            if id.server_name() != self.config.server_name.as_str() {
                return Err(err!(Forbidden, "Invalid username or password"));
            }
            Ok(id)
        } else {
            self.user_id(&user.to_lowercase()).map_err(|_| err!(Forbidden, "Invalid username or password"))
        }
    }

    pub fn is_local(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.config.server_name.as_str()
    }

    pub fn account(&self, user_id: &UserId) -> Result<Option<Account>> {
        let tree = self.db.tree(trees::USERID_ACCOUNT)?;
        tree.get(user_id.as_bytes())?.map(|b| decode(trees::USERID_ACCOUNT, &b)).transpose()
    }

    /// Whether a user ID has ever been registered (deactivated IDs stay taken).
    pub fn exists(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.account(user_id)?.is_some())
    }

    /// Creates an account atomically with its profile and e-mail address.
    /// `extra` holds writes that belong to the creation (e.g. the first
    /// device and its tokens); everything is made durable with one flush.
    pub async fn create(&self, user_id: &UserId, new: NewAccount, extra: Batch) -> Result<()> {
        let password_hash = match new.password {
            Some(p) => Some(self.hash_password(p).await?),
            None => None,
        };
        let _guard = self.create_lock.lock().await;
        if self.exists(user_id)? {
            return Err(err!(UserInUse, "The desired user ID is already taken"));
        }
        if let Some(email) = new.email.as_deref().filter(|_| new.email_verified)
            && self.email_owner(email)?.is_some()
        {
            return Err(err!(ThreepidInUse, "This e-mail address is already in use"));
        }
        let now = now_ms();
        let account = Account { password_hash, admin: new.admin, deactivated: false, created_ts: now };
        let profile =
            Profile { displayname: new.displayname.or_else(|| Some(user_id.localpart().to_owned())), avatar_url: None };
        let mut batch = Batch::new();
        batch.insert(trees::USERID_ACCOUNT, user_id.as_bytes().to_vec(), encode(&account));
        batch.insert(trees::USERID_PROFILE, user_id.as_bytes().to_vec(), encode(&profile));
        if let Some(email) = new.email {
            self.email_batch(user_id, &email, new.email_verified, &mut batch);
        }
        batch.ops.extend(extra.ops);
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Adds the writes that replace the password hash (the caller holds the user's lock).
    pub fn password_batch(&self, user_id: &UserId, hash: String, batch: &mut Batch) -> Result<()> {
        let mut account = self.account(user_id)?.ok_or_else(|| err!(NotFound, "No such user"))?;
        account.password_hash = Some(hash);
        batch.insert(trees::USERID_ACCOUNT, user_id.as_bytes().to_vec(), encode(&account));
        Ok(())
    }

    /// The writes that deactivate an account (the caller adds session removal).
    pub fn deactivation_batch(&self, user_id: &UserId, batch: &mut Batch) -> Result<()> {
        let mut account = self.account(user_id)?.ok_or_else(|| err!(NotFound, "No such user"))?;
        account.deactivated = true;
        account.password_hash = None;
        batch.insert(trees::USERID_ACCOUNT, user_id.as_bytes().to_vec(), encode(&account));
        batch.insert(trees::USERID_PROFILE, user_id.as_bytes().to_vec(), encode(&Profile::default()));
        for pid in self.threepids(user_id)? {
            self.threepid_removal_batch(user_id, &pid, batch);
        }
        Ok(())
    }

    /// The writes that attach an e-mail address (lowercased) to an account;
    /// a verified address is also indexed, so that it belongs to one account.
    fn email_batch(&self, user_id: &UserId, email: &str, verified: bool, batch: &mut Batch) {
        let now = now_ms();
        let pid = ThreePid {
            medium: "email".into(),
            address: email.to_lowercase(),
            added_at: now,
            validated_at: verified.then_some(now),
        };
        if verified {
            batch.insert(trees::EMAIL_USERID, pid.address.as_bytes().to_vec(), user_id.as_bytes().to_vec());
        }
        batch.insert(trees::USERIDTHREEPID_INFO, threepid_key(user_id, &pid.medium, &pid.address), encode(&pid));
    }

    fn threepid_removal_batch(&self, user_id: &UserId, pid: &ThreePid, batch: &mut Batch) {
        if pid.medium == "email" && pid.validated_at.is_some() {
            batch.remove(trees::EMAIL_USERID, pid.address.as_bytes().to_vec());
        }
        batch.remove(trees::USERIDTHREEPID_INFO, threepid_key(user_id, &pid.medium, &pid.address));
    }

    /// The account a verified e-mail address belongs to.
    pub fn email_owner(&self, email: &str) -> Result<Option<OwnedUserId>> {
        let tree = self.db.tree(trees::EMAIL_USERID)?;
        let Some(bytes) = tree.get(email.to_lowercase().as_bytes())? else { return Ok(None) };
        let id = std::str::from_utf8(&bytes).ok().and_then(|s| UserId::parse(s).ok()).ok_or_else(|| {
            crate::storage::StorageError::Corrupt { tree: trees::EMAIL_USERID, reason: "bad user ID".into() }
        })?;
        Ok(Some(id))
    }

    /// Attaches a verified e-mail address to an account (replacing an
    /// unverified record of the same address). Refused when another
    /// account has it.
    pub async fn add_verified_email(&self, user_id: &UserId, email: &str) -> Result<()> {
        let _guard = self.create_lock.lock().await;
        match self.email_owner(email)? {
            Some(owner) if owner == user_id => return Ok(()),
            Some(_) => return Err(err!(ThreepidInUse, "This e-mail address is already in use")),
            None => {}
        }
        let mut batch = Batch::new();
        self.email_batch(user_id, email, true, &mut batch);
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Removes a third-party identifier from an account; false if it had none such.
    pub async fn remove_threepid(&self, user_id: &UserId, medium: &str, address: &str) -> Result<bool> {
        let _guard = self.create_lock.lock().await;
        let address = if medium == "email" { address.to_lowercase() } else { address.to_owned() };
        let Some(pid) = self.threepids(user_id)?.into_iter().find(|p| p.medium == medium && p.address == address)
        else {
            return Ok(false);
        };
        let mut batch = Batch::new();
        self.threepid_removal_batch(user_id, &pid, &mut batch);
        self.db.commit(batch).await?;
        Ok(true)
    }

    /// Every account, in user ID order.
    pub fn list(&self) -> Result<Vec<(OwnedUserId, Account)>> {
        let tree = self.db.tree(trees::USERID_ACCOUNT)?;
        let mut out = Vec::new();
        for item in tree.scan_prefix(b"") {
            let (k, v) = item?;
            let id = std::str::from_utf8(&k).ok().and_then(|s| UserId::parse(s).ok()).ok_or_else(|| {
                crate::storage::StorageError::Corrupt { tree: trees::USERID_ACCOUNT, reason: "bad key".into() }
            })?;
            out.push((id, decode(trees::USERID_ACCOUNT, &v)?));
        }
        Ok(out)
    }

    pub fn profile(&self, user_id: &UserId) -> Result<Option<Profile>> {
        let tree = self.db.tree(trees::USERID_PROFILE)?;
        tree.get(user_id.as_bytes())?.map(|b| decode(trees::USERID_PROFILE, &b)).transpose()
    }

    pub async fn set_profile(&self, user_id: &UserId, profile: &Profile) -> Result<()> {
        let mut batch = Batch::new();
        batch.insert(trees::USERID_PROFILE, user_id.as_bytes().to_vec(), encode(profile));
        self.db.commit(batch).await?;
        Ok(())
    }

    pub fn threepids(&self, user_id: &UserId) -> Result<Vec<ThreePid>> {
        let tree = self.db.tree(trees::USERIDTHREEPID_INFO)?;
        let prefix = codec::prefix(&[user_id.as_str().into()]);
        tree.scan_prefix(&prefix).map(|item| decode(trees::USERIDTHREEPID_INFO, &item?.1)).collect()
    }
}

fn threepid_key(user_id: &UserId, medium: &str, address: &str) -> Vec<u8> {
    codec::key(&[user_id.as_str().into(), medium.into(), address.into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localpart_grammar() {
        assert!(validate_localpart("alice.b_c=d-e/f+g9", "hs").is_ok());
        for bad in ["", "Alice", "al ice", "al:ice", "é", "a@b"] {
            assert!(validate_localpart(bad, "hs").is_err(), "{bad:?} must be refused");
        }
        assert!(validate_localpart(&"a".repeat(250), "localhost").is_err());
    }
}
