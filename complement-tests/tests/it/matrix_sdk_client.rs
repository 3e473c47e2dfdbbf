//! The real matrix-rust-sdk (the engine of Element X) against the real binary.

use complement_tests::Server;
use matrix_sdk::{
    Client,
    ruma::api::client::{account::register, uiaa},
};

async fn sdk_client(s: &Server) -> Client {
    Client::builder()
        .homeserver_url(&s.url)
        .add_root_certificates(vec![s.certificate()])
        .build()
        .await
        .expect("matrix-sdk client")
}

#[tokio::test]
async fn matrix_sdk_registers_logs_in_reads_whoami_lists_devices_and_logs_out() {
    let s = Server::start().await;

    // Registration with user-interactive auth, the way an app drives it.
    let client = sdk_client(&s).await;
    let mut request = register::v3::Request::new();
    request.username = Some("sdkuser".to_owned());
    request.password = Some("sdk password 1".to_owned());
    request.initial_device_display_name = Some("matrix-sdk test".to_owned());
    let err = client.matrix_auth().register(request.clone()).await.expect_err("first call needs UIA");
    let info = err.as_uiaa_response().expect("a UIA response");
    assert!(info.flows.iter().any(|f| f.stages == vec![uiaa::AuthType::Dummy]));
    let mut dummy = uiaa::Dummy::new();
    dummy.session = info.session.clone();
    request.auth = Some(uiaa::AuthData::Dummy(dummy));
    let registered = client.matrix_auth().register(request).await.expect("registration completes");
    assert_eq!(registered.user_id.as_str(), "@sdkuser:localhost");

    // A fresh client logs in with the password.
    let client = sdk_client(&s).await;
    let login = client
        .matrix_auth()
        .login_username("sdkuser", "sdk password 1")
        .initial_device_display_name("second device")
        .send()
        .await
        .expect("login");
    assert_eq!(client.user_id().map(|u| u.as_str()), Some("@sdkuser:localhost"));

    let whoami = client.whoami().await.expect("whoami");
    assert_eq!(whoami.user_id.as_str(), "@sdkuser:localhost");
    assert_eq!(whoami.device_id.as_deref(), Some(login.device_id.as_ref()));

    let devices = client.devices().await.expect("devices").devices;
    assert_eq!(devices.len(), 2, "the registration device and this one");
    let me = devices.iter().find(|d| d.device_id == login.device_id).expect("own device listed");
    assert_eq!(me.display_name.as_deref(), Some("second device"));

    client.matrix_auth().logout().await.expect("logout");
    // The token is gone server-side.
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&login.access_token)).await;
    assert_eq!(status, 401);

    // Wrong password through the SDK surfaces the Matrix error.
    let client = sdk_client(&s).await;
    let err = client.matrix_auth().login_username("sdkuser", "not it").send().await.expect_err("wrong password");
    assert!(err.to_string().contains("M_FORBIDDEN") || format!("{err:?}").contains("Forbidden"), "{err:?}");
}

/// Two matrix-sdk users chat in a room: invite, join, messages, pagination
/// back through 200 messages, typing, receipts and a redaction; a third user
/// is refused.
#[tokio::test]
async fn matrix_sdk_users_chat_in_a_room() {
    use matrix_sdk::{
        config::SyncSettings,
        room::MessagesOptions,
        ruma::{
            api::client::{receipt::create_receipt::v3::ReceiptType, room::create_room},
            events::{receipt::ReceiptThread, room::message::RoomMessageEventContent},
            uint,
        },
    };

    let s = Server::start().await;
    let login = |name: &'static str| {
        let s = &s;
        async move {
            s.register(name, "sdk password 1").await;
            let client = sdk_client(s).await;
            client.matrix_auth().login_username(name, "sdk password 1").send().await.expect("login");
            client
        }
    };
    let alice = login("alice").await;
    let bob = login("bob").await;
    let eve = login("eve").await;
    let bob_id = bob.user_id().unwrap().to_owned();

    let mut request = create_room::v3::Request::new();
    request.name = Some("SDK room".to_owned());
    let room = alice.create_room(request).await.expect("create room");
    room.invite_user_by_id(&bob_id).await.expect("invite");

    bob.sync_once(SyncSettings::default()).await.expect("bob syncs");
    let invited = bob.get_room(room.room_id()).expect("bob sees the invite");
    invited.join().await.expect("bob joins");

    for i in 0..200 {
        room.send(RoomMessageEventContent::text_plain(format!("message {i}"))).await.expect("send");
    }
    let sent = room.send(RoomMessageEventContent::text_plain("last words")).await.expect("send").response.event_id;

    // Bob sees the messages arrive through /sync and pages back through all of them.
    let sync = bob.sync_once(SyncSettings::default()).await.expect("sync");
    let update = sync.rooms.joined.get(room.room_id()).expect("room in bob's sync");
    assert!(!update.timeline.events.is_empty());
    let bob_room = bob.get_room(room.room_id()).expect("joined room");
    let mut bodies = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut options = MessagesOptions::backward().from(from.as_deref());
        options.limit = uint!(50);
        let page = bob_room.messages(options).await.expect("messages");
        for ev in &page.chunk {
            let value: serde_json::Value = serde_json::from_str(ev.raw().json().get()).unwrap();
            if value["type"] == "m.room.message" {
                bodies.push(value["content"]["body"].as_str().unwrap().to_owned());
            }
        }
        match page.end {
            Some(end) => from = Some(end),
            None => break,
        }
    }
    bodies.reverse();
    assert_eq!(bodies.len(), 201);
    assert_eq!(bodies[0], "message 0");
    assert_eq!(bodies[199], "message 199");
    assert_eq!(bodies[200], "last words");

    // Typing and a read receipt reach alice.
    let since = alice.sync_once(SyncSettings::default()).await.expect("sync").next_batch;
    bob_room.typing_notice(true).await.expect("typing");
    bob_room.send_single_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, sent.clone()).await.expect("receipt");
    let update = alice.sync_once(SyncSettings::default().token(since)).await.expect("sync");
    let ephemeral = &update.rooms.joined.get(room.room_id()).expect("room in alice's sync").ephemeral;
    let kinds: Vec<String> = ephemeral.iter().filter_map(|e| e.get_field::<String>("type").ok().flatten()).collect();
    assert!(kinds.contains(&"m.typing".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"m.receipt".to_owned()), "{kinds:?}");

    // Alice redacts her last message; bob reads the redacted form.
    room.redact(&sent, Some("typo"), None).await.expect("redact");
    let event = bob_room.event(&sent, None).await.expect("event");
    let value: serde_json::Value = serde_json::from_str(event.raw().json().get()).unwrap();
    assert_eq!(value["content"], serde_json::json!({}), "{value}");

    // Eve was never invited: she cannot join or read.
    assert!(eve.join_room_by_id(room.room_id()).await.is_err(), "an uninvited user cannot join a private room");
    let (status, _) = s
        .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b", room.room_id()), Some(&eve.access_token().unwrap()))
        .await;
    assert_eq!(status, 403);
}
