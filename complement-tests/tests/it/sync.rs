//! `/sync` against the real binary.

use complement_tests::{Account, Server};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

async fn create(s: &Server, who: &Account, body: Value) -> String {
    s.create_room(who, body).await
}

async fn send(s: &Server, who: &Account, room: &str, txn: &str, body: &str) {
    let (status, resp) = s.send_text(who, room, txn, body).await;
    assert_eq!(status, 200, "{resp}");
}

async fn sync(s: &Server, who: &Account, query: &str) -> Value {
    let (status, body) = s.get(&format!("{V3}/sync?{query}"), Some(&who.access_token)).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn timeline_bodies(room: &Value) -> Vec<String> {
    room["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

fn encode(v: &Value) -> String {
    v.to_string()
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Complement: TestRoomsInvite/Invited user can see room metadata
#[tokio::test]
async fn test_rooms_invite_invited_user_sees_metadata_then_history_after_joining() {
    let s = Server::start().await;
    let a = s.register("anna", "correct horse").await;
    let b = s.register("ben", "correct horse").await;
    let room = create(&s, &a, json!({ "name": "Plans", "invite": [b.user_id] })).await;
    send(&s, &a, &room, "1", "first").await;

    let first = sync(&s, &b, "").await;
    let invite = &first["rooms"]["invite"][&room];
    let stripped = invite["invite_state"]["events"].as_array().expect("invite_state");
    assert!(stripped.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Plans"), "{invite}");
    assert!(stripped.iter().any(|e| e["type"] == "m.room.member"
        && e["state_key"] == b.user_id.as_str()
        && e["content"]["membership"] == "invite"));
    assert!(first["rooms"]["join"].get(&room).is_none());

    assert_eq!(s.post(&format!("{V3}/rooms/{room}/join"), Some(&b.access_token), json!({})).await.0, 200);
    let initial = sync(&s, &b, &format!("filter={}", encode(&json!({ "room": { "timeline": { "limit": 3 } } })))).await;
    let joined = &initial["rooms"]["join"][&room];
    assert_eq!(timeline_bodies(joined), vec!["first"], "shared history is visible after joining");
    assert_eq!(joined["timeline"]["limited"], true);
    let state = joined["state"]["events"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.create"), "{joined}");
    assert_eq!(joined["summary"]["m.joined_member_count"], 2);
    assert_eq!(joined["summary"]["m.heroes"], json!([a.user_id]));
    assert!(joined["timeline"]["prev_batch"].is_string());
    assert!(initial["next_batch"].is_string());
}

#[tokio::test]
async fn long_polling_sync_wakes_when_a_message_arrives() {
    let s = Server::start().await;
    let a = s.register("writer", "correct horse").await;
    let b = s.register("reader", "correct horse").await;
    let room = create(&s, &a, json!({ "preset": "public_chat" })).await;
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/join"), Some(&b.access_token), json!({})).await.0, 200);
    let since = sync(&s, &b, "").await["next_batch"].as_str().unwrap().to_owned();

    // Nothing new: a zero timeout answers at once with the same position.
    let idle = sync(&s, &b, &format!("since={since}&timeout=0")).await;
    assert_eq!(idle["next_batch"], since.as_str());
    assert!(idle["rooms"]["join"].get(&room).is_none());

    // A long poll returns with the message, not at its (long) timeout.
    let waiting = {
        let url = format!("{}{V3}/sync?since={since}&timeout=60000", s.url);
        let client = s.http.clone();
        let token = b.access_token.clone();
        tokio::spawn(
            async move { client.get(url).bearer_auth(token).send().await.unwrap().json::<Value>().await.unwrap() },
        )
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    send(&s, &a, &room, "wake", "wake up").await;
    let woke = waiting.await.unwrap();
    assert_eq!(timeline_bodies(&woke["rooms"]["join"][&room]), vec!["wake up"], "{woke}");
    assert_ne!(woke["next_batch"], since.as_str());
}

#[tokio::test]
async fn limited_timeline_and_lazy_loaded_members() {
    let s = Server::start().await;
    let a = s.register("chatty", "correct horse").await;
    let b = s.register("quiet", "correct horse").await;
    let c = s.register("lurker", "correct horse").await;
    let room = create(&s, &a, json!({ "preset": "public_chat" })).await;
    for u in [&b, &c] {
        assert_eq!(s.post(&format!("{V3}/rooms/{room}/join"), Some(&u.access_token), json!({})).await.0, 200);
    }
    let since = sync(&s, &b, "").await["next_batch"].as_str().unwrap().to_owned();
    for i in 0..15 {
        send(&s, &a, &room, &format!("m{i}"), &format!("m{i}")).await;
    }
    let filter = json!({ "room": { "timeline": { "limit": 5 }, "state": { "lazy_load_members": true } } });
    let resp = sync(&s, &b, &format!("since={since}&filter={}", encode(&filter))).await;
    let joined = &resp["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true);
    assert_eq!(timeline_bodies(joined), vec!["m10", "m11", "m12", "m13", "m14"]);
    // The gap can be filled with /messages from prev_batch.
    let prev = joined["timeline"]["prev_batch"].as_str().unwrap();
    let (_, page) =
        s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=3&from={prev}"), Some(&b.access_token)).await;
    let older: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap_or("")).collect();
    assert_eq!(older, vec!["m9", "m8", "m7"]);

    // /sync's next_batch is a valid /messages token: paging back from it starts at the newest event.
    let next = resp["next_batch"].as_str().unwrap();
    let (_, newest) =
        s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=1&from={next}"), Some(&b.access_token)).await;
    assert_eq!(newest["chunk"][0]["content"]["body"], "m14", "{newest}");
    let (_, after) = s.get(&format!("{V3}/rooms/{room}/messages?dir=f&from={next}"), Some(&b.access_token)).await;
    assert_eq!(after["chunk"], json!([]), "nothing after the sync position: {after}");

    // An initial sync with lazy loading carries only the members that matter.
    let initial = sync(&s, &b, &format!("filter={}", encode(&filter))).await;
    let state = initial["rooms"]["join"][&room]["state"]["events"].as_array().unwrap();
    let members: Vec<&str> =
        state.iter().filter(|e| e["type"] == "m.room.member").map(|e| e["state_key"].as_str().unwrap()).collect();
    assert!(!members.contains(&c.user_id.as_str()), "the lurker sent nothing: {members:?}");
    assert!(members.contains(&b.user_id.as_str()), "{members:?}");
}

/// Complement: TestSyncFilter
#[tokio::test]
async fn test_sync_filter_can_be_saved_and_used() {
    let s = Server::start().await;
    let a = s.register("filterer", "correct horse").await;
    let other = s.register("nosy", "correct horse").await;
    let filter = json!({ "room": { "timeline": { "limit": 2 } } });
    let (status, created) =
        s.post(&format!("{V3}/user/{}/filter", a.user_id), Some(&a.access_token), filter.clone()).await;
    assert_eq!(status, 200, "{created}");
    let id = created["filter_id"].as_str().unwrap();
    let (status, got) = s.get(&format!("{V3}/user/{}/filter/{id}", a.user_id), Some(&a.access_token)).await;
    assert_eq!(status, 200);
    assert_eq!(got["room"]["timeline"]["limit"], 2);
    assert_eq!(s.get(&format!("{V3}/user/{}/filter/{id}", a.user_id), Some(&other.access_token)).await.0, 403);
    assert_eq!(s.get(&format!("{V3}/user/{}/filter/nope", a.user_id), Some(&a.access_token)).await.0, 404);

    let room = create(&s, &a, json!({})).await;
    for i in 0..4 {
        send(&s, &a, &room, &format!("f{i}"), &format!("f{i}")).await;
    }
    let resp = sync(&s, &a, &format!("filter={id}")).await;
    assert_eq!(resp["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap().len(), 2);
    let (status, body) = s.get(&format!("{V3}/sync?filter=unknownid"), Some(&a.access_token)).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (status, body) = s.get(&format!("{V3}/sync?since=garbage"), Some(&a.access_token)).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
}

/// Complement: TestSyncLeaveSection/Newly left rooms appear in the leave section of incremental sync
#[tokio::test]
async fn test_sync_leave_section_shows_left_room_and_tokens_survive_restarts() {
    let mut s = Server::start().await;
    let a = s.register("stayer", "correct horse").await;
    let b = s.register("goer", "correct horse").await;
    let room = create(&s, &a, json!({ "preset": "public_chat" })).await;
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/join"), Some(&b.access_token), json!({})).await.0, 200);
    let since = sync(&s, &b, "").await["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/leave"), Some(&b.access_token), json!({})).await.0, 200);
    let resp = sync(&s, &b, &format!("since={since}")).await;
    assert!(resp["rooms"]["leave"].get(&room).is_some(), "{resp}");
    assert!(resp["rooms"]["join"].get(&room).is_none());
    // The user's own leave event is in that timeline, whatever the history visibility.
    let events = resp["rooms"]["leave"][&room]["timeline"]["events"].as_array().unwrap();
    let last = events.last().expect("the leave event");
    assert_eq!((last["type"].as_str(), last["content"]["membership"].as_str()), (Some("m.room.member"), Some("leave")));
    assert_eq!(last["state_key"].as_str(), Some(b.user_id.as_str()));
    let token = resp["next_batch"].as_str().unwrap().to_owned();

    s.kill_and_restart().await;
    send(&s, &a, &room, "after", "after restart").await;
    let resp = sync(&s, &a, &format!("since={token}&timeout=0")).await;
    assert_eq!(timeline_bodies(&resp["rooms"]["join"][&room]), vec!["after restart"], "{resp}");
}

#[tokio::test]
async fn state_after_is_served_when_asked() {
    let s = Server::start().await;
    let a = s.register("modern", "correct horse").await;
    let room = create(&s, &a, json!({ "name": "N" })).await;
    let resp = sync(&s, &a, "use_state_after=true").await;
    let joined = &resp["rooms"]["join"][&room];
    assert!(joined.get("state_after").is_some(), "{joined}");
    assert!(joined.get("state").is_none(), "{joined}");
    let events = joined["state_after"]["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["type"] == "m.room.name"));
    // The unstable parameter (matrix-js-sdk) gets `state`: such clients read the
    // answer under an unstable key, and fall back to `state` without it.
    // (A one-event timeline, so the room's state comes in `state`.)
    let limit_one = "filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A1%7D%7D%7D";
    let resp = sync(&s, &a, &format!("org.matrix.msc4222.use_state_after=true&{limit_one}")).await;
    let joined = &resp["rooms"]["join"][&room];
    assert!(joined.get("state_after").is_none(), "{joined}");
    let state = joined["state"]["events"].as_array().expect("state");
    assert!(state.iter().any(|e| e["type"] == "m.room.power_levels"), "{joined}");
}
