//! The HTTP layer: ruma's typed requests sent with reqwest, raw JSON
//! requests for the bodies the crypto machine builds, user-interactive
//! authentication, and retries.

use std::borrow::Cow;
use std::sync::RwLock;
use std::time::Duration;

use ruma::api::auth_scheme::{
    AccessToken, AccessTokenOptional, AppserviceTokenOptional, AuthScheme, NoAccessToken, NoAuthentication,
    SendAccessToken,
};
use ruma::api::path_builder::{PathBuilder, SinglePath, VersionHistory};
use ruma::api::{IncomingResponseExt as _, OutgoingRequest, OutgoingRequestExt, SupportedVersions};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::ClientError;
use crate::tls::TlsTrust;

/// How many times an idempotent request is tried before giving up.
const ATTEMPTS: u32 = 5;
/// The first pause between attempts; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// How an authentication scheme gets its input from the session's token.
pub(crate) trait AuthInput: AuthScheme {
    fn input(token: Option<&str>) -> Self::Input<'_>;
}

impl AuthInput for NoAuthentication {
    fn input(_token: Option<&str>) -> Self::Input<'_> {}
}

impl AuthInput for NoAccessToken {
    fn input(_token: Option<&str>) -> Self::Input<'_> {
        SendAccessToken::None
    }
}

impl AuthInput for AccessToken {
    fn input(token: Option<&str>) -> Self::Input<'_> {
        token.map_or(SendAccessToken::None, SendAccessToken::IfRequired)
    }
}

/// `/login` takes an appservice token when there is one; this client has
/// none, so it sends no token.
impl AuthInput for AppserviceTokenOptional {
    fn input(_token: Option<&str>) -> Self::Input<'_> {
        SendAccessToken::None
    }
}

impl AuthInput for AccessTokenOptional {
    fn input(token: Option<&str>) -> Self::Input<'_> {
        token.map_or(SendAccessToken::None, SendAccessToken::IfRequired)
    }
}

/// How a path builder gets its input from the server's versions.
pub(crate) trait PathInput: PathBuilder {
    fn input(versions: &SupportedVersions) -> Self::Input<'_>;
}

impl PathInput for VersionHistory {
    fn input(versions: &SupportedVersions) -> Self::Input<'_> {
        Cow::Borrowed(versions)
    }
}

impl PathInput for SinglePath {
    fn input(_versions: &SupportedVersions) -> Self::Input<'_> {}
}

/// A connection to one homeserver, with the session's access token once
/// there is one.
#[derive(Debug)]
pub(crate) struct Http {
    client: reqwest::Client,
    base_url: String,
    access_token: RwLock<Option<String>>,
    versions: OnceCell<SupportedVersions>,
}

impl Http {
    pub(crate) fn new(base_url: &str, trust: &TlsTrust) -> Result<Self, ClientError> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            return Err(ClientError::Config(format!("`{base_url}` is not an http(s) URL")));
        }
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(90))
            .user_agent(concat!("hearth-client-sdk/", env!("CARGO_PKG_VERSION")));
        let client = trust.apply(builder)?.build().map_err(|e| ClientError::Config(format!("HTTP client: {e}")))?;
        Ok(Self { client, base_url, access_token: RwLock::new(None), versions: OnceCell::new() })
    }

    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    pub(crate) fn set_access_token(&self, token: Option<String>) {
        *self.access_token.write().unwrap_or_else(|e| e.into_inner()) = token;
    }

    fn access_token(&self) -> Option<String> {
        self.access_token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The Matrix versions the server supports, asked once.
    async fn versions(&self) -> Result<&SupportedVersions, ClientError> {
        self.versions
            .get_or_try_init(|| async {
                let answer = self.raw("GET", "/_matrix/client/versions", None).await?;
                let list = |key: &str| answer.get(key).cloned().unwrap_or(Value::Null);
                let versions: Vec<String> = serde_json::from_value(list("versions"))
                    .map_err(|e| ClientError::Response(format!("/versions: {e}")))?;
                let features = serde_json::from_value(list("unstable_features")).unwrap_or_default();
                Ok(SupportedVersions::from_parts(&versions, &features))
            })
            .await
    }

    /// Sends a typed request once.
    pub(crate) async fn send<R>(&self, request: R) -> Result<R::IncomingResponse, ClientError>
    where
        R: OutgoingRequest,
        R::Authentication: AuthInput,
        R::PathBuilder: PathInput,
    {
        let versions = self.versions().await?;
        let token = self.access_token();
        let request = request
            .try_into_http_request::<Vec<u8>>(
                &self.base_url,
                R::Authentication::input(token.as_deref()),
                R::PathBuilder::input(versions),
            )
            .map_err(|e| ClientError::Config(format!("cannot build the request: {e}")))?;
        let request = reqwest::Request::try_from(request)
            .map_err(|e| ClientError::Config(format!("cannot build the request: {e}")))?;
        let response = self.client.execute(request).await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        if !status.is_success() {
            return Err(ClientError::from_answer(status.as_u16(), &body));
        }
        let mut answer = http::Response::new(body.as_ref());
        *answer.status_mut() = status;
        *answer.headers_mut() = headers;
        R::IncomingResponse::try_from_http_response(answer).map_err(|e| ClientError::Response(e.to_string()))
    }

    /// Sends a typed request that is safe to repeat, trying again with a
    /// growing pause while the failure is transient.
    pub(crate) async fn send_with_retry<R>(&self, request: R) -> Result<R::IncomingResponse, ClientError>
    where
        R: OutgoingRequest,
        R::Authentication: AuthInput,
        R::PathBuilder: PathInput,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.send(request.clone()).await {
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    let pause = match &e {
                        ClientError::Matrix { retry_after_ms: Some(ms), .. } => Duration::from_millis(*ms),
                        _ => backoff,
                    };
                    tracing::debug!(error = %e, attempt, "retrying");
                    tokio::time::sleep(pause).await;
                    backoff *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Sends a JSON request and returns the JSON answer. Used for the
    /// requests the crypto machine builds and for endpoints whose bodies
    /// carry fields ruma's types do not have.
    pub(crate) async fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let (status, answer) = self.raw_answer(method, path, body).await?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_answer(status, &answer));
        }
        serde_json::from_slice(&answer).map_err(|e| ClientError::Response(format!("{path}: {e}")))
    }

    async fn raw_answer(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Vec<u8>), ClientError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| ClientError::Config(format!("bad HTTP method {method}")))?;
        let mut request = self.client.request(method, format!("{}{path}", self.base_url));
        if let Some(token) = self.access_token() {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        Ok((status, bytes.to_vec()))
    }

    /// Sends a JSON request that may ask for user-interactive
    /// authentication, and completes it with the password (or the dummy
    /// stage, a registration token, or a second-factor code). Other stages
    /// are refused with
    /// [`ClientError::UnsupportedAuth`].
    pub(crate) async fn with_uia(
        &self,
        method: &str,
        path: &str,
        body: Value,
        secrets: &UiaSecrets<'_>,
    ) -> Result<Value, ClientError> {
        let (status, answer) = self.raw_answer(method, path, Some(&body)).await?;
        if status != 401 {
            return parse_answer(path, status, &answer);
        }
        let info: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        let Some(flows) = info.get("flows").and_then(Value::as_array) else {
            return Err(ClientError::from_answer(status, &answer));
        };
        let session = info.get("session").cloned().unwrap_or(Value::Null);
        let stages = |flow: &Value| -> Vec<String> {
            flow["stages"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
        };
        let usable = flows.iter().map(stages).find(|flow| flow.iter().all(|stage| secrets.can_do(stage)));
        let Some(flow) = usable else {
            let offered: Vec<String> = flows.iter().map(|flow| stages(flow).join(" + ")).collect();
            return Err(ClientError::UnsupportedAuth(offered.join(" or ")));
        };
        let mut last = (status, answer);
        for stage in &flow {
            let mut body = body.clone();
            body["auth"] = secrets.auth(stage, &session);
            last = self.raw_answer(method, path, Some(&body)).await?;
            if last.0 != 401 {
                break;
            }
            let info: Value = serde_json::from_slice(&last.1).unwrap_or(Value::Null);
            if info.get("errcode").is_some() {
                // A stage failed (a wrong password, say): report the error.
                return Err(ClientError::from_answer(last.0, &last.1));
            }
        }
        parse_answer(path, last.0, &last.1)
    }

    fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(inner) = source {
            reason = format!("{reason}: {inner}");
            source = inner.source();
        }
        ClientError::Unreachable { url: self.base_url.clone(), reason }
    }
}

fn parse_answer(path: &str, status: u16, answer: &[u8]) -> Result<Value, ClientError> {
    if !(200..300).contains(&status) {
        return Err(ClientError::from_answer(status, answer));
    }
    serde_json::from_slice(answer).map_err(|e| ClientError::Response(format!("{path}: {e}")))
}

/// Hearth's second-factor UIA stage.
const TOTP_STAGE: &str = "org.hearth.login.totp";

/// What the client can answer user-interactive authentication with.
pub(crate) struct UiaSecrets<'a> {
    /// The user ID and password, for `m.login.password`.
    pub(crate) password: Option<(&'a str, &'a str)>,
    /// A registration token, for `m.login.registration_token`.
    pub(crate) registration_token: Option<&'a str>,
    /// A TOTP or recovery code, for Hearth's `org.hearth.login.totp` stage.
    pub(crate) code: Option<&'a str>,
}

impl UiaSecrets<'_> {
    fn can_do(&self, stage: &str) -> bool {
        match stage {
            "m.login.dummy" => true,
            "m.login.password" => self.password.is_some(),
            "m.login.registration_token" => self.registration_token.is_some(),
            TOTP_STAGE => self.code.is_some(),
            _ => false,
        }
    }

    fn auth(&self, stage: &str, session: &Value) -> Value {
        match stage {
            "m.login.password" => {
                let (user, password) = self.password.unwrap_or_default();
                json!({
                    "type": stage,
                    "identifier": { "type": "m.id.user", "user": user },
                    "password": password,
                    "session": session,
                })
            }
            "m.login.registration_token" => {
                json!({ "type": stage, "token": self.registration_token.unwrap_or_default(), "session": session })
            }
            TOTP_STAGE => json!({ "type": stage, "code": self.code.unwrap_or_default(), "session": session }),
            _ => json!({ "type": stage, "session": session }),
        }
    }
}
