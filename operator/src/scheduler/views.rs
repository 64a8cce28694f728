//! What the planner and the capacity arithmetic see of pools and nodes: the vocabulary both
//! share, below either of them.

use std::collections::{BTreeMap, BTreeSet};

use nodepool_crds::{
    PoolNode,
    pool_node::NodeResources,
    provider::{ResourceLimits, ResourceUsage},
};

/// A pool of ours, as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct PoolView {
    pub provider: String,
    pub pool: String,
    pub priority: i32,
    pub labels: BTreeSet<String>,
    /// False when the provider is paused or not Ready: the pool keeps its labels (so requests
    /// are not declined) but takes nothing new.
    pub usable: bool,
    /// How the pool launches nodes; `None` for a static pool, which never launches.
    pub launch: Option<LaunchView>,
    /// A static pool's hosts whose keys are scanned at each registration (host-key checking).
    pub scanned_hosts: BTreeSet<String>,
}

/// What a cloud pool may launch.
#[derive(Clone, Debug, Default)]
pub struct LaunchView {
    /// Footprint of one node per launchable label.
    pub footprints: BTreeMap<String, NodeResources>,
    /// Labels that cannot be launched, with why (image not resolved, unknown instance type).
    pub unlaunchable: BTreeMap<String, String>,
    pub pool_limits: ResourceLimits,
    /// The tighter of the provider's `limits` and the cloud's quota.
    pub provider_limits: ResourceLimits,
    pub max_concurrency: Option<u32>,
    /// Why the pool launches nothing for now (the cloud refused a launch for quota).
    pub paused: Option<String>,
}

/// What a set of nodes holds against quota: one server each, plus their cores and memory.
pub fn footprint<'a>(nodes: impl IntoIterator<Item = &'a PoolNode>) -> ResourceUsage {
    let mut usage = ResourceUsage::default();
    for node in nodes {
        usage.servers += 1;
        if let Some(resources) = node.status.as_ref().and_then(|s| s.resources.as_ref()) {
            usage.cores += resources.cores;
            usage.ram += resources.ram;
        }
    }
    usage
}
