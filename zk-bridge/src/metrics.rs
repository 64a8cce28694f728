//! The bridge's Prometheus metrics (all documented in `docs/metrics.md`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

pub use nodepool_service::metrics::ReconcileMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    /// `request` or `node`.
    kind: &'static str,
}

/// What the bridge wrote to a request (the `state` label of `bridge_request_outcomes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Fulfilled,
    /// Declined by our pools; other launchers may still serve it.
    Declined,
    /// Declined by every launcher.
    Failed,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Fulfilled => "fulfilled",
            Outcome::Declined => "declined",
            Outcome::Failed => "failed",
        }
    }
}

/// Every metric the bridge records. Cheap to clone (the series are shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub reconciles: ReconcileMetrics,
    zookeeper_connected: Gauge,
    zookeeper_sessions: Counter,
    request_mirror_lag: Histogram,
    fulfilment: Histogram,
    outcomes: Family<StateLabels, Counter>,
    malformed: Family<KindLabels, Counter>,
    orphans_removed: Family<ReasonLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Latency buckets for the request paths, from a few milliseconds to minutes (cloud launches).
fn latency_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

impl Metrics {
    /// Creates the metrics and registers them (names prefixed `nodepool_`).
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("nodepool");
        let metrics = Metrics {
            reconciles: ReconcileMetrics::register(registry),
            zookeeper_connected: Gauge::default(),
            zookeeper_sessions: Counter::default(),
            request_mirror_lag: latency_buckets(),
            fulfilment: latency_buckets(),
            outcomes: Family::default(),
            malformed: Family::default(),
            orphans_removed: Family::default(),
        };
        registry.register(
            "zookeeper_connected",
            "1 while the bridge has a connected ZooKeeper session, else 0",
            metrics.zookeeper_connected.clone(),
        );
        registry.register(
            "zookeeper_sessions",
            "ZooKeeper sessions established (each one starts with a full resync)",
            metrics.zookeeper_sessions.clone(),
        );
        registry.register_with_unit(
            "bridge_request_mirror_lag",
            "Time from Zuul creating a request to its NodeRequest being written",
            Unit::Seconds,
            metrics.request_mirror_lag.clone(),
        );
        registry.register_with_unit(
            "request_fulfilment_duration",
            "Time from Zuul creating a request to the bridge writing it fulfilled",
            Unit::Seconds,
            metrics.fulfilment.clone(),
        );
        registry.register(
            "bridge_request_outcomes",
            "Request states written back to ZooKeeper: pending, fulfilled, declined, failed",
            metrics.outcomes.clone(),
        );
        registry.register(
            "bridge_malformed_znodes",
            "Request or node znodes the bridge could not read",
            metrics.malformed.clone(),
        );
        registry.register(
            "bridge_orphan_znodes_removed",
            "Node znodes of ours that no PoolNode owned, removed by the cleanup, by reason",
            metrics.orphans_removed.clone(),
        );
        metrics
    }

    pub fn zookeeper_connected(&self, connected: bool) {
        self.zookeeper_connected.set(i64::from(connected));
    }

    pub fn session_started(&self) {
        self.zookeeper_sessions.inc();
        self.zookeeper_connected(true);
    }

    /// A request mirrored into a new NodeRequest, `created_time` being Zuul's.
    pub fn request_mirrored(&self, created_time: Option<f64>) {
        if let Some(age) = age(created_time) {
            self.request_mirror_lag.observe(age);
        }
    }

    /// An outcome written to ZooKeeper.
    pub fn outcome(&self, outcome: Outcome, created_time: Option<f64>) {
        self.outcomes.get_or_create(&StateLabels { state: outcome.as_str() }).inc();
        if outcome == Outcome::Fulfilled
            && let Some(age) = age(created_time)
        {
            self.fulfilment.observe(age);
        }
    }

    /// An orphan node znode removed (see `orphans::OrphanReason`).
    pub fn orphan_removed(&self, reason: &'static str) {
        self.orphans_removed.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn malformed(&self, kind: &'static str) {
        self.malformed.get_or_create(&KindLabels { kind }).inc();
    }
}

/// Seconds since a Zuul timestamp (clamped at 0: Zuul's clock may be ahead of ours).
pub fn age(created_time: Option<f64>) -> Option<f64> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
    created_time.map(|created| (now - created).max(0.0))
}

/// [`age`] in whole milliseconds, as the bridge's log lines carry it (`age_ms`).
pub fn age_ms(created_time: Option<f64>) -> Option<u64> {
    age(created_time).map(|age| (age * 1000.0).round() as u64)
}
