//! Consistency check of one snapshot, used by tests (after crashes) and available to
//! operators: the counters, the log and the latest values must tell the same story.

use redb::{ReadTransaction, ReadableTableMetadata};

use super::codec::{self, KV, LOG};
use super::read;
use crate::{Error, EventKind, Revision};

fn corrupt(msg: String) -> Result<(), Error> {
    Err(Error::Corrupt(msg))
}

pub(crate) fn verify(txn: &ReadTransaction) -> Result<(), Error> {
    let (current, compacted) = read::meta(txn)?;
    if current < 1 || compacted < 0 || compacted > current {
        return corrupt(format!(
            "counters out of order: current {current}, compacted {compacted}"
        ));
    }
    // The log holds exactly one record per revision in (compacted, current]; revision 1 is
    // the empty store and has none.
    let log = txn.open_table(LOG)?;
    let first = compacted.max(1);
    let expected = (current - first) as u64;
    if log.len()? != expected {
        return corrupt(format!(
            "log has {} records, expected {expected} for ({first}, {current}]",
            log.len()?
        ));
    }
    for (want, item) in (first + 1..).zip(log.range::<u64>(..)?) {
        let (rev, raw) = item?;
        let rev = rev.value() as Revision;
        if rev != want {
            return corrupt(format!("log record {rev} where {want} was expected"));
        }
        codec::decode_log(rev, raw.value())?;
    }
    // Every latest value is consistent with the counters and, if not compacted, the log.
    let kv = txn.open_table(KV)?;
    for item in kv.range::<&[u8]>(..)? {
        let (k, v) = item?;
        let kv = codec::decode_kv(k.value(), v.value())?;
        if kv.create_revision < 2
            || kv.create_revision > kv.mod_revision
            || kv.mod_revision > current
        {
            return corrupt(format!(
                "key {:?} has create {} mod {} with current {current}",
                String::from_utf8_lossy(&kv.key),
                kv.create_revision,
                kv.mod_revision
            ));
        }
        if kv.mod_revision > compacted {
            let raw = log.get(kv.mod_revision as u64)?;
            let Some(raw) = raw else {
                return corrupt(format!("log record {} missing", kv.mod_revision));
            };
            let ev = codec::decode_log(kv.mod_revision, raw.value())?;
            if ev.kind != EventKind::Put || ev.kv != kv {
                return corrupt(format!(
                    "log record {} does not match key {:?}",
                    kv.mod_revision,
                    String::from_utf8_lossy(&kv.key)
                ));
            }
        }
    }
    Ok(())
}
