//! A device's long-term identity: its Olm account (Curve25519 and Ed25519
//! keys, generated locally) and the signed `DeviceKeys` object the spec's
//! key upload carries.

use ruma::{CanonicalJsonValue, DeviceId, UserId, canonical_json::to_canonical_value};
use serde_json::{Value, json};
use vodozemac::olm::Account;

/// The Olm and Megolm algorithms this device supports.
pub const ALGORITHMS: &[&str] = &["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"];

#[derive(Debug, thiserror::Error)]
pub enum DeviceKeysError {
    #[error("cannot build canonical JSON: {0}")]
    Canonical(String),
}

/// The device's identity. The private keys stay inside the vodozemac account.
pub struct DeviceIdentity {
    account: Account,
}

impl Default for DeviceIdentity {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceIdentity {
    /// Generates a new identity on this device.
    pub fn new() -> Self {
        Self { account: Account::new() }
    }

    /// The public Ed25519 fingerprint key, unpadded base64.
    pub fn ed25519(&self) -> String {
        self.account.ed25519_key().to_base64()
    }

    /// The public Curve25519 identity key, unpadded base64.
    pub fn curve25519(&self) -> String {
        self.account.curve25519_key().to_base64()
    }

    /// The signed device keys for upload: signed with the device's Ed25519 key
    /// over the canonical JSON of the object without `signatures` and `unsigned`.
    pub fn device_keys(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Value, DeviceKeysError> {
        let mut keys = json!({
            "algorithms": ALGORITHMS,
            "device_id": device_id,
            "keys": {
                format!("curve25519:{device_id}"): self.curve25519(),
                format!("ed25519:{device_id}"): self.ed25519(),
            },
            "user_id": user_id,
        });
        self.sign_json(user_id, device_id, &mut keys)?;
        Ok(keys)
    }

    /// Adds this device's signature (`signatures.<user>.ed25519:<device>`) to
    /// a JSON object, keeping the signatures it already carries.
    pub fn sign_json(&self, user_id: &UserId, device_id: &DeviceId, object: &mut Value) -> Result<(), DeviceKeysError> {
        let signature = self.account.sign(canonical(object)?.as_bytes()).to_base64();
        let signatures = object
            .as_object_mut()
            .ok_or_else(|| DeviceKeysError::Canonical("only objects can be signed".into()))?
            .entry("signatures")
            .or_insert_with(|| json!({}));
        signatures[user_id.as_str()][format!("ed25519:{device_id}")] = json!(signature);
        Ok(())
    }

    /// Generates `count` new one-time keys and returns them signed for upload,
    /// keyed `signed_curve25519:<key id>`. They count as published afterwards.
    pub fn signed_one_time_keys(
        &mut self,
        user_id: &UserId,
        device_id: &DeviceId,
        count: usize,
    ) -> Result<serde_json::Map<String, Value>, DeviceKeysError> {
        self.account.generate_one_time_keys(count);
        let mut out = serde_json::Map::new();
        for (id, key) in self.account.one_time_keys() {
            let mut signed = json!({ "key": key.to_base64() });
            self.sign_json(user_id, device_id, &mut signed)?;
            out.insert(format!("signed_curve25519:{}", id.to_base64()), signed);
        }
        self.account.mark_keys_as_published();
        Ok(out)
    }

    /// Generates a fallback key and returns it signed for upload.
    pub fn signed_fallback_key(
        &mut self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<serde_json::Map<String, Value>, DeviceKeysError> {
        self.account.generate_fallback_key();
        let mut out = serde_json::Map::new();
        for (id, key) in self.account.fallback_key() {
            let mut signed = json!({ "key": key.to_base64(), "fallback": true });
            self.sign_json(user_id, device_id, &mut signed)?;
            out.insert(format!("signed_curve25519:{}", id.to_base64()), signed);
        }
        Ok(out)
    }
}

/// The canonical JSON text of an object, as signed by Matrix.
pub fn canonical(value: &Value) -> Result<String, DeviceKeysError> {
    let mut object = value.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("signatures");
        map.remove("unsigned");
    }
    let canonical: CanonicalJsonValue =
        to_canonical_value(object).map_err(|e| DeviceKeysError::Canonical(e.to_string()))?;
    Ok(canonical.to_string())
}

#[cfg(test)]
mod tests {
    use ruma::{device_id, user_id};
    use vodozemac::{Ed25519PublicKey, Ed25519Signature};

    use super::*;

    #[test]
    fn device_keys_are_signed_by_the_device_and_carry_no_secret() {
        let identity = DeviceIdentity::new();
        let keys = identity.device_keys(user_id!("@alice:localhost"), device_id!("DEV")).unwrap();
        assert_eq!(keys["keys"]["ed25519:DEV"], identity.ed25519());
        assert_eq!(keys["keys"]["curve25519:DEV"], identity.curve25519());

        let public = Ed25519PublicKey::from_base64(&identity.ed25519()).unwrap();
        let signature =
            Ed25519Signature::from_base64(keys["signatures"]["@alice:localhost"]["ed25519:DEV"].as_str().unwrap())
                .unwrap();
        let signed_text = canonical(&keys).unwrap();
        public.verify(signed_text.as_bytes(), &signature).expect("signature verifies");
        // Canonical form: sorted keys, no whitespace.
        assert!(signed_text.starts_with("{\"algorithms\":["));

        // Tampering breaks the signature.
        let mut tampered = keys.clone();
        tampered["device_id"] = json!("OTHER");
        assert!(public.verify(canonical(&tampered).unwrap().as_bytes(), &signature).is_err());

        // Two devices never share keys.
        assert_ne!(DeviceIdentity::new().curve25519(), identity.curve25519());
    }
}
