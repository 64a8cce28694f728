//! Metrics of calls to cloud APIs, recorded by the [`Throttled`](crate::Throttled) wrapper
//! every provider's cloud goes through.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::CloudError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub provider: String,
    /// The [`Cloud`](crate::Cloud) method: `create`, `get`, `delete`, `list_instances`, ...
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub provider: String,
    pub operation: &'static str,
    /// How it failed: `quota`, `capacity`, `auth`, `throttled`, `invalid` or `api`.
    pub kind: &'static str,
}

/// Calls, errors and call durations per provider and operation. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct CloudApiMetrics {
    calls: Family<CallLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<CallLabels, Histogram>,
}

impl CloudApiMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            calls: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            }),
        };
        registry.register("cloud_api_calls", "Calls made to a cloud API", metrics.calls.clone());
        registry.register(
            "cloud_api_errors",
            "Cloud API calls that failed, by how they failed",
            metrics.errors.clone(),
        );
        registry.register_with_unit(
            "cloud_api_call_duration",
            "How long cloud API calls took (not counting the wait for the provider's rate limit)",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        metrics
    }

    /// Records one finished call.
    pub fn record<T>(
        &self,
        provider: &str,
        operation: &'static str,
        seconds: f64,
        result: &Result<T, CloudError>,
    ) {
        let labels = CallLabels { provider: provider.to_owned(), operation };
        self.calls.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
        if let Err(error) = result {
            let labels = ErrorLabels { provider: provider.to_owned(), operation, kind: error.kind() };
            self.errors.get_or_create(&labels).inc();
        }
    }
}
