//! Runs containers: namespaces, cgroups, rootfs, pod networking, a per-container shim.
//!
//! The node agent drives a [`Runtime`]: one network namespace per pod ([`Runtime::create_sandbox`]),
//! containers started through a detached shim process each ([`Runtime::start_container`]) so
//! that they outlive the agent, and everything recorded under `state_dir` so that a restarted
//! agent adopts what is running ([`Runtime::list_containers`]). Without root the same API runs
//! containers as plain host processes; [`Runtime::capabilities`] says which mode is in force.

mod cgroup;
mod cri_log;
mod error;
mod exec;
mod init;
pub mod local_address;
mod netlink;
mod network;
pub mod node_routes;
mod runtime;
pub mod shim;
mod spec;
mod state;
mod sys;

pub use cgroup::{CgroupVersion, ContainerStats};
pub use error::{Error, Result};
pub use exec::{ExecExit, ExecProcess};
pub use init::DEFAULT_CAPS;
pub use network::{delete_bridge, host_veth_name};
pub use runtime::{Attach, Capabilities, ContainerInfo, Runtime, RuntimeConfig};
pub use spec::{ContainerSpec, Mount, PodNetwork, Resources, Rootfs, Sandbox, SandboxSpec};
pub use state::{ContainerState, ExitReason};
