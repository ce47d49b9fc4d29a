//! Scheduler configuration: profiles (selected per pod by spec.schedulerName), node
//! sampling, bind concurrency, retry backoff and event buffering.

use crate::metrics::Metrics;
use crate::types::DEFAULT_SCHEDULER_NAME;
use std::sync::Arc;
use std::time::Duration;

/// How a profile chooses among feasible nodes. All profiles run the same filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKind {
    /// kube-scheduler's default profile: weighted TaintToleration, NodeAffinity,
    /// NodeResourcesFit (LeastAllocated), PodTopologySpread, InterPodAffinity and
    /// NodeResourcesBalancedAllocation scores over a sample of feasible nodes.
    Default,
    /// The feasible node with the most free cpu/memory (all nodes evaluated).
    LeastLoaded,
    /// Rotate over the feasible nodes.
    RoundRobin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Pods whose spec.schedulerName equals this are scheduled by this profile.
    pub scheduler_name: String,
    pub kind: ProfileKind,
}

impl std::str::FromStr for ProfileKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(ProfileKind::Default),
            "least-loaded" => Ok(ProfileKind::LeastLoaded),
            "round-robin" => Ok(ProfileKind::RoundRobin),
            _ => Err(format!("{s:?}: want default, least-loaded or round-robin")),
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;
    /// `<schedulerName>=<kind>`, e.g. `default-scheduler=least-loaded`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, kind) = s.split_once('=').ok_or_else(|| {
            format!("{s:?}: want <schedulerName>=<default|least-loaded|round-robin>")
        })?;
        if name.is_empty() {
            return Err(format!("{s:?}: the scheduler name is empty"));
        }
        Ok(Profile::new(name, kind.parse()?))
    }
}

impl Profile {
    pub fn new(scheduler_name: impl Into<String>, kind: ProfileKind) -> Profile {
        Profile {
            scheduler_name: scheduler_name.into(),
            kind,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Profiles by scheduler name; pods naming another scheduler are left alone.
    pub profiles: Vec<Profile>,
    /// Percentage of nodes to find feasible before scoring (kube-scheduler's
    /// percentageOfNodesToScore); 0 = adaptive (50% minus 1% per 125 nodes, at least 5%),
    /// never fewer than 100 nodes.
    pub percentage_of_nodes_to_score: u32,
    /// Bind requests in flight at once.
    pub parallel_binds: usize,
    /// PodScheduled status patches in flight at once.
    pub parallel_status_updates: usize,
    /// Backoff after a failed attempt: initial, doubling per attempt, capped.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Unschedulable pods are retried at least this often even without a cluster change.
    pub max_unschedulable_duration: Duration,
    /// Events waiting to be written; beyond this they are dropped (and counted), as
    /// client-go's event broadcaster does, so events never slow scheduling down.
    pub event_buffer: usize,
    /// Event writers in flight at once.
    pub parallel_events: usize,
    /// Events' reportingInstance.
    pub instance: String,
    pub metrics: Arc<Metrics>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            profiles: vec![Profile::new(DEFAULT_SCHEDULER_NAME, ProfileKind::Default)],
            percentage_of_nodes_to_score: 0,
            parallel_binds: 64,
            parallel_status_updates: 16,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            max_unschedulable_duration: Duration::from_secs(5 * 60),
            event_buffer: 1000,
            parallel_events: 8,
            instance: format!("{DEFAULT_SCHEDULER_NAME}-{}", std::process::id()),
            metrics: Arc::new(Metrics::default()),
        }
    }
}

impl SchedulerConfig {
    /// The profiles corral serves unless told otherwise: kube's default profile for
    /// `default-scheduler`, and the least-loaded and round-robin policies for pods whose
    /// spec.schedulerName is `corral-least-loaded` or `corral-round-robin`.
    pub fn builtin_profiles() -> Vec<Profile> {
        vec![
            Profile::new(DEFAULT_SCHEDULER_NAME, ProfileKind::Default),
            Profile::new("corral-least-loaded", ProfileKind::LeastLoaded),
            Profile::new("corral-round-robin", ProfileKind::RoundRobin),
        ]
    }

    /// The built-in profiles with `overrides` replacing those of the same name or added.
    pub fn with_profiles(mut self, overrides: &[Profile]) -> Self {
        let mut profiles = Self::builtin_profiles();
        for o in overrides {
            match profiles
                .iter_mut()
                .find(|p| p.scheduler_name == o.scheduler_name)
            {
                Some(p) => *p = o.clone(),
                None => profiles.push(o.clone()),
            }
        }
        self.profiles = profiles;
        self
    }

    pub fn profile(&self, scheduler_name: &str) -> Option<&Profile> {
        self.profiles
            .iter()
            .find(|p| p.scheduler_name == scheduler_name)
    }
}
