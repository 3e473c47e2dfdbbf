use std::sync::Arc;

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedUserId, UInt,
    api::client::{
        account::{ThirdPartyIdRemovalStatus, change_password, deactivate, get_3pids, whoami},
        uiaa::{AuthData, UserIdentifier},
    },
    thirdparty::{Medium, ThirdPartyIdentifierInit},
};

use crate::{
    api::Ruma,
    err,
    error::{ErrorKind, Result},
    service::{
        Services,
        audit::AuditKind,
        email::Purpose,
        password_auth,
        uiaa::{self, StageResult},
    },
};

/// Runs the UIA flow for an authenticated user: `m.login.password`, then
/// `org.hearth.login.totp` when the account has a second factor.
pub(super) async fn require_password(
    s: &Arc<Services>,
    auth: Option<&AuthData>,
    user_id: &OwnedUserId,
    remote: &str,
) -> Result<()> {
    let services = s.clone();
    let flows: &[&[&str]] =
        if s.mfa.is_enabled(user_id)? { &[&[uiaa::PASSWORD, uiaa::TOTP]] } else { &[&[uiaa::PASSWORD]] };
    s.uiaa
        .authenticate(flows, auth, Some(user_id), |auth| {
            let auth = auth.clone();
            let user_id = user_id.clone();
            let remote = remote.to_owned();
            async move {
                if auth.auth_type().is_some_and(|t| t.as_str() == uiaa::TOTP) {
                    let data = auth.data();
                    let Some(code) = data.get("code").and_then(|c| c.as_str()) else {
                        return Ok(StageResult::Failed(err!(MissingParam, "`code` is required")));
                    };
                    return match password_auth::verify_code(&services, &user_id, code, &remote, AuditKind::MfaFailed)
                        .await
                    {
                        Ok(()) => Ok(StageResult::Done),
                        Err(e) if matches!(e.kind(), ErrorKind::LimitExceeded { .. }) => Err(e),
                        Err(e) => Ok(StageResult::Failed(e)),
                    };
                }
                let AuthData::Password(p) = auth else {
                    return Ok(StageResult::Failed(err!(Forbidden, "Unsupported authentication stage")));
                };
                #[allow(deprecated)]
                let named = match &p.identifier {
                    UserIdentifier::Matrix(m) => services.users.resolve_login_user(&m.user).ok(),
                    _ => None,
                };
                if named.as_ref() != Some(&user_id) {
                    return Ok(StageResult::Failed(err!(
                        Forbidden,
                        "The identifier does not match the logged-in user"
                    )));
                }
                match password_auth::verify(
                    &services,
                    &user_id,
                    p.password.clone(),
                    &remote,
                    AuditKind::UiaPasswordFailed,
                )
                .await
                {
                    Ok(()) => Ok(StageResult::Done),
                    Err(e) if matches!(e.kind(), ErrorKind::LimitExceeded { .. }) => Err(e),
                    Err(e) => Ok(StageResult::Failed(e)),
                }
            }
        })
        .await
}

/// `GET /_matrix/client/v3/account/whoami`
pub async fn whoami_route(_: Arc<Services>, body: Ruma<whoami::v3::Request>) -> Result<whoami::v3::Response> {
    let mut response = whoami::v3::Response::new(body.user()?.to_owned(), false);
    response.device_id = body.sender_device.clone();
    Ok(response)
}

/// `POST /_matrix/client/v3/account/password`
///
/// With an access token: UIA with the password (and the second factor).
/// Without one (a forgotten password): UIA `m.login.email.identity` with a
/// session of `/account/password/email/requestToken`; the account is the
/// one the verified address belongs to. A second factor stays in place, so
/// the new password alone still does not log in to such an account.
pub async fn change_password_route(
    s: Arc<Services>,
    body: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    if body.sender_user.is_none() {
        return reset_password_by_email(&s, &body).await;
    }
    let user_id = body.user()?.to_owned();
    require_password(&s, body.body.auth.as_ref(), &user_id, &body.remote_str()).await?;
    s.users.check_password_strength(&body.body.new_password)?;
    let logout = body.body.logout_devices.then_some(body.sender_device.as_deref());
    s.change_password(&user_id, body.body.new_password.clone(), logout).await?;
    Ok(change_password::v3::Response::new())
}

async fn reset_password_by_email(
    s: &Arc<Services>,
    body: &Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    if !s.email.enabled() {
        return Err(err!(MissingToken, "Missing access token (this server cannot reset passwords by e-mail)"));
    }
    let owner = std::sync::Mutex::new(None::<(OwnedUserId, String)>);
    let services = s.clone();
    s.uiaa
        .authenticate(&[&[uiaa::EMAIL_IDENTITY]], body.body.auth.as_ref(), None, |auth| {
            let result = (|| {
                let AuthData::EmailIdentity(e) = auth else {
                    return Ok(StageResult::Failed(err!(Forbidden, "Unsupported authentication stage")));
                };
                let creds = &e.thirdparty_id_creds;
                let verified = services.email.verified_email(
                    creds.sid.as_str(),
                    creds.client_secret.as_str(),
                    Purpose::PasswordReset,
                )?;
                let Some(user_id) = verified.map(|a| services.users.email_owner(&a)).transpose()?.flatten() else {
                    return Ok(StageResult::Failed(err!(
                        ThreepidAuthFailed,
                        "The e-mail address is not verified yet: enter the code or open the link sent to it"
                    )));
                };
                *owner.lock().unwrap_or_else(|e| e.into_inner()) = Some((user_id, creds.sid.to_string()));
                Ok(StageResult::Done)
            })();
            async move { result }
        })
        .await?;
    let Some((user_id, sid)) = owner.into_inner().unwrap_or_else(|e| e.into_inner()) else {
        return Err(err!(ThreepidAuthFailed, "A verified e-mail address is required"));
    };
    s.users.check_password_strength(&body.body.new_password)?;
    let logout = body.body.logout_devices.then_some(None);
    s.change_password(&user_id, body.body.new_password.clone(), logout).await?;
    s.email.finish(&sid).await;
    s.audit.record(AuditKind::PasswordReset, Some(user_id.as_str()), &body.remote_str(), "reset by e-mail");
    tracing::info!(user = %user_id, "password reset by e-mail");
    Ok(change_password::v3::Response::new())
}

/// `POST /_matrix/client/v3/account/deactivate`
pub async fn deactivate_route(
    s: Arc<Services>,
    body: Ruma<deactivate::v3::Request>,
) -> Result<deactivate::v3::Response> {
    let user_id = body.user()?.to_owned();
    require_password(&s, body.body.auth.as_ref(), &user_id, &body.remote_str()).await?;
    s.deactivate_account(&user_id).await?;
    Ok(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}

/// `GET /_matrix/client/v3/account/3pid`
///
/// Unverified addresses are listed with `validated_at` 0.
pub async fn get_3pids_route(s: Arc<Services>, body: Ruma<get_3pids::v3::Request>) -> Result<get_3pids::v3::Response> {
    let ms = |t: u64| MilliSecondsSinceUnixEpoch(UInt::try_from(t).unwrap_or_default());
    let threepids = s
        .users
        .threepids(body.user()?)?
        .into_iter()
        .map(|p| {
            ThirdPartyIdentifierInit {
                address: p.address,
                medium: Medium::from(p.medium.as_str()),
                validated_at: ms(p.validated_at.unwrap_or(0)),
                added_at: ms(p.added_at),
            }
            .into()
        })
        .collect();
    Ok(get_3pids::v3::Response::new(threepids))
}
