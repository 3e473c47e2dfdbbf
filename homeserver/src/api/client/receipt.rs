use std::sync::Arc;

use ruma::{
    EventId, RoomId, UserId,
    api::client::{
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
        typing::create_typing_event::{self, v3::Typing},
    },
};
use serde_json::json;

use crate::{api::Ruma, err, error::Result, service::Services};

fn joined(s: &Services, user: &UserId, room_id: &RoomId) -> Result<()> {
    if s.rooms.room(room_id)?.is_none() {
        return Err(err!(NotFound, "Unknown room"));
    }
    if s.rooms.membership(user, room_id)?.map(|m| m.membership).as_deref() != Some("join") {
        return Err(err!(Forbidden, "You are not in this room"));
    }
    Ok(())
}

fn visible_event(s: &Services, user: &UserId, room_id: &RoomId, event_id: &EventId) -> Result<()> {
    match s.rooms.event_info(event_id)? {
        Some(info) if info.room_id == room_id && s.rooms.can_see(user, event_id)? => Ok(()),
        _ => Err(err!(NotFound, "Event not found in this room")),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`
pub async fn create_receipt_route(
    s: Arc<Services>,
    body: Ruma<create_receipt::v3::Request>,
) -> Result<create_receipt::v3::Response> {
    let user = body.user()?;
    let req = &body.body;
    joined(&s, user, &req.room_id)?;
    visible_event(&s, user, &req.room_id, &req.event_id)?;
    match req.receipt_type {
        ReceiptType::FullyRead => {
            s.set_account_data(user, Some(&req.room_id), "m.fully_read", json!({ "event_id": req.event_id })).await?;
        }
        ReceiptType::Read | ReceiptType::ReadPrivate => {
            let kind = if req.receipt_type == ReceiptType::Read { "m.read" } else { "m.read.private" };
            s.set_receipt(&req.room_id, kind, user, &req.event_id, req.thread.as_str()).await?;
        }
        _ => return Err(err!(InvalidParam, "Unknown receipt type")),
    }
    Ok(create_receipt::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`
pub async fn set_read_marker_route(
    s: Arc<Services>,
    body: Ruma<set_read_marker::v3::Request>,
) -> Result<set_read_marker::v3::Response> {
    let user = body.user()?;
    let req = &body.body;
    joined(&s, user, &req.room_id)?;
    for id in [&req.fully_read, &req.read_receipt, &req.private_read_receipt].into_iter().flatten() {
        visible_event(&s, user, &req.room_id, id)?;
    }
    if let Some(id) = &req.fully_read {
        s.set_account_data(user, Some(&req.room_id), "m.fully_read", json!({ "event_id": id })).await?;
    }
    if let Some(id) = &req.read_receipt {
        s.set_receipt(&req.room_id, "m.read", user, id, None).await?;
    }
    if let Some(id) = &req.private_read_receipt {
        s.set_receipt(&req.room_id, "m.read.private", user, id, None).await?;
    }
    Ok(set_read_marker::v3::Response::new())
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
pub async fn create_typing_event_route(
    s: Arc<Services>,
    body: Ruma<create_typing_event::v3::Request>,
) -> Result<create_typing_event::v3::Response> {
    let user = body.user()?;
    let req = &body.body;
    if req.user_id != user {
        return Err(err!(Forbidden, "You can only set your own typing state"));
    }
    joined(&s, user, &req.room_id)?;
    let timeout = match &req.state {
        Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    if let Some(at) = s.typing.set(&req.room_id, user, timeout) {
        // Expire the notification when its time is up.
        let services = s.clone();
        let room = req.room_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            services.typing.expire(&room);
        });
    }
    Ok(create_typing_event::v3::Response::new())
}
