//! Striped write locks, per user and per room. Every read-modify-write of a user's account,
//! devices, tokens or lockout state holds the user's lock from the read to
//! the commit, so concurrent requests cannot overwrite each other's writes.

use std::hash::{Hash, Hasher};

use tokio::sync::{Mutex, MutexGuard};

const STRIPES: usize = 256;

/// A fixed set of mutexes; a key (user ID, room ID) always maps to the same one.
pub struct UserLocks {
    stripes: Vec<Mutex<()>>,
}

impl Default for UserLocks {
    fn default() -> Self {
        Self::new()
    }
}

impl UserLocks {
    pub fn new() -> Self {
        Self { stripes: (0..STRIPES).map(|_| Mutex::new(())).collect() }
    }

    fn stripe(&self, key: &str) -> &Mutex<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        &self.stripes[(hasher.finish() as usize) % STRIPES]
    }

    /// Waits for the user's lock. Not re-entrant: take it once per operation.
    pub async fn lock(&self, key: impl AsRef<str>) -> MutexGuard<'_, ()> {
        self.stripe(key.as_ref()).lock().await
    }

    /// The user's lock if it is free right now.
    pub fn try_lock(&self, key: impl AsRef<str>) -> Option<MutexGuard<'_, ()>> {
        self.stripe(key.as_ref()).try_lock().ok()
    }
}
