//! Quota as the scheduler sees it: what each provider and pool holds now, what it may hold, and
//! whether a launch still fits (Nodepool's pool `max-servers`/`max-cores`/`max-ram`, provider
//! limits, the cloud's own quota and `max-concurrency`); and what each tenant may still use.

use std::collections::HashMap;

use nodepool_crds::{
    NodeState, PoolNode, TenantLimit,
    pool_node::footprint,
    provider::{PoolRef, ResourceLimits, ResourceUsage},
};

use super::views::{LaunchView, PoolView};

/// Usage per provider and per (provider, pool), kept current through a pass as launches are
/// planned.
#[derive(Debug, Default)]
pub struct Capacity {
    providers: HashMap<String, ResourceUsage>,
    pools: HashMap<PoolRef, ResourceUsage>,
    /// Launches in flight per provider (nodes in `init` or `building`).
    launching: HashMap<String, u32>,
}

impl Capacity {
    /// Every node counts against quota until its object is gone (Nodepool counts every node
    /// in ZooKeeper), whatever its state.
    pub fn from_nodes(nodes: &[std::sync::Arc<PoolNode>]) -> Self {
        let mut capacity = Self::default();
        for node in nodes {
            let footprint = node.footprint();
            let provider = node.spec.provider.clone();
            capacity.providers.entry(provider.clone()).or_default().add(&footprint);
            capacity.pools.entry(PoolRef::new(&provider, &node.spec.pool)).or_default().add(&footprint);
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
            self.pools.get(&PoolRef::new(&pool.provider, &pool.pool)).cloned().unwrap_or_default();
        launch
            .pool_limits
            .admit(&pool_used, need)
            .map_err(|e| format!("pool {}/{} at its limit: {e}", pool.provider, pool.pool))?;
        let provider_used = self.providers.get(&pool.provider).cloned().unwrap_or_default();
        launch
            .provider_limits
            .admit(&provider_used, need)
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
        self.providers.entry(pool.provider.clone()).or_default().add(need);
        self.pools.entry(PoolRef::new(&pool.provider, &pool.pool)).or_default().add(need);
        *self.launching.entry(pool.provider.clone()).or_default() += launches;
    }
}

/// Whether a request could ever fit the pool, even with nothing else running.
pub fn ever_fits(launch: &LaunchView, need: &ResourceUsage) -> Result<(), String> {
    let none = ResourceUsage::default();
    launch.pool_limits.admit(&none, need).map_err(|e| format!("more than the pool's limits allow ({e})"))?;
    launch
        .provider_limits
        .admit(&none, need)
        .map_err(|e| format!("more than the provider's limits allow ({e})"))
}

/// What one tenant may use and uses, as the scheduler tracks it through a pass.
#[derive(Clone, Debug)]
pub struct TenantBudget {
    pub tenant: String,
    pub limits: ResourceLimits,
    pub used: ResourceUsage,
}

impl TenantBudget {
    /// Whether `more` still fits.
    pub fn fits(&self, more: &ResourceUsage) -> bool {
        self.limits.admit(&self.used, more).is_ok()
    }
}

/// Every tenant's limits with what its nodes hold now (any provider, any state but static slots
/// Zuul has given back, which are on their way to the next request).
pub fn tenant_budgets(
    limits: &[std::sync::Arc<TenantLimit>],
    nodes: &[std::sync::Arc<PoolNode>],
) -> Vec<TenantBudget> {
    limits
        .iter()
        .map(|limit| {
            let tenant = limit.spec.tenant.clone();
            let held = nodes.iter().map(|n| n.as_ref()).filter(|n| {
                n.status.as_ref().and_then(|s| s.tenant.as_deref()) == Some(tenant.as_str())
                    && n.status.as_ref().is_none_or(|s| s.state != NodeState::Deleted)
                    && !n.is_back_from_use()
            });
            TenantBudget { used: footprint(held), limits: limit.spec.limits.clone(), tenant }
        })
        .collect()
}
