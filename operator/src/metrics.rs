//! The operator's Prometheus metrics (all documented in `docs/metrics.md`).
//!
//! Counters and histograms are recorded where things happen (reconciles, launches, leak
//! passes, cloud calls). Gauges of what exists (nodes, requests, quota) are read from the
//! controllers' caches at scrape time by [`StateCollector`], so they are never stale and never
//! keep series for things that are gone.

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use kube::{ResourceExt, runtime::reflector::Store};
use nodepool_crds::{NodeRequest, NodeRequestState, NodeState, PoolNode, Provider, provider::ResourceLimits};
use nodepool_driver::{CloudApiMetrics, create::LaunchResult};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{TypedMetric, counter::Counter, family::Family, gauge::ConstGauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use nodepool_service::metrics::ReconcileMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaunchLabels {
    provider: String,
    pool: String,
    label: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderResultLabels {
    provider: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeakLabels {
    provider: String,
    /// `instance` or `volume`.
    kind: String,
}

/// Every metric the operator records. Shared by the controllers through the [`Context`].
#[derive(Debug)]
pub struct Metrics {
    pub cloud_api: CloudApiMetrics,
    pub reconciles: ReconcileMetrics,
    launches: Family<LaunchLabels, Counter>,
    launch_duration: Family<ProviderResultLabels, Histogram>,
    leaked_removed: Family<LeakLabels, Counter>,
    state: Arc<OnceLock<Caches>>,
}

impl Metrics {
    /// Creates the metrics and registers them (names prefixed `nodepool_`).
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let registry = registry.sub_registry_with_prefix("nodepool");
        let metrics = Metrics {
            cloud_api: CloudApiMetrics::register(registry),
            reconciles: ReconcileMetrics::register(registry),
            launches: Family::default(),
            launch_duration: Family::new_with_constructor(|| {
                Histogram::new([1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0])
            }),
            leaked_removed: Family::default(),
            state: Arc::default(),
        };
        registry.register(
            "launches",
            "Finished launches of cloud nodes by result (Nodepool's nodepool.launch.<result>)",
            metrics.launches.clone(),
        );
        registry.register_with_unit(
            "launch_duration",
            "Time from a launch's start to its result, all attempts included",
            Unit::Seconds,
            metrics.launch_duration.clone(),
        );
        registry.register(
            "leaked_resources_removed",
            "Instances and volumes deleted because no node owned them",
            metrics.leaked_removed.clone(),
        );
        registry.register_collector(Box::new(StateCollector { caches: metrics.state.clone() }));
        Arc::new(metrics)
    }

    /// Gives the state gauges the caches to read (once they exist).
    pub fn observe(&self, caches: Caches) {
        let _ = self.state.set(caches);
    }

    pub fn launched(&self, node: &PoolNode, result: LaunchResult, took: Duration) {
        let provider = node.spec.provider.clone();
        let labels = LaunchLabels {
            provider: provider.clone(),
            pool: node.spec.pool.clone(),
            label: node.spec.labels.first().cloned().unwrap_or_default(),
            result: result.as_str(),
        };
        self.launches.get_or_create(&labels).inc();
        let labels = ProviderResultLabels { provider, result: result.as_str() };
        self.launch_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// A leak pass ran for `provider`: its `instance` series exists from now on (at zero until
    /// something leaks), so dashboards and alerts see the provider before its first leak.
    pub fn leak_pass(&self, provider: &str) {
        let labels = LeakLabels {
            provider: provider.to_owned(),
            kind: nodepool_driver::ResourceKind::Instance.to_string(),
        };
        let _ = self.leaked_removed.get_or_create(&labels);
    }

    pub fn leak_removed(&self, provider: &str, kind: nodepool_driver::ResourceKind) {
        let labels = LeakLabels { provider: provider.to_owned(), kind: kind.to_string() };
        self.leaked_removed.get_or_create(&labels).inc();
    }
}

/// The caches the state gauges are computed from.
#[derive(Clone)]
pub struct Caches {
    pub providers: Store<Provider>,
    pub nodes: Store<PoolNode>,
    pub requests: Store<NodeRequest>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Caches")
    }
}

#[derive(Debug)]
struct StateCollector {
    caches: Arc<OnceLock<Caches>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct PoolStateLabels {
    provider: String,
    pool: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct LabelStateLabels {
    label: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct QuotaLabels {
    provider: String,
    /// `servers`, `cores`, `memory_bytes`, or another resource's key (a Service Quotas code).
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct LimitLabels {
    provider: String,
    resource: String,
    /// `provider` (the Provider's own limits) or `cloud` (the account's quota).
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct PoolLabels {
    provider: String,
    pool: String,
}

const MIB: u64 = 1024 * 1024;

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(caches) = self.caches.get() else { return Ok(()) };
        let providers = caches.providers.state();
        // Every state of every configured pool and label is exposed, at zero when empty (as
        // Nodepool's statistics do), so a state that empties shows 0 rather than vanishing.
        let mut by_pool = BTreeMap::<PoolStateLabels, i64>::new();
        let mut by_label = BTreeMap::<LabelStateLabels, i64>::new();
        for provider in &providers {
            let Ok(driver) = nodepool_drivers::of(provider) else { continue };
            for pool in &provider.spec.pools {
                let labels = driver.pool_labels(pool);
                for state in NodeState::ALL.map(NodeState::as_str) {
                    let labels =
                        PoolStateLabels { provider: provider.name_any(), pool: pool.name.clone(), state };
                    by_pool.insert(labels, 0);
                }
                for label in labels {
                    for state in NodeState::ALL.map(NodeState::as_str) {
                        by_label.insert(LabelStateLabels { label: label.clone(), state }, 0);
                    }
                }
            }
        }
        for node in caches.nodes.state() {
            let state = node.status.as_ref().map(|s| s.current_state()).unwrap_or_default().as_str();
            let pool =
                PoolStateLabels { provider: node.spec.provider.clone(), pool: node.spec.pool.clone(), state };
            *by_pool.entry(pool).or_default() += 1;
            for label in &node.spec.labels {
                *by_label.entry(LabelStateLabels { label: label.clone(), state }).or_default() += 1;
            }
        }
        gauges(&mut encoder, "nodes", "Nodes by provider, pool and state", by_pool)?;
        gauges(
            &mut encoder,
            "label_nodes",
            "Nodes by label and state (a static node counts for each of its labels)",
            by_label,
        )?;

        let mut requests: BTreeMap<StateLabels, i64> =
            NodeRequestState::ALL.into_iter().map(|s| (StateLabels { state: s.as_str() }, 0)).collect();
        for request in caches.requests.state() {
            let state = request.status.as_ref().map(|s| s.state).unwrap_or_default().as_str();
            *requests.entry(StateLabels { state }).or_default() += 1;
        }
        gauges(&mut encoder, "requests", "Node requests by state", requests)?;

        let mut used = BTreeMap::new();
        let mut limits = BTreeMap::new();
        let mut ready = BTreeMap::new();
        let mut paused = BTreeMap::new();
        for provider in &providers {
            let name = provider.name_any();
            let status = provider.status.clone().unwrap_or_default();
            let is_ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            ready.insert(ProviderLabels { provider: name.clone() }, i64::from(is_ready));
            for pool in &status.pools {
                paused.insert(
                    PoolLabels { provider: name.clone(), pool: pool.name.clone() },
                    i64::from(pool.paused),
                );
            }
            let Some(quota) = status.quota else { continue };
            let resource =
                |resource: &str| QuotaLabels { provider: name.clone(), resource: resource.to_owned() };
            used.insert(resource("servers"), i64::from(quota.used.servers));
            used.insert(resource("cores"), i64::from(quota.used.cores));
            used.insert(resource("memory_bytes"), (quota.used.ram * MIB) as i64);
            for (key, amount) in &quota.used.other {
                used.insert(resource(key), *amount as i64);
            }
            for (source, limit) in [("provider", &quota.limits), ("cloud", &quota.cloud)] {
                let Some(limit) = limit else { continue };
                insert_limits(&mut limits, &name, source, limit);
            }
        }
        gauges(&mut encoder, "provider_quota_used", "Resources a provider's nodes use", used)?;
        gauges(
            &mut encoder,
            "provider_quota_limit",
            "A provider's limits (source=provider) and its cloud account's quota (source=cloud); unlimited resources have no series",
            limits,
        )?;
        gauges(&mut encoder, "provider_ready", "1 if the provider's Ready condition is True", ready)?;
        gauges(
            &mut encoder,
            "pool_paused",
            "1 while a pool is paused (at quota or out of capacity)",
            paused,
        )?;
        Ok(())
    }
}

fn insert_limits(
    limits: &mut BTreeMap<LimitLabels, i64>,
    provider: &str,
    source: &'static str,
    limit: &ResourceLimits,
) {
    let mut add = |resource: &str, value: Option<u64>| {
        if let Some(value) = value {
            let labels = LimitLabels { provider: provider.to_owned(), resource: resource.to_owned(), source };
            limits.insert(labels, value as i64);
        }
    };
    add("servers", limit.max_servers.map(u64::from));
    add("cores", limit.max_cores.map(u64::from));
    add("memory_bytes", limit.max_ram.map(|mib| mib * MIB));
    for (key, max) in &limit.max_resources {
        add(key, Some(*max));
    }
}

/// Writes one gauge family with a series per entry.
fn gauges<L: EncodeLabelSet + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: BTreeMap<L, i64>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, ConstGauge::<i64>::TYPE)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}
