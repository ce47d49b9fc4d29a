//! Tunables of the backends. Defaults suit a server; tests shrink them.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// How often the background compactor trims the revision log to `retain_revisions`.
    pub compaction_interval: Duration,
    /// How many revisions of history the log keeps for watches (older ones are compacted).
    /// Whatever the interval, the log is trimmed as soon as it holds a quarter more than
    /// this, so the file stays bounded under any write rate.
    pub retain_revisions: u64,
    /// How often an idle watcher is told how far it is caught up (`WatchMessage::Progress`).
    /// Zero disables the periodic messages (they can still be requested).
    pub progress_interval: Duration,
    /// Commit with fsync. Only tests that do not care about power loss should turn this off.
    pub fsync: bool,
    /// Save the allocator state at every commit (2-phase commit) so that reopening after a
    /// crash is instant instead of a full-file check. Costs one more fsync per commit.
    pub quick_repair: bool,
    /// Page cache of the storage engine, in bytes.
    pub cache_size: usize,
    /// Most requests one group commit takes (bounds the latency of a single transaction).
    pub max_batch: usize,
    /// Capacity, in committed batches, of the fan-out to watchers; a watcher whose consumer
    /// falls further behind catches up from the log instead.
    pub watch_channel_capacity: usize,
    /// At open, a file at least this large that is more than half free space (after mass
    /// deletes, say) is compacted to give the space back. Freed pages are reused in any case,
    /// so this only matters after the live data shrank. `u64::MAX` disables it.
    pub compact_file_above: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            compaction_interval: Duration::from_secs(300),
            retain_revisions: 10_000,
            progress_interval: Duration::from_secs(1),
            fsync: true,
            quick_repair: false,
            cache_size: 64 * 1024 * 1024,
            max_batch: 1024,
            watch_channel_capacity: 1024,
            compact_file_above: 64 * 1024 * 1024,
        }
    }
}

/// Tunables of the etcd backend. The type exists without the `etcd` feature too, so that
/// configuration code compiles either way.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// How long connecting may take before `connect_etcd` gives up with `Unreachable`.
    pub connect_timeout: Duration,
    /// Longest wait for one request; past it the request fails (a write may still apply).
    pub request_timeout: Duration,
    /// How often the background compactor compacts etcd to `retain_revisions` (zero: never;
    /// leave compaction to etcd's own `--auto-compaction-*` or another server).
    pub compaction_interval: Duration,
    /// How many revisions of history to keep for watches.
    pub retain_revisions: u64,
    /// How often an idle watcher is told how far it is caught up (`WatchMessage::Progress`).
    /// Zero disables the periodic messages (they can still be requested).
    pub progress_interval: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            compaction_interval: Duration::from_secs(300),
            retain_revisions: 10_000,
            progress_interval: Duration::from_secs(1),
        }
    }
}
