//! Account data, tags, receipts, read markers and typing, through /sync.

use complement_tests::{Account, Server};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

async fn sync(s: &Server, who: &Account, query: &str) -> Value {
    let (status, body) = s.get(&format!("{V3}/sync?{query}"), Some(&who.access_token)).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn shared_room(s: &Server, a: &Account, b: &Account) -> String {
    let (_, r) = s.post(&format!("{V3}/createRoom"), Some(&a.access_token), json!({ "preset": "public_chat" })).await;
    let room = r["room_id"].as_str().unwrap().to_owned();
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/join"), Some(&b.access_token), json!({})).await.0, 200);
    room
}

fn ephemeral<'a>(resp: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    resp["rooms"]["join"][room]["ephemeral"]["events"].as_array()?.iter().find(|e| e["type"] == kind)
}

/// Complement: TestAddAccountData/Can add global account data
#[tokio::test]
async fn test_add_account_data_global_round_trips_and_syncs() {
    let s = Server::start().await;
    let a = s.register("ada", "correct horse").await;
    let b = s.register("bea", "correct horse").await;
    let path = format!("{V3}/user/{}/account_data/org.example.settings", a.user_id);
    assert_eq!(s.get(&path, Some(&a.access_token)).await.0, 404);
    assert_eq!(s.put(&path, Some(&a.access_token), json!({ "theme": "dark" })).await.0, 200);
    assert_eq!(s.get(&path, Some(&a.access_token)).await.1, json!({ "theme": "dark" }));
    assert_eq!(s.get(&path, Some(&b.access_token)).await.0, 403);
    assert_eq!(s.put(&path, Some(&b.access_token), json!({})).await.0, 403);
    let (status, body) =
        s.put(&format!("{V3}/user/{}/account_data/m.push_rules", a.user_id), Some(&a.access_token), json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (405, Some("M_BAD_JSON")));

    let initial = sync(&s, &a, "").await;
    let events = initial["account_data"]["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["type"] == "org.example.settings" && e["content"]["theme"] == "dark"));
    let since = initial["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(s.put(&path, Some(&a.access_token), json!({ "theme": "light" })).await.0, 200);
    let next = sync(&s, &a, &format!("since={since}&timeout=10000")).await;
    assert_eq!(next["account_data"]["events"][0]["content"]["theme"], "light", "{next}");
}

/// Complement: TestAddAccountData/Can add room account data
#[tokio::test]
async fn test_add_account_data_room_tags_and_room_account_data() {
    let s = Server::start().await;
    let a = s.register("tagger", "correct horse").await;
    let b = s.register("other", "correct horse").await;
    let room = shared_room(&s, &a, &b).await;
    let tag = format!("{V3}/user/{}/rooms/{room}/tags/m.favourite", a.user_id);
    assert_eq!(s.put(&tag, Some(&a.access_token), json!({ "order": 0.5 })).await.0, 200);
    let (_, tags) = s.get(&format!("{V3}/user/{}/rooms/{room}/tags", a.user_id), Some(&a.access_token)).await;
    assert_eq!(tags["tags"]["m.favourite"]["order"], 0.5);
    let resp = sync(&s, &a, "").await;
    let data = resp["rooms"]["join"][&room]["account_data"]["events"].as_array().unwrap();
    assert!(data.iter().any(|e| e["type"] == "m.tag" && e["content"]["tags"]["m.favourite"].is_object()), "{resp}");
    assert_eq!(s.request("DELETE", &tag, Some(&a.access_token), None).await.0, 200);
    let (_, tags) = s.get(&format!("{V3}/user/{}/rooms/{room}/tags", a.user_id), Some(&a.access_token)).await;
    assert_eq!(tags["tags"], json!({}));

    let data = format!("{V3}/user/{}/rooms/{room}/account_data/org.example.draft", a.user_id);
    assert_eq!(s.put(&data, Some(&a.access_token), json!({ "text": "hi" })).await.0, 200);
    assert_eq!(s.get(&data, Some(&a.access_token)).await.1, json!({ "text": "hi" }));
    let unknown = format!("{V3}/user/{}/rooms/!nope:localhost/account_data/x", a.user_id);
    assert_eq!(s.put(&unknown, Some(&a.access_token), json!({})).await.0, 404);
}

/// Complement: TestRoomReceipts, TestRoomReadMarkers
#[tokio::test]
async fn test_room_receipts_and_read_markers() {
    let s = Server::start().await;
    let a = s.register("sender", "correct horse").await;
    let b = s.register("reader", "correct horse").await;
    let room = shared_room(&s, &a, &b).await;
    let (_, sent) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/r1"),
            Some(&a.access_token),
            json!({ "msgtype": "m.text", "body": "read me" }),
        )
        .await;
    let event = sent["event_id"].as_str().unwrap().to_owned();
    let since = sync(&s, &a, "").await["next_batch"].as_str().unwrap().to_owned();

    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{event}"), Some(&b.access_token), json!({})).await.0,
        200
    );
    let resp = sync(&s, &a, &format!("since={since}&timeout=10000")).await;
    let receipt = ephemeral(&resp, &room, "m.receipt").expect("a receipt in a's sync");
    assert!(receipt["content"][&event]["m.read"][&b.user_id]["ts"].is_u64(), "{receipt}");

    // Private receipts are only the reader's.
    let since = resp["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = s
        .post(
            &format!("{V3}/rooms/{room}/read_markers"),
            Some(&b.access_token),
            json!({ "m.fully_read": event, "m.read.private": event }),
        )
        .await;
    assert_eq!(status, 200);
    let theirs = sync(&s, &b, "").await;
    let mine = ephemeral(&theirs, &room, "m.receipt").unwrap();
    assert!(mine["content"][&event]["m.read.private"][&b.user_id].is_object(), "{mine}");
    let fully_read = theirs["rooms"]["join"][&room]["account_data"]["events"].as_array().unwrap();
    assert!(fully_read.iter().any(|e| e["type"] == "m.fully_read" && e["content"]["event_id"] == event.as_str()));
    let others = sync(&s, &a, &format!("since={since}")).await;
    if let Some(r) = ephemeral(&others, &room, "m.receipt") {
        assert!(r["content"][&event].get("m.read.private").is_none(), "{r}");
    }

    // Bad receipts.
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/receipt/m.read/$nope"), Some(&b.access_token), json!({})).await;
    assert_eq!(status, 404);
    let c = s.register("stranger", "correct horse").await;
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{event}"), Some(&c.access_token), json!({})).await;
    assert_eq!(status, 403);
}

/// Complement: TestTyping
#[tokio::test]
async fn test_typing_notifications_start_stop_and_expire() {
    let s = Server::start().await;
    let a = s.register("watcher", "correct horse").await;
    let b = s.register("typist", "correct horse").await;
    let room = shared_room(&s, &a, &b).await;
    let since = sync(&s, &a, "").await["next_batch"].as_str().unwrap().to_owned();
    let typing = format!("{V3}/rooms/{room}/typing/{}", b.user_id);
    assert_eq!(s.put(&typing, Some(&b.access_token), json!({ "typing": true, "timeout": 30000 })).await.0, 200);
    let resp = sync(&s, &a, &format!("since={since}&timeout=10000")).await;
    assert_eq!(ephemeral(&resp, &room, "m.typing").unwrap()["content"]["user_ids"], json!([b.user_id]));

    let since = resp["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(s.put(&typing, Some(&b.access_token), json!({ "typing": false })).await.0, 200);
    let resp = sync(&s, &a, &format!("since={since}&timeout=10000")).await;
    assert_eq!(ephemeral(&resp, &room, "m.typing").unwrap()["content"]["user_ids"], json!([]));

    // A short timeout expires by itself and wakes the long poll.
    let since = resp["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(s.put(&typing, Some(&b.access_token), json!({ "typing": true, "timeout": 300 })).await.0, 200);
    let started = sync(&s, &a, &format!("since={since}&timeout=10000")).await;
    assert_eq!(ephemeral(&started, &room, "m.typing").unwrap()["content"]["user_ids"], json!([b.user_id]));
    let since = started["next_batch"].as_str().unwrap().to_owned();
    let expired = sync(&s, &a, &format!("since={since}&timeout=30000")).await;
    assert_eq!(ephemeral(&expired, &room, "m.typing").unwrap()["content"]["user_ids"], json!([]), "{expired}");

    // Only for yourself, only in rooms you are in.
    assert_eq!(s.put(&typing, Some(&a.access_token), json!({ "typing": true, "timeout": 1000 })).await.0, 403);
    let c = s.register("outside", "correct horse").await;
    let theirs = format!("{V3}/rooms/{room}/typing/{}", c.user_id);
    assert_eq!(s.put(&theirs, Some(&c.access_token), json!({ "typing": true, "timeout": 1000 })).await.0, 403);
}
