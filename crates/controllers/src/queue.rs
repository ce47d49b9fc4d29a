//! The work queue between informers and reconcilers, with client-go's semantics: a key
//! queued many times is reconciled once; a key is never reconciled by two workers at once
//! (a key added while it is being reconciled runs again afterwards); failures retry with a
//! per-key exponential backoff; a reconciler can ask to run again after a delay.

use crate::informer::Key;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    queue: VecDeque<Key>,
    /// Keys waiting in `queue` or to be re-queued when their reconcile ends.
    dirty: HashSet<Key>,
    processing: HashSet<Key>,
    failures: HashMap<Key, u32>,
    shutting_down: bool,
}

#[derive(Clone)]
pub struct Queue {
    name: &'static str,
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
}

/// What a reconcile asks for next.
pub type Outcome = Result<Option<Duration>, crate::Error>;

const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Queue {
    pub fn new(name: &'static str) -> Queue {
        Queue {
            name,
            state: Default::default(),
            notify: Arc::new(Notify::new()),
        }
    }

    pub fn add(&self, key: Key) {
        let mut st = self.state.lock().unwrap();
        if st.shutting_down || !st.dirty.insert(key.clone()) {
            return;
        }
        if !st.processing.contains(&key) {
            st.queue.push_back(key);
            drop(st);
            self.notify.notify_one();
        }
    }

    pub fn add_after(&self, key: Key, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    async fn next(&self) -> Option<Key> {
        loop {
            let notified = self.notify.notified();
            {
                let mut st = self.state.lock().unwrap();
                if st.shutting_down {
                    return None;
                }
                if let Some(key) = st.queue.pop_front() {
                    st.dirty.remove(&key);
                    st.processing.insert(key.clone());
                    if !st.queue.is_empty() {
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    fn done(&self, key: &Key) {
        let mut st = self.state.lock().unwrap();
        st.processing.remove(key);
        if st.dirty.contains(key) {
            st.queue.push_back(key.clone());
            drop(st);
            self.notify.notify_one();
        }
    }

    fn record(&self, key: &Key, outcome: &Outcome) -> Option<Duration> {
        let mut st = self.state.lock().unwrap();
        match outcome {
            Ok(after) => {
                st.failures.remove(key);
                *after
            }
            Err(_) => {
                let n = st.failures.entry(key.clone()).or_insert(0);
                *n = (*n + 1).min(20);
                Some(
                    BACKOFF_BASE
                        .saturating_mul(1 << (*n - 1).min(16))
                        .min(BACKOFF_MAX),
                )
            }
        }
    }

    pub fn shutdown(&self) {
        self.state.lock().unwrap().shutting_down = true;
        self.notify.notify_waiters();
    }

    /// Runs `workers` concurrent reconcile loops until `shutdown` is called.
    pub async fn run<F, Fut>(self, workers: usize, reconcile: F)
    where
        F: Fn(Key) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let q = self.clone();
            let reconcile = reconcile.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(key) = q.next().await {
                    let outcome = reconcile(key.clone()).await;
                    if let Err(e) = &outcome {
                        tracing::debug!(controller = q.name, key = %key, error = %e, "reconcile failed; will retry");
                    }
                    let again = q.record(&key, &outcome);
                    q.done(&key);
                    if let Some(d) = again {
                        q.add_after(key, d);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_key_added_many_times_runs_once_and_never_concurrently() {
        let q = Queue::new("test");
        let runs = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        for _ in 0..10 {
            q.add(Key::new("ns", "a"));
        }
        let (r, c) = (runs.clone(), running.clone());
        let worker = tokio::spawn(q.clone().run(4, move |_k| {
            let (r, c) = (r.clone(), c.clone());
            async move {
                assert_eq!(c.fetch_add(1, Ordering::SeqCst), 0, "concurrent reconcile");
                tokio::time::sleep(Duration::from_millis(20)).await;
                r.fetch_add(1, Ordering::SeqCst);
                c.fetch_sub(1, Ordering::SeqCst);
                Ok(None)
            }
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Added while processing: must run exactly once more afterwards.
        q.add(Key::new("ns", "a"));
        q.add(Key::new("ns", "a"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        q.shutdown();
        worker.await.unwrap();
    }

    #[tokio::test]
    async fn failures_retry_with_backoff() {
        let q = Queue::new("test");
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        q.add(Key::new("", "x"));
        let worker = tokio::spawn(q.clone().run(1, move |_k| {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(crate::Error::Other("boom".into()))
                } else {
                    Ok(None)
                }
            }
        }));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "two failures, then success");
        q.shutdown();
        worker.await.unwrap();
    }
}
