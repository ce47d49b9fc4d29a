//! The store's vocabulary: revisions, key-values, preconditions, outcomes and watch events.
//! Shared by every backend so that the API server sees one shape whatever stores the data.

use bytes::Bytes;

/// A point in the store's single, global history. The empty store is at revision 1 and every
/// committed put or delete takes the next one (as in etcd's v3 API).
pub type Revision = i64;

/// A key's latest (or historical) value with the revisions that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Bytes,
    /// Revision of the put that created this generation of the key; kept across updates and
    /// reset when the key is deleted and created again.
    pub create_revision: Revision,
    /// Revision of the last put (or, in a delete event, of the delete itself).
    pub mod_revision: Revision,
}

/// Precondition on a key's current state, checked inside the same transaction as the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// No precondition (a put creates or overwrites; a delete needs the key to exist).
    Any,
    /// The key must not exist (create).
    Absent,
    /// The key must exist with exactly this mod_revision (compare-and-swap on resourceVersion).
    ModRevision(Revision),
}

/// Result of a put or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// The write is durable at `revision`; `prev` is the key's state before it.
    Committed {
        revision: Revision,
        prev: Option<KeyValue>,
    },
    /// The precondition failed; nothing was written. `current` is what the key holds now.
    Conflict { current: Option<KeyValue> },
}

/// A page of latest values from a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// True when more keys in the range follow the last one returned (limit was reached).
    pub more: bool,
    /// Store revision of the snapshot the page was read from.
    pub revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a put: the new state. For a delete: the key with its last value and create_revision,
    /// and mod_revision set to the delete's revision.
    pub kv: KeyValue,
    /// The key's state before this change (None when the put created the key).
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision at which this change was committed.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// What a watch stream yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    Event(Event),
    /// Every event at or below this revision in the watched range has been delivered.
    Progress(Revision),
}

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Write transactions committed (each one fsync).
    pub commits: u64,
    /// Puts and deletes committed.
    pub writes: u64,
    /// Puts and deletes refused because their precondition failed.
    pub conflicts: u64,
    /// Watchers currently attached.
    pub watchers: u64,
}

/// The smallest key greater than every key starting with `prefix`, for use as a range end.
/// An empty result means "no upper bound" (the prefix is empty or all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// Whether `key` lies in `[start, end)`, an empty `end` meaning unbounded.
pub(crate) fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && (end.is_empty() || key < end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), Vec::<u8>::new());
        assert_eq!(prefix_end(b""), Vec::<u8>::new());
    }

    #[test]
    fn in_range_treats_empty_end_as_unbounded() {
        assert!(in_range(b"b", b"a", b""));
        assert!(in_range(b"a", b"a", b"b"));
        assert!(!in_range(b"b", b"a", b"b"));
        assert!(!in_range(b"0", b"a", b""));
    }
}
