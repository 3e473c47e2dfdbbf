//! Hearth's own client SDK against the running homeserver and against the
//! clients it must interoperate with: matrix-rust-sdk and matrix-js-sdk
//! (with their own crypto), in both directions, including a device of the
//! other side that appears late. And the `chat` binary, driven as a user
//! would drive it.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use complement_tests::{Server, chat_binary, echo_bot_binary, js::JsDriver};
use hearth_client_sdk::ruma::{OwnedRoomId, RoomId};
use hearth_client_sdk::{Client, Encryption, NewRoom, Registration, RoomEvent, Store, TlsTrust, pem_fingerprint};
use matrix_sdk::ruma::api::client::room::create_room;
use serde_json::json;
use tempfile::TempDir;

use crate::e2ee_sdk::{decrypted_body, files, found_in, sdk_login, send, sync};

/// A Hearth client whose store is in `dir`, trusting the test server's
/// self-signed certificate through a CA file.
fn hearth_client(s: &Server, dir: &Path) -> Client {
    std::fs::create_dir_all(dir).expect("client directory");
    let ca = dir.join("server.pem");
    std::fs::write(&ca, s.certificate_pem()).expect("write CA file");
    let store = Store::open(&dir.join("store"), "store passphrase").expect("store");
    Client::new(&s.url, &TlsTrust::CaFile(ca), store).expect("client")
}

async fn hearth_register(s: &Server, dir: &Path, user: &str) -> Client {
    let client = hearth_client(s, dir);
    let registration = Registration {
        username: user.to_owned(),
        password: format!("{user} pw 1"),
        display_name: Some(format!("{user} (hearth)")),
        email: Some(format!("{user}@example.org")),
        ..Registration::default()
    };
    client.register(&registration).await.expect("register");
    client
}

/// Syncs our client until `body` arrives in `room`; returns the event.
async fn hearth_wait_for(client: &Client, room: &RoomId, body: &str) -> RoomEvent {
    let mut seen = Vec::new();
    for _ in 0..60 {
        let batch = client.sync_once(Duration::from_millis(500)).await.expect("sync");
        for event in batch.events {
            if event.room_id == room && event.text() == Some(body) {
                return event;
            }
            seen.push(format!("{}: {:?} {:?}", event.event_type, event.text(), event.encryption));
        }
    }
    panic!("{body:?} never arrived in {room}; saw {seen:#?}");
}

/// Syncs our client until it is invited to `room`, then joins.
async fn hearth_accept_invite(client: &Client, room: &RoomId) {
    for _ in 0..60 {
        let batch = client.sync_once(Duration::from_millis(500)).await.expect("sync");
        if batch.invites.iter().any(|invite| invite.room_id == room) {
            client.join(room.as_str()).await.expect("join");
            return;
        }
    }
    panic!("no invite to {room}");
}

fn assert_decrypted(event: &RoomEvent) {
    assert!(matches!(event.encryption, Encryption::Decrypted { .. }), "not decrypted: {event:?}");
}

/// The same ID in matrix-sdk's ruma version (it may differ from ours).
fn sdk_id<T: for<'a> TryFrom<&'a str>>(id: &impl AsRef<str>) -> T {
    T::try_from(id.as_ref()).unwrap_or_else(|_| panic!("bad ID {}", id.as_ref()))
}

/// Our client and matrix-rust-sdk chat both ways in an encrypted room that
/// each side created, and each side's late second device reads what is sent
/// after it appeared.
#[tokio::test]
async fn hearth_client_and_matrix_sdk_chat_both_ways_with_late_devices() {
    use matrix_sdk::ruma::{OwnedEventId as SdkEventId, OwnedRoomId as SdkRoomId, OwnedUserId as SdkUserId};

    let s = Server::start().await;
    let dirs = [TempDir::new().unwrap(), TempDir::new().unwrap()];
    let alice = hearth_register(&s, dirs[0].path(), "alice").await;
    s.register("bob", "bob pw 1").await;
    let bob = sdk_login(&s, "bob", "bob pw 1").await;
    let bob_id = bob.user_id().unwrap().to_string();
    let alice_id = alice.user_id().unwrap();
    assert_eq!(alice.display_name(&alice_id).await.unwrap().as_deref(), Some("alice (hearth)"));

    // Our client creates the room.
    let room = alice
        .create_room(NewRoom { name: Some("ours".into()), encrypted: true, invite: vec![sdk_id(&bob_id)] })
        .await
        .unwrap();
    let sdk_room: SdkRoomId = sdk_id(&room);
    sync(&bob).await;
    bob.join_room_by_id(&sdk_room).await.expect("bob joins");
    let event_id = alice.send_text(&room, "hello from hearth").await.unwrap();
    assert_eq!(decrypted_body(&bob, &sdk_room, &sdk_id::<SdkEventId>(&event_id)).await, "hello from hearth");
    sync(&bob).await;
    send(&bob.get_room(&sdk_room).unwrap(), "hello from matrix-sdk").await;
    assert_decrypted(&hearth_wait_for(&alice, &room, "hello from matrix-sdk").await);

    // matrix-sdk's late second device.
    let bob2 = sdk_login(&s, "bob", "bob pw 1").await;
    alice.sync_once(Duration::ZERO).await.unwrap();
    let event_id = alice.send_text(&room, "for bob's new device").await.unwrap();
    assert_eq!(decrypted_body(&bob2, &sdk_room, &sdk_id::<SdkEventId>(&event_id)).await, "for bob's new device");

    // matrix-sdk creates the room.
    let mut request = create_room::v3::Request::new();
    request.invite = vec![sdk_id::<SdkUserId>(&alice_id)];
    request.initial_state = vec![
        matrix_sdk::ruma::events::InitialStateEvent::with_empty_state_key(
            matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let sdk_theirs = bob.create_room(request).await.expect("create room").room_id().to_owned();
    let theirs: OwnedRoomId = sdk_id(&sdk_theirs);
    hearth_accept_invite(&alice, &theirs).await;
    sync(&bob).await;
    send(&bob.get_room(&sdk_theirs).unwrap(), "welcome to my room").await;
    let got = hearth_wait_for(&alice, &theirs, "welcome to my room").await;
    assert_decrypted(&got);
    assert_eq!(got.sender.as_str(), bob_id);
    let event_id = alice.send_text(&theirs, "thanks, from hearth").await.unwrap();
    assert_eq!(decrypted_body(&bob, &sdk_theirs, &sdk_id::<SdkEventId>(&event_id)).await, "thanks, from hearth");

    // Our late second device (another store, a new login).
    let alice2 = hearth_client(&s, dirs[1].path());
    alice2.login("alice", "alice pw 1").await.unwrap();
    alice2.sync_once(Duration::ZERO).await.unwrap();
    sync(&bob).await;
    send(&bob.get_room(&sdk_theirs).unwrap(), "for alice's new device").await;
    assert_decrypted(&hearth_wait_for(&alice2, &theirs, "for alice's new device").await);
    // ... which sends too, and both bob and the first device read it.
    let event_id = alice2.send_text(&theirs, "from alice's second device").await.unwrap();
    assert_eq!(decrypted_body(&bob, &sdk_theirs, &sdk_id::<SdkEventId>(&event_id)).await, "from alice's second device");
    assert_decrypted(&hearth_wait_for(&alice, &theirs, "from alice's second device").await);

    // History is decrypted with the keys the device holds.
    let page = alice.messages(&theirs, None, 20).await.unwrap();
    let texts: Vec<_> = page.events.iter().filter_map(RoomEvent::text).collect();
    assert!(texts.contains(&"welcome to my room") && texts.contains(&"from alice's second device"), "{texts:?}");
}

/// Our client and matrix-js-sdk (Rust crypto in WebAssembly) chat both ways
/// in encrypted rooms created by each side.
#[tokio::test]
async fn hearth_client_and_matrix_js_sdk_chat_both_ways() {
    let s = Server::start().await;
    let dir = TempDir::new().unwrap();
    let alice = hearth_register(&s, dir.path(), "alice").await;
    let alice_id = alice.user_id().unwrap();
    let mut js = JsDriver::start(&s).await;
    let bob = js.ok("register", json!({ "name": "bob", "user": "bob", "password": "bob pw 1" })).await;
    let bob_id = bob["userId"].as_str().unwrap().to_owned();

    // Our client creates the room.
    let room = alice
        .create_room(NewRoom { name: None, encrypted: true, invite: vec![bob_id.as_str().try_into().unwrap()] })
        .await
        .unwrap();
    js.ok("waitForInvite", json!({ "name": "bob", "roomId": room })).await;
    let joined = js.ok("join", json!({ "name": "bob", "roomId": room })).await;
    assert_eq!(joined["encrypted"], true, "{joined}");
    alice.sync_once(Duration::ZERO).await.unwrap();
    alice.send_text(&room, "hello js, from hearth").await.unwrap();
    let got = js.ok("waitForMessage", json!({ "name": "bob", "roomId": room, "body": "hello js, from hearth" })).await;
    assert_eq!((got["encrypted"].as_bool(), got["sender"].as_str()), (Some(true), Some(alice_id.as_str())), "{got}");
    js.ok("sendText", json!({ "name": "bob", "roomId": room, "body": "hello hearth, from js" })).await;
    assert_decrypted(&hearth_wait_for(&alice, &room, "hello hearth, from js").await);

    // matrix-js-sdk creates the room.
    let theirs = js.ok("createRoom", json!({ "name": "bob", "encrypted": true, "invite": [alice_id] })).await;
    let theirs: OwnedRoomId = theirs["roomId"].as_str().unwrap().try_into().unwrap();
    hearth_accept_invite(&alice, &theirs).await;
    js.ok("waitForMembership", json!({ "name": "bob", "roomId": theirs, "userId": alice_id, "membership": "join" }))
        .await;
    js.ok("sendText", json!({ "name": "bob", "roomId": theirs, "body": "welcome, from js" })).await;
    let got = hearth_wait_for(&alice, &theirs, "welcome, from js").await;
    assert_decrypted(&got);
    assert_eq!(got.sender.as_str(), bob_id);
    alice.send_text(&theirs, "thanks, from hearth").await.unwrap();
    let got = js.ok("waitForMessage", json!({ "name": "bob", "roomId": theirs, "body": "thanks, from hearth" })).await;
    assert_eq!(got["encrypted"], true, "{got}");
    js.ok("exit", json!({})).await;
}

/// Runs `chat` with its directory and store passphrase, feeding `input`.
fn chat(dir: &Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(chat_binary())
        .args(args)
        .env("CHAT_DIR", dir)
        .env("CHAT_PASSPHRASE", "store passphrase")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chat");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().expect("chat output")
}

/// `chat` that must succeed; returns its standard output.
fn chat_ok(dir: &Path, args: &[&str], input: &str) -> String {
    let out = chat(dir, args, input);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "chat {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// `chat` that must fail; returns its error message.
fn chat_fails(dir: &Path, args: &[&str], input: &str) -> String {
    let out = chat(dir, args, input);
    assert!(!out.status.success(), "chat {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A user's session with `chat`: register (one user trusting the server by
/// CA file, the other by certificate fingerprint), create an encrypted room,
/// invite, join, send, listen; every command is a new process, so the
/// encrypted store carries the keys between them. Errors are clear and exit
/// non-zero. Neither the server nor the client stores hold the message or
/// a password in the clear.
#[tokio::test]
async fn chat_binary_register_create_invite_join_send_listen() {
    let s = Server::start().await;
    let home = TempDir::new().unwrap();
    let (a, b) = (home.path().join("alice"), home.path().join("bob"));
    let ca = home.path().join("server.pem");
    std::fs::write(&ca, s.certificate_pem()).unwrap();
    let fingerprint = pem_fingerprint(&s.certificate_pem()).unwrap();
    let ca = ca.to_str().unwrap();
    let secret_text = format!("the plan is at dawn {}", std::process::id());

    let out = chat_ok(
        &a,
        &["register", "--server", &s.url, "--ca-file", ca],
        "Alice Liddell\nalice@example.org\nalice\nalice-password-1\n",
    );
    assert!(out.contains("Registered @alice:") && out.contains("fingerprint"), "{out}");
    let alice_id = out.split_whitespace().nth(1).unwrap().to_owned();
    let out =
        chat_ok(&b, &["register", "--server", &s.url, "--fingerprint", &fingerprint], "Bob\n\nbob\nbob-password-1\n");
    assert!(out.contains("Registered @bob:"), "{out}");
    let bob_id = out.split_whitespace().nth(1).unwrap().to_owned();
    assert!(chat_ok(&a, &["whoami"], "").starts_with("@alice:"));

    let room = chat_ok(&a, &["create", "--name", "Plans", "--encrypted", "--invite", &bob_id], "");
    let room = room.trim();
    assert!(room.starts_with('!'), "{room}");
    let rooms = chat_ok(&b, &["rooms"], "");
    assert!(rooms.contains(room) && rooms.contains("invited") && rooms.contains("[encrypted]"), "{rooms}");
    assert!(chat_ok(&b, &["join", room], "").contains("Joined"));

    chat_ok(&a, &["send", "Plans", &secret_text], "");
    let heard = chat_ok(&b, &["listen", room, "--count", "1"], "");
    assert!(heard.contains(&format!("{alice_id} 🔒: {secret_text}")), "{heard}");
    chat_ok(&b, &["send", room, "see you there"], "");
    let history = chat_ok(&a, &["history", "Plans"], "");
    let (first, second) = (history.find(&secret_text), history.find("see you there"));
    assert!(first.is_some() && second.is_some() && first < second, "{history}");
    let devices = chat_ok(&a, &["devices"], "");
    assert!(devices.contains("(this device)"), "{devices}");

    // Clear errors, non-zero exits, nothing changed.
    let err = chat_fails(&home.path().join("c"), &["login", "--server", &s.url, "--ca-file", ca, "alice"], "wrong\n");
    assert!(err.contains("wrong username or password"), "{err}");
    let err = chat_fails(&a, &["send", "!unknown:localhost", "hello?"], "");
    assert!(err.contains("unknown room"), "{err}");
    let err = chat_fails(&a, &["send", "No such room", "hello?"], "");
    assert!(err.contains("unknown room"), "{err}");
    let err =
        chat_fails(&home.path().join("d"), &["login", "--server", "https://127.0.0.1:9", "--ca-file", ca, "x"], "pw\n");
    assert!(err.contains("cannot reach the server"), "{err}");
    let wrong_pin = format!("{}00", &fingerprint[..fingerprint.len() - 2]);
    let err =
        chat_fails(&home.path().join("e"), &["login", "--server", &s.url, "--fingerprint", &wrong_pin, "x"], "pw\n");
    assert!(err.contains("pinned fingerprint"), "{err}");
    let out = Command::new(chat_binary())
        .args(["rooms"])
        .env("CHAT_DIR", &a)
        .env("CHAT_PASSPHRASE", "not the passphrase")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("wrong store passphrase"));
    let err = chat_fails(&home.path().join("nobody"), &["rooms"], "");
    assert!(err.contains("no account"), "{err}");

    // Blind server, sealed client stores.
    let server_files = files(&s.data_dir());
    assert_eq!(found_in(&server_files, secret_text.as_bytes()), None, "plaintext on the server");
    assert_eq!(found_in(&server_files, b"alice-password-1"), None, "password on the server");
    let client_files = files(&a);
    assert!(client_files.iter().any(|(p, _)| p.ends_with("config.toml")), "no config.toml");
    for needle in [secret_text.as_str(), "alice-password-1", "access_token", "signing_key", &alice_id] {
        assert_eq!(found_in(&client_files, needle.as_bytes()), None, "{needle} in alice's chat directory");
    }

    // Logging out deletes the device and the local session.
    assert!(chat_ok(&a, &["logout"], "").contains("Logged out"));
    let err = chat_fails(&a, &["rooms"], "");
    assert!(err.contains("not logged in"), "{err}");
}

/// The SDK's echo bot example accepts an invitation to an encrypted room
/// and answers each message, encrypted, and keeps its device across a
/// restart.
#[tokio::test]
async fn echo_bot_example_answers_in_an_encrypted_room() {
    use std::io::BufRead as _;

    let s = Server::start().await;
    let home = TempDir::new().unwrap();
    let ca = home.path().join("server.pem");
    std::fs::write(&ca, s.certificate_pem()).unwrap();
    s.register("echo", "echo pw 1").await;
    let alice = hearth_register(&s, &home.path().join("alice"), "alice").await;

    /// Kills the bot when the test ends, passed or not.
    struct Bot(std::process::Child);
    impl Drop for Bot {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let start_bot = || {
        let mut bot = Command::new(echo_bot_binary())
            .args([&s.url, "echo", "echo pw 1", home.path().join("bot").to_str().unwrap(), "--ca-file"])
            .arg(&ca)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the echo bot");
        let mut line = String::new();
        std::io::BufReader::new(bot.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("echoing as @echo:"), "{line}");
        (Bot(bot), line)
    };
    let (bot, first) = start_bot();

    let bot_id = first.split_whitespace().nth(2).unwrap().try_into().unwrap();
    let room = alice.create_room(NewRoom { name: None, encrypted: true, invite: vec![bot_id] }).await.unwrap();
    alice.send_text(&room, "ping").await.unwrap();
    let echo = hearth_wait_for(&alice, &room, "echo: ping").await;
    assert_decrypted(&echo);

    // Restarted, the bot carries on with the same device and keys.
    drop(bot);
    let (_bot, again) = start_bot();
    assert_eq!(first, again, "the bot logged in as a new device");
    alice.send_text(&room, "ping again").await.unwrap();
    assert_decrypted(&hearth_wait_for(&alice, &room, "echo: ping again").await);
}
