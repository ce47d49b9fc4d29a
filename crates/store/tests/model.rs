//! Property test: random puts, deletes (with every kind of precondition), compactions and
//! reopens against a BTreeMap model. Outcomes, revisions, final state and the events a
//! watcher receives must all equal the model's. Runs on the embedded store and, with the
//! `etcd` feature and `CORRAL_TEST_ETCD`, on etcd (a reopen is a new connection there).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{Harness, Opts, TWatch};
use corral_store::{Compare, Event, EventKind, KeyValue, TxnOutcome, WatchMessage};
use futures::StreamExt;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Cmp {
    Any,
    Absent,
    /// The key's current mod_revision (succeeds if the key exists).
    Current,
    /// Some other revision (almost always fails).
    Stale(i64),
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8, Cmp),
    Delete(u8, Cmp),
    /// Compact to a fraction (in 1/8) of the way from the compacted to the current revision.
    Compact(u8),
    Reopen,
}

fn cmp() -> impl Strategy<Value = Cmp> {
    prop_oneof![
        3 => Just(Cmp::Any),
        2 => Just(Cmp::Absent),
        3 => Just(Cmp::Current),
        1 => (0i64..40).prop_map(Cmp::Stale),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u8..6, any::<u8>(), cmp()).prop_map(|(k, v, c)| Op::Put(k, v, c)),
        5 => (0u8..6, cmp()).prop_map(|(k, c)| Op::Delete(k, c)),
        1 => (0u8..9).prop_map(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    revision: i64,
    compacted: i64,
    events: Vec<Event>,
}

impl Model {
    fn compare(&self, key: &[u8], c: &Cmp) -> Compare {
        match c {
            Cmp::Any => Compare::Any,
            Cmp::Absent => Compare::Absent,
            Cmp::Current => Compare::ModRevision(self.kvs.get(key).map_or(1, |kv| kv.mod_revision)),
            Cmp::Stale(r) => Compare::ModRevision(*r),
        }
    }

    fn holds(&self, key: &[u8], cmp: Compare) -> bool {
        let cur = self.kvs.get(key);
        match cmp {
            Compare::Any => true,
            Compare::Absent => cur.is_none(),
            Compare::ModRevision(r) => cur.is_some_and(|kv| kv.mod_revision == r),
        }
    }

    fn put(&mut self, key: &[u8], value: Bytes, cmp: Compare) -> TxnOutcome {
        let cur = self.kvs.get(key).cloned();
        if !self.holds(key, cmp) {
            return TxnOutcome::Conflict { current: cur };
        }
        self.revision += 1;
        let kv = KeyValue {
            key: key.to_vec(),
            value,
            create_revision: cur.as_ref().map_or(self.revision, |c| c.create_revision),
            mod_revision: self.revision,
        };
        self.kvs.insert(key.to_vec(), kv.clone());
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev: cur.clone(),
        });
        TxnOutcome::Committed {
            revision: self.revision,
            prev: cur,
        }
    }

    fn delete(&mut self, key: &[u8], cmp: Compare) -> TxnOutcome {
        let cur = self.kvs.get(key).cloned();
        let Some(prev) = cur.clone().filter(|_| self.holds(key, cmp)) else {
            return TxnOutcome::Conflict { current: cur };
        };
        self.revision += 1;
        self.kvs.remove(key);
        let kv = KeyValue {
            mod_revision: self.revision,
            ..prev.clone()
        };
        self.events.push(Event {
            kind: EventKind::Delete,
            kv,
            prev: Some(prev),
        });
        TxnOutcome::Committed {
            revision: self.revision,
            prev: cur,
        }
    }
}

fn opts() -> Opts {
    Opts {
        fsync: false, // semantics, not durability, are under test here
        progress_interval: Duration::ZERO,
        ..Default::default()
    }
}

/// Collects events from `w` until `n` have arrived or the stream ends.
async fn collect(w: &mut TWatch, out: &mut Vec<Event>, n: usize, what: &str) {
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Ok(WatchMessage::Event(ev)))) => out.push(ev),
            Ok(Some(Ok(WatchMessage::Progress(_)))) => {}
            Ok(_) => return,
            Err(_) => panic!(
                "{what} watch stalled at {} of {n} events; last seen {:?}",
                out.len(),
                out.last().map(Event::revision)
            ),
        }
    }
}

/// Compacted revisions 0 and 1 mean the same (revision 1 is the empty store, with no
/// events), and etcd cannot tell them apart after a reconnect.
fn compacted(r: i64) -> i64 {
    r.max(1)
}

async fn run(h: Harness, ops: Vec<Op>) {
    let mut store = h.open(opts()).await;
    // etcd's history is shared: the model starts where the store is.
    let mut model = Model {
        revision: store.current_revision(),
        compacted: store.compacted_revision(),
        ..Default::default()
    };
    let start = model.revision;
    let mut watch = store.watch(b"", b"", 0).unwrap();
    let mut seen: Vec<Event> = Vec::new();
    // The whole state after every op, to check reads at past revisions at the end.
    let mut snapshots: Vec<(i64, Vec<KeyValue>)> = vec![(model.revision, Vec::new())];
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Put(k, v, c) => {
                let key = format!("/k/{k}").into_bytes();
                let value = Bytes::from(vec![v; (v % 7) as usize]);
                let cmp = model.compare(&key, &c);
                let got = store.put(&key, value.clone(), cmp).await.unwrap();
                assert_eq!(got, model.put(&key, value, cmp), "op {i}: put {c:?}");
            }
            Op::Delete(k, c) => {
                let key = format!("/k/{k}").into_bytes();
                let cmp = model.compare(&key, &c);
                let got = store.delete(&key, cmp).await.unwrap();
                assert_eq!(got, model.delete(&key, cmp), "op {i}: delete {c:?}");
            }
            Op::Compact(f) => {
                // A watcher still replaying history that gets compacted is ended with
                // `Compacted` (by design); let it catch up first so the comparison holds.
                collect(&mut watch, &mut seen, model.events.len(), "pre-compact").await;
                let rev = model.compacted + (model.revision - model.compacted) * f as i64 / 8;
                store.compact(rev).await.unwrap();
                model.compacted = model.compacted.max(rev);
            }
            Op::Reopen => {
                // Take what the watcher got so far, restart, and resume it where it was.
                collect(&mut watch, &mut seen, model.events.len(), "pre-reopen").await;
                store.clone().close().await;
                store = h.open(opts()).await;
                let from = seen.last().map_or(start, Event::revision);
                watch = store.watch(b"", b"", from.max(model.compacted)).unwrap();
            }
        }
        snapshots.push((model.revision, model.kvs.values().cloned().collect()));
        assert_eq!(store.current_revision(), model.revision, "op {i}");
        assert_eq!(
            compacted(store.compacted_revision()),
            compacted(model.compacted),
            "op {i}"
        );
    }
    collect(&mut watch, &mut seen, model.events.len(), "final").await;
    assert_eq!(seen, model.events, "watched events");

    let all = store.range(b"", b"", 0).await.unwrap();
    assert_eq!(all.kvs, model.kvs.values().cloned().collect::<Vec<_>>());
    assert_eq!(all.revision, model.revision);
    for k in 0..6u8 {
        let key = format!("/k/{k}").into_bytes();
        assert_eq!(store.get(&key).await.unwrap().as_ref(), model.kvs.get(&key));
    }
    assert_eq!(store.count(b"", b"").await.unwrap(), model.kvs.len() as u64);

    // Reads at every past revision still in history, whole and in pages of two.
    let floor = store.compacted_revision();
    for (rev, kvs) in snapshots.iter().filter(|(r, _)| *r >= floor && *r >= start) {
        let at = store.range_at(b"", b"", 0, *rev).await.unwrap();
        assert_eq!(&at.kvs, kvs, "range at {rev}");
        let mut paged = Vec::new();
        let mut from = b"".to_vec();
        loop {
            let p = store.range_at(&from, b"", 2, *rev).await.unwrap();
            paged.extend(p.kvs.iter().cloned());
            if !p.more {
                break;
            }
            from = p.kvs.last().unwrap().key.clone();
            from.push(0);
        }
        assert_eq!(&paged, kvs, "paged range at {rev}");
    }

    // A watch replayed from the log yields the model's events after the compacted revision.
    let mut replay = store.watch(b"", b"", model.compacted.max(1)).unwrap();
    let want: Vec<Event> = model
        .events
        .iter()
        .filter(|e| e.revision() > model.compacted)
        .cloned()
        .collect();
    let mut got = Vec::new();
    collect(&mut replay, &mut got, want.len(), "replay").await;
    assert_eq!(got, want, "replayed events");
    store.verify().await.unwrap();
    store.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(Harness::embedded(), ops));
    }
}

// Fewer cases on etcd: every write there is a network round trip and an fsync.
#[cfg(feature = "etcd")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn etcd_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            if let Some(h) = Harness::etcd("store_matches_model").await {
                run(h, ops).await;
            }
        });
    }
}
