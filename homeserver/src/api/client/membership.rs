use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedRoomId, RoomId, UserId,
    api::client::membership::{
        ban_user, get_member_events,
        invite_user::{self, v3::InvitationRecipient},
        join_room_by_id, join_room_by_id_or_alias, joined_members, joined_rooms, kick_user, leave_room, unban_user,
    },
};
use serde_json::{Value, json};

use crate::{
    api::Ruma,
    err,
    error::Result,
    service::{Services, rooms::NewEvent},
};

/// Sends an `m.room.member` event for `target` in a known room.
async fn set_membership(
    s: &Services,
    sender: &UserId,
    room_id: &RoomId,
    target: &UserId,
    membership: &str,
    extra: Value,
) -> Result<()> {
    let room = s.rooms.room(room_id)?.ok_or_else(|| err!(NotFound, "Unknown room"))?;
    let mut content = json!({ "membership": membership });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            if !v.is_null() {
                content[k] = v;
            }
        }
    }
    if membership == "join" {
        let profile = s.users.profile(target)?.unwrap_or_default();
        if let Some(d) = profile.displayname {
            content["displayname"] = json!(d);
        }
        if let Some(a) = profile.avatar_url {
            content["avatar_url"] = json!(a);
        }
    }
    s.rooms
        .append(Some(room_id), &room.version, sender, NewEvent::state("m.room.member", target.as_str(), content))
        .await?;
    Ok(())
}

fn local_target(s: &Services, user: &UserId) -> Result<()> {
    if s.users.is_local(user) && !s.users.exists(user)? {
        return Err(err!(NotFound, "Unknown user {user}"));
    }
    Ok(())
}

/// Resolves a room ID or a local alias.
pub(super) fn resolve_room(s: &Services, target: &ruma::RoomOrAliasId) -> Result<OwnedRoomId> {
    match <&ruma::RoomId>::try_from(target) {
        Ok(room_id) => Ok(room_id.to_owned()),
        Err(alias) => Ok(s.resolve_alias(alias)?.ok_or_else(|| err!(NotFound, "Room alias not found"))?.room_id),
    }
}

/// `GET /_matrix/client/v3/joined_rooms`
pub async fn joined_rooms_route(
    s: Arc<Services>,
    body: Ruma<joined_rooms::v3::Request>,
) -> Result<joined_rooms::v3::Response> {
    let rooms: Vec<OwnedRoomId> =
        s.rooms.user_rooms(body.user()?)?.into_iter().filter(|(_, m)| m.membership == "join").map(|(r, _)| r).collect();
    Ok(joined_rooms::v3::Response::new(rooms))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`
pub async fn join_room_by_id_route(
    s: Arc<Services>,
    body: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response> {
    let user = body.user()?;
    set_membership(&s, user, &body.body.room_id, user, "join", json!({ "reason": body.body.reason })).await?;
    Ok(join_room_by_id::v3::Response::new(body.body.room_id.clone()))
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}`
pub async fn join_room_by_id_or_alias_route(
    s: Arc<Services>,
    body: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let user = body.user()?;
    let room_id = resolve_room(&s, &body.body.room_id_or_alias)?;
    set_membership(&s, user, &room_id, user, "join", json!({ "reason": body.body.reason })).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`
pub async fn invite_user_route(
    s: Arc<Services>,
    body: Ruma<invite_user::v3::Request>,
) -> Result<invite_user::v3::Response> {
    let sender = body.user()?;
    let InvitationRecipient::UserId(recipient) = &body.body.recipient else {
        return Err(err!(InvalidParam, "Third-party invites are not supported by this server"));
    };
    local_target(&s, &recipient.user_id)?;
    let extra = json!({ "reason": recipient.reason, "is_direct": body.json.as_ref().and_then(|j| j.get("is_direct")) });
    set_membership(&s, sender, &body.body.room_id, &recipient.user_id, "invite", extra).await?;
    Ok(invite_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`
pub async fn leave_room_route(
    s: Arc<Services>,
    body: Ruma<leave_room::v3::Request>,
) -> Result<leave_room::v3::Response> {
    let user = body.user()?;
    set_membership(&s, user, &body.body.room_id, user, "leave", json!({ "reason": body.body.reason })).await?;
    Ok(leave_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`
pub async fn kick_user_route(s: Arc<Services>, body: Ruma<kick_user::v3::Request>) -> Result<kick_user::v3::Response> {
    let sender = body.user()?;
    let current = s.rooms.membership(&body.body.user_id, &body.body.room_id)?.map(|m| m.membership);
    if !matches!(current.as_deref(), Some("join" | "invite" | "knock")) {
        return Err(err!(Forbidden, "{} is not in the room", body.body.user_id));
    }
    set_membership(&s, sender, &body.body.room_id, &body.body.user_id, "leave", json!({ "reason": body.body.reason }))
        .await?;
    Ok(kick_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`
pub async fn ban_user_route(s: Arc<Services>, body: Ruma<ban_user::v3::Request>) -> Result<ban_user::v3::Response> {
    let sender = body.user()?;
    set_membership(&s, sender, &body.body.room_id, &body.body.user_id, "ban", json!({ "reason": body.body.reason }))
        .await?;
    Ok(ban_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`
pub async fn unban_user_route(
    s: Arc<Services>,
    body: Ruma<unban_user::v3::Request>,
) -> Result<unban_user::v3::Response> {
    let sender = body.user()?;
    let current = s.rooms.membership(&body.body.user_id, &body.body.room_id)?.map(|m| m.membership);
    if current.as_deref() != Some("ban") {
        return Err(err!(Forbidden, "{} is not banned", body.body.user_id));
    }
    set_membership(&s, sender, &body.body.room_id, &body.body.user_id, "leave", json!({ "reason": body.body.reason }))
        .await?;
    Ok(unban_user::v3::Response::new())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`
pub async fn joined_members_route(
    s: Arc<Services>,
    body: Ruma<joined_members::v3::Request>,
) -> Result<joined_members::v3::Response> {
    let user = body.user()?;
    if s.rooms.membership(user, &body.body.room_id)?.map(|m| m.membership).as_deref() != Some("join") {
        return Err(err!(Forbidden, "You are not in this room"));
    }
    let state = s.rooms.current_state(&body.body.room_id)?;
    let mut joined = BTreeMap::new();
    for (member, membership) in s.rooms.members(&body.body.room_id)? {
        if membership != "join" {
            continue;
        }
        let mut entry = joined_members::v3::RoomMember::new();
        if let Some(p) = s.rooms.state_pdu(&state, "m.room.member", member.as_str())? {
            let c = p.content_json();
            entry.display_name = c.get("displayname").and_then(Value::as_str).map(str::to_owned);
            entry.avatar_url = c.get("avatar_url").and_then(Value::as_str).map(Into::into);
        }
        joined.insert(member, entry);
    }
    Ok(joined_members::v3::Response::new(joined))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`
pub async fn get_member_events_route(
    s: Arc<Services>,
    body: Ruma<get_member_events::v3::Request>,
) -> Result<get_member_events::v3::Response> {
    let user = body.user()?;
    let req = &body.body;
    let mut state = s.rooms.readable_state(user, &req.room_id)?;
    if let Some(at) = &req.at {
        // The membership as of a sync or pagination token.
        let boundary = crate::service::sync::StreamToken::parse(at)?.pos;
        if let Some(then) = s.state_at(&req.room_id, boundary.saturating_sub(1))? {
            state = then;
        }
    }
    let want = req.membership.as_ref().map(|m| m.to_string());
    let not = req.not_membership.as_ref().map(|m| m.to_string());
    let mut chunk = Vec::new();
    for ((kind, _), id) in state.iter() {
        if kind != "m.room.member" {
            continue;
        }
        let Some(p) = s.rooms.pdu(id)? else { continue };
        let m = p.content_json().get("membership").and_then(Value::as_str).unwrap_or_default().to_owned();
        if want.as_ref().is_some_and(|w| *w != m) || not.as_ref().is_some_and(|n| *n == m) {
            continue;
        }
        chunk.push(p.to_client_event(&req.room_id).cast_unchecked());
    }
    Ok(get_member_events::v3::Response::new(chunk))
}
