//! Writing status with server-side apply as the operator. The operator owns every status field
//! but the bridge's `zookeeper` block; each apply carries the object's resourceVersion, so a
//! write based on a stale read fails with a conflict instead of undoing a newer one.

use anyhow::{Context as _, Result};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use nodepool_crds::{NodeRequest, NodeRequestStatus, OPERATOR_MANAGER, PoolNode, PoolNodeStatus};
use serde::Serialize;
use serde_json::json;

/// The apiserver's status code, if `error` is one of its answers.
pub fn api_code(error: &anyhow::Error) -> Option<u16> {
    match error.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

/// Whether an error is the apiserver's "the object has been modified" conflict.
pub fn is_conflict(error: &anyhow::Error) -> bool {
    api_code(error) == Some(409)
}

/// Creating an object as the operator: its fields are then the operator's in `managedFields`,
/// not an `unknown` manager's.
pub fn create_params() -> kube::api::PostParams {
    kube::api::PostParams { field_manager: Some(OPERATOR_MANAGER.to_owned()), ..Default::default() }
}

/// Applies `status` as the operator's status of `object`.
pub async fn apply_status<K, S>(api: &Api<K>, object: &K, status: &S) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    apply(api, &object.name_any(), object.resource_version(), status).await
}

/// Applies the first status of a PoolNode the operator has just created. Without a
/// resourceVersion: nobody else writes the operator's fields of a node this new, so there is no
/// newer write to protect, and a metadata change made meanwhile must not fail it.
pub async fn apply_new_node_status(
    api: &Api<PoolNode>,
    name: &str,
    status: &PoolNodeStatus,
) -> Result<PoolNode> {
    apply(api, name, None, &PoolNodeStatus { zookeeper: None, ..status.clone() }).await
}

/// Server-side apply of `status` as the operator, conditional on `resource_version` if given.
async fn apply<K, S>(api: &Api<K>, name: &str, resource_version: Option<String>, status: &S) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let mut metadata = json!({"name": name});
    if let Some(version) = resource_version {
        metadata["resourceVersion"] = json!(version);
    }
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(OPERATOR_MANAGER).force(), &Patch::Apply(&body))
        .await
        .with_context(|| format!("writing status of {} {name}", K::kind(&())))
}

/// Applies the operator's part of a PoolNode's status (everything but `zookeeper`).
pub async fn apply_node_status(
    api: &Api<PoolNode>,
    node: &PoolNode,
    status: &PoolNodeStatus,
) -> Result<PoolNode> {
    let status = PoolNodeStatus { zookeeper: None, ..status.clone() };
    apply_status(api, node, &status).await
}

/// Applies the operator's part of a NodeRequest's status (everything but `zookeeper`).
pub async fn apply_request_status(
    api: &Api<NodeRequest>,
    request: &NodeRequest,
    status: &NodeRequestStatus,
) -> Result<NodeRequest> {
    let status = NodeRequestStatus { zookeeper: None, ..status.clone() };
    apply_status(api, request, &status).await
}
