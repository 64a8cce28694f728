//! `PoolNode`: one node and its lifecycle.
//!
//! The operator owns the lifecycle (`status.state`, addresses, host keys, allocation); the
//! zk-bridge owns what Zuul says of the node (`status.zookeeper`). Each writes its own fields with
//! server-side apply under its own field manager.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::quota::NodeResources;
use crate::{
    common::{ConnectionSettings, GoDuration, free_form_object},
    quota::ResourceUsage,
};

/// One node: a cloud instance or one slot of a static host.
#[derive(CustomResource, JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "nodepool.dev",
    version = "v1alpha1",
    kind = "PoolNode",
    namespaced,
    status = "PoolNodeStatus",
    shortname = "npn",
    category = "nodepool",
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool", priority = 1),
    printcolumn(name = "Label", type_ = "string", json_path = ".spec.labels[0]"),
    printcolumn(name = "Address", type_ = "string", json_path = ".status.interfaceIp"),
    printcolumn(name = "Allocated-To", type_ = "string", json_path = ".status.allocatedTo"),
    printcolumn(name = "Zuul", type_ = "string", json_path = ".status.zookeeper.zuulState"),
    printcolumn(name = "ZK-ID", type_ = "string", json_path = ".status.zookeeper.nodeId", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PoolNodeSpec {
    /// The `Provider` the node belongs to.
    #[schemars(length(min = 1))]
    pub provider: String,
    /// The pool within the provider.
    #[schemars(length(min = 1))]
    pub pool: String,
    /// Labels the node satisfies (static hosts may serve several).
    #[schemars(length(min = 1))]
    pub labels: Vec<String>,
    /// For a static node: the host and its slot among `maxParallelJobs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_host: Option<StaticSlot>,
    /// An operator's hold (Nodepool's `nodepool hold`): keep the node for inspection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<AdminHold>,
    /// An operator's delete (Nodepool's `nodepool delete`): the node is torn down the normal way,
    /// its instance first, once Zuul does not hold its lock. A static slot comes back fresh.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete: bool,
}

/// A static host slot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticSlot {
    pub host: String,
    pub slot: u32,
}

/// A hold set by a person rather than by Zuul's autohold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminHold {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Release the hold after this long; unset keeps it until the global max hold age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<GoDuration>,
}

/// Nodepool's node states, with Nodepool's spelling.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Created, not launching yet.
    #[default]
    Init,
    /// Launching.
    Building,
    /// Defined by Nodepool, unused.
    Testing,
    /// Up and reachable; may be allocated to a request.
    Ready,
    /// A job runs on it (set by Zuul, in `status.zookeeper.zuulState`).
    InUse,
    /// A job ran on it; to be deleted or recycled (set by Zuul, in `status.zookeeper.zuulState`).
    Used,
    /// Kept for a person to inspect.
    Hold,
    /// Being deleted.
    Deleting,
    /// The launch failed.
    Failed,
    /// The cloud was over quota; not a failure.
    Aborted,
    /// Deleted in the cloud; the object is about to go.
    Deleted,
}

impl NodeState {
    /// The string Zuul reads in the node znode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "init",
            Self::Building => "building",
            Self::Testing => "testing",
            Self::Ready => "ready",
            Self::InUse => "in-use",
            Self::Used => "used",
            Self::Hold => "hold",
            Self::Deleting => "deleting",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
            Self::Deleted => "deleted",
        }
    }

    pub const ALL: [NodeState; 11] = [
        Self::Init,
        Self::Building,
        Self::Testing,
        Self::Ready,
        Self::InUse,
        Self::Used,
        Self::Hold,
        Self::Deleting,
        Self::Failed,
        Self::Aborted,
        Self::Deleted,
    ];

    /// The state Zuul's string names (`in-use`, ...), if Nodepool knows it.
    pub fn parse(text: &str) -> Option<NodeState> {
        NodeState::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

/// What is true of a node now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolNodeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Lifecycle state (operator). A node Zuul uses stays `ready` here: Zuul's `in-use` and
    /// `used` are in `zookeeper.zuulState` (the `Zuul` column), `hold` in both.
    #[serde(default)]
    pub state: NodeState,
    /// When `state` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_time: Option<Time>,
    /// How many times a static slot came back after use (operator). Each time it is a new node
    /// to Zuul, under a new znode id; `zookeeper` describes this registration once its
    /// `registration` matches.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub registration: u32,
    /// The request the node is reserved for (ZooKeeper request id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_to: Option<String>,
    /// Which hand-out `allocatedTo` stands for, when the scheduler wrote it at the same time as
    /// the request's `fulfilled`: the request's `status.allocationId` (operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_id: Option<String>,
    /// Tenant and requestor copied from the request at allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requestor: Option<String>,
    /// The cloud's id for the node (instance id, or the static host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The address Zuul connects to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub az: Option<String>,
    /// Cloud image the node booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// How Zuul logs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionSettings>,
    /// SSH host keys, `<type> <base64>` each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_keys: Vec<String>,
    /// Where and as whom Zuul reaches a Kubernetes namespace, OpenShift project or pod node
    /// (connection types `namespace`, `project`, `kubectl`). Zuul reads it as the node's
    /// `connection_port` object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAccess>,
    /// Quota footprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<NodeResources>,
    /// Pool `nodeAttributes`, as handed to Zuul.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub attributes: Option<BTreeMap<String, serde_json::Value>>,
    /// Progress of the driver's create or delete state machine (operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchProgress>,
    /// What Zuul says of the node, carried from ZooKeeper (zk-bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zookeeper: Option<ZooKeeperView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

impl PoolNodeStatus {
    /// Reserves the node for `request` (charged to its tenant); `allocation_id` ties it to the
    /// hand-out written with it, if any.
    pub fn allocate(&mut self, request: &crate::NodeRequest, allocation_id: Option<&str>) {
        self.allocated_to = Some(request.spec.request_id.clone());
        self.allocation_id = allocation_id.map(str::to_owned);
        self.tenant = request.spec.tenant.clone();
        self.requestor = request.spec.requestor.clone();
    }

    /// Frees the node of its request, tenant and requestor.
    pub fn release(&mut self) {
        self.allocated_to = None;
        self.allocation_id = None;
        self.tenant = None;
        self.requestor = None;
    }

    /// Zuul has no hold on the node's current registration. One the bridge has not put in
    /// ZooKeeper yet (a slot just back from use, a node just launched) is unclaimed: Zuul can
    /// neither lock nor use a znode that does not exist, and the bridge registers it, allocated,
    /// before it fulfils the request. Waiting for the bridge to record the new znode first would
    /// put one more apiserver write and watch hop between a node becoming ready and its hand-out.
    pub fn unclaimed_by_zuul(&self) -> bool {
        self.zuul_view().is_none_or(|z| !z.locked && z.zuul_state.is_none())
    }

    /// What the bridge last saw of the node in ZooKeeper, if it is about the node's current
    /// registration (a static slot just back from use still shows the view of its last use).
    pub fn zuul_view(&self) -> Option<&ZooKeeperView> {
        self.zookeeper.as_ref().filter(|view| view.registration == self.registration)
    }

    /// The node's state as Nodepool and Zuul name it: what Zuul set on the current registration
    /// (`in-use`, `used`, `hold`) over the operator's `ready`, else the operator's state.
    pub fn current_state(&self) -> NodeState {
        let lent =
            matches!(self.state, NodeState::Ready | NodeState::InUse | NodeState::Used | NodeState::Hold);
        match self.zuul_view().and_then(|view| view.zuul_state) {
            Some(zuul_state) if lent => zuul_state,
            _ => self.state,
        }
    }
}

/// How Zuul reaches a Kubernetes-type node: the API server, the namespace, the service account,
/// and the Secret holding its token. The token itself never appears in a status: the bridge
/// reads it from the Secret (which the `PoolNode` owns, so it goes with the node) when it writes
/// the node's `connection_port` for Zuul.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesAccess {
    /// API server URL (`host` in Zuul's credentials object).
    pub host: String,
    /// Namespace (or project) the node is.
    pub namespace: String,
    /// Service account Zuul acts as (`user`).
    pub user: String,
    /// Skip TLS verification of the API server (`skiptls`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_tls: bool,
    /// The API server's CA bundle, base64 PEM (`ca_crt`), when TLS is verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crt: Option<String>,
    /// The pod of a `kubectl` node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The Secret (in the PoolNode's namespace, owned by it) whose `token` key holds the
    /// service account token.
    pub token_secret: String,
}

impl PoolNode {
    /// What the node holds against quota: one server, and its cores and memory once known.
    pub fn footprint(&self) -> ResourceUsage {
        let resources = self.status.as_ref().and_then(|s| s.resources.as_ref());
        resources.map(NodeResources::usage).unwrap_or(ResourceUsage { servers: 1, ..Default::default() })
    }
}

/// A hand-out's mark on a node and its request: the request's id and the hand-out's allocation
/// id, written on both at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Allocation<'a> {
    pub request_id: &'a str,
    pub id: &'a str,
}

// What the scheduler, the controllers and the bridge ask of a node, defined once.
impl PoolNode {
    /// Whether the node is ready and free (and no operator asked for it to go).
    pub fn is_free(&self) -> bool {
        let Some(status) = &self.status else { return false };
        self.metadata.deletion_timestamp.is_none()
            && !self.spec.delete
            && status.state == NodeState::Ready
            && status.allocated_to.is_none()
            && status.unclaimed_by_zuul()
    }

    /// Whether the node is a slot Zuul has used and unlocked, to be registered afresh (under a
    /// new znode id, as Nodepool does).
    pub fn is_back_from_use(&self) -> bool {
        let Some(status) = &self.status else { return false };
        self.spec.static_host.is_some()
            && self.metadata.deletion_timestamp.is_none()
            && matches!(status.state, NodeState::Ready | NodeState::InUse | NodeState::Used)
            && status.zuul_view().is_some_and(|z| z.zuul_state == Some(NodeState::Used) && !z.locked)
    }

    /// The hand-out the node shows, if it has one with an allocation id.
    pub fn allocation(&self) -> Option<Allocation<'_>> {
        let status = self.status.as_ref()?;
        Some(Allocation { request_id: status.allocated_to.as_deref()?, id: status.allocation_id.as_deref()? })
    }
}

/// What `nodes` hold against quota together.
pub fn footprint<'a>(nodes: impl IntoIterator<Item = &'a PoolNode>) -> ResourceUsage {
    nodes.into_iter().map(PoolNode::footprint).sum()
}

/// Where a driver's state machine stands; kept in the object so a restarted operator resumes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LaunchProgress {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The state machine's current step.
    #[serde(default)]
    pub step: LaunchStep,
    /// When the current attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the current attempt started, in milliseconds since the epoch (the boot timeout
    /// counts from it; `startedAt` is whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_started_ms: Option<i64>,
    /// When the first attempt started, in milliseconds since the epoch (the launch timeout
    /// counts from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_started_ms: Option<i64>,
    /// The current attempt's instance, once the cloud gave it an id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// What ended the last failed attempt (the launch's result if it fails for good).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<LaunchResult>,
    /// The last error, if the attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Progress as operators before the typed fields wrote it (`attemptStarted`,
    /// `launchStarted`, `instanceId`, `failure`); read, never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub driver_data: Option<BTreeMap<String, serde_json::Value>>,
}

/// Where one launch stands (the create state machine's steps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LaunchStep {
    #[default]
    Create,
    WaitRunning,
    ScanKeys,
    CleanUp,
}

impl LaunchStep {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::WaitRunning => "wait-running",
            Self::ScanKeys => "scan-keys",
            Self::CleanUp => "clean-up",
        }
    }
}

/// How a launch ended, named as Nodepool's `nodepool.launch.<result>` statistics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum LaunchResult {
    #[serde(rename = "ready")]
    Ready,
    // The cloud refused it for quota (the node is aborted, the pool paused). Plain comments:
    // documented variants would turn the schema's `enum` into a `oneOf`.
    #[serde(rename = "error.quota")]
    Quota,
    // The cloud had no capacity for it (aborted, like quota).
    #[serde(rename = "error.capacity")]
    Capacity,
    // The instance went into an error state, or vanished.
    #[serde(rename = "error.status")]
    Status,
    // Not running within the boot timeout, or the launch timeout ran out.
    #[serde(rename = "error.servercreatetimeout")]
    ServerCreateTimeout,
    // Running, but its SSH host keys could not be read within the boot timeout.
    #[serde(rename = "error.keyscan")]
    Keyscan,
    // Running without an address.
    #[serde(rename = "error.ipadd")]
    IpAdd,
    // Anything else (the cloud rejected the request).
    #[serde(rename = "error.unknown")]
    Unknown,
}

impl LaunchResult {
    pub const ALL: [Self; 8] = [
        Self::Ready,
        Self::Quota,
        Self::Capacity,
        Self::Status,
        Self::ServerCreateTimeout,
        Self::Keyscan,
        Self::IpAdd,
        Self::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Quota => "error.quota",
            Self::Capacity => "error.capacity",
            Self::Status => "error.status",
            Self::ServerCreateTimeout => "error.servercreatetimeout",
            Self::Keyscan => "error.keyscan",
            Self::IpAdd => "error.ipadd",
            Self::Unknown => "error.unknown",
        }
    }

    /// A refusal reported by the cloud as the instance's state.
    pub fn of_refusal(reason: &str) -> Self {
        if reason.to_ascii_lowercase().contains("quota") { Self::Quota } else { Self::Capacity }
    }
}

/// The node as ZooKeeper and Zuul see it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZooKeeperView {
    /// The node's `status.registration` this view belongs to.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub registration: u32,
    /// The node id under `/nodepool/nodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The state Zuul last wrote (`in-use`, `used` or `hold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zuul_state: Option<NodeState>,
    /// Whether a client other than the bridge holds the node lock.
    #[serde(default)]
    pub locked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Seconds the node may stay held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_expiration: Option<i64>,
    /// Zuul's `user_data`, kept verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::common::free_form_value")]
    pub user_data: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: NodeState, registration: u32, zuul: Option<(u32, NodeState)>) -> PoolNodeStatus {
        PoolNodeStatus {
            state,
            registration,
            zookeeper: zuul.map(|(registration, zuul_state)| ZooKeeperView {
                registration,
                zuul_state: Some(zuul_state),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn current_state_is_zuuls_word_on_the_current_registration() {
        assert_eq!(status(NodeState::Ready, 0, None).current_state(), NodeState::Ready);
        let in_use = status(NodeState::Ready, 3, Some((3, NodeState::InUse)));
        assert_eq!(in_use.current_state(), NodeState::InUse);
        let used = status(NodeState::Ready, 3, Some((3, NodeState::Used)));
        assert_eq!(used.current_state(), NodeState::Used);
        // A static slot back from use: Zuul's `used` belongs to the last registration.
        let recycled = status(NodeState::Ready, 4, Some((3, NodeState::Used)));
        assert_eq!(recycled.current_state(), NodeState::Ready);
        // The operator's own lifecycle wins once the node is on its way out.
        let deleting = status(NodeState::Deleting, 3, Some((3, NodeState::InUse)));
        assert_eq!(deleting.current_state(), NodeState::Deleting);
    }
}

#[cfg(test)]
mod launch_progress_tests {
    use super::*;

    #[test]
    fn launch_steps_and_results_are_written_as_their_names() {
        for step in [LaunchStep::Create, LaunchStep::WaitRunning, LaunchStep::ScanKeys, LaunchStep::CleanUp] {
            assert_eq!(serde_json::to_value(step).unwrap(), step.as_str());
        }
        for result in LaunchResult::ALL {
            assert_eq!(serde_json::to_value(result).unwrap(), result.as_str());
            assert_eq!(serde_json::from_value::<LaunchResult>(result.as_str().into()).unwrap(), result);
        }
    }
}
