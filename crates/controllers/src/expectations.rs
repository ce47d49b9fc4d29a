//! Controller expectations, as in client-go: after a controller creates or deletes pods it
//! must not act again on the same owner until its informer has seen those changes, or it
//! would count the cache's stale view and create (or delete) twice. Deletions are tracked
//! by pod name, so a pod seen both terminating and then gone counts once. Expectations
//! expire, so a lost watch event delays a controller but never wedges it.

use crate::informer::Key;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Pending {
    adds: i64,
    deletes: HashSet<String>,
    since: Option<Instant>,
}

impl Pending {
    fn done(&self) -> bool {
        self.adds <= 0 && self.deletes.is_empty()
    }
}

#[derive(Default)]
pub struct Expectations {
    by_owner: Mutex<HashMap<Key, Pending>>,
}

impl Expectations {
    /// True when the owner's last actions have all been observed (or expired).
    pub fn satisfied(&self, owner: &Key) -> bool {
        let map = self.by_owner.lock().unwrap();
        map.get(owner)
            .is_none_or(|p| p.done() || p.since.is_none_or(|s| s.elapsed() > TTL))
    }

    pub fn expect_adds(&self, owner: &Key, adds: i64) {
        let mut map = self.by_owner.lock().unwrap();
        let p = map.entry(owner.clone()).or_default();
        if p.done() || p.since.is_some_and(|s| s.elapsed() > TTL) {
            *p = Pending::default();
        }
        p.adds += adds;
        p.since = Some(Instant::now());
    }

    pub fn expect_deletes(&self, owner: &Key, pods: impl IntoIterator<Item = String>) {
        let mut map = self.by_owner.lock().unwrap();
        let p = map.entry(owner.clone()).or_default();
        if p.done() || p.since.is_some_and(|s| s.elapsed() > TTL) {
            *p = Pending::default();
        }
        p.deletes.extend(pods);
        p.since = Some(Instant::now());
    }

    pub fn observed_add(&self, owner: &Key) {
        if let Some(p) = self.by_owner.lock().unwrap().get_mut(owner) {
            p.adds -= 1;
        }
    }

    pub fn observed_delete(&self, owner: &Key, pod: &str) {
        if let Some(p) = self.by_owner.lock().unwrap().get_mut(owner) {
            p.deletes.remove(pod);
        }
    }

    pub fn forget(&self, owner: &Key) {
        self.by_owner.lock().unwrap().remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn satisfied_once_every_action_is_observed() {
        let e = Expectations::default();
        let k = Key::new("ns", "rs");
        assert!(e.satisfied(&k));
        e.expect_adds(&k, 2);
        e.expect_deletes(&k, ["p1".to_string()]);
        e.observed_add(&k);
        assert!(!e.satisfied(&k));
        e.observed_add(&k);
        e.observed_delete(&k, "p1");
        e.observed_delete(&k, "p1");
        assert!(e.satisfied(&k));
    }
}
