//! End-to-end encryption with the real matrix-js-sdk from npm and its Rust
//! crypto (WebAssembly) in Node, alone and against matrix-rust-sdk, through
//! `complement_tests::js::JsDriver`.

use complement_tests::{Server, js::JsDriver, password_auth};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, api::client::room::create_room};
use serde_json::{Value, json};

use crate::e2ee_sdk::{decrypted_body, sdk_login, send, sync};

fn s(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}")).to_owned()
}

/// Two matrix-js-sdk users chat in an encrypted room both ways; Bob's later
/// second device reads what is sent after it appeared; Alice's deleted
/// device drops out of Bob's client; cross-signing and key backup are set up.
#[tokio::test]
async fn matrix_js_sdk_encrypted_chat_devices_cross_signing_and_backup() {
    let server = Server::start().await;
    let mut js = JsDriver::start(&server).await;
    let alice = js.ok("register", json!({ "name": "alice", "user": "alice", "password": "alice pw 1" })).await;
    let bob = js.ok("register", json!({ "name": "bob", "user": "bob", "password": "bob pw 1" })).await;
    let (alice_id, bob_id) = (s(&alice, "userId"), s(&bob, "userId"));

    let room = js.ok("createRoom", json!({ "name": "alice", "encrypted": true, "invite": [bob_id] })).await;
    let room_id = s(&room, "roomId");
    js.ok("waitForInvite", json!({ "name": "bob", "roomId": room_id })).await;
    let joined = js.ok("join", json!({ "name": "bob", "roomId": room_id })).await;
    assert_eq!(joined["encrypted"], true, "{joined}");
    js.ok("waitForMembership", json!({ "name": "alice", "roomId": room_id, "userId": bob_id, "membership": "join" }))
        .await;

    let sent = js.ok("sendText", json!({ "name": "alice", "roomId": room_id, "body": "hello bob, from js" })).await;
    assert_eq!(sent["encrypted"], true, "{sent}");
    let got = js.ok("waitForMessage", json!({ "name": "bob", "roomId": room_id, "body": "hello bob, from js" })).await;
    assert_eq!((got["encrypted"].as_bool(), got["sender"].as_str()), (Some(true), Some(alice_id.as_str())), "{got}");
    js.ok("sendText", json!({ "name": "bob", "roomId": room_id, "body": "hi alice, from js" })).await;
    let got = js.ok("waitForMessage", json!({ "name": "alice", "roomId": room_id, "body": "hi alice, from js" })).await;
    assert_eq!(got["encrypted"], true, "{got}");

    // The server holds the ciphertext.
    let token = server.login("bob", "bob pw 1").await.1["access_token"].as_str().unwrap().to_owned();
    let (_, raw) =
        server.get(&format!("/_matrix/client/v3/rooms/{room_id}/event/{}", s(&sent, "eventId")), Some(&token)).await;
    assert_eq!(raw["type"], "m.room.encrypted", "{raw}");

    // Bob's second device; alice's client learns of it and encrypts to it.
    let bob2 = js.ok("login", json!({ "name": "bob2", "user": "bob", "password": "bob pw 1" })).await;
    js.ok("deviceIds", json!({ "name": "alice", "userId": bob_id, "includes": [s(&bob2, "deviceId")] })).await;
    js.ok("sendText", json!({ "name": "alice", "roomId": room_id, "body": "for both of bob's devices" })).await;
    let got = js
        .ok("waitForMessage", json!({ "name": "bob2", "roomId": room_id, "body": "for both of bob's devices" }))
        .await;
    assert_eq!(got["encrypted"], true, "{got}");

    // Alice adds a device, bob's client tracks it; alice deletes it and bob's client drops it.
    let alice2 = js.ok("login", json!({ "name": "alice2", "user": "alice", "password": "alice pw 1" })).await;
    let alice2_device = s(&alice2, "deviceId");
    js.ok("deviceIds", json!({ "name": "bob", "userId": alice_id, "includes": [alice2_device] })).await;
    js.ok("stop", json!({ "name": "alice2" })).await;
    let (_, login) = server.login("alice", "alice pw 1").await;
    let admin_token = login["access_token"].as_str().unwrap().to_owned();
    let path = "/_matrix/client/v3/delete_devices";
    let (status, uia) = server.post(path, Some(&admin_token), json!({ "devices": [alice2_device] })).await;
    assert_eq!(status, 401, "{uia}");
    let auth = password_auth(&alice_id, "alice pw 1", uia["session"].as_str());
    let (status, body) =
        server.post(path, Some(&admin_token), json!({ "devices": [alice2_device], "auth": auth })).await;
    assert_eq!(status, 200, "{body}");
    js.ok("deviceIds", json!({ "name": "bob", "userId": alice_id, "excludes": [alice2_device] })).await;
    js.ok("sendText", json!({ "name": "bob", "roomId": room_id, "body": "after alice's deletion" })).await;
    let got =
        js.ok("waitForMessage", json!({ "name": "alice", "roomId": room_id, "body": "after alice's deletion" })).await;
    assert_eq!(got["encrypted"], true, "{got}");

    // Cross-signing and key backup.
    let cs = js.ok("bootstrapCrossSigning", json!({ "name": "alice" })).await;
    assert_eq!((cs["ready"].as_bool(), cs["uia"].as_bool()), (Some(true), Some(false)), "{cs}");
    let backup = js.ok("createKeyBackup", json!({ "name": "alice" })).await;
    assert!(backup["version"].is_string(), "{backup}");
    let (status, info) = server
        .get(
            "/_matrix/client/v3/room_keys/version",
            Some(server.login("alice", "alice pw 1").await.1["access_token"].as_str().unwrap()),
        )
        .await;
    assert_eq!((status, info["version"].clone()), (200, backup["version"].clone()), "{info}");
    js.ok("exit", json!({})).await;
}

/// Alice on matrix-js-sdk, Bob on matrix-rust-sdk, in rooms each of them
/// creates: messages decrypt in both directions.
#[tokio::test]
async fn matrix_js_sdk_and_matrix_rust_sdk_chat_both_ways() {
    let server = Server::start().await;
    let mut js = JsDriver::start(&server).await;
    let alice = js.ok("register", json!({ "name": "alice", "user": "alice", "password": "alice pw 1" })).await;
    let alice_id = s(&alice, "userId");
    server.register("bob", "bob pw 1").await;
    let bob = sdk_login(&server, "bob", "bob pw 1").await;
    let bob_id = bob.user_id().unwrap().to_string();

    // Alice (js) creates the room and invites bob (Rust).
    let room = js.ok("createRoom", json!({ "name": "alice", "encrypted": true, "invite": [bob_id] })).await;
    let room_id: OwnedRoomId = s(&room, "roomId").try_into().unwrap();
    sync(&bob).await;
    bob.get_room(&room_id).expect("invited").join().await.expect("join");
    js.ok("waitForMembership", json!({ "name": "alice", "roomId": room_id, "userId": bob_id, "membership": "join" }))
        .await;
    let sent = js.ok("sendText", json!({ "name": "alice", "roomId": room_id, "body": "js to rust" })).await;
    let event_id: OwnedEventId = s(&sent, "eventId").try_into().unwrap();
    assert_eq!(decrypted_body(&bob, &room_id, &event_id).await, "js to rust");
    let bob_room = bob.get_room(&room_id).unwrap();
    send(&bob_room, "rust to js").await;
    let got = js.ok("waitForMessage", json!({ "name": "alice", "roomId": room_id, "body": "rust to js" })).await;
    assert_eq!((got["encrypted"].as_bool(), got["sender"].as_str()), (Some(true), Some(bob_id.as_str())), "{got}");

    // Bob (Rust) creates the second room and invites alice (js).
    let mut request = create_room::v3::Request::new();
    request.invite = vec![alice_id.as_str().try_into().unwrap()];
    let room2 = bob.create_room(request).await.expect("create room");
    room2.enable_encryption().await.expect("encrypt");
    let room2_id = room2.room_id().to_string();
    js.ok("waitForInvite", json!({ "name": "alice", "roomId": room2_id })).await;
    let joined = js.ok("join", json!({ "name": "alice", "roomId": room2_id })).await;
    assert_eq!(joined["encrypted"], true, "{joined}");
    sync(&bob).await;
    send(&room2, "rust to js, rust's room").await;
    let got = js
        .ok("waitForMessage", json!({ "name": "alice", "roomId": room2_id, "body": "rust to js, rust's room" }))
        .await;
    assert_eq!(got["encrypted"], true, "{got}");
    let sent =
        js.ok("sendText", json!({ "name": "alice", "roomId": room2_id, "body": "js to rust, rust's room" })).await;
    let event_id: OwnedEventId = s(&sent, "eventId").try_into().unwrap();
    assert_eq!(decrypted_body(&bob, room2.room_id(), &event_id).await, "js to rust, rust's room");
    js.ok("exit", json!({})).await;
}
