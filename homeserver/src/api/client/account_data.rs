use std::sync::Arc;

use ruma::{
    RoomId, UserId,
    api::client::{
        config::{get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data},
        tag::{create_tag, delete_tag, get_tags},
    },
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{api::Ruma, err, error::Result, service::Services};

fn own(path_user: &UserId, sender: &UserId) -> Result<()> {
    if path_user != sender {
        return Err(err!(Forbidden, "You can only access your own account data"));
    }
    Ok(())
}

fn content_of(json: Option<&Value>) -> Result<Value> {
    match json {
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        _ => Err(err!(BadJson, "Account data must be a JSON object")),
    }
}

fn check_settable(kind: &str) -> Result<()> {
    // Server-managed types may not be written through this API (spec: 405 M_BAD_JSON).
    if matches!(kind, "m.fully_read" | "m.push_rules") {
        return Err(crate::error::Error::with_status(
            crate::error::ErrorKind::BadJson,
            http::StatusCode::METHOD_NOT_ALLOWED,
            format!("{kind} cannot be set through this endpoint"),
        ));
    }
    Ok(())
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn set_global_account_data_route(
    s: Arc<Services>,
    body: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response> {
    own(&body.body.user_id, body.user()?)?;
    let kind = body.body.event_type.to_string();
    check_settable(&kind)?;
    s.set_account_data(body.user()?, None, &kind, content_of(body.json.as_ref())?).await?;
    Ok(set_global_account_data::v3::Response::new())
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn get_global_account_data_route(
    s: Arc<Services>,
    body: Ruma<get_global_account_data::v3::Request>,
) -> Result<get_global_account_data::v3::Response> {
    own(&body.body.user_id, body.user()?)?;
    let stored = s
        .account_data(body.user()?, None, &body.body.event_type.to_string())?
        .ok_or_else(|| err!(NotFound, "No such account data"))?;
    Ok(get_global_account_data::v3::Response::new(Raw::new(&stored.content).expect("serializes").cast_unchecked()))
}

fn known_room(s: &Services, user: &UserId, room_id: &RoomId) -> Result<()> {
    if s.rooms.room(room_id)?.is_none() {
        return Err(err!(NotFound, "Unknown room"));
    }
    if s.rooms.membership(user, room_id)?.is_none() {
        return Err(err!(Forbidden, "You have no membership in this room"));
    }
    Ok(())
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn set_room_account_data_route(
    s: Arc<Services>,
    body: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response> {
    let user = body.user()?;
    own(&body.body.user_id, user)?;
    let kind = body.body.event_type.to_string();
    check_settable(&kind)?;
    known_room(&s, user, &body.body.room_id)?;
    s.set_account_data(user, Some(&body.body.room_id), &kind, content_of(body.json.as_ref())?).await?;
    Ok(set_room_account_data::v3::Response::new())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn get_room_account_data_route(
    s: Arc<Services>,
    body: Ruma<get_room_account_data::v3::Request>,
) -> Result<get_room_account_data::v3::Response> {
    let user = body.user()?;
    own(&body.body.user_id, user)?;
    let stored = s
        .account_data(user, Some(&body.body.room_id), &body.body.event_type.to_string())?
        .ok_or_else(|| err!(NotFound, "No such account data"))?;
    Ok(get_room_account_data::v3::Response::new(Raw::new(&stored.content).expect("serializes").cast_unchecked()))
}

fn tags(s: &Services, user: &UserId, room_id: &RoomId) -> Result<Value> {
    Ok(s.account_data(user, Some(room_id), "m.tag")?.map(|t| t.content).unwrap_or_else(|| json!({ "tags": {} })))
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`
pub async fn get_tags_route(s: Arc<Services>, body: Ruma<get_tags::v3::Request>) -> Result<get_tags::v3::Response> {
    let user = body.user()?;
    own(&body.body.user_id, user)?;
    let content = tags(&s, user, &body.body.room_id)?;
    let parsed = serde_json::from_value(content["tags"].clone()).map_err(crate::error::Error::internal)?;
    Ok(get_tags::v3::Response::new(parsed))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn create_tag_route(
    s: Arc<Services>,
    body: Ruma<create_tag::v3::Request>,
) -> Result<create_tag::v3::Response> {
    let user = body.user()?;
    own(&body.body.user_id, user)?;
    known_room(&s, user, &body.body.room_id)?;
    if body.body.tag.is_empty() || body.body.tag.len() > 255 {
        return Err(err!(InvalidParam, "Tags must be 1 to 255 bytes"));
    }
    let _guard = s.locks.lock(format!("tags:{user}")).await;
    let mut content = tags(&s, user, &body.body.room_id)?;
    content["tags"][&body.body.tag] = body.json.clone().unwrap_or_else(|| json!({}));
    s.set_account_data(user, Some(&body.body.room_id), "m.tag", content).await?;
    Ok(create_tag::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn delete_tag_route(
    s: Arc<Services>,
    body: Ruma<delete_tag::v3::Request>,
) -> Result<delete_tag::v3::Response> {
    let user = body.user()?;
    own(&body.body.user_id, user)?;
    let _guard = s.locks.lock(format!("tags:{user}")).await;
    let mut content = tags(&s, user, &body.body.room_id)?;
    if let Some(map) = content["tags"].as_object_mut() {
        map.remove(&body.body.tag);
    }
    s.set_account_data(user, Some(&body.body.room_id), "m.tag", content).await?;
    Ok(delete_tag::v3::Response::new())
}
