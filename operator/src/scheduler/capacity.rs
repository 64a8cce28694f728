//! Quota as the scheduler sees it: what each provider and pool holds now, what it may hold, and
//! whether a launch still fits (Nodepool's pool `max-servers`/`max-cores`/`max-ram`, provider
//! limits, the cloud's own quota and `max-concurrency`).

use std::collections::HashMap;

use nodepool_crds::{
    NodeState, PoolNode,
    provider::{ResourceLimits, ResourceUsage},
};

use super::views::{LaunchView, PoolView};

/// Usage per provider and per (provider, pool), kept current through a pass as launches are
/// planned.
#[derive(Debug, Default)]
pub struct Capacity {
    providers: HashMap<String, ResourceUsage>,
    pools: HashMap<(String, String), ResourceUsage>,
    /// Launches in flight per provider (nodes in `init` or `building`).
    launching: HashMap<String, u32>,
}

fn add(usage: &mut ResourceUsage, more: &ResourceUsage) {
    usage.servers += more.servers;
    usage.cores += more.cores;
    usage.ram += more.ram;
}

/// Whether `used + more` stays within `limits`; otherwise which limit it breaks.
pub fn within(limits: &ResourceLimits, used: &ResourceUsage, more: &ResourceUsage) -> Result<(), String> {
    let check = |name: &str, limit: Option<u64>, used: u64, more: u64| match limit {
        Some(limit) if used + more > limit => Err(format!("{name} {} of {limit}", used + more)),
        _ => Ok(()),
    };
    check("servers", limits.max_servers.map(u64::from), used.servers.into(), more.servers.into())?;
    check("cores", limits.max_cores.map(u64::from), used.cores.into(), more.cores.into())?;
    check("ram (MiB)", limits.max_ram, used.ram, more.ram)
}

impl Capacity {
    /// Every node counts against quota until its object is gone (Nodepool counts every node
    /// in ZooKeeper), whatever its state.
    pub fn from_nodes(nodes: &[std::sync::Arc<PoolNode>]) -> Self {
        let mut capacity = Self::default();
        for node in nodes {
            let footprint = super::views::footprint([node.as_ref()]);
            let provider = node.spec.provider.clone();
            add(capacity.providers.entry(provider.clone()).or_default(), &footprint);
            add(capacity.pools.entry((provider.clone(), node.spec.pool.clone())).or_default(), &footprint);
            let state = node.status.as_ref().map(|s| s.state).unwrap_or_default();
            if matches!(state, NodeState::Init | NodeState::Building) && node.spec.static_host.is_none() {
                *capacity.launching.entry(provider).or_default() += 1;
            }
        }
        capacity
    }

    /// Whether launching `launches` nodes needing `need` in `pool` fits now.
    pub fn fits(
        &self,
        pool: &PoolView,
        launch: &LaunchView,
        need: &ResourceUsage,
        launches: u32,
    ) -> Result<(), String> {
        let pool_used =
            self.pools.get(&(pool.provider.clone(), pool.pool.clone())).cloned().unwrap_or_default();
        within(&launch.pool_limits, &pool_used, need)
            .map_err(|e| format!("pool {}/{} at its limit: {e}", pool.provider, pool.pool))?;
        let provider_used = self.providers.get(&pool.provider).cloned().unwrap_or_default();
        within(&launch.provider_limits, &provider_used, need)
            .map_err(|e| format!("provider {} at its limit: {e}", pool.provider))?;
        if let Some(max) = launch.max_concurrency {
            let in_flight = self.launching.get(&pool.provider).copied().unwrap_or_default();
            if in_flight + launches > max {
                return Err(format!(
                    "provider {} has {in_flight} launches in flight (max {max})",
                    pool.provider
                ));
            }
        }
        Ok(())
    }

    /// Records launches planned in this pass.
    pub fn take(&mut self, pool: &PoolView, need: &ResourceUsage, launches: u32) {
        add(self.providers.entry(pool.provider.clone()).or_default(), need);
        add(self.pools.entry((pool.provider.clone(), pool.pool.clone())).or_default(), need);
        *self.launching.entry(pool.provider.clone()).or_default() += launches;
    }
}

/// Whether a request could ever fit the pool, even with nothing else running.
pub fn ever_fits(launch: &LaunchView, need: &ResourceUsage) -> Result<(), String> {
    let none = ResourceUsage::default();
    within(&launch.pool_limits, &none, need)
        .map_err(|e| format!("more than the pool's limits allow ({e})"))?;
    within(&launch.provider_limits, &none, need)
        .map_err(|e| format!("more than the provider's limits allow ({e})"))
}

/// The tighter of two sets of limits, field by field.
pub fn tightest(a: &ResourceLimits, b: &ResourceLimits) -> ResourceLimits {
    fn min<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    ResourceLimits {
        max_servers: min(a.max_servers, b.max_servers),
        max_cores: min(a.max_cores, b.max_cores),
        max_ram: min(a.max_ram, b.max_ram),
    }
}
