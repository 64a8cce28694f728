//! The GCE driver's settings blocks: `spec.gce` (project), `pools[].gce`, `pools[].labels[].gce`,
//! and an Image's `spec.gce`.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// GCE project-level settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GceProvider {
    #[schemars(length(min = 1))]
    pub project: String,
    #[schemars(length(min = 1))]
    pub region: String,
    /// Zones to launch in, tried in order.
    #[schemars(length(min = 1))]
    pub zones: Vec<String>,
    /// Endpoint override (tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// GCE pool settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcePool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnetwork: Option<String>,
    /// Give instances an external IP. Default true.
    #[serde(default = "default_true")]
    pub external_ip: bool,
}

/// GCE label settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GceLabel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Network tags (firewall targets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_tags: Vec<String>,
    /// Instance metadata, e.g. `ssh-keys`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// A GCE image: a named image, or the newest image of a family.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.image) != has(self.family)")
    .message("spec.gce takes either image or family, not both and not neither"))]
#[serde(rename_all = "camelCase")]
pub struct GceImage {
    /// Image name (or full self link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image family; the newest non-deprecated image in it is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Project that owns the image (e.g. `debian-cloud`). Defaults to the provider's project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

fn default_true() -> bool {
    true
}
