use std::sync::Arc;

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedDeviceId, UInt,
    api::client::device::{self as d, delete_device, delete_devices, get_device, get_devices, update_device},
};

use super::account::require_password;
use crate::{
    api::Ruma,
    err,
    error::Result,
    service::{Services, keys::DeviceSelection, sessions::Device},
    storage::Batch,
};

fn to_ruma(id: OwnedDeviceId, device: Device) -> d::Device {
    let mut out = d::Device::new(id);
    out.display_name = device.display_name;
    out.last_seen_ip = device.last_seen_ip;
    out.last_seen_ts = device.last_seen_ts.and_then(|t| UInt::try_from(t).ok()).map(MilliSecondsSinceUnixEpoch);
    out
}

/// `GET /_matrix/client/v3/devices`
pub async fn get_devices_route(
    s: Arc<Services>,
    body: Ruma<get_devices::v3::Request>,
) -> Result<get_devices::v3::Response> {
    let devices = s.sessions.devices(body.user()?)?.into_iter().map(|(id, dev)| to_ruma(id, dev)).collect();
    Ok(get_devices::v3::Response::new(devices))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`
pub async fn get_device_route(
    s: Arc<Services>,
    body: Ruma<get_device::v3::Request>,
) -> Result<get_device::v3::Response> {
    let device =
        s.sessions.device(body.user()?, &body.body.device_id)?.ok_or_else(|| err!(NotFound, "No such device"))?;
    Ok(get_device::v3::Response::new(to_ruma(body.body.device_id.clone(), device)))
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`
pub async fn update_device_route(
    s: Arc<Services>,
    body: Ruma<update_device::v3::Request>,
) -> Result<update_device::v3::Response> {
    if body.body.display_name.as_ref().is_some_and(|n| n.chars().count() > 256) {
        return Err(err!(InvalidParam, "The display name is longer than 256 characters"));
    }
    if !s.sessions.set_display_name(body.user()?, &body.body.device_id, body.body.display_name.clone()).await? {
        return Err(err!(NotFound, "No such device"));
    }
    Ok(update_device::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`
pub async fn delete_device_route(
    s: Arc<Services>,
    body: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response> {
    let user_id = body.user()?.to_owned();
    if s.sessions.device(&user_id, &body.body.device_id)?.is_none() {
        return Err(err!(NotFound, "No such device"));
    }
    require_password(&s, body.body.auth.as_ref(), &user_id, &body.remote_str()).await?;
    s.remove_devices(&user_id, DeviceSelection::One(&body.body.device_id), Batch::new()).await?;
    Ok(delete_device::v3::Response::new())
}

/// `POST /_matrix/client/v3/delete_devices`
pub async fn delete_devices_route(
    s: Arc<Services>,
    body: Ruma<delete_devices::v3::Request>,
) -> Result<delete_devices::v3::Response> {
    let user_id = body.user()?.to_owned();
    require_password(&s, body.body.auth.as_ref(), &user_id, &body.remote_str()).await?;
    s.remove_devices(&user_id, DeviceSelection::List(&body.body.devices), Batch::new()).await?;
    Ok(delete_devices::v3::Response::new())
}
