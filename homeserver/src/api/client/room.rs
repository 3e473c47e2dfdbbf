use std::sync::Arc;

use ruma::api::client::room::{Visibility, create_room, get_room_event};
use serde_json::{Map, Value};

use crate::{
    api::Ruma,
    err,
    error::Result,
    service::{
        Services,
        rooms::{
            DEFAULT_VERSION,
            create::{CreateRoom, Preset},
        },
    },
};

fn object_field(json: Option<&Value>, name: &str) -> Result<Option<Map<String, Value>>> {
    match json.and_then(|j| j.get(name)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o.clone())),
        Some(_) => Err(err!(BadJson, "`{name}` must be an object")),
    }
}

/// `POST /_matrix/client/v3/createRoom`
pub async fn create_room_route(
    s: Arc<Services>,
    body: Ruma<create_room::v3::Request>,
) -> Result<create_room::v3::Response> {
    let sender = body.user()?.to_owned();
    let req = &body.body;
    let version = req.room_version.clone().unwrap_or(DEFAULT_VERSION);
    if !crate::service::rooms::SUPPORTED_VERSIONS.contains(&version) {
        return Err(crate::error::Error::new(
            crate::error::ErrorKind::UnsupportedRoomVersion,
            format!("Room version {version} is not supported"),
        ));
    }
    let alias = match &req.room_alias_name {
        Some(name) => {
            let alias = ruma::RoomAliasId::parse(format!("#{name}:{}", s.config.server_name))
                .map_err(|_| err!(InvalidParam, "Invalid room_alias_name"))?;
            if s.resolve_alias(&alias)?.is_some() {
                return Err(crate::error::Error::new(
                    crate::error::ErrorKind::RoomInUse,
                    "The room alias is already taken",
                ));
            }
            Some(alias)
        }
        None => None,
    };
    let preset = match req.preset.as_ref().map(|p| p.as_str()) {
        Some("private_chat") => Preset::PrivateChat,
        Some("trusted_private_chat") => Preset::TrustedPrivateChat,
        Some("public_chat") => Preset::PublicChat,
        Some(other) => return Err(err!(BadJson, "Unknown preset {other:?}")),
        None if req.visibility == Visibility::Public => Preset::PublicChat,
        None => Preset::PrivateChat,
    };
    let json = body.json.as_ref();
    let mut initial_state = Vec::new();
    if let Some(Value::Array(events)) = json.and_then(|j| j.get("initial_state")) {
        for e in events {
            let kind = e
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| err!(BadJson, "initial_state event without a type"))?;
            let key = e.get("state_key").and_then(Value::as_str).unwrap_or_default();
            let content = e
                .get("content")
                .filter(|c| c.is_object())
                .ok_or_else(|| err!(BadJson, "initial_state event without content"))?;
            initial_state.push((kind.to_owned(), key.to_owned(), content.clone()));
        }
    }
    for invitee in &req.invite {
        if s.users.is_local(invitee) && !s.users.exists(invitee)? {
            return Err(err!(NotFound, "Unknown user {invitee}"));
        }
    }
    if req.invite.contains(&sender) {
        return Err(err!(InvalidParam, "You cannot invite yourself"));
    }
    let profile = s.users.profile(&sender)?.unwrap_or_default();
    let room_id = s
        .rooms
        .create_room(
            &sender,
            CreateRoom {
                version: version.clone(),
                preset,
                creation_content: object_field(json, "creation_content")?,
                power_level_content_override: object_field(json, "power_level_content_override")?,
                initial_state,
                name: req.name.clone(),
                topic: req.topic.clone(),
                invite: req.invite.clone(),
                is_direct: req.is_direct,
                displayname: profile.displayname,
                avatar_url: profile.avatar_url,
            },
        )
        .await?;
    if let Some(alias) = alias {
        s.create_alias(&alias, &room_id, &sender).await?;
        let room = s.rooms.room(&room_id)?.ok_or_else(|| err!(NotFound, "Unknown room"))?;
        let content = serde_json::json!({ "alias": alias });
        s.rooms
            .append(
                Some(&room_id),
                &room.version,
                &sender,
                crate::service::rooms::NewEvent::state("m.room.canonical_alias", "", content),
            )
            .await?;
    }
    if req.visibility == Visibility::Public {
        s.set_published(&room_id, true).await?;
    }
    Ok(create_room::v3::Response::new(room_id))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
pub async fn get_room_event_route(
    s: Arc<Services>,
    body: Ruma<get_room_event::v3::Request>,
) -> Result<get_room_event::v3::Response> {
    let user = body.user()?;
    let pdu = s.rooms.pdu(&body.body.event_id)?.filter(|p| p.room == body.body.room_id);
    match pdu {
        Some(p) if s.rooms.can_see(user, &p.event_id)? => {
            Ok(get_room_event::v3::Response::new(p.to_client_event(&body.body.room_id)))
        }
        _ => Err(err!(NotFound, "Event not found")),
    }
}
