use std::sync::Arc;

use ruma::api::{
    Direction,
    client::{
        context::get_context, discovery::get_capabilities::v3 as caps, knock::knock_room, membership::forget_room,
        redact::redact_event, room::get_event_by_timestamp,
    },
};
use serde_json::json;

use crate::{
    api::Ruma,
    err,
    error::Result,
    service::{
        Services,
        rooms::{DEFAULT_VERSION, NewEvent, SUPPORTED_VERSIONS, txn_key},
    },
};

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`
pub async fn redact_event_route(
    s: Arc<Services>,
    body: Ruma<redact_event::v3::Request>,
) -> Result<redact_event::v3::Response> {
    let sender = body.user()?.to_owned();
    let device = body.device()?.to_owned();
    let req = &body.body;
    let key = txn_key(&sender, &device, &format!("redact:{}:{}:{}", req.room_id, req.event_id, req.txn_id));
    let _guard = s.locks.lock(format!("txn:{sender}")).await;
    if let Some(existing) = s.rooms.txn_event(&key)? {
        return Ok(redact_event::v3::Response::new(existing));
    }
    let room = s.rooms.room(&req.room_id)?.ok_or_else(|| err!(NotFound, "Unknown room"))?;
    let target = s
        .rooms
        .pdu(&req.event_id)?
        .filter(|p| p.room == req.room_id && s.rooms.can_see(&sender, &p.event_id).unwrap_or(false))
        .ok_or_else(|| err!(NotFound, "Event not found"))?;
    if !s.rooms.may_redact(&req.room_id, &sender, &target)? {
        return Err(err!(Forbidden, "You may not redact this event"));
    }
    let mut content = json!({});
    if let Some(reason) = &req.reason {
        content["reason"] = json!(reason);
    }
    let mut event = NewEvent::message("m.room.redaction", content);
    event.redacts = Some(req.event_id.clone());
    event.txn = Some(key);
    // The append checks the redaction right and redacts the target in the same write.
    let redaction = s.rooms.append(Some(&req.room_id), &room.version, &sender, event).await?;
    Ok(redact_event::v3::Response::new(redaction.event_id))
}

/// `GET /_matrix/client/v3/capabilities`
#[allow(deprecated)] // set_displayname and set_avatar_url are still read by older clients.
pub async fn get_capabilities_route(s: Arc<Services>, _: Ruma<caps::Request>) -> Result<caps::Response> {
    let mut c = caps::Capabilities::new();
    c.change_password = caps::ChangePasswordCapability::new(true);
    c.set_displayname = caps::SetDisplayNameCapability::new(true);
    c.set_avatar_url = caps::SetAvatarUrlCapability::new(true);
    let mut fields = caps::ProfileFieldsCapability::new(true);
    fields.allowed = Some(vec!["displayname".into(), "avatar_url".into()]);
    c.profile_fields = Some(fields);
    // Addresses can be added only when the server can verify them.
    c.thirdparty_id_changes = caps::ThirdPartyIdChangesCapability::new(s.email.enabled());
    c.room_versions = caps::RoomVersionsCapability::new(
        DEFAULT_VERSION,
        SUPPORTED_VERSIONS.iter().map(|v| (v.clone(), caps::RoomVersionStability::Stable)).collect(),
    );
    Ok(caps::Response::new(c))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`
pub async fn get_context_route(
    s: Arc<Services>,
    body: Ruma<get_context::v3::Request>,
) -> Result<get_context::v3::Response> {
    let user = body.user()?;
    let req = &body.body;
    let info = s.rooms.event_info(&req.event_id)?.filter(|i| i.room_id == req.room_id);
    let Some(info) = info.filter(|_| s.rooms.can_see(user, &req.event_id).unwrap_or(false)) else {
        return Err(err!(NotFound, "Event not found"));
    };
    let pdu = s.rooms.pdu(&req.event_id)?.ok_or_else(|| err!(NotFound, "Event not found"))?;
    let limit = (u64::from(req.limit).min(100)) as usize;
    let before_n = limit / 2;
    let after_n = limit - before_n;
    let before = s.rooms.timeline(&req.room_id, 0, info.stream, true, before_n)?;
    let after = s.rooms.timeline(&req.room_id, info.stream + 1, u64::MAX, false, after_n)?;
    let mut response = get_context::v3::Response::new();
    response.start = Some(format!("s{}", before.last().map_or(info.stream, |(p, _)| *p)));
    response.end = Some(format!("s{}", after.last().map_or(info.stream + 1, |(p, _)| p + 1)));
    response.event = Some(pdu.to_client_event(&req.room_id));
    for (_, p) in before {
        if s.rooms.can_see(user, &p.event_id)? {
            response.events_before.push(p.to_client_event(&req.room_id));
        }
    }
    let mut last_state = info.state_after;
    for (_, p) in after {
        if s.rooms.can_see(user, &p.event_id)? {
            if let Some(i) = s.rooms.event_info(&p.event_id)? {
                last_state = i.state_after;
            }
            response.events_after.push(p.to_client_event(&req.room_id));
        }
    }
    for id in s.rooms.state.load(last_state)?.values() {
        if let Some(p) = s.rooms.pdu(id)? {
            response.state.push(p.to_client_event(&req.room_id).cast_unchecked());
        }
    }
    Ok(response)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`
pub async fn timestamp_to_event_route(
    s: Arc<Services>,
    body: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response> {
    let user = body.user()?;
    let req = &body.body;
    s.rooms.readable_state(user, &req.room_id)?;
    let forwards = req.dir == Direction::Forward;
    let found = s.rooms.event_by_timestamp(&req.room_id, u64::from(req.ts.0), forwards)?;
    match found {
        Some(p) if s.rooms.can_see(user, &p.event_id)? => {
            Ok(get_event_by_timestamp::v1::Response::new(p.event_id, p.origin_server_ts))
        }
        _ => Err(err!(NotFound, "No event found in that direction")),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`
pub async fn forget_room_route(
    s: Arc<Services>,
    body: Ruma<forget_room::v3::Request>,
) -> Result<forget_room::v3::Response> {
    let user = body.user()?;
    match s.rooms.membership(user, &body.body.room_id)?.map(|m| m.membership).as_deref() {
        None => return Err(err!(NotFound, "You have no membership in this room")),
        Some("leave" | "ban") => {}
        Some(_) => {
            return Err(crate::error::Error::with_status(
                crate::error::ErrorKind::Unknown,
                http::StatusCode::BAD_REQUEST,
                "Leave the room before forgetting it",
            ));
        }
    }
    s.rooms.forget(user, &body.body.room_id).await?;
    Ok(forget_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}`
pub async fn knock_room_route(
    s: Arc<Services>,
    body: Ruma<knock_room::v3::Request>,
) -> Result<knock_room::v3::Response> {
    let user = body.user()?;
    let room_id = super::membership::resolve_room(&s, &body.body.room_id_or_alias)?;
    let room = s.rooms.room(&room_id)?.ok_or_else(|| err!(NotFound, "Unknown room"))?;
    let mut content = json!({ "membership": "knock" });
    if let Some(r) = &body.body.reason {
        content["reason"] = json!(r);
    }
    s.rooms
        .append(Some(&room_id), &room.version, user, NewEvent::state("m.room.member", user.as_str(), content))
        .await?;
    Ok(knock_room::v3::Response::new(room_id))
}
