//! The etcd backend: the store's API on an etcd cluster's v3 API, so that several corral
//! servers can share one cluster. Writes are single-key transactions whose compare carries
//! the precondition and whose else branch reads the current value (one round trip, even on
//! conflict); reads are linearizable ranges; watches are etcd watches (see `watch`).
//!
//! etcd's responses carry the cluster revision in their header; the revisions the API asks
//! for synchronously (`current_revision`, `compacted_revision`) are kept from those headers,
//! from watch responses and from compactions, so they are at least as new as anything this
//! process has seen. etcd (3.4) has no call that returns its compacted revision, so it is
//! found at connect by a binary search over historical reads, and refreshed the same way by
//! the background compactor.

mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient,
    PutOptions, ResponseHeader, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use tokio::sync::watch as signal;

use crate::{
    Compare, Error, EtcdOptions, KeyValue, RangeResult, Revision, StoreStats, TxnOutcome,
    WatchStream,
};

/// Largest response accepted from etcd. tonic's default (4 MiB) is far below what a full
/// list of a big resource or a burst of watch events can be; etcd itself sends up to 2 GiB.
const MAX_MESSAGE: usize = 1 << 30;

/// What etcd says (as a gRPC status message) when a revision is at or below its compaction.
const COMPACTED_MSG: &str = "required revision has been compacted";
/// What etcd says when a revision is past its current one.
const FUTURE_MSG: &str = "required revision is a future revision";

/// State shared with watchers and the compactor.
pub(crate) struct Shared {
    pub current: AtomicI64,
    pub compacted: AtomicI64,
    pub commits: AtomicU64,
    pub writes: AtomicU64,
    pub conflicts: AtomicU64,
    pub watchers: AtomicU64,
    /// Set once on close; watchers and the compactor stop when it changes.
    pub closed: signal::Sender<bool>,
    /// Whether etcd answers a watch progress request in order with the watcher's events
    /// (3.4.25+ and 3.5.8+). Older servers may answer before events already queued.
    pub ordered_progress: bool,
    pub endpoints: String,
}

impl Shared {
    /// Records the revision of a response: the cluster is at least there.
    pub fn saw(&self, header: Option<&ResponseHeader>) {
        if let Some(h) = header {
            self.current.fetch_max(h.revision(), Ordering::SeqCst);
        }
    }
}

pub(crate) struct Etcd {
    shared: Arc<Shared>,
    opts: EtcdOptions,
    /// None once closed.
    client: RwLock<Option<Client>>,
}

impl Etcd {
    /// Connects and checks that etcd answers (within `connect_timeout`), reads its revision
    /// and compacted revision, and starts the background compactor.
    pub async fn connect(endpoints: &[String], opts: EtcdOptions) -> Result<Arc<Etcd>, Error> {
        let joined = endpoints.join(",");
        let unreachable = |source: Arc<dyn std::error::Error + Send + Sync>| Error::Unreachable {
            endpoints: joined.clone(),
            source,
        };
        if endpoints.is_empty() {
            return Err(unreachable(Arc::new(etcd_client::Error::InvalidArgs(
                "no endpoint given".into(),
            ))));
        }
        let connect_opts = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            // Finds a dead connection (etcd killed, network gone) under a silent watch.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        // The client connects lazily and waits for an endpoint to come up, so an unreachable
        // etcd shows only as a request that never ends: bound the first one.
        let first = async {
            let mut client = Client::connect(endpoints, Some(connect_opts)).await?;
            let status = client.status().await?;
            Ok::<_, etcd_client::Error>((client, status))
        };
        let (client, status) = match tokio::time::timeout(opts.connect_timeout, first).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(unreachable(Arc::new(e))),
            Err(_) => {
                return Err(unreachable(Arc::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", opts.connect_timeout),
                ))))
            }
        };
        let version = status.version().to_string();
        let (closed, _) = signal::channel(false);
        let shared = Arc::new(Shared {
            current: AtomicI64::new(0),
            compacted: AtomicI64::new(0),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            watchers: AtomicU64::new(0),
            closed,
            ordered_progress: progress_is_ordered(&version),
            endpoints: joined.clone(),
        });
        shared.saw(status.header());
        let etcd = Arc::new(Etcd {
            shared,
            opts,
            client: RwLock::new(Some(client)),
        });
        let compacted = etcd.find_compacted().await?;
        etcd.shared.compacted.fetch_max(compacted, Ordering::SeqCst);
        tracing::info!(
            endpoints = %joined,
            version = %version,
            revision = etcd.current_revision(),
            compacted,
            "connected to etcd"
        );
        if !etcd.shared.ordered_progress {
            tracing::info!(
                version = %version,
                "this etcd may answer watch progress requests out of order; progress answers are confirmed by a later one before use"
            );
        }
        if !etcd.opts.compaction_interval.is_zero() {
            tokio::spawn(compactor(
                Arc::downgrade(&etcd),
                etcd.shared.closed.subscribe(),
                etcd.opts.compaction_interval,
            ));
        }
        Ok(etcd)
    }

    pub fn current_revision(&self) -> Revision {
        self.shared.current.load(Ordering::SeqCst)
    }

    pub fn compacted_revision(&self) -> Revision {
        self.shared.compacted.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
            conflicts: self.shared.conflicts.load(Ordering::Relaxed),
            watchers: self.shared.watchers.load(Ordering::Relaxed),
        }
    }

    fn client(&self) -> Result<Client, Error> {
        // A poisoned lock only means a panic elsewhere; the Option inside is still sound.
        let guard = self.client.read().unwrap_or_else(|e| e.into_inner());
        guard.clone().ok_or(Error::Closed)
    }

    fn kv(&self) -> Result<KvClient, Error> {
        Ok(self
            .client()?
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE))
    }

    /// Runs one request with the request timeout, mapping its failure.
    async fn call<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.opts.request_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.map_err(op, e, 0)),
            Err(_) => Err(Error::Etcd {
                op,
                source: Arc::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.opts.request_timeout),
                )),
            }),
        }
    }

    /// Maps an etcd error; `requested` is the revision the request was about, if any.
    fn map_err(&self, op: &'static str, e: etcd_client::Error, requested: Revision) -> Error {
        match status_message(&e) {
            Some(m) if m.contains(COMPACTED_MSG) => Error::Compacted {
                compact_revision: self.compacted_revision().max(requested),
                requested,
            },
            Some(m) if m.contains(FUTURE_MSG) => Error::FutureRevision {
                requested,
                current_revision: self.current_revision(),
            },
            _ => Error::Etcd {
                op,
                source: Arc::new(e),
            },
        }
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        if key.is_empty() {
            // etcd refuses an empty key; none can exist there.
            return Ok(None);
        }
        let mut kv = self.kv()?;
        let mut resp = self.call("get", kv.get(key, None)).await?;
        self.shared.saw(resp.header());
        Ok(resp.take_kvs().into_iter().next().map(from_etcd))
    }

    pub async fn range_at(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        revision: Revision,
    ) -> Result<RangeResult, Error> {
        let mut kv = self.kv()?;
        let Some((key, range_end)) = etcd_range(start, end) else {
            return Ok(RangeResult {
                kvs: Vec::new(),
                more: false,
                revision,
            });
        };
        let opts = GetOptions::new()
            .with_range(range_end)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .with_revision(revision);
        let mut resp = self.call("range", kv.get(key, Some(opts))).await?;
        self.shared.saw(resp.header());
        let more = resp.more();
        Ok(RangeResult {
            kvs: resp.take_kvs().into_iter().map(from_etcd).collect(),
            more,
            revision,
        })
    }

    pub async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<RangeResult, Error> {
        let mut kv = self.kv()?;
        let Some((key, range_end)) = etcd_range(start, end) else {
            return Ok(RangeResult {
                kvs: Vec::new(),
                more: false,
                revision: self.fresh_revision().await?,
            });
        };
        let opts = GetOptions::new()
            .with_range(range_end)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let mut resp = self.call("range", kv.get(key, Some(opts))).await?;
        self.shared.saw(resp.header());
        let revision = resp.header().map_or(0, |h| h.revision());
        let more = resp.more();
        Ok(RangeResult {
            kvs: resp.take_kvs().into_iter().map(from_etcd).collect(),
            more,
            revision,
        })
    }

    pub async fn count(&self, start: &[u8], end: &[u8]) -> Result<u64, Error> {
        let mut kv = self.kv()?;
        let Some((key, range_end)) = etcd_range(start, end) else {
            return Ok(0);
        };
        let opts = GetOptions::new().with_range(range_end).with_count_only();
        let resp = self.call("count", kv.get(key, Some(opts))).await?;
        self.shared.saw(resp.header());
        Ok(u64::try_from(resp.count()).unwrap_or(0))
    }

    /// The cluster's revision now (one cheap read).
    async fn fresh_revision(&self) -> Result<Revision, Error> {
        let mut kv = self.kv()?;
        let opts = GetOptions::new().with_count_only();
        let resp = self.call("get", kv.get(vec![0u8], Some(opts))).await?;
        self.shared.saw(resp.header());
        Ok(self.current_revision())
    }

    pub async fn put(&self, key: &[u8], value: Bytes, cmp: Compare) -> Result<TxnOutcome, Error> {
        let write = TxnOp::put(key, value.to_vec(), Some(PutOptions::new().with_prev_key()));
        self.write("put", key, cmp, write).await
    }

    pub async fn delete(&self, key: &[u8], cmp: Compare) -> Result<TxnOutcome, Error> {
        if cmp == Compare::Absent {
            // Deleting a key that must not exist never applies; say what is there.
            let current = self.get(key).await?;
            self.shared.conflicts.fetch_add(1, Ordering::Relaxed);
            return Ok(TxnOutcome::Conflict { current });
        }
        let write = TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()));
        self.write("delete", key, cmp, write).await
    }

    /// One transaction: if `cmp` (and, for deletes, existence) holds, `write`; else read.
    async fn write(
        &self,
        op: &'static str,
        key: &[u8],
        cmp: Compare,
        write: TxnOp,
    ) -> Result<TxnOutcome, Error> {
        let mut kv = self.kv()?;
        let is_delete = op == "delete";
        let exists = etcd_client::Compare::create_revision(key, CompareOp::Greater, 0);
        let compares = match cmp {
            // A delete of a missing key is a conflict, not an empty success.
            Compare::Any if is_delete => vec![exists],
            Compare::Any => Vec::new(),
            Compare::Absent => vec![etcd_client::Compare::create_revision(
                key,
                CompareOp::Equal,
                0,
            )],
            Compare::ModRevision(r) => vec![
                etcd_client::Compare::mod_revision(key, CompareOp::Equal, r),
                exists,
            ],
        };
        let txn = Txn::new()
            .when(compares)
            .and_then(vec![write])
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = self.call(op, kv.txn(txn)).await?;
        self.shared.saw(resp.header());
        if resp.succeeded() {
            self.shared.commits.fetch_add(1, Ordering::Relaxed);
            self.shared.writes.fetch_add(1, Ordering::Relaxed);
            let revision = resp.header().map_or(0, |h| h.revision());
            Ok(TxnOutcome::Committed {
                revision,
                prev: written_prev(&resp),
            })
        } else {
            self.shared.conflicts.fetch_add(1, Ordering::Relaxed);
            let current = match resp.op_responses().into_iter().next() {
                Some(TxnOpResponse::Get(mut g)) => g.take_kvs().into_iter().next().map(from_etcd),
                _ => None,
            };
            Ok(TxnOutcome::Conflict { current })
        }
    }

    pub async fn compact(&self, revision: Revision) -> Result<(), Error> {
        let mut kv = self.kv()?;
        // Physical: return only once the history is gone, as the embedded store does.
        let opts = CompactionOptions::new().with_physical();
        let done =
            tokio::time::timeout(self.opts.request_timeout, kv.compact(revision, Some(opts)))
                .await
                .map_err(|_| Error::Etcd {
                    op: "compact",
                    source: Arc::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {:?}", self.opts.request_timeout),
                    )),
                })?;
        match done {
            Ok(resp) => {
                self.shared.saw(resp.header());
                self.shared.compacted.fetch_max(revision, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => match self.map_err("compact", e, revision) {
                // Already compacted at or past `revision` (by us or another server): no-op.
                Error::Compacted { .. } => {
                    self.shared.compacted.fetch_max(revision, Ordering::SeqCst);
                    Ok(())
                }
                Error::FutureRevision { requested, .. } => {
                    let current_revision = self.fresh_revision().await?;
                    Err(Error::FutureRevision {
                        requested,
                        current_revision,
                    })
                }
                other => Err(other),
            },
        }
    }

    /// etcd's compacted revision: the smallest revision a historical read still works at
    /// (etcd refuses reads below its compacted revision, and allows reads exactly at it).
    /// 0 if nothing was compacted (or only revision 1, which is the same to a reader).
    async fn find_compacted(&self) -> Result<Revision, Error> {
        let current = self.current_revision();
        if current <= 1 || self.readable_at(1).await? {
            return Ok(0);
        }
        // Invariant: `lo` is not readable, `hi` is (the current revision always is).
        let (mut lo, mut hi) = (1, current);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.readable_at(mid).await? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Ok(hi)
    }

    async fn readable_at(&self, revision: Revision) -> Result<bool, Error> {
        let mut kv = self.kv()?;
        let opts = GetOptions::new().with_count_only().with_revision(revision);
        match self.call("range", kv.get(vec![0u8], Some(opts))).await {
            Ok(_) => Ok(true),
            Err(Error::Compacted { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One round of the background compactor: keep `retain_revisions` of history.
    async fn compact_once(&self) -> Result<(), Error> {
        let current = self.fresh_revision().await?;
        // Another server (or etcd's own auto-compaction) may have compacted meanwhile.
        let compacted = self.find_compacted().await?;
        self.shared.compacted.fetch_max(compacted, Ordering::SeqCst);
        let retain = i64::try_from(self.opts.retain_revisions).unwrap_or(i64::MAX);
        let target = current.saturating_sub(retain);
        if target > self.compacted_revision() {
            self.compact(target).await?;
            tracing::debug!(revision = target, "compacted etcd history");
        }
        Ok(())
    }

    pub fn watch(&self, start: &[u8], end: &[u8], after: Revision) -> Result<WatchStream, Error> {
        let client = self.client()?;
        let compacted = self.compacted_revision();
        if after > 0 && after < compacted {
            return Err(Error::Compacted {
                compact_revision: compacted,
                requested: after + 1,
            });
        }
        // "From now" is from this call: everything after the newest revision this process
        // has seen, so that a write it made just before is never missed.
        let last = if after <= 0 {
            self.current_revision()
        } else {
            after
        };
        Ok(watch::watch(
            client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            self.shared.clone(),
            start,
            end,
            last,
            self.opts.progress_interval,
            self.opts.request_timeout,
        ))
    }

    /// A trivial health check: etcd answers and reports no error (alarms such as NOSPACE or
    /// CORRUPT show there).
    pub async fn verify(&self) -> Result<(), Error> {
        let mut client = self.client()?;
        let status = self.call("status", client.status()).await?;
        self.shared.saw(status.header());
        if let Some(err) = status.errors().first() {
            return Err(Error::Etcd {
                op: "status",
                source: Arc::new(etcd_client::Error::Internal(err.clone())),
            });
        }
        Ok(())
    }

    /// Ends watches and the compactor and drops the connection; later calls fail with
    /// `Error::Closed`. etcd keeps the data: there is nothing to flush.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let client = self
            .client
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if client.is_some() {
            self.shared.closed.send_replace(true);
            tracing::info!(endpoints = %self.shared.endpoints, "disconnected from etcd");
        }
        Ok(())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Without an explicit close, still end the compactor and the watchers.
        self.shared.closed.send_replace(true);
    }
}

/// The background compactor: every `interval`, compacts to `retain_revisions` behind the
/// current revision, so etcd's history (and its disk) stays bounded under any write rate.
/// With several servers on one etcd, each runs one; the lower of two racing compactions
/// is a no-op.
async fn compactor(etcd: Weak<Etcd>, mut closed: signal::Receiver<bool>, interval: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = closed.wait_for(|c| *c) => return,
        }
        let Some(etcd) = etcd.upgrade() else {
            return;
        };
        if let Err(e) = etcd.compact_once().await {
            tracing::warn!(task = "etcd-compactor", error = %e, "compaction round failed");
        }
    }
}

/// Whether this etcd version answers progress requests only once the watcher's queued
/// events are sent (fixed in 3.4.25 and 3.5.8; 3.6 and later have it).
fn progress_is_ordered(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    match (major, minor) {
        (3, 4) => patch >= 25,
        (3, 5) => patch >= 8,
        (3, m) => m > 5,
        (m, _) => m > 3,
    }
}

/// corral's `[start, end)` (empty `end`: no upper bound) as etcd's key and range end, or
/// None when the range is empty. etcd refuses an empty key and reads an empty range end as
/// "just this key" and "\0" as "no upper bound"; no key is below "\0" but the empty one,
/// which etcd cannot hold.
fn etcd_range(start: &[u8], end: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let key = if start.is_empty() {
        vec![0u8]
    } else {
        start.to_vec()
    };
    if end.is_empty() {
        return Some((key, vec![0u8]));
    }
    (end > key.as_slice()).then(|| (key, end.to_vec()))
}

fn from_etcd(kv: etcd_client::KeyValue) -> KeyValue {
    let (create_revision, mod_revision) = (kv.create_revision(), kv.mod_revision());
    let (key, value) = kv.into_key_value();
    KeyValue {
        key,
        value: Bytes::from(value),
        create_revision,
        mod_revision,
    }
}

fn from_etcd_ref(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// The previous value returned by the write in a committed transaction.
fn written_prev(resp: &TxnResponse) -> Option<KeyValue> {
    match resp.op_responses().into_iter().next()? {
        TxnOpResponse::Put(mut p) => p.take_prev_key().map(from_etcd),
        TxnOpResponse::Delete(mut d) => d.take_prev_kvs().into_iter().next().map(from_etcd),
        _ => None,
    }
}

/// The message of a gRPC error from etcd.
fn status_message(e: &etcd_client::Error) -> Option<&str> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(s.message()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_to_etcd_conventions() {
        assert_eq!(etcd_range(b"", b""), Some((vec![0], vec![0])));
        assert_eq!(etcd_range(b"/a", b""), Some((b"/a".to_vec(), vec![0])));
        assert_eq!(etcd_range(b"", b"/b"), Some((vec![0], b"/b".to_vec())));
        assert_eq!(
            etcd_range(b"/a", b"/b"),
            Some((b"/a".to_vec(), b"/b".to_vec()))
        );
        assert_eq!(etcd_range(b"/b", b"/a"), None);
        assert_eq!(etcd_range(b"/a", b"/a"), None);
        assert_eq!(etcd_range(b"", b"\0"), None);
    }

    #[test]
    fn progress_order_by_version() {
        assert!(!progress_is_ordered("3.4.23"));
        assert!(progress_is_ordered("3.4.25"));
        assert!(!progress_is_ordered("3.5.7"));
        assert!(progress_is_ordered("3.5.17"));
        assert!(progress_is_ordered("3.6.0"));
        assert!(!progress_is_ordered("garbage"));
    }
}
