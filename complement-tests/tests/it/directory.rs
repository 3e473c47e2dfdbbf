//! Room aliases and the public room directory.

use complement_tests::Server;
use serde_json::json;

const V3: &str = "/_matrix/client/v3";

/// Complement: TestRoomAlias, TestRoomDeleteAlias
#[tokio::test]
async fn test_room_alias_create_resolve_join_and_delete() {
    let s = Server::start().await;
    let a = s.register("aliaser", "correct horse").await;
    let b = s.register("joiner", "correct horse").await;
    let (status, r) = s
        .post(
            &format!("{V3}/createRoom"),
            Some(&a.access_token),
            json!({ "room_alias_name": "lobby", "preset": "public_chat" }),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let room = r["room_id"].as_str().unwrap().to_owned();
    let (status, got) = s.get(&format!("{V3}/directory/room/%23lobby:localhost"), None).await;
    assert_eq!(status, 200);
    assert_eq!(got["room_id"], room.as_str());
    assert_eq!(got["servers"], json!(["localhost"]));
    let (_, canonical) = s.get(&format!("{V3}/rooms/{room}/state/m.room.canonical_alias"), Some(&a.access_token)).await;
    assert_eq!(canonical["alias"], "#lobby:localhost");

    // Joining by alias.
    let (status, joined) = s.post(&format!("{V3}/join/%23lobby:localhost"), Some(&b.access_token), json!({})).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["room_id"], room.as_str());

    // The same name again is refused before any room is made.
    let (status, body) =
        s.post(&format!("{V3}/createRoom"), Some(&a.access_token), json!({ "room_alias_name": "lobby" })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_ROOM_IN_USE")));

    // A second alias by a member; duplicates conflict; other servers' aliases are refused.
    let alias2 = format!("{V3}/directory/room/%23hall:localhost");
    assert_eq!(s.put(&alias2, Some(&b.access_token), json!({ "room_id": room })).await.0, 200);
    assert_eq!(s.put(&alias2, Some(&a.access_token), json!({ "room_id": room })).await.0, 409);
    let (status, _) = s
        .put(&format!("{V3}/directory/room/%23x:elsewhere.org"), Some(&a.access_token), json!({ "room_id": room }))
        .await;
    assert_eq!(status, 400);
    let (_, list) = s.get(&format!("{V3}/rooms/{room}/aliases"), Some(&b.access_token)).await;
    let mut aliases: Vec<&str> = list["aliases"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    aliases.sort();
    assert_eq!(aliases, vec!["#hall:localhost", "#lobby:localhost"]);

    // A plain member may not delete someone else's alias; the creator of the alias may.
    let c = s.register("third", "correct horse").await;
    assert_eq!(s.post(&format!("{V3}/join/%23lobby:localhost"), Some(&c.access_token), json!({})).await.0, 200);
    assert_eq!(s.request("DELETE", &alias2, Some(&c.access_token), None).await.0, 403);
    assert_eq!(s.request("DELETE", &alias2, Some(&b.access_token), None).await.0, 200);
    assert_eq!(s.get(&alias2, None).await.0, 404);
    // The room's creator outranks everyone and may delete any alias.
    assert_eq!(
        s.request("DELETE", &format!("{V3}/directory/room/%23lobby:localhost"), Some(&a.access_token), None).await.0,
        200
    );
}

/// Complement: TestPublicRooms/Can search public room list
#[tokio::test]
async fn test_public_rooms_directory_lists_searches_and_pages() {
    let s = Server::start().await;
    let a = s.register("publisher", "correct horse").await;
    let b = s.register("browser", "correct horse").await;
    let mut rooms = vec![];
    for name in ["Rust talk", "Cooking", "Gardening"] {
        let (_, r) = s
            .post(
                &format!("{V3}/createRoom"),
                Some(&a.access_token),
                json!({ "visibility": "public", "name": name, "topic": format!("{name} topic") }),
            )
            .await;
        rooms.push(r["room_id"].as_str().unwrap().to_owned());
    }
    let (_, private) = s.post(&format!("{V3}/createRoom"), Some(&a.access_token), json!({ "name": "Secret" })).await;
    let (status, list) = s.get(&format!("{V3}/publicRooms"), None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["chunk"].as_array().unwrap().len(), 3);
    assert_eq!(list["total_room_count_estimate"], 3);
    assert!(!list.to_string().contains("Secret"));
    let first = &list["chunk"][0];
    // `join_rule` may be left out for public rooms (that is its default).
    assert!(first.get("join_rule").is_none_or(|j| j == "public"), "{first}");
    assert_eq!(first["num_joined_members"], 1);

    let (status, found) = s
        .post(
            &format!("{V3}/publicRooms"),
            Some(&b.access_token),
            json!({ "filter": { "generic_search_term": "cook" } }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(found["chunk"][0]["name"], "Cooking");

    let (_, page1) = s.get(&format!("{V3}/publicRooms?limit=2"), None).await;
    assert_eq!(page1["chunk"].as_array().unwrap().len(), 2);
    let next = page1["next_batch"].as_str().unwrap();
    let (_, page2) = s.get(&format!("{V3}/publicRooms?limit=2&since={next}"), None).await;
    assert_eq!(page2["chunk"].as_array().unwrap().len(), 1);
    assert!(page2.get("next_batch").is_none());
    assert!(page2["prev_batch"].is_string());

    // Visibility can be read and changed by those with the power to.
    let room = &rooms[0];
    let (_, v) = s.get(&format!("{V3}/directory/list/room/{room}"), None).await;
    assert_eq!(v["visibility"], "public");
    assert_eq!(
        s.put(&format!("{V3}/directory/list/room/{room}"), Some(&b.access_token), json!({ "visibility": "private" }))
            .await
            .0,
        403
    );
    assert_eq!(
        s.put(&format!("{V3}/directory/list/room/{room}"), Some(&a.access_token), json!({ "visibility": "private" }))
            .await
            .0,
        200
    );
    let (_, list) = s.get(&format!("{V3}/publicRooms"), None).await;
    assert_eq!(list["chunk"].as_array().unwrap().len(), 2);
    let private_id = private["room_id"].as_str().unwrap();
    let (_, v) = s.get(&format!("{V3}/directory/list/room/{private_id}"), None).await;
    assert_eq!(v["visibility"], "private");
    assert_eq!(s.get(&format!("{V3}/publicRooms?since=bogus"), None).await.0, 400);
}
