//! Room state snapshots as state groups: each group stores only what changed
//! against its parent, with a full snapshot every few generations so a
//! lookup walks a bounded chain. Groups are immutable once written.

use std::{collections::BTreeMap, sync::Arc};

use ruma::OwnedEventId;
use serde::{Deserialize, Serialize};

use crate::{
    error::Result,
    storage::{Batch, Db, StorageError, codec, trees},
    util::BoundedCache,
};

/// A room's state: `(event type, state key)` → event ID.
pub type StateMap = BTreeMap<(String, String), OwnedEventId>;

/// After this many deltas in a chain the next group is a full snapshot.
const MAX_CHAIN: u32 = 32;

#[derive(Debug, Serialize, Deserialize)]
struct Delta {
    parent: Option<u64>,
    /// Length of the chain down to the last full snapshot.
    depth: u32,
    set: Vec<(String, String, OwnedEventId)>,
}

/// Reads and writes state groups.
pub struct StateStore {
    db: Db,
    cache: std::sync::Mutex<BoundedCache<u64, Arc<StateMap>>>,
}

impl StateStore {
    pub fn new(db: Db) -> Self {
        Self { db, cache: std::sync::Mutex::new(BoundedCache::new(512)) }
    }

    fn delta(&self, group: u64) -> Result<Delta> {
        let tree = self.db.tree(trees::STATEGROUP_DELTA)?;
        let bytes = tree.get(&codec::u64_bytes(group))?.ok_or(StorageError::Corrupt {
            tree: trees::STATEGROUP_DELTA,
            reason: format!("missing state group {group}"),
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Corrupt { tree: trees::STATEGROUP_DELTA, reason: e.to_string() }.into())
    }

    /// The full state of a group.
    pub fn load(&self, group: u64) -> Result<Arc<StateMap>> {
        if let Some(hit) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&group) {
            return Ok(hit);
        }
        let mut chain = Vec::new();
        let mut next = Some(group);
        while let Some(g) = next {
            let d = self.delta(g)?;
            next = d.parent;
            chain.push(d);
        }
        let mut state = StateMap::new();
        for d in chain.into_iter().rev() {
            for (kind, key, id) in d.set {
                state.insert((kind, key), id);
            }
        }
        let state = Arc::new(state);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(group, state.clone());
        Ok(state)
    }

    /// Adds the writes for a new group = `parent` + `changes`; returns the full new state.
    pub fn write_group(
        &self,
        group: u64,
        parent: Option<u64>,
        changes: &[(String, String, OwnedEventId)],
        batch: &mut Batch,
    ) -> Result<Arc<StateMap>> {
        let (parent_state, parent_depth) = match parent {
            Some(p) => (self.load(p)?, self.delta(p)?.depth),
            None => (Arc::new(StateMap::new()), 0),
        };
        let mut full = (*parent_state).clone();
        for (kind, key, id) in changes {
            full.insert((kind.clone(), key.clone()), id.clone());
        }
        let delta = if parent.is_none() || parent_depth + 1 >= MAX_CHAIN {
            Delta {
                parent: None,
                depth: 0,
                set: full.iter().map(|((t, k), id)| (t.clone(), k.clone(), id.clone())).collect(),
            }
        } else {
            Delta { parent, depth: parent_depth + 1, set: changes.to_vec() }
        };
        batch.insert(
            trees::STATEGROUP_DELTA,
            codec::u64_bytes(group).to_vec(),
            serde_json::to_vec(&delta).expect("serializes"),
        );
        let full = Arc::new(full);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(group, full.clone());
        Ok(full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    fn id(n: u32) -> OwnedEventId {
        format!("$e{n}").try_into().unwrap()
    }

    #[tokio::test]
    async fn deltas_rebuild_full_state_and_chains_are_bounded() {
        let db = Db::new(Arc::new(MemoryStore::new()));
        let store = StateStore::new(db.clone());
        let mut parent = None;
        for g in 1..=100u64 {
            let mut batch = Batch::new();
            let changes = vec![("m.room.member".to_owned(), format!("@u{}:hs", g % 10), id(g as u32))];
            store.write_group(g, parent, &changes, &mut batch).unwrap();
            db.apply(batch).unwrap();
            parent = Some(g);
        }
        // A fresh store (empty cache) reads the same state from disk.
        let fresh = StateStore::new(db.clone());
        let state = fresh.load(100).unwrap();
        assert_eq!(state.len(), 10);
        assert_eq!(state[&("m.room.member".to_owned(), "@u0:hs".to_owned())], id(100));
        assert_eq!(state[&("m.room.member".to_owned(), "@u1:hs".to_owned())], id(91));
        // Older groups are unchanged.
        assert_eq!(fresh.load(5).unwrap().len(), 5);
        assert!(fresh.delta(100).unwrap().depth < MAX_CHAIN);
    }
}
