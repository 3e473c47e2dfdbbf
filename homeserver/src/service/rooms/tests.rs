//! The event pipeline on an in-memory store: authorization rules and state
//! resolution of forks.

use std::sync::Arc;

use ruma::{OwnedRoomId, RoomVersionId, UserId, user_id};
use serde_json::json;

use super::{
    NewEvent, Service,
    create::{CreateRoom, Preset},
};
use crate::{
    config::Config,
    error::{Error, ErrorKind},
    service::server_keys,
    storage::{Db, memory::MemoryStore, migrations},
};

fn service() -> Service {
    let db = Db::new(Arc::new(MemoryStore::new()));
    migrations::run(&db).unwrap();
    let config = Arc::new(Config::load(None, Vec::<(String, String)>::new()).unwrap());
    let keys = Arc::new(server_keys::Service::load_or_generate(&db).unwrap());
    Service::new(config, db, keys).unwrap()
}

fn options(version: RoomVersionId, preset: Preset) -> CreateRoom {
    CreateRoom {
        version,
        preset,
        creation_content: None,
        power_level_content_override: None,
        initial_state: vec![],
        name: None,
        topic: None,
        invite: vec![],
        is_direct: false,
        displayname: None,
        avatar_url: None,
    }
}

async fn member(
    s: &Service,
    room: &OwnedRoomId,
    v: &RoomVersionId,
    sender: &UserId,
    target: &UserId,
    m: &str,
) -> Result<(), Error> {
    s.append(Some(room), v, sender, NewEvent::state("m.room.member", target.as_str(), json!({ "membership": m })))
        .await
        .map(|_| ())
}

fn forbidden(r: Result<(), Error>) -> bool {
    matches!(r, Err(e) if e.kind() == ErrorKind::Forbidden)
}

#[tokio::test]
async fn auth_rules_for_membership_and_power() {
    for v in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
        let s = service();
        let (alice, bob, carol) =
            (user_id!("@alice:localhost"), user_id!("@bob:localhost"), user_id!("@carol:localhost"));
        let room = s.create_room(alice, options(v.clone(), Preset::PrivateChat)).await.unwrap();

        // Invite-only: joining without an invite is refused.
        assert!(forbidden(member(&s, &room, &v, bob, bob, "join").await), "{v}");
        member(&s, &room, &v, alice, bob, "invite").await.unwrap();
        member(&s, &room, &v, bob, bob, "join").await.unwrap();
        member(&s, &room, &v, alice, carol, "invite").await.unwrap();
        member(&s, &room, &v, carol, carol, "join").await.unwrap();

        // Power level 0 may not kick or ban.
        assert!(forbidden(member(&s, &room, &v, bob, carol, "leave").await), "{v}");
        assert!(forbidden(member(&s, &room, &v, bob, carol, "ban").await), "{v}");

        // Nobody may raise themselves above their own level.
        let raise = json!({ "users": { bob.as_str(): 100 }, "state_default": 50, "events_default": 0, "users_default": 0, "ban": 50, "kick": 50, "redact": 50, "invite": 0 });
        let r = s.append(Some(&room), &v, bob, NewEvent::state("m.room.power_levels", "", raise)).await.map(|_| ());
        assert!(forbidden(r), "{v}");

        // The creator bans carol; a banned user cannot rejoin or be invited.
        member(&s, &room, &v, alice, carol, "ban").await.unwrap();
        assert!(forbidden(member(&s, &room, &v, carol, carol, "join").await), "{v}");
        assert!(forbidden(member(&s, &room, &v, alice, carol, "invite").await), "{v}");
        let state = s.current_state(&room).unwrap();
        assert_eq!(s.membership_in(&state, carol).unwrap().as_deref(), Some("ban"));
    }
}

#[tokio::test]
async fn a_forked_dag_is_merged_by_state_resolution() {
    for v in [RoomVersionId::V11, RoomVersionId::V12] {
        let s = service();
        let (alice, bob) = (user_id!("@alice:localhost"), user_id!("@bob:localhost"));
        let room = s.create_room(alice, options(v.clone(), Preset::PublicChat)).await.unwrap();
        member(&s, &room, &v, bob, bob, "join").await.unwrap();
        // Bob may set the topic (state_default 50).
        let mut users = serde_json::Map::new();
        users.insert(bob.to_string(), json!(50));
        if v == RoomVersionId::V11 {
            users.insert(alice.to_string(), json!(100));
        }
        let power = json!({ "users": users, "state_default": 50, "events_default": 0, "users_default": 0, "ban": 50, "kick": 50, "redact": 50, "invite": 0 });
        s.append(Some(&room), &v, alice, NewEvent::state("m.room.power_levels", "", power)).await.unwrap();
        let fork = s.room(&room).unwrap().unwrap().extremities;
        assert_eq!(fork.len(), 1);

        // Two branches from the same point: alice bans bob; bob changes the topic.
        let mut ban = NewEvent::state("m.room.member", bob.as_str(), json!({ "membership": "ban" }));
        ban.prev_events = Some(fork.clone());
        let ban = s.append(Some(&room), &v, alice, ban).await.unwrap();
        let mut topic = NewEvent::state("m.room.topic", "", json!({ "topic": "bob was here" }));
        topic.prev_events = Some(fork.clone());
        let topic = s.append(Some(&room), &v, bob, topic).await.expect("valid on its own branch");

        let record = s.room(&room).unwrap().unwrap();
        assert_eq!(record.extremities.len(), 2, "{v}: the DAG has forked");
        // Resolution applies the ban first; bob's topic then fails auth and is dropped.
        let state = s.current_state(&room).unwrap();
        assert_eq!(state[&("m.room.member".to_owned(), bob.to_string())], ban.event_id, "{v}");
        assert_ne!(state.get(&("m.room.topic".to_owned(), String::new())), Some(&topic.event_id), "{v}");

        // The next event merges both branches.
        let merged = s
            .append(Some(&room), &v, alice, NewEvent::message("m.room.message", json!({ "body": "merged" })))
            .await
            .unwrap();
        let mut prev = merged.prev_events.clone();
        prev.sort();
        let mut expected = vec![ban.event_id.clone(), topic.event_id.clone()];
        expected.sort();
        assert_eq!(prev, expected, "{v}");
        assert_eq!(s.room(&room).unwrap().unwrap().extremities, vec![merged.event_id]);
    }
}
