//! `Provider`: a cloud account or a set of static hosts, with pools, limits and credentials.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ConnectionSettings, GoDuration, SecretKeyRef, free_form_object};

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
#[x_kube(
    validation = Rule::new("self.driver != 'aws' || has(self.aws)")
        .message("an aws provider needs spec.aws with at least a region"),
    validation = Rule::new("self.driver != 'gce' || has(self.gce)")
        .message("a gce provider needs spec.gce with a project, a region and zones"),
    validation = Rule::new("self.driver == 'static' || self.pools.all(p, !has(p.hosts))")
        .message("only a static provider lists hosts in its pools"),
    validation = Rule::new("self.driver != 'static' || self.pools.all(p, has(p.hosts) && size(p.hosts) > 0)")
        .message("every pool of a static provider must list at least one host"),
    validation = Rule::new("self.driver == 'static' || has(self.credentialsSecretRef) || self.driver == 'simulated'")
        .message("a cloud provider needs credentialsSecretRef naming the Secret that holds its credentials"),
    validation = Rule::new("self.driver != 'aws' || !has(self.gce)")
        .message("spec.gce is only for a gce provider"),
    validation = Rule::new("self.driver != 'gce' || !has(self.aws)")
        .message("spec.aws is only for an aws provider"),
)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    /// Which driver launches nodes: `static`, `aws`, `gce` or `simulated`. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.driver cannot be changed; create a new Provider"))]
    pub driver: Driver,

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

    /// AWS EC2 settings, for `driver: aws`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsProvider>,

    /// Google Compute Engine settings, for `driver: gce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gce: Option<GceProvider>,

    /// Simulated cloud settings, for `driver: simulated` (benchmarks and fault tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated: Option<SimulatedProvider>,
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

/// The driver behind a provider. A closed set: the apiserver rejects anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Static,
    Aws,
    Gce,
    Simulated,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Aws => "aws",
            Self::Gce => "gce",
            Self::Simulated => "simulated",
        }
    }
}

/// Maximum resources in use at once. Unset means no limit beyond the cloud's own quota.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLimits {
    /// Servers (instances, or static slots) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_servers: Option<u32>,
    /// vCPUs at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cores: Option<u32>,
    /// Memory at once, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ram: Option<u64>,
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

    /// Labels this pool serves, with how to launch each. Static pools take their labels from hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
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

    /// Static hosts (static providers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub hosts: Option<Vec<StaticHost>>,

    /// AWS pool settings (subnet, security groups, addressing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsPool>,

    /// GCE pool settings (network, subnetwork).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gce: Option<GcePool>,
}

fn default_true() -> bool {
    true
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
    /// AWS-only label settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsLabel>,
    /// GCE-only label settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gce: Option<GceLabel>,
}

/// A static host, registered as `maxParallelJobs` nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticHost {
    /// Host name or IP address Zuul connects to; unique within the pool.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Labels this host serves.
    #[schemars(length(min = 1))]
    pub labels: Vec<String>,
    /// How Zuul logs in.
    #[serde(flatten)]
    pub connection: ConnectionSettings,
    /// Jobs the host runs at once; each is one node. Default 1.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_parallel_jobs: u32,
    /// Host keys to hand to Zuul instead of scanning (`<type> <base64>` each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_keys: Vec<String>,
    /// Overrides the pool's `hostKeyChecking` for this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_checking: Option<bool>,
    /// How long a reachability check or key scan may take. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
}

fn default_one() -> u32 {
    1
}

/// AWS account-level settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsProvider {
    /// Region, e.g. `us-east-1`.
    #[schemars(length(min = 1), regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: String,
    /// Endpoint override (tests, or private endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// AWS pool settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,
    /// Give instances a public IP address. Default true.
    #[serde(default = "default_true")]
    pub public_ip_address: bool,
    /// Connect to the private address even when a public one exists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_private_ip: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
}

/// AWS label settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsLabel {
    /// EC2 key pair name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// IAM instance profile name or ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_instance_profile: Option<String>,
    /// Require IMDSv2 tokens. Default true.
    #[serde(default = "default_true")]
    pub imdsv2: bool,
}

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
    pub resources: Option<crate::pool_node::NodeResources>,
}

/// Node counts by lifecycle state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    pub total: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_state: BTreeMap<String, u32>,
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
}

/// Resources used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceUsage {
    pub servers: u32,
    pub cores: u32,
    /// MiB.
    pub ram: u64,
}
