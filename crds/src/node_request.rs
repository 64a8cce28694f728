//! `NodeRequest`: one Zuul node request, mirrored from `/nodepool/requests/<id>` by the zk-bridge.
//!
//! The spec is what Zuul asked for (written by the bridge, immutable once created); the status is
//! the outcome (written by the operator) that the bridge carries back to ZooKeeper.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A request for a set of nodes, one per label, all from one provider pool.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "nodepool.dev",
    version = "v1alpha1",
    kind = "NodeRequest",
    namespaced,
    status = "NodeRequestStatus",
    shortname = "npr",
    category = "nodepool",
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Labels", type_ = "string", json_path = ".spec.labels"),
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Provider", type_ = "string", json_path = ".status.provider"),
    printcolumn(name = "Written", type_ = "string", json_path = ".status.zookeeper.state", priority = 1),
    printcolumn(
        name = "Waiting",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Waiting\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct NodeRequestSpec {
    /// The ZooKeeper request id, `<priority>-<sequence>`, e.g. `200-0000004711`.
    #[schemars(regex(pattern = r"^[0-9]+--?[0-9]+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.requestId cannot be changed"))]
    pub request_id: String,
    /// Labels wanted, one node each, in order (Zuul's `node_types`).
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.labels cannot be changed"))]
    pub labels: Vec<String>,
    /// Relative priority within the priority class; lower is more urgent. Zuul may revise it
    /// while the request is still `requested`.
    #[serde(default)]
    pub relative_priority: i64,
    /// Who asked: Zuul's system id, or `NodePool:min-ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requestor: Option<String>,
    /// Zuul tenant (for tenant limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Preferred provider (affinity with a paused parent job); not a hard constraint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_provider: Option<String>,
    /// Existing ready nodes may be handed out. Default true.
    #[serde(default = "default_true")]
    pub reuse: bool,
    /// Zuul's event id, for correlating logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Pools of other launchers (Nodepool's, on a shared ZooKeeper) that could serve this
    /// request: they support its labels, are not paused and have not declined it. Our pools
    /// yield to a better-priority one, and to one of the preferred provider (Nodepool's rules).
    /// Kept current by the bridge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_launchers: Vec<OtherLauncherPool>,
}

/// A pool component of another launcher, as registered in ZooKeeper.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OtherLauncherPool {
    /// The component's pool id, as in `declined_by`.
    pub id: String,
    pub provider: String,
    /// Lower is preferred.
    pub priority: i32,
}

fn default_true() -> bool {
    true
}

// What the scheduler and the controllers ask of a request, defined once.
impl NodeRequest {
    /// Whether the scheduler still has to decide on the request.
    pub fn is_open(&self) -> bool {
        self.metadata.deletion_timestamp.is_none()
            && self.status.as_ref().is_none_or(|s| s.state == NodeRequestState::Requested)
    }

    /// Whether the request was accepted and waits for its launches.
    pub fn is_pending(&self) -> bool {
        self.metadata.deletion_timestamp.is_none()
            && self.status.as_ref().is_some_and(|s| s.state == NodeRequestState::Pending)
    }

    /// The allocation a `fulfilled` request's hand-out wrote on its nodes; `None` for one
    /// fulfilled after its launches, whose allocations came first.
    pub fn handed_out_allocation(&self) -> Option<crate::pool_node::Allocation<'_>> {
        let status = self.status.as_ref().filter(|s| s.state == NodeRequestState::Fulfilled)?;
        Some(crate::pool_node::Allocation {
            request_id: self.spec.request_id.as_str(),
            id: status.allocation_id.as_deref()?,
        })
    }
}

impl NodeRequestSpec {
    /// The priority class: the part of the id before the dash (`200` in `200-0000004711`).
    pub fn priority_class(&self) -> &str {
        self.request_id.split_once('-').map_or("", |(prefix, _)| prefix)
    }

    /// Where the request stands in Nodepool's order.
    pub fn order(&self) -> RequestOrder<'_> {
        RequestOrder::new(&self.request_id, self.relative_priority)
    }
}

/// Nodepool's request order, the one rule both the scheduler (which request is served first)
/// and the bridge (which request is mirrored first) follow: priority class (`100` before `200`),
/// then relative priority (lower first), then sequence (older first). Compare with `Ord`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestOrder<'a> {
    class: &'a str,
    relative_priority: i64,
    sequence: &'a str,
}

impl<'a> RequestOrder<'a> {
    /// The order of request `request_id` (`<class>-<sequence>`) with `relative_priority`.
    pub fn new(request_id: &'a str, relative_priority: i64) -> Self {
        let (class, sequence) = request_id.split_once('-').unwrap_or(("", request_id));
        RequestOrder { class, relative_priority, sequence }
    }
}

/// Where a request stands, with Zuul's own state names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeRequestState {
    #[default]
    Requested,
    Pending,
    Fulfilled,
    Failed,
}

impl NodeRequestState {
    pub const ALL: [Self; 4] = [Self::Requested, Self::Pending, Self::Fulfilled, Self::Failed];

    /// Zuul's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Pending => "pending",
            Self::Fulfilled => "fulfilled",
            Self::Failed => "failed",
        }
    }
}

/// The outcome of a request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub state: NodeRequestState,
    /// When `state` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_time: Option<Time>,
    /// Provider and pool serving the request, once chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// `PoolNode` names, in the order of `spec.labels`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Set when the nodes' allocations were written at the same time as this status: the
    /// zk-bridge writes `fulfilled` to ZooKeeper only once every node in `nodes` shows this id
    /// in its `allocationId` (a copy of a node from an earlier, undone hand-out never does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_id: Option<String>,
    /// The request the scheduler handed out just before this one. The zk-bridge writes this
    /// one's `fulfilled` to ZooKeeper only after that one's (or once it is withdrawn or no longer
    /// fulfilled), so Zuul sees hand-outs in the order they were decided, Nodepool's order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_out_after: Option<String>,
    /// Our pools that cannot serve the request, as `provider/pool`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declined_by: Vec<String>,
    /// `Waiting` says why the request is not fulfilled yet (`False` with reason `Declined` when
    /// it was declined).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// A decline the zk-bridge wrote back to ZooKeeper, or why it could not write an outcome
    /// (zk-bridge). `pending` and `fulfilled` are not echoed here: the request znode is the
    /// record, and Zuul deletes a fulfilled request within moments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zookeeper: Option<RequestZooKeeperView>,
}

/// A decline as written to ZooKeeper by the bridge, or why an outcome could not be written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestZooKeeperView {
    /// The state written to the request znode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<NodeRequestState>,
    /// Node ids written to the request, in label order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_ids: Vec<String>,
    /// Pool-component ids in the request's `declined_by`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declined_by: Vec<String>,
    /// Why the outcome could not be written, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::RequestOrder;

    #[test]
    fn nodepool_order_is_class_then_relative_priority_then_age() {
        let mut ids = vec![
            RequestOrder::new("200-0000000003", 0),
            RequestOrder::new("200-0000000001", 1),
            RequestOrder::new("100-0000000009", 5),
            RequestOrder::new("200-0000000002", 0),
        ];
        ids.sort();
        assert_eq!(
            ids,
            vec![
                RequestOrder::new("100-0000000009", 5),
                RequestOrder::new("200-0000000002", 0),
                RequestOrder::new("200-0000000003", 0),
                RequestOrder::new("200-0000000001", 1),
            ]
        );
    }
}
