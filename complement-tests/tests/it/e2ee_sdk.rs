//! End-to-end encryption with the real matrix-rust-sdk (the engine of
//! Element X) and its own crypto: encrypted chat both ways, a late second
//! device, a deleted device, cross-signing, key backup and recovery, and the
//! blind-server check (no plaintext and no private key on the server).

use std::{path::Path, time::Duration};

use complement_tests::Server;
use matrix_sdk::{
    Client,
    config::SyncSettings,
    ruma::{
        EventId, OwnedDeviceId, OwnedEventId, RoomId,
        api::client::{
            room::create_room,
            uiaa::{AuthData, MatrixUserIdentifier, Password, UserIdentifier},
        },
        events::room::message::RoomMessageEventContent,
    },
};
use serde_json::Value;

pub(crate) async fn sdk_login(s: &Server, user: &str, password: &str) -> Client {
    let client = Client::builder()
        .homeserver_url(&s.url)
        .add_root_certificates(vec![s.certificate()])
        .build()
        .await
        .expect("matrix-sdk client");
    client.matrix_auth().login_username(user, password).initial_device_display_name(user).send().await.expect("login");
    // The first syncs upload the device's keys.
    sync(&client).await;
    sync(&client).await;
    client
}

/// Registers alice and bob and logs each in with matrix-sdk (keys uploaded).
async fn alice_and_bob(s: &Server) -> (Client, Client) {
    s.register("alice", "alice pw 1").await;
    s.register("bob", "bob pw 1").await;
    (sdk_login(s, "alice", "alice pw 1").await, sdk_login(s, "bob", "bob pw 1").await)
}

pub(crate) async fn sync(client: &Client) {
    client.sync_once(SyncSettings::default().timeout(Duration::from_millis(200))).await.expect("sync");
}

fn password_auth(user: &str, password: &str, session: Option<String>) -> AuthData {
    let mut p = Password::new(UserIdentifier::Matrix(MatrixUserIdentifier::new(user.to_owned())), password.to_owned());
    p.session = session;
    AuthData::Password(p)
}

/// Syncs `client` until it can decrypt `event_id`; returns its body.
pub(crate) async fn decrypted_body(client: &Client, room_id: &RoomId, event_id: &EventId) -> String {
    let mut last = String::new();
    for _ in 0..40 {
        sync(client).await;
        if let Some(room) = client.get_room(room_id) {
            match room.event(event_id, None).await {
                Ok(ev) if ev.encryption_info().is_some() => {
                    let v: Value = ev.raw().deserialize_as().expect("JSON");
                    if v["type"] == "m.room.message" {
                        return v["content"]["body"].as_str().unwrap_or_default().to_owned();
                    }
                    last = v.to_string();
                }
                Ok(ev) => last = format!("not decrypted: {:?}", ev.kind),
                Err(e) => last = e.to_string(),
            }
        }
    }
    panic!("{} never decrypted {event_id}: {last}", client.user_id().unwrap());
}

pub(crate) async fn send(room: &matrix_sdk::Room, body: &str) -> OwnedEventId {
    room.send(RoomMessageEventContent::text_plain(body)).await.expect("send").response.event_id
}

/// Every file under `dir` (data, database and logs), as bytes.
pub(crate) fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p.display().to_string(), bytes));
            }
        }
    }
    out
}

pub(crate) fn found_in(files: &[(String, Vec<u8>)], needle: &[u8]) -> Option<String> {
    files.iter().find(|(_, b)| b.windows(needle.len()).any(|w| w == needle)).map(|(p, _)| p.clone())
}

fn marker() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("secret-marker-{n:x}-{}", std::process::id())
}

/// Alice and Bob chat in an encrypted room both ways; Bob's later second
/// device reads what is sent after it appeared; Alice's deleted device drops
/// out of Bob's device list; and the server holds no plaintext and no room
/// key afterwards.
#[tokio::test]
async fn matrix_sdk_encrypted_chat_devices_and_blind_server() {
    let mut s = Server::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let alice_id = alice.user_id().unwrap().to_owned();
    let bob_id = bob.user_id().unwrap().to_owned();
    let mark = marker();

    let mut request = create_room::v3::Request::new();
    request.invite = vec![bob_id.clone()];
    request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
    let room = alice.create_room(request).await.expect("create room");
    room.enable_encryption().await.expect("enable encryption");
    let room_id = room.room_id().to_owned();
    sync(&bob).await;
    bob.get_room(&room_id).expect("invite").join().await.expect("join");
    sync(&alice).await;
    let bob_room = bob.get_room(&room_id).expect("joined");

    // Both ways.
    let e1 = send(&room, &format!("hello bob {mark}")).await;
    assert_eq!(decrypted_body(&bob, &room_id, &e1).await, format!("hello bob {mark}"));
    let e2 = send(&bob_room, &format!("hi alice {mark}")).await;
    assert_eq!(decrypted_body(&alice, &room_id, &e2).await, format!("hi alice {mark}"));

    // The server stored the event as ciphertext, untouched.
    let (_, raw) =
        s.get(&format!("/_matrix/client/v3/rooms/{room_id}/event/{e1}"), Some(&bob.access_token().unwrap())).await;
    assert_eq!(raw["type"], "m.room.encrypted");
    assert_eq!(raw["content"]["algorithm"], "m.megolm.v1.aes-sha2");

    // Bob adds a second device; what alice sends after that, it can read.
    let bob2 = sdk_login(&s, "bob", "bob pw 1").await;
    sync(&alice).await;
    let e3 = send(&room, &format!("to both of bob's devices {mark}")).await;
    assert_eq!(decrypted_body(&bob2, &room_id, &e3).await, format!("to both of bob's devices {mark}"));
    assert_eq!(decrypted_body(&bob, &room_id, &e3).await, format!("to both of bob's devices {mark}"));

    // Alice adds a second device, then deletes it from the first.
    let alice2 = sdk_login(&s, "alice", "alice pw 1").await;
    let alice2_device: OwnedDeviceId = alice2.device_id().unwrap().to_owned();
    sync(&bob).await;
    let e4 = send(&bob_room, &format!("to both of alice's devices {mark}")).await;
    assert_eq!(decrypted_body(&alice2, &room_id, &e4).await, format!("to both of alice's devices {mark}"));
    let devices = bob.encryption().get_user_devices(&alice_id).await.expect("devices");
    assert!(devices.get(&alice2_device).is_some(), "bob knows alice's second device");

    let err = alice.delete_devices(std::slice::from_ref(&alice2_device), None).await.expect_err("needs UIA");
    let session = err.as_uiaa_response().expect("UIA").session.clone();
    alice
        .delete_devices(std::slice::from_ref(&alice2_device), Some(password_auth("alice", "alice pw 1", session)))
        .await
        .expect("delete device");
    sync(&bob).await;
    let e5 = send(&bob_room, &format!("after the deletion {mark}")).await;
    let devices = bob.encryption().get_user_devices(&alice_id).await.expect("devices");
    assert!(
        devices.get(&alice2_device).is_none_or(|d| d.is_deleted()),
        "bob's client no longer encrypts to the deleted device"
    );
    assert!(devices.devices().any(|d| Some(d.device_id()) == alice.device_id()), "alice's first device remains");
    assert_eq!(decrypted_body(&alice, &room_id, &e5).await, format!("after the deletion {mark}"));

    // A control: a message in an unencrypted room is stored readable, so the scan below can see plaintext.
    let control = marker().replace("secret-marker", "control-plaintext");
    let plain = alice.create_room(create_room::v3::Request::new()).await.expect("plain room");
    send(&plain, &control).await;

    // The room keys bob holds, exported from his client.
    let export = s.dir.path().join("bob-keys.txt");
    bob.encryption().export_room_keys(export.clone(), "export passphrase", |_| true).await.expect("export");
    let keys = matrix_sdk_crypto::decrypt_room_key_export(std::fs::File::open(&export).unwrap(), "export passphrase")
        .expect("decrypt export");
    std::fs::remove_file(&export).unwrap();
    assert!(!keys.is_empty());

    // The blind-server check, over the data directory (database included) and the logs.
    s.terminate().await;
    let all = files(s.dir.path());
    assert!(found_in(&all, control.as_bytes()).is_some(), "the scan finds plaintext the server did store");
    assert_eq!(found_in(&all, mark.as_bytes()), None, "an encrypted message's text is on the server");
    for key in &keys {
        let b64 = key.session_key.to_base64();
        assert_eq!(found_in(&all, b64.as_bytes()), None, "a Megolm session key is on the server");
        let raw = matrix_sdk::ruma::serde::Base64::<matrix_sdk::ruma::serde::base64::Standard>::parse(&b64).unwrap();
        assert_eq!(found_in(&all, raw.as_bytes()), None, "a Megolm session key is on the server");
    }
}

/// Cross-signing bootstrap, key backup and recovery through matrix-sdk: the
/// server stores public keys and encrypted secrets only.
#[tokio::test]
async fn matrix_sdk_cross_signing_backup_and_recovery() {
    let mut s = Server::start().await;
    let (alice, bob) = alice_and_bob(&s).await;
    let alice_id = alice.user_id().unwrap().to_owned();

    // First bootstrap: no interactive auth needed (no keys yet).
    alice.encryption().bootstrap_cross_signing(None).await.expect("bootstrap cross-signing");
    let status = alice.encryption().cross_signing_status().await.expect("status");
    assert!(status.has_master && status.has_self_signing && status.has_user_signing, "{status:?}");
    sync(&alice).await;
    let own = alice.encryption().get_own_device().await.unwrap().expect("own device");
    assert!(own.is_cross_signed_by_owner(), "the device is signed by alice's self-signing key");

    // Bootstrapping again re-sends the same keys: idempotent, no auth needed (replacing
    // keys does need it; see keys::cross_signing_uploads_need_auth_to_replace_and_bad_signatures_fail).
    alice.encryption().bootstrap_cross_signing(None).await.expect("the same keys again");

    // Bob sees alice's identity.
    let room = alice.create_room(create_room::v3::Request::new()).await.expect("room");
    room.enable_encryption().await.expect("encrypt");
    room.invite_user_by_id(bob.user_id().unwrap()).await.expect("invite");
    sync(&bob).await;
    bob.get_room(room.room_id()).unwrap().join().await.expect("join");
    // Joining an encrypted room puts alice in bob's `device_lists.changed`; his client
    // then queries her keys.
    let mut identity = None;
    for _ in 0..5 {
        sync(&bob).await;
        identity = bob.encryption().get_user_identity(&alice_id).await.expect("store");
        if identity.is_some() {
            break;
        }
    }
    assert!(identity.is_some(), "bob's client found alice's cross-signing identity");

    // Key backup: created, then the room keys alice makes are uploaded to it.
    alice.encryption().backups().create().await.expect("create backup");
    assert!(alice.encryption().backups().exists_on_server().await.expect("check"), "backup exists");
    sync(&alice).await;
    let mark = marker();
    send(&room, &format!("backed up {mark}")).await;
    alice.encryption().backups().wait_for_steady_state().await.expect("backup settles");
    let (status, info) = s.get("/_matrix/client/v3/room_keys/version", Some(&alice.access_token().unwrap())).await;
    assert_eq!(status, 200, "{info}");
    assert!(info["count"].as_u64().unwrap_or(0) >= 1, "room keys were backed up: {info}");

    // Recovery (secret storage): the recovery key never reaches the server.
    let recovery_key = alice.encryption().recovery().enable().await.expect("enable recovery");
    sync(&alice).await;
    s.terminate().await;
    let all = files(s.dir.path());
    let compact = recovery_key.replace(' ', "");
    for word in [recovery_key.as_str(), compact.as_str(), mark.as_str()] {
        assert_eq!(found_in(&all, word.as_bytes()), None, "a secret is on the server");
    }
}
