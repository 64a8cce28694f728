//! Metrics every binary with controllers records the same way.

use std::{future::Future, sync::Arc, time::Instant};

use futures::future::BoxFuture;
use kube::runtime::controller::Action;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

/// `reconcile_duration_seconds` and `reconcile_errors_total` per controller. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    duration: Family<ControllerLabels, Histogram>,
    errors: Family<ControllerLabels, Counter>,
}

impl ReconcileMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            }),
            errors: Family::default(),
        };
        registry.register_with_unit(
            "reconcile_duration",
            "How long one reconcile (or one scheduling pass) took, per controller",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles (or scheduling decisions) that failed, per controller",
            metrics.errors.clone(),
        );
        metrics
    }

    /// Records one reconcile.
    pub fn record(&self, controller: &'static str, took: std::time::Duration, failed: bool) {
        let labels = ControllerLabels { controller };
        self.duration.get_or_create(&labels).observe(took.as_secs_f64());
        if failed {
            self.errors.get_or_create(&labels).inc();
        }
    }

    /// Counts failures that are not whole reconciles (e.g. decisions of a scheduling pass).
    pub fn errors(&self, controller: &'static str, count: u64) {
        self.errors.get_or_create(&ControllerLabels { controller }).inc_by(count);
    }

    /// Wraps a reconcile function so every call is timed and its failures counted.
    pub fn instrument<K, C, E, F, Fut>(
        &self,
        controller: &'static str,
        reconcile: F,
    ) -> impl FnMut(Arc<K>, Arc<C>) -> BoxFuture<'static, Result<Action, E>> + use<K, C, E, F, Fut>
    where
        F: Fn(Arc<K>, Arc<C>) -> Fut,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
    {
        let metrics = self.clone();
        move |object, context| {
            let metrics = metrics.clone();
            let started = Instant::now();
            let reconciling = reconcile(object, context);
            Box::pin(async move {
                let result = reconciling.await;
                metrics.record(controller, started.elapsed(), result.is_err());
                result
            })
        }
    }
}
