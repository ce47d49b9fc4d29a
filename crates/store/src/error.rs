//! The store's error type: one enum for every backend, so callers map errors to
//! Kubernetes statuses in one place (Compacted -> 410 Gone, the rest -> 500). The etcd
//! variants exist whether or not the `etcd` feature is built, so that callers' matches do
//! not depend on features.

use std::path::PathBuf;
use std::sync::Arc;

use crate::Revision;

// Clone because one failed group commit is reported to every caller in it; the sources
// are therefore shared.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The history needed (a watch start or a compaction target) has been compacted away.
    #[error("required revision {requested} has been compacted (compacted revision is {compact_revision})")]
    Compacted {
        compact_revision: Revision,
        requested: Revision,
    },
    /// A revision past the store's current one was asked for where that makes no sense.
    #[error("revision {requested} is in the future (current revision is {current_revision})")]
    FutureRevision {
        requested: Revision,
        current_revision: Revision,
    },
    /// Another process (or another open in this one) holds the store file.
    #[error("store file {} is locked: another process has it open (is another corral server running on this data dir?)", path.display())]
    Locked { path: PathBuf },
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The storage engine failed (disk error, corruption detected by checksums, ...).
    #[error("storage error: {0}")]
    Storage(#[source] Arc<redb::Error>),
    /// A record could not be decoded: the file was written by something else or is damaged.
    #[error("corrupt record in store: {0}")]
    Corrupt(String),
    /// The store was closed, or its writer thread stopped.
    #[error("store is closed")]
    Closed,
    /// A watch stream must be polled inside a tokio runtime (it reads history on its
    /// blocking pool).
    #[error("watch streams must be polled from within a tokio runtime")]
    NoRuntime,
    /// No etcd endpoint answered when connecting (wrong address, etcd down, network).
    #[error("cannot reach etcd at {endpoints}: {source}")]
    Unreachable {
        endpoints: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// An etcd request failed (connection lost, timeout, or an error etcd reported). A
    /// write that fails this way may or may not have been applied.
    #[error("etcd {op} failed: {source}")]
    Etcd {
        op: &'static str,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

// redb splits its errors by operation; all of them convert into `redb::Error`.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(Arc::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError,
    redb::SetDurabilityError
);

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }
}
