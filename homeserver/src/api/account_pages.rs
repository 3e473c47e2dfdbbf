//! The server's own account pages (server-rendered, no JavaScript):
//!
//! - `/_hearth/register`: sign up with display name, e-mail, username and
//!   password (and a registration token when the server asks for one). When
//!   the server sends e-mail, a code sent to the address must be entered
//!   before the account is made. With `?redirectUrl=` (the link on the
//!   browser sign-in page) the new user goes back to the client with a
//!   login token; otherwise to the account page.
//! - `/_hearth/account`: sign in (the browser sign-in pages, both factors),
//!   then turn the authenticator app on (QR code, recovery codes shown once)
//!   or off, add and remove e-mail addresses, change the password, and sign
//!   devices out. What changes the account asks for the password again, and
//!   the code when the account has a second factor, as the API's
//!   user-interactive auth does.
//! - `/_hearth/email/verify`: the link in verification e-mails.
//!
//! The account page's session is a device of its own, named
//! [`WEB_DEVICE_NAME`], whose access token is the `__Host-hearth_session`
//! cookie; signing out removes that device.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Query, Request, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::{get, post},
};
use ruma::{OwnedDeviceId, OwnedUserId};
use serde::Deserialize;

use super::{
    AppState,
    client::register::{Signup, create_account, new_user_id, token_is_valid},
    pages::{
        SESSION_COOKIE, WEB_DEVICE_NAME, WEB_SESSION_SECS, code_form_page, cookie, csrf_ok, error_line, escape,
        notice_page, or_page, page, read_form, see_other, set_cookie,
    },
    sso::{finish, password_page, redirect_allowed},
};
use crate::{
    error::{Error, ErrorKind},
    service::{
        Services,
        audit::AuditKind,
        email::{Purpose, Submitted, normalise_address},
        keys::DeviceSelection,
        password_auth,
        ratelimit::Action,
        sessions::TokenStatus,
        sso::PendingSignup,
    },
    storage::Batch,
    util::random_string,
};

pub const ACCOUNT_PATH: &str = "/_hearth/account";
pub const REGISTER_PATH: &str = "/_hearth/register";
const REGISTER_CONFIRM_PATH: &str = "/_hearth/register/confirm";
const LOGOUT_PATH: &str = "/_hearth/account/logout";
const TOTP_ENROL_PATH: &str = "/_hearth/account/totp/enrol";
const TOTP_CONFIRM_PATH: &str = "/_hearth/account/totp/confirm";
const TOTP_DISABLE_PATH: &str = "/_hearth/account/totp/disable";
const CHANGE_PASSWORD_PATH: &str = "/_hearth/account/password";
const DEVICES_PATH: &str = "/_hearth/account/devices";
const EMAIL_ADD_PATH: &str = "/_hearth/account/email/add";
const EMAIL_CONFIRM_PATH: &str = "/_hearth/account/email/confirm";
const EMAIL_REMOVE_PATH: &str = "/_hearth/account/email/remove";
pub const VERIFY_PATH: &str = "/_hearth/email/verify";

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(ACCOUNT_PATH, get(account))
        .route(REGISTER_PATH, get(register_form).post(register))
        .route(REGISTER_CONFIRM_PATH, post(register_confirm))
        .route(LOGOUT_PATH, post(logout))
        .route(TOTP_ENROL_PATH, post(totp_enrol))
        .route(TOTP_CONFIRM_PATH, post(totp_confirm))
        .route(TOTP_DISABLE_PATH, post(totp_disable))
        .route(CHANGE_PASSWORD_PATH, post(change_password))
        .route(DEVICES_PATH, post(sign_out_devices))
        .route(EMAIL_ADD_PATH, post(email_add))
        .route(EMAIL_CONFIRM_PATH, post(email_confirm))
        .route(EMAIL_REMOVE_PATH, post(email_remove))
        .route(VERIFY_PATH, get(verify_form).post(verify))
}

/// Adds the account page's session cookie to a response.
pub(crate) fn start_web_session(mut response: Response, access_token: &str) -> Response {
    set_cookie(&mut response, SESSION_COOKIE, access_token, Some(WEB_SESSION_SECS));
    response
}

/// Signs out the user's account-page sessions older than
/// [`WEB_SESSION_SECS`] (closed browsers never sign out themselves).
pub(crate) async fn sweep_web_sessions(s: &Services, user_id: &ruma::UserId) {
    let Ok(devices) = s.sessions.devices(user_id) else { return };
    let expired: Vec<OwnedDeviceId> =
        devices.into_iter().filter(|(_, d)| web_session_expired(d)).map(|(id, _)| id).collect();
    if !expired.is_empty() {
        let _ = s.remove_devices(user_id, DeviceSelection::List(&expired), Batch::new()).await;
    }
}

fn web_session_expired(device: &crate::service::sessions::Device) -> bool {
    device.display_name.as_deref() == Some(WEB_DEVICE_NAME)
        && crate::util::now_ms().saturating_sub(device.created_ts) > WEB_SESSION_SECS * 1000
}

/// The fields of a posted form, in order (a name may repeat).
struct Fields(Vec<(String, String)>);

impl Fields {
    fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Reads a posted form as its fields.
async fn read_fields(s: &Arc<Services>, request: Request) -> Result<(HeaderMap, String, Fields), Response> {
    let (headers, remote, fields) = read_form::<Vec<(String, String)>>(s, request).await?;
    Ok((headers, remote, Fields(fields)))
}

/// The user signed in to the account page.
struct WebUser {
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
    remote: String,
}

fn web_user(s: &Services, headers: &HeaderMap) -> Option<(OwnedUserId, OwnedDeviceId)> {
    let token = cookie(headers, SESSION_COOKIE)?;
    match s.sessions.authenticate(&token).ok()? {
        TokenStatus::Valid { user_id, device_id } => {
            let device = s.sessions.device(&user_id, &device_id).ok()??;
            (!web_session_expired(&device)).then_some((user_id, device_id))
        }
        _ => None,
    }
}

/// Reads a form posted from the account page: the session must be live and
/// the CSRF token right; otherwise the answer is the page to show instead.
async fn account_form(s: &Arc<Services>, request: Request) -> Result<(WebUser, Fields), Response> {
    let (headers, remote, fields) = read_fields(s, request).await?;
    let Some((user_id, device_id)) = web_user(s, &headers) else {
        return Err(password_page(StatusCode::UNAUTHORIZED, "", "", Some("Your session ended; sign in again.")));
    };
    if !csrf_ok(&headers, fields.get("csrf")) {
        return Err(notice_page(StatusCode::FORBIDDEN, "Account", "This form expired. Reload the page and try again."));
    }
    Ok((WebUser { user_id, device_id, remote }, fields))
}

/// Checks the password, and the code when the account has a second factor
/// (failures count towards the lockout and are audited).
async fn reauthenticate(s: &Services, web: &WebUser, fields: &Fields, prefix: &str) -> Result<(), &'static str> {
    let password = fields.get(&format!("{prefix}password")).to_owned();
    if let Err(e) = password_auth::verify(s, &web.user_id, password, &web.remote, AuditKind::UiaPasswordFailed).await {
        return Err(failure_text(&e, "Wrong password."));
    }
    if s.mfa.is_enabled(&web.user_id).unwrap_or(true) {
        let code = fields.get(&format!("{prefix}code"));
        if let Err(e) = password_auth::verify_code(s, &web.user_id, code, &web.remote, AuditKind::MfaFailed).await {
            return Err(failure_text(&e, "That code is not valid (or was already used)."));
        }
    }
    Ok(())
}

fn failure_text(e: &Error, otherwise: &'static str) -> &'static str {
    match e.kind() {
        ErrorKind::LimitExceeded { .. } => "Too many failed attempts. The account is locked for a while.",
        _ => otherwise,
    }
}

/// The password field (and the code field for an account with a second
/// factor) that confirm a change; `prefix` keeps the IDs unique on the page.
fn confirm_fields(prefix: &str, with_code: bool) -> String {
    let mut html = format!(
        "<label for=\"{prefix}password\">Your password</label>\
         <input id=\"{prefix}password\" name=\"{prefix}password\" type=\"password\" \
         autocomplete=\"current-password\" required>"
    );
    if with_code {
        html.push_str(&format!(
            "<label for=\"{prefix}code\">Authentication code</label>\
             <input id=\"{prefix}code\" name=\"{prefix}code\" autocomplete=\"one-time-code\" inputmode=\"numeric\" \
             required>"
        ));
    }
    html
}

fn hidden_csrf(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">")
}

/// The account page, with a notice (`Ok`) or an error (`Err`) on top.
fn account_page(s: &Services, web: &WebUser, status: StatusCode, message: Option<Result<&str, &str>>) -> Response {
    let render = || -> crate::error::Result<(String, String)> {
        let csrf = random_string(32);
        let token = hidden_csrf(&csrf);
        let mfa = s.mfa.status(&web.user_id)?;
        let top = match message {
            Some(Ok(notice)) => format!("<p role=\"status\" class=\"notice\">{}</p>", escape(notice)),
            Some(Err(error)) => error_line(Some(error)),
            None => String::new(),
        };
        let mut html = format!(
            "{top}<p>Signed in as <strong id=\"user-id\">{user}</strong>.</p>\
             <form method=\"post\" action=\"{LOGOUT_PATH}\">{token}<button type=\"submit\">Sign out</button></form>",
            user = escape(web.user_id.as_str()),
        );

        html.push_str("<h2>Two-factor authentication</h2>");
        if mfa.enabled {
            html.push_str(&format!(
                "<p id=\"totp-status\">On: signing in needs a code from your authenticator app. \
                 {} recovery codes left.</p>\
                 <form method=\"post\" action=\"{TOTP_DISABLE_PATH}\">{token}{fields}\
                 <button type=\"submit\">Turn off two-factor authentication</button></form>",
                mfa.recovery_codes_left,
                fields = confirm_fields("totp-", true),
            ));
        } else {
            html.push_str(&format!(
                "<p id=\"totp-status\">Off.</p>\
                 <form method=\"post\" action=\"{TOTP_ENROL_PATH}\">{token}{fields}\
                 <button type=\"submit\">Set up an authenticator app</button></form>",
                fields = confirm_fields("totp-", false),
            ));
        }

        html.push_str("<h2>E-mail addresses</h2><ul id=\"emails\">");
        let threepids = s.users.threepids(&web.user_id)?;
        for pid in threepids.iter().filter(|p| p.medium == "email") {
            html.push_str(&format!(
                "<li>{address} ({state})<form class=\"inline\" method=\"post\" action=\"{EMAIL_REMOVE_PATH}\">{token}\
                 <input type=\"hidden\" name=\"address\" value=\"{address}\">\
                 <button type=\"submit\">Remove</button></form></li>",
                address = escape(&pid.address),
                state = if pid.validated_at.is_some() { "verified" } else { "not verified" },
            ));
        }
        if threepids.is_empty() {
            html.push_str("<li>None.</li>");
        }
        html.push_str("</ul>");
        if s.email.enabled() {
            html.push_str(&format!(
                "<form method=\"post\" action=\"{EMAIL_ADD_PATH}\">{token}\
                 <label for=\"new-email\">Add an address</label>\
                 <input id=\"new-email\" name=\"email\" type=\"email\" autocomplete=\"email\" required>{fields}\
                 <button type=\"submit\">Send a code to this address</button></form>",
                fields = confirm_fields("email-", mfa.enabled),
            ));
        }

        html.push_str(&format!(
            "<h2>Password</h2><form method=\"post\" action=\"{CHANGE_PASSWORD_PATH}\">{token}{fields}\
             <label for=\"new-password\">New password</label>\
             <input id=\"new-password\" name=\"new_password\" type=\"password\" autocomplete=\"new-password\" required>\
             <label for=\"new-password2\">New password again</label>\
             <input id=\"new-password2\" name=\"new_password2\" type=\"password\" autocomplete=\"new-password\" \
             required>\
             <label class=\"check\"><input type=\"checkbox\" name=\"logout_others\" value=\"1\" checked> \
             Sign out all other devices</label>\
             <button type=\"submit\">Change password</button></form>",
            fields = confirm_fields("pw-", mfa.enabled),
        ));

        html.push_str(&format!(
            "<h2>Devices</h2><form method=\"post\" action=\"{DEVICES_PATH}\">{token}<ul id=\"devices\">"
        ));
        for (device_id, device) in s.sessions.devices(&web.user_id)? {
            let this = if device_id == web.device_id { " (this browser)" } else { "" };
            html.push_str(&format!(
                "<li><label class=\"check\"><input type=\"checkbox\" name=\"device\" value=\"{id}\"> \
                 {name} <code>{id}</code>{this}</label></li>",
                id = escape(device_id.as_str()),
                name = escape(device.display_name.as_deref().unwrap_or("Unnamed device")),
            ));
        }
        html.push_str(&format!(
            "</ul>{fields}<button type=\"submit\">Sign out the selected devices</button></form>",
            fields = confirm_fields("dev-", mfa.enabled),
        ));
        Ok((csrf, html))
    };
    match render() {
        Ok((csrf, html)) => page(status, "Your account", &html, &csrf),
        Err(_) => notice_page(StatusCode::INTERNAL_SERVER_ERROR, "Your account", "Something went wrong; try again."),
    }
}

async fn account(State(s): State<Arc<Services>>, request: Request) -> Response {
    let Some((user_id, device_id)) = web_user(&s, request.headers()) else {
        return password_page(StatusCode::OK, "", "", None);
    };
    let remote = super::remote_ip(&request).to_string();
    let _ = s.sessions.touch(&user_id, &device_id, &remote);
    account_page(&s, &WebUser { user_id, device_id, remote }, StatusCode::OK, None)
}

async fn logout(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (web, _) = or_page!(account_form(&s, request).await);
    if s.remove_devices(&web.user_id, DeviceSelection::One(&web.device_id), Batch::new()).await.is_err() {
        return account_page(&s, &web, StatusCode::INTERNAL_SERVER_ERROR, Some(Err("Signing out failed; try again.")));
    }
    let mut response = password_page(StatusCode::OK, "", "", None);
    set_cookie(&mut response, SESSION_COOKIE, "", Some(0));
    response
}

/// The page that shows a pending enrolment's QR code and key, and asks for
/// a code to turn the factor on.
fn enrol_page(s: &Services, web: &WebUser, status: StatusCode, message: Option<&str>) -> Response {
    let Ok(Some((enrolment, qr))) = s.mfa.pending_enrolment(&web.user_id) else {
        return account_page(s, web, StatusCode::FORBIDDEN, Some(Err("No set-up is waiting; start again.")));
    };
    let csrf = random_string(32);
    let body = format!(
        "<p>Scan this QR code with your authenticator app, or type the key into it.</p>\
         <img id=\"totp-qr\" alt=\"QR code of the key\" width=\"240\" height=\"240\" src=\"data:image/png;base64,{qr}\">\
         <p>Key: <code id=\"totp-secret\">{secret}</code></p>{error}\
         <form method=\"post\" action=\"{TOTP_CONFIRM_PATH}\">{token}\
         <label for=\"code\">Code from the app</label>\
         <input id=\"code\" name=\"code\" autocomplete=\"one-time-code\" inputmode=\"numeric\" required>\
         <button type=\"submit\">Turn on</button></form><p><a href=\"{ACCOUNT_PATH}\">Cancel</a></p>",
        secret = escape(&enrolment.secret),
        error = error_line(message),
        token = hidden_csrf(&csrf),
    );
    page(status, "Set up an authenticator app", &body, &csrf)
}

async fn totp_enrol(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (web, fields) = or_page!(account_form(&s, request).await);
    if let Err(text) = reauthenticate(&s, &web, &fields, "totp-").await {
        return account_page(&s, &web, StatusCode::FORBIDDEN, Some(Err(text)));
    }
    if let Err(e) = s.mfa.begin(&web.user_id).await {
        return account_page(&s, &web, e.status(), Some(Err("Two-factor authentication is already on.")));
    }
    enrol_page(&s, &web, StatusCode::OK, None)
}

async fn totp_confirm(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (web, fields) = or_page!(account_form(&s, request).await);
    match s.mfa.confirm(&web.user_id, fields.get("code")).await {
        Ok(codes) => {
            tracing::info!(user = %web.user_id, "TOTP enabled on the account page");
            let list: String = codes.iter().map(|c| format!("<li><code>{}</code></li>", escape(c))).collect();
            let body = format!(
                "<p>Two-factor authentication is on.</p>\
                 <p>Keep these recovery codes somewhere safe. Each one signs you in once if you lose your \
                 authenticator app. <strong>They are shown only now.</strong></p><ul id=\"recovery-codes\">{list}</ul>\
                 <p><a href=\"{ACCOUNT_PATH}\">I saved them: back to my account</a></p>"
            );
            page(StatusCode::OK, "Recovery codes", &body, &random_string(32))
        }
        Err(_) => enrol_page(&s, &web, StatusCode::FORBIDDEN, Some("That code is not valid; try the current one.")),
    }
}

async fn totp_disable(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (web, fields) = or_page!(account_form(&s, request).await);
    if let Err(text) = reauthenticate(&s, &web, &fields, "totp-").await {
        return account_page(&s, &web, StatusCode::FORBIDDEN, Some(Err(text)));
    }
    if s.mfa.disable(&web.user_id).await.is_err() {
        return account_page(
            &s,
            &web,
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(Err("Something went wrong; try again.")),
        );
    }
    tracing::info!(user = %web.user_id, "TOTP disabled on the account page");
    account_page(&s, &web, StatusCode::OK, Some(Ok("Two-factor authentication is off.")))
}

async fn change_password(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (web, fields) = or_page!(account_form(&s, request).await);
    if let Err(text) = reauthenticate(&s, &web, &fields, "pw-").await {
        return account_page(&s, &web, StatusCode::FORBIDDEN, Some(Err(text)));
    }
    let new = fields.get("new_password");
    if new != fields.get("new_password2") {
        return account_page(&s, &web, StatusCode::BAD_REQUEST, Some(Err("The new passwords do not match.")));
    }
    if let Err(e) = s.users.check_password_strength(new) {
        return account_page(&s, &web, StatusCode::BAD_REQUEST, Some(Err(e.message())));
    }
    let logout = (fields.get("logout_others") == "1").then_some(Some(web.device_id.as_ref()));
    match s.change_password(&web.user_id, new.to_owned(), logout).await {
        Ok(()) => account_page(&s, &web, StatusCode::OK, Some(Ok("Your password was changed."))),
        Err(_) => {
            account_page(&s, &web, StatusCode::INTERNAL_SERVER_ERROR, Some(Err("Something went wrong; try again.")))
        }
    }
}

async fn sign_out_devices(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (web, fields) = or_page!(account_form(&s, request).await);
    let devices: Vec<OwnedDeviceId> = fields.all("device").map(OwnedDeviceId::from).collect();
    if devices.is_empty() {
        return account_page(&s, &web, StatusCode::BAD_REQUEST, Some(Err("Select the devices to sign out.")));
    }
    if let Err(text) = reauthenticate(&s, &web, &fields, "dev-").await {
        return account_page(&s, &web, StatusCode::FORBIDDEN, Some(Err(text)));
    }
    if s.remove_devices(&web.user_id, DeviceSelection::List(&devices), Batch::new()).await.is_err() {
        return account_page(
            &s,
            &web,
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(Err("Something went wrong; try again.")),
        );
    }
    if devices.contains(&web.device_id) {
        let mut response = password_page(StatusCode::OK, "", "", Some("This browser was signed out too."));
        set_cookie(&mut response, SESSION_COOKIE, "", Some(0));
        return response;
    }
    let text = if devices.len() == 1 { "1 device was signed out." } else { "The devices were signed out." };
    account_page(&s, &web, StatusCode::OK, Some(Ok(text)))
}

/// The page asking for the code sent to `address`; the form posts to
/// `action` with the hidden field `hidden`.
fn emailed_code_page(
    status: StatusCode,
    address: &str,
    then: &str,
    action: &str,
    hidden: (&str, &str),
    message: Option<&str>,
) -> Response {
    let intro = format!("We sent a code to <strong>{}</strong>. {then}", escape(address));
    code_form_page(status, "Confirm your e-mail address", &intro, action, hidden, message)
}

/// The code form for an address being added; `session` is `sid.client_secret`.
fn email_code_page(status: StatusCode, address: &str, session: &str, message: Option<&str>) -> Response {
    let then = "Enter it here, or open the link in the e-mail.";
    emailed_code_page(status, address, then, EMAIL_CONFIRM_PATH, ("session", session), message)
}

async fn email_add(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (web, fields) = or_page!(account_form(&s, request).await);
    if let Err(text) = reauthenticate(&s, &web, &fields, "email-").await {
        return account_page(&s, &web, StatusCode::FORBIDDEN, Some(Err(text)));
    }
    let address = match normalise_address(fields.get("email")) {
        Ok(a) => a,
        Err(_) => return account_page(&s, &web, StatusCode::BAD_REQUEST, Some(Err("That is not an e-mail address."))),
    };
    if !matches!(s.users.email_owner(&address), Ok(None)) {
        return account_page(&s, &web, StatusCode::BAD_REQUEST, Some(Err("This e-mail address is already in use.")));
    }
    if s.ratelimit.check(Action::Registration, &web.remote).is_err() {
        return account_page(&s, &web, StatusCode::TOO_MANY_REQUESTS, Some(Err("Too many requests; wait a little.")));
    }
    let secret = random_string(32);
    match s.email.request_token(Purpose::AddThreepid, &address, &secret, 1, None, None).await {
        Ok(sid) => email_code_page(StatusCode::OK, &address, &format!("{sid}.{secret}"), None),
        Err(e) => account_page(&s, &web, e.status(), Some(Err(e.message()))),
    }
}

async fn email_confirm(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (web, fields) = or_page!(account_form(&s, request).await);
    let session = fields.get("session");
    let Some((sid, secret)) = session.split_once('.') else {
        return account_page(&s, &web, StatusCode::BAD_REQUEST, Some(Err("The form was incomplete.")));
    };
    match s.email.submit_code(sid, Some(secret), fields.get("code")).await {
        Ok(Submitted::Verified { .. }) => {}
        Ok(Submitted::Wrong) => {
            let address = s.email.session_address(sid).ok().flatten().unwrap_or_default();
            return email_code_page(StatusCode::FORBIDDEN, &address, session, Some("That code is not valid."));
        }
        _ => return account_page(&s, &web, StatusCode::FORBIDDEN, Some(Err("This code expired; start again."))),
    }
    let added = match s.email.verified_email(sid, secret, Purpose::AddThreepid) {
        Ok(Some(address)) => s.users.add_verified_email(&web.user_id, &address).await,
        _ => Err(crate::err!(ThreepidAuthFailed, "not verified")),
    };
    match added {
        Ok(()) => {
            s.email.finish(sid).await;
            account_page(&s, &web, StatusCode::OK, Some(Ok("The address was added.")))
        }
        Err(e) => account_page(&s, &web, e.status(), Some(Err(e.message()))),
    }
}

async fn email_remove(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (web, fields) = or_page!(account_form(&s, request).await);
    match s.users.remove_threepid(&web.user_id, "email", fields.get("address")).await {
        Ok(true) => account_page(&s, &web, StatusCode::OK, Some(Ok("The address was removed."))),
        Ok(false) => account_page(&s, &web, StatusCode::BAD_REQUEST, Some(Err("This account has no such address."))),
        Err(_) => {
            account_page(&s, &web, StatusCode::INTERNAL_SERVER_ERROR, Some(Err("Something went wrong; try again.")))
        }
    }
}

#[derive(Deserialize)]
struct RegisterQuery {
    #[serde(rename = "redirectUrl")]
    redirect_url: Option<String>,
}

/// What the registration form shows again after an error (never the passwords).
#[derive(Default)]
struct RegisterValues<'a> {
    redirect_url: &'a str,
    displayname: &'a str,
    email: &'a str,
    username: &'a str,
}

fn register_page(s: &Services, status: StatusCode, values: &RegisterValues<'_>, message: Option<&str>) -> Response {
    let csrf = random_string(32);
    let email_required = s.email.enabled();
    let token_field = if s.config.registration.tokens.is_empty() {
        String::new()
    } else {
        "<label for=\"token\">Registration token</label><input id=\"token\" name=\"token\" required>".to_owned()
    };
    let email_label =
        if email_required { "E-mail (we send a code to confirm it)" } else { "E-mail (optional, not verified)" };
    let rules = format!(
        "At least {} characters{}.",
        s.config.auth.min_password_length,
        match s.config.auth.min_password_classes {
            0 | 1 => String::new(),
            n => format!(", mixing {n} of: lowercase, uppercase, digits, other characters"),
        }
    );
    let body = format!(
        "<p>Create an account on <strong>{server}</strong>.</p>{error}\
         <form method=\"post\" action=\"{REGISTER_PATH}\">{token}\
         <input type=\"hidden\" name=\"redirect_url\" value=\"{redirect}\">\
         <label for=\"displayname\">Display name</label>\
         <input id=\"displayname\" name=\"displayname\" autocomplete=\"name\" value=\"{displayname}\">\
         <label for=\"email\">{email_label}</label>\
         <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"email\" value=\"{email}\"{required}>\
         <label for=\"username\">Username</label>\
         <input id=\"username\" name=\"username\" autocomplete=\"username\" required value=\"{username}\">\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required>\
         <p class=\"hint\">{rules}</p>\
         <label for=\"password2\">Password again</label>\
         <input id=\"password2\" name=\"password2\" type=\"password\" autocomplete=\"new-password\" required>\
         {token_field}<button type=\"submit\">Create account</button></form>\
         <p>Already have an account? <a href=\"{ACCOUNT_PATH}\">Sign in</a>.</p>",
        server = escape(&s.config.server_name),
        error = error_line(message),
        token = hidden_csrf(&csrf),
        redirect = escape(values.redirect_url),
        displayname = escape(values.displayname),
        email = escape(values.email),
        username = escape(values.username),
        required = if email_required { " required" } else { "" },
    );
    page(status, "Create an account", &body, &csrf)
}

async fn register_form(State(s): State<Arc<Services>>, Query(query): Query<RegisterQuery>) -> Response {
    if !s.config.registration.enabled {
        return notice_page(StatusCode::FORBIDDEN, "Create an account", "Registration is disabled on this server.");
    }
    let redirect_url = query.redirect_url.unwrap_or_default();
    if !redirect_url.is_empty() && !redirect_allowed(&s, &redirect_url) {
        return notice_page(
            StatusCode::BAD_REQUEST,
            "Create an account",
            "Signing up for this address is not allowed.",
        );
    }
    register_page(&s, StatusCode::OK, &RegisterValues { redirect_url: &redirect_url, ..Default::default() }, None)
}

/// Makes the account and sends the browser on: to the client with a login
/// token, or to the account page with a new session.
async fn complete_signup(s: &Services, signup: Signup, redirect_url: &str) -> Result<Response, Error> {
    let user_id = signup.user_id.clone();
    let remote = signup.remote.clone();
    if redirect_url.is_empty() {
        let signup = Signup { device: Some((None, Some(WEB_DEVICE_NAME.to_owned()))), ..signup };
        let issued = create_account(s, signup).await?.ok_or_else(|| Error::internal("no device was made"))?;
        return Ok(start_web_session(see_other(ACCOUNT_PATH), &issued.access_token));
    }
    create_account(s, Signup { device: None, ..signup }).await?;
    Ok(finish(s, &user_id, redirect_url, &remote).await)
}

async fn register(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (headers, remote, fields) = or_page!(read_fields(&s, request).await);
    let values = RegisterValues {
        redirect_url: fields.get("redirect_url"),
        displayname: fields.get("displayname").trim(),
        email: fields.get("email").trim(),
        username: fields.get("username").trim(),
    };
    let again = |status: StatusCode, message: &str| register_page(&s, status, &values, Some(message));
    if !s.config.registration.enabled {
        return notice_page(StatusCode::FORBIDDEN, "Create an account", "Registration is disabled on this server.");
    }
    if !csrf_ok(&headers, fields.get("csrf")) {
        return again(StatusCode::FORBIDDEN, "This form expired; please send it again.");
    }
    if !values.redirect_url.is_empty() && !redirect_allowed(&s, values.redirect_url) {
        return notice_page(
            StatusCode::BAD_REQUEST,
            "Create an account",
            "Signing up for this address is not allowed.",
        );
    }
    if s.ratelimit.check(Action::Registration, &remote).is_err() {
        return again(StatusCode::TOO_MANY_REQUESTS, "Too many attempts; wait a little and try again.");
    }
    if !s.config.registration.tokens.is_empty() && !token_is_valid(&s, fields.get("token")) {
        return again(StatusCode::FORBIDDEN, "The registration token is not valid.");
    }
    let password = fields.get("password");
    if password != fields.get("password2") {
        return again(StatusCode::BAD_REQUEST, "The passwords do not match.");
    }
    if let Err(e) = s.users.check_password_strength(password) {
        return again(StatusCode::BAD_REQUEST, e.message());
    }
    if values.displayname.chars().count() > 256 {
        return again(StatusCode::BAD_REQUEST, "The display name is too long.");
    }
    let user_id = match new_user_id(&s, Some(values.username)) {
        Ok(id) => id,
        Err(e) => return again(StatusCode::BAD_REQUEST, e.message()),
    };
    let email = match values.email {
        "" if s.email.enabled() => return again(StatusCode::BAD_REQUEST, "An e-mail address is required."),
        "" => None,
        e => match normalise_address(e) {
            Ok(a) => Some(a),
            Err(_) => return again(StatusCode::BAD_REQUEST, "That is not an e-mail address."),
        },
    };
    let displayname = (!values.displayname.is_empty()).then(|| values.displayname.to_owned());
    let Some(address) = email.clone().filter(|_| s.email.enabled()) else {
        // No verification: the address (if any) is stored unverified.
        let signup = Signup {
            user_id,
            password: password.to_owned(),
            displayname,
            email,
            email_verified: false,
            device: None,
            refresh_token: false,
            remote,
        };
        return match complete_signup(&s, signup, values.redirect_url).await {
            Ok(response) => response,
            Err(e) => again(e.status(), e.message()),
        };
    };
    if !matches!(s.users.email_owner(&address), Ok(None)) {
        return again(StatusCode::BAD_REQUEST, "This e-mail address is already in use.");
    }
    let client_secret = random_string(32);
    let sid = match s.email.request_token(Purpose::Registration, &address, &client_secret, 1, None, None).await {
        Ok(sid) => sid,
        Err(e) => return again(e.status(), e.message()),
    };
    let pending = s.sso.signups.insert(PendingSignup {
        user_id,
        password: password.to_owned(),
        displayname,
        email: address.clone(),
        sid,
        client_secret,
        redirect_url: values.redirect_url.to_owned(),
    });
    signup_code_page(StatusCode::OK, &address, &pending, None)
}

fn signup_code_page(status: StatusCode, address: &str, pending: &str, message: Option<&str>) -> Response {
    let then = "Enter it here to finish creating your account.";
    emailed_code_page(status, address, then, REGISTER_CONFIRM_PATH, ("pending", pending), message)
}

async fn register_confirm(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (headers, remote, fields) = or_page!(read_fields(&s, request).await);
    let id = fields.get("pending");
    let Some(signup) = s.sso.signups.get(id) else {
        return notice_page(StatusCode::FORBIDDEN, "Create an account", "This sign-up expired; start again.");
    };
    if !csrf_ok(&headers, fields.get("csrf")) {
        return signup_code_page(StatusCode::FORBIDDEN, &signup.email, id, Some("This form expired; send it again."));
    }
    match s.email.submit_code(&signup.sid, Some(&signup.client_secret), fields.get("code")).await {
        Ok(Submitted::Verified { .. }) => {}
        Ok(Submitted::Wrong) => {
            return signup_code_page(StatusCode::FORBIDDEN, &signup.email, id, Some("That code is not valid."));
        }
        _ => {
            s.sso.signups.take(id);
            return notice_page(StatusCode::FORBIDDEN, "Create an account", "This code expired; start again.");
        }
    }
    s.sso.signups.take(id);
    let redirect_url = signup.redirect_url.clone();
    let account = Signup {
        user_id: signup.user_id,
        password: signup.password,
        displayname: signup.displayname,
        email: Some(signup.email),
        email_verified: true,
        device: None,
        refresh_token: false,
        remote,
    };
    match complete_signup(&s, account, &redirect_url).await {
        Ok(response) => {
            s.email.finish(&signup.sid).await;
            response
        }
        Err(e) => notice_page(e.status(), "Create an account", e.message()),
    }
}

#[derive(Deserialize)]
struct VerifyQuery {
    sid: Option<String>,
    code: Option<String>,
}

/// The link in a verification e-mail shows a button rather than verifying
/// at once, so that mail scanners opening links verify nothing.
async fn verify_form(State(s): State<Arc<Services>>, Query(query): Query<VerifyQuery>) -> Response {
    let title = "Confirm your e-mail address";
    let (Some(sid), Some(code)) = (query.sid, query.code) else {
        return notice_page(StatusCode::BAD_REQUEST, title, "The link is incomplete.");
    };
    // Say what confirming does, so that nobody approves a change they did
    // not ask for (someone else may have typed their address).
    let Ok(Some((purpose, address, account))) = s.email.describe(&sid) else {
        return notice_page(StatusCode::FORBIDDEN, title, "This link expired; ask for a new code.");
    };
    let server = escape(&s.config.server_name);
    let address = escape(&address);
    let (what, button) = match purpose {
        Purpose::Registration => {
            (format!("A new account on <strong>{server}</strong> is to use <strong>{address}</strong>."), "Confirm")
        }
        Purpose::AddThreepid => (
            format!("<strong>{address}</strong> is to be added to an account on <strong>{server}</strong>."),
            "Confirm",
        ),
        Purpose::PasswordReset => (
            format!(
                "This allows the password of <strong>{}</strong> on <strong>{server}</strong> to be reset, and \
                 signs that account out everywhere.",
                escape(account.as_deref().unwrap_or("the account that uses this address"))
            ),
            "Allow the password reset",
        ),
    };
    let csrf = random_string(32);
    let body = format!(
        "<p id=\"purpose\">{what}</p><p>Confirm only if you asked for this yourself. If not, close this page: \
         nothing changes.</p>\
         <form method=\"post\" action=\"{VERIFY_PATH}\">{token}\
         <input type=\"hidden\" name=\"sid\" value=\"{sid}\"><input type=\"hidden\" name=\"code\" value=\"{code}\">\
         <button type=\"submit\">{button}</button></form>",
        token = hidden_csrf(&csrf),
        sid = escape(&sid),
        code = escape(&code),
    );
    page(StatusCode::OK, title, &body, &csrf)
}

async fn verify(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (headers, _, fields) = or_page!(read_fields(&s, request).await);
    let title = "Confirm your e-mail address";
    if !csrf_ok(&headers, fields.get("csrf")) {
        return notice_page(StatusCode::FORBIDDEN, title, "This form expired; open the link again.");
    }
    match s.email.submit_code(fields.get("sid"), None, fields.get("code")).await {
        Ok(Submitted::Verified { next_link: Some(link) }) => see_other(&link),
        Ok(Submitted::Verified { next_link: None }) => {
            notice_page(StatusCode::OK, title, "Your e-mail address is confirmed. You can go back to your app.")
        }
        Ok(Submitted::Wrong) => notice_page(StatusCode::FORBIDDEN, title, "This link is not valid."),
        _ => notice_page(StatusCode::FORBIDDEN, title, "This link expired; ask for a new code."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::sessions::Device;

    fn device(name: &str, age_secs: u64) -> Device {
        Device {
            display_name: Some(name.to_owned()),
            last_seen_ip: None,
            last_seen_ts: None,
            created_ts: crate::util::now_ms() - age_secs * 1000,
            access_token_hash: String::new(),
            refresh_token_hash: None,
        }
    }

    #[test]
    fn account_page_sessions_end_after_their_lifetime_and_other_devices_never() {
        assert!(!web_session_expired(&device(WEB_DEVICE_NAME, 60)));
        assert!(web_session_expired(&device(WEB_DEVICE_NAME, WEB_SESSION_SECS + 60)));
        assert!(!web_session_expired(&device("Element", WEB_SESSION_SECS * 10)));
    }
}
