//! Olm (`m.olm.v1.curve25519-aes-sha2`): the sessions with other devices,
//! and the checks the spec requires on a decrypted payload.

use std::collections::BTreeMap;

use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{Account, EncryptionError, OlmMessage, Session, SessionConfig};

use super::devices::verify_signature;
use super::error::{DecryptionError, PayloadProblem, str_field};

/// How many Olm sessions are kept per device (the spec asks for at least
/// four); the least recently used one goes first.
const MAX_SESSIONS_PER_DEVICE: usize = 8;

/// One Olm session and when it last received a message (its creation time
/// until then).
#[derive(Serialize, Deserialize)]
struct SessionEntry {
    #[serde(with = "super::pickle::session")]
    session: Session,
    last_received_ms: u64,
}

/// The Olm sessions of this device, by the peer's Curve25519 key.
#[derive(Default, Serialize, Deserialize)]
pub(crate) struct OlmSessions {
    by_key: BTreeMap<String, Vec<SessionEntry>>,
}

impl OlmSessions {
    /// Whether there is at least one session with the key.
    pub(crate) fn has_session(&self, curve25519: &str) -> bool {
        self.by_key.get(curve25519).is_some_and(|sessions| !sessions.is_empty())
    }

    /// Adds a new session with the key, dropping the least recently used
    /// one when there are too many.
    pub(crate) fn add(&mut self, curve25519: &str, session: Session, now_ms: u64) {
        let sessions = self.by_key.entry(curve25519.to_owned()).or_default();
        if sessions.len() >= MAX_SESSIONS_PER_DEVICE
            && let Some((oldest, _)) = sessions.iter().enumerate().min_by_key(|(_, entry)| entry.last_received_ms)
        {
            sessions.remove(oldest);
        }
        sessions.push(SessionEntry { session, last_received_ms: now_ms });
    }

    /// Encrypts with the session that most recently received a message, as
    /// the spec recommends. `None` when there is no session with the key.
    pub(crate) fn encrypt(
        &mut self,
        curve25519: &str,
        plaintext: &[u8],
    ) -> Option<Result<OlmMessage, EncryptionError>> {
        let sessions = self.by_key.get_mut(curve25519)?;
        let entry = sessions.iter_mut().max_by_key(|entry| entry.last_received_ms)?;
        Some(entry.session.encrypt(plaintext))
    }

    /// Decrypts a message from the peer with Curve25519 key `sender_key`.
    ///
    /// A normal message must be decrypted by an existing session. A pre-key
    /// message goes to the session it names if there is one; otherwise it
    /// creates a new inbound session, which is only kept (and the one-time
    /// key only used up) when the message decrypts.
    pub(crate) fn decrypt(
        &mut self,
        account: &mut Account,
        sender_key: &str,
        message: &OlmMessage,
        now_ms: u64,
    ) -> Result<Vec<u8>, DecryptionError> {
        let sessions = self.by_key.entry(sender_key.to_owned()).or_default();
        match message {
            OlmMessage::Normal(_) => {
                for entry in sessions.iter_mut() {
                    if let Ok(plaintext) = entry.session.decrypt(message) {
                        entry.last_received_ms = now_ms;
                        return Ok(plaintext);
                    }
                }
                Err(DecryptionError::NoOlmSession { sender_key: sender_key.to_owned() })
            }
            OlmMessage::PreKey(pre_key) => {
                let session_id = pre_key.session_id();
                if let Some(entry) = sessions.iter_mut().find(|entry| entry.session.session_id() == session_id) {
                    let plaintext =
                        entry.session.decrypt(message).map_err(|e| DecryptionError::OlmDecryption(e.to_string()))?;
                    entry.last_received_ms = now_ms;
                    return Ok(plaintext);
                }
                let identity_key = Curve25519PublicKey::from_base64(sender_key)
                    .map_err(|e| DecryptionError::Malformed(format!("sender_key: {e}")))?;
                let created = account
                    .create_inbound_session(SessionConfig::version_1(), identity_key, pre_key)
                    .map_err(|e| DecryptionError::OlmSessionCreation(e.to_string()))?;
                self.add(sender_key, created.session, now_ms);
                Ok(created.plaintext)
            }
        }
    }
}

/// The spec's checks on a decrypted Olm payload that do not need the
/// sender's device list: `sender`, `recipient`, `recipient_keys` and, when
/// present, `sender_device_keys`. Every check must pass.
///
/// Returns the payload's `keys.ed25519`, which the caller must compare with
/// the Ed25519 key of the known device owning `sender_key`.
pub(crate) fn check_payload<'p>(
    payload: &'p Value,
    sender: &UserId,
    sender_key: &str,
    own_user_id: &UserId,
    own_ed25519: &str,
) -> Result<&'p str, DecryptionError> {
    str_field(payload, "type")?;
    if !payload["content"].is_object() {
        return Err(DecryptionError::Malformed("the Olm payload has no `content` object".to_owned()));
    }
    let claimed_sender = str_field(payload, "sender")?;
    let recipient = str_field(payload, "recipient")?;
    let recipient_ed25519 = str_field(&payload["recipient_keys"], "ed25519")?;
    let sender_ed25519 = str_field(&payload["keys"], "ed25519")?;

    if claimed_sender != sender.as_str() {
        return Err(DecryptionError::InvalidPayload(PayloadProblem::Sender));
    }
    if recipient != own_user_id.as_str() {
        return Err(DecryptionError::InvalidPayload(PayloadProblem::Recipient));
    }
    if recipient_ed25519 != own_ed25519 {
        return Err(DecryptionError::InvalidPayload(PayloadProblem::RecipientKeys));
    }
    if let Some(device_keys) = payload.get("sender_device_keys")
        && !device_keys.is_null()
        && !sender_device_keys_match(device_keys, sender, sender_key, sender_ed25519)
    {
        return Err(DecryptionError::InvalidPayload(PayloadProblem::SenderDeviceKeys));
    }
    Ok(sender_ed25519)
}

/// `sender_device_keys` must name the sender, carry the payload's Ed25519
/// key and the Olm session's Curve25519 key, and be signed by that Ed25519
/// key.
fn sender_device_keys_match(device_keys: &Value, sender: &UserId, sender_key: &str, sender_ed25519: &str) -> bool {
    let Some(device_id) = device_keys["device_id"].as_str() else { return false };
    device_keys["user_id"].as_str() == Some(sender.as_str())
        && device_keys["keys"][format!("ed25519:{device_id}")].as_str() == Some(sender_ed25519)
        && device_keys["keys"][format!("curve25519:{device_id}")].as_str() == Some(sender_key)
        && verify_signature(device_keys, sender.as_str(), device_id, sender_ed25519)
}
