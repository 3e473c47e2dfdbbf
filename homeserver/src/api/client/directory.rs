use std::sync::Arc;

use ruma::{
    OwnedServerName,
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
        room::{Visibility, aliases},
    },
    directory::PublicRoomsChunk,
};
use serde_json::Value;

use crate::{api::Ruma, err, error::Result, service::Services};

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn create_alias_route(
    s: Arc<Services>,
    body: Ruma<create_alias::v3::Request>,
) -> Result<create_alias::v3::Response> {
    let user = body.user()?;
    let req = &body.body;
    if s.rooms.room(&req.room_id)?.is_none() {
        return Err(err!(NotFound, "Unknown room"));
    }
    if s.rooms.membership(user, &req.room_id)?.map(|m| m.membership).as_deref() != Some("join") {
        return Err(err!(Forbidden, "You must be in the room to give it an alias"));
    }
    s.create_alias(&req.room_alias, &req.room_id, user).await?;
    Ok(create_alias::v3::Response::new())
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn get_alias_route(s: Arc<Services>, body: Ruma<get_alias::v3::Request>) -> Result<get_alias::v3::Response> {
    let record = s.resolve_alias(&body.body.room_alias)?.ok_or_else(|| err!(NotFound, "Room alias not found"))?;
    let server: OwnedServerName = s.config.server_name.parse().map_err(crate::error::Error::internal)?;
    Ok(get_alias::v3::Response::new(record.room_id, vec![server]))
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn delete_alias_route(
    s: Arc<Services>,
    body: Ruma<delete_alias::v3::Request>,
) -> Result<delete_alias::v3::Response> {
    let user = body.user()?;
    let record = s.resolve_alias(&body.body.room_alias)?.ok_or_else(|| err!(NotFound, "Room alias not found"))?;
    let admin = s.users.account(user)?.is_some_and(|a| a.admin);
    let allowed = record.creator == user
        || admin
        || (s.rooms.room(&record.room_id)?.is_some()
            && s.power_level(&record.room_id, user)? >= s.state_level(&record.room_id, "m.room.canonical_alias")?);
    if !allowed {
        return Err(err!(Forbidden, "You may not remove this alias"));
    }
    s.delete_alias(&body.body.room_alias).await?;
    Ok(delete_alias::v3::Response::new())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`
pub async fn room_aliases_route(s: Arc<Services>, body: Ruma<aliases::v3::Request>) -> Result<aliases::v3::Response> {
    let user = body.user()?;
    s.rooms.readable_state(user, &body.body.room_id)?;
    Ok(aliases::v3::Response::new(s.room_aliases(&body.body.room_id)?))
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn get_room_visibility_route(
    s: Arc<Services>,
    body: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    if s.rooms.room(&body.body.room_id)?.is_none() {
        return Err(err!(NotFound, "Unknown room"));
    }
    let v = if s.is_published(&body.body.room_id)? { Visibility::Public } else { Visibility::Private };
    Ok(get_room_visibility::v3::Response::new(v))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn set_room_visibility_route(
    s: Arc<Services>,
    body: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    let user = body.user()?;
    let room = &body.body.room_id;
    if s.rooms.room(room)?.is_none() {
        return Err(err!(NotFound, "Unknown room"));
    }
    if s.power_level(room, user)? < s.state_level(room, "m.room.canonical_alias")? {
        return Err(err!(Forbidden, "You may not change this room's directory visibility"));
    }
    s.set_published(room, body.body.visibility == Visibility::Public).await?;
    Ok(set_room_visibility::v3::Response::new())
}

/// One page of the directory: chunk, next token, previous token, total.
struct Page(Vec<PublicRoomsChunk>, Option<String>, Option<String>, u64);

fn page(rooms: Vec<Value>, since: Option<&str>, limit: Option<u64>) -> Result<Page> {
    let total = rooms.len() as u64;
    let offset = match since {
        Some(t) => t
            .strip_prefix('o')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| err!(InvalidParam, "Invalid since token"))?,
        None => 0,
    };
    let limit = limit.map_or(usize::MAX, |l| l.max(1) as usize);
    let end = offset.saturating_add(limit).min(rooms.len());
    let chunk = rooms
        .get(offset.min(rooms.len())..end)
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_value(r.clone()).map_err(crate::error::Error::internal))
        .collect::<Result<Vec<_>>>()?;
    let next = (end < rooms.len()).then(|| format!("o{end}"));
    let prev = (offset > 0).then(|| format!("o{}", offset.saturating_sub(limit)));
    Ok(Page(chunk, next, prev, total))
}

fn check_server(s: &Services, server: Option<&OwnedServerName>) -> Result<()> {
    match server {
        Some(name) if name.as_str() != s.config.server_name => {
            Err(err!(NotFound, "Other servers' room directories need federation, which this server does not offer yet"))
        }
        _ => Ok(()),
    }
}

/// `GET /_matrix/client/v3/publicRooms`
pub async fn get_public_rooms_route(
    s: Arc<Services>,
    body: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    check_server(&s, body.body.server.as_ref())?;
    let Page(chunk, next, prev, total) =
        page(s.public_rooms(None)?, body.body.since.as_deref(), body.body.limit.map(u64::from))?;
    let mut response = get_public_rooms::v3::Response::new(chunk);
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = Some(total.try_into().unwrap_or_default());
    Ok(response)
}

/// `POST /_matrix/client/v3/publicRooms`
pub async fn get_public_rooms_filtered_route(
    s: Arc<Services>,
    body: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    check_server(&s, body.body.server.as_ref())?;
    let rooms = s.public_rooms(body.body.filter.generic_search_term.as_deref())?;
    let Page(chunk, next, prev, total) = page(rooms, body.body.since.as_deref(), body.body.limit.map(u64::from))?;
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = Some(total.try_into().unwrap_or_default());
    Ok(response)
}
