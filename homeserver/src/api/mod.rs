//! The HTTP layer: turns requests into ruma request types, authenticates them
//! according to the endpoint's auth scheme, calls a handler and turns its
//! result into a response. Routes are registered from ruma's endpoint
//! metadata, never from hand-written path strings.

mod account_pages;
pub mod admin;
pub mod client;
mod pages;
mod sso;
mod uia_fallback;

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, RawPathParams, Request, State, rejection::RawPathParamsRejection},
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use bytes::Bytes;
use http::{Method, StatusCode, header};
use ruma::{
    OwnedDeviceId, OwnedUserId, UserId,
    api::{
        IncomingRequest, IncomingRequestExt, OutgoingResponseExt,
        auth_scheme::{AccessToken, AccessTokenOptional, AppserviceTokenOptional, NoAccessToken, NoAuthentication},
        error::{DeserializationError, FromHttpRequestError},
        path_builder::PathBuilder,
    },
};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use crate::{
    error::{Error, ErrorKind, Result},
    service::{Services, audit::AuditKind, sessions::TokenStatus},
};

/// The state every handler gets.
pub type AppState = Arc<Services>;

/// The client address of a request, as the listener determined it.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// A parsed and authenticated request.
pub struct Ruma<T> {
    pub body: T,
    pub sender_user: Option<OwnedUserId>,
    pub sender_device: Option<OwnedDeviceId>,
    /// The JSON body as sent, for fields ruma's type does not carry.
    pub json: Option<serde_json::Value>,
    /// The query string as sent (percent-encoded), for parameters ruma's type does not carry.
    pub query: String,
    pub remote: IpAddr,
}

impl<T> Ruma<T> {
    /// The authenticated user (only for endpoints that require a token).
    pub fn user(&self) -> Result<&UserId> {
        self.sender_user.as_deref().ok_or_else(|| crate::err!(MissingToken, "Missing access token"))
    }

    pub fn device(&self) -> Result<&ruma::DeviceId> {
        self.sender_device.as_deref().ok_or_else(|| crate::err!(MissingToken, "Missing access token"))
    }

    pub fn remote_str(&self) -> String {
        self.remote.to_string()
    }
}

/// What an auth scheme demands of a request, at compile time.
pub trait AuthDispatch {
    const NEEDS_TOKEN: TokenNeed;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenNeed {
    /// The endpoint takes no token; one sent anyway is ignored.
    Ignored,
    /// A token is optional; if sent it must be valid.
    Optional,
    /// A valid token is required.
    Required,
}

impl AuthDispatch for NoAuthentication {
    const NEEDS_TOKEN: TokenNeed = TokenNeed::Ignored;
}
impl AuthDispatch for NoAccessToken {
    const NEEDS_TOKEN: TokenNeed = TokenNeed::Ignored;
}
impl AuthDispatch for AccessToken {
    const NEEDS_TOKEN: TokenNeed = TokenNeed::Required;
}
impl AuthDispatch for AccessTokenOptional {
    const NEEDS_TOKEN: TokenNeed = TokenNeed::Optional;
}
/// Login and registration accept an appservice token; until appservices are
/// supported a token sent there is ignored.
impl AuthDispatch for AppserviceTokenOptional {
    const NEEDS_TOKEN: TokenNeed = TokenNeed::Ignored;
}

fn extract_token(parts: &http::request::Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(t) = value.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_owned());
    }
    let query = parts.uri.query()?;
    url_query_pairs(query).find(|(k, _)| k == "access_token").map(|(_, v)| v)
}

pub fn url_query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_decode(&s)
        };
        Some((decode(k)?, decode(v)?))
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Authenticates the request's token against the session store.
fn authenticate(
    services: &Services,
    need: TokenNeed,
    parts: &http::request::Parts,
    remote: IpAddr,
) -> Result<Option<(OwnedUserId, OwnedDeviceId)>> {
    if need == TokenNeed::Ignored {
        return Ok(None);
    }
    let Some(token) = extract_token(parts) else {
        return if need == TokenNeed::Required {
            Err(crate::err!(MissingToken, "Missing access token"))
        } else {
            Ok(None)
        };
    };
    let path = parts.uri.path();
    match services.sessions.authenticate(&token)? {
        TokenStatus::Valid { user_id, device_id } => {
            if let Err(e) = services.sessions.touch(&user_id, &device_id, &remote.to_string()) {
                tracing::warn!(error = %e, "recording last-seen failed");
            }
            Ok(Some((user_id, device_id)))
        }
        TokenStatus::Expired { user_id } => {
            services.audit.record(AuditKind::ExpiredToken, Some(user_id.as_str()), &remote.to_string(), path);
            Err(Error::new(ErrorKind::UnknownToken { soft_logout: true }, "Access token has expired"))
        }
        TokenStatus::Unknown => {
            services.audit.record(AuditKind::UnknownToken, None, &remote.to_string(), path);
            Err(Error::new(ErrorKind::UnknownToken { soft_logout: false }, "Unknown access token"))
        }
    }
}

fn deserialization_error(e: FromHttpRequestError) -> Error {
    match e {
        FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
            crate::err!(BadJson, "Invalid request body: {e}")
        }
        FromHttpRequestError::Deserialization(e) => crate::err!(InvalidParam, "Invalid request: {e}"),
        FromHttpRequestError::MethodMismatch { .. } => {
            Error::with_status(ErrorKind::Unrecognized, StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
        }
        other => crate::err!(BadJson, "Invalid request: {other}"),
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            crate::err!(TooLarge, "Request body is larger than {limit} bytes")
        } else {
            crate::err!(BadJson, "Could not read the request body")
        }
    })
}

/// The client address of a request, as the listener determined it.
pub(crate) fn remote_ip(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ClientIp>()
        .map(|c| c.0)
        .or_else(|| request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// A request body that must be a JSON object.
fn json_object(bytes: &[u8]) -> Result<serde_json::Value> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| crate::err!(NotJson, "Request body is not valid JSON"))?;
    if !value.is_object() {
        return Err(crate::err!(BadJson, "Request body must be a JSON object"));
    }
    Ok(value)
}

/// An authenticated request to a vendor-prefixed JSON endpoint (one ruma
/// has no type for).
pub struct VendorRequest {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// The body (an empty object when there is none).
    pub json: serde_json::Value,
    pub remote: IpAddr,
}

impl VendorRequest {
    /// Reads, limits and authenticates the request (an access token is
    /// required).
    pub async fn read(services: &Services, request: Request) -> Result<Self> {
        let remote = remote_ip(&request);
        let (parts, body) = request.into_parts();
        let bytes = read_body(body, services.config.limits.max_request_bytes).await?;
        let (user_id, device_id) = authenticate(services, TokenNeed::Required, &parts, remote)?
            .ok_or_else(|| crate::err!(MissingToken, "Missing access token"))?;
        let json = if bytes.is_empty() { serde_json::json!({}) } else { json_object(&bytes)? };
        Ok(Self { user_id, device_id, json, remote })
    }

    /// Reads and limits the JSON body of an endpoint that needs no access token.
    pub async fn read_public(services: &Services, request: Request) -> Result<(serde_json::Value, IpAddr)> {
        let remote = remote_ip(&request);
        let bytes = read_body(request.into_body(), services.config.limits.max_request_bytes).await?;
        Ok((json_object(&bytes)?, remote))
    }
}

/// Parses, authenticates and dispatches one request.
async fn dispatch<Req, H, Fut>(
    services: Arc<Services>,
    path_args: Vec<String>,
    request: Request,
    handler: H,
) -> Result<Response>
where
    Req: IncomingRequest + Send + 'static,
    Req::Authentication: AuthDispatch,
    H: FnOnce(Arc<Services>, Ruma<Req>) -> Fut,
    Fut: Future<Output = Result<Req::OutgoingResponse>>,
{
    let remote = remote_ip(&request);
    let (parts, body) = request.into_parts();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let bytes = read_body(body, services.config.limits.max_request_bytes).await?;
    let auth = authenticate(&services, <Req::Authentication as AuthDispatch>::NEEDS_TOKEN, &parts, remote)?;

    let has_body = !bytes.is_empty() && !matches!(parts.method, Method::GET | Method::HEAD);
    let json = if has_body { Some(json_object(&bytes)?) } else { None };
    let body_slice: &[u8] = if has_body { &bytes } else { b"" };
    let http_request = http::Request::from_parts(parts, body_slice);
    let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
    let body = Req::try_from_http_request(http_request, &args).map_err(deserialization_error)?;

    let (sender_user, sender_device) = auth.map_or((None, None), |(u, d)| (Some(u), Some(d)));
    let ruma = Ruma { body, sender_user, sender_device, json, query, remote };
    let response = handler(services, ruma).await?;
    let http_response: http::Response<Vec<u8>> = response.try_into_http_response().map_err(Error::internal)?;
    Ok(http_response.map(Body::from))
}

/// Registering handlers from ruma metadata.
pub trait RumaRouter {
    fn ruma_route<Req, H, Fut>(self, handler: H) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: AuthDispatch,
        H: Fn(Arc<Services>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::OutgoingResponse>> + Send + 'static;

    /// Like [`RumaRouter::ruma_route`], and also serves paths ending in `/`
    /// without that slash (clients use both forms of `GET /pushrules/`).
    fn ruma_route_optional_trailing_slash<Req, H, Fut>(self, handler: H) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: AuthDispatch,
        H: Fn(Arc<Services>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::OutgoingResponse>> + Send + 'static;

    /// Like [`RumaRouter::ruma_route`], and also serves the paths with the
    /// last parameter (a state key) left out or empty (`…/state/{type}` and
    /// `…/state/{type}/`), which clients use for the empty state key.
    fn ruma_route_empty_state_key<Req, H, Fut>(self, handler: H) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: AuthDispatch,
        H: Fn(Arc<Services>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::OutgoingResponse>> + Send + 'static;
}

fn register<Req, H, Fut>(router: Router<AppState>, path: &str, empty_last_arg: bool, handler: H) -> Router<AppState>
where
    Req: IncomingRequest + Send + 'static,
    Req::Authentication: AuthDispatch,
    H: Fn(Arc<Services>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Req::OutgoingResponse>> + Send + 'static,
{
    let filter = MethodFilter::try_from(Req::METHOD).expect("ruma endpoints use standard methods");
    router.route(
        path,
        on(
            filter,
            move |State(services): State<AppState>,
                  params: Result<RawPathParams, RawPathParamsRejection>,
                  request: Request| {
                let handler = handler.clone();
                async move {
                    let mut path_args: Vec<String> = match params {
                        Ok(p) => p.iter().map(|(_, v)| v.to_owned()).collect(),
                        Err(RawPathParamsRejection::MissingPathParams(_)) => Vec::new(),
                        Err(_) => {
                            return crate::err!(InvalidParam, "Path parameters must be valid UTF-8").into_response();
                        }
                    };
                    if empty_last_arg {
                        path_args.push(String::new());
                    }
                    match dispatch::<Req, _, _>(services, path_args, request, handler).await {
                        Ok(r) => r,
                        Err(e) => e.into_response(),
                    }
                }
            },
        ),
    )
}

impl RumaRouter for Router<AppState> {
    fn ruma_route_optional_trailing_slash<Req, H, Fut>(self, handler: H) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: AuthDispatch,
        H: Fn(Arc<Services>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::OutgoingResponse>> + Send + 'static,
    {
        let mut router = self.ruma_route::<Req, _, _>(handler.clone());
        for path in Req::PATH_BUILDER.all_paths() {
            if let Some(short) = path.strip_suffix('/') {
                router = register::<Req, _, _>(router, short, false, handler.clone());
            }
        }
        router
    }

    fn ruma_route<Req, H, Fut>(self, handler: H) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: AuthDispatch,
        H: Fn(Arc<Services>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::OutgoingResponse>> + Send + 'static,
    {
        Req::PATH_BUILDER
            .all_paths()
            .fold(self, |router, path| register::<Req, _, _>(router, path, false, handler.clone()))
    }

    fn ruma_route_empty_state_key<Req, H, Fut>(self, handler: H) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: AuthDispatch,
        H: Fn(Arc<Services>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::OutgoingResponse>> + Send + 'static,
    {
        let mut router = self.ruma_route::<Req, _, _>(handler.clone());
        for path in Req::PATH_BUILDER.all_paths() {
            let Some(short) = path.strip_suffix("/{state_key}") else { continue };
            router = register::<Req, _, _>(router, short, true, handler.clone());
            router = register::<Req, _, _>(router, &format!("{short}/"), true, handler.clone());
        }
        router
    }
}

async fn unknown_endpoint() -> Error {
    crate::err!(Unrecognized, "Unrecognized request")
}

async fn method_not_allowed() -> Error {
    Error::with_status(ErrorKind::Unrecognized, StatusCode::METHOD_NOT_ALLOWED, "Method not allowed for this endpoint")
}

/// CORS as the client-server spec asks of servers, so browser clients work.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods(AllowMethods::list([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS]))
        .allow_headers(AllowHeaders::list([
            header::HeaderName::from_static("x-requested-with"),
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
        ]))
}

/// The public router (client-server API), with fallbacks and CORS.
pub fn router(services: Arc<Services>) -> Router {
    account_pages::routes(uia_fallback::routes(sso::routes(client::routes(Router::new()))))
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(cors())
        .with_state(services)
}

/// The address of the connected client, trusting X-Forwarded-For when told to.
pub async fn client_ip_layer(
    State(trust_forwarded): State<bool>,
    mut request: Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let forwarded = trust_forwarded
        .then(|| {
            request
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                // The last entry is the one the trusted proxy added; earlier ones are the client's word.
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
        })
        .flatten();
    if let Some(ip) = forwarded.or(peer) {
        request.extensions_mut().insert(ClientIp(ip));
    }
    next.run(request).await
}
