//! What the planner and the capacity arithmetic see of pools and nodes: the vocabulary both
//! share, below either of them.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use nodepool_crds::{
    NodeState, PoolNode, Provider, conditions,
    pool_node::NodeResources,
    provider::{Pool, ResourceLimits},
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

pub use nodepool_crds::pool_node::footprint;

/// Every pool of every Provider. `paused` says why a pool of a provider is paused, if it is.
pub fn pools(
    providers: &[std::sync::Arc<Provider>],
    paused: &dyn Fn(&str, &str) -> Option<String>,
) -> Vec<PoolView> {
    let mut pools = Vec::new();
    // A Provider being deleted takes no more work (its nodes are being torn down).
    for provider in providers.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let ready = provider
            .status
            .as_ref()
            .and_then(|s| conditions::find(&s.conditions, conditions::types::READY))
            .is_none_or(|c| c.status != "False");
        let name = provider.name_any();
        let quota = provider.status.as_ref().and_then(|s| s.quota.as_ref());
        // What the cloud's quota leaves after the account's resources that are not ours.
        let cloud_quota = quota
            .and_then(|q| q.cloud.as_ref())
            .map(|cloud| cloud.less(&quota.and_then(|q| q.unmanaged.clone()).unwrap_or_default()))
            .unwrap_or_default();
        let provider_limits = provider.spec.limits.clone().unwrap_or_default().tightest(&cloud_quota);
        // A provider whose driver this build lacks serves nothing (its status says why).
        let Ok(driver) = nodepool_drivers::of(provider) else { continue };
        for pool in &provider.spec.pools {
            let labels = driver.pool_labels(pool).into_iter().collect();
            let launch = driver.supply().launches().then(|| {
                let status =
                    provider.status.as_ref().and_then(|s| s.pools.iter().find(|p| p.name == pool.name));
                let mut view = LaunchView {
                    pool_limits: pool.limits(),
                    provider_limits: provider_limits.clone(),
                    max_concurrency: provider.spec.max_concurrency,
                    paused: paused(&name, &pool.name),
                    ..Default::default()
                };
                for label in &pool.labels {
                    let checked = status.and_then(|s| s.labels.iter().find(|l| l.name == label.name));
                    match checked {
                        Some(l) if l.launchable => {
                            view.footprints
                                .insert(label.name.clone(), l.resources.clone().unwrap_or_default());
                        }
                        Some(l) => {
                            let why = l.message.clone().unwrap_or_else(|| "cannot be launched".into());
                            view.unlaunchable.insert(label.name.clone(), why);
                        }
                        None => {
                            view.unlaunchable
                                .insert(label.name.clone(), "not checked against the cloud yet".into());
                        }
                    }
                }
                view
            });
            let scanned_hosts = scanned_hosts(driver, pool);
            pools.push(PoolView {
                provider: name.clone(),
                pool: pool.name.clone(),
                priority: pool.priority.or(provider.spec.priority).unwrap_or(100),
                labels,
                usable: ready && !provider.spec.paused,
                launch,
                scanned_hosts,
            });
        }
    }
    pools
}

/// The hosts of a slotted pool whose keys are scanned (a slot of theirs is handed out only once
/// registered, see [`PoolView::scanned_hosts`]).
fn scanned_hosts(driver: &dyn nodepool_driver::Driver, pool: &Pool) -> BTreeSet<String> {
    let hosts = driver.slot_hosts(pool).unwrap_or_default();
    hosts.into_iter().filter(|(_, host)| host.scans_keys()).map(|(name, _)| name).collect()
}

/// How many of `nodes` serve `label` and are in `state` as Zuul sees it.
pub fn count_in_state<'a>(
    nodes: impl IntoIterator<Item = &'a PoolNode>,
    label: &str,
    state: NodeState,
) -> usize {
    nodes
        .into_iter()
        .filter(|n| n.spec.labels.iter().any(|l| l == label))
        .filter(|n| n.status.as_ref().is_some_and(|s| s.current_state() == state))
        .count()
}
