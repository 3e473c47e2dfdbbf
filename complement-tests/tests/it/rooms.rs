//! Rooms, membership, state and messages against the real binary.

use std::collections::HashSet;

use complement_tests::{Account, Server};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

async fn create(s: &Server, who: &Account, body: Value) -> String {
    s.create_room(who, body).await
}

async fn send(s: &Server, who: &Account, room: &str, txn: &str, body: &str) -> (u16, Value) {
    s.send_text(who, room, txn, body).await
}

async fn messages(s: &Server, who: &Account, room: &str, query: &str) -> (u16, Value) {
    s.get(&format!("{V3}/rooms/{room}/messages?{query}"), Some(&who.access_token)).await
}

fn bodies(chunk: &Value) -> Vec<String> {
    chunk["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

/// Complement: TestRoomCreate
#[tokio::test]
async fn test_room_create_defaults_to_version_12_with_preset_state() {
    let s = Server::start().await;
    let a = s.register("alice", "correct horse").await;
    let room = create(&s, &a, json!({ "name": "Kitchen", "topic": "Recipes" })).await;
    assert!(room.starts_with('!') && !room.contains(':'), "a version 12 room ID is the create event's hash: {room}");

    let (status, state) = s.get(&format!("{V3}/rooms/{room}/state"), Some(&a.access_token)).await;
    assert_eq!(status, 200, "{state}");
    let find = |t: &str| state.as_array().unwrap().iter().find(|e| e["type"] == t).cloned().unwrap_or(Value::Null);
    assert_eq!(find("m.room.create")["content"]["room_version"], "12");
    assert!(find("m.room.create")["content"].get("creator").is_none());
    assert_eq!(find("m.room.member")["content"]["membership"], "join");
    assert_eq!(find("m.room.join_rules")["content"]["join_rule"], "invite");
    assert_eq!(find("m.room.history_visibility")["content"]["history_visibility"], "shared");
    assert_eq!(find("m.room.guest_access")["content"]["guest_access"], "can_join");
    assert_eq!(find("m.room.name")["content"]["name"], "Kitchen");
    assert_eq!(find("m.room.topic")["content"]["topic"], "Recipes");
    // Creators of version 12 rooms are privileged by the create event, not listed in power levels.
    assert!(find("m.room.power_levels")["content"]["users"].get(&a.user_id).is_none());

    let (_, joined) = s.get(&format!("{V3}/joined_rooms"), Some(&a.access_token)).await;
    assert_eq!(joined["joined_rooms"], json!([room]));
}

/// Complement: TestRoomCreate
#[tokio::test]
async fn test_room_create_older_room_versions_and_unsupported_ones() {
    let s = Server::start().await;
    let a = s.register("vera", "correct horse").await;
    for (version, has_creator) in [("10", true), ("11", false)] {
        let room = create(&s, &a, json!({ "room_version": version, "preset": "public_chat" })).await;
        assert!(room.ends_with(":localhost"), "{room}");
        let (_, create_ev) = s.get(&format!("{V3}/rooms/{room}/state/m.room.create"), Some(&a.access_token)).await;
        assert_eq!(create_ev["room_version"], version);
        assert_eq!(create_ev.get("creator").is_some(), has_creator, "{create_ev}");
        let (_, pl) = s.get(&format!("{V3}/rooms/{room}/state/m.room.power_levels/"), Some(&a.access_token)).await;
        assert_eq!(pl["users"][&a.user_id], 100);
        let (status, _) = send(&s, &a, &room, "t1", "hello").await;
        assert_eq!(status, 200);
    }
    let (status, body) =
        s.post(&format!("{V3}/createRoom"), Some(&a.access_token), json!({ "room_version": "1" })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNSUPPORTED_ROOM_VERSION")));
    let (status, body) = s
        .post(
            &format!("{V3}/createRoom"),
            Some(&a.access_token),
            json!({ "initial_state": [{ "type": "m.room.power_levels", "state_key": "", "content": {} }] }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let (_, joined) = s.get(&format!("{V3}/joined_rooms"), Some(&a.access_token)).await;
    assert_eq!(joined["joined_rooms"].as_array().unwrap().len(), 2, "nothing created for the refused requests");
}

/// Complement: TestSendMessageWithTxn, TestTxnIdempotency
#[tokio::test]
async fn test_send_message_with_txn_is_idempotent_per_device_and_transaction() {
    let s = Server::start().await;
    let a = s.register("idem", "correct horse").await;
    let room = create(&s, &a, json!({})).await;
    let (_, first) = send(&s, &a, &room, "txn1", "once").await;
    let (_, again) = send(&s, &a, &room, "txn1", "once").await;
    assert_eq!(first["event_id"], again["event_id"]);
    // The same transaction ID from another device is another event.
    let (_, login) = s.login("idem", "correct horse").await;
    let other = Account { access_token: login["access_token"].as_str().unwrap().into(), ..a.clone() };
    let (_, third) = send(&s, &other, &room, "txn1", "once").await;
    assert_ne!(first["event_id"], third["event_id"]);
    let (_, page) = messages(&s, &a, &room, "dir=b&limit=50").await;
    assert_eq!(bodies(&page), vec!["once", "once"]);
    // The scope is the endpoint path too: the same ID in another room is another event (TestTxnIdempotency).
    let room2 = create(&s, &a, json!({})).await;
    let (_, fourth) = send(&s, &a, &room2, "txn1", "once").await;
    assert_ne!(first["event_id"], fourth["event_id"]);
    let (_, page) = messages(&s, &a, &room2, "dir=b&limit=50").await;
    assert_eq!(bodies(&page), vec!["once"]);
}

/// Complement: TestRoomsInvite, TestRoomMembers
#[tokio::test]
async fn test_rooms_invite_and_membership_rules_are_enforced() {
    let s = Server::start().await;
    let a = s.register("owner", "correct horse").await;
    let b = s.register("guest", "correct horse").await;
    let room = create(&s, &a, json!({ "preset": "private_chat" })).await;

    // Invite-only: no join without an invite, and an outsider cannot send.
    let (status, body) = s.post(&format!("{V3}/rooms/{room}/join"), Some(&b.access_token), json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (status, _) = send(&s, &b, &room, "x", "intruder").await;
    assert_eq!(status, 403);

    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/invite"), Some(&a.access_token), json!({ "user_id": b.user_id })).await;
    assert_eq!(status, 200);
    let (status, _) = s.post(&format!("{V3}/join/{room}"), Some(&b.access_token), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(send(&s, &b, &room, "y", "hi").await.0, 200);

    // A member with power level 0 cannot change power levels or the name.
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.power_levels"),
            Some(&b.access_token),
            json!({ "users": { b.user_id.clone(): 100 } }),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) =
        s.put(&format!("{V3}/rooms/{room}/state/m.room.name"), Some(&b.access_token), json!({ "name": "mine" })).await;
    assert_eq!(status, 403);

    // Kick, then ban: a banned user cannot come back even when invited.
    let (status, _) = s
        .post(
            &format!("{V3}/rooms/{room}/kick"),
            Some(&a.access_token),
            json!({ "user_id": b.user_id, "reason": "bye" }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(send(&s, &b, &room, "z", "still here?").await.0, 403);
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/ban"), Some(&a.access_token), json!({ "user_id": b.user_id })).await;
    assert_eq!(status, 200);
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/invite"), Some(&a.access_token), json!({ "user_id": b.user_id })).await;
    assert_eq!(status, 403);
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/unban"), Some(&a.access_token), json!({ "user_id": b.user_id })).await;
    assert_eq!(status, 200);
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/invite"), Some(&a.access_token), json!({ "user_id": b.user_id })).await;
    assert_eq!(status, 200);

    // The kicked user sees what happened up to the kick, but not later messages.
    let (_, members) = s.get(&format!("{V3}/rooms/{room}/members?membership=invite"), Some(&a.access_token)).await;
    assert_eq!(members["chunk"].as_array().unwrap().len(), 1, "{members}");
    let (status, body) =
        s.post(&format!("{V3}/rooms/{room}/unban"), Some(&a.access_token), json!({ "user_id": b.user_id })).await;
    assert_eq!(status, 403, "not banned any more: {body}");
}

/// Complement: TestRoomMembers, TestRoomState/GET /rooms/:room_id/joined_members is forbidden after leaving room
#[tokio::test]
async fn test_room_members_public_room_can_be_joined_and_left() {
    let s = Server::start().await;
    let a = s.register("host", "correct horse").await;
    let b = s.register("visitor", "correct horse").await;
    let room = create(&s, &a, json!({ "preset": "public_chat" })).await;
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/join"), Some(&b.access_token), json!({})).await.0, 200);
    let (_, joined) = s.get(&format!("{V3}/rooms/{room}/joined_members"), Some(&b.access_token)).await;
    assert_eq!(joined["joined"].as_object().unwrap().len(), 2, "{joined}");
    assert_eq!(joined["joined"][&b.user_id]["display_name"], "visitor");
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/leave"), Some(&b.access_token), json!({})).await.0, 200);
    let (_, rooms) = s.get(&format!("{V3}/joined_rooms"), Some(&b.access_token)).await;
    assert_eq!(rooms["joined_rooms"], json!([]));
    assert_eq!(s.get(&format!("{V3}/rooms/{room}/joined_members"), Some(&b.access_token)).await.0, 403);
    // Leaving twice is refused.
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/leave"), Some(&b.access_token), json!({})).await.0, 403);
}

/// Complement: TestRoomState
#[tokio::test]
async fn test_room_state_endpoints_and_the_empty_state_key() {
    let s = Server::start().await;
    let a = s.register("stater", "correct horse").await;
    let room = create(&s, &a, json!({})).await;
    for path in ["m.room.topic", "m.room.topic/"] {
        let (status, body) =
            s.put(&format!("{V3}/rooms/{room}/state/{path}"), Some(&a.access_token), json!({ "topic": path })).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["event_id"].as_str().unwrap().starts_with('$'));
        let (_, got) = s.get(&format!("{V3}/rooms/{room}/state/m.room.topic/"), Some(&a.access_token)).await;
        assert_eq!(got["topic"], path);
    }
    let (status, body) =
        s.get(&format!("{V3}/rooms/{room}/state/m.room.topic?format=event"), Some(&a.access_token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], "m.room.topic");
    assert_eq!(body["sender"], a.user_id.as_str());
    let (status, body) = s
        .put(&format!("{V3}/rooms/{room}/state/org.example.custom/key1"), Some(&a.access_token), json!({ "v": 1 }))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, got) = s.get(&format!("{V3}/rooms/{room}/state/org.example.custom/key1"), Some(&a.access_token)).await;
    assert_eq!(got, json!({ "v": 1 }));
    let (status, body) =
        s.get(&format!("{V3}/rooms/{room}/state/org.example.custom/missing"), Some(&a.access_token)).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (status, _) = s.put(&format!("{V3}/rooms/{room}/state/m.room.create"), Some(&a.access_token), json!({})).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn unknown_and_malformed_rooms() {
    let s = Server::start().await;
    let a = s.register("lost", "correct horse").await;
    let (status, body) = send(&s, &a, "!nope:localhost", "t", "x").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (status, body) = send(&s, &a, "not-a-room", "t", "x").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (status, _) = s.post(&format!("{V3}/rooms/!nope:localhost/join"), Some(&a.access_token), json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = s.get(&format!("{V3}/rooms/!nope:localhost/state"), Some(&a.access_token)).await;
    assert_eq!(status, 404);
    let (status, _) = s
        .post(
            &format!("{V3}/rooms/!nope:localhost/invite"),
            Some(&a.access_token),
            json!({ "user_id": "@ghost:localhost" }),
        )
        .await;
    assert_eq!(status, 404);
}

/// Complement: TestJson/Invalid numerical values, TestEvent/Large Event
#[tokio::test]
async fn test_json_canonical_limits_refuse_bad_numbers_and_large_events() {
    let s = Server::start().await;
    let a = s.register("limits", "correct horse").await;
    let room = create(&s, &a, json!({})).await;
    let path = format!("{V3}/rooms/{room}/send/m.room.message/big-int");
    let resp = s
        .http
        .put(format!("{}{path}", s.url))
        .bearer_auth(&a.access_token)
        .header("content-type", "application/json")
        .body(r#"{"msgtype":"m.text","body":"x","n":9007199254740993}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["errcode"], "M_BAD_JSON");
    let (status, body) = s
        .put(&format!("{V3}/rooms/{room}/send/m.room.message/float"), Some(&a.access_token), json!({ "n": 1.5 }))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let (status, body) = send(&s, &a, &room, "huge", &"x".repeat(70_000)).await;
    assert_eq!((status, body["errcode"].as_str()), (413, Some("M_TOO_LARGE")));
    let (_, page) = messages(&s, &a, &room, "dir=b&limit=50").await;
    assert!(bodies(&page).is_empty(), "nothing was stored");
}

/// Complement: TestSendAndFetchMessage
#[tokio::test]
async fn test_send_and_fetch_message_paginating_both_ways() {
    let s = Server::start().await;
    let a = s.register("pager", "correct horse").await;
    let room = create(&s, &a, json!({})).await;
    for i in 0..25 {
        assert_eq!(send(&s, &a, &room, &format!("t{i}"), &format!("m{i}")).await.0, 200);
    }
    let mut seen = Vec::new();
    let mut query = "dir=b&limit=10".to_owned();
    loop {
        let (status, page) = messages(&s, &a, &room, &query).await;
        assert_eq!(status, 200, "{page}");
        let mut b = bodies(&page);
        b.reverse();
        seen.splice(0..0, b);
        match page["end"].as_str() {
            Some(end) => query = format!("dir=b&limit=10&from={end}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);

    let (_, forward) = messages(&s, &a, &room, "dir=f&limit=100").await;
    assert_eq!(bodies(&forward), expected);
    let (status, body) = messages(&s, &a, &room, "dir=b&from=garbage").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
}

/// Complement: TestFetchHistoricalJoinedEventDenied
#[tokio::test]
async fn test_fetch_historical_joined_event_denied_and_outsiders_read_nothing() {
    let s = Server::start().await;
    let a = s.register("speaker", "correct horse").await;
    let b = s.register("latecomer", "correct horse").await;
    let c = s.register("outsider", "correct horse").await;
    let room = create(
        &s,
        &a,
        json!({ "preset": "public_chat",
                "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }] }),
    )
    .await;
    let (_, secret) = send(&s, &a, &room, "s1", "before you came").await;
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/join"), Some(&b.access_token), json!({})).await.0, 200);
    send(&s, &a, &room, "s2", "after you came").await;
    let (_, page) = messages(&s, &b, &room, "dir=b&limit=50").await;
    assert_eq!(bodies(&page), vec!["after you came"]);
    let event = secret["event_id"].as_str().unwrap();
    assert_eq!(s.get(&format!("{V3}/rooms/{room}/event/{event}"), Some(&b.access_token)).await.0, 404);
    assert_eq!(s.get(&format!("{V3}/rooms/{room}/event/{event}"), Some(&a.access_token)).await.0, 200);
    // Someone who never joined reads nothing.
    assert_eq!(messages(&s, &c, &room, "dir=b").await.0, 403);
    assert_eq!(s.get(&format!("{V3}/rooms/{room}/state"), Some(&c.access_token)).await.0, 403);
    assert_eq!(s.get(&format!("{V3}/rooms/{room}/event/{event}"), Some(&c.access_token)).await.0, 404);
}

#[tokio::test]
async fn acknowledged_events_survive_a_kill_during_a_burst() {
    let mut s = Server::start().await;
    let a = s.register("burst", "correct horse").await;
    let room = create(&s, &a, json!({})).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = format!("{}{V3}/rooms/{room}/send/m.room.message/b{i}", s.url);
        let client = s.http.clone();
        let token = a.access_token.clone();
        tasks.push(tokio::spawn(async move {
            let resp = client
                .put(url)
                .bearer_auth(token)
                .json(&json!({ "msgtype": "m.text", "body": format!("b{i}") }))
                .send()
                .await;
            match resp {
                Ok(r) if r.status() == 200 => {
                    r.json::<Value>().await.ok().and_then(|v| v["event_id"].as_str().map(str::to_owned))
                }
                _ => None,
            }
        }));
    }
    // Kill the server while the burst is in flight.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let pid = s.pid();
    let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    let mut acknowledged = HashSet::new();
    for t in tasks {
        if let Ok(Some(id)) = t.await {
            acknowledged.insert(id);
        }
    }
    s.kill_and_restart().await;
    let (_, login) = s.login("burst", "correct horse").await;
    let token = login["access_token"].as_str().unwrap();
    let (status, page) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=1000"), Some(token)).await;
    assert_eq!(status, 200);
    let ids: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event is stored twice");
    for id in &acknowledged {
        assert!(ids.contains(id), "acknowledged event {id} was lost");
    }
}
