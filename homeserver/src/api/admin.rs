//! The admin API: plain HTTP on a loopback address, authenticated by a secret
//! that the server writes to `data_dir/admin.json` (mode 0600) at start-up.
//! The `homeserver admin …` subcommands use it while the server runs (the
//! database can be opened by only one process), and call the same
//! [`crate::admin`] operations directly when it is stopped.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::HeaderMap,
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    admin::{self, CreateUser},
    err,
    error::Result,
    service::Services,
};

#[derive(Clone)]
struct AdminState {
    services: Arc<Services>,
    secret: Arc<str>,
}

fn check(state: &AdminState, headers: &HeaderMap) -> Result<()> {
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare in constant time.
    let a = given.as_bytes();
    let b = state.secret.as_bytes();
    let same = crate::util::constant_time_eq(a, b);
    if !same {
        return Err(err!(Forbidden, "Invalid admin secret"));
    }
    Ok(())
}

async fn create_user(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Json(req): Json<CreateUser>,
) -> Result<Json<Value>> {
    check(&st, &headers)?;
    let user_id = admin::create_user(&st.services, req).await?;
    Ok(Json(json!({ "user_id": user_id })))
}

async fn list_users(State(st): State<AdminState>, headers: HeaderMap) -> Result<Json<Value>> {
    check(&st, &headers)?;
    Ok(Json(json!({ "users": admin::list_users(&st.services)? })))
}

#[derive(Deserialize)]
struct PasswordBody {
    password: String,
}

async fn reset_password(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(user): Path<String>,
    Json(req): Json<PasswordBody>,
) -> Result<Json<Value>> {
    check(&st, &headers)?;
    admin::reset_password(&st.services, &user, req.password).await?;
    Ok(Json(json!({})))
}

async fn deactivate(State(st): State<AdminState>, headers: HeaderMap, Path(user): Path<String>) -> Result<Json<Value>> {
    check(&st, &headers)?;
    admin::deactivate(&st.services, &user).await?;
    Ok(Json(json!({})))
}

async fn compromised(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path((user, device)): Path<(String, String)>,
) -> Result<Json<Value>> {
    check(&st, &headers)?;
    let keys = admin::compromise_device(&st.services, &user, &device).await?;
    Ok(Json(json!({ "keys": keys })))
}

async fn stats(State(st): State<AdminState>, headers: HeaderMap) -> Result<Json<Value>> {
    check(&st, &headers)?;
    Ok(Json(json!({ "audit": st.services.audit.counters() })))
}

/// The admin router.
pub fn router(services: Arc<Services>, secret: String) -> Router {
    Router::new()
        .route(admin::paths::USERS, post(create_user).get(list_users))
        .route(admin::paths::PASSWORD, post(reset_password))
        .route(admin::paths::DEACTIVATE, post(deactivate))
        .route(admin::paths::STATS, get(stats))
        .route(admin::paths::COMPROMISED, post(compromised))
        .with_state(AdminState { services, secret: secret.into() })
}
