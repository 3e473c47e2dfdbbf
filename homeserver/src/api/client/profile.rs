use std::sync::Arc;

use ruma::{
    OwnedMxcUri, UserId,
    api::client::profile::{get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name},
};

use crate::{
    api::Ruma,
    err,
    error::Result,
    service::{Services, users::Profile},
};

fn load(s: &Services, user_id: &UserId) -> Result<Profile> {
    match s.users.profile(user_id)? {
        Some(p) if s.users.account(user_id)?.is_some_and(|a| !a.deactivated) => Ok(p),
        _ => Err(err!(NotFound, "Profile not found")),
    }
}

fn own(body_user: &UserId, sender: &UserId) -> Result<()> {
    if body_user != sender {
        return Err(err!(Forbidden, "You cannot change another user's profile"));
    }
    Ok(())
}

/// `GET /_matrix/client/v3/profile/{userId}`
pub async fn get_profile_route(
    s: Arc<Services>,
    body: Ruma<get_profile::v3::Request>,
) -> Result<get_profile::v3::Response> {
    let p = load(&s, &body.body.user_id)?;
    let mut response = get_profile::v3::Response::new();
    if let Some(d) = p.displayname {
        response.data.set("displayname".into(), d.into());
    }
    if let Some(a) = p.avatar_url {
        response.data.set("avatar_url".into(), a.into());
    }
    Ok(response)
}

/// `GET /_matrix/client/v3/profile/{userId}/displayname`
pub async fn get_display_name_route(
    s: Arc<Services>,
    body: Ruma<get_display_name::v3::Request>,
) -> Result<get_display_name::v3::Response> {
    Ok(get_display_name::v3::Response::new(load(&s, &body.body.user_id)?.displayname))
}

/// `PUT /_matrix/client/v3/profile/{userId}/displayname`
pub async fn set_display_name_route(
    s: Arc<Services>,
    body: Ruma<set_display_name::v3::Request>,
) -> Result<set_display_name::v3::Response> {
    own(&body.body.user_id, body.user()?)?;
    let name = body.body.displayname.clone().filter(|n| !n.is_empty());
    if name.as_ref().is_some_and(|n| n.chars().count() > 256) {
        return Err(err!(InvalidParam, "The display name is longer than 256 characters"));
    }
    let mut p = load(&s, &body.body.user_id)?;
    p.displayname = name;
    s.users.set_profile(&body.body.user_id, &p).await?;
    Ok(set_display_name::v3::Response::new())
}

/// `GET /_matrix/client/v3/profile/{userId}/avatar_url`
pub async fn get_avatar_url_route(
    s: Arc<Services>,
    body: Ruma<get_avatar_url::v3::Request>,
) -> Result<get_avatar_url::v3::Response> {
    let url = load(&s, &body.body.user_id)?.avatar_url.map(OwnedMxcUri::from);
    Ok(get_avatar_url::v3::Response::new(url))
}

/// `PUT /_matrix/client/v3/profile/{userId}/avatar_url`
pub async fn set_avatar_url_route(
    s: Arc<Services>,
    body: Ruma<set_avatar_url::v3::Request>,
) -> Result<set_avatar_url::v3::Response> {
    own(&body.body.user_id, body.user()?)?;
    let url = body.body.avatar_url.clone().filter(|u| !u.as_str().is_empty());
    if url.as_ref().is_some_and(|u| !u.is_valid()) {
        return Err(err!(InvalidParam, "avatar_url must be an mxc:// URI"));
    }
    let mut p = load(&s, &body.body.user_id)?;
    p.avatar_url = url.map(|u| u.to_string());
    s.users.set_profile(&body.body.user_id, &p).await?;
    Ok(set_avatar_url::v3::Response::new())
}
