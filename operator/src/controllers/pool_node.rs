//! PoolNode reconciler: the node lifecycle (zk-protocol.md §3.2).
//!
//! - `init`: a static slot is registered once its host answers (host keys scanned) → `ready`.
//! - Zuul's `hold` (carried in by the bridge) is adopted; its `in-use` and `used` stay in
//!   `status.zookeeper` (see `PoolNodeStatus::current_state`).
//! - `used`, `failed` and expired `hold` nodes are deleted once Zuul has unlocked them; a static
//!   slot instead registers again under a new znode id (after use, the scheduler does that:
//!   `scheduler::plan::is_back_from_use`). A failed node launched for a pending request stays
//!   until the scheduler has declined the request.
//! - A `ready` node reserved for a request that no longer exists is released.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, api::DeleteParams, runtime::controller::Action};
use nodepool_crds::{NodeRequest, NodeState, PoolNode, PoolNodeStatus, conditions};
use tracing::Instrument;

use super::{Error, retry_after};
use crate::{
    context::Context,
    slots::{self, HELD, Registration},
};

/// How soon a slot whose host did not answer is tried again.
const RETRY_UNREACHABLE: Duration = Duration::from_secs(10);
/// How long a request must have been gone before its ready nodes are released.
const RELEASE_GRACE: Duration = Duration::from_secs(5);
/// When to look again at a node whose cached copy is older than our last write to it, should
/// no watch event come first.
const CACHE_LAG_RETRY: Duration = Duration::from_secs(1);

pub async fn reconcile(node: Arc<PoolNode>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = nodepool_service::logging::node_span(&node);
    reconcile_node(node, ctx).instrument(span).await
}

async fn reconcile_node(node: Arc<PoolNode>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.caches_ready().await; // providers are read from the cache
    if node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if ctx.node_writes.cache_is_behind(node.as_ref()) {
        // Look again once the cache shows our write (its watch event wakes this reconcile).
        return Ok(Action::requeue(CACHE_LAG_RETRY));
    }
    if node.spec.delete {
        return delete_requested(&node, &ctx).await;
    }
    let cloud_node = node.spec.static_host.is_none();
    let status = node.status.clone().unwrap_or_default();
    if cloud_node && node.status.is_none() {
        // The scheduler writes a new node's allocation right after creating it; launching
        // before that would launch it for nobody.
        return super::cloud_node::unclaimed(&node, &ctx).await;
    }
    match status.state {
        NodeState::Init | NodeState::Building if cloud_node => {
            super::cloud_node::launch(&node, status, &ctx).await
        }
        NodeState::Init => register(&node, status, &ctx).await,
        NodeState::Ready | NodeState::InUse | NodeState::Used | NodeState::Hold => {
            lifecycle(&node, status, &ctx).await
        }
        // The failed node is how the scheduler learns that the request it was launched for
        // failed; gone before a pass saw it, the scheduler would launch again.
        NodeState::Failed if launched_for_pending_request(&status, &ctx) => Ok(Action::await_change()),
        NodeState::Failed | NodeState::Aborted | NodeState::Deleting | NodeState::Deleted => {
            delete(&node, &ctx, "finished").await
        }
        NodeState::Building | NodeState::Testing => Ok(Action::await_change()),
    }
}

pub fn error_policy(node: Arc<PoolNode>, error: &Error, _: Arc<Context>) -> Action {
    let _span = nodepool_service::logging::node_span(&node).entered();
    if crate::status::is_conflict(&error.0) {
        tracing::debug!(%error, "conflict; retrying with a fresh read");
        return retry_after(error);
    }
    tracing::warn!(%error, "node reconcile failed");
    retry_after(error)
}

/// An operator asked for the node to go (`nodepool delete`): at once unless Zuul holds its lock;
/// then when the lock goes (its release wakes this reconcile).
async fn delete_requested(node: &PoolNode, ctx: &Context) -> Result<Action, Error> {
    let locked = node.status.as_ref().and_then(|s| s.zuul_view()).is_some_and(|z| z.locked);
    if locked {
        return Ok(Action::await_change());
    }
    delete(node, ctx, "deleted by an operator").await
}

async fn delete(node: &PoolNode, ctx: &Context, why: &str) -> Result<Action, Error> {
    if node.spec.static_host.is_none() {
        return super::cloud_node::tear_down(node, ctx, why).await;
    }
    tracing::info!(provider = %node.spec.provider, why, "deleting node");
    let api: Api<PoolNode> = ctx.api();
    match api.delete(&node.name_any(), &DeleteParams::default()).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Action::await_change()),
        Err(error) => Err(error.into()),
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// `init` → `ready` for a static slot once its host answers.
async fn register(node: &PoolNode, status: PoolNodeStatus, ctx: &Context) -> Result<Action, Error> {
    match slots::register(node, status, ctx).await {
        Registration::Ready(status) => {
            ctx.write_node_status(node, &status).await?;
            Ok(Action::await_change())
        }
        Registration::Unreachable(status) => {
            if node.status.as_ref() != Some(&status) {
                ctx.write_node_status(node, &status).await?;
            }
            Ok(Action::requeue(RETRY_UNREACHABLE))
        }
        Registration::HostGone => delete(node, ctx, "host no longer configured").await,
        Registration::NotStatic => Ok(Action::await_change()),
    }
}

async fn lifecycle(node: &PoolNode, mut status: PoolNodeStatus, ctx: &Context) -> Result<Action, Error> {
    let zookeeper = status.zuul_view().cloned().unwrap_or_default();
    // Zuul's word on in-use/used/hold is final. `in-use` and `used` are not copied into `state`
    // (a write per use, for nothing the lifecycle needs; `current_state()` reads both): a node
    // Zuul has used and unlocked is done with at once, one it uses is left alone.
    match zookeeper.zuul_state {
        // The scheduler registers such a slot afresh, and hands it to a waiting request in the
        // same write when there is one.
        Some(NodeState::Used) if node.is_back_from_use() => {
            return Ok(Action::await_change());
        }
        Some(NodeState::Used) if !zookeeper.locked => return used(node, &status, ctx).await,
        Some(NodeState::InUse | NodeState::Used) => return Ok(Action::await_change()),
        // Held, the node is kept until the hold expires or is released: adopt it.
        Some(NodeState::Hold) if status.state != NodeState::Hold => {
            tracing::info!(from = status.state.as_str(), "Zuul holds the node");
            status.state = NodeState::Hold;
            status.state_time = Some(now());
            ctx.write_node_status(node, &status).await?;
            return Ok(Action::await_change());
        }
        _ => {}
    }
    match status.state {
        NodeState::Used if !zookeeper.locked => used(node, &status, ctx).await,
        NodeState::Hold if !zookeeper.locked => {
            let admin_hold = conditions::find(&status.conditions, HELD).is_some_and(|c| c.status == "True");
            if admin_hold && node.spec.hold.is_none() {
                return finish(node, &status, ctx, "hold released").await;
            }
            let own_expiration = match (&node.spec.hold, admin_hold) {
                (Some(hold), true) => hold.expiration.map(|e| e.0.as_secs() as i64),
                _ => zookeeper.hold_expiration,
            };
            match hold_remaining(&status, own_expiration, ctx.settings.max_hold_age) {
                Some(remaining) if remaining.is_zero() => finish(node, &status, ctx, "hold expired").await,
                Some(remaining) => Ok(Action::requeue(remaining)),
                None => Ok(Action::await_change()),
            }
        }
        NodeState::Ready
            if !zookeeper.locked && node.spec.hold.is_some() && status.allocated_to.is_none() =>
        {
            // An operator's hold (`nodepool hold`): keep the node out of circulation.
            tracing::info!("held by an operator");
            status.state = NodeState::Hold;
            status.state_time = Some(now());
            let comment = node.spec.hold.as_ref().and_then(|h| h.comment.clone()).unwrap_or_default();
            conditions::set_condition(
                &mut status.conditions,
                conditions::condition(HELD, true, "OperatorHold", comment, node.metadata.generation),
            );
            ctx.write_node_status(node, &status).await?;
            Ok(Action::await_change())
        }
        NodeState::Ready if !zookeeper.locked => {
            if let Some(request) = &status.allocated_to
                && !request_cached(ctx, request)
            {
                // The request is gone. Zuul removes a request after it locked its nodes, and the
                // bridge records what it sees of a node when it gets to its events, which may
                // be after Zuul locked, used and unlocked it again. So the node is released only
                // once the request has been gone for a while and fresh reads still show no
                // request and no sign of Zuul (Nodepool's deleted-node worker, every 5 s, takes
                // the node lock). The bridge records Zuul's node locks before it removes a
                // request, so a fresh read never sees "request gone" before "node locked".
                let gone_for = ctx.request_gone_for(request);
                if gone_for < RELEASE_GRACE {
                    return Ok(Action::requeue(RELEASE_GRACE - gone_for));
                }
                let requests: Api<NodeRequest> = ctx.api();
                if requests.get_opt(request).await?.is_some() {
                    return Ok(Action::await_change()); // the cache is behind
                }
                let api: Api<PoolNode> = ctx.api();
                let Some(fresh) = api.get_opt(&node.name_any()).await? else {
                    return Ok(Action::await_change());
                };
                let mut status = fresh.status.clone().unwrap_or_default();
                let zuul = status.zuul_view().cloned().unwrap_or_default();
                if zuul.locked || zuul.zuul_state.is_some() || status.state != NodeState::Ready {
                    return Ok(Action::await_change()); // Zuul has it
                }
                tracing::info!(%request, "request gone; releasing its node");
                status.release();
                ctx.write_node_status(&fresh, &status).await?;
                return Ok(Action::await_change());
            }
            if status.allocated_to.is_none()
                && let Some(age) = ready_age_left(node, &status, ctx)
            {
                if age.is_zero() {
                    return delete(node, ctx, "max ready age reached").await;
                }
                return Ok(Action::requeue(age));
            }
            Ok(Action::await_change())
        }
        _ => Ok(Action::await_change()),
    }
}

/// A node is done with: a static slot comes back as a fresh node (a new znode id, as Nodepool
/// does) but the object is kept — its next registration is checked and written in one go (`ready`,
/// or `init` while the host does not answer), and the bridge swaps the old znode for a new one;
/// any other node is deleted.
/// Zuul is done with the node: a launched node of a label with `reuse` goes back to service
/// under a new registration (a new ZooKeeper id, as a static slot does) while its uses and age
/// allow; anything else is finished.
async fn used(node: &PoolNode, status: &PoolNodeStatus, ctx: &Context) -> Result<Action, Error> {
    let uses = status.registration.saturating_add(1);
    let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now);
    let age: Duration = Timestamp::now().duration_since(created).try_into().unwrap_or_default();
    let reused = node.spec.static_host.is_none()
        && status.external_id.is_some()
        && pool_label(node, ctx).is_some_and(|label| label.reuses(uses, age));
    if !reused {
        return finish(node, status, ctx, "used").await;
    }
    tracing::info!(uses, "reusing the node");
    let mut next = status.clone();
    next.registration = uses;
    next.state = NodeState::Ready;
    next.state_time = Some(now());
    next.allocated_to = None;
    next.allocation_id = None;
    next.tenant = None;
    next.requestor = None;
    ctx.write_node_status(node, &next).await?;
    Ok(Action::await_change())
}

/// The pool label the node was launched for, as its Provider says now.
fn pool_label(node: &PoolNode, ctx: &Context) -> Option<nodepool_crds::provider::PoolLabel> {
    let provider = ctx.provider(&node.spec.provider)?;
    let pool = provider.spec.pools.iter().find(|p| p.name == node.spec.pool)?;
    pool.labels.iter().find(|l| node.spec.labels.contains(&l.name)).cloned()
}

async fn finish(node: &PoolNode, status: &PoolNodeStatus, ctx: &Context, why: &str) -> Result<Action, Error> {
    if node.spec.static_host.is_none() {
        return delete(node, ctx, why).await;
    }
    tracing::info!(why, "static slot: registering it afresh");
    register(node, slots::next_registration(node, status), ctx).await
}

/// Whether the node is allocated to a request still waiting for its launches (the request's
/// change, once declined, wakes the node).
fn launched_for_pending_request(status: &PoolNodeStatus, ctx: &Context) -> bool {
    let request = status.allocated_to.as_deref().and_then(|id| ctx.cached(&ctx.requests, id));
    request.is_some_and(|r| r.is_pending())
}

/// Whether the request is in the cache (its deletion wakes the nodes allocated to it).
fn request_cached(ctx: &Context, request_id: &str) -> bool {
    ctx.cached(&ctx.requests, request_id).is_some()
}

fn held_for(status: &PoolNodeStatus) -> Duration {
    let since = status.state_time.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now);
    Timestamp::now().duration_since(since).try_into().unwrap_or_default()
}

/// How long a held node may still be kept: the shorter of its own `hold_expiration` (seconds; 0
/// means none) and the global max hold age. `None` when neither applies.
fn hold_remaining(
    status: &PoolNodeStatus,
    hold_expiration: Option<i64>,
    max_hold_age: Option<Duration>,
) -> Option<Duration> {
    let own = hold_expiration.filter(|s| *s > 0).map(|s| Duration::from_secs(s as u64));
    let limit = match (own, max_hold_age) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(limit.saturating_sub(held_for(status)))
}

/// Time until an unallocated ready node reaches its label's `maxReadyAge`, if it has one.
fn ready_age_left(node: &PoolNode, status: &PoolNodeStatus, ctx: &Context) -> Option<Duration> {
    let max_age = node
        .spec
        .labels
        .iter()
        .filter_map(|label| ctx.cached(&ctx.labels, label))
        .filter_map(|label| label.spec.max_ready_age.map(|age| age.0))
        .min()?;
    Some(max_age.saturating_sub(held_for(status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(seconds_ago: i64) -> PoolNodeStatus {
        let since = Timestamp::now() - jiff_span(seconds_ago);
        PoolNodeStatus { state: NodeState::Hold, state_time: Some(Time(since)), ..Default::default() }
    }

    fn jiff_span(seconds: i64) -> k8s_openapi::jiff::SignedDuration {
        k8s_openapi::jiff::SignedDuration::from_secs(seconds)
    }

    #[test]
    fn hold_limit_is_the_shorter_of_node_and_global() {
        let status = held(10);
        assert_eq!(hold_remaining(&status, None, None), None);
        assert_eq!(hold_remaining(&status, Some(0), None), None, "0 means no per-node limit");
        assert!(hold_remaining(&status, Some(5), None).unwrap().is_zero());
        let left = hold_remaining(&status, Some(100), Some(Duration::from_secs(30))).unwrap();
        assert!(left <= Duration::from_secs(20) && left >= Duration::from_secs(19), "{left:?}");
        let left = hold_remaining(&status, Some(15), Some(Duration::from_secs(300))).unwrap();
        assert!(left <= Duration::from_secs(5), "{left:?}");
    }
}
