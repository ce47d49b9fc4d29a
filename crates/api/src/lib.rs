//! corral's Kubernetes-compatible REST API: discovery, OpenAPI, generic handlers for
//! built-in kinds and CRDs, patches, server-side apply, watch, tables and validation, over a
//! `corral_store::Store`. It knows nothing of pods running: other parts are its clients.

pub mod admission;
pub mod alloc;
pub mod apply;
pub mod body;
pub mod builtin;
pub mod convert;
pub mod crd;
pub mod defaults;
pub mod discovery;
pub mod error;
pub mod event_cache;
pub mod fieldpath;
pub mod filter;
pub mod gateway_crds;
pub mod handlers;
pub mod managed;
pub mod mesh_crds;
pub mod metrics;
pub mod namespaces;
pub mod objects;
pub mod openapi;
pub mod patching;
pub mod proxy;
pub mod registry;
pub mod request;
pub mod server;
pub mod storage;
pub mod table;
pub mod validation;
pub mod watch;

pub use alloc::Ranges;
pub use server::{router, Config, Identity, Shared, State};

/// Bring the API up on a store: built-in namespaces, CRDs served, background loops
/// started. Returns the shared state; `router(state)` serves it.
pub async fn start(
    store: corral_store::Store,
    config: Config,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Shared, error::ApiError> {
    let st = State::new(store, config);
    namespaces::bootstrap(&st).await?;
    mesh_crds::install(&st).await?;
    gateway_crds::install(&st).await?;
    tokio::spawn(crd::run_sync(st.clone(), stop.clone()));
    tokio::spawn(namespaces::run_finalizer(st.clone(), stop));
    st.set_ready();
    Ok(st)
}
