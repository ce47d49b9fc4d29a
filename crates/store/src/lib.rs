//! Revisioned key-value store for corral: put/get/range with compare-and-swap, watch from a
//! revision, and compaction, on etcd v3 semantics. It knows nothing of Kubernetes.
//!
//! `Store` is the only entry point. Today it has one backend, embedded (redb); an etcd backend
//! can be added behind a cargo feature as another variant of `Backend` without changing
//! callers.

mod embedded;
mod error;
mod options;
mod types;
mod watch;

use std::path::Path;

use bytes::Bytes;

pub use embedded::FILE_NAME;
pub use error::Error;
pub use options::EmbeddedOptions;
pub use types::{
    prefix_end, Compare, Event, EventKind, KeyValue, RangeResult, Revision, StoreStats, TxnOutcome,
    WatchMessage,
};
pub use watch::WatchStream;

/// Handle to an open store. Cheap to clone; all clones share one backend.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Embedded(std::sync::Arc<embedded::Embedded>),
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

    fn embedded(&self) -> &embedded::Embedded {
        match &self.backend {
            Backend::Embedded(e) => e,
        }
    }

    /// The store file (embedded backend).
    pub fn path(&self) -> &Path {
        self.embedded().path()
    }

    /// Revision of the last committed write (1 for an empty store).
    pub fn current_revision(&self) -> Revision {
        self.embedded().current_revision()
    }

    /// History at or below this revision is gone (0 if never compacted).
    pub fn compacted_revision(&self) -> Revision {
        self.embedded().compacted_revision()
    }

    pub fn stats(&self) -> StoreStats {
        self.embedded().stats()
    }

    /// The latest value of `key`.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        self.embedded().get(key).await
    }

    /// Latest values of keys in `[start, end)` (empty `end`: no upper bound) in key order, at
    /// most `limit` of them (0: no limit), from one consistent snapshot.
    pub async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<RangeResult, Error> {
        self.embedded().range(start, end, limit).await
    }

    /// Number of keys in `[start, end)`.
    pub async fn count(&self, start: &[u8], end: &[u8]) -> Result<u64, Error> {
        self.embedded().count(start, end).await
    }

    /// Creates or updates `key` if `cmp` holds; durable when it returns `Committed`.
    pub async fn put(&self, key: &[u8], value: Bytes, cmp: Compare) -> Result<TxnOutcome, Error> {
        self.embedded().put(key, value, cmp).await
    }

    /// Deletes `key` if it exists and `cmp` holds; `Committed.prev` is what was deleted.
    pub async fn delete(&self, key: &[u8], cmp: Compare) -> Result<TxnOutcome, Error> {
        self.embedded().delete(key, cmp).await
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
        self.embedded().watch(start, end, after_revision)
    }

    /// Drops history at or below `revision` (watches from there fail with `Compacted`).
    /// Returns once done; a revision already compacted is a no-op.
    pub async fn compact(&self, revision: Revision) -> Result<(), Error> {
        self.embedded().compact(revision).await
    }

    /// Checks that counters, history and latest values agree (after a crash, say).
    pub async fn verify(&self) -> Result<(), Error> {
        self.embedded().verify().await
    }

    /// Finishes the writes already submitted, stops the writer and closes the file for every
    /// clone of this handle. Errors are returned; see also `close`.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.embedded().shutdown().await
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
        f.debug_struct("Store")
            .field("path", &self.path())
            .field("revision", &self.current_revision())
            .finish()
    }
}
