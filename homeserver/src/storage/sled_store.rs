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
    /// Opens (creating if needed) the database in `path`, with every declared
    /// tree and the default page cache.
    pub fn open(path: &Path) -> StorageResult<Self> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens the database with a page cache of `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> StorageResult<Self> {
        finish_compaction(path)?;
        let db = open_sled(path, cache_bytes)?;
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

/// The page cache when none is configured (sled's own default is 1 GiB).
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

fn open_sled(path: &Path, cache_bytes: u64) -> StorageResult<sled::Db> {
    sled::Config::new().path(path).mode(sled::Mode::HighThroughput).cache_capacity(cache_bytes).open().map_err(|e| {
        match &e {
            // sled reports a held file lock as an I/O error with this message.
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => StorageError::Locked,
            _ => backend(e),
        }
    })
}

/// Marks a finished copy in the compaction directory.
const COMPACTED_MARKER: &str = "COMPACTED";

fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn io(e: std::io::Error) -> StorageError {
    backend(e)
}

/// Rewrites the database in `path` into a new one holding only live data,
/// then puts it in place of the old one, whose files are deleted. sled is
/// log-structured: overwritten and deleted values (redacted event content,
/// delivered to-device messages) stay in its files until their segment is
/// reused; after compaction they are in no file of the database. Needs the
/// database to itself (the server stopped). Returns the sizes before and after.
pub fn compact(path: &Path) -> StorageResult<(u64, u64)> {
    finish_compaction(path)?;
    let tmp = sibling(path, ".compacting");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io)?;
    }
    let before;
    {
        let old = open_sled(path, DEFAULT_CACHE_BYTES)?;
        before = old.size_on_disk().map_err(backend)?;
        let new = open_sled(&tmp, DEFAULT_CACHE_BYTES)?;
        new.import(old.export());
        new.flush().map_err(backend)?;
    }
    // The copy is complete and durable: from here on, finishing is always possible.
    let marker = tmp.join(COMPACTED_MARKER);
    std::fs::File::create(&marker).and_then(|f| f.sync_all()).map_err(io)?;
    finish_compaction(path)?;
    let after = open_sled(path, DEFAULT_CACHE_BYTES)?.size_on_disk().map_err(backend)?;
    Ok((before, after))
}

/// Completes or discards a compaction interrupted by a crash: a complete copy
/// replaces the old database, an incomplete one is deleted.
fn finish_compaction(path: &Path) -> StorageResult<()> {
    let tmp = sibling(path, ".compacting");
    let old = sibling(path, ".old");
    if tmp.join(COMPACTED_MARKER).exists() {
        if path.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io)?;
            }
            std::fs::rename(path, &old).map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        std::fs::remove_file(path.join(COMPACTED_MARKER)).map_err(io)?;
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io)?;
        }
    } else if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io)?;
    }
    if old.exists() && path.exists() {
        std::fs::remove_dir_all(&old).map_err(io)?;
    }
    Ok(())
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
    fn compaction_keeps_live_data_and_drops_overwritten_bytes() {
        use crate::storage::Store;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db");
        let secret = b"overwritten-secret-value-0123456789";
        {
            let store = super::SledStore::open(&path).expect("open");
            let t = store.tree("global").unwrap();
            t.insert(b"k", secret).unwrap();
            store.flush().unwrap();
            t.insert(b"k", b"redacted").unwrap();
            t.insert(b"other", b"kept").unwrap();
            store.flush().unwrap();
        }
        let contains = |p: &std::path::Path| {
            walk(p).iter().any(|f| std::fs::read(f).unwrap().windows(secret.len()).any(|w| w == secret))
        };
        assert!(contains(&path), "sled keeps the old bytes until compaction (else this test proves nothing)");
        super::compact(&path).expect("compact");
        assert!(!contains(dir.path()), "no file holds the overwritten value");
        let store = super::SledStore::open(&path).expect("reopen");
        let t = store.tree("global").unwrap();
        assert_eq!(t.get(b"k").unwrap(), Some(b"redacted".to_vec()));
        assert_eq!(t.get(b"other").unwrap(), Some(b"kept".to_vec()));
    }

    #[test]
    fn an_incomplete_compaction_is_discarded_on_open() {
        use crate::storage::Store;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db");
        {
            let store = super::SledStore::open(&path).expect("open");
            store.tree("global").unwrap().insert(b"k", b"v").unwrap();
            store.flush().unwrap();
        }
        std::fs::create_dir_all(dir.path().join("db.compacting")).unwrap();
        let store = super::SledStore::open(&path).expect("open");
        assert!(!dir.path().join("db.compacting").exists());
        assert_eq!(store.tree("global").unwrap().get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
        }
        out
    }

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
