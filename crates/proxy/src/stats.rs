//! Counters the proxy keeps for its own metrics endpoint; atomics, so the data path never
//! takes a lock to count.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Stats {
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub connections_refused: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub datagrams: AtomicU64,
}

impl Stats {
    pub fn opened(&self) {
        self.connections_opened.fetch_add(1, Relaxed);
    }

    pub fn refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// A connection ended after `sent` bytes went to the endpoint and `received` came back.
    pub fn closed(&self, sent: u64, received: u64) {
        self.connections_closed.fetch_add(1, Relaxed);
        self.bytes_sent.fetch_add(sent, Relaxed);
        self.bytes_received.fetch_add(received, Relaxed);
    }

    pub fn active(&self) -> u64 {
        self.connections_opened
            .load(Relaxed)
            .saturating_sub(self.connections_closed.load(Relaxed))
    }
}
