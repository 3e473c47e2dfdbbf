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
