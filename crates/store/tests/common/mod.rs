//! Test harness shared by the behavioural store tests: `on_both!(test)` runs an async test
//! against the embedded backend and, when built with `--features etcd`, against the etcd
//! named by `CORRAL_TEST_ETCD` (e.g. `http://127.0.0.1:23790`); without that variable the
//! etcd variant says on stderr that it is skipped, and why, and passes.
//!
//! Several tests share one etcd, so each works under its own key prefix, which `TStore`
//! adds to every key it sends and strips from every key it returns (the embedded store gets
//! no prefix and is used as is). Revisions in etcd are global, so etcd tests run one at a
//! time (a process-wide lock) and compare revisions relative to where they started; cargo
//! runs test binaries one after another, so nothing else writes meanwhile.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use corral_store::{
    prefix_end, Compare, EmbeddedOptions, Error, Event, KeyValue, RangeResult, Revision, Store,
    StoreStats, TxnOutcome, WatchMessage, WatchStream,
};
use futures::Stream;

/// The environment variable naming the etcd endpoint for the etcd variants.
pub const ETCD_ENV: &str = "CORRAL_TEST_ETCD";

/// Defines `mod $name { embedded, etcd }` running `async fn $name(Harness)` on each backend.
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::common::Harness::embedded()).await
            }

            #[cfg(feature = "etcd")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                if let Some(h) = $crate::common::Harness::etcd(stringify!($name)).await {
                    super::$name(h).await
                }
            }
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Embedded,
    Etcd,
}

/// Options that mean something on both backends (or are ignored where they do not).
#[derive(Clone, Debug)]
pub struct Opts {
    pub progress_interval: Duration,
    pub retain_revisions: u64,
    pub compaction_interval: Duration,
    /// Embedded only: etcd always syncs.
    pub fsync: bool,
    /// Embedded only: the size of the live fan-out before a watcher falls back to the log.
    pub watch_channel_capacity: usize,
}

impl Default for Opts {
    fn default() -> Self {
        let e = EmbeddedOptions::default();
        Opts {
            progress_interval: e.progress_interval,
            retain_revisions: e.retain_revisions,
            compaction_interval: e.compaction_interval,
            fsync: e.fsync,
            watch_channel_capacity: e.watch_channel_capacity,
        }
    }
}

/// Where one test's store lives: a temporary directory, or a key prefix in the shared etcd.
pub struct Harness {
    pub kind: Kind,
    dir: Option<tempfile::TempDir>,
    endpoint: String,
    prefix: Arc<[u8]>,
    _serial: Option<tokio::sync::MutexGuard<'static, ()>>,
}

/// etcd tests run one at a time so that revisions move only by their own writes.
static ETCD_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Harness {
    pub fn embedded() -> Harness {
        Harness {
            kind: Kind::Embedded,
            dir: Some(tempfile::tempdir().unwrap()),
            endpoint: String::new(),
            prefix: Arc::from(&b""[..]),
            _serial: None,
        }
    }

    /// The etcd harness for `test`, or None (after saying so) when no etcd is configured.
    pub async fn etcd(test: &str) -> Option<Harness> {
        let endpoint = etcd_endpoint(test)?;
        let serial = ETCD_SERIAL.lock().await;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("/corral-store-test/{test}/{}-{nanos}/", std::process::id());
        Some(Harness {
            kind: Kind::Etcd,
            dir: None,
            endpoint,
            prefix: Arc::from(prefix.as_bytes()),
            _serial: Some(serial),
        })
    }

    pub fn is_embedded(&self) -> bool {
        self.kind == Kind::Embedded
    }

    /// Opens (or, after a close, reopens) this test's store.
    pub async fn open(&self, o: Opts) -> TStore {
        let inner = match self.kind {
            Kind::Embedded => {
                let opts = EmbeddedOptions {
                    progress_interval: o.progress_interval,
                    retain_revisions: o.retain_revisions,
                    compaction_interval: o.compaction_interval,
                    fsync: o.fsync,
                    watch_channel_capacity: o.watch_channel_capacity,
                    ..Default::default()
                };
                Store::open_embedded(self.dir.as_ref().unwrap().path(), opts).unwrap()
            }
            Kind::Etcd => connect_etcd(&self.endpoint, &o).await,
        };
        TStore {
            inner,
            prefix: self.prefix.clone(),
        }
    }
}

#[cfg(feature = "etcd")]
async fn connect_etcd(endpoint: &str, o: &Opts) -> Store {
    let opts = corral_store::EtcdOptions {
        progress_interval: o.progress_interval,
        retain_revisions: o.retain_revisions,
        compaction_interval: o.compaction_interval,
        ..Default::default()
    };
    Store::connect_etcd(&[endpoint.to_string()], opts)
        .await
        .unwrap_or_else(|e| panic!("{ETCD_ENV}={endpoint}: {e}"))
}

#[cfg(not(feature = "etcd"))]
async fn connect_etcd(_endpoint: &str, _o: &Opts) -> Store {
    unreachable!("etcd harnesses exist only with the etcd feature")
}

/// The configured etcd endpoint, or None after telling the terminal that `test` is skipped.
pub fn etcd_endpoint(test: &str) -> Option<String> {
    match std::env::var(ETCD_ENV) {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            skipped(test);
            None
        }
    }
}

/// Says once per test that its etcd variant did not run. Written to the process's stderr
/// directly, not through `eprintln!`, so the test harness does not capture it.
fn skipped(test: &str) {
    use std::io::Write;
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if said.iter().any(|t| t == test) {
        return;
    }
    said.push(test.to_string());
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test} on etcd: {ETCD_ENV} is not set (an etcd endpoint; scripts/test.sh starts one)"
    );
}

/// A store seen through this test's key prefix.
#[derive(Clone)]
pub struct TStore {
    pub inner: Store,
    prefix: Arc<[u8]>,
}

impl TStore {
    fn k(&self, key: &[u8]) -> Vec<u8> {
        [&self.prefix[..], key].concat()
    }

    /// A range end: empty ("no upper bound") becomes the end of the prefix.
    fn end(&self, end: &[u8]) -> Vec<u8> {
        if end.is_empty() {
            prefix_end(&self.prefix)
        } else {
            self.k(end)
        }
    }

    fn strip(&self, mut kv: KeyValue) -> KeyValue {
        assert!(
            kv.key.starts_with(&self.prefix),
            "key {:?} outside the test's prefix",
            String::from_utf8_lossy(&kv.key)
        );
        kv.key.drain(..self.prefix.len());
        kv
    }

    fn strip_outcome(&self, o: TxnOutcome) -> TxnOutcome {
        match o {
            TxnOutcome::Committed { revision, prev } => TxnOutcome::Committed {
                revision,
                prev: prev.map(|kv| self.strip(kv)),
            },
            TxnOutcome::Conflict { current } => TxnOutcome::Conflict {
                current: current.map(|kv| self.strip(kv)),
            },
        }
    }

    pub fn current_revision(&self) -> Revision {
        self.inner.current_revision()
    }

    pub fn compacted_revision(&self) -> Revision {
        self.inner.compacted_revision()
    }

    pub fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        Ok(self.inner.get(&self.k(key)).await?.map(|kv| self.strip(kv)))
    }

    pub async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<RangeResult, Error> {
        let mut r = self
            .inner
            .range(&self.k(start), &self.end(end), limit)
            .await?;
        r.kvs = r.kvs.into_iter().map(|kv| self.strip(kv)).collect();
        Ok(r)
    }

    pub async fn range_at(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        revision: Revision,
    ) -> Result<RangeResult, Error> {
        let mut r = self
            .inner
            .range_at(&self.k(start), &self.end(end), limit, revision)
            .await?;
        r.kvs = r.kvs.into_iter().map(|kv| self.strip(kv)).collect();
        Ok(r)
    }

    /// All chunks of a `range_chunks` read, collected: (revision, chunk sizes, key-values).
    /// `between` runs after the snapshot was taken and before the chunks are read.
    pub async fn range_chunks(
        &self,
        start: &[u8],
        end: &[u8],
        chunk: usize,
        between: impl std::future::Future<Output = ()>,
    ) -> Result<(Revision, Vec<usize>, Vec<KeyValue>), Error> {
        let mut r = self
            .inner
            .range_chunks(&self.k(start), &self.end(end), chunk)
            .await?;
        between.await;
        let (mut sizes, mut kvs) = (Vec::new(), Vec::new());
        while let Some(c) = r.next().await {
            let c = c?;
            sizes.push(c.len());
            kvs.extend(c.into_iter().map(|kv| self.strip(kv)));
        }
        Ok((r.revision, sizes, kvs))
    }

    pub async fn count(&self, start: &[u8], end: &[u8]) -> Result<u64, Error> {
        self.inner.count(&self.k(start), &self.end(end)).await
    }

    pub async fn put(&self, key: &[u8], value: Bytes, cmp: Compare) -> Result<TxnOutcome, Error> {
        let o = self.inner.put(&self.k(key), value, cmp).await?;
        Ok(self.strip_outcome(o))
    }

    pub async fn delete(&self, key: &[u8], cmp: Compare) -> Result<TxnOutcome, Error> {
        let o = self.inner.delete(&self.k(key), cmp).await?;
        Ok(self.strip_outcome(o))
    }

    pub fn watch(&self, start: &[u8], end: &[u8], after: Revision) -> Result<TWatch, Error> {
        let inner = self.inner.watch(&self.k(start), &self.end(end), after)?;
        Ok(TWatch {
            inner,
            store: self.clone(),
        })
    }

    pub async fn compact(&self, revision: Revision) -> Result<(), Error> {
        self.inner.compact(revision).await
    }

    pub async fn verify(&self) -> Result<(), Error> {
        self.inner.verify().await
    }

    pub async fn close(self) {
        self.inner.close().await
    }
}

/// A watch seen through the test's key prefix.
pub struct TWatch {
    inner: WatchStream,
    store: TStore,
}

impl TWatch {
    pub fn request_progress(&self) {
        self.inner.request_progress()
    }
}

impl Stream for TWatch {
    type Item = Result<WatchMessage, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(WatchMessage::Event(ev)))) => {
                let ev = Event {
                    kind: ev.kind,
                    kv: this.store.strip(ev.kv),
                    prev: ev.prev.map(|kv| this.store.strip(kv)),
                };
                Poll::Ready(Some(Ok(WatchMessage::Event(ev))))
            }
            other => other,
        }
    }
}
