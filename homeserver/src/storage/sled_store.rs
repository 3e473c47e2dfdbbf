//! The sled-backed [`Store`]. This is the only file that names sled.

use std::{collections::HashMap, path::Path, sync::Arc};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::{Batch, BatchOp, KvIter, KvTree, StorageError, StorageResult, Store, WatchFuture, trees};

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

struct SledTree(sled::Tree);

impl KvTree for SledTree {
    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        Ok(self.0.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.0.insert(key, value).map_err(backend)?;
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> StorageResult<()> {
        self.0.remove(key).map_err(backend)?;
        Ok(())
    }

    fn scan_prefix<'a>(&'a self, prefix: &[u8]) -> KvIter<'a> {
        Box::new(self.0.scan_prefix(prefix).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend)))
    }

    fn range<'a>(&'a self, from: &[u8], to: Option<&[u8]>, reverse: bool) -> KvIter<'a> {
        let map = |r: sled::Result<(sled::IVec, sled::IVec)>| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend);
        match to {
            Some(t) if t <= from => Box::new(std::iter::empty()),
            Some(t) => {
                let it = self.0.range(from.to_vec()..t.to_vec());
                if reverse { Box::new(it.rev().map(map)) } else { Box::new(it.map(map)) }
            }
            None => {
                let it = self.0.range(from.to_vec()..);
                if reverse { Box::new(it.rev().map(map)) } else { Box::new(it.map(map)) }
            }
        }
    }

    fn watch_prefix(&self, prefix: &[u8]) -> WatchFuture {
        let subscriber = self.0.watch_prefix(prefix);
        Box::pin(async move {
            // A subscriber resolves at the next event under the prefix.
            let _ = subscriber.await;
        })
    }
}

/// The database in a directory on disk.
pub struct SledStore {
    db: sled::Db,
    trees: HashMap<&'static str, sled::Tree>,
}

impl SledStore {
    /// Opens (creating if needed) the database in `path`, with every declared tree.
    pub fn open(path: &Path) -> StorageResult<Self> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // sled caches up to 1 GiB by default; a smaller page cache keeps memory use modest.
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|e| match &e {
                // sled reports a held file lock as an I/O error with this message.
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => StorageError::Locked,
                _ => backend(e),
            })?;
        let mut trees = HashMap::new();
        for t in trees::ALL {
            trees.insert(t.name, db.open_tree(t.name).map_err(backend)?);
        }
        Ok(Self { db, trees })
    }

    fn sled_tree(&self, name: &str) -> StorageResult<&sled::Tree> {
        self.trees.get(name).ok_or_else(|| StorageError::UnknownTree(name.to_owned()))
    }
}

impl Store for SledStore {
    fn tree(&self, name: &'static str) -> StorageResult<Arc<dyn KvTree>> {
        Ok(Arc::new(SledTree(self.sled_tree(name)?.clone())))
    }

    fn apply(&self, batch: Batch) -> StorageResult<()> {
        // Group the writes by tree, then run one transaction over all of them.
        let mut names: Vec<&'static str> = Vec::new();
        for op in &batch.ops {
            let name = match op {
                BatchOp::Insert { tree, .. } | BatchOp::Remove { tree, .. } => *tree,
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let handles: Vec<&sled::Tree> = names.iter().map(|n| self.sled_tree(n)).collect::<StorageResult<_>>()?;
        if handles.is_empty() {
            return Ok(());
        }
        let result: Result<(), TransactionError<()>> = handles.as_slice().transaction(|views| {
            for op in &batch.ops {
                match op {
                    BatchOp::Insert { tree, key, value } => {
                        let i = names.iter().position(|n| n == tree).expect("tree collected above");
                        views[i].insert(key.as_slice(), value.as_slice())?;
                    }
                    BatchOp::Remove { tree, key } => {
                        let i = names.iter().position(|n| n == tree).expect("tree collected above");
                        views[i].remove(key.as_slice())?;
                    }
                }
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        result.map_err(|e| backend(format!("{e:?}")))
    }

    fn flush(&self) -> StorageResult<()> {
        self.db.flush().map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    crate::storage_conformance_tests!({
        let dir = tempfile::tempdir().expect("temp dir");
        let store = super::SledStore::open(&dir.path().join("db")).expect("open sled");
        // Keep the directory alive for the duration of the test.
        std::mem::forget(dir);
        store
    });

    #[test]
    fn reopening_keeps_flushed_data_and_second_open_is_refused() {
        use crate::storage::Store;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db");
        {
            let store = super::SledStore::open(&path).expect("open");
            store.tree("global").unwrap().insert(b"k", b"v").unwrap();
            let second = super::SledStore::open(&path);
            assert!(matches!(second, Err(crate::storage::StorageError::Locked)), "second open must fail on the lock");
            store.flush().unwrap();
        }
        let store = super::SledStore::open(&path).expect("reopen");
        assert_eq!(store.tree("global").unwrap().get(b"k").unwrap(), Some(b"v".to_vec()));
    }
}
