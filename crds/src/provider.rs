//! `Provider`: a cloud account or a set of static hosts, with pools, limits and credentials.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::quota::{ResourceLimits, ResourceUsage};
use crate::{
    common::{GoDuration, SecretKeyRef, free_form_object},
    driver_blocks::DriverBlocks,
    quota::NodeResources,
};

/// What a site wants from one cloud account or one set of static hosts.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "nodepool.dev",
    version = "v1alpha1",
    kind = "Provider",
    namespaced,
    status = "ProviderStatus",
    shortname = "npp",
    category = "nodepool",
    printcolumn(name = "Driver", type_ = "string", json_path = ".spec.driver"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodes.total"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    /// Which driver provides the nodes (see docs/drivers.md for the list). Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.driver cannot be changed; create a new Provider"))]
    pub driver: DriverName,

    /// The pools nodes are launched in. Names must be unique.
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(min = 1, max = 64))]
    pub pools: Vec<Pool>,

    /// Secret holding the cloud credentials. Credentials are never written inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,

    /// Launch attempts per node before it fails (Nodepool's `launch-retries`). Default 3.
    #[serde(default = "default_launch_retries")]
    #[schemars(range(min = 1, max = 100))]
    pub launch_retries: u32,

    /// How long one attempt may take to reach running and, with host-key checking, answer SSH
    /// (Nodepool's `boot-timeout`). Default 60s.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout: GoDuration,

    /// How long a whole launch may take, including SSH and host-key scanning. Default 1h.
    #[serde(default = "default_launch_timeout")]
    pub launch_timeout: GoDuration,

    /// Cloud API rate limit shared by every pool of this provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,

    /// Launches in flight at once for the whole provider (Nodepool's `max-concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrency: Option<u32>,

    /// Limits over the whole provider, on top of each pool's limits and the cloud's own quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceLimits>,

    /// Default priority of this provider's pools; lower is preferred. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,

    /// Stop taking new requests (existing nodes keep being managed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,

    /// The driver's own provider settings, in a block named after it (`aws: {region: ...}`).
    #[serde(flatten)]
    pub driver_settings: DriverBlocks,
}

impl ProviderSpec {
    /// A provider of `driver` with these pools and every other setting at its default.
    pub fn new(driver: &str, pools: Vec<Pool>) -> Self {
        Self {
            driver: driver.into(),
            pools,
            credentials_secret_ref: None,
            launch_retries: default_launch_retries(),
            boot_timeout: default_boot_timeout(),
            launch_timeout: default_launch_timeout(),
            rate_limit: None,
            max_concurrency: None,
            limits: None,
            priority: None,
            paused: false,
            driver_settings: DriverBlocks::default(),
        }
    }
}

fn default_launch_retries() -> u32 {
    3
}
fn default_boot_timeout() -> GoDuration {
    GoDuration::from_secs(60)
}
fn default_launch_timeout() -> GoDuration {
    GoDuration::from_secs(3600)
}

/// The name of the driver behind a provider, e.g. `aws`. The apiserver accepts only the names of
/// the drivers this build registers (`drivers/registry`); code looks the driver up by name there.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct DriverName(pub String);

impl DriverName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DriverName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for DriverName {
    fn from(name: &str) -> Self {
        Self(name.to_owned())
    }
}

/// One pool of one provider, by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolRef {
    pub provider: String,
    pub pool: String,
}

impl PoolRef {
    pub fn new(provider: &str, pool: &str) -> Self {
        Self { provider: provider.to_owned(), pool: pool.to_owned() }
    }
}

impl std::fmt::Display for PoolRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider, self.pool)
    }
}

/// A token bucket for calls to the cloud API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained calls per second.
    #[x_kube(validation = Rule::new("self > 0.0").message("rateLimit.requestsPerSecond must be positive"))]
    pub requests_per_second: f64,
    /// Calls allowed in a burst above the sustained rate. Default 1.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1))]
    pub burst: u32,
}

fn default_burst() -> u32 {
    1
}

/// A group of nodes sharing network settings and limits (Nodepool's provider pool).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// Unique within the provider; a DNS label.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,

    /// Labels this pool launches, with how to launch each. Static pools take their labels from
    /// their hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 256))]
    pub labels: Vec<PoolLabel>,

    /// Servers at once in this pool (Nodepool's `max-servers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_servers: Option<u32>,
    /// vCPUs at once in this pool (Nodepool's `max-cores`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cores: Option<u32>,
    /// Memory at once in this pool, MiB (Nodepool's `max-ram`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ram: Option<u64>,
    /// Other resources at once in this pool, by key (Nodepool's `max-resources`; on AWS a
    /// Service Quotas code such as `L-1216C47A`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_resources: crate::quota::OtherResources,

    /// Pool priority; lower is preferred. Defaults to the provider's, else 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,

    /// Attributes copied to every node of the pool, e.g. `executor-zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub node_attributes: Option<BTreeMap<String, serde_json::Value>>,

    /// Scan host keys and check SSH before a node is handed out. Default true.
    #[serde(default = "default_true")]
    pub host_key_checking: bool,

    /// The driver's own pool settings (`aws: {subnetId: ...}`, a static pool's `hosts`).
    #[serde(flatten)]
    pub driver_settings: DriverBlocks,
}

fn default_true() -> bool {
    true
}

impl Pool {
    /// The pool's own limits (`maxServers`, `maxCores`, `maxRam`, `maxResources`).
    pub fn limits(&self) -> ResourceLimits {
        ResourceLimits {
            max_servers: self.max_servers,
            max_cores: self.max_cores,
            max_ram: self.max_ram,
            max_resources: self.max_resources.clone(),
        }
    }

    /// A pool with this name and every setting at its default.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            labels: Vec::new(),
            max_servers: None,
            max_cores: None,
            max_ram: None,
            max_resources: Default::default(),
            priority: None,
            node_attributes: None,
            host_key_checking: default_true(),
            driver_settings: DriverBlocks::default(),
        }
    }
}

impl PoolLabel {
    /// A pool label with this name and every setting at its default.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: None,
            instance_type: None,
            volume_size_gb: None,
            volume_type: None,
            spot: false,
            tags: BTreeMap::new(),
            dynamic_tags: BTreeMap::new(),
            user_data: None,
            reuse: false,
            max_uses: None,
            max_age: None,
            driver_settings: DriverBlocks::default(),
        }
    }

    /// Whether a node of this label that has served `uses` jobs and is `age` old goes back to
    /// service after its use.
    pub fn reuses(&self, uses: u32, age: std::time::Duration) -> bool {
        self.reuse && self.max_uses.is_none_or(|max| uses < max) && self.max_age.is_none_or(|max| age < max.0)
    }
}

/// One label a cloud pool serves and how to launch it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolLabel {
    /// The Label's name, as Zuul jobs ask for it.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Name of the `Image` to boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Instance type (AWS), machine type (GCE) or flavor (simulated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Root volume size in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub volume_size_gb: Option<u32>,
    /// Root volume type (`gp3`, `pd-balanced`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    /// Run on spot/preemptible capacity, falling back to on-demand where the driver supports it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spot: bool,
    /// Cloud tags (AWS) or labels (GCE) added to every instance of this label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Tags whose values are formatted from the request, e.g. `{request.tenant_name}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dynamic_tags: BTreeMap<String, String>,
    /// User data / startup script passed to the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Return a node Zuul has used to service, under a new ZooKeeper id, instead of deleting it
    /// (Zuul launcher's `reuse`), until `maxUses` or `maxAge`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reuse: bool,
    /// With `reuse`: jobs a node serves before it is deleted. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_uses: Option<u32>,
    /// With `reuse`: a node older than this (since it was created) is deleted after its use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<GoDuration>,
    /// The driver's own label settings (`aws: {keyName: ...}`).
    #[serde(flatten)]
    pub driver_settings: DriverBlocks,
}

/// What is true of a provider now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` says whether the provider can launch, with a reason when it cannot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Node counts by state. Refreshed at most every 5 s: on a busy provider they change many
    /// times a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeCounts>,
    /// Resources used by this provider's nodes (refreshed with the node counts), and the limits
    /// in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaStatus>,
    /// Per pool: whether it takes new launches, and what each of its labels costs and boots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolStatus>,
}

/// What is true of one pool now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub name: String,
    /// The cloud refused a launch for quota or capacity; the pool launches nothing new until
    /// a node of the provider goes away or a short while has passed (Nodepool's paused handler).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_reason: Option<String>,
    /// The labels the pool launches, each with its footprint and image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<PoolLabelStatus>,
}

/// Whether a cloud pool can launch one label, and what a node of it holds against quota.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolLabelStatus {
    pub name: String,
    /// False when the label cannot be launched (image not resolved, unknown instance type);
    /// requests for it are declined with `message`.
    pub launchable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The concrete image (AMI id, GCE image link) a launch boots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// vCPUs, memory and instances one node of the label holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<NodeResources>,
}

/// Node counts by lifecycle state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    pub total: u32,
    /// Nodes per state (Nodepool's states, as `kubectl get poolnodes` shows them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "BTreeMap<String, u32>")]
    pub by_state: BTreeMap<crate::NodeState, u32>,
}

/// Resources in use against limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaStatus {
    pub used: ResourceUsage,
    /// The provider's own limits (`spec.limits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceLimits>,
    /// The cloud's quota for this account and region, as the cloud reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<ResourceLimits>,
    /// What the account's resources this provider does not own hold of the cloud's quota
    /// (Nodepool's "unmanaged quota"): launches here get what is left of `cloud` after them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmanaged: Option<ResourceUsage>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_label_reuses_its_nodes_within_max_uses_and_max_age() {
        let mut label = PoolLabel::named("l");
        assert!(!label.reuses(1, Duration::ZERO), "no reuse unless asked for");
        label.reuse = true;
        assert!(label.reuses(100, Duration::from_secs(86_400)), "no limits: always");
        label.max_uses = Some(2);
        label.max_age = Some(GoDuration::from_secs(3600));
        assert!(label.reuses(1, Duration::from_secs(10)));
        assert!(!label.reuses(2, Duration::from_secs(10)), "two uses served");
        assert!(!label.reuses(1, Duration::from_secs(3600)), "too old");
    }
}
