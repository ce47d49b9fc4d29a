//! The mesh: Istio's traffic resources as the node proxy applies them to HTTP requests.

pub mod authz;
pub mod config;
pub mod outlier;
pub mod peerauth;
pub mod routing;
