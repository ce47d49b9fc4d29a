//! Decoded watch events shared by every watcher of a resource version. A write seen by a
//! thousand watchers is decoded once (and its previous version at most once), and its
//! `{"type","object"}` line encoded once per event type, instead of once per watcher: that
//! per-watcher JSON work was what bounded watch fan-out.

use crate::registry::Resource;
use crate::storage;
use bytes::Bytes;
use corral_store::{Event, Revision};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Recent revisions kept decoded; watchers further behind simply decode again.
const CAPACITY: usize = 8192;

pub struct Decoded {
    /// The object as the watcher's API version shows it (None if undecodable).
    pub obj: Option<Value>,
    prev_kv: Option<corral_store::KeyValue>,
    prev: OnceLock<Option<Value>>,
    res: Resource,
    lines: [OnceLock<Bytes>; 3],
}

pub const TYPES: [&str; 3] = ["ADDED", "MODIFIED", "DELETED"];

impl Decoded {
    /// The previous version, decoded on first use (only selector-filtered watches need it).
    pub fn prev(&self) -> Option<&Value> {
        self.prev
            .get_or_init(|| {
                self.prev_kv
                    .as_ref()
                    .and_then(|kv| storage::decode(&self.res, kv).ok())
            })
            .as_ref()
    }

    /// The JSON watch line for this event with type `ty` (one of `TYPES`).
    pub fn line(&self, ty: &str) -> Bytes {
        let i = TYPES.iter().position(|t| *t == ty).unwrap_or(1);
        self.lines[i]
            .get_or_init(|| {
                let mut line = serde_json::to_vec(&json!({"type": ty, "object": self.obj}))
                    .unwrap_or_default();
                line.push(b'\n');
                Bytes::from(line)
            })
            .clone()
    }
}

#[derive(Default)]
pub struct EventCache {
    entries: Mutex<BTreeMap<(Revision, String), Arc<Decoded>>>,
}

impl EventCache {
    pub fn get(&self, res: &Resource, ev: &Event) -> Arc<Decoded> {
        let key = (ev.kv.mod_revision, res.api_version());
        if let Some(d) = self.entries.lock().unwrap().get(&key) {
            return d.clone();
        }
        // Decode outside the lock; a concurrent miss decodes twice, harmlessly.
        let decoded = Arc::new(Decoded {
            obj: storage::decode(res, &ev.kv).ok(),
            prev_kv: ev.prev.clone(),
            prev: OnceLock::new(),
            res: res.clone(),
            lines: Default::default(),
        });
        let mut entries = self.entries.lock().unwrap();
        let out = entries.entry(key).or_insert(decoded).clone();
        while entries.len() > CAPACITY {
            entries.pop_first();
        }
        out
    }
}
