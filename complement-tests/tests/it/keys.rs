//! End-to-end encryption endpoints over raw HTTP: what the server accepts,
//! what it refuses (and then stores nothing), and how keys, device lists and
//! to-device messages flow. Keys are generated and signed with vodozemac
//! through our client-sdk, as a device would.

use std::collections::BTreeSet;

use complement_tests::{Account, Server, password_auth};
use hearth_client_sdk::{
    DeviceIdentity,
    ruma::{DeviceId, UserId},
};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

fn ids(a: &Account) -> (&UserId, &DeviceId) {
    (<&UserId>::try_from(a.user_id.as_str()).expect("user ID"), a.device_id.as_str().into())
}

async fn upload(s: &Server, a: &Account, body: Value) -> (u16, Value) {
    s.post(&format!("{V3}/keys/upload"), Some(&a.access_token), body).await
}

async fn query(s: &Server, a: &Account, users: &[&str]) -> Value {
    let wanted: serde_json::Map<String, Value> = users.iter().map(|u| (u.to_string(), json!([]))).collect();
    let (status, body) =
        s.post(&format!("{V3}/keys/query"), Some(&a.access_token), json!({ "device_keys": wanted })).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn claim(s: &Server, a: &Account, target: &Account) -> Value {
    let (status, body) = s
        .post(
            &format!("{V3}/keys/claim"),
            Some(&a.access_token),
            json!({ "one_time_keys": { &target.user_id: { &target.device_id: "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["one_time_keys"][&target.user_id][&target.device_id].clone()
}

async fn sync(s: &Server, a: &Account, since: Option<&str>) -> Value {
    let path = match since {
        Some(t) => format!("{V3}/sync?since={t}&timeout=0"),
        None => format!("{V3}/sync?timeout=0"),
    };
    let (status, body) = s.get(&path, Some(&a.access_token)).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn names(v: &Value) -> BTreeSet<String> {
    v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_owned)).collect()
}

/// A device uploads its keys; another user queries them and claims each
/// one-time key exactly once, then the fallback key; `/sync` reports counts.
#[tokio::test]
async fn keys_upload_query_and_claim_round_trip() {
    let s = Server::start().await;
    let alice = s.register("alice", "pw alice 1").await;
    let bob = s.register("bob", "pw bob 1").await;
    let (user, device) = ids(&alice);
    let mut identity = DeviceIdentity::new();
    let device_keys = identity.device_keys(user, device).unwrap();
    let otks = identity.signed_one_time_keys(user, device, 3).unwrap();
    let fallback = identity.signed_fallback_key(user, device).unwrap();
    let (status, body) =
        upload(&s, &alice, json!({ "device_keys": device_keys, "one_time_keys": otks, "fallback_keys": fallback }))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 3);

    // Uploading the same keys again is harmless.
    let (status, body) = upload(&s, &alice, json!({ "device_keys": device_keys, "one_time_keys": otks })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 3);

    let sync0 = sync(&s, &alice, None).await;
    assert_eq!(sync0["device_one_time_keys_count"]["signed_curve25519"], 3);
    assert_eq!(sync0["device_unused_fallback_key_types"], json!(["signed_curve25519"]));

    // Bob sees alice's device with its self-signature and display name slot.
    let result = query(&s, &bob, &[&alice.user_id]).await;
    let seen = &result["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(seen["keys"], device_keys["keys"]);
    assert_eq!(seen["signatures"], device_keys["signatures"]);
    assert!(seen["unsigned"].is_object(), "{seen}");

    // Each one-time key is handed out once; then the fallback key, as often as asked.
    let mut handed = BTreeSet::new();
    for _ in 0..3 {
        let got = claim(&s, &bob, &alice).await;
        let (id, key) = got.as_object().unwrap().iter().next().map(|(k, v)| (k.clone(), v.clone())).expect("a key");
        assert!(otks.contains_key(&id), "{id} is one of the uploaded one-time keys");
        assert_eq!(key, otks[&id]);
        assert!(handed.insert(id), "a one-time key was handed out twice");
    }
    for _ in 0..2 {
        let got = claim(&s, &bob, &alice).await;
        let id = got.as_object().unwrap().keys().next().cloned().expect("the fallback key");
        assert!(fallback.contains_key(&id), "{id} is the fallback key");
    }
    let after = sync(&s, &alice, None).await;
    assert_eq!(after["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(after["device_unused_fallback_key_types"], json!([]));

    // A device with nothing to hand out yields nothing.
    let carol = s.register("carol", "pw carol 1").await;
    assert!(claim(&s, &bob, &carol).await.is_null());
}

/// Concurrent claims never hand out the same one-time key twice.
#[tokio::test]
async fn concurrent_claims_hand_out_each_one_time_key_once() {
    let s = Server::start().await;
    let alice = s.register("alice", "pw alice 1").await;
    let (user, device) = ids(&alice);
    let mut identity = DeviceIdentity::new();
    let otks = identity.signed_one_time_keys(user, device, 10).unwrap();
    let body = json!({ "device_keys": identity.device_keys(user, device).unwrap(), "one_time_keys": otks });
    assert_eq!(upload(&s, &alice, body).await.0, 200);
    let mut claimers = Vec::new();
    for i in 0..4 {
        claimers.push(s.register(&format!("claimer{i}"), "pw claimer 1").await);
    }
    let mut tasks = Vec::new();
    for i in 0..20 {
        let claimer = claimers[i % claimers.len()].clone();
        let (http, url, alice) = (s.http.clone(), s.url.clone(), alice.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({ "one_time_keys": { &alice.user_id: { &alice.device_id: "signed_curve25519" } } });
            let resp = http
                .post(format!("{url}{V3}/keys/claim"))
                .bearer_auth(&claimer.access_token)
                .json(&body)
                .send()
                .await
                .expect("claim");
            assert_eq!(resp.status(), 200);
            let v: Value = resp.json().await.unwrap();
            v["one_time_keys"][&alice.user_id][&alice.device_id].as_object().and_then(|m| m.keys().next().cloned())
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        if let Some(id) = t.await.unwrap() {
            got.push(id);
        }
    }
    let distinct: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(got.len(), 10, "exactly the ten uploaded keys were handed out: {got:?}");
    assert_eq!(distinct.len(), 10, "no key twice: {got:?}");
}

/// Forged, mismatched, replaced or compromised keys are refused with the
/// right error, and nothing of the refused request is stored.
#[tokio::test]
async fn bad_keys_are_refused_and_nothing_is_stored() {
    let s = Server::start().await;
    let alice = s.register("alice", "pw alice 1").await;
    let bob = s.register("bob", "pw bob 1").await;
    let (user, device) = ids(&alice);
    let mut identity = DeviceIdentity::new();
    let impostor = DeviceIdentity::new();
    let stored_devices = |v: &Value| v["device_keys"][&alice.user_id].as_object().map_or(0, |m| m.len());

    // A forged self-signature: signed by another key.
    let mut forged = identity.device_keys(user, device).unwrap();
    let other = impostor.device_keys(user, device).unwrap();
    forged["signatures"] = other["signatures"].clone();
    let (status, body) = upload(&s, &alice, json!({ "device_keys": forged })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");

    // Keys for another user's or another device's identity.
    let bob_ids = ids(&bob);
    let (status, body) =
        upload(&s, &alice, json!({ "device_keys": identity.device_keys(bob_ids.0, device).unwrap() })).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, body) =
        upload(&s, &alice, json!({ "device_keys": identity.device_keys(user, "OTHERDEV".into()).unwrap() })).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");

    // An unknown algorithm, or a missing curve25519 key (each re-signed so only that is wrong).
    let mut odd = identity.device_keys(user, device).unwrap();
    odd["algorithms"] = json!(["m.olm.v1.curve25519-aes-sha2", "org.example.rot13"]);
    odd.as_object_mut().unwrap().remove("signatures");
    identity.sign_json(user, device, &mut odd).unwrap();
    let (status, body) = upload(&s, &alice, json!({ "device_keys": odd })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let mut no_curve = identity.device_keys(user, device).unwrap();
    no_curve["keys"].as_object_mut().unwrap().remove(&format!("curve25519:{}", alice.device_id));
    no_curve.as_object_mut().unwrap().remove("signatures");
    identity.sign_json(user, device, &mut no_curve).unwrap();
    let (status, body) = upload(&s, &alice, json!({ "device_keys": no_curve })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");

    // Good device keys with one one-time key signed by another device: all refused.
    let good_otks = identity.signed_one_time_keys(user, device, 2).unwrap();
    let mut impostor_mut = DeviceIdentity::new();
    let bad_otks = impostor_mut.signed_one_time_keys(user, device, 1).unwrap();
    let mut mixed = good_otks.clone();
    mixed.extend(bad_otks);
    let device_keys = identity.device_keys(user, device).unwrap();
    let (status, body) = upload(&s, &alice, json!({ "device_keys": device_keys, "one_time_keys": mixed })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    assert_eq!(stored_devices(&query(&s, &bob, &[&alice.user_id]).await), 0, "nothing stored");
    assert_eq!(sync(&s, &alice, None).await["device_one_time_keys_count"]["signed_curve25519"], 0);

    // Now the real upload, then the same device tries to swap its identity keys.
    let (status, _) = upload(&s, &alice, json!({ "device_keys": device_keys, "one_time_keys": good_otks })).await;
    assert_eq!(status, 200);
    let replaced = impostor.device_keys(user, device).unwrap();
    let (status, body) = upload(&s, &alice, json!({ "device_keys": replaced })).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let seen = query(&s, &bob, &[&alice.user_id]).await;
    assert_eq!(seen["device_keys"][&alice.user_id][&alice.device_id]["keys"], device_keys["keys"], "keys unchanged");

    // A one-time key ID reused with different content.
    let (id, _) = good_otks.iter().next().unwrap();
    let mut reused = serde_json::Map::new();
    let mut other_key = impostor_mut.signed_one_time_keys(user, device, 1).unwrap().into_iter().next().unwrap().1;
    other_key.as_object_mut().unwrap().remove("signatures");
    identity.sign_json(user, device, &mut other_key).unwrap();
    reused.insert(id.clone(), other_key);
    let (status, body) = upload(&s, &alice, json!({ "one_time_keys": reused })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let first = claim(&s, &bob, &alice).await;
    assert!(good_otks.values().any(|v| first.as_object().unwrap().values().next() == Some(v)), "original keys kept");

    // An unsigned curve25519 one-time key is not accepted.
    let (status, body) = upload(
        &s,
        &alice,
        json!({ "one_time_keys": { "curve25519:AAAAAQ": "ZG9nZG9nZG9nZG9nZG9nZG9nZG9nZG9nZG9nZG9nZG8" } }),
    )
    .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");

    // Bob shares a room with alice and watches her device list.
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    assert_eq!(s.post(&format!("{V3}/join/{room}"), Some(&bob.access_token), json!({})).await.0, 200);
    let since = sync(&s, &bob, None).await["next_batch"].as_str().unwrap().to_owned();

    // An admin declares alice's device compromised.
    let out = s.admin(&["compromise-device", &alice.user_id, &alice.device_id], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, _) = s.get(&format!("{V3}/account/whoami"), Some(&alice.access_token)).await;
    assert_eq!(status, 401, "the device is logged out");
    assert_eq!(stored_devices(&query(&s, &bob, &[&alice.user_id]).await), 0, "keys withdrawn");
    let update = sync(&s, &bob, Some(&since)).await;
    assert!(names(&update["device_lists"]["changed"]).contains(&alice.user_id), "{}", update["device_lists"]);

    // The same keys are refused from any device, even named after a new device.
    let (_, login) = s.login("alice", "pw alice 1").await;
    let again = Account {
        access_token: login["access_token"].as_str().unwrap().into(),
        device_id: login["device_id"].as_str().unwrap().into(),
        ..alice.clone()
    };
    let (user2, device2) = ids(&again);
    let reused_identity = identity.device_keys(user2, device2).unwrap();
    let (status, body) = upload(&s, &again, json!({ "device_keys": reused_identity })).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    assert_eq!(stored_devices(&query(&s, &bob, &[&alice.user_id]).await), 0);
    // A fresh identity on the new device is fine.
    let fresh = DeviceIdentity::new().device_keys(user2, device2).unwrap();
    assert_eq!(upload(&s, &again, json!({ "device_keys": fresh })).await.0, 200);
}

/// `device_lists` in `/sync` and `/keys/changes` follow key changes and
/// shared-room membership.
#[tokio::test]
async fn device_lists_follow_key_changes_and_membership() {
    let s = Server::start().await;
    let alice = s.register("alice", "pw alice 1").await;
    let bob = s.register("bob", "pw bob 1").await;
    let carol = s.register("carol", "pw carol 1").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    assert_eq!(s.post(&format!("{V3}/join/{room}"), Some(&bob.access_token), json!({})).await.0, 200);
    let t0 = sync(&s, &bob, None).await["next_batch"].as_str().unwrap().to_owned();

    // Alice publishes keys: bob must re-query her.
    let (user, device) = ids(&alice);
    let keys = DeviceIdentity::new().device_keys(user, device).unwrap();
    assert_eq!(upload(&s, &alice, json!({ "device_keys": keys })).await.0, 200);
    // Carol, who shares no room with bob, does too: bob is not told.
    let (cu, cd) = ids(&carol);
    assert_eq!(
        upload(&s, &carol, json!({ "device_keys": DeviceIdentity::new().device_keys(cu, cd).unwrap() })).await.0,
        200
    );
    let r1 = sync(&s, &bob, Some(&t0)).await;
    assert_eq!(names(&r1["device_lists"]["changed"]), BTreeSet::from([alice.user_id.clone()]));
    let t1 = r1["next_batch"].as_str().unwrap().to_owned();
    let (status, changes) = s.get(&format!("{V3}/keys/changes?from={t0}&to={t1}"), Some(&bob.access_token)).await;
    assert_eq!(status, 200, "{changes}");
    assert_eq!(names(&changes["changed"]), BTreeSet::from([alice.user_id.clone()]));

    // Carol joins: she now shares a room with bob, and bob with her.
    assert_eq!(s.post(&format!("{V3}/join/{room}"), Some(&carol.access_token), json!({})).await.0, 200);
    let r2 = sync(&s, &bob, Some(&t1)).await;
    assert!(names(&r2["device_lists"]["changed"]).contains(&carol.user_id), "{}", r2["device_lists"]);
    let t2 = r2["next_batch"].as_str().unwrap().to_owned();

    // Alice leaves: she shares no room with bob any more.
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/leave"), Some(&alice.access_token), json!({})).await.0, 200);
    let r3 = sync(&s, &bob, Some(&t2)).await;
    assert_eq!(names(&r3["device_lists"]["left"]), BTreeSet::from([alice.user_id.clone()]), "{}", r3["device_lists"]);

    // Bad tokens are refused.
    let (status, body) = s.get(&format!("{V3}/keys/changes?from=nope&to={t1}"), Some(&bob.access_token)).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
}

/// To-device messages: idempotent per transaction, `*` reaches every device,
/// each device gets each message once and in order, and a message is gone
/// from storage once its device has synced past it.
#[tokio::test]
async fn to_device_messages_are_delivered_once_in_order_then_deleted() {
    let mut s = Server::start().await;
    let alice = s.register("alice", "pw alice 1").await;
    let bob1 = s.register("bob", "pw bob 1").await;
    let (_, login) = s.login("bob", "pw bob 1").await;
    let bob2 = Account {
        access_token: login["access_token"].as_str().unwrap().into(),
        device_id: login["device_id"].as_str().unwrap().into(),
        ..bob1.clone()
    };
    let t1 = sync(&s, &bob1, None).await["next_batch"].as_str().unwrap().to_owned();
    let t2 = sync(&s, &bob2, None).await["next_batch"].as_str().unwrap().to_owned();

    let send = |txn: &'static str, target: Value| {
        let (s, alice) = (&s, &alice);
        async move {
            let body = json!({ "messages": { "@bob:localhost": target } });
            let path = format!("{V3}/sendToDevice/org.example.test/{txn}");
            let (status, b) = s.put(&path, Some(&alice.access_token), body).await;
            assert_eq!(status, 200, "{b}");
        }
    };
    send("t1", json!({ "*": { "n": 1 } })).await;
    send("t1", json!({ "*": { "n": 1 } })).await; // a retry: no second message
    send("t2", json!({ &bob1.device_id: { "n": 2 } })).await;
    send("t3", json!({ "*": { "n": 3 } })).await;
    send("t4", json!({ "NOSUCHDEVICE": { "n": 4 } })).await;

    let r1 = sync(&s, &bob1, Some(&t1)).await;
    let got: Vec<_> = r1["to_device"]["events"].as_array().unwrap().iter().map(|e| e["content"]["n"].clone()).collect();
    assert_eq!(got, vec![json!(1), json!(2), json!(3)], "{}", r1["to_device"]);
    let first = &r1["to_device"]["events"][0];
    assert_eq!(
        (first["sender"].as_str(), first["type"].as_str()),
        (Some(alice.user_id.as_str()), Some("org.example.test"))
    );
    let r2 = sync(&s, &bob2, Some(&t2)).await;
    let got: Vec<_> = r2["to_device"]["events"].as_array().unwrap().iter().map(|e| e["content"]["n"].clone()).collect();
    assert_eq!(got, vec![json!(1), json!(3)]);

    // Syncing again with the previous token redelivers (not yet acknowledged)...
    let again = sync(&s, &bob1, Some(&t1)).await;
    assert_eq!(again["to_device"]["events"].as_array().unwrap().len(), 3);
    // ...syncing past them acknowledges and deletes them.
    let next1 = again["next_batch"].as_str().unwrap().to_owned();
    let r3 = sync(&s, &bob1, Some(&next1)).await;
    assert!(r3["to_device"]["events"].as_array().is_none_or(|a| a.is_empty()), "{}", r3["to_device"]);
    let next2 = r2["next_batch"].as_str().unwrap().to_owned();
    sync(&s, &bob2, Some(&next2)).await;

    // Nothing is left in storage for either device.
    s.terminate().await;
    let store = hearth_homeserver::storage::sled_store::SledStore::open(&s.data_dir().join("db")).expect("open db");
    use hearth_homeserver::storage::Store;
    let tree = store.tree(hearth_homeserver::storage::trees::USERDEVICESTREAM_TODEVICE).unwrap();
    let left: Vec<_> = tree.scan_prefix(b"@bob:localhost").collect();
    assert!(left.is_empty(), "{} to-device messages still stored", left.len());
    drop(tree);
    drop(store);

    // More than a page of messages arrives across several syncs, in order, none lost.
    s.start_again().await;
    for i in 0..130u32 {
        let body = json!({ "messages": { "@bob:localhost": { &bob1.device_id: { "n": i } } } });
        let (status, _) =
            s.put(&format!("{V3}/sendToDevice/org.example.test/bulk{i}"), Some(&alice.access_token), body).await;
        assert_eq!(status, 200);
    }
    let mut token = r3["next_batch"].as_str().unwrap().to_owned();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = sync(&s, &bob1, Some(&token)).await;
        seen.extend(
            r["to_device"]["events"].as_array().into_iter().flatten().map(|e| e["content"]["n"].as_u64().unwrap()),
        );
        token = r["next_batch"].as_str().unwrap().to_owned();
    }
    assert_eq!(seen, (0..130u64).collect::<Vec<_>>());
}

/// Server-side key backup: versions, the three levels of keys, the
/// replacement rule, etags and the current-version rule.
#[tokio::test]
async fn key_backup_versions_keys_and_etags() {
    let s = Server::start().await;
    let a = s.register("alice", "pw alice 1").await;
    let t = Some(a.access_token.as_str());
    let algorithm =
        json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": { "public_key": "abcdefg" } });

    let (status, body) = s.get(&format!("{V3}/room_keys/version"), t).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (status, body) = s.post(&format!("{V3}/room_keys/version"), t, algorithm.clone()).await;
    assert_eq!(status, 200, "{body}");
    let v1 = body["version"].as_str().unwrap().to_owned();
    let (_, info) = s.get(&format!("{V3}/room_keys/version"), t).await;
    assert_eq!((info["version"].as_str(), info["count"].as_u64()), (Some(v1.as_str()), Some(0)));
    assert_eq!(info["auth_data"], algorithm["auth_data"]);

    let data = |index: u64, verified: bool, marker: &str| {
        json!({ "first_message_index": index, "forwarded_count": 0, "is_verified": verified,
                "session_data": { "ephemeral": marker, "ciphertext": marker, "mac": marker } })
    };
    let room = "!room:localhost";
    let (status, body) =
        s.put(&format!("{V3}/room_keys/keys/{room}/sess1?version={v1}"), t, data(5, false, "first")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 1);
    let etag1 = body["etag"].clone();
    // A worse copy (higher index) does not replace it, a better one does.
    let (_, body) = s.put(&format!("{V3}/room_keys/keys/{room}/sess1?version={v1}"), t, data(9, false, "worse")).await;
    assert_eq!(body["etag"], etag1, "nothing changed");
    let (_, body) =
        s.put(&format!("{V3}/room_keys/keys/{room}/sess1?version={v1}"), t, data(9, true, "verified")).await;
    assert_ne!(body["etag"], etag1);
    let (_, got) = s.get(&format!("{V3}/room_keys/keys/{room}/sess1?version={v1}"), t).await;
    assert_eq!(got["session_data"]["ciphertext"], "verified");

    // Room and whole-backup levels.
    let (status, body) = s
        .put(
            &format!("{V3}/room_keys/keys?version={v1}"),
            t,
            json!({ "rooms": { room: { "sessions": { "sess2": data(0, false, "two") } },
                              "!other:localhost": { "sessions": { "sess3": data(0, false, "three") } } } }),
        )
        .await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(3)), "{body}");
    let (_, all) = s.get(&format!("{V3}/room_keys/keys?version={v1}"), t).await;
    assert_eq!(all["rooms"].as_object().unwrap().len(), 2);
    let (_, in_room) = s.get(&format!("{V3}/room_keys/keys/{room}?version={v1}"), t).await;
    assert_eq!(in_room["sessions"].as_object().unwrap().len(), 2);
    let (_, empty) = s.get(&format!("{V3}/room_keys/keys/!none:localhost?version={v1}"), t).await;
    assert_eq!(empty, json!({ "sessions": {} }));
    let (status, _) = s.get(&format!("{V3}/room_keys/keys/{room}/nosuch?version={v1}"), t).await;
    assert_eq!(status, 404);
    let (status, body) = s.request("DELETE", &format!("{V3}/room_keys/keys/{room}?version={v1}"), t, None).await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(1)), "{body}");

    // Bad key data and bad versions.
    let (status, body) =
        s.put(&format!("{V3}/room_keys/keys/{room}/x?version={v1}"), t, json!({ "session_data": 1 })).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = s.get(&format!("{V3}/room_keys/version/999"), t).await;
    assert_eq!(status, 404);
    let mut mismatched = algorithm.clone();
    mismatched["version"] = json!("42");
    let (status, body) = s.put(&format!("{V3}/room_keys/version/{v1}"), t, mismatched).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let mut new_auth = algorithm.clone();
    new_auth["auth_data"] = json!({ "public_key": "hijklmn" });
    assert_eq!(s.put(&format!("{V3}/room_keys/version/{v1}"), t, new_auth.clone()).await.0, 200);
    let (_, info) = s.get(&format!("{V3}/room_keys/version/{v1}"), t).await;
    assert_eq!(info["auth_data"], new_auth["auth_data"]);

    // A newer version becomes current: writes to the old one are refused.
    let (_, body) = s.post(&format!("{V3}/room_keys/version"), t, algorithm.clone()).await;
    let v2 = body["version"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    let (status, body) = s.put(&format!("{V3}/room_keys/keys/{room}/s?version={v1}"), t, data(0, false, "old")).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_WRONG_ROOM_KEYS_VERSION")), "{body}");
    assert_eq!(body["current_version"].as_str(), Some(v2.as_str()));

    // Deleting a version deletes its keys; deleting it again succeeds; it is gone.
    assert_eq!(s.request("DELETE", &format!("{V3}/room_keys/version/{v1}"), t, None).await.0, 200);
    assert_eq!(s.request("DELETE", &format!("{V3}/room_keys/version/{v1}"), t, None).await.0, 200);
    assert_eq!(s.get(&format!("{V3}/room_keys/version/{v1}"), t).await.0, 404);
    assert_eq!(s.get(&format!("{V3}/room_keys/keys?version={v1}"), t).await.0, 404);
    assert_eq!(s.request("DELETE", &format!("{V3}/room_keys/version/77"), t, None).await.0, 404);

    // Another user cannot read alice's backup.
    let b = s.register("bob", "pw bob 1").await;
    assert_eq!(s.get(&format!("{V3}/room_keys/version/{v2}"), Some(&b.access_token)).await.0, 404);
}

/// Cross-signing upload needs interactive auth once keys exist; signature
/// uploads are verified against the key they claim.
#[tokio::test]
async fn cross_signing_uploads_need_auth_to_replace_and_bad_signatures_fail() {
    let s = Server::start().await;
    let alice = s.register("alice", "pw alice 1").await;
    let (user, device) = ids(&alice);
    let identity = DeviceIdentity::new();
    assert_eq!(upload(&s, &alice, json!({ "device_keys": identity.device_keys(user, device).unwrap() })).await.0, 200);

    // Cross-signing keys made from device identities (any ed25519 key will do here).
    let master_id = DeviceIdentity::new();
    let ssk_id = DeviceIdentity::new();
    let key = |who: &DeviceIdentity, usage: &str| json!({ "user_id": alice.user_id, "usage": [usage], "keys": { format!("ed25519:{}", who.ed25519()): who.ed25519() } });
    let sign_as = |signer: &DeviceIdentity, object: &mut Value| {
        // A device identity signs as `ed25519:<its key>` when its key ID is its public key.
        let kid = signer.ed25519();
        signer.sign_json(user, kid.as_str().into(), object).unwrap();
    };
    let master = key(&master_id, "master");
    let mut ssk = key(&ssk_id, "self_signing");
    sign_as(&master_id, &mut ssk);
    let (status, body) = s
        .post(
            &format!("{V3}/keys/device_signing/upload"),
            Some(&alice.access_token),
            json!({ "master_key": master, "self_signing_key": ssk }),
        )
        .await;
    assert_eq!(status, 200, "first upload needs no interactive auth: {body}");
    // The same keys again: still no auth needed (idempotent).
    let (status, _) = s
        .post(
            &format!("{V3}/keys/device_signing/upload"),
            Some(&alice.access_token),
            json!({ "master_key": master, "self_signing_key": ssk }),
        )
        .await;
    assert_eq!(status, 200);
    // A self-signing key not signed by the master key is refused.
    let other = DeviceIdentity::new();
    let unsigned_ssk = key(&other, "self_signing");
    let (status, body) = s
        .post(
            &format!("{V3}/keys/device_signing/upload"),
            Some(&alice.access_token),
            json!({ "self_signing_key": unsigned_ssk, "auth": password_auth(&alice.user_id, "pw alice 1", None) }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // Replacing the master key needs the password.
    let new_master = key(&DeviceIdentity::new(), "master");
    let (status, body) = s
        .post(
            &format!("{V3}/keys/device_signing/upload"),
            Some(&alice.access_token),
            json!({ "master_key": new_master }),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(body["flows"].is_array());

    // Alice's device, signed by her self-signing key: accepted and visible to others.
    let bob = s.register("bob", "pw bob 1").await;
    let mut device_keys = identity.device_keys(user, device).unwrap();
    sign_as(&ssk_id, &mut device_keys);
    let (status, body) = s
        .post(
            &format!("{V3}/keys/signatures/upload"),
            Some(&alice.access_token),
            json!({ &alice.user_id: { &alice.device_id: device_keys } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["failures"].as_object().is_none_or(|m| m.is_empty()), "{body}");
    let seen = query(&s, &bob, &[&alice.user_id]).await;
    let sigs = &seen["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id];
    assert!(sigs.get(format!("ed25519:{}", ssk_id.ed25519())).is_some(), "{sigs}");
    assert_eq!(seen["master_keys"][&alice.user_id]["keys"], master["keys"]);
    assert!(seen["user_signing_keys"].get(&alice.user_id).is_none(), "user-signing keys are private");

    // A signature that claims the self-signing key but was made by another key fails, per key.
    let mut forged = identity.device_keys(user, device).unwrap();
    let mut by_other = forged.clone();
    sign_as(&other, &mut by_other);
    let sig = by_other["signatures"][&alice.user_id][format!("ed25519:{}", other.ed25519())].clone();
    forged["signatures"][&alice.user_id][format!("ed25519:{}", ssk_id.ed25519())] = sig;
    let (status, body) = s
        .post(
            &format!("{V3}/keys/signatures/upload"),
            Some(&alice.access_token),
            json!({ &alice.user_id: { &alice.device_id: forged } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failures"][&alice.user_id][&alice.device_id]["errcode"], "M_INVALID_SIGNATURE", "{body}");
    // An unknown key ID fails too.
    let (_, body) = s
        .post(
            &format!("{V3}/keys/signatures/upload"),
            Some(&alice.access_token),
            json!({ &alice.user_id: { "NOSUCHKEY": { "signatures": {} } } }),
        )
        .await;
    assert!(body["failures"][&alice.user_id]["NOSUCHKEY"]["errcode"].is_string(), "{body}");
}
