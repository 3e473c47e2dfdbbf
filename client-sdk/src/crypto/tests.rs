//! Two or three machines passing messages in memory. A fake homeserver
//! stores what they upload and answers keys queries, keys claims and
//! to-device messages from that.

use std::collections::BTreeMap;

use ruma::{DeviceId, OwnedUserId, RoomId, UserId, device_id, room_id, user_id};
use serde_json::{Map, Value, json};
use vodozemac::base64_decode;
use vodozemac::base64_encode;
use vodozemac::megolm::{GroupSession, SessionConfig};
use vodozemac::olm::Account;

use super::devices::verify_signature;
use super::*;

use crate::device::{ALGORITHMS, DeviceIdentity, canonical};

/// A user and a device, as the fake server keys its tables.
type Slot = (String, String);

/// Just enough of a homeserver: key storage, one-time key claims, and a
/// to-device inbox per device.
#[derive(Default)]
struct FakeServer {
    /// User → device → signed device keys.
    device_keys: BTreeMap<String, Map<String, Value>>,
    one_time_keys: BTreeMap<Slot, BTreeMap<String, Value>>,
    fallback_keys: BTreeMap<Slot, (String, Value)>,
    inbox: BTreeMap<Slot, Vec<Value>>,
}

impl FakeServer {
    /// Answers a request from `device_id` of `user_id`.
    fn handle(&mut self, user_id: &UserId, device_id: &DeviceId, request: &OutgoingRequest) -> Value {
        let slot = (user_id.to_string(), device_id.to_string());
        match &request.kind {
            RequestKind::KeysUpload { body } => {
                if let Some(keys) = body.get("device_keys") {
                    self.device_keys.entry(slot.0.clone()).or_default().insert(slot.1.clone(), keys.clone());
                }
                if let Some(keys) = body.get("one_time_keys").and_then(Value::as_object) {
                    let stored = self.one_time_keys.entry(slot.clone()).or_default();
                    for (key_id, key) in keys {
                        stored.insert(key_id.clone(), key.clone());
                    }
                }
                if let Some((key_id, key)) = body["fallback_keys"].as_object().and_then(|keys| keys.iter().next()) {
                    self.fallback_keys.insert(slot.clone(), (key_id.clone(), key.clone()));
                }
                json!({ "one_time_key_counts": { "signed_curve25519": self.one_time_key_count(&slot) } })
            }
            RequestKind::KeysQuery { body } => {
                let mut device_keys = Map::new();
                for user in body["device_keys"].as_object().unwrap().keys() {
                    let devices = self.device_keys.get(user).cloned().unwrap_or_default();
                    device_keys.insert(user.clone(), Value::Object(devices));
                }
                json!({ "device_keys": device_keys, "failures": {} })
            }
            RequestKind::KeysClaim { body } => {
                let mut claimed = Map::new();
                for (user, devices) in body["one_time_keys"].as_object().unwrap() {
                    for device in devices.as_object().unwrap().keys() {
                        let slot = (user.clone(), device.clone());
                        let one_time_key = self.one_time_keys.get_mut(&slot).and_then(|keys| keys.pop_first());
                        let Some((key_id, key)) = one_time_key.or_else(|| self.fallback_keys.get(&slot).cloned())
                        else {
                            continue;
                        };
                        let mut keys = Map::new();
                        keys.insert(key_id, key);
                        claimed.entry(user.clone()).or_insert_with(|| json!({}))[device.as_str()] = Value::Object(keys);
                    }
                }
                json!({ "one_time_keys": claimed, "failures": {} })
            }
            RequestKind::ToDevice { event_type, body, .. } => {
                for (recipient, devices) in body["messages"].as_object().unwrap() {
                    for (device, content) in devices.as_object().unwrap() {
                        let event = json!({ "type": event_type, "sender": user_id, "content": content });
                        self.inbox.entry((recipient.clone(), device.clone())).or_default().push(event);
                    }
                }
                json!({})
            }
        }
    }

    fn one_time_key_count(&self, slot: &Slot) -> u64 {
        self.one_time_keys.get(slot).map_or(0, |keys| keys.len() as u64)
    }

    /// Delivers a sync to the machine: its to-device inbox and key counts.
    fn sync(&mut self, machine: &mut CryptoMachine) -> SyncOutcome {
        self.sync_with_changes(machine, Vec::new())
    }

    /// A sync that also reports users whose devices changed.
    fn sync_with_changes(&mut self, machine: &mut CryptoMachine, changed_users: Vec<OwnedUserId>) -> SyncOutcome {
        let slot = (machine.user_id().to_string(), machine.device_id().to_string());
        let unused_fallback_keys =
            if self.fallback_keys.contains_key(&slot) { vec!["signed_curve25519".to_owned()] } else { Vec::new() };
        let count = self.one_time_key_count(&slot);
        let changes = SyncChanges {
            to_device_events: self.inbox.remove(&slot).unwrap_or_default(),
            changed_users,
            left_users: Vec::new(),
            one_time_key_counts: Some(BTreeMap::from([("signed_curve25519".to_owned(), count)])),
            unused_fallback_key_types: Some(unused_fallback_keys),
        };
        machine.receive_sync_changes(&changes)
    }
}

/// Sends one request to the fake server and reports the response.
fn send(server: &mut FakeServer, machine: &mut CryptoMachine, request: &OutgoingRequest) -> ResponseOutcome {
    let response = server.handle(machine.user_id(), machine.device_id(), request);
    machine.mark_request_sent(&request.id, &response).unwrap()
}

/// Sends the machine's outgoing requests until it has none left.
fn flush(server: &mut FakeServer, machine: &mut CryptoMachine) -> Vec<ResponseOutcome> {
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let requests = machine.outgoing_requests().unwrap();
        if requests.is_empty() {
            return outcomes;
        }
        for request in &requests {
            outcomes.push(send(server, machine, request));
        }
    }
    panic!("the outgoing requests never settle");
}

/// Runs `share_room_key` to completion; returns the to-device requests sent.
fn share(
    server: &mut FakeServer,
    machine: &mut CryptoMachine,
    room_id: &RoomId,
    members: &[OwnedUserId],
) -> Vec<OutgoingRequest> {
    let mut sent = Vec::new();
    for _ in 0..10 {
        let requests = machine.share_room_key(room_id, members).unwrap();
        if requests.is_empty() {
            return sent;
        }
        for request in requests {
            send(server, machine, &request);
            if matches!(request.kind, RequestKind::ToDevice { .. }) {
                sent.push(request);
            }
        }
    }
    panic!("sharing the room key never settles");
}

/// A machine whose keys are on the fake server.
fn new_machine(server: &mut FakeServer, user_id: &UserId, device_id: &DeviceId) -> CryptoMachine {
    let mut machine = CryptoMachine::new(user_id, device_id);
    flush(server, &mut machine);
    machine
}

/// An `m.room.encrypted` room event as the server would deliver it.
fn room_event(content: &Value, event_id: &str, sender: &UserId) -> Value {
    json!({
        "type": "m.room.encrypted",
        "event_id": event_id,
        "sender": sender,
        "origin_server_ts": 1,
        "content": content,
    })
}

/// The Olm message type (0 pre-key, 1 normal) of a to-device request with
/// one message.
fn olm_message_type(request: &OutgoingRequest) -> u64 {
    let messages = request.body()["messages"].as_object().unwrap();
    let devices = messages.values().next().unwrap().as_object().unwrap();
    let ciphertext = devices.values().next().unwrap()["ciphertext"].as_object().unwrap();
    ciphertext.values().next().unwrap()["type"].as_u64().unwrap()
}

/// Alice, Bob and Carol, one device each, each tracking all three.
struct World {
    server: FakeServer,
    alice: CryptoMachine,
    bob: CryptoMachine,
    carol: CryptoMachine,
}

impl World {
    fn new() -> Self {
        let mut server = FakeServer::default();
        let mut alice = new_machine(&mut server, user_id!("@alice:example.org"), device_id!("ALICE"));
        let mut bob = new_machine(&mut server, user_id!("@bob:example.org"), device_id!("BOB"));
        let mut carol = new_machine(&mut server, user_id!("@carol:example.org"), device_id!("CAROL"));
        let users = [alice.user_id().to_owned(), bob.user_id().to_owned(), carol.user_id().to_owned()];
        for machine in [&mut alice, &mut bob, &mut carol] {
            machine.update_tracked_users(&users);
            flush(&mut server, machine);
        }
        Self { server, alice, bob, carol }
    }

    fn members(&self) -> Vec<OwnedUserId> {
        vec![self.alice.user_id().to_owned(), self.bob.user_id().to_owned(), self.carol.user_id().to_owned()]
    }

    /// Alice shares a room key for `!room:example.org` with every member and
    /// Bob receives it; returns the room, the members and Alice's user ID.
    fn share_room_with_bob(&mut self) -> (&'static RoomId, Vec<OwnedUserId>, OwnedUserId) {
        let room = room_id!("!room:example.org");
        let members = self.members();
        let alice_id = self.alice.user_id().to_owned();
        share(&mut self.server, &mut self.alice, room, &members);
        self.server.sync(&mut self.bob);
        (room, members, alice_id)
    }
}

#[test]
fn the_keys_upload_carries_signed_device_keys_one_time_keys_and_a_fallback_key() {
    let mut server = FakeServer::default();
    let alice_id = user_id!("@alice:example.org");
    let mut alice = CryptoMachine::new(alice_id, device_id!("ALICE"));
    let requests = alice.outgoing_requests().unwrap();
    let upload = requests.iter().find(|request| matches!(request.kind, RequestKind::KeysUpload { .. })).unwrap();
    assert_eq!(upload.method(), "POST");
    assert_eq!(upload.path(), "/_matrix/client/v3/keys/upload");
    let body = upload.body();

    let device = TrackedDevice::from_device_keys(alice_id, device_id!("ALICE"), &body["device_keys"]).unwrap();
    assert_eq!(device.ed25519, alice.ed25519_key());
    assert_eq!(device.curve25519, alice.curve25519_key());

    // Half of vodozemac's recommended number of published keys, each
    // signed by the device.
    let one_time_keys = body["one_time_keys"].as_object().unwrap();
    assert_eq!(one_time_keys.len(), 25);
    for (key_id, key) in one_time_keys {
        assert!(key_id.starts_with("signed_curve25519:"));
        assert!(verify_signature(key, alice_id.as_str(), "ALICE", &alice.ed25519_key()));
    }
    let fallback_keys = body["fallback_keys"].as_object().unwrap();
    assert_eq!(fallback_keys.len(), 1);
    let (first_fallback_id, fallback_key) = fallback_keys.iter().next().unwrap();
    assert_eq!(fallback_key["fallback"], json!(true));
    assert!(verify_signature(fallback_key, alice_id.as_str(), "ALICE", &alice.ed25519_key()));

    // Until it is marked sent, the same request is handed out again.
    assert!(alice.outgoing_requests().unwrap().iter().any(|request| request.id == upload.id));
    flush(&mut server, &mut alice);
    assert!(alice.outgoing_requests().unwrap().is_empty());

    // The server's count drops to 20: five new keys, nothing else.
    alice.receive_sync_changes(&SyncChanges {
        one_time_key_counts: Some(BTreeMap::from([("signed_curve25519".to_owned(), 20)])),
        unused_fallback_key_types: Some(vec!["signed_curve25519".to_owned()]),
        ..SyncChanges::default()
    });
    let requests = alice.outgoing_requests().unwrap();
    assert_eq!(requests.len(), 1);
    let body = requests[0].body();
    assert_eq!(body["one_time_keys"].as_object().unwrap().len(), 5);
    assert!(body.get("device_keys").is_none());
    assert!(body.get("fallback_keys").is_none());
    send(&mut server, &mut alice, &requests[0]);

    // The fallback key was used: a new one is uploaded.
    alice.receive_sync_changes(&SyncChanges { unused_fallback_key_types: Some(Vec::new()), ..SyncChanges::default() });
    let requests = alice.outgoing_requests().unwrap();
    assert_eq!(requests.len(), 1);
    let new_fallback = requests[0].body()["fallback_keys"].as_object().unwrap();
    assert_eq!(new_fallback.len(), 1);
    assert!(!new_fallback.contains_key(first_fallback_id));
}

#[test]
fn olm_sessions_start_with_a_pre_key_message_then_carry_normal_messages_both_ways() {
    let mut server = FakeServer::default();
    let (alice_id, bob_id) = (user_id!("@alice:example.org"), user_id!("@bob:example.org"));
    let mut alice = new_machine(&mut server, alice_id, device_id!("ALICE"));
    let mut bob = new_machine(&mut server, bob_id, device_id!("BOB"));
    alice.update_tracked_users(&[bob_id.to_owned()]);
    flush(&mut server, &mut alice);
    bob.update_tracked_users(&[alice_id.to_owned()]);
    flush(&mut server, &mut bob);

    // Alice claims one of Bob's one-time keys.
    assert!(!alice.has_olm_session(bob_id, device_id!("BOB")));
    let claim = alice.missing_sessions_request(&[bob_id.to_owned()]).unwrap();
    assert!(matches!(claim.kind, RequestKind::KeysClaim { .. }));
    let outcome = send(&mut server, &mut alice, &claim);
    assert!(outcome.unreachable_devices.is_empty());
    assert!(alice.has_olm_session(bob_id, device_id!("BOB")));
    assert!(alice.missing_sessions_request(&[bob_id.to_owned()]).is_none());

    // The first message is a pre-key message; it creates Bob's session.
    let request = alice.encrypt_to_device(bob_id, device_id!("BOB"), "org.example.ping", &json!({ "n": 1 })).unwrap();
    assert_eq!(request.method(), "PUT");
    assert_eq!(olm_message_type(&request), 0);
    send(&mut server, &mut alice, &request);
    let outcome = server.sync(&mut bob);
    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert_eq!(outcome.to_device_events.len(), 1);
    let event = &outcome.to_device_events[0];
    assert_eq!(event.event_type, "org.example.ping");
    assert_eq!(event.content, json!({ "n": 1 }));
    assert_eq!(event.sender, alice_id);
    assert_eq!(event.sender_key.as_deref(), Some(alice.curve25519_key().as_str()));
    assert_eq!(event.sender_device.as_deref(), Some(device_id!("ALICE")));

    // The one-time key Alice used is gone from the server: Bob tops up one.
    let requests = bob.outgoing_requests().unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body()["one_time_keys"].as_object().unwrap().len(), 1);
    flush(&mut server, &mut bob);

    // Bob's session has received a message, so he answers with a normal one.
    let request = bob.encrypt_to_device(alice_id, device_id!("ALICE"), "org.example.pong", &json!({ "n": 2 })).unwrap();
    assert_eq!(olm_message_type(&request), 1);
    send(&mut server, &mut bob, &request);
    let outcome = server.sync(&mut alice);
    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert_eq!(outcome.to_device_events[0].content, json!({ "n": 2 }));
    assert_eq!(outcome.to_device_events[0].sender_device.as_deref(), Some(device_id!("BOB")));

    // Alice's session has received one too: normal messages from her now.
    let request = alice.encrypt_to_device(bob_id, device_id!("BOB"), "org.example.ping", &json!({ "n": 3 })).unwrap();
    assert_eq!(olm_message_type(&request), 1);
    send(&mut server, &mut alice, &request);
    let outcome = server.sync(&mut bob);
    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert_eq!(outcome.to_device_events[0].content, json!({ "n": 3 }));

    // The same normal message delivered twice does not decrypt again.
    server.handle(alice.user_id(), alice.device_id(), &request);
    let outcome = server.sync(&mut bob);
    assert!(outcome.to_device_events.is_empty());
    assert!(matches!(outcome.failures[0].reason, DecryptionError::NoOlmSession { .. }));
}

#[test]
fn room_keys_reach_every_member_device_over_olm_and_decrypt_room_events() {
    let mut w = World::new();
    let room = room_id!("!room:example.org");
    let members = w.members();
    let alice_id = w.alice.user_id().to_owned();

    let sent = share(&mut w.server, &mut w.alice, room, &members);
    assert_eq!(sent.len(), 1);
    let messages = sent[0].body()["messages"].as_object().unwrap();
    assert_eq!(messages.len(), 2);
    assert!(messages.contains_key("@bob:example.org") && messages.contains_key("@carol:example.org"));
    // Shared with everyone: nothing more to do.
    assert!(w.alice.share_room_key(room, &members).unwrap().is_empty());
    let session_id = w.alice.outbound_session_id(room).unwrap().to_owned();

    for machine in [&mut w.bob, &mut w.carol] {
        let outcome = w.server.sync(machine);
        assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
        assert_eq!(outcome.room_keys.len(), 1);
        let key = &outcome.room_keys[0];
        assert_eq!(key.room_id, room);
        assert_eq!(key.session_id, session_id);
        assert_eq!(key.sender, alice_id);
        assert_eq!(key.sender_device, device_id!("ALICE"));
        assert!(machine.has_room_key(room, &session_id));
    }

    let content = json!({ "msgtype": "m.text", "body": "hello" });
    let encrypted = w.alice.encrypt_room_event(room, "m.room.message", &content, &members).unwrap();
    assert_eq!(encrypted["algorithm"], "m.megolm.v1.aes-sha2");
    assert_eq!(encrypted["sender_key"], json!(w.alice.curve25519_key()));
    assert_eq!(encrypted["device_id"], "ALICE");
    assert_eq!(encrypted["session_id"], json!(session_id));
    assert!(encrypted["ciphertext"].is_string());

    let event = room_event(&encrypted, "$hello", &alice_id);
    for machine in [&mut w.bob, &mut w.carol, &mut w.alice] {
        let decrypted = machine.decrypt_room_event(room, &event).unwrap();
        assert_eq!(decrypted.event_type, "m.room.message");
        assert_eq!(decrypted.content, content);
        assert_eq!(decrypted.sender, alice_id);
        assert_eq!(decrypted.sender_device, device_id!("ALICE"));
        assert_eq!(decrypted.session_id, session_id);
        assert_eq!(decrypted.message_index, 0);
        assert_eq!(decrypted.event["type"], "m.room.message");
        assert_eq!(decrypted.event["event_id"], "$hello");
    }
}

#[test]
fn a_room_key_from_a_device_not_yet_known_waits_for_a_keys_query() {
    let mut server = FakeServer::default();
    let (alice_id, bob_id) = (user_id!("@alice:example.org"), user_id!("@bob:example.org"));
    let mut alice = new_machine(&mut server, alice_id, device_id!("ALICE"));
    let mut bob = new_machine(&mut server, bob_id, device_id!("BOB"));
    let room = room_id!("!room:example.org");
    let members = [alice_id.to_owned(), bob_id.to_owned()];
    share(&mut server, &mut alice, room, &members);

    // Bob does not know Alice's devices yet.
    let outcome = server.sync(&mut bob);
    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert!(outcome.room_keys.is_empty());
    assert_eq!(outcome.deferred_events, 1);

    // His machine asks for them, and stores the key once they are known.
    let outcomes = flush(&mut server, &mut bob);
    let stored: Vec<&RoomKeyInfo> = outcomes.iter().flat_map(|outcome| &outcome.room_keys).collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].sender_device, device_id!("ALICE"));

    let encrypted = alice.encrypt_room_event(room, "m.room.message", &json!({ "body": "hi" }), &members).unwrap();
    let decrypted = bob.decrypt_room_event(room, &room_event(&encrypted, "$hi", alice_id)).unwrap();
    assert_eq!(decrypted.content, json!({ "body": "hi" }));
}

#[test]
fn the_room_key_rotates_after_rotation_period_msgs_messages() {
    let mut w = World::new();
    let room = room_id!("!room:example.org");
    let members = w.members();
    let alice_id = w.alice.user_id().to_owned();
    let settings = RoomSettings::from_encryption_content(&json!({ "algorithm": MEGOLM_V1, "rotation_period_msgs": 3 }));
    w.alice.set_room_settings(room, settings);

    share(&mut w.server, &mut w.alice, room, &members);
    w.server.sync(&mut w.bob);
    let first = w.alice.outbound_session_id(room).unwrap().to_owned();
    for n in 0..3 {
        let encrypted = w.alice.encrypt_room_event(room, "m.room.message", &json!({ "body": n }), &members).unwrap();
        assert_eq!(encrypted["session_id"], json!(first));
        let event = room_event(&encrypted, &format!("$message{n}"), &alice_id);
        assert_eq!(w.bob.decrypt_room_event(room, &event).unwrap().message_index, n);
    }

    // The session encrypted three messages: it must be replaced first.
    let result = w.alice.encrypt_room_event(room, "m.room.message", &json!({ "body": 3 }), &members);
    assert!(matches!(result, Err(CryptoError::RoomKeyExpired(_))), "{result:?}");
    share(&mut w.server, &mut w.alice, room, &members);
    let second = w.alice.outbound_session_id(room).unwrap().to_owned();
    assert_ne!(first, second);

    let outcome = w.server.sync(&mut w.bob);
    assert_eq!(outcome.room_keys[0].session_id, second);
    let encrypted = w.alice.encrypt_room_event(room, "m.room.message", &json!({ "body": 3 }), &members).unwrap();
    let decrypted = w.bob.decrypt_room_event(room, &room_event(&encrypted, "$message3", &alice_id)).unwrap();
    assert_eq!(decrypted.session_id, second);
    assert_eq!(decrypted.message_index, 0);
}

#[test]
fn the_room_key_rotates_after_rotation_period_ms() {
    let mut w = World::new();
    let room = room_id!("!room:example.org");
    let members = w.members();
    let start = 1_000_000;
    w.alice.set_clock_ms(start);
    share(&mut w.server, &mut w.alice, room, &members);
    let first = w.alice.outbound_session_id(room).unwrap().to_owned();

    w.alice.set_clock_ms(start + DEFAULT_ROTATION_PERIOD_MS - 1);
    assert!(w.alice.encrypt_room_event(room, "m.room.message", &json!({ "body": "late" }), &members).is_ok());
    w.alice.set_clock_ms(start + DEFAULT_ROTATION_PERIOD_MS);
    let result = w.alice.encrypt_room_event(room, "m.room.message", &json!({ "body": "too late" }), &members);
    assert!(matches!(result, Err(CryptoError::RoomKeyExpired(_))), "{result:?}");

    share(&mut w.server, &mut w.alice, room, &members);
    assert_ne!(w.alice.outbound_session_id(room).unwrap(), first);
    assert!(w.alice.encrypt_room_event(room, "m.room.message", &json!({ "body": "fresh" }), &members).is_ok());
}

#[test]
fn the_room_key_rotates_when_a_member_leaves() {
    let mut w = World::new();
    let room = room_id!("!room:example.org");
    let members = w.members();
    let alice_id = w.alice.user_id().to_owned();
    share(&mut w.server, &mut w.alice, room, &members);
    let first = w.alice.outbound_session_id(room).unwrap().to_owned();
    w.server.sync(&mut w.bob);
    w.server.sync(&mut w.carol);

    // Carol leaves: the session she holds must not encrypt anything more.
    let remaining = [alice_id.clone(), w.bob.user_id().to_owned()];
    let result = w.alice.encrypt_room_event(room, "m.room.message", &json!({ "body": "secret" }), &remaining);
    assert!(matches!(result, Err(CryptoError::RoomKeyExpired(_))), "{result:?}");
    let sent = share(&mut w.server, &mut w.alice, room, &remaining);
    let second = w.alice.outbound_session_id(room).unwrap().to_owned();
    assert_ne!(first, second);
    let messages = sent[0].body()["messages"].as_object().unwrap();
    assert_eq!(messages.len(), 1);
    assert!(messages.contains_key("@bob:example.org"));

    assert_eq!(w.server.sync(&mut w.bob).room_keys[0].session_id, second);
    assert!(w.server.sync(&mut w.carol).room_keys.is_empty());
    let encrypted =
        w.alice.encrypt_room_event(room, "m.room.message", &json!({ "body": "secret" }), &remaining).unwrap();
    let event = room_event(&encrypted, "$secret", &alice_id);
    assert!(w.bob.decrypt_room_event(room, &event).is_ok());
    assert_eq!(
        w.carol.decrypt_room_event(room, &event),
        Err(DecryptionError::UnknownSession { session_id: second.clone() })
    );

    // Rotation on demand, as when a leave is seen in the room's state.
    assert!(w.alice.discard_room_key(room));
    share(&mut w.server, &mut w.alice, room, &remaining);
    assert_ne!(w.alice.outbound_session_id(room).unwrap(), second);
}

#[test]
fn the_room_key_rotates_when_a_device_disappears() {
    let mut server = FakeServer::default();
    let (alice_id, bob_id) = (user_id!("@alice:example.org"), user_id!("@bob:example.org"));
    let mut alice = new_machine(&mut server, alice_id, device_id!("ALICE"));
    let _bob_laptop = new_machine(&mut server, bob_id, device_id!("LAPTOP"));
    let _bob_phone = new_machine(&mut server, bob_id, device_id!("PHONE"));
    let room = room_id!("!room:example.org");
    let members = [alice_id.to_owned(), bob_id.to_owned()];

    let sent = share(&mut server, &mut alice, room, &members);
    assert_eq!(sent[0].body()["messages"]["@bob:example.org"].as_object().unwrap().len(), 2);
    let first = alice.outbound_session_id(room).unwrap().to_owned();

    // Bob signs out of his phone; the server tells Alice his devices changed.
    server.device_keys.get_mut(bob_id.as_str()).unwrap().remove("PHONE");
    server.sync_with_changes(&mut alice, vec![bob_id.to_owned()]);
    let outcomes = flush(&mut server, &mut alice);
    let phone = (bob_id.to_owned(), device_id!("PHONE").to_owned());
    assert!(outcomes.iter().any(|outcome| outcome.removed_devices.contains(&phone)));

    let result = alice.encrypt_room_event(room, "m.room.message", &json!({ "body": "hi" }), &members);
    assert!(matches!(result, Err(CryptoError::RoomKeyExpired(_))), "{result:?}");
    let sent = share(&mut server, &mut alice, room, &members);
    assert_ne!(alice.outbound_session_id(room).unwrap(), first);
    let to_bob = sent[0].body()["messages"]["@bob:example.org"].as_object().unwrap();
    assert_eq!(to_bob.len(), 1);
    assert!(to_bob.contains_key("LAPTOP"));
}

#[test]
fn a_message_index_seen_again_with_another_event_id_is_a_replay() {
    let mut w = World::new();
    let (room, members, alice_id) = w.share_room_with_bob();

    let encrypted = w.alice.encrypt_room_event(room, "m.room.message", &json!({ "body": "once" }), &members).unwrap();
    let original = room_event(&encrypted, "$original", &alice_id);
    assert!(w.bob.decrypt_room_event(room, &original).is_ok());
    // Decrypting the same event again is normal processing, not a replay.
    assert!(w.bob.decrypt_room_event(room, &original).is_ok());

    let replayed = room_event(&encrypted, "$replayed", &alice_id);
    assert_eq!(
        w.bob.decrypt_room_event(room, &replayed),
        Err(DecryptionError::Replay {
            index: 0,
            first_event_id: "$original".to_owned(),
            event_id: "$replayed".to_owned(),
        })
    );
}

#[test]
fn tampered_ciphertext_is_rejected() {
    let mut w = World::new();
    let (room, members, alice_id) = w.share_room_with_bob();

    let encrypted = w.alice.encrypt_room_event(room, "m.room.message", &json!({ "body": "intact" }), &members).unwrap();
    let ciphertext = encrypted["ciphertext"].as_str().unwrap();
    // A Megolm message ends with an 8-byte MAC and a 64-byte signature:
    // flip a bit of the AES ciphertext before them, then one of the
    // signature.
    for from_end in [73, 1] {
        let mut bytes = base64_decode(ciphertext).unwrap();
        let position = bytes.len() - from_end;
        bytes[position] ^= 0x01;
        let mut tampered = encrypted.clone();
        tampered["ciphertext"] = json!(base64_encode(bytes));
        let result = w.bob.decrypt_room_event(room, &room_event(&tampered, "$tampered", &alice_id));
        assert!(matches!(result, Err(DecryptionError::Tampered(_))), "{result:?}");
    }

    // The genuine event still decrypts.
    let decrypted = w.bob.decrypt_room_event(room, &room_event(&encrypted, "$intact", &alice_id)).unwrap();
    assert_eq!(decrypted.content, json!({ "body": "intact" }));
}

#[test]
fn room_keys_must_come_over_olm_and_events_stay_in_their_room_and_with_their_sender() {
    let mut w = World::new();
    let room = room_id!("!room:example.org");
    let other_room = room_id!("!other:example.org");
    let members = w.members();
    let alice_id = w.alice.user_id().to_owned();
    let bob_id = w.bob.user_id().to_owned();

    // A room key sent in plaintext is refused.
    let plaintext_key = json!({
        "type": "m.room_key",
        "sender": "@alice:example.org",
        "content": { "algorithm": MEGOLM_V1, "room_id": room, "session_id": "x", "session_key": "y" },
    });
    let outcome =
        w.bob.receive_sync_changes(&SyncChanges { to_device_events: vec![plaintext_key], ..SyncChanges::default() });
    assert_eq!(outcome.failures[0].reason, DecryptionError::RoomKeyNotEncrypted);

    share(&mut w.server, &mut w.alice, room, &members);
    w.server.sync(&mut w.bob);
    let session_id = w.alice.outbound_session_id(room).unwrap().to_owned();
    let encrypted = w.alice.encrypt_room_event(room, "m.room.message", &json!({ "body": "here" }), &members).unwrap();
    let event = room_event(&encrypted, "$here", &alice_id);

    // The keys of one room do not open another room's events.
    assert_eq!(w.bob.decrypt_room_event(other_room, &event), Err(DecryptionError::UnknownSession { session_id }));
    let mut moved = event.clone();
    moved["room_id"] = json!(other_room);
    assert_eq!(
        w.bob.decrypt_room_event(room, &moved),
        Err(DecryptionError::WrongRoom { expected: room.to_string(), found: other_room.to_string() })
    );

    // Only the user who shared the session can send with it.
    let mut forged = event.clone();
    forged["sender"] = json!("@carol:example.org");
    assert_eq!(
        w.bob.decrypt_room_event(room, &forged),
        Err(DecryptionError::SenderMismatch { sender: "@carol:example.org".to_owned() })
    );

    // A session shared under another room's ID: the room ID inside the
    // encrypted payload gives the move away.
    let mut session = GroupSession::new(SessionConfig::version_1());
    let room_key = json!({
        "algorithm": MEGOLM_V1,
        "room_id": other_room,
        "session_id": session.session_id(),
        "session_key": session.session_key().to_base64(),
    });
    let request = w.alice.encrypt_to_device(&bob_id, device_id!("BOB"), "m.room_key", &room_key).unwrap();
    send(&mut w.server, &mut w.alice, &request);
    let outcome = w.server.sync(&mut w.bob);
    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert_eq!(outcome.room_keys[0].room_id, other_room);
    let payload = json!({ "type": "m.room.message", "content": { "body": "moved" }, "room_id": room });
    let content = json!({
        "algorithm": MEGOLM_V1,
        "sender_key": w.alice.curve25519_key(),
        "device_id": "ALICE",
        "session_id": session.session_id(),
        "ciphertext": session.encrypt(serde_json::to_string(&payload).unwrap()).to_base64(),
    });
    assert_eq!(
        w.bob.decrypt_room_event(other_room, &room_event(&content, "$moved", &alice_id)),
        Err(DecryptionError::WrongRoom { expected: other_room.to_string(), found: room.to_string() })
    );
}

#[test]
fn a_device_whose_keys_are_signed_by_another_key_is_refused() {
    let mut server = FakeServer::default();
    let (alice_id, bob_id) = (user_id!("@alice:example.org"), user_id!("@bob:example.org"));
    let mut alice = new_machine(&mut server, alice_id, device_id!("ALICE"));
    let _bob = new_machine(&mut server, bob_id, device_id!("BOB"));

    // The server adds a device to Bob's list whose keys are signed by some
    // other key than its own.
    let forged_device = Account::new();
    let other_key = Account::new();
    let mut keys = json!({
        "algorithms": ALGORITHMS,
        "device_id": "EVIL",
        "keys": {
            "curve25519:EVIL": forged_device.curve25519_key().to_base64(),
            "ed25519:EVIL": forged_device.ed25519_key().to_base64(),
        },
        "user_id": bob_id,
    });
    let signature = other_key.sign(canonical(&keys).unwrap().as_bytes()).to_base64();
    keys["signatures"] = json!({ "@bob:example.org": { "ed25519:EVIL": signature } });
    server.device_keys.get_mut(bob_id.as_str()).unwrap().insert("EVIL".to_owned(), keys);

    alice.update_tracked_users(&[bob_id.to_owned()]);
    let outcomes = flush(&mut server, &mut alice);
    let refused: Vec<&RefusedDevice> = outcomes.iter().flat_map(|outcome| &outcome.refused_devices).collect();
    let expected = RefusedDevice {
        user_id: bob_id.to_owned(),
        device_id: device_id!("EVIL").to_owned(),
        reason: RefusalReason::BadSignature,
    };
    assert_eq!(refused, [&expected]);
    let devices: Vec<&str> =
        alice.tracked_devices(bob_id).into_iter().map(|device| device.device_id.as_str()).collect();
    assert_eq!(devices, ["BOB"]);

    // Room keys go to Bob's real device only.
    let room = room_id!("!room:example.org");
    let sent = share(&mut server, &mut alice, room, &[alice_id.to_owned(), bob_id.to_owned()]);
    let to_bob = sent[0].body()["messages"]["@bob:example.org"].as_object().unwrap();
    assert_eq!(to_bob.len(), 1);
    assert!(to_bob.contains_key("BOB"));
}

#[test]
fn a_device_whose_identity_keys_changed_is_refused() {
    let mut server = FakeServer::default();
    let (alice_id, bob_id) = (user_id!("@alice:example.org"), user_id!("@bob:example.org"));
    let mut alice = new_machine(&mut server, alice_id, device_id!("ALICE"));
    let bob = new_machine(&mut server, bob_id, device_id!("BOB"));
    alice.update_tracked_users(&[bob_id.to_owned()]);
    flush(&mut server, &mut alice);
    let original = alice.device(bob_id, device_id!("BOB")).unwrap().clone();
    assert_eq!(original.ed25519, bob.ed25519_key());

    // The server now returns other, validly self-signed keys for the same
    // device ID.
    let impostor = DeviceIdentity::new().device_keys(bob_id, device_id!("BOB")).unwrap();
    server.device_keys.get_mut(bob_id.as_str()).unwrap().insert("BOB".to_owned(), impostor);
    server.sync_with_changes(&mut alice, vec![bob_id.to_owned()]);
    let outcomes = flush(&mut server, &mut alice);
    let refused: Vec<&RefusedDevice> = outcomes.iter().flat_map(|outcome| &outcome.refused_devices).collect();
    let expected = RefusedDevice {
        user_id: bob_id.to_owned(),
        device_id: device_id!("BOB").to_owned(),
        reason: RefusalReason::KeysChanged,
    };
    assert_eq!(refused, [&expected]);
    // The keys seen first stay.
    assert_eq!(alice.device(bob_id, device_id!("BOB")), Some(&original));
}

#[test]
fn olm_payloads_with_a_wrong_recipient_recipient_key_sender_or_sender_key_are_rejected() {
    let mut w = World::new();
    let alice_id = w.alice.user_id().to_owned();
    let bob_id = w.bob.user_id().to_owned();
    let claim = w.alice.missing_sessions_request(std::slice::from_ref(&bob_id)).unwrap();
    send(&mut w.server, &mut w.alice, &claim);

    let genuine = json!({
        "type": "org.example.test",
        "content": { "n": 1 },
        "sender": alice_id,
        "recipient": bob_id,
        "recipient_keys": { "ed25519": w.bob.ed25519_key() },
        "keys": { "ed25519": w.alice.ed25519_key() },
    });
    let mut wrong_recipient = genuine.clone();
    wrong_recipient["recipient"] = json!("@carol:example.org");
    let mut wrong_recipient_keys = genuine.clone();
    wrong_recipient_keys["recipient_keys"]["ed25519"] = json!(w.carol.ed25519_key());
    let mut wrong_sender = genuine.clone();
    wrong_sender["sender"] = json!("@carol:example.org");
    let mut wrong_sender_keys = genuine.clone();
    wrong_sender_keys["keys"]["ed25519"] = json!(w.carol.ed25519_key());
    let mut wrong_sender_device_keys = genuine.clone();
    wrong_sender_device_keys["sender_device_keys"] = w.carol.device_keys().unwrap();

    let cases = [
        (wrong_recipient, PayloadProblem::Recipient),
        (wrong_recipient_keys, PayloadProblem::RecipientKeys),
        (wrong_sender, PayloadProblem::Sender),
        (wrong_sender_keys, PayloadProblem::SenderKeys),
        (wrong_sender_device_keys, PayloadProblem::SenderDeviceKeys),
    ];
    for (payload, problem) in cases {
        let request = w.alice.encrypt_raw_payload(&bob_id, device_id!("BOB"), &payload).unwrap();
        send(&mut w.server, &mut w.alice, &request);
        let outcome = w.server.sync(&mut w.bob);
        assert!(outcome.to_device_events.is_empty(), "{problem:?} passed");
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(outcome.failures[0].reason, DecryptionError::InvalidPayload(problem));
    }

    // The genuine payload passes every check.
    let request = w.alice.encrypt_raw_payload(&bob_id, device_id!("BOB"), &genuine).unwrap();
    send(&mut w.server, &mut w.alice, &request);
    let outcome = w.server.sync(&mut w.bob);
    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert_eq!(outcome.to_device_events[0].content, json!({ "n": 1 }));
    assert_eq!(outcome.to_device_events[0].sender_device.as_deref(), Some(device_id!("ALICE")));
}

#[test]
fn a_pickled_machine_keeps_its_identity_sessions_and_replay_history() {
    let mut w = World::new();
    let (room, members, alice_id) = w.share_room_with_bob();
    let content = json!({ "msgtype": "m.text", "body": "before the restart" });
    let encrypted = w.alice.encrypt_room_event(room, "m.room.message", &content, &members).unwrap();
    let first = room_event(&encrypted, "$first", &alice_id);
    w.bob.decrypt_room_event(room, &first).unwrap();

    let ed25519 = w.bob.ed25519_key();
    let bytes = w.bob.pickle().unwrap();
    let mut bob = CryptoMachine::from_pickle(&bytes).unwrap();
    assert_eq!(bob.ed25519_key(), ed25519);
    assert_eq!(bob.curve25519_key(), w.bob.curve25519_key());
    assert!(bob.has_olm_session(&alice_id, device_id!("ALICE")));
    assert_eq!(bob.tracked_devices(&alice_id).len(), 1);

    // The inbound session still decrypts, and still remembers which event
    // used which message index.
    assert_eq!(bob.decrypt_room_event(room, &first).unwrap().content, content);
    let replay = room_event(&encrypted, "$replayed", &alice_id);
    assert!(matches!(bob.decrypt_room_event(room, &replay), Err(DecryptionError::Replay { .. })));

    // The restored Olm session and outbound state carry on: Bob shares his
    // own room key with Alice over the session Alice started.
    let sent = share(&mut w.server, &mut bob, room, &members);
    assert!(!sent.is_empty());
    let outcome = w.server.sync(&mut w.alice);
    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert_eq!(outcome.room_keys.len(), 1);

    // A restored Alice keeps encrypting with the same outbound session.
    let session_id = w.alice.outbound_session_id(room).unwrap().to_owned();
    let mut alice = CryptoMachine::from_pickle(&w.alice.pickle().unwrap()).unwrap();
    assert_eq!(alice.outbound_session_id(room), Some(session_id.as_str()));
    let again = alice.encrypt_room_event(room, "m.room.message", &content, &members).unwrap();
    let decrypted = bob.decrypt_room_event(room, &room_event(&again, "$second", &alice_id)).unwrap();
    assert_eq!(decrypted.message_index, 1);
}
