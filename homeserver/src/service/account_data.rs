//! Per-user account data, global and per room (room tags are the `m.tag`
//! room account data). Every write takes a stream position so `/sync`
//! delivers it.

use ruma::{RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Services;
use crate::{
    error::Result,
    storage::{Batch, StorageError, codec, trees},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub content: Value,
    pub stream: u64,
}

fn key(user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Vec<u8> {
    codec::key(&[user_id.as_str().into(), room_id.map_or("", |r| r.as_str()).into(), kind.into()])
}

impl Services {
    pub fn account_data(&self, user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Result<Option<Stored>> {
        let tree = self.db.tree(trees::USERROOMTYPE_ACCOUNTDATA)?;
        tree.get(&key(user_id, room_id, kind))?
            .map(|b| {
                serde_json::from_slice(&b).map_err(|e| {
                    StorageError::Corrupt { tree: trees::USERROOMTYPE_ACCOUNTDATA, reason: e.to_string() }.into()
                })
            })
            .transpose()
    }

    /// Stores account data durably at a new stream position.
    pub async fn set_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
        content: Value,
    ) -> Result<()> {
        let k = key(user_id, room_id, kind);
        self.rooms
            .commit_at_next_position(Batch::new(), None::<()>, move |stream, batch| {
                let stored = Stored { content, stream };
                batch.insert(trees::USERROOMTYPE_ACCOUNTDATA, k, serde_json::to_vec(&stored).expect("serializes"));
            })
            .await?;
        Ok(())
    }

    /// All account data of a user changed after `since` (all when `None`):
    /// `(room ID or None for global, type, content)`.
    pub fn account_data_since(
        &self,
        user_id: &UserId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Vec<(Option<String>, String, Value)>> {
        let tree = self.db.tree(trees::USERROOMTYPE_ACCOUNTDATA)?;
        let prefix = codec::prefix(&[user_id.as_str().into()]);
        let mut out = Vec::new();
        for item in tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let stored: Stored = serde_json::from_slice(&v)
                .map_err(|e| StorageError::Corrupt { tree: trees::USERROOMTYPE_ACCOUNTDATA, reason: e.to_string() })?;
            if stored.stream > upto || since.is_some_and(|s| stored.stream <= s) {
                continue;
            }
            let parts = codec::split_str(&k[prefix.len()..])
                .ok_or(StorageError::Corrupt { tree: trees::USERROOMTYPE_ACCOUNTDATA, reason: "bad key".into() })?;
            if let [room, kind] = parts[..] {
                out.push(((!room.is_empty()).then(|| room.to_owned()), kind.to_owned(), stored.content));
            }
        }
        Ok(out)
    }
}
