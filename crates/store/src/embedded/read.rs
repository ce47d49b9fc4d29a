//! Reads against one redb snapshot. Everything here is blocking and runs on tokio's
//! blocking pool; a read transaction never blocks the writer (redb is MVCC).

use std::ops::Bound;

use redb::ReadTransaction;

use super::codec::{self, KV, LOG, META, META_COMPACTED, META_CURRENT};
use crate::{Error, Event, KeyValue, RangeResult, Revision};

/// The two counters, as of the snapshot.
pub(crate) fn meta(txn: &ReadTransaction) -> Result<(Revision, Revision), Error> {
    let t = txn.open_table(META)?;
    let current = t.get(META_CURRENT)?.map(|g| g.value()).unwrap_or(1);
    let compacted = t.get(META_COMPACTED)?.map(|g| g.value()).unwrap_or(0);
    Ok((current, compacted))
}

pub(crate) fn get(txn: &ReadTransaction, key: &[u8]) -> Result<Option<KeyValue>, Error> {
    let t = txn.open_table(KV)?;
    let found = t.get(key)?;
    found.map(|g| codec::decode_kv(key, g.value())).transpose()
}

fn bounds<'a>(start: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    let upper = if end.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(end)
    };
    (Bound::Included(start), upper)
}

pub(crate) fn range(
    txn: &ReadTransaction,
    start: &[u8],
    end: &[u8],
    limit: usize,
) -> Result<RangeResult, Error> {
    let (revision, _) = meta(txn)?;
    let mut kvs = Vec::new();
    let mut more = false;
    if end.is_empty() || start < end {
        let t = txn.open_table(KV)?;
        for item in t.range::<&[u8]>(bounds(start, end))? {
            let (k, v) = item?;
            if limit != 0 && kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(codec::decode_kv(k.value(), v.value())?);
        }
    }
    Ok(RangeResult {
        kvs,
        more,
        revision,
    })
}

/// Every key-value in `[start, end)` of this snapshot, handed to `sink` at most `chunk` at a
/// time, in key order, until it returns false (its reader went away).
pub(crate) fn range_chunked(
    txn: &ReadTransaction,
    start: &[u8],
    end: &[u8],
    chunk: usize,
    mut sink: impl FnMut(Vec<KeyValue>) -> bool,
) -> Result<(), Error> {
    if !end.is_empty() && start >= end {
        return Ok(());
    }
    let chunk = chunk.max(1);
    let t = txn.open_table(KV)?;
    let mut kvs = Vec::with_capacity(chunk);
    for item in t.range::<&[u8]>(bounds(start, end))? {
        let (k, v) = item?;
        kvs.push(codec::decode_kv(k.value(), v.value())?);
        if kvs.len() == chunk && !sink(std::mem::replace(&mut kvs, Vec::with_capacity(chunk))) {
            return Ok(());
        }
    }
    if !kvs.is_empty() {
        sink(kvs);
    }
    Ok(())
}

/// The keys in `[start, end)` as they were at revision `at` (at most `limit`), read from
/// the current state with every later change in the range undone from the log: what a
/// paginated list needs so that all its pages show one point in time, as etcd gives it.
/// Fails with `Compacted` once the history back to `at` is gone.
pub(crate) fn range_at(
    txn: &ReadTransaction,
    start: &[u8],
    end: &[u8],
    limit: usize,
    at: Revision,
) -> Result<RangeResult, Error> {
    let (current, compacted) = meta(txn)?;
    if at >= current {
        return range(txn, start, end, limit);
    }
    if at < compacted {
        return Err(Error::Compacted {
            compact_revision: compacted,
            requested: at,
        });
    }
    // The state at `at` of every key changed since: the first later event's previous value.
    let mut then: std::collections::BTreeMap<Vec<u8>, Option<KeyValue>> = Default::default();
    if end.is_empty() || start < end {
        let log = txn.open_table(LOG)?;
        for item in log.range((at + 1) as u64..=current as u64)? {
            let (rev, raw) = item?;
            let raw = raw.value();
            let key = codec::log_key(raw)?;
            if crate::types::in_range(key, start, end) && !then.contains_key(key) {
                let ev = codec::decode_log(rev.value() as Revision, raw)?;
                then.insert(ev.kv.key.clone(), ev.prev);
            }
        }
    }
    // Merge the current keys with the changed ones, both in key order.
    let mut merged: Vec<KeyValue> = Vec::new();
    let want = if limit == 0 { usize::MAX } else { limit + 1 };
    let mut past = then.into_iter().peekable();
    if end.is_empty() || start < end {
        let t = txn.open_table(KV)?;
        for item in t.range::<&[u8]>(bounds(start, end))? {
            if merged.len() >= want {
                break;
            }
            let (k, v) = item?;
            let k = k.value();
            // Keys that existed at `at` but were deleted since.
            while let Some((pk, _)) = past.peek() {
                if pk.as_slice() >= k || merged.len() >= want {
                    break;
                }
                merged.extend(past.next().and_then(|(_, old)| old));
            }
            match past.peek() {
                Some((pk, _)) if pk.as_slice() == k => {
                    // Changed since `at`: as it was then (None: created after `at`).
                    merged.extend(past.next().and_then(|(_, old)| old));
                }
                _ => merged.push(codec::decode_kv(k, v.value())?),
            }
        }
    }
    for (_, old) in past {
        if merged.len() >= want {
            break;
        }
        merged.extend(old);
    }
    let more = merged.len() > limit && limit != 0;
    merged.truncate(if limit == 0 { merged.len() } else { limit });
    let kvs = merged;
    Ok(RangeResult {
        kvs,
        more,
        revision: at,
    })
}

pub(crate) fn count(txn: &ReadTransaction, start: &[u8], end: &[u8]) -> Result<u64, Error> {
    if !end.is_empty() && start >= end {
        return Ok(0);
    }
    let t = txn.open_table(KV)?;
    let mut n = 0;
    for item in t.range::<&[u8]>(bounds(start, end))? {
        item?;
        n += 1;
    }
    Ok(n)
}

/// A slice of history read for a watcher catching up.
pub(crate) struct LogChunk {
    /// Events in `[start, end)` with revision in `(after, scanned_to]`, in order.
    pub events: Vec<Event>,
    /// Every revision up to here has been looked at.
    pub scanned_to: Revision,
    /// The chunk reached the snapshot's current revision.
    pub done: bool,
}

/// Reads up to `max_scan` log records after `after`, keeping those whose key is in range.
/// Fails with `Compacted` if part of the requested history is gone.
pub(crate) fn log_after(
    txn: &ReadTransaction,
    after: Revision,
    max_scan: usize,
    start: &[u8],
    end: &[u8],
) -> Result<LogChunk, Error> {
    let (current, compacted) = meta(txn)?;
    if after < compacted {
        return Err(Error::Compacted {
            compact_revision: compacted,
            requested: after + 1,
        });
    }
    let mut chunk = LogChunk {
        events: Vec::new(),
        scanned_to: after.max(compacted),
        done: true,
    };
    if after >= current {
        chunk.scanned_to = after;
        return Ok(chunk);
    }
    let t = txn.open_table(LOG)?;
    let from = (after + 1) as u64;
    let to = current as u64;
    for (n, item) in t.range(from..=to)?.enumerate() {
        if n == max_scan {
            chunk.done = false;
            return Ok(chunk);
        }
        let (rev, raw) = item?;
        let rev = rev.value() as Revision;
        let raw = raw.value();
        if crate::types::in_range(codec::log_key(raw)?, start, end) {
            chunk.events.push(codec::decode_log(rev, raw)?);
        }
        chunk.scanned_to = rev;
    }
    chunk.scanned_to = current;
    Ok(chunk)
}
