use std::sync::Arc;

use ruma::api::{
    client::discovery::{discover_homeserver, get_supported_versions},
    federation::discovery::discover_homeserver as discover_server,
};

use crate::{api::Ruma, error::Result, service::Services};

/// The spec versions whose client-server wire format this server follows.
/// Endpoints it does not implement answer 404 `M_UNRECOGNIZED`, as the spec
/// lets clients detect; `docs/api-coverage.md` lists what is implemented.
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12", "v1.13",
    "v1.14", "v1.15", "v1.16", "v1.17", "v1.18", "v1.19",
];

/// `GET /_matrix/client/versions`
pub async fn get_supported_versions_route(
    _: Arc<Services>,
    _: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response> {
    Ok(get_supported_versions::Response::new(SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect()))
}

/// `GET /.well-known/matrix/client`
pub async fn discover_homeserver_route(
    s: Arc<Services>,
    _: Ruma<discover_homeserver::Request>,
) -> Result<discover_homeserver::Response> {
    Ok(discover_homeserver::Response::new(discover_homeserver::HomeserverInfo::new(s.config.client_base_url())))
}

/// `GET /.well-known/matrix/server`
pub async fn discover_server_route(
    s: Arc<Services>,
    _: Ruma<discover_server::Request>,
) -> Result<discover_server::Response> {
    if s.config.well_known.server.is_empty() {
        return Err(crate::err!(NotFound, "No server delegation is configured"));
    }
    let server = s
        .config
        .well_known
        .server
        .parse()
        .map_err(|_| crate::err!(NotFound, "The configured delegation is not a server name"))?;
    Ok(discover_server::Response::new(server))
}
