//! The embedded backend's watcher: replays history from the log, then follows the live
//! fan-out of committed batches, and falls back to the log whenever it lags. It is a
//! hand-written `Stream` polled by the consumer's task (no task, channel or future per
//! watch or per event: the fan-out to 1,000+ watchers costs one queue push per event).
//!
//! The invariant is `last`: every revision up to it has been looked at (and matching events
//! queued), so nothing at or below it is ever sent again and nothing above it is skipped.
//! Live batches are subscribed to before the log is read, so a batch is either in the log
//! snapshot or received afterwards. A consumer that stops reading only lets its broadcast
//! receiver lag (memory stays bounded by the channel); when it reads again it catches up
//! from the log or, if that history was compacted meanwhile, gets `Error::Compacted` and the
//! stream ends (the client re-lists).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use redb::{Database, ReadableDatabase};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

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
    events: BroadcastStream<Arc<Batch>>,
    start: Vec<u8>,
    end: Vec<u8>,
    last: Revision,
    catch_up: bool,
    /// The log read of the current catch-up step, on the blocking pool.
    reading: Option<JoinHandle<Result<LogChunk, Error>>>,
    pending: VecDeque<WatchMessage>,
    progress_requests: mpsc::Receiver<()>,
    progress_interval: Duration,
    /// Created on first poll: a timer needs the runtime, `watch()` does not.
    ticker: Option<Interval>,
    sent_since_tick: bool,
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

/// Where a watch starts.
pub(crate) struct Start<'a> {
    pub start: &'a [u8],
    pub end: &'a [u8],
    /// Revisions up to here are not wanted.
    pub last: Revision,
    /// Whether history after `last` must first be read from the log.
    pub catch_up: bool,
}

pub(crate) fn watch(
    db: Weak<Database>,
    counters: Arc<Counters>,
    events: broadcast::Receiver<Arc<Batch>>,
    from: Start<'_>,
    progress_interval: Duration,
) -> WatchStream {
    counters.watchers.fetch_add(1, Ordering::Relaxed);
    let (progress, progress_requests) = mpsc::channel(1);
    let watcher = Watcher {
        db,
        events: BroadcastStream::new(events),
        start: from.start.to_vec(),
        end: from.end.to_vec(),
        last: from.last,
        catch_up: from.catch_up,
        reading: None,
        pending: VecDeque::new(),
        progress_requests,
        progress_interval,
        ticker: None,
        sent_since_tick: false,
        done: false,
        _attached: Attached(counters),
    };
    WatchStream::new(Box::pin(watcher), progress)
}

impl Stream for Watcher {
    type Item = Result<WatchMessage, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(m) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(m)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if this.catch_up {
                if this.reading.is_none() {
                    match this.start_read() {
                        Ok(h) => this.reading = Some(h),
                        Err(e) => return Poll::Ready(this.fail(e)),
                    }
                }
                let Some(reading) = this.reading.as_mut() else {
                    continue;
                };
                let result = match Pin::new(reading).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                this.reading = None;
                match result {
                    Ok(Ok(chunk)) => this.take_chunk(chunk),
                    Ok(Err(e)) => return Poll::Ready(this.fail(e)),
                    Err(_) => return Poll::Ready(this.fail(Error::Closed)),
                }
                continue;
            }
            match Pin::new(&mut this.events).poll_next(cx) {
                Poll::Ready(Some(Ok(batch))) => {
                    this.take_batch(&batch);
                    continue;
                }
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                    tracing::debug!(
                        skipped_batches = n,
                        after = this.last,
                        "watcher lagged; catching up from the log"
                    );
                    this.catch_up = true;
                    continue;
                }
                Poll::Ready(None) => return Poll::Ready(this.fail(Error::Closed)),
                Poll::Pending => {}
            }
            // Everything published so far has been taken (and a catch-up is never
            // interrupted), so a progress mark now is as fresh as it can be.
            if let Poll::Ready(Some(())) = this.progress_requests.poll_recv(cx) {
                this.pending.push_back(WatchMessage::Progress(this.last));
                continue;
            }
            if this.ticker.is_none() && !this.progress_interval.is_zero() {
                let first = tokio::time::Instant::now() + this.progress_interval;
                let mut t = tokio::time::interval_at(first, this.progress_interval);
                t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                this.ticker = Some(t);
            }
            if let Some(t) = this.ticker.as_mut() {
                if t.poll_tick(cx).is_ready() {
                    // Like etcd, only idle watchers get periodic progress.
                    if !this.sent_since_tick {
                        this.pending.push_back(WatchMessage::Progress(this.last));
                    }
                    this.sent_since_tick = false;
                    continue;
                }
            }
            return Poll::Pending;
        }
    }
}

impl Watcher {
    /// Ends the stream with `e`.
    fn fail(&mut self, e: Error) -> Option<Result<WatchMessage, Error>> {
        self.done = true;
        self.pending.clear();
        Some(Err(e))
    }

    fn start_read(&self) -> Result<JoinHandle<Result<LogChunk, Error>>, Error> {
        let db = self.db.upgrade().ok_or(Error::Closed)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (after, start, end) = (self.last, self.start.clone(), self.end.clone());
        Ok(runtime.spawn_blocking(move || {
            let txn = db.begin_read()?;
            read::log_after(&txn, after, CATCH_UP_SCAN, &start, &end)
        }))
    }

    fn take_chunk(&mut self, chunk: LogChunk) {
        self.sent_since_tick |= !chunk.events.is_empty();
        self.pending
            .extend(chunk.events.into_iter().map(WatchMessage::Event));
        self.last = self.last.max(chunk.scanned_to);
        self.catch_up = !chunk.done;
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
