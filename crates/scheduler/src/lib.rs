//! The scheduler: binds pods without a node to the node that fits best (filter -> score ->
//! bind), as kube-scheduler does, as a client of the Kubernetes API only.
//!
//! `run` lists and watches Nodes, Pods and Namespaces, keeps a cache of what each node has
//! bound or assumed, and schedules queued pods on a dedicated thread; binds, status
//! patches and events are written concurrently from the tokio runtime. Everything is
//! rebuilt from list + watch on start, so it is restart-safe.

pub mod algorithm;
pub mod cache;
pub mod config;
pub mod framework;
mod io;
pub mod metrics;
pub mod plugins;
pub mod queue;
pub mod resources;
mod run;
pub mod selectors;
pub mod types;

#[cfg(test)]
mod testutil;

pub use config::{Profile, ProfileKind, SchedulerConfig};
pub use metrics::Metrics;
pub use run::{run, Error};
pub use types::DEFAULT_SCHEDULER_NAME;
