//! Push rules and the notification counts they drive in /sync.

use complement_tests::{Account, Server};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

async fn counts(s: &Server, who: &Account, room: &str) -> (u64, u64) {
    let (_, body) = s.get(&format!("{V3}/sync"), Some(&who.access_token)).await;
    let n = &body["rooms"]["join"][room]["unread_notifications"];
    (n["notification_count"].as_u64().unwrap_or(0), n["highlight_count"].as_u64().unwrap_or(0))
}

#[tokio::test]
async fn default_rules_and_edits() {
    let s = Server::start().await;
    let a = s.register("pusher", "correct horse").await;
    for path in ["/pushrules/", "/pushrules", "/pushrules/global/"] {
        let (status, body) = s.get(&format!("{V3}{path}"), Some(&a.access_token)).await;
        assert_eq!(status, 200, "{path}: {body}");
        let global = if path.contains("global") { body.clone() } else { body["global"].clone() };
        let overrides = global["override"].as_array().expect("override rules");
        assert!(overrides.iter().any(|r| r["rule_id"] == ".m.rule.master" && r["enabled"] == false), "{path}");
        assert!(global["underride"].as_array().unwrap().iter().any(|r| r["rule_id"] == ".m.rule.message"));
    }
    let rule = format!("{V3}/pushrules/global/override/mine");
    let new_rule = json!({ "conditions": [{ "kind": "event_match", "key": "content.body", "pattern": "lunch" }], "actions": ["notify"] });
    assert_eq!(s.put(&rule, Some(&a.access_token), new_rule).await.0, 200);
    let (status, got) = s.get(&rule, Some(&a.access_token)).await;
    assert_eq!(status, 200);
    assert_eq!(got["rule_id"], "mine");
    assert_eq!(got["default"], false);
    assert_eq!(s.put(&format!("{rule}/enabled"), Some(&a.access_token), json!({ "enabled": false })).await.0, 200);
    assert_eq!(s.get(&format!("{rule}/enabled"), Some(&a.access_token)).await.1["enabled"], false);
    assert_eq!(s.put(&format!("{rule}/actions"), Some(&a.access_token), json!({ "actions": [] })).await.0, 200);
    assert_eq!(s.get(&format!("{rule}/actions"), Some(&a.access_token)).await.1["actions"], json!([]));
    assert_eq!(s.request("DELETE", &rule, Some(&a.access_token), None).await.0, 200);
    assert_eq!(s.get(&rule, Some(&a.access_token)).await.0, 404);

    // Server-default rules can be toggled but not removed; bad IDs are refused.
    let master = format!("{V3}/pushrules/global/override/.m.rule.master");
    let (status, _) = s.request("DELETE", &master, Some(&a.access_token), None).await;
    assert_eq!(status, 400);
    let (status, _) = s
        .put(&format!("{V3}/pushrules/global/override/.m.custom"), Some(&a.access_token), json!({ "actions": [] }))
        .await;
    assert_eq!(status, 400);
    assert_eq!(s.get(&format!("{V3}/pushrules/global/override/nope/enabled"), Some(&a.access_token)).await.0, 404);
    let (status, _) = s
        .put(
            &format!("{V3}/pushrules/global/override/x?before=missing"),
            Some(&a.access_token),
            json!({ "conditions": [], "actions": [] }),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn unread_counts_follow_rules_and_receipts() {
    let s = Server::start().await;
    let a = s.register("alerted", "correct horse").await;
    let b = s.register("talker", "correct horse").await;
    let (_, r) = s.post(&format!("{V3}/createRoom"), Some(&a.access_token), json!({ "preset": "public_chat" })).await;
    let room = r["room_id"].as_str().unwrap().to_owned();
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/join"), Some(&b.access_token), json!({})).await.0, 200);
    let send = |txn: &'static str, content: Value| {
        let path = format!("{V3}/rooms/{room}/send/m.room.message/{txn}");
        let token = b.access_token.clone();
        let s = &s;
        async move {
            let (status, body) = s.put(&path, Some(&token), content).await;
            assert_eq!(status, 200, "{body}");
            body["event_id"].as_str().unwrap().to_owned()
        }
    };
    send("1", json!({ "msgtype": "m.text", "body": "hello" })).await;
    send("2", json!({ "msgtype": "m.text", "body": "again" })).await;
    assert_eq!(counts(&s, &a, &room).await, (2, 0));
    let last =
        send("3", json!({ "msgtype": "m.text", "body": "hey alerted", "m.mentions": { "user_ids": [a.user_id] } }))
            .await;
    assert_eq!(counts(&s, &a, &room).await, (3, 1));
    // The sender's own messages never count.
    assert_eq!(counts(&s, &b, &room).await, (0, 0));

    // Reading up to the last message clears the counts.
    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{last}"), Some(&a.access_token), json!({})).await.0,
        200
    );
    assert_eq!(counts(&s, &a, &room).await, (0, 0));

    // `@room` highlights only when the sender has the `notifications.room` power level (50):
    // the talker (level 0) does not; once promoted, they do.
    let everyone = json!({ "msgtype": "m.text", "body": "listen up", "m.mentions": { "room": true } });
    send("r1", everyone.clone()).await;
    assert_eq!(counts(&s, &a, &room).await, (1, 0));
    let pl_path = format!("{V3}/rooms/{room}/state/m.room.power_levels");
    let (_, mut levels) = s.get(&pl_path, Some(&a.access_token)).await;
    levels["users"][&b.user_id] = json!(50);
    assert_eq!(s.put(&pl_path, Some(&a.access_token), levels).await.0, 200);
    send("r2", everyone).await;
    assert_eq!(counts(&s, &a, &room).await, (2, 1));

    // With the master rule on, nothing notifies.
    let master = format!("{V3}/pushrules/global/override/.m.rule.master/enabled");
    assert_eq!(s.put(&master, Some(&a.access_token), json!({ "enabled": true })).await.0, 200);
    send("4", json!({ "msgtype": "m.text", "body": "muted" })).await;
    assert_eq!(counts(&s, &a, &room).await, (0, 0));
}
