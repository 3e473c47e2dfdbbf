//! An in-memory [`Store`] for unit tests: one `BTreeMap` per tree.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::{Arc, Mutex, RwLock},
};

use tokio::sync::broadcast;

use super::{Batch, BatchOp, KvIter, KvTree, StorageError, StorageResult, Store, WatchFuture, trees};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// A tree held in memory.
pub struct MemoryTree {
    map: RwLock<Map>,
    changes: broadcast::Sender<Vec<u8>>,
}

impl MemoryTree {
    fn new() -> Self {
        Self { map: RwLock::new(Map::new()), changes: broadcast::channel(1024).0 }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Map> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self, range: (Bound<Vec<u8>>, Bound<Vec<u8>>), reverse: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        let map = self.read();
        let it = map.range(range).map(|(k, v)| (k.clone(), v.clone()));
        if reverse { it.rev().collect() } else { it.collect() }
    }
}

impl KvTree for MemoryTree {
    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        Ok(self.read().get(key).cloned())
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.write().insert(key.to_vec(), value.to_vec());
        let _ = self.changes.send(key.to_vec());
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> StorageResult<()> {
        self.write().remove(key);
        let _ = self.changes.send(key.to_vec());
        Ok(())
    }

    fn scan_prefix<'a>(&'a self, prefix: &[u8]) -> KvIter<'a> {
        let p = prefix.to_vec();
        let items = self.snapshot((Bound::Included(p.clone()), Bound::Unbounded), false);
        Box::new(items.into_iter().take_while(move |(k, _)| k.starts_with(&p)).map(Ok))
    }

    fn range<'a>(&'a self, from: &[u8], to: Option<&[u8]>, reverse: bool) -> KvIter<'a> {
        let upper = match to {
            Some(t) if t <= from => return Box::new(std::iter::empty()),
            Some(t) => Bound::Excluded(t.to_vec()),
            None => Bound::Unbounded,
        };
        Box::new(self.snapshot((Bound::Included(from.to_vec()), upper), reverse).into_iter().map(Ok))
    }

    fn watch_prefix(&self, prefix: &[u8]) -> WatchFuture {
        let mut rx = self.changes.subscribe();
        let prefix = prefix.to_vec();
        Box::pin(async move {
            loop {
                match rx.recv().await {
                    Ok(key) if key.starts_with(&prefix) => return,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        })
    }
}

/// The in-memory store.
pub struct MemoryStore {
    trees: HashMap<&'static str, Arc<MemoryTree>>,
    /// Serialises batches so that each one is applied as a unit.
    batch_lock: Mutex<()>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            trees: trees::ALL.iter().map(|t| (t.name, Arc::new(MemoryTree::new()))).collect(),
            batch_lock: Mutex::new(()),
        }
    }

    fn memory_tree(&self, name: &str) -> StorageResult<&Arc<MemoryTree>> {
        self.trees.get(name).ok_or_else(|| StorageError::UnknownTree(name.to_owned()))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Store for MemoryStore {
    fn tree(&self, name: &'static str) -> StorageResult<Arc<dyn KvTree>> {
        Ok(self.memory_tree(name)?.clone())
    }

    fn apply(&self, batch: Batch) -> StorageResult<()> {
        let _guard = self.batch_lock.lock().unwrap_or_else(|e| e.into_inner());
        // Resolve every tree first so an unknown tree changes nothing.
        for op in &batch.ops {
            match op {
                BatchOp::Insert { tree, .. } | BatchOp::Remove { tree, .. } => {
                    self.memory_tree(tree)?;
                }
            }
        }
        let mut changed = Vec::new();
        {
            let mut guards: HashMap<&str, std::sync::RwLockWriteGuard<'_, Map>> = HashMap::new();
            for op in &batch.ops {
                let name = match op {
                    BatchOp::Insert { tree, .. } | BatchOp::Remove { tree, .. } => *tree,
                };
                if !guards.contains_key(name) {
                    guards.insert(name, self.memory_tree(name)?.write());
                }
                let map = guards.get_mut(name).expect("guard inserted above");
                match op {
                    BatchOp::Insert { key, value, .. } => {
                        map.insert(key.clone(), value.clone());
                        changed.push((name, key.clone()));
                    }
                    BatchOp::Remove { key, .. } => {
                        map.remove(key);
                        changed.push((name, key.clone()));
                    }
                }
            }
        }
        for (name, key) in changed {
            let _ = self.memory_tree(name)?.changes.send(key);
        }
        Ok(())
    }

    fn flush(&self) -> StorageResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    crate::storage_conformance_tests!(super::MemoryStore::new());
}
