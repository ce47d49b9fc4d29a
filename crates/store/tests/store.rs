//! Operations, preconditions, revision rules, range/count, reopen, locking and the bound on
//! disk use under churn, through the public API. The behavioural tests run on both backends
//! (`on_both!`, see `common`); locking, file paths and disk use are the embedded store's own.
//! Revisions are compared to the one a test started at, since etcd's history is shared.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Harness, Opts};
use corral_store::{prefix_end, Compare, EmbeddedOptions, Error, KeyValue, Store, TxnOutcome};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn committed(o: TxnOutcome) -> (i64, Option<KeyValue>) {
    match o {
        TxnOutcome::Committed { revision, prev } => (revision, prev),
        other => panic!("expected commit, got {other:?}"),
    }
}

fn conflict(o: TxnOutcome) -> Option<KeyValue> {
    match o {
        TxnOutcome::Conflict { current } => current,
        other => panic!("expected conflict, got {other:?}"),
    }
}

async fn empty_store(h: Harness) {
    let s = h.open(Opts::default()).await;
    if h.is_embedded() {
        assert_eq!(s.current_revision(), 1);
        assert_eq!(s.compacted_revision(), 0);
    }
    assert_eq!(s.get(b"nope").await.unwrap(), None);
    let r = s.range(b"", b"", 0).await.unwrap();
    assert!(r.kvs.is_empty() && !r.more);
    assert_eq!(r.revision, s.current_revision());
    assert_eq!(s.count(b"", b"").await.unwrap(), 0);
    s.verify().await.unwrap();
    s.close().await;
}
on_both!(empty_store);

async fn put_get_and_revision_rules(h: Harness) {
    let s = h.open(Opts::default()).await;
    let base = s.current_revision();
    let (r1, prev) = committed(s.put(b"a", b("1"), Compare::Any).await.unwrap());
    assert_eq!((r1, prev), (base + 1, None));
    let kv = s.get(b"a").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.value),
        (r1, r1, b("1"))
    );

    // An update keeps create_revision and returns the previous state.
    let (r2, prev) = committed(s.put(b"a", b("2"), Compare::Any).await.unwrap());
    assert_eq!(r2, base + 2);
    assert_eq!(prev.unwrap().value, b("1"));
    let kv = s.get(b"a").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));

    // Delete returns what was deleted; re-creating resets create_revision.
    let (r3, prev) = committed(s.delete(b"a", Compare::Any).await.unwrap());
    assert_eq!(r3, base + 3);
    let prev = prev.unwrap();
    assert_eq!(
        (prev.value, prev.mod_revision, prev.create_revision),
        (b("2"), r2, r1)
    );
    assert_eq!(s.get(b"a").await.unwrap(), None);
    let (r4, _) = committed(s.put(b"a", b("3"), Compare::Absent).await.unwrap());
    let kv = s.get(b"a").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r4, r4));
    assert_eq!(s.current_revision(), r4);
    s.verify().await.unwrap();
    s.close().await;
}
on_both!(put_get_and_revision_rules);

async fn preconditions(h: Harness) {
    let s = h.open(Opts::default()).await;
    // Absent: create only.
    let (r, _) = committed(s.put(b"k", b("v1"), Compare::Absent).await.unwrap());
    let cur = conflict(s.put(b"k", b("v2"), Compare::Absent).await.unwrap()).unwrap();
    assert_eq!((cur.value, cur.mod_revision), (b("v1"), r));

    // ModRevision: compare-and-swap.
    assert!(conflict(
        s.put(b"k", b("v2"), Compare::ModRevision(r + 5))
            .await
            .unwrap()
    )
    .is_some());
    let (r2, prev) = committed(s.put(b"k", b("v2"), Compare::ModRevision(r)).await.unwrap());
    assert_eq!(prev.unwrap().mod_revision, r);
    assert!(conflict(s.put(b"k", b("v3"), Compare::ModRevision(r)).await.unwrap()).is_some());
    assert_eq!(
        conflict(
            s.put(b"missing", b("x"), Compare::ModRevision(r2))
                .await
                .unwrap()
        ),
        None
    );

    // Deletes: by revision, and of missing keys.
    assert!(conflict(s.delete(b"k", Compare::ModRevision(r)).await.unwrap()).is_some());
    assert!(conflict(s.delete(b"k", Compare::Absent).await.unwrap()).is_some());
    assert_eq!(
        conflict(s.delete(b"missing", Compare::Any).await.unwrap()),
        None
    );
    assert_eq!(
        conflict(s.delete(b"missing", Compare::Absent).await.unwrap()),
        None
    );
    let (r3, _) = committed(s.delete(b"k", Compare::ModRevision(r2)).await.unwrap());

    // Conflicts do not use revisions.
    assert_eq!(s.current_revision(), r3);
    assert_eq!(r3, r2 + 1);
    assert_eq!(s.stats().conflicts, 8);
    s.close().await;
}
on_both!(preconditions);

async fn range_limit_more_and_count(h: Harness) {
    let s = h.open(Opts::default()).await;
    for k in ["/a/1", "/a/2", "/a/3", "/b/1", "/a0"] {
        s.put(k.as_bytes(), b(k), Compare::Any).await.unwrap();
    }
    let end = prefix_end(b"/a/");
    let all = s.range(b"/a/", &end, 0).await.unwrap();
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(
        keys,
        vec![b"/a/1".to_vec(), b"/a/2".to_vec(), b"/a/3".to_vec()]
    );
    assert!(!all.more);
    assert_eq!(all.revision, s.current_revision());

    let page = s.range(b"/a/", &end, 2).await.unwrap();
    assert_eq!(page.kvs.len(), 2);
    assert!(page.more);
    let exact = s.range(b"/a/", &end, 3).await.unwrap();
    assert_eq!(exact.kvs.len(), 3);
    assert!(!exact.more);
    // Continue after the last key of a page.
    let mut next = page.kvs[1].key.clone();
    next.push(0);
    let rest = s.range(&next, &end, 2).await.unwrap();
    assert_eq!(rest.kvs.len(), 1);
    assert_eq!(rest.kvs[0].key, b"/a/3".to_vec());

    assert_eq!(s.count(b"/a/", &end).await.unwrap(), 3);
    assert_eq!(s.count(b"", b"").await.unwrap(), 5);
    assert_eq!(s.count(b"/b/", b"/a/").await.unwrap(), 0);
    assert_eq!(s.range(b"/z", b"/a", 0).await.unwrap().kvs.len(), 0);
    assert_eq!(s.range(b"/a0", b"", 0).await.unwrap().kvs.len(), 2);
    s.close().await;
}
on_both!(range_limit_more_and_count);

async fn a_range_read_in_chunks_is_one_snapshot(h: Harness) {
    let s = h.open(Opts::default()).await;
    for i in 0..150 {
        let k = format!("/c/{i:03}");
        s.put(k.as_bytes(), b(&k), Compare::Any).await.unwrap();
    }
    s.put(b"/d/outside", b("x"), Compare::Any).await.unwrap();
    let end = prefix_end(b"/c/");
    let then = s.range(b"/c/", &end, 0).await.unwrap();
    // Writes after the read began do not show in it, however the chunks are paced.
    let (revision, sizes, kvs) = s
        .range_chunks(b"/c/", &end, 64, async {
            s.put(b"/c/000", b("changed"), Compare::Any).await.unwrap();
            s.delete(b"/c/001", Compare::Any).await.unwrap();
            s.put(b"/c/9999", b("new"), Compare::Any).await.unwrap();
        })
        .await
        .unwrap();
    assert_eq!(revision, then.revision);
    assert_eq!(sizes, vec![64, 64, 22]);
    assert_eq!(kvs, then.kvs);
    let (_, sizes, kvs) = s
        .range_chunks(b"/e/", &prefix_end(b"/e/"), 64, async {})
        .await
        .unwrap();
    assert!(sizes.is_empty() && kvs.is_empty());
    s.close().await;
}
on_both!(a_range_read_in_chunks_is_one_snapshot);

async fn range_at_a_past_revision(h: Harness) {
    let s = h.open(Opts::default()).await;
    for k in ["/p/b", "/p/d", "/p/f", "/q/x"] {
        s.put(k.as_bytes(), b(k), Compare::Any).await.unwrap();
    }
    let at = s.current_revision();
    let end = prefix_end(b"/p/");
    let then = s.range(b"/p/", &end, 0).await.unwrap();
    // Later: a change, a delete, creations before, between and after, a key outside.
    s.put(b"/p/d", b("d2"), Compare::Any).await.unwrap();
    s.delete(b"/p/b", Compare::Any).await.unwrap();
    for k in ["/p/a", "/p/c", "/p/g", "/q/y"] {
        s.put(k.as_bytes(), b(k), Compare::Any).await.unwrap();
    }
    s.delete(b"/p/f", Compare::Any).await.unwrap();
    s.put(b"/p/f", b("f again"), Compare::Any).await.unwrap();
    let past = s.range_at(b"/p/", &end, 0, at).await.unwrap();
    assert_eq!(past.kvs, then.kvs, "the range as it was");
    assert_eq!(past.revision, at);
    assert!(!past.more);
    // Pages of the past, resumed after a key.
    let first = s.range_at(b"/p/", &end, 2, at).await.unwrap();
    assert_eq!(first.kvs, then.kvs[..2].to_vec());
    assert!(first.more);
    let mut next = first.kvs[1].key.clone();
    next.push(0);
    let rest = s.range_at(&next, &end, 2, at).await.unwrap();
    assert_eq!(rest.kvs, then.kvs[2..].to_vec());
    assert!(!rest.more);
    // The current revision reads the current state.
    let now = s
        .range_at(b"/p/", &end, 0, s.current_revision())
        .await
        .unwrap();
    assert_eq!(now.kvs, s.range(b"/p/", &end, 0).await.unwrap().kvs);
    // History compacted away: Compacted, never a wrong answer.
    s.compact(at + 2).await.unwrap();
    assert!(matches!(
        s.range_at(b"/p/", &end, 0, at).await,
        Err(Error::Compacted { .. })
    ));
    s.close().await;
}
on_both!(range_at_a_past_revision);

async fn concurrent_writers_share_commits(h: Harness) {
    let s = h.open(Opts::default()).await;
    let base = s.current_revision();
    let mut tasks = Vec::new();
    for w in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..10 {
                let key = format!("/w/{w}/{i}");
                let (r, _) = committed(
                    s.put(key.as_bytes(), b("x"), Compare::Absent)
                        .await
                        .unwrap(),
                );
                revs.push(r);
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let expected: Vec<i64> = (base + 1..base + 501).collect();
    assert_eq!(
        all, expected,
        "every write got its own revision, without gaps"
    );
    let st = s.stats();
    assert_eq!(st.writes, 500);
    if h.is_embedded() {
        assert!(st.commits < 500, "group commit should batch writes: {st:?}");
    }
    s.verify().await.unwrap();
    s.close().await;
}
on_both!(concurrent_writers_share_commits);

async fn reopen_preserves_state_and_revision(h: Harness) {
    let s = h.open(Opts::default()).await;
    let base = s.current_revision();
    for i in 0..20 {
        s.put(format!("k{i}").as_bytes(), b("v"), Compare::Any)
            .await
            .unwrap();
    }
    s.delete(b"k3", Compare::Any).await.unwrap();
    s.compact(base + 4).await.unwrap();
    let rev = s.current_revision();
    let before = s.range(b"", b"", 0).await.unwrap();
    s.close().await;

    // etcd: a new connection finds the revisions again (the compacted one by probing).
    let s = h.open(Opts::default()).await;
    assert_eq!(s.current_revision(), rev);
    assert_eq!(s.compacted_revision(), base + 4);
    assert_eq!(s.range(b"", b"", 0).await.unwrap(), before);
    let (r, _) = committed(s.put(b"k3", b("again"), Compare::Absent).await.unwrap());
    assert_eq!(r, rev + 1);
    s.verify().await.unwrap();
    s.close().await;
}
on_both!(reopen_preserves_state_and_revision);

async fn operations_after_close_fail_cleanly(h: Harness) {
    let s = h.open(Opts::default()).await;
    let other = s.clone();
    s.close().await;
    assert!(matches!(other.get(b"a").await, Err(Error::Closed)));
    assert!(matches!(
        other.put(b"a", b("x"), Compare::Any).await,
        Err(Error::Closed)
    ));
    assert!(matches!(other.watch(b"a", b"", 0), Err(Error::Closed)));
}
on_both!(operations_after_close_fail_cleanly);

#[test]
fn second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path(), EmbeddedOptions::default()).unwrap();
    match Store::open_embedded(dir.path(), EmbeddedOptions::default()) {
        Err(e @ Error::Locked { .. }) => assert!(e.to_string().contains("locked"), "{e}"),
        other => panic!("expected Locked, got {other:?}"),
    }
    // Dropping the last handle releases the file.
    drop(s);
    Store::open_embedded(dir.path(), EmbeddedOptions::default()).unwrap();
}

#[test]
fn file_path_and_directory_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sub/state.redb");
    let s = Store::open_embedded(&file, EmbeddedOptions::default()).unwrap();
    assert_eq!(s.path(), Some(file.as_path()));
    drop(s);
    let d = dir.path().join("data");
    let s = Store::open_embedded(&d, EmbeddedOptions::default()).unwrap();
    assert_eq!(s.path(), Some(d.join(corral_store::FILE_NAME).as_path()));
}

async fn compact_rules(h: Harness) {
    let s = h.open(Opts::default()).await;
    let base = s.current_revision();
    for i in 0..10 {
        s.put(b"k", b(&i.to_string()), Compare::Any).await.unwrap();
    }
    assert!(matches!(
        s.compact(base + 99).await,
        Err(Error::FutureRevision { .. })
    ));
    s.compact(base + 5).await.unwrap();
    assert_eq!(s.compacted_revision(), base + 5);
    s.compact(base + 2).await.unwrap(); // already compacted: no-op
    assert_eq!(s.compacted_revision(), base + 5);
    // Latest values survive compaction.
    assert_eq!(s.get(b"k").await.unwrap().unwrap().value, b("9"));
    s.verify().await.unwrap();
    s.close().await;
}
on_both!(compact_rules);

async fn automatic_compaction_keeps_retained_history(h: Harness) {
    let opts = Opts {
        retain_revisions: 50,
        compaction_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let s = h.open(opts).await;
    for i in 0..200 {
        s.put(format!("k{}", i % 7).as_bytes(), b("v"), Compare::Any)
            .await
            .unwrap();
    }
    let cur = s.current_revision();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.compacted_revision() < cur - 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "no automatic compaction"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.compacted_revision(), cur - 50);
    s.verify().await.unwrap();
    s.close().await;
}
on_both!(automatic_compaction_keeps_retained_history);

/// 200,000 updates of the same 100 keys must not grow the file without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_stays_bounded_under_churn() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        retain_revisions: 1_000,
        compaction_interval: Duration::from_millis(100),
        // The bound is about space reuse, not durability; skip fsync to keep the test fast.
        fsync: false,
        ..Default::default()
    };
    let s = Store::open_embedded(dir.path(), opts).unwrap();
    let value = Bytes::from(vec![7u8; 256]);
    let mut sizes = Vec::new();
    let writers = 20;
    let total = 200_000;
    for round in 0..10 {
        let mut tasks = Vec::new();
        for w in 0..writers {
            let s = s.clone();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..total / 10 / writers {
                    let key = format!("/churn/{}", (w * 31 + i) % 100);
                    s.put(key.as_bytes(), value.clone(), Compare::Any)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let size = std::fs::metadata(s.path().unwrap()).unwrap().len();
        sizes.push(size);
        eprintln!(
            "round {round}: revision {} compacted {} file {} KiB",
            s.current_revision(),
            s.compacted_revision(),
            size / 1024
        );
    }
    assert_eq!(s.current_revision(), 1 + total as i64);
    assert_eq!(s.count(b"", b"").await.unwrap(), 100);
    // Live data is ~100 values plus <= 2,000 log records of ~512 bytes: about 1 MiB. Without
    // compaction and page reuse the file would pass 100 MiB.
    let max = *sizes.iter().max().unwrap();
    assert!(
        max < 16 * 1024 * 1024,
        "file grew to {max} bytes: {sizes:?}"
    );
    // And it stops growing: the second half of the run adds nothing significant.
    let mid = sizes[4];
    assert!(
        sizes[9] <= mid + mid / 2 + 1024 * 1024,
        "file keeps growing: {sizes:?}"
    );
    s.verify().await.unwrap();
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_shrinks_at_open_after_mass_delete() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        fsync: false,
        retain_revisions: 100,
        ..Default::default()
    };
    let s = Store::open_embedded(dir.path(), opts.clone()).unwrap();
    let value = Bytes::from(vec![1u8; 4096]);
    for i in 0..2000 {
        s.put(format!("/big/{i}").as_bytes(), value.clone(), Compare::Any)
            .await
            .unwrap();
    }
    // Live data written after the big values sits at the end of the file, so the space the
    // deletes free cannot simply be cut off the end.
    for i in 0..200 {
        s.put(format!("/keep/{i}").as_bytes(), value.clone(), Compare::Any)
            .await
            .unwrap();
    }
    for i in 0..2000 {
        s.delete(format!("/big/{i}").as_bytes(), Compare::Any)
            .await
            .unwrap();
    }
    s.compact(s.current_revision()).await.unwrap();
    let rev = s.current_revision();
    s.close().await;
    let full = std::fs::metadata(dir.path().join(corral_store::FILE_NAME))
        .unwrap()
        .len();

    // Below the threshold: left alone.
    let s = Store::open_embedded(dir.path(), opts.clone()).unwrap();
    s.close().await;
    assert_eq!(
        std::fs::metadata(dir.path().join(corral_store::FILE_NAME))
            .unwrap()
            .len(),
        full
    );

    let s = Store::open_embedded(
        dir.path(),
        EmbeddedOptions {
            compact_file_above: 1 << 20,
            ..opts
        },
    )
    .unwrap();
    let small = std::fs::metadata(s.path().unwrap()).unwrap().len();
    assert!(small * 2 < full, "file not compacted: {full} -> {small}");
    assert_eq!(s.current_revision(), rev);
    assert_eq!(s.count(b"", b"").await.unwrap(), 200);
    s.put(b"/after", b("x"), Compare::Absent).await.unwrap();
    s.verify().await.unwrap();
    s.close().await;
}

#[test]
fn abandoned_creation_is_ignored_and_removed() {
    // What a kill during the very first open leaves behind: a half-written temporary file.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("store.redb.creating.4242");
    std::fs::write(&stale, b"half a header").unwrap();
    let s = Store::open_embedded(dir.path(), EmbeddedOptions::default()).unwrap();
    assert_eq!(s.current_revision(), 1);
    assert!(!stale.exists());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![corral_store::FILE_NAME.to_string()]);
}
