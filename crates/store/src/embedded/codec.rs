//! On-disk layout of the embedded backend: table definitions and the byte encoding of
//! their values. Encodings are explicit (big-endian, length-prefixed) so the file format
//! does not depend on Rust struct layout.
//!
//! - `kv`:   key -> create_rev(8) | mod_rev(8) | value
//! - `log`:  revision -> kind(1) | create_rev(8) | prev_mod_rev(8) | key_len(4) | key |
//!   value_len(4) | value | prev_value. A put keeps the value it replaced, so a watch
//!   replayed from the log carries `prev` even when the previous revision was compacted.
//!   A delete's `value` is the value it removed, which is also its prev.
//! - `meta`: name -> i64 (current and compacted revision), written in the same transaction
//!   as the data so the counters can never disagree with it after a crash.

use bytes::Bytes;
use redb::TableDefinition;

use crate::{Error, Event, EventKind, KeyValue, Revision};

pub(crate) const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

pub(crate) const META_CURRENT: &str = "current_revision";
pub(crate) const META_COMPACTED: &str = "compacted_revision";

const KIND_PUT: u8 = 0;
const KIND_DELETE: u8 = 1;

pub(crate) fn encode_kv(create_rev: Revision, mod_rev: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create_rev.to_be_bytes());
    out.extend_from_slice(&mod_rev.to_be_bytes());
    out.extend_from_slice(value);
    out
}

pub(crate) fn decode_kv(key: &[u8], raw: &[u8]) -> Result<KeyValue, Error> {
    let mut r = Reader(raw);
    let create_revision = r.i64()?;
    let mod_revision = r.i64()?;
    Ok(KeyValue {
        key: key.to_vec(),
        value: Bytes::copy_from_slice(r.0),
        create_revision,
        mod_revision,
    })
}

/// Encodes the log record of a change; `prev` is the key's state before it.
pub(crate) fn encode_log(kind: EventKind, kv: &KeyValue, prev: Option<&KeyValue>) -> Vec<u8> {
    let prev_value: &[u8] = match (kind, prev) {
        (EventKind::Put, Some(p)) => &p.value,
        _ => &[],
    };
    let mut out = Vec::with_capacity(29 + kv.key.len() + kv.value.len() + prev_value.len());
    out.push(match kind {
        EventKind::Put => KIND_PUT,
        EventKind::Delete => KIND_DELETE,
    });
    out.extend_from_slice(&kv.create_revision.to_be_bytes());
    out.extend_from_slice(&prev.map_or(0, |p| p.mod_revision).to_be_bytes());
    out.extend_from_slice(&(kv.key.len() as u32).to_be_bytes());
    out.extend_from_slice(&kv.key);
    out.extend_from_slice(&(kv.value.len() as u32).to_be_bytes());
    out.extend_from_slice(&kv.value);
    out.extend_from_slice(prev_value);
    out
}

/// The key of a log record, without decoding the rest (watch filters on it first).
pub(crate) fn log_key(raw: &[u8]) -> Result<&[u8], Error> {
    let mut r = Reader(raw);
    r.take(17)?;
    r.bytes()
}

pub(crate) fn decode_log(revision: Revision, raw: &[u8]) -> Result<Event, Error> {
    let mut r = Reader(raw);
    let kind = match r.take(1)?[0] {
        KIND_PUT => EventKind::Put,
        KIND_DELETE => EventKind::Delete,
        other => {
            return Err(Error::Corrupt(format!(
                "log record {revision} has kind {other}"
            )))
        }
    };
    let create_revision = r.i64()?;
    let prev_mod = r.i64()?;
    let key = r.bytes()?.to_vec();
    let value = Bytes::copy_from_slice(r.bytes()?);
    let prev = match (prev_mod, kind) {
        (0, _) => None,
        (_, EventKind::Put) => Some(KeyValue {
            key: key.clone(),
            value: Bytes::copy_from_slice(r.0),
            create_revision,
            mod_revision: prev_mod,
        }),
        (_, EventKind::Delete) => Some(KeyValue {
            key: key.clone(),
            value: value.clone(),
            create_revision,
            mod_revision: prev_mod,
        }),
    };
    Ok(Event {
        kind,
        kv: KeyValue {
            key,
            value,
            create_revision,
            mod_revision: revision,
        },
        prev,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Corrupt(format!(
                "record truncated: wanted {n} bytes, {} left",
                self.0.len()
            )));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn i64(&mut self) -> Result<i64, Error> {
        let b = self.take(8)?;
        Ok(i64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let b = self.take(4)?;
        let n = u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, c: Revision, m: Revision) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: c,
            mod_revision: m,
        }
    }

    #[test]
    fn kv_round_trips() {
        let raw = encode_kv(3, 7, b"hello");
        assert_eq!(decode_kv(b"k", &raw).unwrap(), kv("k", "hello", 3, 7));
        assert!(decode_kv(b"k", &raw[..10]).is_err());
    }

    #[test]
    fn log_round_trips_put_with_and_without_prev() {
        let new = kv("k", "v2", 3, 9);
        let prev = kv("k", "v1", 3, 5);
        let raw = encode_log(EventKind::Put, &new, Some(&prev));
        assert_eq!(log_key(&raw).unwrap(), b"k");
        let ev = decode_log(9, &raw).unwrap();
        assert_eq!(ev.kind, EventKind::Put);
        assert_eq!(ev.kv, new);
        assert_eq!(ev.prev, Some(prev));

        let created = kv("k", "v", 9, 9);
        let ev = decode_log(9, &encode_log(EventKind::Put, &created, None)).unwrap();
        assert_eq!(ev.kv, created);
        assert_eq!(ev.prev, None);
    }

    #[test]
    fn log_round_trips_delete() {
        let prev = kv("k", "last", 3, 5);
        let deleted = kv("k", "last", 3, 11);
        let ev = decode_log(11, &encode_log(EventKind::Delete, &deleted, Some(&prev))).unwrap();
        assert_eq!(ev.kind, EventKind::Delete);
        assert_eq!(ev.kv, deleted);
        assert_eq!(ev.prev, Some(prev));
    }

    #[test]
    fn truncated_log_record_is_an_error_not_a_panic() {
        let raw = encode_log(EventKind::Put, &kv("key", "value", 1, 1), None);
        for n in 0..raw.len() - 5 {
            assert!(
                decode_log(1, &raw[..n]).is_err(),
                "prefix of {n} bytes decoded"
            );
        }
        assert!(decode_log(1, &[9u8; 40]).is_err());
    }
}
