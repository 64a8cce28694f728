//! Deleting a cloud Provider deletes its instances first.
//!
//! A cloud Provider carries the [`CLEANUP_FINALIZER`], so when it is deleted it stays (with its
//! settings and credentials) until the operator has:
//! 1. stopped scheduling to it (the scheduler and the bridge skip Providers being deleted);
//! 2. torn down every node Zuul is not using (`deleting`: instance deleted, then the PoolNode);
//!    nodes in use go when Zuul returns them, as on any provider;
//! 3. swept the cloud once no node is left: every instance or volume still tagged for this
//!    provider and installation is deleted, and the sweep repeats until the cloud lists none.
//!
//! Only then is the finalizer removed and the Provider (and anything it owns) goes.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{ResourceExt, runtime::controller::Action};
use nodepool_crds::{NodeRequest, NodeRequestState, NodeState, OPERATOR_MANAGER, PoolNodeStatus, Provider};
use nodepool_driver::leaks;

use super::Error;
use crate::context::Context;

/// Keeps a cloud Provider until its instances are gone.
pub const CLEANUP_FINALIZER: &str = "nodepool.dev/cloud-instances";

const POLL: Duration = Duration::from_secs(5);

/// How long after the operator fulfilled a request with a node the node is taken to be on its
/// way to Zuul (the bridge writes `fulfilled` within moments; it does not record having done so).
const HAND_OVER: Duration = Duration::from_secs(30);

/// Adds the finalizer to a cloud Provider that lacks it.
pub async fn ensure_finalizer(provider: &Provider, ctx: &Context) -> Result<(), Error> {
    if provider.finalizers().iter().any(|f| f == CLEANUP_FINALIZER) {
        return Ok(());
    }
    let mut finalizers = provider.finalizers().to_vec();
    finalizers.push(CLEANUP_FINALIZER.to_owned());
    set_finalizers(provider, ctx, finalizers).await?;
    tracing::info!(provider = %provider.name_any(), "cleanup finalizer added");
    Ok(())
}

/// One step of deleting a cloud Provider; requeues until the finalizer can go.
pub async fn step(provider: &Provider, ctx: &Context) -> Result<Action, Error> {
    let name = provider.name_any();
    if !provider.finalizers().iter().any(|f| f == CLEANUP_FINALIZER) {
        return Ok(Action::await_change());
    }
    let nodes: Vec<_> = ctx.nodes.state().into_iter().filter(|n| n.spec.provider == name).collect();
    for node in &nodes {
        let status = node.status.clone().unwrap_or_default();
        let zuul_has_it = matches!(status.current_state(), NodeState::InUse | NodeState::Hold)
            || status.zookeeper.as_ref().is_some_and(|z| z.locked);
        if zuul_has_it || status.state == NodeState::Deleting || node.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let request = status.allocated_to.as_deref().and_then(|id| ctx.cached(&ctx.requests, id));
        if being_handed_over(&status, request.as_deref(), Timestamp::now()) {
            continue; // deleted now, the request would wait on it; Zuul will lock it or give it back
        }
        tracing::info!(provider = %name, node = %node.name_any(), state = status.state.as_str(), "provider deleted: deleting node");
        let status = nodepool_crds::PoolNodeStatus {
            state: NodeState::Deleting,
            state_time: Some(Time(Timestamp::now())),
            ..status
        };
        if let Err(error) = ctx.write_node_status(node, &status).await {
            tracing::debug!(node = %node.name_any(), error = format!("{error:#}"), "marking a node deleting; retrying");
        }
    }
    if !nodes.is_empty() {
        tracing::info!(provider = %name, nodes = nodes.len(), "provider deleted: waiting for its nodes to go");
        return Ok(Action::requeue(POLL));
    }
    // No node left: whatever the cloud still lists for us is left over; delete it all.
    let cloud = match ctx.cloud(provider).await {
        Ok(Some(cloud)) => cloud,
        Ok(None) => return remove_finalizer(provider, ctx).await,
        Err(error) => {
            tracing::warn!(provider = %name, %error, "provider deleted, but its cloud is unreachable; its instances cannot be checked yet");
            return Ok(Action::requeue(POLL * 6));
        }
    };
    let none = leaks::Owners::default();
    let sweep = async {
        let listed = leaks::pass(cloud.as_ref(), &none, &Default::default()).await?;
        if listed.suspected.is_empty() {
            return Ok(true);
        }
        // Every suspect is "seen twice": delete it now.
        let pass = leaks::pass(cloud.as_ref(), &none, &listed.suspected).await?;
        for resource in &pass.deleted {
            tracing::info!(provider = %name, kind = %resource.kind, id = %resource.id, "provider deleted: deleted its left-over resource");
            ctx.metrics.leak_removed(&name, resource.kind);
        }
        Ok::<_, nodepool_driver::CloudError>(false)
    };
    match sweep.await {
        Ok(true) => remove_finalizer(provider, ctx).await,
        Ok(false) => Ok(Action::requeue(POLL)),
        Err(error) => {
            tracing::warn!(provider = %name, %error, "sweeping a deleted provider's cloud failed; retrying");
            Ok(Action::requeue(POLL))
        }
    }
}

/// Whether the node was just given to a request that Zuul may not have seen fulfilled yet. A
/// node deleted then would leave the request waiting in ZooKeeper on a node that is gone; once
/// Zuul has seen `fulfilled`, it copes with a missing node itself (it cannot lock it and asks
/// again).
fn being_handed_over(status: &PoolNodeStatus, request: Option<&NodeRequest>, now: Timestamp) -> bool {
    let Some(request) = request else { return false };
    let Some(outcome) = request.status.as_ref() else { return false };
    let since = outcome.state_time.as_ref().map_or(now, |t| t.0);
    let age: Duration = now.duration_since(since).try_into().unwrap_or_default();
    status.allocated_to.as_deref() == Some(request.spec.request_id.as_str())
        && outcome.state == NodeRequestState::Fulfilled
        && age < HAND_OVER
}

async fn remove_finalizer(provider: &Provider, ctx: &Context) -> Result<Action, Error> {
    let finalizers = provider.finalizers().iter().filter(|f| *f != CLEANUP_FINALIZER).cloned().collect();
    set_finalizers(provider, ctx, finalizers).await?;
    tracing::info!(provider = %provider.name_any(), "provider deleted: its cloud holds nothing of ours; finalizer removed");
    ctx.clouds.forget(&provider.name_any());
    Ok(Action::await_change())
}

/// Replaces the Provider's finalizer list (see [`nodepool_service::finalizers::replace`]).
async fn set_finalizers(provider: &Provider, ctx: &Context, finalizers: Vec<String>) -> Result<(), Error> {
    nodepool_service::finalizers::replace(&ctx.api::<Provider>(), provider, finalizers, OPERATOR_MANAGER)
        .await
        .map_err(|error| Error(anyhow::Error::new(error).context("updating the Provider's finalizers")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodepool_crds::node_request::{NodeRequestSpec, NodeRequestStatus};

    fn request(state: NodeRequestState, fulfilled_at: Timestamp) -> NodeRequest {
        let spec = NodeRequestSpec { request_id: "200-0000000001".into(), ..Default::default() };
        let mut request = NodeRequest::new("200-0000000001", spec);
        request.status =
            Some(NodeRequestStatus { state, state_time: Some(Time(fulfilled_at)), ..Default::default() });
        request
    }

    fn allocated_to(id: Option<&str>) -> PoolNodeStatus {
        PoolNodeStatus { state: NodeState::Ready, allocated_to: id.map(str::to_owned), ..Default::default() }
    }

    #[test]
    fn a_node_just_given_to_a_request_is_left_for_zuul() {
        let now = Timestamp::now();
        let fulfilled =
            request(NodeRequestState::Fulfilled, now - k8s_openapi::jiff::SignedDuration::from_secs(2));
        let node = allocated_to(Some("200-0000000001"));
        assert!(being_handed_over(&node, Some(&fulfilled), now));

        let long_ago =
            request(NodeRequestState::Fulfilled, now - k8s_openapi::jiff::SignedDuration::from_secs(31));
        assert!(!being_handed_over(&node, Some(&long_ago), now), "Zuul has had its chance");
        let pending = request(NodeRequestState::Pending, now);
        assert!(!being_handed_over(&node, Some(&pending), now), "building for it: deleted, re-planned");
        assert!(!being_handed_over(&node, None, now), "the request is gone");
        assert!(!being_handed_over(&allocated_to(None), Some(&fulfilled), now), "a spare");
        let other = allocated_to(Some("200-0000000002"));
        assert!(!being_handed_over(&other, Some(&fulfilled), now));
    }
}
