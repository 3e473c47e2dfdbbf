//! Small helpers shared by services.

use base64::Engine;
use rand::RngCore;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A 256-bit random token, URL-safe base64, with a prefix naming its kind.
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A short random alphanumeric string (session IDs, key IDs).
pub fn random_string(len: usize) -> String {
    use rand::{Rng, distributions::Alphanumeric};
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_unique_and_long() {
        let a = super::random_token("hat_");
        let b = super::random_token("hat_");
        assert_ne!(a, b);
        assert!(a.starts_with("hat_"));
        assert_eq!(a.len(), 4 + 43);
    }
}

/// A small bounded map: when full, the entry inserted first is evicted.
pub struct BoundedCache<K, V> {
    capacity: usize,
    map: std::collections::HashMap<K, V>,
    order: std::collections::VecDeque<K>,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> BoundedCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, map: Default::default(), order: Default::default() }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.get(key).cloned()
    }

    pub fn put(&mut self, key: K, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    pub fn remove<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        // The key stays in the order queue; evicting it later is harmless.
        self.map.remove(key);
    }
}

#[cfg(test)]
mod cache_tests {
    #[test]
    fn evicts_the_oldest_entry() {
        let mut c = super::BoundedCache::new(2);
        c.put(1, "a");
        c.put(2, "b");
        c.put(3, "c");
        assert_eq!(c.get(&1), None);
        assert_eq!(c.get(&3), Some("c"));
        c.remove(&3);
        assert_eq!(c.get(&3), None);
    }
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// In-memory entries under random 32-character IDs that expire a fixed
/// time after they were made (browser sign-ins, login tokens, sign-ups
/// waiting for their e-mail code).
pub struct Expiring<V> {
    lifetime: std::time::Duration,
    entries: std::sync::Mutex<std::collections::HashMap<String, (V, std::time::Instant)>>,
}

impl<V: Clone> Expiring<V> {
    pub fn new(lifetime: std::time::Duration) -> Self {
        Self { lifetime, entries: Default::default() }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (V, std::time::Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a value; returns its new ID.
    pub fn insert(&self, value: V) -> String {
        let id = random_string(32);
        let mut entries = self.entries();
        entries.retain(|_, (_, at)| at.elapsed() < self.lifetime);
        entries.insert(id.clone(), (value, std::time::Instant::now()));
        id
    }

    /// The live value under `id`.
    pub fn get(&self, id: &str) -> Option<V> {
        self.entries().get(id).filter(|(_, at)| at.elapsed() < self.lifetime).map(|(v, _)| v.clone())
    }

    /// Removes the value under `id`, returning it if it was live.
    pub fn take(&self, id: &str) -> Option<V> {
        self.entries().remove(id).filter(|(_, at)| at.elapsed() < self.lifetime).map(|(v, _)| v)
    }
}

#[cfg(test)]
mod expiring_tests {
    #[test]
    fn values_expire_and_are_taken_once() {
        let live = super::Expiring::new(std::time::Duration::from_secs(60));
        let id = live.insert(7);
        assert_eq!(live.get(&id), Some(7));
        assert_eq!(live.take(&id), Some(7));
        assert_eq!(live.take(&id), None);
        let dead = super::Expiring::new(std::time::Duration::ZERO);
        let id = dead.insert(1);
        assert_eq!(dead.get(&id), None);
    }
}
