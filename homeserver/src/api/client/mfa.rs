//! The second factor (TOTP) through the client-server API, as a Hearth
//! extension under the vendor prefix `org.hearth.mfa` (the Matrix spec has
//! no TOTP stage), and the `org.hearth.login.password_totp` login type for
//! API clients:
//!
//! - `GET  /_matrix/client/unstable/org.hearth.mfa/totp`: `{enabled, pending, recovery_codes_left}`
//! - `POST …/totp/enrol` (UIA: password): `{secret, otpauth_uri}`; the factor is pending
//! - `POST …/totp/confirm` `{code}`: enables it; `{recovery_codes}` (shown once)
//! - `POST …/totp/disable` (UIA: password, then `org.hearth.login.totp`): removes it

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Request, State},
    routing::{get, post},
};
use ruma::api::client::uiaa::AuthData;
use serde_json::{Value, json};

use super::account::require_password;
use crate::{
    api::{AppState, VendorRequest},
    err,
    error::Result,
    service::Services,
};

/// The login type that carries the password and the code together.
pub const LOGIN_PASSWORD_TOTP: &str = "org.hearth.login.password_totp";

const PREFIX: &str = "/_matrix/client/unstable/org.hearth.mfa/totp";

/// Registers the endpoints.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(PREFIX, get(status))
        .route(&format!("{PREFIX}/enrol"), post(enrol))
        .route(&format!("{PREFIX}/confirm"), post(confirm))
        .route(&format!("{PREFIX}/disable"), post(disable))
}

/// The user, password and code of an `org.hearth.login.password_totp` login:
/// `{"type", "identifier": {"type": "m.id.user", "user"}, "password", "code"}`.
pub fn password_totp_fields(json: Option<&Value>) -> Result<(String, String, Option<String>)> {
    let json = json.ok_or_else(|| err!(BadJson, "A login body is required"))?;
    let text = |v: &Value, name: &str| -> Result<String> {
        v.get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| err!(MissingParam, "`{name}` is required and must be a string"))
    };
    let identifier = json.get("identifier").ok_or_else(|| err!(MissingParam, "An identifier is required"))?;
    if identifier.get("type").and_then(Value::as_str) != Some("m.id.user") {
        return Err(err!(InvalidParam, "Only m.id.user identifiers are supported"));
    }
    Ok((text(identifier, "user")?, text(json, "password")?, Some(text(json, "code")?)))
}

fn auth_data(json: &Value) -> Result<Option<AuthData>> {
    match json.get("auth") {
        None | Some(Value::Null) => Ok(None),
        Some(auth) => serde_json::from_value(auth.clone()).map(Some).map_err(|e| err!(BadJson, "Invalid `auth`: {e}")),
    }
}

async fn status(State(s): State<Arc<Services>>, request: Request) -> Result<Json<Value>> {
    let req = VendorRequest::read(&s, request).await?;
    Ok(Json(serde_json::to_value(s.mfa.status(&req.user_id)?).expect("serializes")))
}

async fn enrol(State(s): State<Arc<Services>>, request: Request) -> Result<Json<Value>> {
    let req = VendorRequest::read(&s, request).await?;
    if s.mfa.is_enabled(&req.user_id)? {
        return Err(err!(Forbidden, "TOTP is already enabled; disable it before enrolling again"));
    }
    require_password(&s, auth_data(&req.json)?.as_ref(), &req.user_id, &req.remote.to_string()).await?;
    let enrolment = s.mfa.begin(&req.user_id).await?;
    Ok(Json(serde_json::to_value(enrolment).expect("serializes")))
}

async fn confirm(State(s): State<Arc<Services>>, request: Request) -> Result<Json<Value>> {
    let req = VendorRequest::read(&s, request).await?;
    let code = req.json.get("code").and_then(Value::as_str).ok_or_else(|| err!(MissingParam, "`code` is required"))?;
    let codes = s.mfa.confirm(&req.user_id, code).await?;
    tracing::info!(user = %req.user_id, "TOTP enabled");
    Ok(Json(json!({ "recovery_codes": codes })))
}

async fn disable(State(s): State<Arc<Services>>, request: Request) -> Result<Json<Value>> {
    let req = VendorRequest::read(&s, request).await?;
    if !s.mfa.is_enabled(&req.user_id)? {
        return Err(err!(Forbidden, "TOTP is not enabled"));
    }
    // With the factor enabled, this asks for the password and a code.
    require_password(&s, auth_data(&req.json)?.as_ref(), &req.user_id, &req.remote.to_string()).await?;
    s.mfa.disable(&req.user_id).await?;
    tracing::info!(user = %req.user_id, "TOTP disabled");
    Ok(Json(json!({})))
}
