use std::{sync::Arc, time::Duration};

use ruma::api::client::{
    filter::{FilterDefinition, create_filter, get_filter},
    sync::sync_events::v3 as sync,
};

use crate::{
    api::Ruma,
    err,
    error::Result,
    service::{
        Services,
        sync::{StreamToken, SyncRequest},
    },
};

/// Long polls are capped so proxies and clients do not time out first.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// `GET /_matrix/client/v3/sync`
pub async fn sync_events_route(s: Arc<Services>, body: Ruma<sync::Request>) -> Result<sync::Response> {
    let user = body.user()?.to_owned();
    let req = &body.body;
    let filter = match &req.filter {
        None => FilterDefinition::default(),
        Some(sync::Filter::FilterDefinition(f)) => f.clone(),
        Some(sync::Filter::FilterId(id)) => {
            s.load_filter(&user, id)?.ok_or_else(|| err!(InvalidParam, "Unknown filter ID {id:?}"))?
        }
        Some(_) => FilterDefinition::default(),
    };
    let since = req.since.as_deref().map(StreamToken::parse).transpose()?;
    let request = SyncRequest {
        device_id: body.device()?.to_owned(),
        since,
        full_state: req.full_state,
        timeout: req.timeout.unwrap_or_default().min(MAX_TIMEOUT),
        filter,
        // Only the stable parameter: a client asking with the unstable
        // `org.matrix.msc4222.use_state_after` (matrix-js-sdk) reads the answer
        // under the unstable key, so it gets `state`, which the spec tells
        // clients to fall back to when `state_after` is absent.
        use_state_after: req.use_state_after,
    };
    s.sync(&user, request).await
}

/// `POST /_matrix/client/v3/user/{userId}/filter`
pub async fn create_filter_route(
    s: Arc<Services>,
    body: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response> {
    let user = body.user()?;
    if body.body.user_id != user {
        return Err(err!(Forbidden, "You can only create filters for yourself"));
    }
    Ok(create_filter::v3::Response::new(s.save_filter(user, &body.body.filter).await?))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
pub async fn get_filter_route(
    s: Arc<Services>,
    body: Ruma<get_filter::v3::Request>,
) -> Result<get_filter::v3::Response> {
    let user = body.user()?;
    if body.body.user_id != user {
        return Err(err!(Forbidden, "You can only read your own filters"));
    }
    let filter = s.load_filter(user, &body.body.filter_id)?.ok_or_else(|| err!(NotFound, "No such filter"))?;
    Ok(get_filter::v3::Response::new(filter))
}
