use std::sync::Arc;

use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};
use serde_json::value::to_raw_value;

use crate::{
    api::Ruma,
    err,
    error::{Error, Result},
    service::{Services, rooms::NewEvent},
};

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn send_state_event_route(
    s: Arc<Services>,
    body: Ruma<send_state_event::v3::Request>,
) -> Result<send_state_event::v3::Response> {
    let sender = body.user()?.to_owned();
    let req = &body.body;
    let room = s.rooms.room(&req.room_id)?.ok_or_else(|| err!(NotFound, "Unknown room"))?;
    let content: serde_json::Value = body.json.clone().unwrap_or_else(|| serde_json::json!({}));
    let kind = req.event_type.to_string();
    if kind == "m.room.create" {
        return Err(err!(Forbidden, "The create event cannot be replaced"));
    }
    let pdu = s
        .rooms
        .append(Some(&req.room_id), &room.version, &sender, NewEvent::state(kind, req.state_key.clone(), content))
        .await?;
    Ok(send_state_event::v3::Response::new(pdu.event_id))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn get_state_event_route(
    s: Arc<Services>,
    body: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response> {
    let user = body.user()?;
    let req = &body.body;
    let state = s.rooms.readable_state(user, &req.room_id)?;
    let pdu = s
        .rooms
        .state_pdu(&state, &req.event_type.to_string(), &req.state_key)?
        .ok_or_else(|| err!(NotFound, "No such state event"))?;
    let value = match req.format {
        get_state_event_for_key::v3::StateEventFormat::Event => {
            serde_json::to_value(pdu.to_client_event(&req.room_id)).map_err(Error::internal)?
        }
        _ => pdu.content_json(),
    };
    Ok(get_state_event_for_key::v3::Response::new(to_raw_value(&value).map_err(Error::internal)?))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state`
pub async fn get_state_events_route(
    s: Arc<Services>,
    body: Ruma<get_state_events::v3::Request>,
) -> Result<get_state_events::v3::Response> {
    let user = body.user()?;
    let state = s.rooms.readable_state(user, &body.body.room_id)?;
    let mut events = Vec::with_capacity(state.len());
    for id in state.values() {
        if let Some(p) = s.rooms.pdu(id)? {
            events.push(p.to_client_event(&body.body.room_id).cast_unchecked());
        }
    }
    Ok(get_state_events::v3::Response::new(events))
}
