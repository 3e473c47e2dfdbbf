//! Account lockout after repeated failed logins, kept in the database so a
//! restart does not reset it.

use std::sync::Arc;

use ruma::UserId;
use serde::{Deserialize, Serialize};

use super::locks::UserLocks;
use crate::{
    config::Config,
    error::Result,
    storage::{Batch, Db, StorageError, trees},
    util::now_ms,
};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Failures {
    failures: u32,
    locked_until: Option<u64>,
}

pub struct Service {
    config: Arc<Config>,
    db: Db,
    locks: Arc<UserLocks>,
}

impl Service {
    pub fn new(config: Arc<Config>, db: Db, locks: Arc<UserLocks>) -> Self {
        Self { config, db, locks }
    }

    fn load(&self, user_id: &UserId) -> Result<Failures> {
        let tree = self.db.tree(trees::USERID_LOGINFAILURES)?;
        match tree.get(user_id.as_bytes())? {
            None => Ok(Failures::default()),
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| StorageError::Corrupt { tree: trees::USERID_LOGINFAILURES, reason: e.to_string() }.into()),
        }
    }

    /// Milliseconds the account stays locked, if it is locked now.
    pub fn locked_for(&self, user_id: &UserId) -> Result<Option<u64>> {
        let now = now_ms();
        Ok(self.load(user_id)?.locked_until.filter(|t| *t > now).map(|t| t - now))
    }

    /// Counts a failed attempt; returns true if this attempt locked the account.
    pub async fn record_failure(&self, user_id: &UserId) -> Result<bool> {
        let _guard = self.locks.lock(user_id).await;
        let mut f = self.load(user_id)?;
        let now = now_ms();
        if f.locked_until.is_some_and(|t| t <= now) {
            f = Failures::default();
        }
        f.failures += 1;
        let locked = f.failures >= self.config.auth.lockout_threshold && f.locked_until.is_none();
        if locked {
            f.locked_until = Some(now + self.config.auth.lockout_secs * 1000);
        }
        let mut batch = Batch::new();
        batch.insert(
            trees::USERID_LOGINFAILURES,
            user_id.as_bytes().to_vec(),
            serde_json::to_vec(&f).expect("serializes"),
        );
        self.db.commit(batch).await?;
        Ok(locked)
    }

    /// Adds the writes that clear the failure state (the caller holds the user's lock).
    pub fn clear_batch(&self, user_id: &UserId, batch: &mut Batch) {
        batch.remove(trees::USERID_LOGINFAILURES, user_id.as_bytes().to_vec());
    }

    /// Clears the failure count after a successful login.
    pub async fn record_success(&self, user_id: &UserId) -> Result<()> {
        let _guard = self.locks.lock(user_id).await;
        let tree = self.db.tree(trees::USERID_LOGINFAILURES)?;
        if tree.get(user_id.as_bytes())?.is_some() {
            let mut batch = Batch::new();
            batch.remove(trees::USERID_LOGINFAILURES, user_id.as_bytes().to_vec());
            self.db.commit(batch).await?;
        }
        Ok(())
    }
}
