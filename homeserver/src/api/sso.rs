//! The browser sign-in the spec's `m.login.sso` flow leads to: server-rendered
//! pages (no JavaScript) that check the password and, for an account with a
//! second factor, the code, then send the browser back to the client with a
//! single-use `loginToken` for `m.login.token`.
//!
//! - `GET /_matrix/client/v3/login/sso/redirect?redirectUrl=…`: the sign-in
//!   page. The redirect URL must be on `sso.redirect_allowlist`, or be an
//!   `http://localhost` (or loopback) URL as native clients use.
//! - `POST /_hearth/sso/password`: username and password.
//! - `POST /_hearth/sso/code`: the code (or a recovery code).
//!
//! The same pages sign a user in to the account page (`/_hearth/account`):
//! an empty `redirect_url` means that destination, which ends with the
//! account page's session cookie instead of a login token.
//!
//! Every form carries a CSRF token that must match the `__Host-hearth_csrf`
//! cookie (see [`super::pages`]).

use std::sync::Arc;

use axum::{
    Router,
    extract::{Query, Request, State},
    http::StatusCode,
    response::Response,
    routing::{get, post},
};
use serde::Deserialize;

use super::{
    AppState,
    account_pages::{ACCOUNT_PATH, REGISTER_PATH, start_web_session, sweep_web_sessions},
    pages::{code_form_page, csrf_ok, error_line, escape, message_page, or_page, page, read_form, see_other},
};
use crate::{
    error::ErrorKind,
    service::{Services, audit::AuditKind, password_auth},
    util::random_string,
};

pub const PASSWORD_PATH: &str = "/_hearth/sso/password";
pub const CODE_PATH: &str = "/_hearth/sso/code";

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/_matrix/client/v3/login/sso/redirect", get(start))
        .route("/_matrix/client/r0/login/sso/redirect", get(start))
        .route(PASSWORD_PATH, post(password))
        .route(CODE_PATH, post(code))
}

#[derive(Deserialize)]
struct StartQuery {
    #[serde(rename = "redirectUrl")]
    redirect_url: Option<String>,
}

#[derive(Deserialize)]
struct PasswordForm {
    csrf: String,
    redirect_url: String,
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct CodeForm {
    csrf: String,
    pending: String,
    code: String,
}

/// Whether the client's redirect URL may receive a login token.
pub fn redirect_allowed(s: &Services, url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else { return false };
    if parsed.scheme() == "http"
        && matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
        && parsed.username().is_empty()
    {
        return true;
    }
    s.config.sso.redirect_allowlist.iter().any(|allowed| !allowed.is_empty() && url.starts_with(allowed.as_str()))
}

fn destination(url: &str) -> String {
    url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_else(|| url.to_owned())
}

/// The sign-in page; an empty `redirect_url` signs in to the account page.
pub(crate) fn password_page(status: StatusCode, redirect_url: &str, username: &str, message: Option<&str>) -> Response {
    let csrf = random_string(32);
    let intro = if redirect_url.is_empty() {
        "<p>Sign in to manage your account.</p>".to_owned()
    } else {
        format!(
            "<p>After signing in you will be sent back to <strong>{dest}</strong> ({url}).</p>",
            dest = escape(&destination(redirect_url)),
            url = escape(redirect_url)
        )
    };
    let register = if redirect_url.is_empty() {
        REGISTER_PATH.to_owned()
    } else {
        format!(
            "{REGISTER_PATH}?{}",
            url::form_urlencoded::Serializer::new(String::new()).append_pair("redirectUrl", redirect_url).finish()
        )
    };
    let body = format!(
        "{intro}{error}\
         <form method=\"post\" action=\"{PASSWORD_PATH}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"redirect_url\" value=\"{url}\">\
         <label for=\"username\">Username</label>\
         <input id=\"username\" name=\"username\" autocomplete=\"username\" required value=\"{username}\">\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Sign in</button></form>\
         <p>No account yet? <a href=\"{register}\">Create one</a>.</p>",
        url = escape(redirect_url),
        register = escape(&register),
        error = error_line(message),
        username = escape(username),
    );
    page(status, "Sign in", &body, &csrf)
}

fn code_page(status: StatusCode, pending: &str, redirect_url: &str, message: Option<&str>) -> Response {
    let then = if redirect_url.is_empty() {
        String::new()
    } else {
        format!(" You will then be sent to <strong>{}</strong>.", escape(&destination(redirect_url)))
    };
    let intro = format!("Enter the code from your authenticator app, or one of your recovery codes.{then}");
    code_form_page(status, "Second factor", &intro, CODE_PATH, ("pending", pending), message)
}

/// Ends a sign-in: the browser goes to the client with a new login token,
/// or (empty `redirect_url`) to the account page with a new session.
pub(crate) async fn finish(s: &Services, user_id: &ruma::UserId, redirect_url: &str, remote: &str) -> Response {
    if redirect_url.is_empty() {
        return match s
            .sessions
            .login(user_id, None, Some(super::pages::WEB_DEVICE_NAME.to_owned()), false, Some(remote.to_owned()))
            .await
        {
            Ok(issued) => {
                sweep_web_sessions(s, user_id).await;
                start_web_session(see_other(ACCOUNT_PATH), &issued.access_token)
            }
            Err(_) => message_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong; try again."),
        };
    }
    let token = s.sso.issue_token(user_id);
    let Ok(mut url) = url::Url::parse(redirect_url) else {
        return message_page(StatusCode::BAD_REQUEST, "The address to return to is not valid.");
    };
    url.query_pairs_mut().append_pair("loginToken", &token);
    see_other(url.as_str())
}

/// The text a failed check shows.
fn failure_text(e: &crate::error::Error) -> &'static str {
    match e.kind() {
        ErrorKind::LimitExceeded { .. } => {
            "Too many failed attempts. The account is locked for a while; try again later."
        }
        ErrorKind::UserDeactivated => "This account has been deactivated.",
        _ => "Wrong username or password.",
    }
}

async fn start(State(s): State<Arc<Services>>, Query(query): Query<StartQuery>) -> Response {
    let Some(redirect_url) = query.redirect_url else {
        return message_page(StatusCode::BAD_REQUEST, "The client did not say where to return (redirectUrl).");
    };
    if !redirect_allowed(&s, &redirect_url) {
        return message_page(
            StatusCode::BAD_REQUEST,
            &format!("Signing in for {redirect_url} is not allowed on this server."),
        );
    }
    password_page(StatusCode::OK, &redirect_url, "", None)
}

async fn password(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (headers, remote, form) = or_page!(read_form::<PasswordForm>(&s, request).await);
    if !csrf_ok(&headers, &form.csrf) {
        return message_page(StatusCode::FORBIDDEN, "This form expired. Go back to your app and sign in again.");
    }
    if !form.redirect_url.is_empty() && !redirect_allowed(&s, &form.redirect_url) {
        return message_page(StatusCode::BAD_REQUEST, "Signing in for this address is not allowed on this server.");
    }
    let Ok(user_id) = s.users.resolve_login_user(&form.username) else {
        s.audit.record(AuditKind::LoginFailed, None, &remote, "invalid user identifier");
        return password_page(
            StatusCode::FORBIDDEN,
            &form.redirect_url,
            &form.username,
            Some("Wrong username or password."),
        );
    };
    if let Err(e) = password_auth::verify(&s, &user_id, form.password, &remote, AuditKind::LoginFailed).await {
        let status = if matches!(e.kind(), ErrorKind::LimitExceeded { .. }) {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::FORBIDDEN
        };
        return password_page(status, &form.redirect_url, &form.username, Some(failure_text(&e)));
    }
    match s.mfa.is_enabled(&user_id) {
        Ok(false) => finish(&s, &user_id, &form.redirect_url, &remote).await,
        Ok(true) => {
            let pending = s.sso.start_pending(&user_id, &form.redirect_url);
            code_page(StatusCode::OK, &pending, &form.redirect_url, None)
        }
        Err(_) => message_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong; try again."),
    }
}

async fn code(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (headers, remote, form) = or_page!(read_form::<CodeForm>(&s, request).await);
    if !csrf_ok(&headers, &form.csrf) {
        return message_page(StatusCode::FORBIDDEN, "This form expired. Go back to your app and sign in again.");
    }
    let Some(pending) = s.sso.pending(&form.pending) else {
        return message_page(StatusCode::FORBIDDEN, "This sign-in expired. Go back to your app and sign in again.");
    };
    match password_auth::verify_code(&s, &pending.user_id, &form.code, &remote, AuditKind::MfaFailed).await {
        Ok(()) => {
            s.sso.finish_pending(&form.pending);
            finish(&s, &pending.user_id, &pending.redirect_url, &remote).await
        }
        Err(e) => {
            let (status, text) = match e.kind() {
                ErrorKind::LimitExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, failure_text(&e)),
                _ => (StatusCode::FORBIDDEN, "That code is not valid (or was already used)."),
            };
            if status == StatusCode::TOO_MANY_REQUESTS {
                s.sso.finish_pending(&form.pending);
                return message_page(status, text);
            }
            code_page(status, &form.pending, &pending.redirect_url, Some(text))
        }
    }
}
