//! Watch behaviour: replay then live without gap or duplicate, several watchers, a lagging
//! watcher catching up from the log, compaction ending a watch, and progress marks.

use std::time::Duration;

use bytes::Bytes;
use corral_store::{
    prefix_end, Compare, EmbeddedOptions, Error, Event, EventKind, Store, TxnOutcome, WatchMessage,
    WatchStream,
};
use futures::StreamExt;

const WAIT: Duration = Duration::from_secs(10);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn opts() -> EmbeddedOptions {
    EmbeddedOptions {
        // Progress marks would interleave with the events these tests compare.
        progress_interval: Duration::ZERO,
        ..Default::default()
    }
}

async fn put(s: &Store, k: &str, v: &str) -> i64 {
    match s.put(k.as_bytes(), b(v), Compare::Any).await.unwrap() {
        TxnOutcome::Committed { revision, .. } => revision,
        other => panic!("{other:?}"),
    }
}

async fn next_event(w: &mut WatchStream) -> Event {
    loop {
        match tokio::time::timeout(WAIT, w.next())
            .await
            .expect("watch timed out")
        {
            Some(Ok(WatchMessage::Event(ev))) => return ev,
            Some(Ok(WatchMessage::Progress(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn events(w: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next_event(w).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_then_live_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path(), opts()).unwrap();
    let start = s.current_revision();
    for i in 0..30 {
        put(&s, &format!("/p/{}", i % 5), &i.to_string()).await;
        put(&s, "/other", "x").await; // outside the range
    }
    let end = prefix_end(b"/p/");
    let mut w = s.watch(b"/p/", &end, start).unwrap();
    // Writes continue while the watcher replays.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 30..60 {
                put(&s, &format!("/p/{}", i % 5), &i.to_string()).await;
            }
        })
    };
    let evs = events(&mut w, 60).await;
    writer.await.unwrap();
    let revs: Vec<i64> = evs.iter().map(Event::revision).collect();
    assert!(
        revs.windows(2).all(|p| p[0] < p[1]),
        "out of order or duplicate: {revs:?}"
    );
    let values: Vec<String> = evs
        .iter()
        .map(|e| String::from_utf8_lossy(&e.kv.value).into())
        .collect();
    let expected: Vec<String> = (0..60).map(|i| i.to_string()).collect();
    assert_eq!(values, expected);
    for ev in &evs {
        assert!(ev.kv.key.starts_with(b"/p/"));
        assert_eq!(ev.kind, EventKind::Put);
    }
    // prev is carried both in replay and live: the first 5 are creates, the rest updates.
    assert!(evs[..5].iter().all(|e| e.prev.is_none()));
    for (i, e) in evs.iter().enumerate().skip(5) {
        let prev = e.prev.as_ref().unwrap();
        assert_eq!(prev.value, b(&(i - 5).to_string()));
        assert_eq!(prev.mod_revision, evs[i - 5].revision());
        assert_eq!(prev.create_revision, e.kv.create_revision);
    }
    // Nothing more.
    assert!(tokio::time::timeout(Duration::from_millis(100), w.next())
        .await
        .is_err());
    s.close().await;
}

#[tokio::test]
async fn watch_from_now_and_delete_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path(), opts()).unwrap();
    let r0 = put(&s, "/k", "old").await;
    let mut w = s.watch(b"/k", b"/l", 0).unwrap();
    let TxnOutcome::Committed { revision: rd, .. } = s.delete(b"/k", Compare::Any).await.unwrap()
    else {
        panic!()
    };
    let ev = next_event(&mut w).await;
    assert_eq!(ev.kind, EventKind::Delete);
    assert_eq!(ev.kv.mod_revision, rd);
    assert_eq!(ev.kv.value, b("old"));
    assert_eq!(ev.kv.create_revision, r0);
    let prev = ev.prev.unwrap();
    assert_eq!((prev.mod_revision, prev.value), (r0, b("old")));

    // The same delete replayed from the log looks the same.
    let mut replay = s.watch(b"/k", b"/l", r0).unwrap();
    let again = next_event(&mut replay).await;
    assert_eq!(again.kind, EventKind::Delete);
    assert_eq!(again.kv.mod_revision, rd);
    assert_eq!(again.prev.unwrap().mod_revision, r0);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_watchers_see_the_same_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path(), opts()).unwrap();
    let mut a = s.watch(b"/x/", b"/x0", 0).unwrap();
    let mut bw = s.watch(b"/x/", b"/x0", 0).unwrap();
    let mut tasks = Vec::new();
    for w in 0..10 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                put(&s, &format!("/x/{w}"), &i.to_string()).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ea = events(&mut a, 100).await;
    let eb = events(&mut bw, 100).await;
    assert_eq!(ea, eb);
    let revs: Vec<i64> = ea.iter().map(Event::revision).collect();
    assert_eq!(revs, (2..102).collect::<Vec<_>>());
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let o = EmbeddedOptions {
        // A tiny fan-out so that a watcher that is not read falls behind at once.
        watch_channel_capacity: 2,
        ..opts()
    };
    let s = Store::open_embedded(dir.path(), o).unwrap();
    let mut w = s.watch(b"", b"", 0).unwrap();
    let mut expected = Vec::new();
    for i in 0..300 {
        expected.push(put(&s, &format!("/k{}", i % 3), &i.to_string()).await);
    }
    // Nobody read the watch during 300 commits; it must still deliver them all, in order.
    let evs = events(&mut w, 300).await;
    let revs: Vec<i64> = evs.iter().map(Event::revision).collect();
    assert_eq!(revs, expected);
    assert!(evs[3..].iter().all(|e| e.prev.is_some()));
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_ends_a_lagging_watch_and_refuses_old_starts() {
    let dir = tempfile::tempdir().unwrap();
    let o = EmbeddedOptions {
        watch_channel_capacity: 2,
        ..opts()
    };
    let s = Store::open_embedded(dir.path(), o).unwrap();
    let start = s.current_revision();
    let mut w = s.watch(b"", b"", start).unwrap();
    for i in 0..50 {
        put(&s, "/k", &i.to_string()).await;
    }
    s.compact(40).await.unwrap();
    // The watcher had buffered at most a couple of events; the rest is gone.
    let mut seen = 0;
    let err = loop {
        match tokio::time::timeout(WAIT, w.next()).await.unwrap() {
            Some(Ok(WatchMessage::Event(_))) => seen += 1,
            Some(Ok(WatchMessage::Progress(_))) => {}
            Some(Err(e)) => break e,
            None => panic!("ended without error"),
        }
    };
    assert!(seen < 40, "saw {seen}");
    assert!(
        matches!(
            err,
            Error::Compacted {
                compact_revision: 40,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(w.next().await.is_none(), "stream ends after the error");

    match s.watch(b"", b"", 39) {
        Err(Error::Compacted {
            compact_revision,
            requested,
        }) => {
            assert_eq!((compact_revision, requested), (40, 40));
        }
        other => panic!("{other:?}"),
    }
    // Exactly at the compacted revision is still fine: everything after it is kept.
    let mut ok = s.watch(b"", b"", 40).unwrap();
    let evs = events(&mut ok, 11).await;
    assert_eq!(evs[0].revision(), 41);
    assert_eq!(evs[10].revision(), 51);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_marks_periodic_and_requested() {
    let dir = tempfile::tempdir().unwrap();
    let o = EmbeddedOptions {
        progress_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let s = Store::open_embedded(dir.path(), o).unwrap();
    put(&s, "/other", "x").await;
    let mut w = s.watch(b"/mine/", b"/mine0", 0).unwrap();
    let r = put(&s, "/other", "y").await; // outside the range, but still progress
                                          // Periodic: an idle watcher is told how far it has been caught up.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, w.next()).await.unwrap() {
            Some(Ok(WatchMessage::Progress(p))) if p >= r => break,
            Some(Ok(WatchMessage::Progress(_))) => continue,
            other => panic!("{other:?}"),
        }
    }

    // Requested: with periodic marks off, a request is answered right away.
    let s2dir = tempfile::tempdir().unwrap();
    let s2 = Store::open_embedded(s2dir.path(), opts()).unwrap();
    let mut w2 = s2.watch(b"/mine/", b"/mine0", 0).unwrap();
    let r2 = put(&s2, "/other", "z").await;
    w2.request_progress();
    match tokio::time::timeout(WAIT, w2.next()).await.unwrap() {
        Some(Ok(WatchMessage::Progress(p))) => assert_eq!(p, r2),
        other => panic!("{other:?}"),
    }
    let r3 = put(&s2, "/mine/a", "1").await;
    assert_eq!(next_event(&mut w2).await.revision(), r3);
    w2.request_progress();
    match tokio::time::timeout(WAIT, w2.next()).await.unwrap() {
        Some(Ok(WatchMessage::Progress(p))) => assert_eq!(p, r3),
        other => panic!("{other:?}"),
    }
    s.close().await;
    s2.close().await;
}

#[tokio::test]
async fn close_ends_watches_and_drop_unsubscribes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path(), opts()).unwrap();
    let w = s.watch(b"", b"", 0).unwrap();
    let mut w2 = s.watch(b"", b"", 0).unwrap();
    assert_eq!(s.stats().watchers, 2);
    drop(w);
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.stats().watchers != 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.clone().close().await;
    match tokio::time::timeout(WAIT, w2.next()).await.unwrap() {
        Some(Err(Error::Closed)) => {}
        other => panic!("{other:?}"),
    }
    assert!(w2.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_on_one_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path(), opts()).unwrap();
    let mut watchers: Vec<_> = (0..1000)
        .map(|_| s.watch(b"/pods/", b"/pods0", 0).unwrap())
        .collect();
    let mut tasks = Vec::new();
    for w in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                put(&s, &format!("/pods/{w}-{i}"), "spec").await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last = s.current_revision();
    for w in &mut watchers {
        let evs = events(w, 200).await;
        assert_eq!(evs.last().unwrap().revision(), last);
    }
    s.close().await;
}

#[tokio::test]
async fn replay_keeps_prev_even_when_its_revision_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path(), opts()).unwrap();
    let r1 = put(&s, "/k", "v1").await;
    let r2 = put(&s, "/k", "v2").await;
    s.compact(r1).await.unwrap();
    let mut w = s.watch(b"/k", b"/l", r1).unwrap();
    let ev = next_event(&mut w).await;
    assert_eq!(ev.revision(), r2);
    let prev = ev.prev.unwrap();
    assert_eq!((prev.mod_revision, prev.value), (r1, b("v1")));
    s.close().await;
}

#[tokio::test]
async fn watch_from_a_future_revision_skips_until_then() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path(), opts()).unwrap();
    let now = s.current_revision();
    let mut w = s.watch(b"", b"", now + 2).unwrap();
    put(&s, "/a", "1").await;
    put(&s, "/a", "2").await;
    let r3 = put(&s, "/a", "3").await;
    let ev = next_event(&mut w).await;
    assert_eq!(ev.revision(), r3);
    assert_eq!(ev.revision(), now + 3);
    s.close().await;
}

#[tokio::test]
async fn progress_requested_while_replaying_comes_after_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(
        dir.path(),
        EmbeddedOptions {
            fsync: false, // many sequential writes; durability is not under test
            ..opts()
        },
    )
    .unwrap();
    let start = s.current_revision();
    for i in 0..3000 {
        // More than one catch-up step (1024 records).
        put(&s, &format!("/r/{}", i % 10), "v").await;
    }
    let last = s.current_revision();
    let mut w = s.watch(b"/r/", b"/r0", start).unwrap();
    w.request_progress();
    let mut n = 0;
    loop {
        match tokio::time::timeout(WAIT, w.next()).await.unwrap() {
            Some(Ok(WatchMessage::Event(_))) => n += 1,
            Some(Ok(WatchMessage::Progress(p))) => {
                assert_eq!(n, 3000, "progress before all replayed events");
                assert_eq!(p, last);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    s.close().await;
}
