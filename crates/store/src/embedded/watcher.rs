//! The embedded backend's watcher: replays history from the log, then follows the live
//! fan-out of committed batches, and falls back to the log whenever it lags. It runs in the
//! consumer's task, inside `WatchStream::poll_next`.
//!
//! The invariant is `last`: every revision up to it has been looked at (and matching events
//! queued), so nothing at or below it is ever sent again and nothing above it is skipped.
//! Live batches are subscribed to before the log is read, so a batch is either in the log
//! snapshot or received afterwards. A consumer that stops reading only lets its broadcast
//! receiver lag (memory stays bounded by the channel); when it reads again it catches up
//! from the log or, if that history was compacted meanwhile, gets `Error::Compacted` and the
//! stream ends (the client re-lists).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redb::{Database, ReadableDatabase};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Interval, MissedTickBehavior};

use super::read::{self, LogChunk};
use super::writer::Batch;
use super::Counters;
use crate::types::in_range;
use crate::{Error, Event, Revision, WatchMessage, WatchStream};

/// Log records read per catch-up step: bounds the memory and blocking time of one step.
const CATCH_UP_SCAN: usize = 1024;

pub(crate) struct Watcher {
    /// Weak so that watchers do not keep a closed store's file open.
    db: Weak<Database>,
    events: broadcast::Receiver<Arc<Batch>>,
    start: Vec<u8>,
    end: Vec<u8>,
    last: Revision,
    catch_up: bool,
    pending: VecDeque<WatchMessage>,
    progress_requests: mpsc::Receiver<()>,
    progress_interval: Duration,
    /// Created on first poll: a timer needs the runtime, `watch()` does not.
    ticker: Option<Interval>,
    sent_since_tick: bool,
    progress_asked: bool,
    done: bool,
    _attached: Attached,
}

/// Keeps the watcher gauge right however the watch ends.
struct Attached(Arc<Counters>);

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Wake {
    Batch(Result<Arc<Batch>, RecvError>),
    Progress,
    Tick,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn watch(
    db: Weak<Database>,
    counters: Arc<Counters>,
    events: broadcast::Receiver<Arc<Batch>>,
    start: &[u8],
    end: &[u8],
    last: Revision,
    catch_up: bool,
    progress_interval: Duration,
) -> WatchStream {
    counters.watchers.fetch_add(1, Ordering::Relaxed);
    let (progress, progress_requests) = mpsc::channel(1);
    let watcher = Watcher {
        db,
        events,
        start: start.to_vec(),
        end: end.to_vec(),
        last,
        catch_up,
        pending: VecDeque::new(),
        progress_requests,
        progress_interval,
        ticker: None,
        sent_since_tick: false,
        progress_asked: false,
        done: false,
        _attached: Attached(counters),
    };
    let stream = futures::stream::unfold(watcher, |mut w| async move {
        let msg = w.next().await?;
        Some((msg, w))
    });
    WatchStream::new(Box::pin(stream), progress)
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<WatchMessage, Error>> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Some(Ok(m));
            }
            if self.done {
                return None;
            }
            if self.catch_up {
                match self.read_log().await {
                    Ok(chunk) => self.take_chunk(chunk),
                    Err(e) => return self.fail(e),
                }
                continue;
            }
            if self.ticker.is_none() && !self.progress_interval.is_zero() {
                let first = tokio::time::Instant::now() + self.progress_interval;
                let mut t = tokio::time::interval_at(first, self.progress_interval);
                t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                self.ticker = Some(t);
            }
            let ticker = &mut self.ticker;
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                biased;
                r = self.events.recv() => Wake::Batch(r),
                Some(()) = self.progress_requests.recv() => Wake::Progress,
                _ = tick => Wake::Tick,
            };
            match wake {
                Wake::Batch(Ok(batch)) => self.take_batch(&batch),
                Wake::Batch(Err(RecvError::Lagged(n))) => {
                    tracing::debug!(
                        skipped_batches = n,
                        after = self.last,
                        "watcher lagged; catching up from the log"
                    );
                    self.catch_up = true;
                }
                Wake::Batch(Err(RecvError::Closed)) => return self.fail(Error::Closed),
                Wake::Progress => {
                    // Take what is already published so the mark is as fresh as possible.
                    loop {
                        match self.events.try_recv() {
                            Ok(batch) => self.take_batch(&batch),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Lagged(_)) => {
                                self.catch_up = true;
                                break;
                            }
                            Err(TryRecvError::Closed) => return self.fail(Error::Closed),
                        }
                    }
                    if self.catch_up {
                        self.progress_asked = true;
                    } else {
                        self.pending.push_back(WatchMessage::Progress(self.last));
                    }
                }
                Wake::Tick => {
                    // Like etcd, only idle watchers get periodic progress.
                    if !self.sent_since_tick {
                        self.pending.push_back(WatchMessage::Progress(self.last));
                    }
                    self.sent_since_tick = false;
                }
            }
        }
    }

    /// Ends the stream with `e` (after what is already queued).
    fn fail(&mut self, e: Error) -> Option<Result<WatchMessage, Error>> {
        self.done = true;
        self.pending.clear();
        Some(Err(e))
    }

    async fn read_log(&self) -> Result<LogChunk, Error> {
        let db = self.db.upgrade().ok_or(Error::Closed)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (after, start, end) = (self.last, self.start.clone(), self.end.clone());
        runtime
            .spawn_blocking(move || {
                let txn = db.begin_read()?;
                read::log_after(&txn, after, CATCH_UP_SCAN, &start, &end)
            })
            .await
            .map_err(|_| Error::Closed)?
    }

    fn take_chunk(&mut self, chunk: LogChunk) {
        self.sent_since_tick |= !chunk.events.is_empty();
        self.pending
            .extend(chunk.events.into_iter().map(WatchMessage::Event));
        self.last = self.last.max(chunk.scanned_to);
        self.catch_up = !chunk.done;
        if !self.catch_up && self.progress_asked {
            self.progress_asked = false;
            self.pending.push_back(WatchMessage::Progress(self.last));
        }
    }

    fn wanted(&self, ev: &Event) -> bool {
        ev.revision() > self.last && in_range(&ev.kv.key, &self.start, &self.end)
    }

    fn take_batch(&mut self, batch: &Batch) {
        for ev in &batch.events {
            if self.wanted(ev) {
                self.pending.push_back(WatchMessage::Event(ev.clone()));
                self.sent_since_tick = true;
            }
        }
        self.last = self.last.max(batch.last_revision());
    }
}
