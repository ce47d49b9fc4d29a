//! Kubernetes object machinery with no I/O: label and field selectors, the three patch
//! kinds (JSON patch, JSON merge patch, strategic merge patch) and server-side printing
//! (the `Table` columns `kubectl get` shows), and exact resource quantities with the quota and
//! LimitRange rules built on them. Everything works on `serde_json::Value`, so the
//! same code serves built-in kinds and custom resources.

pub mod gateway;
pub mod limitrange;
pub mod patch;
pub mod printers;
pub mod protobuf;
pub mod quantity;
pub mod quota;
pub mod selectors;
