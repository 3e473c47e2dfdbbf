//! The [`CryptoMachine`]: this device's end-to-end encryption state, driven
//! by what the caller feeds it from the homeserver.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use vodozemac::Curve25519PublicKey;
use vodozemac::Curve25519SecretKey;
use vodozemac::KeyId;
use vodozemac::base64_decode;
use vodozemac::base64_encode;
use vodozemac::megolm::{InboundGroupSession, SessionConfig as MegolmConfig, SessionKey};
use vodozemac::olm::{Account, OlmMessage, SessionConfig as OlmConfig};

use super::MEGOLM_V1;
use super::OLM_V1;
use super::devices::{DeviceStore, OwnKeys, TrackedDevice, verify_signature};
use super::error::{CryptoError, DecryptionError, PayloadProblem, str_field};
use super::megolm::{DecryptedRoomEvent, InboundGroup, InboundStore, OutboundGroup, RoomSettings};
use super::olm::{OlmSessions, check_payload};
use super::requests::{
    OutgoingRequest, RequestKind, ResponseOutcome, RoomKeyInfo, SyncChanges, SyncOutcome, ToDeviceEvent,
    ToDeviceFailure, UnreachableDevice, UserDevice,
};

use crate::device::{ALGORITHMS, DeviceKeysError, canonical};

/// The one-time key algorithm Olm uses.
const SIGNED_CURVE25519: &str = "signed_curve25519";
/// The prefix of the key IDs of `signed_curve25519` keys.
const SIGNED_CURVE25519_PREFIX: &str = "signed_curve25519:";
/// The type of encrypted events.
const ROOM_ENCRYPTED: &str = "m.room.encrypted";
/// The type of the to-device event that shares a Megolm session.
const ROOM_KEY: &str = "m.room_key";
/// The most to-device messages put in one request.
const TO_DEVICE_BATCH: usize = 250;
/// How long a device a `/keys/claim` found no key for is left alone.
const CLAIM_RETRY_MS: u64 = 5 * 60 * 1000;
/// The `timeout` of `/keys/query` and `/keys/claim` requests.
const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// What a request handed out is waiting for.
enum PendingKind {
    /// Keys upload; `fallback` says whether it carries a fallback key.
    Upload { fallback: bool },
    /// Keys query for these users, at these device list generations.
    Query { users: Vec<(OwnedUserId, u64)> },
    /// Keys claim for these devices.
    Claim { devices: Vec<UserDevice> },
    /// `m.room_key` of a room's outbound session for these devices.
    RoomKey { room_id: OwnedRoomId, session_id: String, devices: Vec<UserDevice> },
    /// Any other encrypted to-device message.
    ToDevice,
}

/// A request handed out and not yet marked sent or failed.
struct PendingRequest {
    request: OutgoingRequest,
    kind: PendingKind,
}

/// A decrypted Olm payload from a device that was not known when it
/// arrived.
#[derive(Serialize, Deserialize)]
struct DeferredEvent {
    sender: OwnedUserId,
    sender_key: String,
    payload: Value,
}

/// What an accepted Olm payload turned out to be.
enum Accepted {
    /// An event for the caller.
    Event(ToDeviceEvent),
    /// A room key, now stored.
    RoomKey(RoomKeyInfo),
}

/// The end-to-end encryption core of one device, in the style of a state
/// machine that does no I/O.
///
/// It owns the device's Olm account (the private keys never leave it), its
/// Olm sessions, the device lists of other users, and the Megolm sessions of
/// encrypted rooms. The caller drives it:
///
/// ```text
/// loop {
///     for request in machine.outgoing_requests()? {
///         let response = http.send(&request);            // keys upload and keys query
///         machine.mark_request_sent(&request.id, &response)?;
///     }
///     let sync = http.sync();
///     let outcome = machine.receive_sync_changes(&SyncChanges::from_sync_response(&sync));
///     // outcome: decrypted to-device events, stored room keys, failures
/// }
///
/// // Sending into an encrypted room:
/// loop {
///     let requests = machine.share_room_key(&room_id, &members)?;  // keys query, claim, m.room_key
///     if requests.is_empty() { break }
///     for request in requests { /* send, then */ machine.mark_request_sent(&request.id, &response)?; }
/// }
/// let content = machine.encrypt_room_event(&room_id, "m.room.message", &content, &members)?;
///
/// // Receiving: machine.decrypt_room_event(&room_id, &event)
/// ```
///
/// Every request has an ID; a request stays pending until the caller marks
/// it sent (with the response body) or failed.
///
/// [`pickle`](Self::pickle) turns the whole state, private keys included,
/// into bytes for an encrypted store; requests still pending are not kept.
#[derive(Serialize, Deserialize)]
pub struct CryptoMachine {
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
    #[serde(with = "super::pickle::account")]
    account: Account,
    device_keys_uploaded: bool,
    /// The server's count of our `signed_curve25519` keys, once known.
    one_time_key_count: Option<u64>,
    fallback_key_needed: bool,
    devices: DeviceStore,
    olm: OlmSessions,
    outbound: BTreeMap<OwnedRoomId, OutboundGroup>,
    inbound: InboundStore,
    room_settings: BTreeMap<OwnedRoomId, RoomSettings>,
    #[serde(skip)]
    pending: BTreeMap<String, PendingRequest>,
    /// Devices a claim found no key for, and when.
    #[serde(with = "super::pickle::pairs")]
    unreachable: BTreeMap<UserDevice, u64>,
    deferred_events: Vec<DeferredEvent>,
    /// A new prefix for every run, so request IDs (and to-device
    /// transaction IDs) are never reused after a restore.
    #[serde(skip, default = "random_prefix")]
    request_prefix: String,
    #[serde(skip)]
    request_counter: u64,
    /// A fixed clock for tests; the system clock otherwise.
    #[serde(skip)]
    clock_ms: Option<u64>,
}

impl fmt::Debug for CryptoMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptoMachine")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("curve25519", &self.curve25519_key())
            .field("ed25519", &self.ed25519_key())
            .field("pending_requests", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl CryptoMachine {
    /// A machine with a new Olm account, generated on this device, for
    /// `device_id` of `user_id`.
    pub fn new(user_id: &UserId, device_id: &DeviceId) -> Self {
        Self::with_account(user_id, device_id, Account::new())
    }

    /// A machine around an existing Olm account (for example one restored
    /// from a pickle). Its device keys are uploaded again on the first keys
    /// upload, which the server accepts as they did not change.
    pub fn with_account(user_id: &UserId, device_id: &DeviceId, account: Account) -> Self {
        let mut devices = DeviceStore::default();
        // Our own other devices must receive room keys too.
        devices.track(user_id);
        Self {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            account,
            device_keys_uploaded: false,
            one_time_key_count: None,
            fallback_key_needed: true,
            devices,
            olm: OlmSessions::default(),
            outbound: BTreeMap::new(),
            inbound: InboundStore::default(),
            room_settings: BTreeMap::new(),
            pending: BTreeMap::new(),
            unreachable: BTreeMap::new(),
            deferred_events: Vec::new(),
            request_prefix: random_prefix(),
            request_counter: 0,
            clock_ms: None,
        }
    }

    /// The machine's whole state as bytes, to be restored with
    /// [`from_pickle`](Self::from_pickle). They contain the private keys in
    /// the clear: write them only into an encrypted store such as
    /// [`Store`](crate::store::Store). Requests still pending are not kept;
    /// the restored machine hands out new ones where they are still needed.
    pub fn pickle(&self) -> Result<Vec<u8>, CryptoError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Restores a machine from [`pickle`](Self::pickle)'s bytes.
    pub fn from_pickle(bytes: &[u8]) -> Result<Self, CryptoError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The user this device belongs to.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// This device's ID.
    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    /// The public Ed25519 fingerprint key of this device, unpadded base64.
    pub fn ed25519_key(&self) -> String {
        self.account.ed25519_key().to_base64()
    }

    /// The public Curve25519 identity key of this device, unpadded base64.
    pub fn curve25519_key(&self) -> String {
        self.account.curve25519_key().to_base64()
    }

    /// This device's `DeviceKeys`, signed with its Ed25519 key.
    pub fn device_keys(&self) -> Result<Value, CryptoError> {
        let device_id = &self.device_id;
        let mut keys = json!({
            "algorithms": ALGORITHMS,
            "device_id": device_id,
            "keys": {
                format!("curve25519:{device_id}"): self.curve25519_key(),
                format!("ed25519:{device_id}"): self.ed25519_key(),
            },
            "user_id": self.user_id,
        });
        self.sign_json(&mut keys)?;
        Ok(keys)
    }

    // ----- Requests -----

    /// The keys upload and keys query requests to send now.
    ///
    /// The keys upload carries the device keys (until they were uploaded
    /// once), enough signed one-time keys to top the server's count up to
    /// half of what vodozemac recommends keeping published, and a fallback
    /// key when there is none or the last one was used. The keys query asks
    /// for every tracked user whose device list is outdated. Requests not yet
    /// marked are listed again, with the same ID.
    pub fn outgoing_requests(&mut self) -> Result<Vec<OutgoingRequest>, CryptoError> {
        let mut requests = Vec::new();
        if let Some(upload) = self.keys_upload_request()? {
            requests.push(upload);
        }
        requests.extend(self.keys_query_requests());
        Ok(requests)
    }

    /// Reports that a request was sent, with the server's JSON response body.
    pub fn mark_request_sent(&mut self, request_id: &str, response: &Value) -> Result<ResponseOutcome, CryptoError> {
        let pending =
            self.pending.remove(request_id).ok_or_else(|| CryptoError::UnknownRequest(request_id.to_owned()))?;
        let mut outcome = ResponseOutcome::default();
        match pending.kind {
            PendingKind::Upload { fallback } => {
                self.account.mark_keys_as_published();
                self.device_keys_uploaded = true;
                if fallback {
                    self.fallback_key_needed = false;
                }
                let count = response["one_time_key_counts"][SIGNED_CURVE25519].as_u64();
                self.one_time_key_count = Some(count.unwrap_or(0));
            }
            PendingKind::Query { users } => self.receive_keys_query(&users, response, &mut outcome)?,
            PendingKind::Claim { devices } => self.receive_keys_claim(&devices, response, &mut outcome),
            PendingKind::RoomKey { room_id, session_id, devices } => {
                if let Some(group) = self.outbound.get_mut(&room_id)
                    && group.session_id == session_id
                {
                    group.shared_with.extend(devices);
                }
            }
            PendingKind::ToDevice => {}
        }
        Ok(outcome)
    }

    /// Reports that a request could not be sent. What it was for is asked
    /// for again by later calls (the keys it carried stay unpublished, the
    /// users outdated, the devices without room key).
    pub fn mark_request_failed(&mut self, request_id: &str) -> Result<(), CryptoError> {
        match self.pending.remove(request_id) {
            Some(_) => Ok(()),
            None => Err(CryptoError::UnknownRequest(request_id.to_owned())),
        }
    }

    // ----- Sync -----

    /// Takes in the end-to-end encryption parts of a `/sync` response:
    /// one-time and fallback key counts, device list changes, and to-device
    /// events (decrypting Olm events and storing the room keys they carry).
    pub fn receive_sync_changes(&mut self, changes: &SyncChanges) -> SyncOutcome {
        // While an upload is in flight the counts are stale; its response
        // brings the new count.
        if self.pending_upload().is_none() {
            if let Some(counts) = &changes.one_time_key_counts {
                self.one_time_key_count = Some(counts.get(SIGNED_CURVE25519).copied().unwrap_or(0));
            }
            if let Some(unused) = &changes.unused_fallback_key_types
                && self.device_keys_uploaded
                && !unused.iter().any(|algorithm| algorithm.as_str() == SIGNED_CURVE25519)
            {
                self.fallback_key_needed = true;
            }
        }
        for user_id in &changes.changed_users {
            self.devices.mark_changed(user_id);
        }
        for user_id in &changes.left_users {
            self.devices.mark_left(user_id);
        }
        let mut outcome = SyncOutcome::default();
        for event in &changes.to_device_events {
            if let Err(reason) = self.receive_to_device_event(event, &mut outcome) {
                outcome.failures.push(ToDeviceFailure {
                    sender: event["sender"].as_str().unwrap_or_default().to_owned(),
                    event_type: event["type"].as_str().unwrap_or_default().to_owned(),
                    reason,
                });
            }
        }
        outcome
    }

    // ----- Devices -----

    /// Starts tracking the device lists of these users (for example the
    /// members of an encrypted room); new ones are queried by the next
    /// [`outgoing_requests`](Self::outgoing_requests).
    pub fn update_tracked_users(&mut self, users: &[OwnedUserId]) {
        for user_id in users {
            self.devices.track(user_id);
        }
    }

    /// The accepted devices of a user.
    pub fn tracked_devices(&self, user_id: &UserId) -> Vec<&TrackedDevice> {
        self.devices.devices(user_id)
    }

    /// One accepted device.
    pub fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Option<&TrackedDevice> {
        self.devices.get(user_id, device_id)
    }

    /// Whether this device has an Olm session with a device.
    pub fn has_olm_session(&self, user_id: &UserId, device_id: &DeviceId) -> bool {
        self.devices.get(user_id, device_id).is_some_and(|device| self.olm.has_session(&device.curve25519))
    }

    /// A keys claim for the devices of these users that have no Olm session
    /// yet, or `None` when there is nothing to claim.
    pub fn missing_sessions_request(&mut self, users: &[OwnedUserId]) -> Option<OutgoingRequest> {
        let now = self.now_ms();
        let in_flight = self.claims_in_flight();
        let devices: Vec<UserDevice> = self
            .recipients(users)
            .into_iter()
            .filter(|(key, device)| {
                !self.olm.has_session(&device.curve25519)
                    && !in_flight.contains(key)
                    && !self.recently_unreachable(key, now)
            })
            .map(|(key, _)| key)
            .collect();
        if devices.is_empty() { None } else { Some(self.claim_request(devices)) }
    }

    /// Encrypts a to-device event for one device with Olm. The device must
    /// be tracked and have an Olm session.
    pub fn encrypt_to_device(
        &mut self,
        user_id: &UserId,
        device_id: &DeviceId,
        event_type: &str,
        content: &Value,
    ) -> Result<OutgoingRequest, CryptoError> {
        let device = self.known_device(user_id, device_id)?;
        let encrypted = self.olm_encrypt_for(&device, event_type, content)?;
        let messages = vec![((device.user_id, device.device_id), encrypted)];
        Ok(self.queue_to_device(messages, PendingKind::ToDevice))
    }

    // ----- Rooms -----

    /// Sets the rotation periods of a room, from its `m.room.encryption`
    /// state event (see [`RoomSettings::from_encryption_content`]).
    pub fn set_room_settings(&mut self, room_id: &RoomId, settings: RoomSettings) {
        self.room_settings.insert(room_id.to_owned(), settings);
    }

    /// The rotation periods of a room; the spec's defaults unless set.
    pub fn room_settings(&self, room_id: &RoomId) -> RoomSettings {
        self.room_settings.get(room_id).copied().unwrap_or_default()
    }

    /// The requests needed before an event can be encrypted in the room:
    /// `members` are the room's current members (this user included).
    ///
    /// Call it, send what it returns and mark each request sent, until it
    /// returns nothing. In turn it asks for keys queries (members whose
    /// device lists are unknown or outdated), a keys claim (devices without
    /// an Olm session), and finally to-device requests carrying the room's
    /// Megolm session, Olm-encrypted as `m.room_key`, to every current device
    /// of every member that does not have it yet.
    ///
    /// A new session replaces the current one when it is too old, has
    /// encrypted too many messages, or was shared with a device that is no
    /// longer among the members' devices (a member left or a device
    /// disappeared).
    pub fn share_room_key(
        &mut self,
        room_id: &RoomId,
        members: &[OwnedUserId],
    ) -> Result<Vec<OutgoingRequest>, CryptoError> {
        for member in members {
            self.devices.track(member);
        }
        if members.iter().any(|member| self.devices.is_outdated(member)) {
            return Ok(self.keys_query_requests());
        }
        let now = self.now_ms();
        let settings = self.room_settings(room_id);
        let recipients = self.recipients(members);
        let rotate = self.outbound.get(room_id).is_none_or(|group| {
            group.expired(&settings, now) || self.has_departed_recipients(room_id, group, &recipients)
        });
        if rotate {
            self.start_group_session(room_id, now);
        }

        let group = &self.outbound[room_id];
        let session_id = group.session_id.clone();
        let content = group.room_key_content(room_id);
        let in_flight = self.room_key_in_flight(room_id, &session_id);
        let claims_in_flight = self.claims_in_flight();
        let mut with_session = Vec::new();
        let mut to_claim = Vec::new();
        for (key, device) in recipients {
            if group.shared_with.contains(&key) || in_flight.contains(&key) {
                continue;
            }
            if self.olm.has_session(&device.curve25519) {
                with_session.push(device);
            } else if !claims_in_flight.contains(&key) && !self.recently_unreachable(&key, now) {
                to_claim.push(key);
            }
        }
        if !to_claim.is_empty() {
            return Ok(vec![self.claim_request(to_claim)]);
        }

        let mut requests = Vec::new();
        for batch in with_session.chunks(TO_DEVICE_BATCH) {
            let mut messages = Vec::with_capacity(batch.len());
            for device in batch {
                let encrypted = self.olm_encrypt_for(device, ROOM_KEY, &content)?;
                messages.push(((device.user_id.clone(), device.device_id.clone()), encrypted));
            }
            let devices = messages.iter().map(|(device, _)| device.clone()).collect();
            let kind = PendingKind::RoomKey { room_id: room_id.to_owned(), session_id: session_id.clone(), devices };
            requests.push(self.queue_to_device(messages, kind));
        }
        Ok(requests)
    }

    /// Encrypts a room event with the room's Megolm session and returns the
    /// `m.room.encrypted` content to send.
    ///
    /// [`share_room_key`](Self::share_room_key) must have run to completion
    /// for the same `members` first: the session must exist, must not be due
    /// for rotation, and must have been shared with every current device of
    /// the members (devices found unreachable excepted).
    pub fn encrypt_room_event(
        &mut self,
        room_id: &RoomId,
        event_type: &str,
        content: &Value,
        members: &[OwnedUserId],
    ) -> Result<Value, CryptoError> {
        let now = self.now_ms();
        let settings = self.room_settings(room_id);
        let recipients = self.recipients(members);
        let Some(group) = self.outbound.get(room_id) else {
            return Err(CryptoError::RoomKeyNotShared(room_id.to_owned()));
        };
        if group.expired(&settings, now) || group.shared_with.iter().any(|device| !recipients.contains_key(device)) {
            return Err(CryptoError::RoomKeyExpired(room_id.to_owned()));
        }
        for device in recipients.keys() {
            if !group.shared_with.contains(device) && !self.recently_unreachable(device, now) {
                return Err(CryptoError::RoomKeyNotShared(room_id.to_owned()));
            }
        }

        let sender_key = self.curve25519_key();
        let device_id = self.device_id.clone();
        let Some(group) = self.outbound.get_mut(room_id) else {
            return Err(CryptoError::RoomKeyNotShared(room_id.to_owned()));
        };
        let ciphertext = group.encrypt(room_id, event_type, content)?;
        let mut encrypted = json!({
            "algorithm": MEGOLM_V1,
            "sender_key": sender_key,
            "device_id": device_id,
            "session_id": group.session_id,
            "ciphertext": ciphertext,
        });
        // Relations stay visible to the server, as the spec asks.
        if let Some(relation) = content.get("m.relates_to") {
            encrypted["m.relates_to"] = relation.clone();
        }
        Ok(encrypted)
    }

    /// Discards the room's outbound session, so that the next
    /// [`share_room_key`](Self::share_room_key) starts a new one. Call it
    /// when a member leaves the room (the spec asks to rotate even if the
    /// member never received the key). Returns whether there was a session.
    pub fn discard_room_key(&mut self, room_id: &RoomId) -> bool {
        self.outbound.remove(room_id).is_some()
    }

    /// The ID of the room's current outbound Megolm session, if any.
    pub fn outbound_session_id(&self, room_id: &RoomId) -> Option<&str> {
        self.outbound.get(room_id).map(|group| group.session_id.as_str())
    }

    /// Whether a room key (inbound Megolm session) with this ID is known for
    /// the room.
    pub fn has_room_key(&self, room_id: &RoomId, session_id: &str) -> bool {
        self.inbound.contains(room_id, session_id)
    }

    /// Decrypts an `m.room.encrypted` event of `room_id` (the whole event as
    /// the server sent it, with `event_id` and `sender`).
    ///
    /// Fails with the reason: unknown session, a replayed message index,
    /// tampered ciphertext, an event or payload of another room, a sender
    /// who does not own the session, and so on.
    pub fn decrypt_room_event(
        &mut self,
        room_id: &RoomId,
        event: &Value,
    ) -> Result<DecryptedRoomEvent, DecryptionError> {
        self.inbound.decrypt(room_id, event)
    }

    // ----- Internals: keys upload and query -----

    fn keys_upload_request(&mut self) -> Result<Option<OutgoingRequest>, CryptoError> {
        if let Some(pending) = self.pending_upload() {
            return Ok(Some(pending.request.clone()));
        }
        let target = (self.account.max_number_of_one_time_keys() / 2) as u64;
        let wanted = match self.one_time_key_count {
            Some(count) => target.saturating_sub(count),
            None if !self.device_keys_uploaded => target,
            None => 0,
        };
        let missing = wanted.saturating_sub(self.account.one_time_keys().len() as u64);
        if missing > 0 {
            self.account.generate_one_time_keys(missing as usize);
        }
        if self.fallback_key_needed && self.account.fallback_key().is_empty() {
            self.account.generate_fallback_key();
        }

        let mut body = Map::new();
        if !self.device_keys_uploaded {
            body.insert("device_keys".to_owned(), self.device_keys()?);
        }
        let one_time_keys = self.signed_keys(self.account.one_time_keys(), false)?;
        if !one_time_keys.is_empty() {
            body.insert("one_time_keys".to_owned(), Value::Object(one_time_keys));
        }
        let fallback_keys = self.signed_keys(self.account.fallback_key(), true)?;
        let fallback = !fallback_keys.is_empty();
        if fallback {
            body.insert("fallback_keys".to_owned(), Value::Object(fallback_keys));
        }
        if body.is_empty() {
            return Ok(None);
        }
        let id = self.next_request_id();
        let request = OutgoingRequest { id: id.clone(), kind: RequestKind::KeysUpload { body: Value::Object(body) } };
        self.pending.insert(id, PendingRequest { request: request.clone(), kind: PendingKind::Upload { fallback } });
        Ok(Some(request))
    }

    fn pending_upload(&self) -> Option<&PendingRequest> {
        self.pending.values().find(|pending| matches!(pending.kind, PendingKind::Upload { .. }))
    }

    /// Signs public Curve25519 keys for upload, keyed
    /// `signed_curve25519:<key id>`.
    fn signed_keys(
        &self,
        keys: HashMap<KeyId, Curve25519PublicKey>,
        fallback: bool,
    ) -> Result<Map<String, Value>, CryptoError> {
        let mut signed_keys = Map::new();
        for (key_id, key) in keys {
            let mut signed = json!({ "key": key.to_base64() });
            if fallback {
                signed["fallback"] = json!(true);
            }
            self.sign_json(&mut signed)?;
            signed_keys.insert(format!("{SIGNED_CURVE25519_PREFIX}{}", key_id.to_base64()), signed);
        }
        Ok(signed_keys)
    }

    /// Adds this device's signature to a JSON object.
    fn sign_json(&self, object: &mut Value) -> Result<(), CryptoError> {
        let signature = self.account.sign(canonical(object)?.as_bytes()).to_base64();
        let Some(fields) = object.as_object_mut() else {
            return Err(DeviceKeysError::Canonical("only objects can be signed".to_owned()).into());
        };
        let signatures = fields.entry("signatures").or_insert_with(|| json!({}));
        signatures[self.user_id.as_str()][format!("ed25519:{}", self.device_id)] = json!(signature);
        Ok(())
    }

    /// The pending keys queries, and a new one for the outdated users that
    /// no pending query covers.
    fn keys_query_requests(&mut self) -> Vec<OutgoingRequest> {
        let mut requests = Vec::new();
        let mut in_flight = BTreeSet::new();
        for pending in self.pending.values() {
            if let PendingKind::Query { users } = &pending.kind {
                in_flight.extend(users.iter().map(|(user_id, _)| user_id.clone()));
                requests.push(pending.request.clone());
            }
        }
        let users: Vec<(OwnedUserId, u64)> =
            self.devices.outdated_users().into_iter().filter(|(user_id, _)| !in_flight.contains(user_id)).collect();
        if !users.is_empty() {
            let device_keys: Map<String, Value> =
                users.iter().map(|(user_id, _)| (user_id.to_string(), json!([]))).collect();
            let body = json!({ "device_keys": device_keys, "timeout": REQUEST_TIMEOUT_MS });
            let id = self.next_request_id();
            let request = OutgoingRequest { id: id.clone(), kind: RequestKind::KeysQuery { body } };
            self.pending.insert(id, PendingRequest { request: request.clone(), kind: PendingKind::Query { users } });
            requests.push(request);
        }
        requests
    }

    fn receive_keys_query(
        &mut self,
        users: &[(OwnedUserId, u64)],
        response: &Value,
        outcome: &mut ResponseOutcome,
    ) -> Result<(), CryptoError> {
        let device_keys = response
            .get("device_keys")
            .and_then(Value::as_object)
            .ok_or_else(|| CryptoError::MalformedResponse("a keys query response without `device_keys`".to_owned()))?;
        let failures = response.get("failures").and_then(Value::as_object);
        let own = OwnKeys {
            user_id: &self.user_id,
            device_id: &self.device_id,
            ed25519: self.ed25519_key(),
            curve25519: self.curve25519_key(),
        };
        let no_devices = Map::new();
        for (user_id, generation) in users {
            if failures.is_some_and(|failures| failures.contains_key(user_id.server_name().as_str())) {
                self.devices.query_failed(user_id, *generation);
                outcome.failed_users.push(user_id.clone());
                continue;
            }
            let devices = device_keys.get(user_id.as_str()).and_then(Value::as_object).unwrap_or(&no_devices);
            let changes = self.devices.apply_query(user_id, *generation, devices, &own);
            outcome.refused_devices.extend(changes.refused);
            outcome.removed_devices.extend(changes.removed);
        }
        self.retry_deferred_events(outcome);
        Ok(())
    }

    /// Olm events that waited for their sender's devices: checked again and
    /// accepted when the sending device is now known, refused when it still
    /// is not.
    fn retry_deferred_events(&mut self, outcome: &mut ResponseOutcome) {
        for deferred in std::mem::take(&mut self.deferred_events) {
            if self.devices.is_outdated(&deferred.sender) {
                self.deferred_events.push(deferred);
                continue;
            }
            let sender = deferred.sender.to_string();
            match self.accept_deferred_event(deferred) {
                Ok(Accepted::Event(event)) => outcome.to_device_events.push(event),
                Ok(Accepted::RoomKey(info)) => outcome.room_keys.push(info),
                Err(reason) => {
                    outcome.failures.push(ToDeviceFailure { sender, event_type: ROOM_ENCRYPTED.to_owned(), reason });
                }
            }
        }
    }

    fn accept_deferred_event(&mut self, deferred: DeferredEvent) -> Result<Accepted, DecryptionError> {
        let device = self
            .check_olm_payload(&deferred.sender, &deferred.sender_key, &deferred.payload)?
            .ok_or(DecryptionError::UnknownSenderDevice)?;
        self.accept_olm_payload(&device, deferred.sender_key, deferred.payload)
    }

    // ----- Internals: Olm -----

    fn claims_in_flight(&self) -> BTreeSet<UserDevice> {
        let mut devices = BTreeSet::new();
        for pending in self.pending.values() {
            if let PendingKind::Claim { devices: claimed } = &pending.kind {
                devices.extend(claimed.iter().cloned());
            }
        }
        devices
    }

    fn recently_unreachable(&self, device: &UserDevice, now_ms: u64) -> bool {
        self.unreachable.get(device).is_some_and(|since| now_ms.saturating_sub(*since) < CLAIM_RETRY_MS)
    }

    fn claim_request(&mut self, devices: Vec<UserDevice>) -> OutgoingRequest {
        let mut one_time_keys: BTreeMap<String, BTreeMap<String, &str>> = BTreeMap::new();
        for (user_id, device_id) in &devices {
            one_time_keys.entry(user_id.to_string()).or_default().insert(device_id.to_string(), SIGNED_CURVE25519);
        }
        let body = json!({ "one_time_keys": one_time_keys, "timeout": REQUEST_TIMEOUT_MS });
        let id = self.next_request_id();
        let request = OutgoingRequest { id: id.clone(), kind: RequestKind::KeysClaim { body } };
        self.pending.insert(id, PendingRequest { request: request.clone(), kind: PendingKind::Claim { devices } });
        request
    }

    fn receive_keys_claim(&mut self, devices: &[UserDevice], response: &Value, outcome: &mut ResponseOutcome) {
        let now = self.now_ms();
        for (user_id, device_id) in devices {
            match self.session_from_claim(user_id, device_id, response, now) {
                Ok(()) => {
                    self.unreachable.remove(&(user_id.clone(), device_id.clone()));
                }
                Err(reason) => {
                    self.unreachable.insert((user_id.clone(), device_id.clone()), now);
                    outcome.unreachable_devices.push(UnreachableDevice {
                        user_id: user_id.clone(),
                        device_id: device_id.clone(),
                        reason,
                    });
                }
            }
        }
    }

    /// Creates an outbound Olm session from the one-time key a claim returned
    /// for a device, after checking the key is signed by that device.
    fn session_from_claim(
        &mut self,
        user_id: &UserId,
        device_id: &DeviceId,
        response: &Value,
        now_ms: u64,
    ) -> Result<(), String> {
        let device = self.devices.get(user_id, device_id).cloned().ok_or("the device is not known")?;
        let keys = response["one_time_keys"][user_id.as_str()][device_id.as_str()]
            .as_object()
            .ok_or("the server returned no one-time key")?;
        let (_, key) = keys
            .iter()
            .find(|(key_id, _)| key_id.starts_with(SIGNED_CURVE25519_PREFIX))
            .ok_or("the server returned no signed_curve25519 key")?;
        if !verify_signature(key, user_id.as_str(), device_id.as_str(), &device.ed25519) {
            return Err("the one-time key is not signed by the device".to_owned());
        }
        let one_time_key = key["key"]
            .as_str()
            .and_then(|key| Curve25519PublicKey::from_base64(key).ok())
            .ok_or("the one-time key is not a Curve25519 key")?;
        let identity_key = Curve25519PublicKey::from_base64(&device.curve25519).map_err(|e| e.to_string())?;
        let session = self
            .account
            .create_outbound_session(OlmConfig::version_1(), identity_key, one_time_key)
            .map_err(|e| e.to_string())?;
        self.olm.add(&device.curve25519, session, now_ms);
        Ok(())
    }

    /// Olm-encrypts an event for a device, with the payload fields the spec
    /// requires (and `sender_device_keys`).
    fn olm_encrypt_for(
        &mut self,
        device: &TrackedDevice,
        event_type: &str,
        content: &Value,
    ) -> Result<Value, CryptoError> {
        let own_device_keys = self.device_keys()?;
        let payload = json!({
            "type": event_type,
            "content": content,
            "sender": self.user_id,
            "keys": { "ed25519": self.ed25519_key() },
            "recipient": device.user_id,
            "recipient_keys": { "ed25519": device.ed25519 },
            "sender_device_keys": own_device_keys,
        });
        self.olm_encrypt_payload(device, &payload)
    }

    /// Olm-encrypts a payload as it is, into `m.room.encrypted` content.
    fn olm_encrypt_payload(&mut self, device: &TrackedDevice, payload: &Value) -> Result<Value, CryptoError> {
        let plaintext = serde_json::to_string(payload)?;
        let message = self
            .olm
            .encrypt(&device.curve25519, plaintext.as_bytes())
            .ok_or_else(|| CryptoError::NoOlmSession {
                user_id: device.user_id.clone(),
                device_id: device.device_id.clone(),
            })?
            .map_err(|e| CryptoError::OlmEncryption(e.to_string()))?;
        let (message_type, body) = message.to_parts();
        Ok(json!({
            "algorithm": OLM_V1,
            "sender_key": self.curve25519_key(),
            "ciphertext": { device.curve25519.clone(): { "type": message_type, "body": base64_encode(body) } },
        }))
    }

    /// The request sending encrypted to-device messages.
    fn queue_to_device(&mut self, messages: Vec<(UserDevice, Value)>, kind: PendingKind) -> OutgoingRequest {
        let mut by_user: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        for ((user_id, device_id), content) in messages {
            by_user.entry(user_id.to_string()).or_default().insert(device_id.to_string(), content);
        }
        let id = self.next_request_id();
        let request = OutgoingRequest {
            id: id.clone(),
            kind: RequestKind::ToDevice {
                event_type: ROOM_ENCRYPTED.to_owned(),
                txn_id: id.clone(),
                body: json!({ "messages": by_user }),
            },
        };
        self.pending.insert(id, PendingRequest { request: request.clone(), kind });
        request
    }

    /// Handles one to-device event; plaintext ones are passed through.
    fn receive_to_device_event(&mut self, event: &Value, outcome: &mut SyncOutcome) -> Result<(), DecryptionError> {
        let sender = UserId::parse(str_field(event, "sender")?)
            .map_err(|_| DecryptionError::Malformed("`sender` is not a user ID".to_owned()))?;
        let event_type = str_field(event, "type")?;
        match event_type {
            ROOM_ENCRYPTED => {}
            ROOM_KEY => return Err(DecryptionError::RoomKeyNotEncrypted),
            _ => {
                outcome.to_device_events.push(ToDeviceEvent {
                    sender,
                    event_type: event_type.to_owned(),
                    content: event["content"].clone(),
                    sender_key: None,
                    sender_device: None,
                });
                return Ok(());
            }
        }

        let (sender_key, payload) = self.decrypt_olm(&event["content"])?;
        match self.check_olm_payload(&sender, &sender_key, &payload)? {
            Some(device) => match self.accept_olm_payload(&device, sender_key, payload)? {
                Accepted::Event(event) => outcome.to_device_events.push(event),
                Accepted::RoomKey(info) => outcome.room_keys.push(info),
            },
            None => {
                // The Curve25519 key belongs to no known device of the sender,
                // so `keys.ed25519` cannot be checked yet: keep the payload
                // until their devices were queried again.
                self.devices.track(&sender);
                self.devices.mark_changed(&sender);
                self.deferred_events.push(DeferredEvent { sender, sender_key, payload });
                outcome.deferred_events += 1;
            }
        }
        Ok(())
    }

    /// Hands out a checked Olm payload from `device`, storing it first when
    /// it is a room key.
    fn accept_olm_payload(
        &mut self,
        device: &TrackedDevice,
        sender_key: String,
        payload: Value,
    ) -> Result<Accepted, DecryptionError> {
        let event_type = str_field(&payload, "type")?;
        if event_type == ROOM_KEY {
            return Ok(Accepted::RoomKey(self.store_room_key(device, &payload)?));
        }
        Ok(Accepted::Event(ToDeviceEvent {
            sender: device.user_id.clone(),
            event_type: event_type.to_owned(),
            content: payload["content"].clone(),
            sender_key: Some(sender_key),
            sender_device: Some(device.device_id.clone()),
        }))
    }

    /// Decrypts the Olm content of an `m.room.encrypted` to-device event;
    /// returns the sender's Curve25519 key and the decrypted payload.
    fn decrypt_olm(&mut self, content: &Value) -> Result<(String, Value), DecryptionError> {
        let algorithm = str_field(content, "algorithm")?;
        if algorithm != OLM_V1 {
            return Err(DecryptionError::UnsupportedAlgorithm(algorithm.to_owned()));
        }
        let sender_key = str_field(content, "sender_key")?;
        let own_key = self.curve25519_key();
        let ciphertext = content["ciphertext"].get(own_key.as_str()).ok_or(DecryptionError::NotForThisDevice)?;
        let message_type = ciphertext["type"]
            .as_u64()
            .and_then(|message_type| usize::try_from(message_type).ok())
            .ok_or_else(|| DecryptionError::Malformed("invalid ciphertext `type`".to_owned()))?;
        let body = base64_decode(str_field(ciphertext, "body")?)
            .map_err(|e| DecryptionError::Malformed(format!("ciphertext body: {e}")))?;
        let message = OlmMessage::from_parts(message_type, &body)
            .map_err(|e| DecryptionError::Malformed(format!("Olm message: {e}")))?;
        let now = self.now_ms();
        let plaintext = self.olm.decrypt(&mut self.account, sender_key, &message, now)?;
        let payload: Value =
            serde_json::from_slice(&plaintext).map_err(|e| DecryptionError::Malformed(format!("Olm payload: {e}")))?;
        Ok((sender_key.to_owned(), payload))
    }

    /// Validates a decrypted Olm payload: every check of the spec must pass.
    /// Returns the sending device when the Curve25519 key of the session
    /// belongs to a known device of the sender whose Ed25519 key is the
    /// payload's `keys.ed25519`; `None` when no known device has that
    /// Curve25519 key (then `keys.ed25519` cannot be checked yet).
    fn check_olm_payload(
        &self,
        sender: &UserId,
        sender_key: &str,
        payload: &Value,
    ) -> Result<Option<TrackedDevice>, DecryptionError> {
        let own_ed25519 = self.ed25519_key();
        let sender_ed25519 = check_payload(payload, sender, sender_key, &self.user_id, &own_ed25519)?;
        match self.devices.find_by_curve25519(sender, sender_key) {
            Some(device) if device.ed25519 == sender_ed25519 => Ok(Some(device.clone())),
            Some(_) => Err(DecryptionError::InvalidPayload(PayloadProblem::SenderKeys)),
            None => Ok(None),
        }
    }

    /// Stores the Megolm session of an `m.room_key` payload that came over
    /// Olm from `device`.
    fn store_room_key(&mut self, device: &TrackedDevice, payload: &Value) -> Result<RoomKeyInfo, DecryptionError> {
        let content = &payload["content"];
        let algorithm = str_field(content, "algorithm")?;
        if algorithm != MEGOLM_V1 {
            return Err(DecryptionError::UnsupportedAlgorithm(algorithm.to_owned()));
        }
        let room_id = RoomId::parse(str_field(content, "room_id")?)
            .map_err(|_| DecryptionError::Malformed("`room_id` is not a room ID".to_owned()))?;
        let session_id = str_field(content, "session_id")?;
        let session_key = SessionKey::from_base64(str_field(content, "session_key")?)
            .map_err(|e| DecryptionError::Malformed(format!("session_key: {e}")))?;
        let session = InboundGroupSession::new(&session_key, MegolmConfig::version_1());
        if session.session_id() != session_id {
            return Err(DecryptionError::Malformed("`session_id` does not match the session key".to_owned()));
        }
        let group = InboundGroup {
            session,
            sender: device.user_id.clone(),
            sender_device: device.device_id.clone(),
            sender_ed25519: device.ed25519.clone(),
            seen: BTreeMap::new(),
        };
        self.inbound.add(&room_id, &device.curve25519, group)?;
        Ok(RoomKeyInfo {
            room_id,
            session_id: session_id.to_owned(),
            sender: device.user_id.clone(),
            sender_device: device.device_id.clone(),
            sender_key: device.curve25519.clone(),
        })
    }

    // ----- Internals: Megolm -----

    /// Every current device of the members, except this one, that speaks
    /// Olm.
    fn recipients(&self, members: &[OwnedUserId]) -> BTreeMap<UserDevice, TrackedDevice> {
        let mut recipients = BTreeMap::new();
        for member in members {
            for device in self.devices.devices(member) {
                let this_device = device.user_id == self.user_id && device.device_id == self.device_id;
                if device.supports(OLM_V1) && !this_device {
                    recipients.insert((device.user_id.clone(), device.device_id.clone()), device.clone());
                }
            }
        }
        recipients
    }

    /// Whether the session was shared (or is being shared) with a device
    /// that is no longer among the recipients.
    fn has_departed_recipients(
        &self,
        room_id: &RoomId,
        group: &OutboundGroup,
        recipients: &BTreeMap<UserDevice, TrackedDevice>,
    ) -> bool {
        let in_flight = self.room_key_in_flight(room_id, &group.session_id);
        group.shared_with.iter().chain(&in_flight).any(|device| !recipients.contains_key(device))
    }

    /// The devices an `m.room_key` of this session is on its way to.
    fn room_key_in_flight(&self, room_id: &RoomId, session_id: &str) -> BTreeSet<UserDevice> {
        let mut devices = BTreeSet::new();
        for pending in self.pending.values() {
            if let PendingKind::RoomKey { room_id: room, session_id: id, devices: sent } = &pending.kind
                && room.as_str() == room_id.as_str()
                && id == session_id
            {
                devices.extend(sent.iter().cloned());
            }
        }
        devices
    }

    /// Replaces the room's outbound session by a new one, and keeps an
    /// inbound copy so this device can read its own messages.
    fn start_group_session(&mut self, room_id: &RoomId, now_ms: u64) {
        let group = OutboundGroup::new(now_ms);
        let own_copy = InboundGroup {
            session: InboundGroupSession::from(&group.session),
            sender: self.user_id.clone(),
            sender_device: self.device_id.clone(),
            sender_ed25519: self.ed25519_key(),
            seen: BTreeMap::new(),
        };
        let own_key = self.curve25519_key();
        // A freshly generated session ID cannot clash with a known one.
        let _ = self.inbound.add(room_id, &own_key, own_copy);
        self.outbound.insert(room_id.to_owned(), group);
    }

    // ----- Internals: misc -----

    fn next_request_id(&mut self) -> String {
        self.request_counter += 1;
        format!("{}-{}", self.request_prefix, self.request_counter)
    }

    fn now_ms(&self) -> u64 {
        self.clock_ms.unwrap_or_else(|| {
            SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
        })
    }

    /// Fixes the clock, for tests of time-based rotation.
    #[cfg(test)]
    pub(crate) fn set_clock_ms(&mut self, now_ms: u64) {
        self.clock_ms = Some(now_ms);
    }

    /// A tracked device, or [`CryptoError::UnknownDevice`].
    fn known_device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<TrackedDevice, CryptoError> {
        self.devices
            .get(user_id, device_id)
            .cloned()
            .ok_or_else(|| CryptoError::UnknownDevice { user_id: user_id.to_owned(), device_id: device_id.to_owned() })
    }

    /// Olm-encrypts an arbitrary payload for a device, to test the checks a
    /// receiver makes.
    #[cfg(test)]
    pub(crate) fn encrypt_raw_payload(
        &mut self,
        user_id: &UserId,
        device_id: &DeviceId,
        payload: &Value,
    ) -> Result<OutgoingRequest, CryptoError> {
        let device = self.known_device(user_id, device_id)?;
        let encrypted = self.olm_encrypt_payload(&device, payload)?;
        let messages = vec![((device.user_id, device.device_id), encrypted)];
        Ok(self.queue_to_device(messages, PendingKind::ToDevice))
    }
}

/// A random prefix for request IDs, so that transaction IDs stay unique
/// across restarts. The randomness comes from a fresh Curve25519 key.
fn random_prefix() -> String {
    let key = Curve25519PublicKey::from(&Curve25519SecretKey::new());
    let mut prefix = String::new();
    for byte in &key.as_bytes()[..8] {
        let _ = write!(prefix, "{byte:02x}");
    }
    prefix
}
