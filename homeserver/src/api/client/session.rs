use std::sync::Arc;

use ruma::api::client::{
    session::{
        get_login_types::v3::{self as login_types, LoginType, PasswordLoginType, SsoLoginType, TokenLoginType},
        login::v3::{self as login, DiscoveryInfo, HomeserverInfo, LoginInfo},
        logout, logout_all, refresh_token,
    },
    uiaa::UserIdentifier,
};

use super::mfa as mfa_api;
use crate::{
    api::Ruma,
    err,
    error::{Error, ErrorKind, Result},
    service::{Services, audit::AuditKind, keys::DeviceSelection, password_auth, ratelimit::Action},
    storage::Batch,
};

/// `GET /_matrix/client/v3/login`
pub async fn get_login_types_route(_: Arc<Services>, _: Ruma<login_types::Request>) -> Result<login_types::Response> {
    let password_totp = LoginType::new(mfa_api::LOGIN_PASSWORD_TOTP, serde_json::Map::new())
        .map_err(|e| Error::internal(format!("login type: {e}")))?;
    Ok(login_types::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
        LoginType::Sso(SsoLoginType::new()),
        LoginType::Token(TokenLoginType::new()),
        password_totp,
    ]))
}

/// `POST /_matrix/client/v3/login`
pub async fn login_route(s: Arc<Services>, body: Ruma<login::Request>) -> Result<login::Response> {
    let remote = body.remote_str();
    s.ratelimit.check(Action::Login, &remote)?;
    let req = &body.body;
    let (user, password, code) = match &req.login_info {
        LoginInfo::Password(info) => {
            #[allow(deprecated)]
            let user = match (&info.identifier, &info.user) {
                (Some(UserIdentifier::Matrix(m)), _) => m.user.clone(),
                (None, Some(user)) => user.clone(),
                (Some(_), _) => return Err(err!(InvalidParam, "Only m.id.user identifiers are supported")),
                (None, None) => return Err(err!(MissingParam, "An identifier is required")),
            };
            (user, info.password.clone(), None)
        }
        LoginInfo::Token(t) => {
            let Some(user_id) = s.sso.take_token(&t.token) else {
                s.audit.record(AuditKind::LoginFailed, None, &remote, "invalid login token");
                return Err(err!(Forbidden, "Invalid or expired login token"));
            };
            // The token was issued after every factor was checked.
            return issue_login(&s, user_id, req, remote).await;
        }
        _ if req.login_info.login_type() == mfa_api::LOGIN_PASSWORD_TOTP => {
            mfa_api::password_totp_fields(body.json.as_ref())?
        }
        _ => {
            return Err(Error::with_status(
                ErrorKind::Unknown,
                http::StatusCode::BAD_REQUEST,
                format!("Unsupported login type {:?}", req.login_info.login_type()),
            ));
        }
    };
    let user_id = match s.users.resolve_login_user(&user) {
        Ok(id) => id,
        Err(e) => {
            s.audit.record(AuditKind::LoginFailed, None, &remote, "invalid user identifier");
            return Err(e);
        }
    };
    password_auth::verify(&s, &user_id, password, &remote, AuditKind::LoginFailed).await?;
    if s.mfa.is_enabled(&user_id)? {
        let Some(code) = code else {
            s.audit.record(AuditKind::MfaFailed, Some(user_id.as_str()), &remote, "second factor missing");
            return Err(err!(
                Forbidden,
                "This account has a second factor. Sign in through the browser (single sign-on) login of your \
                 client, or use the {} login type with the code",
                mfa_api::LOGIN_PASSWORD_TOTP
            ));
        };
        password_auth::verify_code(&s, &user_id, &code, &remote, AuditKind::MfaFailed).await?;
    }
    issue_login(&s, user_id, req, remote).await
}

/// Creates the session of a successful login.
async fn issue_login(
    s: &Arc<Services>,
    user_id: ruma::OwnedUserId,
    req: &login::Request,
    remote: String,
) -> Result<login::Response> {
    let issued = s
        .sessions
        .login(
            &user_id,
            req.device_id.clone(),
            req.initial_device_display_name.clone(),
            req.refresh_token,
            Some(remote),
        )
        .await?;
    let mut response = login::Response::new(user_id, issued.access_token, issued.device_id);
    response.refresh_token = issued.refresh_token;
    response.expires_in = issued.expires_in_ms.map(std::time::Duration::from_millis);
    // Only an explicitly configured base URL is pushed to clients, which switch to it.
    if !s.config.well_known.client_base_url.is_empty() {
        response.well_known = Some(DiscoveryInfo::new(HomeserverInfo::new(s.config.client_base_url())));
    }
    Ok(response)
}

/// `POST /_matrix/client/v3/refresh`
pub async fn refresh_route(
    s: Arc<Services>,
    body: Ruma<refresh_token::v3::Request>,
) -> Result<refresh_token::v3::Response> {
    let (_, issued) = s.sessions.refresh(&body.body.refresh_token).await?;
    let mut response = refresh_token::v3::Response::new(issued.access_token);
    response.refresh_token = issued.refresh_token;
    response.expires_in_ms = issued.expires_in_ms.map(std::time::Duration::from_millis);
    Ok(response)
}

/// `POST /_matrix/client/v3/logout`
pub async fn logout_route(s: Arc<Services>, body: Ruma<logout::v3::Request>) -> Result<logout::v3::Response> {
    s.remove_devices(body.user()?, DeviceSelection::One(body.device()?), Batch::new()).await?;
    Ok(logout::v3::Response::new())
}

/// `POST /_matrix/client/v3/logout/all`
pub async fn logout_all_route(
    s: Arc<Services>,
    body: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response> {
    s.remove_devices(body.user()?, DeviceSelection::AllExcept(None), Batch::new()).await?;
    Ok(logout_all::v3::Response::new())
}
