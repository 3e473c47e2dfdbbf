//! Building blocks of the server's own HTML pages (browser sign-in, the UIA
//! fallback, registration and the account page): one page frame with strict
//! headers, escaping, forms with a CSRF token checked against a
//! `__Host-` cookie (Secure, HttpOnly, SameSite=Strict), and the
//! account-page session cookie. The pages are a few lines of HTML each,
//! written with escaping rather than through a template engine.

use std::sync::Arc;

use axum::{
    Form,
    extract::{FromRequest, Request},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::remote_ip;
use crate::{
    service::Services,
    util::{constant_time_eq, random_string},
};

/// The value of a form reader, or (returned at once) the page it answered
/// with instead: the `?` of handlers that always answer with a page.
macro_rules! or_page {
    ($result:expr) => {
        match $result {
            Ok(parts) => parts,
            Err(page) => return page,
        }
    };
}
pub(crate) use or_page;

const CSRF_COOKIE: &str = "__Host-hearth_csrf";
/// The account page's session: an access token of a device named
/// [`WEB_DEVICE_NAME`], so it is listed and can be signed out like any other.
pub const SESSION_COOKIE: &str = "__Host-hearth_session";
pub const WEB_DEVICE_NAME: &str = "Account page (browser)";
/// How long an account-page session lasts from its sign-in.
pub const WEB_SESSION_SECS: u64 = 12 * 3600;

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
         .error{{color:#b00020}}.notice{{color:#1b5e20}}h2{{margin-top:2rem}}\
         label.check,label.check input,form.inline,form.inline button{{display:inline;width:auto}}\
         ul{{padding-left:1.2rem}}img{{display:block;margin:1rem auto}}</style></head><body><h1>{title}</h1>{body}</body></html>",
        title = escape(title)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    set_cookie(&mut response, CSRF_COOKIE, csrf, None);
    response
}

pub(crate) fn error_line(message: Option<&str>) -> String {
    message.map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(m))).unwrap_or_default()
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
    let Some(cookie) = cookie(headers, CSRF_COOKIE) else { return false };
    let (a, b) = (cookie.as_bytes(), form_token.as_bytes());
    !a.is_empty() && constant_time_eq(a, b)
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

/// The value of a request cookie.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_owned())
}

/// Adds a `__Host-` cookie (Secure, HttpOnly, SameSite=Strict, whole site);
/// `max_age` `Some(0)` deletes it, `None` makes it last the browser session.
pub(crate) fn set_cookie(response: &mut Response, name: &str, value: &str, max_age: Option<u64>) {
    let age = max_age.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
    if let Ok(cookie) =
        HeaderValue::from_str(&format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{age}"))
    {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
}

/// A 303 to `location`, not cached.
pub(crate) fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A page with a title and one message (an error line when `error`).
pub(crate) fn notice_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = if status.is_success() { format!("<p>{}</p>", escape(message)) } else { error_line(Some(message)) };
    page(status, title, &body, &random_string(32))
}
