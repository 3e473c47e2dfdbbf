//! Admin operations, shared by the admin HTTP API (server running) and the
//! `homeserver admin` subcommands (server stopped).

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    err,
    error::Result,
    service::{Services, users::NewAccount},
};

/// Admin API paths (Hearth's own API, not part of Matrix).
pub mod paths {
    pub const USERS: &str = "/_hearth/admin/v1/users";
    pub const PASSWORD: &str = "/_hearth/admin/v1/users/{user_id}/password";
    pub const DEACTIVATE: &str = "/_hearth/admin/v1/users/{user_id}/deactivate";
    pub const STATS: &str = "/_hearth/admin/v1/stats";
    pub const COMPROMISED: &str = "/_hearth/admin/v1/users/{user_id}/devices/{device_id}/compromised";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateUser {
    /// Localpart or full user ID.
    pub user: String,
    pub password: String,
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserSummary {
    pub user_id: String,
    pub admin: bool,
    pub deactivated: bool,
    pub created_ts: u64,
}

fn local_user(s: &Services, user: &str) -> Result<OwnedUserId> {
    let id = if user.starts_with('@') {
        UserId::parse(user).map_err(|_| err!(InvalidParam, "{user:?} is not a user ID"))?
    } else {
        s.users.user_id(user)?
    };
    if !s.users.is_local(&id) {
        return Err(err!(InvalidParam, "{id} is not a local user"));
    }
    Ok(id)
}

pub async fn create_user(s: &Services, req: CreateUser) -> Result<OwnedUserId> {
    let id = local_user(s, &req.user)?;
    crate::service::users::validate_localpart(id.localpart(), &s.config.server_name)?;
    s.users.check_password_strength(&req.password)?;
    s.users
        .create(
            &id,
            NewAccount { password: Some(req.password), admin: req.admin, ..Default::default() },
            Default::default(),
        )
        .await?;
    tracing::info!(user = %id, admin = req.admin, "admin created a user");
    Ok(id)
}

pub fn list_users(s: &Services) -> Result<Vec<UserSummary>> {
    Ok(s.users
        .list()?
        .into_iter()
        .map(|(id, a)| UserSummary {
            user_id: id.to_string(),
            admin: a.admin,
            deactivated: a.deactivated,
            created_ts: a.created_ts,
        })
        .collect())
}

pub async fn reset_password(s: &Services, user: &str, password: String) -> Result<()> {
    let id = local_user(s, user)?;
    let account = s.users.account(&id)?.ok_or_else(|| err!(NotFound, "No such user {id}"))?;
    if account.deactivated {
        return Err(err!(UserDeactivated, "{id} is deactivated"));
    }
    s.users.check_password_strength(&password)?;
    // A reset ends every session and lifts any lockout.
    s.change_password(&id, password, Some(None)).await?;
    Ok(())
}

pub async fn deactivate(s: &Services, user: &str) -> Result<()> {
    let id = local_user(s, user)?;
    let account = s.users.account(&id)?.ok_or_else(|| err!(NotFound, "No such user {id}"))?;
    if account.deactivated {
        return Ok(());
    }
    s.deactivate_account(&id).await
}

/// Declares a device's identity keys compromised: returns the keys now refused.
pub async fn compromise_device(s: &Services, user: &str, device: &str) -> Result<Vec<String>> {
    let id = local_user(s, user)?;
    s.compromise_device(&id, device.into()).await
}
