//! One conformance suite for every [`super::Store`] implementation.
//!
//! `storage_conformance_tests!(expr)` expands to tests that each build a
//! fresh store with `expr`.

#[macro_export]
#[doc(hidden)]
macro_rules! storage_conformance_tests {
    ($make:expr) => {
        use $crate::storage::{Batch, StorageError, Store, trees};

        fn make() -> impl Store {
            $make
        }

        fn collect(it: $crate::storage::KvIter<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
            it.map(|r| r.expect("scan item")).collect()
        }

        #[test]
        fn get_insert_remove() {
            let store = make();
            let t = store.tree(trees::GLOBAL).unwrap();
            assert_eq!(t.get(b"a").unwrap(), None);
            t.insert(b"a", b"1").unwrap();
            assert_eq!(t.get(b"a").unwrap(), Some(b"1".to_vec()));
            t.insert(b"a", b"2").unwrap();
            assert_eq!(t.get(b"a").unwrap(), Some(b"2".to_vec()));
            t.remove(b"a").unwrap();
            assert_eq!(t.get(b"a").unwrap(), None);
            // Removing a missing key is not an error.
            t.remove(b"missing").unwrap();
        }

        #[test]
        fn trees_are_independent_and_unknown_tree_is_an_error() {
            let store = make();
            store.tree(trees::USERID_ACCOUNT).unwrap().insert(b"k", b"v").unwrap();
            assert_eq!(store.tree(trees::USERID_PROFILE).unwrap().get(b"k").unwrap(), None);
            assert!(matches!(store.tree("no_such_tree"), Err(StorageError::UnknownTree(_))));
        }

        #[test]
        fn prefix_scan_is_ordered_and_bounded() {
            let store = make();
            let t = store.tree(trees::GLOBAL).unwrap();
            for k in [&b"b\xff2"[..], b"a", b"b\xff1", b"b\xff10", b"c", b"b"] {
                t.insert(k, k).unwrap();
            }
            let keys: Vec<Vec<u8>> = collect(t.scan_prefix(b"b\xff")).into_iter().map(|(k, _)| k).collect();
            assert_eq!(keys, vec![b"b\xff1".to_vec(), b"b\xff10".to_vec(), b"b\xff2".to_vec()]);
            assert!(collect(t.scan_prefix(b"zz")).is_empty());
        }

        #[test]
        fn range_forward_and_reverse() {
            let store = make();
            let t = store.tree(trees::GLOBAL).unwrap();
            for n in 1u64..=5 {
                t.insert(&n.to_be_bytes(), b"x").unwrap();
            }
            let fwd: Vec<u64> = collect(t.range(&2u64.to_be_bytes(), Some(&4u64.to_be_bytes()), false))
                .iter()
                .map(|(k, _)| u64::from_be_bytes(k.as_slice().try_into().unwrap()))
                .collect();
            assert_eq!(fwd, vec![2, 3]);
            let rev: Vec<u64> = collect(t.range(&2u64.to_be_bytes(), None, true))
                .iter()
                .map(|(k, _)| u64::from_be_bytes(k.as_slice().try_into().unwrap()))
                .collect();
            assert_eq!(rev, vec![5, 4, 3, 2]);
            assert!(collect(t.range(&4u64.to_be_bytes(), Some(&2u64.to_be_bytes()), false)).is_empty());
        }

        #[test]
        fn batch_is_applied_across_trees() {
            let store = make();
            let mut batch = Batch::new();
            batch.insert(trees::USERID_ACCOUNT, b"u".to_vec(), b"acct".to_vec());
            batch.insert(trees::USERID_PROFILE, b"u".to_vec(), b"prof".to_vec());
            batch.remove(trees::GLOBAL, b"gone".to_vec());
            store.tree(trees::GLOBAL).unwrap().insert(b"gone", b"x").unwrap();
            store.apply(batch).unwrap();
            assert_eq!(store.tree(trees::USERID_ACCOUNT).unwrap().get(b"u").unwrap(), Some(b"acct".to_vec()));
            assert_eq!(store.tree(trees::USERID_PROFILE).unwrap().get(b"u").unwrap(), Some(b"prof".to_vec()));
            assert_eq!(store.tree(trees::GLOBAL).unwrap().get(b"gone").unwrap(), None);
            store.flush().unwrap();
        }

        #[test]
        fn batch_with_unknown_tree_changes_nothing() {
            let store = make();
            let mut batch = Batch::new();
            batch.insert(trees::USERID_ACCOUNT, b"u".to_vec(), b"acct".to_vec());
            batch.insert("no_such_tree", b"u".to_vec(), b"x".to_vec());
            assert!(store.apply(batch).is_err());
            assert_eq!(store.tree(trees::USERID_ACCOUNT).unwrap().get(b"u").unwrap(), None);
        }

        #[test]
        fn later_write_in_batch_wins() {
            let store = make();
            let mut batch = Batch::new();
            batch.insert(trees::GLOBAL, b"k".to_vec(), b"1".to_vec());
            batch.remove(trees::GLOBAL, b"k".to_vec());
            batch.insert(trees::GLOBAL, b"k".to_vec(), b"3".to_vec());
            store.apply(batch).unwrap();
            assert_eq!(store.tree(trees::GLOBAL).unwrap().get(b"k").unwrap(), Some(b"3".to_vec()));
        }

        #[tokio::test]
        async fn watch_prefix_wakes_on_matching_write_only() {
            let store = make();
            let t = store.tree(trees::GLOBAL).unwrap();
            let watch = t.watch_prefix(b"room\xff");
            t.insert(b"other", b"x").unwrap();
            let mut watch = Box::pin(watch);
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(50), &mut watch).await.is_err(),
                "a write outside the prefix must not wake the watcher"
            );
            t.insert(b"room\xff1", b"x").unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(5), watch)
                .await
                .expect("a write under the prefix wakes the watcher");
        }

        #[tokio::test]
        async fn watch_prefix_wakes_on_batch() {
            let store = make();
            let t = store.tree(trees::GLOBAL).unwrap();
            let watch = t.watch_prefix(b"p");
            let mut batch = Batch::new();
            batch.insert(trees::GLOBAL, b"p1".to_vec(), b"x".to_vec());
            store.apply(batch).unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(5), watch)
                .await
                .expect("a batch write under the prefix wakes the watcher");
        }
    };
}
