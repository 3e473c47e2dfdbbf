//! The storage layer: the only module that knows which embedded database is used.
//!
//! Everything above it sees [`Store`] (a set of named trees plus atomic
//! multi-tree batches and a durable flush) and [`KvTree`] (one ordered byte
//! map). Two implementations exist: [`sled_store::SledStore`] for deployments
//! and [`memory::MemoryStore`] for unit tests; one conformance suite
//! ([`conformance`]) runs against both.

pub mod codec;
mod conformance;
pub mod memory;
pub mod migrations;
pub mod sled_store;
pub mod trees;

use std::{future::Future, pin::Pin, sync::Arc};

/// A key/value pair as returned by scans.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// A boxed iterator over key/value pairs, in key order (or reverse order).
pub type KvIter<'a> = Box<dyn Iterator<Item = Result<KvPair, StorageError>> + Send + 'a>;

/// A future that completes when something under a watched prefix changes.
pub type WatchFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Errors from the storage layer. They never reach a client verbatim.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Backend(String),
    #[error("the database is in use by another process")]
    Locked,
    #[error("unknown tree {0:?}")]
    UnknownTree(String),
    #[error("corrupt value in {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    #[error("database schema version {found} is newer than this binary understands ({supported})")]
    SchemaTooNew { found: u64, supported: u64 },
}

pub type StorageResult<T> = Result<T, StorageError>;

/// One ordered byte map.
pub trait KvTree: Send + Sync {
    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>>;
    fn insert(&self, key: &[u8], value: &[u8]) -> StorageResult<()>;
    fn remove(&self, key: &[u8]) -> StorageResult<()>;
    /// All pairs whose key starts with `prefix`, in ascending key order.
    fn scan_prefix<'a>(&'a self, prefix: &[u8]) -> KvIter<'a>;
    /// Pairs with `from <= key < to` (unbounded above when `to` is `None`),
    /// ascending, or descending when `reverse` is set.
    fn range<'a>(&'a self, from: &[u8], to: Option<&[u8]>, reverse: bool) -> KvIter<'a>;
    /// Completes at the next insert or removal of a key starting with `prefix`.
    fn watch_prefix(&self, prefix: &[u8]) -> WatchFuture;
}

/// One write inside a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Insert { tree: &'static str, key: Vec<u8>, value: Vec<u8> },
    Remove { tree: &'static str, key: Vec<u8> },
}

/// A set of writes over any number of trees that is applied all or nothing.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub ops: Vec<BatchOp>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, tree: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Insert { tree, key: key.into(), value: value.into() });
    }

    pub fn remove(&mut self, tree: &'static str, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Remove { tree, key: key.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A database: the declared trees, atomic batches and durability.
pub trait Store: Send + Sync {
    /// The tree with this name; every name must be declared in [`trees::ALL`].
    fn tree(&self, name: &'static str) -> StorageResult<Arc<dyn KvTree>>;
    /// Applies every write of the batch atomically: all of them or none.
    fn apply(&self, batch: Batch) -> StorageResult<()>;
    /// Makes every write applied so far durable (blocking).
    fn flush(&self) -> StorageResult<()>;
}

/// Shared handle to the database with group commit for durability.
///
/// Writers call [`Db::durable`] after applying their batch; concurrent
/// callers share one flush, so durability costs one disk sync per group
/// rather than one per request.
#[derive(Clone)]
pub struct Db {
    store: Arc<dyn Store>,
    flusher: Arc<GroupCommit>,
}

struct GroupCommit {
    requested: std::sync::atomic::AtomicU64,
    wake: tokio::sync::Notify,
    done: tokio::sync::watch::Sender<u64>,
}

impl Db {
    /// Wraps a store and starts its group-commit task on the current runtime.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (done, _) = tokio::sync::watch::channel(0u64);
        let flusher = Arc::new(GroupCommit {
            requested: std::sync::atomic::AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            done,
        });
        let task_store = store.clone();
        let f = flusher.clone();
        tokio::spawn(async move {
            loop {
                let target = f.requested.load(std::sync::atomic::Ordering::SeqCst);
                if *f.done.borrow() >= target {
                    // Nobody else holds the Db any more: stop.
                    if Arc::strong_count(&f) == 1 {
                        return;
                    }
                    // `notify_one` leaves a permit, so a wake-up sent before this wait is not lost.
                    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), f.wake.notified()).await;
                    continue;
                }
                let store = task_store.clone();
                match tokio::task::spawn_blocking(move || store.flush()).await {
                    Ok(Ok(())) => {
                        f.done.send_replace(target);
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "flushing the database failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(e) => tracing::error!(error = %e, "flush task failed"),
                }
            }
        });
        Self { store, flusher }
    }

    pub fn tree(&self, name: &'static str) -> StorageResult<Arc<dyn KvTree>> {
        self.store.tree(name)
    }

    pub fn apply(&self, batch: Batch) -> StorageResult<()> {
        self.store.apply(batch)
    }

    /// Waits until every write applied before this call is on disk.
    pub async fn durable(&self) -> StorageResult<()> {
        let ticket = self.flusher.requested.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut done = self.flusher.done.subscribe();
        self.flusher.wake.notify_one();
        loop {
            if *done.borrow_and_update() >= ticket {
                return Ok(());
            }
            if done.changed().await.is_err() {
                return Err(StorageError::Backend("flusher stopped".into()));
            }
            self.flusher.wake.notify_one();
        }
    }

    /// Applies a batch and waits until it is durable.
    pub async fn commit(&self, batch: Batch) -> StorageResult<()> {
        self.apply(batch)?;
        self.durable().await
    }

    /// Flushes synchronously (used at shutdown).
    pub fn flush_now(&self) -> StorageResult<()> {
        self.store.flush()
    }
}
