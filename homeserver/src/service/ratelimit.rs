//! Token-bucket rate limits, per client IP address and per account.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    config::RateLimits,
    error::{Error, ErrorKind, Result},
};

/// What is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Login,
    Registration,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct Service {
    limits: RateLimits,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    map: HashMap<(Action, String), Bucket>,
    last_prune: Instant,
}

impl Service {
    pub fn new(limits: RateLimits) -> Self {
        Self { limits, buckets: Mutex::new(Buckets { map: HashMap::new(), last_prune: Instant::now() }) }
    }

    fn params(&self, action: Action) -> (f64, f64) {
        match action {
            Action::Login => (self.limits.login_per_second, self.limits.login_burst as f64),
            Action::Registration => (self.limits.registration_per_second, self.limits.registration_burst as f64),
        }
    }

    /// Takes one token from the bucket of `(action, key)` or fails with
    /// `M_LIMIT_EXCEEDED` and how long to wait.
    pub fn check(&self, action: Action, key: &str) -> Result<()> {
        self.check_at(action, key, Instant::now())
    }

    fn check_at(&self, action: Action, key: &str, now: Instant) -> Result<()> {
        let (rate, burst) = self.params(action);
        let mut guard = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let buckets = &mut *guard;
        if buckets.map.len() > 10_000 && now.duration_since(buckets.last_prune) > Duration::from_secs(60) {
            // Forget buckets that have refilled completely (at most once a minute).
            buckets.last_prune = now;
            buckets.map.retain(|(a, _), b| {
                let (r, burst) = self.params(*a);
                b.tokens + now.duration_since(b.updated).as_secs_f64() * r < burst
            });
        }
        let bucket = buckets.map.entry((action, key.to_owned())).or_insert(Bucket { tokens: burst, updated: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
            let retry_after_ms = wait.as_millis().max(1) as u64;
            Err(Error::new(ErrorKind::LimitExceeded { retry_after_ms }, "Too many requests"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let s = Service::new(RateLimits {
            login_per_second: 1.0,
            login_burst: 2,
            registration_per_second: 1.0,
            registration_burst: 1,
        });
        let t0 = Instant::now();
        assert!(s.check_at(Action::Login, "ip", t0).is_ok());
        assert!(s.check_at(Action::Login, "ip", t0).is_ok());
        let err = s.check_at(Action::Login, "ip", t0).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::LimitExceeded { retry_after_ms } if retry_after_ms > 0 && retry_after_ms <= 1000)
        );
        // Other keys and actions have their own buckets.
        assert!(s.check_at(Action::Login, "other", t0).is_ok());
        assert!(s.check_at(Action::Registration, "ip", t0).is_ok());
        // One second later one token is back.
        assert!(s.check_at(Action::Login, "ip", t0 + Duration::from_secs(1)).is_ok());
        assert!(s.check_at(Action::Login, "ip", t0 + Duration::from_secs(1)).is_err());
    }
}
