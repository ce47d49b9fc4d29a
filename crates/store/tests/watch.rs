//! Watch behaviour: replay then live without gap or duplicate, several watchers, a lagging
//! watcher catching up, compaction refusing old starts (and, embedded, ending a lagging
//! watch), and progress marks. Each test runs on both backends (`on_both!`, see `common`)
//! unless it says otherwise; revisions are relative to where the test started.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Harness, Opts, TStore, TWatch};
use corral_store::{prefix_end, Compare, Error, Event, EventKind, TxnOutcome, WatchMessage};
use futures::StreamExt;

const WAIT: Duration = Duration::from_secs(10);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn opts() -> Opts {
    Opts {
        // Progress marks would interleave with the events these tests compare.
        progress_interval: Duration::ZERO,
        ..Default::default()
    }
}

async fn put(s: &TStore, k: &str, v: &str) -> i64 {
    match s.put(k.as_bytes(), b(v), Compare::Any).await.unwrap() {
        TxnOutcome::Committed { revision, .. } => revision,
        other => panic!("{other:?}"),
    }
}

async fn next_event(w: &mut TWatch) -> Event {
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

async fn events(w: &mut TWatch, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next_event(w).await);
    }
    out
}

async fn replay_then_live_without_gap_or_duplicate(h: Harness) {
    let s = h.open(opts()).await;
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
on_both!(replay_then_live_without_gap_or_duplicate);

async fn watch_from_now_and_delete_events(h: Harness) {
    let s = h.open(opts()).await;
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
on_both!(watch_from_now_and_delete_events);

async fn two_watchers_see_the_same_history(h: Harness) {
    let s = h.open(opts()).await;
    let base = s.current_revision();
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
    assert_eq!(revs, (base + 1..base + 101).collect::<Vec<_>>());
    s.close().await;
}
on_both!(two_watchers_see_the_same_history);

async fn lagging_watcher_catches_up_from_the_log(h: Harness) {
    let o = Opts {
        // A tiny fan-out so that a watcher that is not read falls behind at once (embedded;
        // etcd buffers the stream itself).
        watch_channel_capacity: 2,
        ..opts()
    };
    let s = h.open(o).await;
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
on_both!(lagging_watcher_catches_up_from_the_log);

/// Embedded only: an etcd watcher is fed as etcd commits (its stream buffers what the
/// consumer has not read), so compaction cannot overtake it the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_ends_a_lagging_watch() {
    let h = Harness::embedded();
    let o = Opts {
        watch_channel_capacity: 2,
        ..opts()
    };
    let s = h.open(o).await;
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
    s.close().await;
}

async fn compaction_refuses_old_starts(h: Harness) {
    let s = h.open(opts()).await;
    let start = s.current_revision();
    for i in 0..50 {
        put(&s, "/k", &i.to_string()).await;
    }
    let c = start + 39;
    s.compact(c).await.unwrap();
    match s.watch(b"", b"", c - 1) {
        Err(Error::Compacted {
            compact_revision,
            requested,
        }) => {
            assert_eq!((compact_revision, requested), (c, c));
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("watch from compacted history accepted"),
    }
    // Exactly at the compacted revision is still fine: everything after it is kept.
    let mut ok = s.watch(b"", b"", c).unwrap();
    let evs = events(&mut ok, 11).await;
    assert_eq!(evs[0].revision(), c + 1);
    assert_eq!(evs[10].revision(), start + 50);
    s.close().await;
}
on_both!(compaction_refuses_old_starts);

async fn progress_marks_periodic_and_requested(h: Harness) {
    let o = Opts {
        progress_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let s = h.open(o).await;
    put(&s, "/other", "x").await;
    let mut w = s.watch(b"/mine/", b"/mine0", 0).unwrap();
    // Outside the range, but still progress.
    let r = put(&s, "/other", "y").await;
    // Periodic: an idle watcher is told how far it has been caught up.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, w.next()).await.unwrap() {
            Some(Ok(WatchMessage::Progress(p))) if p >= r => break,
            Some(Ok(WatchMessage::Progress(_))) => continue,
            other => panic!("{other:?}"),
        }
    }
    drop(w);
    s.close().await;

    // Requested: with periodic marks off, a request is answered (at once, embedded; after
    // a confirmation round, etcd before 3.4.25).
    let s2 = h.open(opts()).await;
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
    s2.close().await;
}
on_both!(progress_marks_periodic_and_requested);

async fn close_ends_watches_and_drop_unsubscribes(h: Harness) {
    let s = h.open(opts()).await;
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
on_both!(close_ends_watches_and_drop_unsubscribes);

async fn many_watchers_on_one_prefix(h: Harness) {
    let s = h.open(opts()).await;
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
    // Read them all at once, as a server's watch handlers do (an etcd watch opens, and
    // replays, when first polled).
    let all = futures::future::join_all(watchers.iter_mut().map(|w| events(w, 200))).await;
    for evs in all {
        assert_eq!(evs.last().unwrap().revision(), last);
    }
    s.close().await;
}
on_both!(many_watchers_on_one_prefix);

async fn replay_keeps_prev_even_when_its_revision_is_compacted(h: Harness) {
    let s = h.open(opts()).await;
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
on_both!(replay_keeps_prev_even_when_its_revision_is_compacted);

async fn watch_from_a_future_revision_skips_until_then(h: Harness) {
    let s = h.open(opts()).await;
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
on_both!(watch_from_a_future_revision_skips_until_then);

async fn progress_requested_while_replaying_comes_after_the_replay(h: Harness) {
    let s = h
        .open(Opts {
            fsync: false, // many sequential writes; durability is not under test
            ..opts()
        })
        .await;
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
on_both!(progress_requested_while_replaying_comes_after_the_replay);

/// The promise behind bookmarks: after `Progress(p)` no event at or below `p` ever comes.
/// Checked while a watch replays a backlog and follows live writes inside and outside its
/// range, with frequent periodic marks and requests (etcd: the confirmation of answers).
async fn progress_never_runs_ahead_of_events(h: Harness) {
    let s = h
        .open(Opts {
            progress_interval: Duration::from_millis(20),
            fsync: false,
            ..Default::default()
        })
        .await;
    let start = s.current_revision();
    for i in 0..300 {
        put(&s, &format!("/in/{}", i % 7), "backlog").await;
    }
    let mut w = s.watch(b"/in/", b"/in0", start).unwrap();
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..600 {
                let key = if i % 3 == 0 {
                    "/out/x".to_string()
                } else {
                    format!("/in/{}", i % 5)
                };
                put(&s, &key, "live").await;
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
        })
    };
    let want = 300 + 400;
    let (mut seen, mut marks, mut progress) = (0, 0, 0i64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen < want {
        match tokio::time::timeout_at(deadline, w.next())
            .await
            .expect("watch stalled")
        {
            Some(Ok(WatchMessage::Event(ev))) => {
                assert!(
                    ev.revision() > progress,
                    "event {} after progress mark {progress}",
                    ev.revision()
                );
                seen += 1;
                if seen % 40 == 0 {
                    w.request_progress();
                }
            }
            Some(Ok(WatchMessage::Progress(p))) => {
                assert!(p >= progress, "progress went back from {progress} to {p}");
                progress = p;
                marks += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    writer.await.unwrap();
    // Once quiet, a request is answered with everything delivered.
    let last = s.current_revision();
    w.request_progress();
    loop {
        match tokio::time::timeout(WAIT, w.next()).await.unwrap() {
            Some(Ok(WatchMessage::Progress(p))) if p >= last => break,
            Some(Ok(WatchMessage::Progress(p))) => assert!(p >= progress),
            other => panic!("{other:?}"),
        }
    }
    eprintln!("{marks} progress marks during the run");
    s.close().await;
}
on_both!(progress_never_runs_ahead_of_events);
