//! Revisioned key-value store for corral: put/get/range with compare-and-swap, watch from a
//! revision, and compaction, on etcd v3 semantics. It knows nothing of Kubernetes.
//!
//! `Store` is the only entry point. Its backends are embedded (redb, the default) and, with
//! the cargo feature `etcd`, an etcd cluster's v3 API (`connect_etcd`), so that several
//! servers can share one cluster. Callers see the same semantics from both.

mod embedded;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
mod options;
mod types;
mod watch;

use std::path::Path;

use bytes::Bytes;

pub use embedded::FILE_NAME;
pub use error::Error;
pub use options::{EmbeddedOptions, EtcdOptions};
pub use types::{
    prefix_end, Compare, Event, EventKind, KeyValue, RangeResult, Revision, StoreStats, TxnOutcome,
    WatchMessage,
};
pub use watch::WatchStream;

/// A range read in chunks from one snapshot: see [`Store::range_chunks`].
pub struct RangeChunks {
    /// The snapshot's revision.
    pub revision: Revision,
    rx: tokio::sync::mpsc::Receiver<Result<Vec<KeyValue>, Error>>,
}

impl RangeChunks {
    /// The next chunk in key order; None after the last.
    pub async fn next(&mut self) -> Option<Result<Vec<KeyValue>, Error>> {
        self.rx.recv().await
    }
}

/// Handle to an open store. Cheap to clone; all clones share one backend.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Embedded(std::sync::Arc<embedded::Embedded>),
    #[cfg(feature = "etcd")]
    Etcd(std::sync::Arc<etcd::Etcd>),
}

/// Calls the same method on whichever backend the store has.
macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match &$self.backend {
            Backend::Embedded($b) => $call,
            #[cfg(feature = "etcd")]
            Backend::Etcd($b) => $call,
        }
    };
}

impl Store {
    /// Opens (creating if needed) the embedded store at `dir_or_file`: a directory (existing,
    /// or a path without extension) holds `store.redb`; otherwise the path is the file.
    /// Fails with `Error::Locked` if another process has it open.
    pub fn open_embedded(dir_or_file: &Path, opts: EmbeddedOptions) -> Result<Store, Error> {
        let e = embedded::Embedded::open(dir_or_file, opts)?;
        Ok(Store {
            backend: Backend::Embedded(std::sync::Arc::new(e)),
        })
    }

    /// Connects to an etcd cluster (v3 API) at `endpoints` (e.g. `http://127.0.0.1:2379`).
    /// Fails with `Error::Unreachable` if none answers within `opts.connect_timeout`. Must be
    /// called inside a tokio runtime (it starts the background compactor there).
    #[cfg(feature = "etcd")]
    pub async fn connect_etcd(endpoints: &[String], opts: EtcdOptions) -> Result<Store, Error> {
        let e = etcd::Etcd::connect(endpoints, opts).await?;
        Ok(Store {
            backend: Backend::Etcd(e),
        })
    }

    /// The store file (embedded backend); None for etcd.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Embedded(e) => Some(e.path()),
            #[cfg(feature = "etcd")]
            Backend::Etcd(_) => None,
        }
    }

    /// Revision of the last committed write (1 for an empty store). With etcd: the newest
    /// revision this process has seen (writes by other servers show after its next request).
    pub fn current_revision(&self) -> Revision {
        dispatch!(self, b => b.current_revision())
    }

    /// History at or below this revision is gone (0 if never compacted). With etcd: as far
    /// as this process knows (etcd does not publish it; see the etcd module).
    pub fn compacted_revision(&self) -> Revision {
        dispatch!(self, b => b.compacted_revision())
    }

    pub fn stats(&self) -> StoreStats {
        dispatch!(self, b => b.stats())
    }

    /// The latest value of `key`.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        dispatch!(self, b => b.get(key).await)
    }

    /// Values of keys in `[start, end)` as they were at `revision` (the current values when
    /// `revision` is current or newer), at most `limit` (0: no limit). Fails with
    /// `Error::Compacted` when that point in history has been compacted away. The result's
    /// revision is `revision`.
    pub async fn range_at(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        revision: Revision,
    ) -> Result<RangeResult, Error> {
        dispatch!(self, b => b.range_at(start, end, limit, revision).await)
    }

    /// Latest values of keys in `[start, end)` (empty `end`: no upper bound) in key order, at
    /// most `limit` of them (0: no limit), from one consistent snapshot.
    pub async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<RangeResult, Error> {
        dispatch!(self, b => b.range(start, end, limit).await)
    }

    /// The latest values of keys in `[start, end)` from one consistent snapshot (its
    /// revision is the result's), handed out `chunk` at a time as the caller takes them:
    /// reading a huge range never holds all of it in memory. Dropping the result stops
    /// the reading.
    pub async fn range_chunks(
        &self,
        start: &[u8],
        end: &[u8],
        chunk: usize,
    ) -> Result<RangeChunks, Error> {
        match &self.backend {
            Backend::Embedded(b) => b.range_chunks(start, end, chunk).await,
            #[cfg(feature = "etcd")]
            Backend::Etcd(_) => {
                // etcd reads at a revision natively: page through it at the first page's.
                let first = self.range(start, end, chunk).await?;
                let revision = first.revision;
                let (tx, rx) = tokio::sync::mpsc::channel(2);
                let store = self.clone();
                let end = end.to_vec();
                tokio::spawn(async move {
                    let mut page = first;
                    loop {
                        let next = page.more.then(|| page.kvs.last().map(|kv| kv.key.clone()));
                        // No empty chunks, as from the embedded store.
                        if !page.kvs.is_empty() && tx.send(Ok(page.kvs)).await.is_err() {
                            return;
                        }
                        let Some(Some(mut start)) = next else { return };
                        start.push(0);
                        page = match store.range_at(&start, &end, chunk, revision).await {
                            Ok(p) => p,
                            Err(e) => return drop(tx.send(Err(e)).await),
                        };
                    }
                });
                Ok(RangeChunks { revision, rx })
            }
        }
    }

    /// Number of keys in `[start, end)`.
    pub async fn count(&self, start: &[u8], end: &[u8]) -> Result<u64, Error> {
        dispatch!(self, b => b.count(start, end).await)
    }

    /// Creates or updates `key` if `cmp` holds; durable when it returns `Committed`.
    pub async fn put(&self, key: &[u8], value: Bytes, cmp: Compare) -> Result<TxnOutcome, Error> {
        dispatch!(self, b => b.put(key, value, cmp).await)
    }

    /// Deletes `key` if it exists and `cmp` holds; `Committed.prev` is what was deleted.
    pub async fn delete(&self, key: &[u8], cmp: Compare) -> Result<TxnOutcome, Error> {
        dispatch!(self, b => b.delete(key, cmp).await)
    }

    /// Watches `[start, end)` (empty `end`: no upper bound) for changes with revision greater
    /// than `after_revision` (0: from now), in revision order, with `Progress` marks. Fails
    /// with `Compacted` if that history is gone. The stream must be polled inside a tokio
    /// runtime; dropping it unsubscribes.
    pub fn watch(
        &self,
        start: &[u8],
        end: &[u8],
        after_revision: Revision,
    ) -> Result<WatchStream, Error> {
        dispatch!(self, b => b.watch(start, end, after_revision))
    }

    /// Drops history at or below `revision` (watches from there fail with `Compacted`).
    /// Returns once done; a revision already compacted is a no-op.
    pub async fn compact(&self, revision: Revision) -> Result<(), Error> {
        dispatch!(self, b => b.compact(revision).await)
    }

    /// Checks that counters, history and latest values agree (after a crash, say).
    pub async fn verify(&self) -> Result<(), Error> {
        dispatch!(self, b => b.verify().await)
    }

    /// Finishes the writes already submitted, stops the writer and closes the file for every
    /// clone of this handle. Errors are returned; see also `close`.
    pub async fn shutdown(&self) -> Result<(), Error> {
        dispatch!(self, b => b.shutdown().await)
    }

    /// Like `shutdown`, logging rather than returning an error.
    pub async fn close(self) {
        if let Err(e) = self.shutdown().await {
            tracing::error!(error = %e, "closing the store failed");
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.backend {
            Backend::Embedded(_) => "embedded",
            #[cfg(feature = "etcd")]
            Backend::Etcd(_) => "etcd",
        };
        f.debug_struct("Store")
            .field("backend", &backend)
            .field("path", &self.path())
            .field("revision", &self.current_revision())
            .finish()
    }
}
