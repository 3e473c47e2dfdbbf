use std::sync::Arc;

use ruma::api::client::{
    account::{
        check_registration_token_validity, get_username_availability,
        register::{self, RegistrationKind},
    },
    uiaa::AuthData,
};

use crate::{
    api::Ruma,
    err,
    error::Result,
    service::{
        Services,
        email::{Purpose, normalise_address},
        ratelimit::Action,
        sessions::Issued,
        uiaa::{self, StageResult},
        users::NewAccount,
    },
    storage::Batch,
    util::random_string,
};

/// The registration flow: a token when tokens are configured, then a
/// verified e-mail address when the server sends e-mail; otherwise the
/// dummy stage.
fn registration_flows(s: &Services) -> &'static [&'static [&'static str]] {
    match (s.config.registration.tokens.is_empty(), s.email.enabled()) {
        (true, false) => &[&[uiaa::DUMMY]],
        (false, false) => &[&[uiaa::REGISTRATION_TOKEN]],
        (true, true) => &[&[uiaa::EMAIL_IDENTITY]],
        (false, true) => &[&[uiaa::REGISTRATION_TOKEN, uiaa::EMAIL_IDENTITY]],
    }
}

/// What a new account is made of, from the API or the registration page.
pub(crate) struct Signup {
    pub user_id: ruma::OwnedUserId,
    pub password: String,
    pub displayname: Option<String>,
    pub email: Option<String>,
    pub email_verified: bool,
    /// The first device: its ID (or a new one) and display name; `None`: no login.
    pub device: Option<(Option<ruma::OwnedDeviceId>, Option<String>)>,
    pub refresh_token: bool,
    pub remote: String,
}

/// Creates the account and, unless `device` is `None`, logs its first
/// device in, in one durable write.
pub(crate) async fn create_account(s: &Services, signup: Signup) -> Result<Option<Issued>> {
    s.users.check_password_strength(&signup.password)?;
    let mut first_device = Batch::new();
    let issued = match signup.device {
        None => None,
        Some((device_id, name)) => Some(s.sessions.login_batch(
            &signup.user_id,
            device_id,
            name,
            signup.refresh_token,
            Some(signup.remote),
            &mut first_device,
        )?),
    };
    let account = NewAccount {
        password: Some(signup.password),
        admin: false,
        displayname: signup.displayname,
        email: signup.email,
        email_verified: signup.email_verified,
    };
    s.users.create(&signup.user_id, account, first_device).await?;
    tracing::info!(user = %signup.user_id, "registered a new user");
    Ok(issued)
}

/// A new user ID: the requested localpart, or a random free one.
pub(crate) fn new_user_id(s: &Services, username: Option<&str>) -> Result<ruma::OwnedUserId> {
    match username {
        Some(name) => {
            let id = s.users.user_id(name)?;
            if s.users.exists(&id)? {
                return Err(err!(UserInUse, "The desired user ID is already taken"));
            }
            Ok(id)
        }
        None => loop {
            let id = s.users.user_id(&random_string(12).to_lowercase())?;
            if !s.users.exists(&id)? {
                break Ok(id);
            }
        },
    }
}

pub(crate) fn token_is_valid(s: &Services, token: &str) -> bool {
    s.config.registration.tokens.iter().any(|t| t == token)
}

/// Reads the optional `displayname` and `email` registration fields.
fn profile_extras(json: Option<&serde_json::Value>) -> Result<(Option<String>, Option<String>)> {
    let field = |name: &str| -> Result<Option<String>> {
        match json.and_then(|j| j.get(name)) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(err!(BadJson, "`{name}` must be a string")),
        }
    };
    let displayname = field("displayname")?;
    if displayname.as_ref().is_some_and(|d| d.chars().count() > 256) {
        return Err(err!(InvalidParam, "The display name is longer than 256 characters"));
    }
    let email = field("email")?.map(|e| normalise_address(&e)).transpose()?;
    Ok((displayname, email))
}

/// `POST /_matrix/client/v3/register`
pub async fn register_route(s: Arc<Services>, body: Ruma<register::v3::Request>) -> Result<register::v3::Response> {
    if body.body.kind == RegistrationKind::Guest {
        return Err(err!(Forbidden, "Guest access is not enabled on this server"));
    }
    if !s.config.registration.enabled {
        return Err(err!(Forbidden, "Registration is disabled on this server"));
    }
    s.ratelimit.check(Action::Registration, &body.remote_str())?;

    let req = &body.body;
    let user_id = new_user_id(&s, req.username.as_deref())?;
    let (displayname, mut email) = profile_extras(body.json.as_ref())?;

    let flows = registration_flows(&s);
    let services = s.clone();
    // The verified address and its session, when the e-mail stage passes.
    let verified = std::sync::Mutex::new(None::<(String, String)>);
    s.uiaa
        .authenticate(flows, req.auth.as_ref(), None, |auth| {
            let result = match auth {
                AuthData::Dummy(_) => Ok(StageResult::Done),
                AuthData::RegistrationToken(t) if token_is_valid(&services, &t.token) => Ok(StageResult::Done),
                AuthData::RegistrationToken(_) => {
                    Ok(StageResult::Failed(err!(Forbidden, "Invalid registration token")))
                }
                AuthData::EmailIdentity(e) => {
                    let creds = &e.thirdparty_id_creds;
                    match services.email.verified_email(
                        creds.sid.as_str(),
                        creds.client_secret.as_str(),
                        Purpose::Registration,
                    ) {
                        Ok(Some(address)) => match services.users.email_owner(&address) {
                            Ok(Some(_)) => {
                                Ok(StageResult::Failed(err!(ThreepidInUse, "This e-mail address is already in use")))
                            }
                            Ok(None) => {
                                *verified.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Some((address, creds.sid.to_string()));
                                Ok(StageResult::Done)
                            }
                            Err(e) => Err(e),
                        },
                        Ok(None) => Ok(StageResult::Failed(err!(
                            ThreepidAuthFailed,
                            "The e-mail address is not verified yet: enter the code or open the link sent to it"
                        ))),
                        Err(e) => Err(e),
                    }
                }
                _ => Ok(StageResult::Failed(err!(Forbidden, "Unsupported authentication stage"))),
            };
            async move { result }
        })
        .await?;

    let verified = verified.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut session = None;
    if s.email.enabled() {
        // The e-mail stage is the last of the flow, so it passed in this request.
        let Some((address, sid)) = verified else {
            return Err(err!(ThreepidAuthFailed, "A verified e-mail address is required"));
        };
        email = Some(address);
        session = Some(sid);
    }
    let Some(password) = req.password.clone() else {
        return Err(err!(MissingParam, "A password is required"));
    };
    let signup = Signup {
        user_id: user_id.clone(),
        password,
        displayname,
        email,
        email_verified: session.is_some(),
        device: (!req.inhibit_login).then(|| (req.device_id.clone(), req.initial_device_display_name.clone())),
        refresh_token: req.refresh_token,
        remote: body.remote_str(),
    };
    let issued = create_account(&s, signup).await?;
    if let Some(sid) = session {
        s.email.finish(&sid).await;
    }

    let mut response = register::v3::Response::new(user_id.clone());
    let Some(issued) = issued else { return Ok(response) };
    response.access_token = Some(issued.access_token);
    response.device_id = Some(issued.device_id);
    response.refresh_token = issued.refresh_token;
    response.expires_in = issued.expires_in_ms.map(std::time::Duration::from_millis);
    Ok(response)
}

/// `GET /_matrix/client/v3/register/available`
pub async fn username_available_route(
    s: Arc<Services>,
    body: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response> {
    if !s.config.registration.enabled {
        return Err(err!(Forbidden, "Registration is disabled on this server"));
    }
    s.ratelimit.check(Action::Registration, &body.remote_str())?;
    let id = s.users.user_id(&body.body.username)?;
    if s.users.exists(&id)? {
        return Err(err!(UserInUse, "The desired user ID is already taken"));
    }
    Ok(get_username_availability::v3::Response::new(true))
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`
pub async fn registration_token_validity_route(
    s: Arc<Services>,
    body: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<check_registration_token_validity::v1::Response> {
    s.ratelimit.check(Action::Registration, &body.remote_str())?;
    if !s.config.registration.enabled {
        return Err(err!(Forbidden, "Registration is disabled on this server"));
    }
    Ok(check_registration_token_validity::v1::Response::new(token_is_valid(&s, &body.body.token)))
}
