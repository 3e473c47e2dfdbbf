//! Redaction, capabilities, context, timestamp lookup, forget and knock.

use complement_tests::{Account, Server};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

async fn room_with(s: &Server, owner: &Account, member: &Account, body: Value) -> String {
    let (_, r) = s.post(&format!("{V3}/createRoom"), Some(&owner.access_token), body).await;
    let room = r["room_id"].as_str().unwrap().to_owned();
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/join"), Some(&member.access_token), json!({})).await.0, 200);
    room
}

async fn say(s: &Server, who: &Account, room: &str, txn: &str, body: &str) -> String {
    let (status, r) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/{txn}"),
            Some(&who.access_token),
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    r["event_id"].as_str().unwrap().to_owned()
}

/// Complement: TestRedact/Event content is redacted
#[tokio::test]
async fn test_redact_removes_content_and_needs_power() {
    let s = Server::start().await;
    let a = s.register("mod", "correct horse").await;
    let b = s.register("user", "correct horse").await;
    let room = room_with(&s, &a, &b, json!({ "preset": "public_chat" })).await;
    let mine = say(&s, &b, &room, "1", "my secret").await;
    let admins = say(&s, &a, &room, "2", "admin text").await;

    // A member cannot redact someone else's event, but can redact their own.
    let (status, _) = s.put(&format!("{V3}/rooms/{room}/redact/{admins}/r1"), Some(&b.access_token), json!({})).await;
    assert_eq!(status, 403);
    let (status, r1) =
        s.put(&format!("{V3}/rooms/{room}/redact/{mine}/r2"), Some(&b.access_token), json!({ "reason": "oops" })).await;
    assert_eq!(status, 200, "{r1}");
    let (_, again) =
        s.put(&format!("{V3}/rooms/{room}/redact/{mine}/r2"), Some(&b.access_token), json!({ "reason": "oops" })).await;
    assert_eq!(again["event_id"], r1["event_id"], "redactions are idempotent per transaction");

    let (_, event) = s.get(&format!("{V3}/rooms/{room}/event/{mine}"), Some(&a.access_token)).await;
    assert_eq!(event["content"], json!({}), "{event}");
    assert_eq!(event["unsigned"]["redacted_because"]["content"]["reason"], "oops");
    // A redaction sent through /send is checked the same way.
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.redaction/sneaky"),
            Some(&b.access_token),
            json!({ "redacts": admins }),
        )
        .await;
    assert_eq!(status, 403);
    let (_, still) = s.get(&format!("{V3}/rooms/{room}/event/{admins}"), Some(&b.access_token)).await;
    assert_eq!(still["content"]["body"], "admin text");
    // The creator (room version 12) may redact anything.
    let (status, _) = s.put(&format!("{V3}/rooms/{room}/redact/{admins}/r3"), Some(&a.access_token), json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = s.put(&format!("{V3}/rooms/{room}/redact/$missing/r4"), Some(&a.access_token), json!({})).await;
    assert_eq!(status, 404);
    // Every read path now serves the redacted form.
    let (_, page) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=50"), Some(&a.access_token)).await;
    assert!(!page.to_string().contains("my secret"), "{page}");
    let (_, sync) = s.get(&format!("{V3}/sync"), Some(&b.access_token)).await;
    assert!(!sync.to_string().contains("my secret"));
}

/// Complement: TestServerCapabilities
#[tokio::test]
async fn test_server_capabilities_list_room_versions() {
    let s = Server::start().await;
    let a = s.register("caps", "correct horse").await;
    let (status, body) = s.get(&format!("{V3}/capabilities"), Some(&a.access_token)).await;
    assert_eq!(status, 200);
    let c = &body["capabilities"];
    assert_eq!(c["m.room_versions"]["default"], "12");
    for v in ["10", "11", "12"] {
        assert_eq!(c["m.room_versions"]["available"][v], "stable");
    }
    // Absent means enabled, as the spec defines for m.change_password.
    assert_ne!(c["m.change_password"]["enabled"], false);
    assert_eq!(c["m.profile_fields"]["enabled"], true);
    assert_eq!(c["m.profile_fields"]["allowed"], json!(["displayname", "avatar_url"]));
}

/// Complement: TestJumpToDateEndpoint
#[tokio::test]
async fn test_jump_to_date_endpoint_and_event_context() {
    let s = Server::start().await;
    let a = s.register("ctx", "correct horse").await;
    let b = s.register("ctx2", "correct horse").await;
    let room = room_with(&s, &a, &b, json!({ "preset": "public_chat", "name": "Ctx" })).await;
    let mut ids = vec![];
    for i in 0..7 {
        ids.push(say(&s, &a, &room, &format!("c{i}"), &format!("c{i}")).await);
    }
    let (status, ctx) = s.get(&format!("{V3}/rooms/{room}/context/{}?limit=4", ids[3]), Some(&b.access_token)).await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(ctx["event"]["content"]["body"], "c3");
    let before: Vec<&str> =
        ctx["events_before"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap()).collect();
    let after: Vec<&str> =
        ctx["events_after"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap()).collect();
    assert_eq!(before, vec!["c2", "c1"]);
    assert_eq!(after, vec!["c4", "c5"]);
    assert!(ctx["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"));
    let c = s.register("ctx3", "correct horse").await;
    assert_eq!(s.get(&format!("{V3}/rooms/{room}/context/{}", ids[3]), Some(&c.access_token)).await.0, 404);

    let (_, e) = s.get(&format!("{V3}/rooms/{room}/event/{}", ids[5]), Some(&a.access_token)).await;
    let ts = e["origin_server_ts"].as_u64().unwrap();
    let (status, found) = s
        .get(&format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts={ts}&dir=b"), Some(&a.access_token))
        .await;
    assert_eq!(status, 200, "{found}");
    let (_, got) =
        s.get(&format!("{V3}/rooms/{room}/event/{}", found["event_id"].as_str().unwrap()), Some(&a.access_token)).await;
    assert!(got["origin_server_ts"].as_u64().unwrap() <= ts);
    let (status, _) =
        s.get(&format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts=1&dir=b"), Some(&a.access_token)).await;
    assert_eq!(status, 404, "nothing before the epoch");
}

/// Complement: TestRoomForget, TestKnocking
#[tokio::test]
async fn test_room_forget_and_knocking() {
    let s = Server::start().await;
    let a = s.register("door", "correct horse").await;
    let b = s.register("knocker", "correct horse").await;
    let room = room_with(&s, &a, &b, json!({ "preset": "public_chat" })).await;
    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/forget"), Some(&b.access_token), json!({})).await.0,
        400,
        "still joined"
    );
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/leave"), Some(&b.access_token), json!({})).await.0, 200);
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/forget"), Some(&b.access_token), json!({})).await.0, 200);
    let (_, sync) = s.get(&format!("{V3}/sync"), Some(&b.access_token)).await;
    assert!(sync["rooms"]["leave"].get(&room).is_none());

    let (_, r) = s
        .post(
            &format!("{V3}/createRoom"),
            Some(&a.access_token),
            json!({ "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }] }),
        )
        .await;
    let knockable = r["room_id"].as_str().unwrap().to_owned();
    assert_eq!(s.post(&format!("{V3}/rooms/{knockable}/join"), Some(&b.access_token), json!({})).await.0, 403);
    let (status, body) =
        s.post(&format!("{V3}/knock/{knockable}"), Some(&b.access_token), json!({ "reason": "let me in" })).await;
    assert_eq!(status, 200, "{body}");
    let (_, members) = s.get(&format!("{V3}/rooms/{knockable}/members?membership=knock"), Some(&a.access_token)).await;
    assert_eq!(members["chunk"][0]["content"]["reason"], "let me in");
    assert_eq!(
        s.post(&format!("{V3}/rooms/{knockable}/invite"), Some(&a.access_token), json!({ "user_id": b.user_id }))
            .await
            .0,
        200
    );
    assert_eq!(s.post(&format!("{V3}/rooms/{knockable}/join"), Some(&b.access_token), json!({})).await.0, 200);
    // Knocking on a public room is refused by the join rules.
    let (_, r) = s.post(&format!("{V3}/createRoom"), Some(&a.access_token), json!({ "preset": "public_chat" })).await;
    let public = r["room_id"].as_str().unwrap();
    assert_eq!(s.post(&format!("{V3}/knock/{public}"), Some(&b.access_token), json!({})).await.0, 403);
}

#[tokio::test]
async fn message_filters_members_at_and_knocks_in_sync() {
    let s = Server::start().await;
    let a = s.register("filterowner", "correct horse").await;
    let b = s.register("filtermember", "correct horse").await;
    let room = room_with(&s, &a, &b, json!({ "preset": "public_chat" })).await;
    say(&s, &a, &room, "f1", "from a").await;
    say(&s, &b, &room, "f2", "from b").await;
    let (_, sync) = s.get(&format!("{V3}/sync"), Some(&a.access_token)).await;
    let token = sync["next_batch"].as_str().unwrap().to_owned();
    let filter = |f: Value| f.to_string().bytes().map(|b| format!("%{b:02X}")).collect::<String>();

    let only_b = filter(json!({ "senders": [b.user_id], "types": ["m.room.*"] }));
    let (_, page) =
        s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=50&filter={only_b}"), Some(&a.access_token)).await;
    let chunk = page["chunk"].as_array().unwrap();
    assert!(!chunk.is_empty() && chunk.iter().all(|e| e["sender"] == b.user_id.as_str()), "{page}");
    let no_messages = filter(json!({ "not_types": ["m.room.message"] }));
    let (_, page) =
        s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=50&filter={no_messages}"), Some(&a.access_token)).await;
    assert!(page["chunk"].as_array().unwrap().iter().all(|e| e["type"] != "m.room.message"));

    // Membership as of a token: b was still joined then, though banned now.
    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/ban"), Some(&a.access_token), json!({ "user_id": b.user_id })).await.0,
        200
    );
    let (_, now) = s.get(&format!("{V3}/rooms/{room}/members?membership=join"), Some(&a.access_token)).await;
    assert_eq!(now["chunk"].as_array().unwrap().len(), 1);
    let (_, then) =
        s.get(&format!("{V3}/rooms/{room}/members?membership=join&at={token}"), Some(&a.access_token)).await;
    assert_eq!(then["chunk"].as_array().unwrap().len(), 2, "{then}");

    // A knock shows up in the knocker's sync.
    let c = s.register("filterknocker", "correct horse").await;
    let (_, r) = s
        .post(
            &format!("{V3}/createRoom"),
            Some(&a.access_token),
            json!({ "name": "Knock here", "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }] }),
        )
        .await;
    let knockable = r["room_id"].as_str().unwrap().to_owned();
    assert_eq!(s.post(&format!("{V3}/knock/{knockable}"), Some(&c.access_token), json!({})).await.0, 200);
    let (_, sync) = s.get(&format!("{V3}/sync"), Some(&c.access_token)).await;
    let knock_state = sync["rooms"]["knock"][&knockable]["knock_state"]["events"].as_array().expect("knock section");
    assert!(knock_state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Knock here"));
}

/// Redacted content is gone from the database at once, and, after
/// `homeserver admin compact`, from every file of the data directory.
#[tokio::test]
async fn redacted_content_is_gone_from_storage_after_compaction() {
    use hearth_homeserver::storage::{Store, sled_store::SledStore, trees};

    let mut s = Server::start().await;
    let a = s.register("purger", "correct horse").await;
    let room = s.create_room(&a, json!({})).await;
    let marker = format!("redact-me-{}", std::process::id());
    let (status, sent) = s.send_text(&a, &room, "t1", &format!("{marker} and more")).await;
    assert_eq!(status, 200, "{sent}");
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    s.send_text(&a, &room, "t2", "a later message that stays").await;
    let (status, _) = s
        .put(&format!("{V3}/rooms/{room}/redact/{event_id}/r1"), Some(&a.access_token), json!({ "reason": "oops" }))
        .await;
    assert_eq!(status, 200);
    s.terminate().await;

    // No tree of the database holds the content any more.
    {
        let store = SledStore::open(&s.data_dir().join("db")).expect("open db");
        for t in trees::ALL {
            for item in store.tree(t.name).unwrap().scan_prefix(b"") {
                let (k, v) = item.unwrap();
                let hit = |b: &[u8]| b.windows(marker.len()).any(|w| w == marker.as_bytes());
                assert!(!hit(&k) && !hit(&v), "tree {} still holds the redacted content", t.name);
            }
        }
    }

    // Compaction rewrites the files: no file holds it either.
    let out = s.admin(&["compact"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut stack = vec![s.data_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                    "{} still holds the redacted content",
                    path.display()
                );
            }
        }
    }

    // The server starts on the compacted database with everything else intact.
    s.start_again().await;
    let (status, event) = s.get(&format!("{V3}/rooms/{room}/event/{event_id}"), Some(&a.access_token)).await;
    assert_eq!(status, 200);
    assert_eq!(event["content"], json!({}), "{event}");
    let (_, page) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=5"), Some(&a.access_token)).await;
    assert!(page["chunk"].as_array().unwrap().iter().any(|e| e["content"]["body"] == "a later message that stays"));

    // Compaction refuses to run while the server holds the database.
    let out = s.admin(&["compact"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop the server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
