//! The single writer thread: group commit and log compaction.
//!
//! Every put, delete and compaction goes through one channel to this thread. It takes all
//! requests pending at that moment, applies them in order in one redb write transaction
//! (each with its own precondition; a failed one does not fail the others), commits once
//! (one fsync), publishes the batch's events to watchers and only then answers the callers.
//! Under many concurrent writers a commit therefore carries many writes, which is how the
//! store is both durable and fast.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, Table};
use tokio::sync::{broadcast, oneshot};

use super::codec::{self, KV, LOG, META, META_COMPACTED, META_CURRENT};
use super::Counters;
use crate::{Compare, EmbeddedOptions, Error, Event, EventKind, KeyValue, Revision, TxnOutcome};

/// Log records deleted per transaction while compacting, so that a large compaction is
/// spread over many commits and never stalls writers for long.
const COMPACT_CHUNK: i64 = 8192;

/// Value bytes one group commit takes at most (besides `max_batch` requests), so that a
/// burst of large values does not make one huge transaction.
const MAX_BATCH_BYTES: usize = 16 << 20;

pub(crate) enum Request {
    Put {
        key: Vec<u8>,
        value: Bytes,
        cmp: Compare,
        reply: oneshot::Sender<Result<TxnOutcome, Error>>,
    },
    Delete {
        key: Vec<u8>,
        cmp: Compare,
        reply: oneshot::Sender<Result<TxnOutcome, Error>>,
    },
    Compact {
        revision: Revision,
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

impl Request {
    fn size(&self) -> usize {
        match self {
            Request::Put { key, value, .. } => key.len() + value.len(),
            Request::Delete { key, .. } => key.len(),
            Request::Compact { .. } => 0,
        }
    }
}

/// The events of one commit, shared by all watchers.
#[derive(Debug)]
pub(crate) struct Batch {
    pub events: Vec<Event>,
}

impl Batch {
    pub fn last_revision(&self) -> Revision {
        self.events.last().map_or(0, Event::revision)
    }
}

pub(crate) struct Writer {
    pub db: Arc<Database>,
    pub rx: Receiver<Request>,
    pub events: broadcast::Sender<Arc<Batch>>,
    pub counters: Arc<Counters>,
    pub opts: EmbeddedOptions,
    pub current: Revision,
    pub compacted: Revision,
}

/// Who waits for what in a batch; separated from the work so that a failure anywhere in
/// the transaction reaches every caller in it.
enum Reply {
    Txn(oneshot::Sender<Result<TxnOutcome, Error>>),
    Compact(Revision, oneshot::Sender<Result<(), Error>>),
}

/// One put (`value` is Some) or delete to apply.
struct Op {
    key: Vec<u8>,
    value: Option<Bytes>,
    cmp: Compare,
}

impl Writer {
    pub fn run(mut self) {
        tracing::debug!(
            loop_name = "store-writer",
            revision = self.current,
            "started"
        );
        let mut compact_target = self.compacted;
        let mut compact_waiters: Vec<(Revision, oneshot::Sender<Result<(), Error>>)> = Vec::new();
        let interval = self.opts.compaction_interval.max(Duration::from_millis(10));
        let mut next_auto = Instant::now() + interval;
        loop {
            // Wait for work, but not past the next automatic compaction, and not at all while
            // a compaction is in progress (it proceeds chunk by chunk between write batches).
            let first = if compact_target > self.compacted {
                match self.rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                let wait = next_auto.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(wait) {
                    Ok(r) => Some(r),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut batch = Vec::new();
            if let Some(r) = first {
                let mut bytes = r.size();
                batch.push(r);
                while batch.len() < self.opts.max_batch && bytes < MAX_BATCH_BYTES {
                    match self.rx.try_recv() {
                        Ok(r) => {
                            bytes += r.size();
                            batch.push(r);
                        }
                        Err(_) => break,
                    }
                }
            }
            if Instant::now() >= next_auto {
                next_auto = Instant::now() + interval;
                compact_target = compact_target.max(self.retain_floor());
            }
            // Keep the log bounded whatever the interval and write rate: trim once it holds
            // a quarter more than the retained history.
            let retain = self.opts.retain_revisions.min(i64::MAX as u64 / 4) as i64;
            if self.current - self.compacted > retain + (retain / 4).max(1) {
                compact_target = compact_target.max(self.retain_floor());
            }
            // Explicit compaction requests join the target; they are answered once reached.
            for r in &batch {
                // A future revision is refused when the batch is applied.
                match r {
                    Request::Compact { revision, .. } if *revision <= self.current => {
                        compact_target = compact_target.max(*revision);
                    }
                    _ => {}
                }
            }
            if batch.is_empty() && compact_target <= self.compacted {
                continue;
            }
            let chunk_to = compact_target.min(self.compacted + COMPACT_CHUNK);
            if !self.commit(batch, chunk_to, &mut compact_waiters) {
                // Do not spin on a failing disk: drop the compaction until the next interval.
                compact_target = self.compacted;
            }
        }
        // Dropping the broadcast sender ends every watcher with `Closed` once the last store
        // handle is gone.
        tracing::debug!(
            loop_name = "store-writer",
            revision = self.current,
            "stopped"
        );
    }

    /// The compaction target that keeps `retain_revisions` of history.
    fn retain_floor(&self) -> Revision {
        let retain = self.opts.retain_revisions.min(i64::MAX as u64) as i64;
        (self.current - retain).max(0)
    }

    /// Applies one batch (and one compaction chunk up to `compact_to`) in one transaction.
    /// Returns whether it committed.
    fn commit(
        &mut self,
        batch: Vec<Request>,
        compact_to: Revision,
        compact_waiters: &mut Vec<(Revision, oneshot::Sender<Result<(), Error>>)>,
    ) -> bool {
        let mut ops = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for req in batch {
            match req {
                Request::Put {
                    key,
                    value,
                    cmp,
                    reply,
                } => {
                    ops.push(Op {
                        key,
                        value: Some(value),
                        cmp,
                    });
                    replies.push(Reply::Txn(reply));
                }
                Request::Delete { key, cmp, reply } => {
                    ops.push(Op {
                        key,
                        value: None,
                        cmp,
                    });
                    replies.push(Reply::Txn(reply));
                }
                Request::Compact { revision, reply } if revision > self.current => {
                    let _ = reply.send(Err(Error::FutureRevision {
                        requested: revision,
                        current_revision: self.current,
                    }));
                }
                Request::Compact { revision, reply } => {
                    replies.push(Reply::Compact(revision, reply));
                }
            }
        }
        let start_rev = self.current;
        let start_compacted = self.compacted;
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut events = Vec::new();
        let result = self
            .apply(ops, compact_to, &mut outcomes, &mut events)
            .and_then(|txn| txn.commit().map_err(Error::from));
        if let Err(e) = result {
            tracing::error!(loop_name = "store-writer", error = %e, "commit failed");
            // Nothing of this batch is durable: roll the counters back and fail every caller.
            self.current = start_rev;
            self.compacted = start_compacted;
            for reply in replies {
                match reply {
                    Reply::Txn(tx) => {
                        let _ = tx.send(Err(e.clone()));
                    }
                    Reply::Compact(_, tx) => {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
            return false;
        }
        let writes = (self.current - start_rev) as u64;
        self.counters.current.store(self.current, Ordering::SeqCst);
        self.counters
            .compacted
            .store(self.compacted, Ordering::SeqCst);
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters.writes.fetch_add(writes, Ordering::Relaxed);
        if !events.is_empty() {
            // No receivers is not an error: nobody is watching.
            let _ = self.events.send(Arc::new(Batch { events }));
        }
        let mut outcomes = outcomes.into_iter();
        for reply in replies {
            match reply {
                Reply::Txn(tx) => {
                    let Some(outcome) = outcomes.next() else {
                        break; // one outcome per op, so never
                    };
                    if matches!(outcome, TxnOutcome::Conflict { .. }) {
                        self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = tx.send(Ok(outcome));
                }
                Reply::Compact(rev, tx) => compact_waiters.push((rev, tx)),
            }
        }
        let compacted = self.compacted;
        let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(compact_waiters)
            .into_iter()
            .partition(|(rev, _)| *rev <= compacted);
        *compact_waiters = pending;
        for (_, tx) in done {
            let _ = tx.send(Ok(()));
        }
        true
    }

    fn apply(
        &mut self,
        ops: Vec<Op>,
        compact_to: Revision,
        outcomes: &mut Vec<TxnOutcome>,
        events: &mut Vec<Event>,
    ) -> Result<redb::WriteTransaction, Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if self.opts.fsync {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        txn.set_quick_repair(self.opts.quick_repair);
        {
            let mut kv = txn.open_table(KV)?;
            let mut log = txn.open_table(LOG)?;
            for op in ops {
                let (outcome, event) = self.apply_one(&mut kv, &mut log, op)?;
                outcomes.push(outcome);
                events.extend(event);
            }
            if compact_to > self.compacted {
                log.retain_in((self.compacted + 1) as u64..=compact_to as u64, |_, _| {
                    false
                })?;
                self.compacted = compact_to;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(META_CURRENT, self.current)?;
            meta.insert(META_COMPACTED, self.compacted)?;
        }
        Ok(txn)
    }

    /// Applies one put (`value` is Some) or delete, returning its outcome and event.
    fn apply_one(
        &mut self,
        kv: &mut Table<&[u8], &[u8]>,
        log: &mut Table<u64, &[u8]>,
        Op { key, value, cmp }: Op,
    ) -> Result<(TxnOutcome, Option<Event>), Error> {
        let current = {
            let found = kv.get(key.as_slice())?;
            found
                .map(|g| codec::decode_kv(&key, g.value()))
                .transpose()?
        };
        let ok = match cmp {
            Compare::Any => true,
            Compare::Absent => current.is_none(),
            Compare::ModRevision(rev) => current.as_ref().is_some_and(|c| c.mod_revision == rev),
        };
        // A delete of a missing key is a conflict whatever the precondition: nothing changes.
        let conflict = !ok || (value.is_none() && current.is_none());
        let revision = self.current + 1;
        let event = match (value, &current) {
            _ if conflict => return Ok((TxnOutcome::Conflict { current }, None)),
            (Some(value), _) => {
                let create_revision = current.as_ref().map_or(revision, |c| c.create_revision);
                kv.insert(
                    key.as_slice(),
                    codec::encode_kv(create_revision, revision, &value).as_slice(),
                )?;
                let new = KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision: revision,
                };
                log.insert(
                    revision as u64,
                    codec::encode_log(EventKind::Put, &new, current.as_ref()).as_slice(),
                )?;
                Event {
                    kind: EventKind::Put,
                    kv: new,
                    prev: current.clone(),
                }
            }
            (None, None) => return Ok((TxnOutcome::Conflict { current }, None)),
            (None, Some(prev)) => {
                let prev = prev.clone();
                kv.remove(key.as_slice())?;
                let deleted = KeyValue {
                    key,
                    value: prev.value.clone(),
                    create_revision: prev.create_revision,
                    mod_revision: revision,
                };
                log.insert(
                    revision as u64,
                    codec::encode_log(EventKind::Delete, &deleted, Some(&prev)).as_slice(),
                )?;
                Event {
                    kind: EventKind::Delete,
                    kv: deleted,
                    prev: Some(prev),
                }
            }
        };
        self.current = revision;
        Ok((
            TxnOutcome::Committed {
                revision,
                prev: current,
            },
            Some(event),
        ))
    }
}
