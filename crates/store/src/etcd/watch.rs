//! The etcd backend's watcher: one etcd watch (its own gRPC stream) per corral watch, driven
//! from the consumer's `poll_next` (no task of its own), turned into corral's events and
//! progress marks. If the stream breaks (etcd restarted, connection lost) it is opened again
//! from the last revision delivered, so the consumer sees neither a gap nor a duplicate.
//!
//! Progress marks need care. Corral promises `Progress(r)` only once every event up to `r`
//! was delivered. etcd's own periodic progress notifications keep that promise (they are
//! sent only for a watcher that is caught up, in order with its events) but come every ten
//! minutes unless etcd runs with `--experimental-watch-progress-notify-interval`. Progress
//! *requests* are answered at once, but etcd before 3.4.25 / 3.5.8 may answer before events
//! already queued for the watcher, and even for a watcher still replaying history. So on
//! those versions an answer `r` is only a candidate: it becomes a mark when a later answer
//! arrives at least `CONFIRM_GAP` after it with no event in between, and, for a watch that
//! started in the past, only once the watch has had `SYNC_GRACE` to replay (etcd replays
//! a watcher's history in batches every 100 ms). Newer versions are trusted directly.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    EventType, WatchClient, WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream,
};
use tokio::sync::{mpsc, watch as signal};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{etcd_range, from_etcd_ref, Shared};
use crate::types::in_range;
use crate::{Error, Event, EventKind, KeyValue, Revision, WatchMessage, WatchStream};

/// How long a progress answer must stand, with no event after it, before it is used.
const CONFIRM_GAP: Duration = Duration::from_millis(200);
/// How long a watch that started in the past gets to replay before progress answers count.
const SYNC_GRACE: Duration = Duration::from_secs(1);
/// How long a broken watch keeps trying to reopen before it ends with an error.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// The watch id etcd puts on answers to progress requests (they are for the whole stream).
const STREAM_WATCH_ID: i64 = -1;

pub(crate) fn watch(
    client: WatchClient,
    shared: Arc<Shared>,
    start: &[u8],
    end: &[u8],
    last: Revision,
    progress_interval: Duration,
    request_timeout: Duration,
) -> WatchStream {
    shared.watchers.fetch_add(1, Ordering::Relaxed);
    let (progress, progress_requests) = mpsc::channel(1);
    // An empty range still needs a watch (for progress); this one's events are all
    // filtered out below.
    let (key, range_end) = etcd_range(start, end).unwrap_or_else(|| (vec![0], vec![0, 0]));
    let watcher = Watcher {
        client,
        closed: shared.closed.subscribe(),
        key,
        range_end,
        start: start.to_vec(),
        end: end.to_vec(),
        last,
        conn: None,
        pending: VecDeque::new(),
        progress_requests,
        progress_interval,
        ticker: None,
        request_timeout,
        sent_since_tick: false,
        requested: false,
        candidate: None,
        confirm_at: None,
        failing_since: None,
        last_failure: String::new(),
        done: false,
        _attached: Attached(shared.clone()),
        shared,
    };
    let stream = futures::stream::unfold(watcher, |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    });
    WatchStream::new(Box::pin(stream), progress)
}

/// Keeps the watcher gauge right however the watch ends.
struct Attached(Arc<Shared>);

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open etcd watch stream.
struct Conn {
    tx: WatchRequestSender,
    rx: WatchResponseStream,
    /// Known once etcd confirms the watch.
    id: Option<i64>,
    /// The revision the watch asked to start at.
    start: Revision,
    /// etcd's revision when it created the watch; None until then.
    created_rev: Option<Revision>,
    created_at: Instant,
    /// Whether the watch is known to be caught up (etcd replays history to a watch that
    /// starts in the past before it sends live events).
    synced: bool,
    /// A progress request is out.
    asked: bool,
}

struct Watcher {
    client: WatchClient,
    shared: Arc<Shared>,
    closed: signal::Receiver<bool>,
    key: Vec<u8>,
    range_end: Vec<u8>,
    start: Vec<u8>,
    end: Vec<u8>,
    /// Every event up to here has been delivered; the stream reopens after it.
    last: Revision,
    conn: Option<Conn>,
    pending: VecDeque<WatchMessage>,
    progress_requests: mpsc::Receiver<()>,
    progress_interval: Duration,
    /// Created on first poll: a timer needs the runtime, `watch()` does not.
    ticker: Option<Interval>,
    request_timeout: Duration,
    sent_since_tick: bool,
    /// `request_progress` was called and not yet answered.
    requested: bool,
    /// An unconfirmed progress answer and when it came.
    candidate: Option<(Revision, Instant)>,
    /// When to ask again to confirm the candidate (for a pending request).
    confirm_at: Option<Instant>,
    failing_since: Option<Instant>,
    last_failure: String,
    done: bool,
    _attached: Attached,
}

/// What woke the watcher up.
enum Wake {
    Closed,
    Response(Result<Option<WatchResponse>, etcd_client::Error>),
    Requested,
    Tick,
    Confirm,
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
            if *self.closed.borrow() {
                return self.fail(Error::Closed);
            }
            if self.ticker.is_none() && !self.progress_interval.is_zero() {
                let first = Instant::now() + self.progress_interval;
                let mut t = tokio::time::interval_at(first, self.progress_interval);
                t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                self.ticker = Some(t);
            }
            if self.conn.is_none() {
                if let Err(e) = self.open().await {
                    return self.fail(e);
                }
                continue;
            }
            let wake = self.wait().await;
            if let Err(e) = self.handle(wake).await {
                return self.fail(e);
            }
        }
    }

    /// Ends the stream with `e`.
    fn fail(&mut self, e: Error) -> Option<Result<WatchMessage, Error>> {
        self.done = true;
        self.pending.clear();
        self.conn = None;
        Some(Err(e))
    }

    async fn wait(&mut self) -> Wake {
        let Some(conn) = self.conn.as_mut() else {
            return Wake::Response(Ok(None));
        };
        let ticker = self.ticker.as_mut();
        let tick = async move {
            match ticker {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let confirm_at = self.confirm_at;
        let confirm = async move {
            match confirm_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.closed.changed() => Wake::Closed,
            r = conn.rx.message() => Wake::Response(r),
            Some(()) = self.progress_requests.recv() => Wake::Requested,
            _ = confirm => Wake::Confirm,
            _ = tick => Wake::Tick,
        }
    }

    async fn handle(&mut self, wake: Wake) -> Result<(), Error> {
        match wake {
            // Closing (or the store being dropped, which drops the sender) ends the watch.
            Wake::Closed => Err(Error::Closed),
            Wake::Response(Ok(Some(resp))) => self.on_response(resp),
            Wake::Response(Ok(None)) => {
                self.lost("etcd ended the watch stream".into());
                Ok(())
            }
            Wake::Response(Err(e)) => {
                self.lost(e.to_string());
                Ok(())
            }
            Wake::Requested => {
                self.requested = true;
                self.ask().await;
                Ok(())
            }
            Wake::Confirm => {
                self.confirm_at = None;
                self.ask().await;
                Ok(())
            }
            Wake::Tick => {
                // Like etcd, only idle watchers get periodic progress.
                if !self.sent_since_tick {
                    self.ask().await;
                }
                self.sent_since_tick = false;
                Ok(())
            }
        }
    }

    /// Opens the etcd watch after `last`, retrying for a while if etcd cannot be reached.
    async fn open(&mut self) -> Result<(), Error> {
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Some(since) = self.failing_since {
                if since.elapsed() > RETRY_FOR {
                    return Err(Error::Etcd {
                        op: "watch",
                        source: Arc::new(etcd_client::Error::WatchError(format!(
                            "gave up reopening the watch after {RETRY_FOR:?}: {}",
                            self.last_failure
                        ))),
                    });
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = self.closed.wait_for(|c| *c) => return Err(Error::Closed),
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            let start = self.last + 1;
            let opts = WatchOptions::new()
                .with_range(self.range_end.clone())
                .with_start_revision(start)
                .with_prev_key()
                .with_progress_notify();
            let opened = tokio::time::timeout(
                self.request_timeout,
                self.client.watch(self.key.clone(), Some(opts)),
            );
            let result = tokio::select! {
                r = opened => r,
                _ = self.closed.wait_for(|c| *c) => return Err(Error::Closed),
            };
            match result {
                Ok(Ok(stream)) => {
                    let (tx, rx) = stream.split();
                    self.conn = Some(Conn {
                        tx,
                        rx,
                        id: None,
                        start,
                        created_rev: None,
                        created_at: Instant::now(),
                        synced: false,
                        asked: false,
                    });
                    return Ok(());
                }
                Ok(Err(e)) => self.note_failure(e.to_string()),
                Err(_) => self.note_failure(format!("no answer within {:?}", self.request_timeout)),
            }
        }
    }

    fn note_failure(&mut self, why: String) {
        self.failing_since.get_or_insert_with(Instant::now);
        self.last_failure = why;
    }

    /// The stream broke: reopen it (after `last`) on the next turn.
    fn lost(&mut self, why: String) {
        tracing::warn!(after = self.last, reason = %why, "etcd watch stream lost; reopening");
        self.conn = None;
        self.candidate = None;
        if self.requested {
            self.confirm_at = None;
        }
        self.note_failure(why);
    }

    /// Sends a progress request unless one is out.
    async fn ask(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.asked {
            return;
        }
        conn.asked = true;
        if let Err(e) = conn.tx.request_progress().await {
            self.lost(e.to_string());
        }
    }

    fn on_response(&mut self, resp: WatchResponse) -> Result<(), Error> {
        self.shared.saw(resp.header());
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.compact_revision() > 0 {
            let c = resp.compact_revision();
            self.shared.compacted.fetch_max(c, Ordering::SeqCst);
            return Err(Error::Compacted {
                compact_revision: c,
                requested: self.last + 1,
            });
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        if resp.created() {
            if resp.canceled() {
                return Err(Error::Etcd {
                    op: "watch",
                    source: Arc::new(etcd_client::Error::WatchError(
                        resp.cancel_reason().to_string(),
                    )),
                });
            }
            conn.id = Some(resp.watch_id());
            conn.created_rev = Some(revision);
            conn.created_at = Instant::now();
            // etcd treats a watch that starts after its current revision as caught up.
            conn.synced = conn.start > revision;
            self.failing_since = None;
            return Ok(());
        }
        if resp.watch_id() == STREAM_WATCH_ID && resp.events().is_empty() {
            conn.asked = false;
            self.on_progress_answer(revision);
            return Ok(());
        }
        if conn.id != Some(resp.watch_id()) {
            return Ok(());
        }
        if resp.canceled() {
            // Not for compaction (handled above): leader lost, say. Start again from `last`.
            self.lost(format!("etcd canceled the watch: {}", resp.cancel_reason()));
            return Ok(());
        }
        if resp.events().is_empty() {
            // etcd's periodic notification: sent only to a caught-up watcher, in order.
            conn.synced = true;
            self.emit_progress(revision);
            return Ok(());
        }
        let created_rev = conn.created_rev;
        let mut caught_up = false;
        for ev in resp.events() {
            let Some(ev) = convert(ev) else {
                let rev = ev.kv().map_or(0, |kv| kv.mod_revision());
                // etcd reads the previous value at the event's revision - 1 and leaves it
                // out if that is compacted: the history this watch needs is gone.
                let c = self
                    .shared
                    .compacted
                    .fetch_max(rev, Ordering::SeqCst)
                    .max(rev);
                return Err(Error::Compacted {
                    compact_revision: c,
                    requested: self.last + 1,
                });
            };
            let rev = ev.revision();
            caught_up |= created_rev.is_some_and(|c| rev >= c);
            // After a reopen etcd may repeat what was delivered; never send it twice.
            if rev <= self.last {
                continue;
            }
            self.last = rev;
            if in_range(&ev.kv.key, &self.start, &self.end) {
                self.pending.push_back(WatchMessage::Event(ev));
                self.sent_since_tick = true;
            }
        }
        if caught_up {
            if let Some(conn) = self.conn.as_mut() {
                conn.synced = true;
            }
        }
        // An answer from before these events proves nothing; a newer one is needed.
        self.candidate = None;
        if self.requested {
            self.confirm_at = Some(Instant::now() + CONFIRM_GAP);
        }
        Ok(())
    }

    /// An answer to a progress request: etcd's current revision when it answered.
    fn on_progress_answer(&mut self, revision: Revision) {
        if self.shared.ordered_progress {
            self.emit_progress(revision);
            return;
        }
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        let now = Instant::now();
        match self.candidate {
            Some((candidate, at)) if now >= at + CONFIRM_GAP => {
                if conn.synced || at >= conn.created_at + SYNC_GRACE {
                    self.emit_progress(candidate);
                }
                self.candidate = Some((revision, now));
            }
            // Too young to confirm: keep the older one, so that frequent asks still confirm.
            Some(_) => {}
            None => self.candidate = Some((revision, now)),
        }
        if self.requested {
            let at = self.candidate.map_or(now, |(_, at)| at);
            self.confirm_at = Some((at + CONFIRM_GAP).max(now));
        }
    }

    fn emit_progress(&mut self, revision: Revision) {
        // Never move backwards: events up to `last` are delivered whatever etcd answered.
        self.last = self.last.max(revision);
        self.pending.push_back(WatchMessage::Progress(self.last));
        self.requested = false;
        self.confirm_at = None;
    }
}

/// An etcd event as corral's, or None when its previous value is missing: etcd reads it at
/// the event's revision - 1 and leaves it out when that history is compacted.
fn convert(ev: &etcd_client::Event) -> Option<Event> {
    let kv = ev.kv()?;
    let prev = ev.prev_kv().map(from_etcd_ref);
    match ev.event_type() {
        EventType::Put => {
            let kv = from_etcd_ref(kv);
            let created = kv.create_revision == kv.mod_revision;
            if prev.is_none() && !created {
                return None;
            }
            Some(Event {
                kind: EventKind::Put,
                kv,
                prev,
            })
        }
        EventType::Delete => {
            // etcd's delete event has only the key and the delete's revision; corral's
            // carries the last value and create_revision too.
            let prev = prev?;
            let kv = KeyValue {
                mod_revision: kv.mod_revision(),
                ..prev.clone()
            };
            Some(Event {
                kind: EventKind::Delete,
                kv,
                prev: Some(prev),
            })
        }
    }
}
