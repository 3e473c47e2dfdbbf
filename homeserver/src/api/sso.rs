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
//! Every form carries a CSRF token that must match the `__Host-hearth_csrf`
//! cookie (Secure, HttpOnly, SameSite=Strict) set with the page. The pages
//! are a few lines of HTML each, written here with escaping rather than
//! through a template engine.

use std::sync::Arc;

use axum::{
    Form, Router,
    extract::{FromRequest, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use super::{AppState, remote_ip};
use crate::{
    error::ErrorKind,
    service::{Services, audit::AuditKind, password_auth},
    util::{constant_time_eq, random_string},
};

const CSRF_COOKIE: &str = "__Host-hearth_csrf";
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

pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page, with the CSRF cookie (re)set to `csrf`.
pub(crate) fn page(status: StatusCode, title: &str, body: &str, csrf: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>body{{font-family:sans-serif;max-width:26rem;margin:2rem auto;padding:0 1rem}}\
         label,input,button{{display:block;width:100%;margin:.4rem 0;font-size:1.1rem}}\
         .error{{color:#b00020}}</style></head><body><h1>{title}</h1>{body}</body></html>",
        title = escape(title)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if let Ok(cookie) =
        HeaderValue::from_str(&format!("{CSRF_COOKIE}={csrf}; Path=/; Secure; HttpOnly; SameSite=Strict"))
    {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

pub(crate) fn error_line(message: Option<&str>) -> String {
    message.map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(m))).unwrap_or_default()
}

fn destination(url: &str) -> String {
    url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_else(|| url.to_owned())
}

fn password_page(status: StatusCode, redirect_url: &str, username: &str, message: Option<&str>) -> Response {
    let csrf = random_string(32);
    let body = format!(
        "<p>After signing in you will be sent back to <strong>{dest}</strong> ({url}).</p>{error}\
         <form method=\"post\" action=\"{PASSWORD_PATH}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"redirect_url\" value=\"{url}\">\
         <label for=\"username\">Username</label>\
         <input id=\"username\" name=\"username\" autocomplete=\"username\" required value=\"{username}\">\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Sign in</button></form>",
        dest = escape(&destination(redirect_url)),
        url = escape(redirect_url),
        error = error_line(message),
        username = escape(username),
    );
    page(status, "Sign in", &body, &csrf)
}

fn code_page(status: StatusCode, pending: &str, redirect_url: &str, message: Option<&str>) -> Response {
    let intro = format!(
        "Enter the code from your authenticator app, or one of your recovery codes. \
         You will then be sent to <strong>{}</strong>.",
        escape(&destination(redirect_url))
    );
    code_form_page(status, "Second factor", &intro, CODE_PATH, ("pending", pending), message)
}

/// A page asking for a TOTP or recovery code, posting to `action` with the
/// hidden field `hidden` and a new CSRF token. `intro` is HTML.
pub(crate) fn code_form_page(
    status: StatusCode,
    title: &str,
    intro: &str,
    action: &str,
    hidden: (&str, &str),
    message: Option<&str>,
) -> Response {
    let csrf = random_string(32);
    let body = format!(
        "<p>{intro}</p>{error}\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"{name}\" value=\"{value}\">\
         <label for=\"code\">Authentication code</label>\
         <input id=\"code\" name=\"code\" autocomplete=\"one-time-code\" inputmode=\"numeric\" required>\
         <button type=\"submit\">Continue</button></form>",
        error = error_line(message),
        name = escape(hidden.0),
        value = escape(hidden.1),
    );
    page(status, title, &body, &csrf)
}

pub(crate) fn message_page(status: StatusCode, message: &str) -> Response {
    page(status, "Sign in", &error_line(Some(message)), &random_string(32))
}

/// The form's CSRF token must equal the cookie's (compared in constant time).
pub(crate) fn csrf_ok(headers: &HeaderMap, form_token: &str) -> bool {
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == CSRF_COOKIE)
        .map(|(_, value)| value.to_owned());
    let Some(cookie) = cookie else { return false };
    let (a, b) = (cookie.as_bytes(), form_token.as_bytes());
    !a.is_empty() && constant_time_eq(a, b)
}

/// Sends the browser to the client with a new login token.
fn finish(s: &Services, user_id: &ruma::UserId, redirect_url: &str) -> Response {
    let token = s.sso.issue_token(user_id);
    let Ok(mut url) = url::Url::parse(redirect_url) else {
        return message_page(StatusCode::BAD_REQUEST, "The address to return to is not valid.");
    };
    url.query_pairs_mut().append_pair("loginToken", &token);
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(url.as_str()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
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
    let (headers, remote, form) = match read_form::<PasswordForm>(&s, request).await {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    if !csrf_ok(&headers, &form.csrf) {
        return message_page(StatusCode::FORBIDDEN, "This form expired. Go back to your app and sign in again.");
    }
    if !redirect_allowed(&s, &form.redirect_url) {
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
        Ok(false) => finish(&s, &user_id, &form.redirect_url),
        Ok(true) => {
            let pending = s.sso.start_pending(&user_id, &form.redirect_url);
            code_page(StatusCode::OK, &pending, &form.redirect_url, None)
        }
        Err(_) => message_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong; try again."),
    }
}

async fn code(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (headers, remote, form) = match read_form::<CodeForm>(&s, request).await {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    if !csrf_ok(&headers, &form.csrf) {
        return message_page(StatusCode::FORBIDDEN, "This form expired. Go back to your app and sign in again.");
    }
    let Some(pending) = s.sso.pending(&form.pending) else {
        return message_page(StatusCode::FORBIDDEN, "This sign-in expired. Go back to your app and sign in again.");
    };
    match password_auth::verify_code(&s, &pending.user_id, &form.code, &remote, AuditKind::MfaFailed).await {
        Ok(()) => {
            s.sso.finish_pending(&form.pending);
            finish(&s, &pending.user_id, &pending.redirect_url)
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

/// The headers, the client address (for the audit log) and the form.
pub(crate) async fn read_form<T: serde::de::DeserializeOwned>(
    s: &Arc<Services>,
    request: Request,
) -> Result<(HeaderMap, String, T), Response> {
    let headers = request.headers().clone();
    let remote = remote_ip(&request).to_string();
    match Form::<T>::from_request(request, s).await {
        Ok(Form(form)) => Ok((headers, remote, form)),
        Err(_) => Err(message_page(StatusCode::BAD_REQUEST, "The form was incomplete. Go back and try again.")),
    }
}
