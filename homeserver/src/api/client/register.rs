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
        ratelimit::Action,
        uiaa::{self, StageResult},
        users::NewAccount,
    },
    storage::Batch,
    util::random_string,
};

fn registration_flows(s: &Services) -> &'static [&'static [&'static str]] {
    if s.config.registration.tokens.is_empty() { &[&[uiaa::DUMMY]] } else { &[&[uiaa::REGISTRATION_TOKEN]] }
}

fn token_is_valid(s: &Services, token: &str) -> bool {
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
    let email = field("email")?;
    if let Some(e) = &email {
        let valid = e.len() <= 254
            && !e.chars().any(char::is_whitespace)
            && e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@'));
        if !valid {
            return Err(err!(InvalidParam, "`email` is not an e-mail address"));
        }
    }
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
    let user_id = match &req.username {
        Some(name) => {
            let id = s.users.user_id(name)?;
            if s.users.exists(&id)? {
                return Err(err!(UserInUse, "The desired user ID is already taken"));
            }
            id
        }
        None => loop {
            let id = s.users.user_id(&random_string(12).to_lowercase())?;
            if !s.users.exists(&id)? {
                break id;
            }
        },
    };
    let (displayname, email) = profile_extras(body.json.as_ref())?;

    let flows = registration_flows(&s);
    let services = s.clone();
    s.uiaa
        .authenticate(flows, req.auth.as_ref(), None, |auth| {
            let result = match auth {
                AuthData::Dummy(_) => StageResult::Done,
                AuthData::RegistrationToken(t) if token_is_valid(&services, &t.token) => StageResult::Done,
                AuthData::RegistrationToken(_) => StageResult::Failed(err!(Forbidden, "Invalid registration token")),
                _ => StageResult::Failed(err!(Forbidden, "Unsupported authentication stage")),
            };
            async move { Ok(result) }
        })
        .await?;

    let Some(password) = req.password.clone() else {
        return Err(err!(MissingParam, "A password is required"));
    };
    s.users.check_password_strength(&password)?;
    // The account and its first device are written together, with one flush.
    let mut first_device = Batch::new();
    let issued = if req.inhibit_login {
        None
    } else {
        Some(s.sessions.login_batch(
            &user_id,
            req.device_id.clone(),
            req.initial_device_display_name.clone(),
            req.refresh_token,
            Some(body.remote_str()),
            &mut first_device,
        )?)
    };
    s.users
        .create(&user_id, NewAccount { password: Some(password), admin: false, displayname, email }, first_device)
        .await?;
    tracing::info!(user = %user_id, "registered a new user");

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
