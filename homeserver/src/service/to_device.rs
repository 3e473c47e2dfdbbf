//! To-device messages: stored per target device, in stream order, only until
//! the device syncs past them. The server never reads their content.

use std::collections::BTreeMap;

use ruma::{
    DeviceId, OwnedDeviceId, OwnedUserId, UserId, events::AnyToDeviceEventContent, serde::Raw,
    to_device::DeviceIdOrAllDevices,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Services;
use crate::{
    error::{Error, Result},
    storage::{Batch, StorageError, codec, trees},
};

/// Messages handed out per `/sync`; the rest wait for the next one.
const MAX_PER_SYNC: usize = 100;

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    sender: OwnedUserId,
    #[serde(rename = "type")]
    kind: String,
    content: Box<RawValue>,
}

/// What one `/sync` delivers to a device.
#[derive(Debug, Default)]
pub struct Delivery {
    pub events: Vec<Raw<ruma::events::AnyToDeviceEvent>>,
    /// Set when more messages wait: the last stream position delivered.
    pub partial_upto: Option<u64>,
}

fn prefix(user_id: &UserId, device_id: &DeviceId) -> Vec<u8> {
    codec::prefix(&[user_id.as_str().into(), device_id.as_str().into()])
}

impl Services {
    /// `PUT /sendToDevice/{type}/{txnId}`: stores one message per target
    /// device, once per transaction ID of the sending device.
    pub async fn send_to_device(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        event_type: &str,
        txn_id: &str,
        messages: &BTreeMap<OwnedUserId, BTreeMap<DeviceIdOrAllDevices, Raw<AnyToDeviceEventContent>>>,
    ) -> Result<()> {
        let guard = self.locks.lock(format!("todevice:{sender}")).await;
        let txn = codec::key(&[sender.as_str().into(), sender_device.as_str().into(), txn_id.into()]);
        if self.db.tree(trees::USERDEVICETXN_TODEVICE)?.get(&txn)?.is_some() {
            return Ok(());
        }
        let mut targets: Vec<(OwnedUserId, OwnedDeviceId, Vec<u8>)> = Vec::new();
        for (user_id, devices) in messages {
            if user_id.server_name().as_str() != self.config.server_name {
                tracing::debug!(target_user = %user_id, "to-device message for another server dropped: no federation yet");
                continue;
            }
            for (target, content) in devices {
                let ids: Vec<OwnedDeviceId> = match target {
                    DeviceIdOrAllDevices::DeviceId(id) => {
                        if self.sessions.device(user_id, id)?.is_none() {
                            continue; // unknown devices receive nothing
                        }
                        vec![id.clone()]
                    }
                    DeviceIdOrAllDevices::AllDevices => {
                        self.sessions.devices(user_id)?.into_iter().map(|(id, _)| id).collect()
                    }
                };
                let stored = Stored {
                    sender: sender.to_owned(),
                    kind: event_type.to_owned(),
                    content: content.json().to_owned(),
                };
                let bytes = serde_json::to_vec(&stored).map_err(Error::internal)?;
                for id in ids {
                    targets.push((user_id.clone(), id, bytes.clone()));
                }
            }
        }
        self.rooms
            .commit_at_next_position(Batch::new(), Some(guard), move |stream, batch| {
                batch.insert(trees::USERDEVICETXN_TODEVICE, txn, Vec::new());
                for (index, (user_id, device_id, bytes)) in targets.into_iter().enumerate() {
                    let key = codec::key(&[
                        user_id.as_str().into(),
                        device_id.as_str().into(),
                        stream.into(),
                        (index as u64).into(),
                    ]);
                    batch.insert(trees::USERDEVICESTREAM_TODEVICE, key, bytes);
                }
            })
            .await?;
        Ok(())
    }

    /// For a `/sync` of `device_id`: deletes the messages it acknowledged
    /// (stream positions up to `acked`), then returns those waiting up to
    /// `upto`, at most [`MAX_PER_SYNC`] (whole stream positions at a time).
    pub async fn to_device_for_sync(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        acked: Option<u64>,
        upto: u64,
    ) -> Result<Delivery> {
        let tree = self.db.tree(trees::USERDEVICESTREAM_TODEVICE)?;
        let prefix = prefix(user_id, device_id);
        let stream_of = |k: &[u8]| codec::u64_from(&k[prefix.len()..prefix.len() + 8]);
        let mut delivery = Delivery::default();
        let mut done = Batch::new();
        let mut last = None;
        for item in tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let stream = stream_of(&k)
                .ok_or(StorageError::Corrupt { tree: trees::USERDEVICESTREAM_TODEVICE, reason: "bad key".into() })?;
            if acked.is_some_and(|a| stream <= a) {
                done.remove(trees::USERDEVICESTREAM_TODEVICE, k);
                continue;
            }
            if stream > upto {
                break;
            }
            if delivery.events.len() >= MAX_PER_SYNC && last != Some(stream) {
                delivery.partial_upto = last;
                break;
            }
            let stored: Stored = serde_json::from_slice(&v)
                .map_err(|e| StorageError::Corrupt { tree: trees::USERDEVICESTREAM_TODEVICE, reason: e.to_string() })?;
            let event = serde_json::json!({ "sender": stored.sender, "type": stored.kind, "content": stored.content });
            delivery.events.push(Raw::new(&event).map_err(Error::internal)?.cast_unchecked());
            last = Some(stream);
        }
        if !done.is_empty() {
            // Delivered and acknowledged: gone from storage.
            self.db.commit(done).await?;
        }
        Ok(delivery)
    }
}
