//! The embedded backend: one redb file, one writer thread, reads on the blocking pool,
//! and a broadcast fan-out of committed batches to watchers.

mod codec;
mod file;
mod read;
mod verify;
mod watcher;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, ReadTransaction, ReadableDatabase};
use tokio::sync::{broadcast, oneshot};

use crate::{
    Compare, EmbeddedOptions, Error, KeyValue, RangeResult, Revision, StoreStats, TxnOutcome,
    WatchStream,
};
use writer::{Batch, Request, Writer};

pub use file::FILE_NAME;

/// Counters published by the writer for lock-free reads of the revisions and for stats.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub current: AtomicI64,
    pub compacted: AtomicI64,
    pub commits: AtomicU64,
    pub writes: AtomicU64,
    pub conflicts: AtomicU64,
    pub watchers: AtomicU64,
}

/// What exists while the store is open; taken out on close.
struct Live {
    db: Arc<Database>,
    requests: mpsc::Sender<Request>,
    events: broadcast::Sender<Arc<Batch>>,
}

pub(crate) struct Embedded {
    path: PathBuf,
    opts: EmbeddedOptions,
    counters: Arc<Counters>,
    live: RwLock<Option<Live>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Embedded {
    pub fn open(path: &Path, opts: EmbeddedOptions) -> Result<Embedded, Error> {
        let path = file::resolve_path(path)?;
        let started = Instant::now();
        let (db, current, compacted) = file::open(&path, &opts)?;
        tracing::info!(
            path = %path.display(),
            revision = current,
            compacted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "opened embedded store"
        );

        let db = Arc::new(db);
        let counters = Arc::new(Counters::default());
        counters.current.store(current, Ordering::SeqCst);
        counters.compacted.store(compacted, Ordering::SeqCst);
        let (requests, rx) = mpsc::channel();
        let (events, _) = broadcast::channel(opts.watch_channel_capacity.max(1));
        let writer = Writer {
            db: db.clone(),
            rx,
            events: events.clone(),
            counters: counters.clone(),
            opts: opts.clone(),
            current,
            compacted,
        };
        let handle = std::thread::Builder::new()
            .name("corral-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::io(&path, e))?;
        Ok(Embedded {
            path,
            opts,
            counters,
            live: RwLock::new(Some(Live {
                db,
                requests,
                events,
            })),
            writer: Mutex::new(Some(handle)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn current_revision(&self) -> Revision {
        self.counters.current.load(Ordering::SeqCst)
    }

    pub fn compacted_revision(&self) -> Revision {
        self.counters.compacted.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            conflicts: self.counters.conflicts.load(Ordering::Relaxed),
            watchers: self.counters.watchers.load(Ordering::Relaxed),
        }
    }

    fn with_live<T>(&self, f: impl FnOnce(&Live) -> Result<T, Error>) -> Result<T, Error> {
        // A poisoned lock only means a panic elsewhere; the data (an Option) is still sound.
        let guard = self.live.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map_or(Err(Error::Closed), f)
    }

    /// Runs `f` on a fresh snapshot on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let db = self.with_live(|l| Ok(l.db.clone()))?;
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            f(&txn)
        })
        .await
        .map_err(|_| Error::Closed)?
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        let key = key.to_vec();
        self.read(move |txn| read::get(txn, &key)).await
    }

    pub async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<RangeResult, Error> {
        let (start, end) = (start.to_vec(), end.to_vec());
        self.read(move |txn| read::range(txn, &start, &end, limit))
            .await
    }

    pub async fn range_at(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        revision: Revision,
    ) -> Result<RangeResult, Error> {
        let (start, end) = (start.to_vec(), end.to_vec());
        self.read(move |txn| read::range_at(txn, &start, &end, limit, revision))
            .await
    }

    /// See [`crate::Store::range_chunks`]: one read transaction on a blocking thread
    /// produces the chunks as the reader takes them (redb's MVCC keeps the snapshot while
    /// writes go on).
    pub async fn range_chunks(
        &self,
        start: &[u8],
        end: &[u8],
        chunk: usize,
    ) -> Result<crate::RangeChunks, Error> {
        let db = self.with_live(|l| Ok(l.db.clone()))?;
        let (start, end) = (start.to_vec(), end.to_vec());
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (rev_tx, rev_rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let txn = match db.begin_read() {
                Ok(t) => t,
                Err(e) => return drop(rev_tx.send(Err(Error::from(e)))),
            };
            match read::meta(&txn) {
                Ok((revision, _)) => {
                    if rev_tx.send(Ok(revision)).is_err() {
                        return;
                    }
                }
                Err(e) => return drop(rev_tx.send(Err(e))),
            }
            let sent = read::range_chunked(&txn, &start, &end, chunk, |kvs| {
                tx.blocking_send(Ok(kvs)).is_ok()
            });
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let revision = rev_rx.await.map_err(|_| Error::Closed)??;
        Ok(crate::RangeChunks { revision, rx })
    }

    pub async fn count(&self, start: &[u8], end: &[u8]) -> Result<u64, Error> {
        let (start, end) = (start.to_vec(), end.to_vec());
        self.read(move |txn| read::count(txn, &start, &end)).await
    }

    pub async fn verify(&self) -> Result<(), Error> {
        self.read(verify::verify).await
    }

    fn submit(&self, req: Request) -> Result<(), Error> {
        self.with_live(|l| l.requests.send(req).map_err(|_| Error::Closed))
    }

    pub async fn put(&self, key: &[u8], value: Bytes, cmp: Compare) -> Result<TxnOutcome, Error> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Put {
            key: key.to_vec(),
            value,
            cmp,
            reply,
        })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    pub async fn delete(&self, key: &[u8], cmp: Compare) -> Result<TxnOutcome, Error> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Delete {
            key: key.to_vec(),
            cmp,
            reply,
        })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    pub async fn compact(&self, revision: Revision) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Compact { revision, reply })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    pub fn watch(&self, start: &[u8], end: &[u8], after: Revision) -> Result<WatchStream, Error> {
        let (db, events) = self.with_live(|l| Ok((Arc::downgrade(&l.db), l.events.subscribe())))?;
        // Subscribed first, so that every batch committed after the counters read below is
        // either received live or found in the log: no gap.
        let compacted = self.compacted_revision();
        if after > 0 && after < compacted {
            return Err(Error::Compacted {
                compact_revision: compacted,
                requested: after + 1,
            });
        }
        let (last, catch_up) = if after <= 0 {
            (self.current_revision(), false)
        } else {
            (after, true)
        };
        Ok(watcher::watch(
            db,
            self.counters.clone(),
            events,
            watcher::Start {
                start,
                end,
                last,
                catch_up,
            },
            self.opts.progress_interval,
        ))
    }

    /// Stops the writer after the requests already sent, then closes the file. Watchers end
    /// with `Error::Closed`; later calls fail with `Error::Closed`.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let live = self.live.write().unwrap_or_else(|e| e.into_inner()).take();
        let Some(Live {
            db,
            requests,
            events,
        }) = live
        else {
            return Ok(());
        };
        drop((requests, events));
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(w) = writer {
                let _ = w.join();
            }
            // In-flight reads hold the database briefly; wait for them so that the file lock
            // is released when this returns (a reopen right after must succeed).
            let mut db = db;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match Arc::try_unwrap(db) {
                    Ok(db) => return db.close().map_err(|e| file::open_error(&path, e)),
                    Err(still_shared) if Instant::now() < deadline => {
                        db = still_shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => {
                        tracing::warn!(path = %path.display(), "store still in use at close; it closes when the last reader ends");
                        return Ok(());
                    }
                }
            }
        })
        .await
        .map_err(|_| Error::Closed)?
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        // Without an explicit close, still stop the writer before the handle is gone, so that
        // the file lock is released when the last Store is dropped.
        let live = self
            .live
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(live);
        if let Some(w) = self
            .writer
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = w.join();
        }
    }
}
