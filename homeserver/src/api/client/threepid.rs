//! E-mail addresses of accounts: verification codes (`/requestToken`), the
//! `submit_url` the responses name, and adding and removing addresses.
//! Identity servers are not used: the homeserver verifies addresses itself,
//! as the spec allows, and binding to an identity server is not offered.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Request, State},
    routing::post,
};
use ruma::{
    api::client::account::{
        ThirdPartyIdRemovalStatus, add_3pid, delete_3pid, request_3pid_management_token_via_email,
        request_password_change_token_via_email, request_registration_token_via_email,
    },
    thirdparty::Medium,
};
use serde_json::{Value, json};

use super::account::require_password;
use crate::{
    api::{AppState, Ruma, VendorRequest, sso::redirect_allowed},
    err,
    error::Result,
    service::{
        Services,
        email::{Purpose, Submitted, normalise_address},
        ratelimit::Action,
    },
};

/// Where clients may post a code (the `submit_url` of `/requestToken`).
pub const SUBMIT_PATH: &str = "/_hearth/email/submit_token";

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.route(SUBMIT_PATH, post(submit_token))
}

fn session_id(sid: String) -> Result<ruma::OwnedSessionId> {
    ruma::OwnedSessionId::try_from(sid).map_err(crate::error::Error::internal)
}

fn submit_url(s: &Services) -> String {
    format!("{}{SUBMIT_PATH}", s.config.client_base_url().trim_end_matches('/'))
}

/// Checks that the address is free (or, for a password reset, that it
/// belongs to an account) and sends a code.
async fn request_token(
    s: &Services,
    purpose: Purpose,
    email: &str,
    client_secret: &str,
    send_attempt: u64,
    next_link: Option<&str>,
    remote: &str,
) -> Result<String> {
    s.ratelimit.check(Action::Registration, remote)?;
    let address = normalise_address(email)?;
    // The account a reset would change, named in the e-mail.
    let account = match (purpose, s.users.email_owner(&address)?) {
        (Purpose::PasswordReset, None) => {
            return Err(err!(ThreepidNotFound, "No account has this verified e-mail address"));
        }
        (Purpose::PasswordReset, Some(owner)) => Some(owner),
        (_, None) => None,
        (_, Some(_)) => return Err(err!(ThreepidInUse, "This e-mail address is already in use")),
    };
    // A link the server may not redirect to is ignored, not refused: the
    // code still works, and the page then says to return to the app.
    let next_link = next_link.filter(|l| redirect_allowed(s, l)).map(str::to_owned);
    let account = account.as_ref().map(|a| a.as_str());
    s.email.request_token(purpose, &address, client_secret, send_attempt, next_link, account).await
}

/// The three e-mail `requestToken` endpoints share their request and
/// response shapes but are distinct ruma types; one definition serves them.
macro_rules! email_token_route {
    ($(#[$doc:meta])* $name:ident, $endpoint:ident, $purpose:expr, $allowed:expr) => {
        $(#[$doc])*
        pub async fn $name(s: Arc<Services>, body: Ruma<$endpoint::v3::Request>) -> Result<$endpoint::v3::Response> {
            let allowed: fn(&Services) -> Result<()> = $allowed;
            allowed(&s)?;
            let req = &body.body;
            let (secret, attempt) = (req.client_secret.as_str(), req.send_attempt.into());
            let link = req.next_link.as_deref();
            let sid = request_token(&s, $purpose, &req.email, secret, attempt, link, &body.remote_str()).await?;
            let mut response = $endpoint::v3::Response::new(session_id(sid)?);
            response.submit_url = Some(submit_url(&s));
            Ok(response)
        }
    };
}

email_token_route!(
    /// `POST /_matrix/client/v3/register/email/requestToken`
    register_email_request_token_route,
    request_registration_token_via_email,
    Purpose::Registration,
    |s| match s.config.registration.enabled {
        true => Ok(()),
        false => Err(err!(Forbidden, "Registration is disabled on this server")),
    }
);

email_token_route!(
    /// `POST /_matrix/client/v3/account/3pid/email/requestToken`
    account_email_request_token_route,
    request_3pid_management_token_via_email,
    Purpose::AddThreepid,
    |_| Ok(())
);

email_token_route!(
    /// `POST /_matrix/client/v3/account/password/email/requestToken`
    password_email_request_token_route,
    request_password_change_token_via_email,
    Purpose::PasswordReset,
    |_| Ok(())
);

/// `POST /_matrix/client/v3/account/3pid/add` (user-interactive auth)
pub async fn add_3pid_route(s: Arc<Services>, body: Ruma<add_3pid::v3::Request>) -> Result<add_3pid::v3::Response> {
    let user_id = body.user()?.to_owned();
    require_password(&s, body.body.auth.as_ref(), &user_id, &body.remote_str()).await?;
    let (sid, secret) = (body.body.sid.as_str(), body.body.client_secret.as_str());
    let Some(address) = s.email.verified_email(sid, secret, Purpose::AddThreepid)? else {
        return Err(err!(ThreepidAuthFailed, "No verified e-mail session: enter the code or open the link first"));
    };
    s.users.add_verified_email(&user_id, &address).await?;
    s.email.finish(sid).await;
    tracing::info!(user = %user_id, "added a verified e-mail address");
    Ok(add_3pid::v3::Response::new())
}

/// `POST /_matrix/client/v3/account/3pid/delete`
pub async fn delete_3pid_route(
    s: Arc<Services>,
    body: Ruma<delete_3pid::v3::Request>,
) -> Result<delete_3pid::v3::Response> {
    let user_id = body.user()?;
    let medium = match &body.body.medium {
        Medium::Email => "email",
        Medium::Msisdn => "msisdn",
        other => return Err(err!(InvalidParam, "Unknown medium {:?}", other.as_str())),
    };
    if !s.users.remove_threepid(user_id, medium, &body.body.address).await? {
        return Err(err!(ThreepidNotFound, "This account has no such address"));
    }
    Ok(delete_3pid::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}

/// `POST /_hearth/email/submit_token` `{sid, client_secret, token}` →
/// `{success}`, the identity service's `submitToken` shape that the spec's
/// `submit_url` refers to.
async fn submit_token(State(s): State<Arc<Services>>, request: Request) -> Result<Json<Value>> {
    let (json, _) = VendorRequest::read_public(&s, request).await?;
    let field = |name: &str| -> Result<String> {
        json.get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| err!(MissingParam, "`{name}` is required and must be a string"))
    };
    let (sid, secret, token) = (field("sid")?, field("client_secret")?, field("token")?);
    match s.email.submit_code(&sid, Some(&secret), &token).await? {
        Submitted::Verified { .. } => Ok(Json(json!({ "success": true }))),
        Submitted::Wrong => Ok(Json(json!({ "success": false }))),
        Submitted::Gone => Err(err!(ThreepidAuthFailed, "No such verification session, or it expired")),
    }
}
