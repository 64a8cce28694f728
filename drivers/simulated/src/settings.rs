//! The simulated driver's settings: `spec.simulated` of a Provider, `spec.simulated` of an Image.

use kube::KubeSchema;
use nodepool_crds::{GoDuration, provider::ResourceLimits};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Simulated cloud behaviour.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimulatedProvider {
    /// Time from create to running. Default 0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_latency: Option<GoDuration>,
    /// Share of launches that fail, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("simulated.failureRate must be between 0 and 1"))]
    pub failure_rate: Option<f64>,
    /// The cloud's own quota, reported by the quota calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<ResourceLimits>,
    /// Instances the cloud has room for before it answers "insufficient capacity".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
}

/// A simulated image: any image "exists"; a fixed id is carried through to the nodes so tests can
/// see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimulatedImage {
    /// The id nodes booted from this image report. Default `simulated-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
}
