//! The scheduling queue, as kube-scheduler's: an active queue (higher priority first, then
//! first come), a backoff queue (1 s doubling to 10 s per failed attempt), and the
//! unschedulable pods, which wait for a cluster change that may help them (or, at the
//! latest, `max_unschedulable` ) before going back through backoff. Time is passed in, so
//! this is tested without sleeping.

use crate::framework::PluginSet;
use crate::types::PodInfo;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    InFlight,
}

#[derive(Debug)]
struct Entry {
    pod: Arc<PodInfo>,
    state: State,
    attempts: u32,
    first_seen: Instant,
    last_attempt: Instant,
    plugins: PluginSet,
    seq: u64,
    popped_at_move: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub active: usize,
    pub backoff: usize,
    pub unschedulable: usize,
}

#[derive(Debug)]
pub struct Queue {
    pods: HashMap<String, Entry>,
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    seq: u64,
    moves: u64,
    initial: Duration,
    max: Duration,
    max_unschedulable: Duration,
    last_unschedulable_flush: Option<Instant>,
}

/// How often unschedulable pods are checked for having waited too long.
const UNSCHEDULABLE_FLUSH_EVERY: Duration = Duration::from_secs(30);

impl Queue {
    pub fn new(initial: Duration, max: Duration, max_unschedulable: Duration) -> Queue {
        Queue {
            pods: HashMap::new(),
            active: BinaryHeap::new(),
            backoff: BinaryHeap::new(),
            seq: 0,
            moves: 0,
            initial,
            max,
            max_unschedulable,
            last_unschedulable_flush: None,
        }
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    pub fn uids(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for e in self.pods.values() {
            match e.state {
                State::Active => c.active += 1,
                State::Backoff(_) => c.backoff += 1,
                State::Unschedulable(_) => c.unschedulable += 1,
                State::InFlight => {}
            }
        }
        c
    }

    /// When the pod first entered the queue (for the end-to-end latency metric).
    pub fn first_seen(&self, uid: &str) -> Option<Instant> {
        self.pods.get(uid).map(|e| e.first_seen)
    }

    fn activate(&mut self, uid: &str) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(e) = self.pods.get_mut(uid) {
            e.state = State::Active;
            e.seq = seq;
            self.active
                .push((e.pod.priority, Reverse(seq), uid.to_string()));
        }
    }

    /// Backoff for the n-th attempt: initial * 2^(n-1), capped.
    pub fn backoff_duration(&self, attempts: u32) -> Duration {
        let mut d = self.initial;
        for _ in 1..attempts {
            if d >= self.max {
                break;
            }
            d *= 2;
        }
        d.min(self.max)
    }

    fn requeue(&mut self, uid: &str, now: Instant) {
        let Some(e) = self.pods.get(uid) else { return };
        let expiry = e.last_attempt + self.backoff_duration(e.attempts);
        if expiry <= now {
            self.activate(uid);
        } else {
            self.seq += 1;
            let seq = self.seq;
            let e = self.pods.get_mut(uid).expect("checked");
            e.state = State::Backoff(expiry);
            e.seq = seq;
            self.backoff.push(Reverse((expiry, seq, uid.to_string())));
        }
    }

    /// A pending pod was added or updated. An unschedulable pod whose spec or labels
    /// changed gets another chance (through its backoff).
    pub fn add_or_update(&mut self, pod: Arc<PodInfo>, now: Instant) {
        let uid = pod.uid.clone();
        match self.pods.get_mut(&uid) {
            Some(e) => {
                let changed = e.pod.spec_hash != pod.spec_hash;
                let priority_changed = e.pod.priority != pod.priority;
                e.pod = pod;
                match e.state {
                    State::Unschedulable(_) if changed => self.requeue(&uid, now),
                    State::Active if priority_changed => self.activate(&uid),
                    _ => {}
                }
            }
            None => {
                self.pods.insert(
                    uid.clone(),
                    Entry {
                        pod,
                        state: State::Active,
                        attempts: 0,
                        first_seen: now,
                        last_attempt: now,
                        plugins: PluginSet::default(),
                        seq: 0,
                        popped_at_move: 0,
                    },
                );
                self.activate(&uid);
            }
        }
    }

    pub fn remove(&mut self, uid: &str) {
        self.pods.remove(uid);
    }

    /// The next pod to schedule, if any is active.
    pub fn pop(&mut self, now: Instant) -> Option<Arc<PodInfo>> {
        while let Some((_, Reverse(seq), uid)) = self.active.pop() {
            let Some(e) = self.pods.get_mut(&uid) else {
                continue;
            };
            if e.state != State::Active || e.seq != seq {
                continue;
            }
            e.state = State::InFlight;
            e.attempts += 1;
            e.last_attempt = now;
            e.popped_at_move = self.moves;
            return Some(e.pod.clone());
        }
        None
    }

    /// The pod was assumed onto a node: it leaves the queue.
    pub fn done(&mut self, uid: &str) -> Option<Instant> {
        self.pods.remove(uid).map(|e| e.first_seen)
    }

    /// The attempt failed with these plugins rejecting. If the cluster changed during the
    /// attempt the pod goes through backoff right away instead of waiting for a change.
    pub fn unschedulable(&mut self, uid: &str, plugins: PluginSet, now: Instant) {
        let moves = self.moves;
        let Some(e) = self.pods.get_mut(uid) else {
            return;
        };
        if e.state != State::InFlight {
            return;
        }
        e.plugins = plugins;
        if e.popped_at_move != moves {
            self.requeue(uid, now);
        } else {
            e.state = State::Unschedulable(now);
        }
    }

    /// A bind that failed for a transient reason: retry after backoff. The pod had left
    /// the queue when it was assumed, so it comes back with one attempt counted.
    pub fn retry_after_error(&mut self, pod: Arc<PodInfo>, first_seen: Instant, now: Instant) {
        let uid = pod.uid.clone();
        self.pods.insert(
            uid.clone(),
            Entry {
                pod,
                state: State::InFlight,
                attempts: 1,
                first_seen,
                last_attempt: now,
                plugins: PluginSet::ALL,
                seq: 0,
                popped_at_move: self.moves,
            },
        );
        self.requeue(&uid, now);
    }

    /// A cluster change that may help pods rejected by any of `plugins`.
    pub fn move_for(&mut self, plugins: PluginSet, now: Instant) {
        self.moves += 1;
        let uids: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, e)| {
                matches!(e.state, State::Unschedulable(_)) && e.plugins.intersects(plugins)
            })
            .map(|(u, _)| u.clone())
            .collect();
        for uid in uids {
            self.requeue(&uid, now);
        }
    }

    /// Move pods whose backoff expired to the active queue, and pods unschedulable for
    /// longer than `max_unschedulable` to backoff.
    pub fn flush(&mut self, now: Instant) {
        while let Some(Reverse((expiry, seq, uid))) = self.backoff.peek().cloned() {
            if expiry > now {
                break;
            }
            self.backoff.pop();
            let current = self
                .pods
                .get(&uid)
                .is_some_and(|e| e.seq == seq && e.state == State::Backoff(expiry));
            if current {
                self.activate(&uid);
            }
        }
        let due = self
            .last_unschedulable_flush
            .is_none_or(|t| now >= t + UNSCHEDULABLE_FLUSH_EVERY);
        if due {
            self.last_unschedulable_flush = Some(now);
            let max = self.max_unschedulable;
            let stale: Vec<String> = self
                .pods
                .iter()
                .filter(|(_, e)| matches!(e.state, State::Unschedulable(t) if now >= t + max))
                .map(|(u, _)| u.clone())
                .collect();
            for uid in stale {
                self.requeue(&uid, now);
            }
        }
    }

    /// Whether `pop` may return a pod (the heap can hold stale entries; `pop` skips them).
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// When `flush` may next have something to do; `None` if nothing is waiting on time.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let backoff = self.backoff.peek().map(|Reverse((t, _, _))| *t);
        let unsched = self
            .pods
            .values()
            .any(|e| matches!(e.state, State::Unschedulable(_)))
            .then(|| {
                self.last_unschedulable_flush
                    .map_or_else(Instant::now, |t| t + UNSCHEDULABLE_FLUSH_EVERY)
            });
        match (backoff, unsched) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Plugin;
    use crate::testutil::pod;

    fn q() -> Queue {
        Queue::new(
            Duration::from_secs(1),
            Duration::from_secs(10),
            Duration::from_secs(300),
        )
    }

    fn p(name: &str, prio: i32) -> Arc<PodInfo> {
        Arc::new(pod(name).priority(prio).build())
    }

    #[test]
    fn priority_then_fifo() {
        let mut q = q();
        let t = Instant::now();
        q.add_or_update(p("a", 0), t);
        q.add_or_update(p("b", 10), t);
        q.add_or_update(p("c", 0), t);
        let order: Vec<String> = std::iter::from_fn(|| q.pop(t))
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(order, vec!["b", "a", "c"]);
        assert!(q.pop(t).is_none());
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let q = q();
        let secs: Vec<u64> = (1..=6).map(|n| q.backoff_duration(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn unschedulable_waits_for_a_relevant_change_then_backs_off() {
        let mut q = q();
        let t0 = Instant::now();
        q.add_or_update(p("a", 0), t0);
        let a = q.pop(t0).unwrap();
        q.unschedulable(&a.uid, PluginSet::of(&[Plugin::NodeResourcesFit]), t0);
        assert_eq!(q.counts().unschedulable, 1);
        // No time-based retry before max_unschedulable: no busy loop.
        q.flush(t0 + Duration::from_secs(60));
        assert!(q.pop(t0 + Duration::from_secs(60)).is_none());
        // An irrelevant change does not move it.
        q.move_for(PluginSet::of(&[Plugin::TaintToleration]), t0);
        assert_eq!(q.counts().unschedulable, 1);
        // A relevant change right away: backoff (1 s after the attempt) first.
        let t1 = t0 + Duration::from_millis(200);
        q.move_for(PluginSet::of(&[Plugin::NodeResourcesFit]), t1);
        assert_eq!(q.counts().backoff, 1);
        assert!(q.pop(t1).is_none());
        assert_eq!(q.next_wakeup(), Some(t0 + Duration::from_secs(1)));
        q.flush(t0 + Duration::from_secs(1));
        let again = q.pop(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(again.uid, "a");
        // Second failure, change long after the backoff: straight to active.
        let t2 = t0 + Duration::from_secs(1);
        q.unschedulable("a", PluginSet::ALL, t2);
        q.move_for(
            PluginSet::of(&[Plugin::NodeAffinity]),
            t2 + Duration::from_secs(5),
        );
        assert!(q.pop(t2 + Duration::from_secs(5)).is_some());
    }

    #[test]
    fn stale_unschedulable_pods_are_retried_eventually() {
        let mut q = q();
        let t0 = Instant::now();
        q.add_or_update(p("a", 0), t0);
        q.pop(t0);
        q.flush(t0);
        q.unschedulable("a", PluginSet::default(), t0);
        q.flush(t0 + Duration::from_secs(301));
        assert!(q.pop(t0 + Duration::from_secs(301)).is_some());
    }

    #[test]
    fn update_of_an_unschedulable_pod_requeues_it_only_if_its_spec_changed() {
        let mut q = q();
        let t0 = Instant::now();
        q.add_or_update(p("a", 0), t0);
        q.pop(t0);
        q.unschedulable("a", PluginSet::ALL, t0);
        // A status-only update (same spec hash) changes nothing.
        q.add_or_update(p("a", 0), t0 + Duration::from_secs(2));
        assert_eq!(q.counts().unschedulable, 1);
        let changed = Arc::new(pod("a").label("x", "y").build());
        q.add_or_update(changed, t0 + Duration::from_secs(2));
        assert!(q.pop(t0 + Duration::from_secs(2)).is_some());
    }

    #[test]
    fn move_during_attempt_means_backoff_not_unschedulable() {
        let mut q = q();
        let t0 = Instant::now();
        q.add_or_update(p("a", 0), t0);
        q.pop(t0);
        q.move_for(PluginSet::ALL, t0);
        q.unschedulable("a", PluginSet::ALL, t0);
        assert_eq!(q.counts().backoff, 1);
    }

    #[test]
    fn removal_and_bind_error_retry() {
        let mut q = q();
        let t0 = Instant::now();
        q.add_or_update(p("a", 0), t0);
        q.remove("a");
        assert!(q.pop(t0).is_none() && q.is_empty());
        q.add_or_update(p("b", 0), t0);
        let b = q.pop(t0).unwrap();
        let first = q.done("b").unwrap();
        q.retry_after_error(b, first, t0);
        assert!(q.pop(t0).is_none());
        q.flush(t0 + Duration::from_secs(1));
        assert_eq!(q.pop(t0 + Duration::from_secs(1)).unwrap().uid, "b");
        assert_eq!(q.first_seen("b"), Some(t0));
    }
}
