//! Room creation: the create event, the creator's join, power levels, the
//! preset's rules, initial state, name, topic and invites, in the order the
//! spec gives for `POST /createRoom`.

use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId};
use serde_json::{Map, Value, json};

use super::{NewEvent, Service, pdu};
use crate::{err, error::Result};

/// The room presets of `/createRoom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

/// Everything `/createRoom` can ask for.
#[derive(Debug, Clone)]
pub struct CreateRoom {
    pub version: RoomVersionId,
    pub preset: Preset,
    pub creation_content: Option<Map<String, Value>>,
    pub power_level_content_override: Option<Map<String, Value>>,
    pub initial_state: Vec<(String, String, Value)>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    /// The creator's display name and avatar for their join event.
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

impl Service {
    pub async fn create_room(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
        let rules = pdu::rules_for(&req.version)?;
        let auth = &rules.authorization;
        // Refuse what cannot succeed before anything is written.
        if let Some((kind, _, _)) = req
            .initial_state
            .iter()
            .find(|(k, _, _)| matches!(k.as_str(), "m.room.create" | "m.room.member" | "m.room.power_levels"))
        {
            return Err(err!(BadJson, "initial_state must not contain {kind} events"));
        }

        // 1. m.room.create
        let mut create = req.creation_content.clone().unwrap_or_default();
        create.remove("room_version");
        create.insert("room_version".into(), json!(req.version.as_str()));
        if auth.use_room_create_sender {
            create.remove("creator");
        } else {
            create.insert("creator".into(), json!(creator));
        }
        let room_id: Option<OwnedRoomId> = if auth.room_create_event_id_as_room_id {
            None
        } else {
            let server = ruma::ServerName::parse(&self.config.server_name).map_err(crate::error::Error::internal)?;
            Some(RoomId::new_v1(&server))
        };
        let create_pdu = self
            .append(
                room_id.as_deref(),
                &req.version,
                creator,
                NewEvent::state("m.room.create", "", Value::Object(create)),
            )
            .await?;
        let room_id = create_pdu.room.clone();
        let send = |event: NewEvent| self.append(Some(&room_id), &req.version, creator, event);

        // 2. The creator joins.
        let mut member = json!({ "membership": "join" });
        if let Some(d) = &req.displayname {
            member["displayname"] = json!(d);
        }
        if let Some(a) = &req.avatar_url {
            member["avatar_url"] = json!(a);
        }
        send(NewEvent::state("m.room.member", creator.as_str(), member)).await?;

        // 3. Power levels.
        let mut users = Map::new();
        if !auth.explicitly_privilege_room_creators {
            users.insert(creator.to_string(), json!(100));
        }
        if req.preset == Preset::TrustedPrivateChat {
            for u in &req.invite {
                users.insert(u.to_string(), json!(100));
            }
        }
        let mut power = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": 100,
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
            "historical": 100,
            "notifications": { "room": 50 },
        });
        if let Some(over) = &req.power_level_content_override {
            for (k, v) in over {
                power[k] = v.clone();
            }
        }
        send(NewEvent::state("m.room.power_levels", "", power)).await?;

        // 4. The preset's rules, which initial_state may override.
        let (join_rule, guest) = match req.preset {
            Preset::PublicChat => ("public", "forbidden"),
            Preset::PrivateChat | Preset::TrustedPrivateChat => ("invite", "can_join"),
        };
        let mut events = vec![
            ("m.room.join_rules".to_owned(), String::new(), json!({ "join_rule": join_rule })),
            ("m.room.history_visibility".to_owned(), String::new(), json!({ "history_visibility": "shared" })),
            ("m.room.guest_access".to_owned(), String::new(), json!({ "guest_access": guest })),
        ];
        for (kind, key, content) in &req.initial_state {
            events.retain(|(k, s, _)| !(k == kind && s == key));
            events.push((kind.clone(), key.clone(), content.clone()));
        }
        for (kind, key, content) in events {
            send(NewEvent::state(kind, key, content)).await?;
        }

        // 5. Name and topic.
        if let Some(name) = &req.name {
            send(NewEvent::state("m.room.name", "", json!({ "name": name }))).await?;
        }
        if let Some(topic) = &req.topic {
            let content = json!({ "topic": topic, "m.topic": [{ "mimetype": "text/plain", "body": topic }] });
            send(NewEvent::state("m.room.topic", "", content)).await?;
        }

        // 6. Invites.
        for invitee in &req.invite {
            let mut content = json!({ "membership": "invite" });
            if req.is_direct {
                content["is_direct"] = json!(true);
            }
            send(NewEvent::state("m.room.member", invitee.as_str(), content)).await?;
        }
        Ok(room_id)
    }
}
