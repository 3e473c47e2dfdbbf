//! Numbered schema migrations. The current version lives in the `global` tree
//! under `schema_version`; each migration moves the database from `n - 1` to `n`.

use super::{Batch, Db, StorageError, StorageResult, codec, trees};

const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

type Migration = fn(&Db) -> StorageResult<()>;

/// Migration `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[Migration] = &[
    // 1: the initial layout; every tree is created when the store opens.
    |_| Ok(()),
];

/// The schema version this binary writes.
pub const CURRENT: u64 = MIGRATIONS.len() as u64;

/// Reads the stored schema version (0 for a new database).
pub fn stored_version(db: &Db) -> StorageResult<u64> {
    let global = db.tree(trees::GLOBAL)?;
    match global.get(SCHEMA_VERSION_KEY)? {
        None => Ok(0),
        Some(bytes) => codec::u64_from(&bytes).ok_or_else(|| StorageError::Corrupt {
            tree: trees::GLOBAL,
            reason: "schema_version is not 8 bytes".into(),
        }),
    }
}

/// Runs every migration the database has not seen yet, recording each one.
pub fn run(db: &Db) -> StorageResult<u64> {
    let found = stored_version(db)?;
    if found > CURRENT {
        return Err(StorageError::SchemaTooNew { found, supported: CURRENT });
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as u64 + 1;
        migration(db)?;
        let mut batch = Batch::new();
        batch.insert(trees::GLOBAL, SCHEMA_VERSION_KEY.to_vec(), codec::u64_bytes(version).to_vec());
        db.apply(batch)?;
        tracing::info!(version, "applied database migration");
    }
    db.flush_now()?;
    Ok(CURRENT)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::memory::MemoryStore;

    #[tokio::test]
    async fn new_database_is_migrated_to_current_and_newer_is_refused() {
        let db = Db::new(Arc::new(MemoryStore::new()));
        assert_eq!(stored_version(&db).unwrap(), 0);
        assert_eq!(run(&db).unwrap(), CURRENT);
        assert_eq!(stored_version(&db).unwrap(), CURRENT);
        // Running again is a no-op.
        assert_eq!(run(&db).unwrap(), CURRENT);

        let mut batch = Batch::new();
        batch.insert(trees::GLOBAL, SCHEMA_VERSION_KEY.to_vec(), codec::u64_bytes(CURRENT + 1).to_vec());
        db.apply(batch).unwrap();
        assert!(matches!(run(&db), Err(StorageError::SchemaTooNew { .. })));
    }
}
