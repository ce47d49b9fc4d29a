//! Counters and histograms as plain atomics, for the binary to expose through
//! prometheus-client (names follow kube-scheduler's metrics).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds of the duration histograms' buckets (+Inf is implicit).
pub const DURATION_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last one is +Inf.
    pub buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    pub sum_micros: AtomicU64,
    pub count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// scheduler_schedule_attempts_total{result="scheduled"|"unschedulable"|"error"}.
    pub attempts_scheduled: AtomicU64,
    pub attempts_unschedulable: AtomicU64,
    pub attempts_error: AtomicU64,
    /// Binds: succeeded, dropped because the pod was gone or already bound (404/409),
    /// failed otherwise (retried).
    pub binds_ok: AtomicU64,
    pub binds_dropped: AtomicU64,
    pub binds_failed: AtomicU64,
    /// Time spent in filter + score per attempt.
    pub algorithm_duration: Histogram,
    /// From a pod first entering the queue to its bind succeeding
    /// (scheduler_pod_scheduling_sli_duration_seconds).
    pub e2e_duration: Histogram,
    pub events_sent: AtomicU64,
    pub events_dropped: AtomicU64,
    pub events_failed: AtomicU64,
    pub status_updates: AtomicU64,
    pub status_update_failures: AtomicU64,
    /// Gauges: scheduler_pending_pods{queue="active"|"backoff"|"unschedulable"}.
    pub pending_active: AtomicI64,
    pub pending_backoff: AtomicI64,
    pub pending_unschedulable: AtomicI64,
    pub cache_nodes: AtomicI64,
    pub cache_pods: AtomicI64,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(100));
        assert_eq!(h.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(h.buckets[2].load(Ordering::Relaxed), 1);
        assert_eq!(h.buckets[DURATION_BUCKETS.len()].load(Ordering::Relaxed), 1);
        assert_eq!(h.count(), 3);
        assert_eq!(h.sum(), Duration::from_micros(100_003_500));
    }
}
