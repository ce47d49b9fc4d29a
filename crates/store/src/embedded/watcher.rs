//! One watcher task per watch: replays history from the log, then follows the live
//! fan-out of committed batches, and falls back to the log whenever it lags.
//!
//! The invariant is `last`: every revision up to it has been looked at (and matching events
//! sent), so nothing at or below it is ever sent again and nothing above it is skipped.
//! Live batches are subscribed to before the log is read, so a batch is either in the log
//! snapshot or received afterwards. A consumer that stops reading blocks only its own task;
//! its broadcast receiver then lags and it catches up from the log, or, if that history was
//! compacted meanwhile, its stream ends with `Error::Compacted` (the client re-lists).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redb::{Database, ReadableDatabase};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::MissedTickBehavior;

use super::read::{self, LogChunk};
use super::writer::Batch;
use super::Counters;
use crate::types::in_range;
use crate::{EmbeddedOptions, Error, Event, Revision, WatchMessage, WatchStream};

/// Log records read per catch-up step: bounds the memory and blocking time of one step.
const CATCH_UP_SCAN: usize = 1024;

pub(crate) struct Watcher {
    /// Weak so that watchers do not keep a closed store's file open.
    pub db: Weak<Database>,
    pub counters: Arc<Counters>,
    pub events: broadcast::Receiver<Arc<Batch>>,
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub last: Revision,
    pub catch_up: bool,
}

pub(crate) fn spawn(
    runtime: &tokio::runtime::Handle,
    watcher: Watcher,
    opts: &EmbeddedOptions,
) -> WatchStream {
    let (tx, rx) = mpsc::channel(opts.watcher_buffer.max(1));
    let progress = Arc::new(Notify::new());
    // Counted here rather than in the task, so the gauge is right as soon as this returns.
    watcher.counters.watchers.fetch_add(1, Ordering::Relaxed);
    let attached = Attached(watcher.counters.clone());
    let task = runtime.spawn(watcher.run(tx, progress.clone(), opts.progress_interval, attached));
    WatchStream {
        rx,
        progress,
        task: task.abort_handle(),
    }
}

/// Keeps the watcher gauge right however the task ends (including abort).
struct Attached(Arc<Counters>);

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

type Out = mpsc::Sender<Result<WatchMessage, Error>>;

impl Watcher {
    async fn run(
        mut self,
        out: Out,
        progress: Arc<Notify>,
        interval: Duration,
        _attached: Attached,
    ) {
        let mut ticker = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        let mut sent_since_tick = false;
        let mut progress_asked = false;
        loop {
            if self.catch_up {
                let chunk = match self.read_log().await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = out.send(Err(e)).await;
                        return;
                    }
                };
                for ev in chunk.events {
                    sent_since_tick = true;
                    if !self.send(&out, ev).await {
                        return;
                    }
                }
                self.last = self.last.max(chunk.scanned_to);
                self.catch_up = !chunk.done;
                if !self.catch_up && progress_asked {
                    progress_asked = false;
                    if !self.progress(&out).await {
                        return;
                    }
                }
                continue;
            }
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = out.closed() => return,
                r = self.events.recv() => match r {
                    Ok(batch) => {
                        sent_since_tick |= self.matches(&batch);
                        if !self.deliver(&out, &batch).await {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(skipped_batches = n, after = self.last, "watcher lagged; catching up from the log");
                        self.catch_up = true;
                    }
                    Err(RecvError::Closed) => {
                        let _ = out.send(Err(Error::Closed)).await;
                        return;
                    }
                },
                _ = progress.notified() => {
                    // Take what is already published so the mark is as fresh as possible.
                    loop {
                        match self.events.try_recv() {
                            Ok(batch) => {
                                sent_since_tick |= self.matches(&batch);
                                if !self.deliver(&out, &batch).await {
                                    return;
                                }
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Lagged(_)) => {
                                self.catch_up = true;
                                break;
                            }
                            Err(TryRecvError::Closed) => {
                                let _ = out.send(Err(Error::Closed)).await;
                                return;
                            }
                        }
                    }
                    if self.catch_up {
                        progress_asked = true;
                    } else if !self.progress(&out).await {
                        return;
                    }
                }
                _ = tick => {
                    // Like etcd, only idle watchers get periodic progress.
                    if !sent_since_tick && !self.progress(&out).await {
                        return;
                    }
                    sent_since_tick = false;
                }
            }
        }
    }

    async fn read_log(&self) -> Result<LogChunk, Error> {
        let db = self.db.upgrade().ok_or(Error::Closed)?;
        let (after, start, end) = (self.last, self.start.clone(), self.end.clone());
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            read::log_after(&txn, after, CATCH_UP_SCAN, &start, &end)
        })
        .await
        .map_err(|_| Error::Closed)?
    }

    fn wanted(&self, ev: &Event) -> bool {
        ev.revision() > self.last && in_range(&ev.kv.key, &self.start, &self.end)
    }

    fn matches(&self, batch: &Batch) -> bool {
        batch.events.iter().any(|ev| self.wanted(ev))
    }

    /// Sends the batch's events this watcher wants; false when the consumer is gone.
    async fn deliver(&mut self, out: &Out, batch: &Batch) -> bool {
        for ev in &batch.events {
            if self.wanted(ev) && !self.send(out, ev.clone()).await {
                return false;
            }
        }
        self.last = self.last.max(batch.last_revision());
        true
    }

    async fn send(&self, out: &Out, ev: Event) -> bool {
        out.send(Ok(WatchMessage::Event(ev))).await.is_ok()
    }

    async fn progress(&self, out: &Out) -> bool {
        out.send(Ok(WatchMessage::Progress(self.last)))
            .await
            .is_ok()
    }
}
