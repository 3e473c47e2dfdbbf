use std::sync::Arc;

use ruma::api::{
    Direction,
    client::message::{get_message_events, send_message_event},
};

use crate::{
    api::Ruma,
    err,
    error::Result,
    service::{
        Services,
        rooms::{NewEvent, txn_key},
        sync::StreamToken,
    },
};

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`
pub async fn send_message_event_route(
    s: Arc<Services>,
    body: Ruma<send_message_event::v3::Request>,
) -> Result<send_message_event::v3::Response> {
    let sender = body.user()?.to_owned();
    let device = body.device()?.to_owned();
    let req = &body.body;
    // A transaction is scoped to the device and the endpoint path, so the room is part of it.
    let key = txn_key(&sender, &device, &format!("send:{}:{}:{}", req.room_id, req.event_type, req.txn_id));
    // One transaction ID of one device yields one event, however often it is retried.
    let _guard = s.locks.lock(format!("txn:{sender}")).await;
    if let Some(existing) = s.rooms.txn_event(&key)? {
        return Ok(send_message_event::v3::Response::new(existing));
    }
    let room = s.rooms.room(&req.room_id)?.ok_or_else(|| err!(NotFound, "Unknown room"))?;
    let content = body.json.clone().unwrap_or_else(|| serde_json::json!({}));
    let mut event = NewEvent::message(req.event_type.to_string(), content);
    event.txn = Some(key);
    let pdu = s.rooms.append(Some(&req.room_id), &room.version, &sender, event).await?;
    Ok(send_message_event::v3::Response::new(pdu.event_id))
}

/// Pagination tokens are stream tokens (`/sync`'s `next_batch` is accepted too).
fn parse_token(t: &str) -> Result<u64> {
    Ok(StreamToken::parse(t)?.pos)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`
pub async fn get_message_events_route(
    s: Arc<Services>,
    body: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response> {
    let user = body.user()?;
    let req = &body.body;
    if s.rooms.room(&req.room_id)?.is_none() {
        return Err(err!(NotFound, "Unknown room"));
    }
    // Members, former members and (for world-readable rooms) anyone may paginate;
    // each event is then filtered by its own visibility.
    s.rooms.readable_state(user, &req.room_id)?;
    let limit = u64::from(req.limit).clamp(1, 1000) as usize;
    let backwards = req.dir == Direction::Backward;
    let now = s.rooms.stream_position() + 1;
    let from = match &req.from {
        Some(t) => parse_token(t)?,
        None if backwards => now,
        None => 0,
    };
    let to = req.to.as_deref().map(parse_token).transpose()?;
    let (lo, hi) = if backwards { (to.unwrap_or(0), from) } else { (from, to.unwrap_or(now)) };
    let page = s.rooms.timeline(&req.room_id, lo, hi, backwards, limit)?;
    let mut response = get_message_events::v3::Response::new();
    response.start = format!("s{from}");
    if page.len() == limit {
        let last = page.last().map(|(p, _)| *p).unwrap_or(from);
        response.end = Some(format!("s{}", if backwards { last } else { last + 1 }));
    }
    for (_, pdu) in page {
        if matches_filter(&req.filter, &pdu) && s.rooms.can_see(user, &pdu.event_id)? {
            response.chunk.push(pdu.to_client_event(&req.room_id));
        }
    }
    Ok(response)
}

/// Whether a type matches a filter pattern (`*` matches any run of characters).
fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == kind,
        Some((prefix, rest)) => {
            kind.starts_with(prefix)
                && (rest.is_empty()
                    || (prefix.len()..=kind.len()).any(|i| kind.get(i..).is_some_and(|tail| type_matches(rest, tail))))
        }
    }
}

/// The `types`, `not_types`, `senders`, `not_senders` and `contains_url` parts of a room event filter.
pub(super) fn matches_filter(
    filter: &ruma::api::client::filter::RoomEventFilter,
    pdu: &crate::service::rooms::pdu::Pdu,
) -> bool {
    let kind = pdu.kind.to_string();
    if filter.not_types.iter().any(|t| type_matches(t, &kind)) {
        return false;
    }
    if filter.types.as_ref().is_some_and(|types| !types.iter().any(|t| type_matches(t, &kind))) {
        return false;
    }
    if filter.not_senders.contains(&pdu.sender) {
        return false;
    }
    if filter.senders.as_ref().is_some_and(|senders| !senders.contains(&pdu.sender)) {
        return false;
    }
    if let Some(url) = &filter.url_filter {
        let has_url = pdu.content_json().get("url").is_some();
        let wants = matches!(url, ruma::api::client::filter::UrlFilter::EventsWithUrl);
        if has_url != wants {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn type_patterns() {
        assert!(super::type_matches("m.room.*", "m.room.message"));
        assert!(super::type_matches("*", "anything"));
        assert!(super::type_matches("m.*.message", "m.room.message"));
        assert!(!super::type_matches("m.room.*", "m.reaction"));
        assert!(super::type_matches("m.room.message", "m.room.message"));
        assert!(!super::type_matches("é*x", "éé"), "multi-byte types do not panic");
        assert!(!super::type_matches("m.room.message", "m.room.messages"));
    }
}
