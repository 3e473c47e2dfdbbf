//! Read receipts (`m.read`, `m.read.private`, threaded) and typing
//! notifications. Receipts are stored with stream positions; typing is
//! ephemeral, held in memory with its own counter and expiry.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Services;
use crate::{
    error::Result,
    storage::{Batch, StorageError, codec, trees},
    util::now_ms,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredReceipt {
    event_id: String,
    ts: u64,
    stream: u64,
}

/// Who is typing where, with a change counter that `/sync` tokens carry.
#[derive(Default)]
pub struct Typing {
    inner: Mutex<TypingState>,
    changed: tokio::sync::Notify,
    counter: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct TypingState {
    rooms: HashMap<OwnedRoomId, (u64, BTreeMap<OwnedUserId, Instant>)>,
}

impl Typing {
    pub fn new() -> Self {
        Self { counter: tokio::sync::watch::channel(0).0, ..Default::default() }
    }

    pub fn position(&self) -> u64 {
        *self.counter.borrow()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.counter.subscribe()
    }

    fn bump(&self) -> u64 {
        let mut next = 0;
        self.counter.send_modify(|c| {
            *c += 1;
            next = *c;
        });
        self.changed.notify_waiters();
        next
    }

    /// Starts or stops a user typing; returns when it expires, if typing.
    pub fn set(&self, room_id: &RoomId, user_id: &UserId, timeout: Option<Duration>) -> Option<Instant> {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = state.rooms.entry(room_id.to_owned()).or_default();
        let expiry = timeout.map(|t| Instant::now() + t.min(Duration::from_secs(120)));
        let changed = match expiry {
            Some(at) => entry.1.insert(user_id.to_owned(), at).is_none(),
            None => entry.1.remove(user_id).is_some(),
        };
        if changed {
            drop(state);
            let n = self.bump();
            let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = state.rooms.get_mut(room_id) {
                e.0 = n;
            }
        }
        expiry
    }

    /// Drops expired typers; bumps the counter if any went.
    pub fn expire(&self, room_id: &RoomId) {
        let now = Instant::now();
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = state.rooms.get_mut(room_id) else { return };
        let before = entry.1.len();
        entry.1.retain(|_, at| *at > now);
        if entry.1.len() != before {
            drop(state);
            let n = self.bump();
            let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = state.rooms.get_mut(room_id) {
                e.0 = n;
            }
        }
    }

    /// The typers of a room if they changed after `since` (always when `None`).
    pub fn changed_since(&self, room_id: &RoomId, since: Option<u64>) -> Option<Vec<OwnedUserId>> {
        let now = Instant::now();
        let state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (changed, users) = state.rooms.get(room_id)?;
        if since.is_some_and(|s| *changed <= s) {
            return None;
        }
        Some(users.iter().filter(|(_, at)| **at > now).map(|(u, _)| u.clone()).collect())
    }
}

fn receipt_key(room_id: &RoomId, kind: &str, user_id: &UserId, thread: &str) -> Vec<u8> {
    codec::key(&[room_id.as_str().into(), kind.into(), user_id.as_str().into(), thread.into()])
}

impl Services {
    /// Records a receipt durably at a new stream position.
    pub async fn set_receipt(
        &self,
        room_id: &RoomId,
        kind: &str,
        user_id: &UserId,
        event_id: &ruma::EventId,
        thread: Option<&str>,
    ) -> Result<()> {
        let key = receipt_key(room_id, kind, user_id, thread.unwrap_or(""));
        let event_id = event_id.to_string();
        self.rooms
            .commit_at_next_position(Batch::new(), None::<()>, move |stream, batch| {
                let r = StoredReceipt { event_id, ts: now_ms(), stream };
                batch.insert(trees::ROOMRECEIPT_DATA, key, serde_json::to_vec(&r).expect("serializes"));
            })
            .await?;
        Ok(())
    }

    /// The `m.receipt` content for receipts in a room newer than `since`,
    /// as `viewer` may see them (private receipts only their own).
    pub fn receipts_since(
        &self,
        room_id: &RoomId,
        viewer: &UserId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Option<Value>> {
        let tree = self.db.tree(trees::ROOMRECEIPT_DATA)?;
        let prefix = codec::prefix(&[room_id.as_str().into()]);
        let mut content = serde_json::Map::new();
        for item in tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let r: StoredReceipt = serde_json::from_slice(&v)
                .map_err(|e| StorageError::Corrupt { tree: trees::ROOMRECEIPT_DATA, reason: e.to_string() })?;
            if r.stream > upto || since.is_some_and(|s| r.stream <= s) {
                continue;
            }
            let Some(parts) = codec::split_str(&k[prefix.len()..]) else { continue };
            let [kind, user, thread] = parts[..] else { continue };
            if kind == "m.read.private" && user != viewer.as_str() {
                continue;
            }
            let mut data = json!({ "ts": r.ts });
            if !thread.is_empty() {
                data["thread_id"] = json!(thread);
            }
            let by_event = content.entry(r.event_id).or_insert_with(|| json!({}));
            by_event[kind][user] = data;
        }
        Ok((!content.is_empty()).then_some(Value::Object(content)))
    }
}
