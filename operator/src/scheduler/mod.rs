//! The scheduler: whenever requests, nodes or providers change, one pass decides on every open
//! request ([`plan`]) and starts writing the decisions. Each write carries the resourceVersion it
//! was based on, so a node is never handed out twice. The next pass need not wait for the writes:
//! it plans on the caches with the decisions still being written laid over them ([`overlay`]).
//! Only a pass that creates nodes waits until the caches show everything it wrote.

pub mod capacity;
mod overlay;
pub mod plan;
pub mod views;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Resource, ResourceExt};
use nodepool_crds::{
    NodeRequest, NodeRequestState, NodeRequestStatus, NodeState, PoolNode, PoolNodeSpec, PoolNodeStatus,
    ZNODE_FINALIZER,
    conditions::{self, WaitReason},
    labels as node_labels,
    pool_node::{Allocation, NodeResources},
};
use tracing::Instrument;

use crate::{
    context::Context,
    slots::{self, Registration},
    status,
};
use nodepool_service::{
    failpoint::{self, Failpoint},
    written::at_least,
};
use overlay::Overlay;
use plan::Decision;
use tokio::{sync::Semaphore, task::JoinSet};

/// Safety net only: passes are driven by changes, this bounds how long a missed wake could stall.
const IDLE_PASS: Duration = Duration::from_secs(30);

/// A request says why it waits (condition and Event) once it has waited this long: most waits
/// for a static slot or a launch are over sooner, and reporting each would cost two writes.
const REPORT_WAIT_AFTER: Duration = Duration::from_secs(2);
/// When a pass follows a decision whose writes failed, at the latest.
const RETRY_FAILED: Duration = Duration::from_secs(1);
/// How many of a pass's decisions are written at once.
const CONCURRENT_WRITES: usize = 16;
/// How many launch decisions one pass carries out at most (the first ones, in Nodepool's order).
const LAUNCHES_PER_PASS: usize = 64;

pub async fn run(ctx: Arc<Context>) -> Result<()> {
    ctx.caches_ready().await;
    tracing::info!("scheduler running");
    let mut overlay = Overlay::default();
    let mut in_flight: JoinSet<Finished> = JoinSet::new();
    let writers = Arc::new(Semaphore::new(CONCURRENT_WRITES));
    let mut back_since = BackFromUse::default();
    // The last request handed out: the next hand-out names it, and the bridge writes the two to
    // ZooKeeper in that order (`NodeRequestStatus::handed_out_after`). Decisions are written 16
    // at a time and the bridge writes outcomes side by side, so without it Zuul saw requests
    // decided together fulfilled in any order.
    let mut last_hand_out: Option<String> = None;
    loop {
        let started = std::time::Instant::now();
        overlay.settle(|name| ctx.cached(&ctx.nodes, name), |name| ctx.cached(&ctx.requests, name));
        let nodes = overlay.nodes(ctx.nodes.state());
        let back_for = back_since.update(&nodes);
        let requests = overlay.requests(ctx.requests.state());
        let mut tenants = capacity::tenant_budgets(&ctx.tenant_limits.state(), &nodes);
        let paused = |provider: &str, pool: &str| ctx.clouds.paused(provider, pool).map(|p| p.reason);
        let pools = views::pools(&ctx.providers.state(), &paused);
        let labels = ctx.labels.state();
        let world = plan::World {
            requests: &requests,
            nodes: &nodes,
            pools: &pools,
            labels: &labels,
            back_for: &back_for,
            now: Timestamp::now(),
        };
        let decisions = first_launches(plan::plan(&world, &mut tenants), LAUNCHES_PER_PASS);
        // This pass's decisions that create nodes, by task.
        let mut creating = HashSet::new();
        // At most CONCURRENT_WRITES decisions are written at once. With hundreds at once (a burst
        // of requests) they all finished together seconds later, and no new node could start
        // launching in between: the provider's rate limit sat idle while the apiserver worked
        // through the pile. A decision waiting for its turn holds its request and nodes already.
        let mut next_pass = tokio::time::Instant::now() + IDLE_PASS;
        for decision in decisions {
            if let Decision::KeepForReuse { after, .. } = &decision {
                next_pass = next_pass.min(tokio::time::Instant::now() + *after);
                continue;
            }
            // Most waits need no write: decided here, they hold nothing and take no turn.
            if let Decision::Wait { request, reason, message } = &decision {
                match wait_report(&ctx, request, *reason, message) {
                    WaitReport::Nothing => continue,
                    WaitReport::NotYet(after) => {
                        next_pass = next_pass.min(tokio::time::Instant::now() + after);
                        continue;
                    }
                    WaitReport::Due(_) => {}
                }
            }
            let held = hold(&ctx, &mut overlay, &decision);
            let after = match &decision {
                Decision::Assign { request, .. } => last_hand_out.replace(request.clone()),
                _ => None,
            };
            let span = decision_span(&decision);
            let creates = matches!(decision, Decision::Launch { .. } | Decision::LaunchSpare { .. });
            let (ctx, writers) = (ctx.clone(), writers.clone());
            let task = in_flight.spawn(
                async move {
                    let _turn = writers.acquire().await.expect("the semaphore is never closed");
                    Finished { outcome: apply_logged(&ctx, decision, after).await, held }
                }
                .instrument(span),
            );
            if creates {
                creating.insert(task.id());
            }
        }
        ctx.metrics.reconciles.record("scheduler", started.elapsed(), false);
        if !creating.is_empty() {
            // New nodes are not in the overlay: the next pass must see them in the cache, or it
            // would launch them again. So this pass ends only once its launches are cached. Other
            // decisions (a slot's key scan, say) are not waited for: a launch that fails at once
            // must be seen failed before its node is gone.
            let mut written = Vec::new();
            while !creating.is_empty() {
                let Some(joined) = in_flight.join_next_with_id().await else { break };
                let (task, finished) = joined.context("a scheduling task failed")?;
                let objects = finish(&ctx, &mut overlay, finished, &mut next_pass);
                if creating.remove(&task) {
                    written.extend(objects);
                }
            }
            wait_for_caches(&ctx, &written).await;
            continue;
        }
        // Next pass: when the caches change, when a write lands (what was written may let more
        // requests through), or when a waiting request is due to report why it waits.
        loop {
            tokio::select! {
                Some(finished) = in_flight.join_next() => {
                    let finished = finished.context("a scheduling task failed")?;
                    if !finish(&ctx, &mut overlay, finished, &mut next_pass).is_empty() {
                        break;
                    }
                }
                () = ctx.scheduler_wake.notified() => break,
                () = tokio::time::sleep_until(next_pass) => break,
            }
        }
    }
}

/// Since when each static slot back from use (by name) has been seen so, by this scheduler.
#[derive(Default)]
struct BackFromUse(HashMap<String, std::time::Instant>);

impl BackFromUse {
    /// Notes the slots back from use among `nodes` and forgets the others; returns how long
    /// each has been back.
    fn update(&mut self, nodes: &[Arc<PoolNode>]) -> HashMap<String, Duration> {
        let now = std::time::Instant::now();
        let back: HashSet<String> =
            nodes.iter().filter(|n| n.is_back_from_use()).map(|n| n.name_any()).collect();
        self.0.retain(|name, _| back.contains(name));
        back.into_iter()
            .map(|name| {
                let since = *self.0.entry(name.clone()).or_insert(now);
                (name, now - since)
            })
            .collect()
    }
}

/// A decision's writes, done.
struct Finished {
    /// `None` if it failed (logged).
    outcome: Option<Applied>,
    held: Held,
}

/// What a decision holds in the overlay while it is written.
struct Held {
    request: Option<String>,
    nodes: Vec<String>,
}

/// Lays what `decision` is about to write over the caches: its request is left out of the next
/// passes, and the nodes it hands out are shown allocated.
fn hold(ctx: &Context, overlay: &mut Overlay, decision: &Decision) -> Held {
    let request = match decision {
        Decision::Assign { request, .. }
        | Decision::Launch { request, .. }
        | Decision::Wait { request, .. }
        | Decision::Decline { request, .. }
        | Decision::Undo { request } => Some(request.clone()),
        Decision::LaunchSpare { .. } | Decision::Recycle { .. } | Decision::KeepForReuse { .. } => None,
    };
    let handed_out: &[String] = match decision {
        Decision::Assign { nodes, .. } => nodes,
        Decision::Launch { reuse, .. } => reuse,
        _ => &[],
    };
    let object = request.as_deref().and_then(|r| ctx.cached(&ctx.requests, r));
    let mut nodes = Vec::new();
    if let Some(object) = object {
        for name in handed_out {
            let Some(node) = ctx.cached(&ctx.nodes, name) else { continue };
            let mut intended = (*node).clone();
            let mut status = intended.status.clone().unwrap_or_default();
            if node.is_back_from_use() {
                status = slots::next_registration(&node, &status);
            }
            status.allocate(&object, None);
            intended.status = Some(status);
            overlay.hold_node(intended);
            nodes.push(name.clone());
        }
    }
    if let Decision::Recycle { node: name } = decision
        && let Some(node) = ctx.cached(&ctx.nodes, name)
    {
        // Shown in `init` until the cache shows it registered: not offered on a stale copy.
        let mut intended = (*node).clone();
        intended.status = Some(slots::next_registration(&node, &node.status.clone().unwrap_or_default()));
        overlay.hold_node(intended);
        nodes.push(name.clone());
    }
    if let Some(request) = &request {
        overlay.hold_request(request);
    }
    Held { request, nodes }
}

/// Records a finished decision's writes in the overlay and drops what it held but did not write.
/// Returns what it wrote.
fn finish(
    ctx: &Context,
    overlay: &mut Overlay,
    finished: Finished,
    next_pass: &mut tokio::time::Instant,
) -> Vec<Written> {
    let mut written = Vec::new();
    match finished.outcome {
        Some(Applied::Wrote(objects)) => written = objects,
        Some(Applied::Later(after)) => *next_pass = (*next_pass).min(tokio::time::Instant::now() + after),
        None => {
            ctx.metrics.reconciles.errors("scheduler", 1);
            // Decided again soon, though nothing may change in the caches.
            *next_pass = (*next_pass).min(tokio::time::Instant::now() + RETRY_FAILED);
        }
    }
    for object in &written {
        match object {
            Written::Node(node) => overlay.node_written((**node).clone()),
            Written::Request { name, version } => overlay.request_written(name, version.clone()),
            Written::Recycled { name, version } => overlay.keep_until_cached(name, version.clone()),
            Written::NewNode { .. } => {}
        }
    }
    overlay.abandon(finished.held.request.as_deref(), &finished.held.nodes);
    written
}

/// The decisions with at most `limit` launches: the first ones, in the plan's order. The rest
/// are decided again in the next pass, which follows at once. A short pass lets the nodes of
/// its launches start while later requests are still to be planned; passes of hundreds of
/// launches each (a burst of requests) left the provider's rate limit idle between them. Other
/// decisions are kept: they create nothing, and many are no-ops that must not crowd out work.
fn first_launches(decisions: Vec<Decision>, limit: usize) -> Vec<Decision> {
    let mut launches = 0;
    decisions
        .into_iter()
        .filter(|decision| {
            if !matches!(decision, Decision::Launch { .. } | Decision::LaunchSpare { .. }) {
                return true;
            }
            launches += 1;
            launches <= limit
        })
        .collect()
}

/// The span a decision is carried out in: the request it is about, or what a spare is for.
fn decision_span(decision: &Decision) -> tracing::Span {
    match decision {
        Decision::Assign { request, .. }
        | Decision::Launch { request, .. }
        | Decision::Wait { request, .. }
        | Decision::Decline { request, .. }
        | Decision::Undo { request } => tracing::info_span!("request", %request),
        Decision::LaunchSpare { provider, pool, label, .. } => {
            tracing::info_span!("spare", %provider, %pool, %label)
        }
        Decision::Recycle { node } | Decision::KeepForReuse { node, .. } => {
            tracing::info_span!("node", %node)
        }
    }
}

/// Applies a decision and logs its failure; `None` if it failed. A conflict only means the
/// cache was stale: the decision is made again next pass, and that is not a failure.
async fn apply_logged(ctx: &Context, decision: Decision, after: Option<String>) -> Option<Applied> {
    match apply(ctx, decision, after).await {
        Ok(applied) => Some(applied),
        Err(error) if status::is_conflict(&error) => {
            tracing::debug!(error = format!("{error:#}"), "stale cache; deciding again next pass");
            Some(Applied::Wrote(vec![]))
        }
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), "applying a scheduling decision failed");
            None
        }
    }
}

/// What applying a decision did.
enum Applied {
    Wrote(Vec<Written>),
    /// Nothing yet; the decision is to be made again after this long.
    Later(Duration),
}

impl From<Vec<Written>> for Applied {
    fn from(written: Vec<Written>) -> Self {
        Applied::Wrote(written)
    }
}

/// An object the scheduler wrote, and the resourceVersion the write produced.
enum Written {
    Node(Box<PoolNode>),
    /// A node created in this pass: the cache must show it before the next pass.
    NewNode {
        name: String,
        version: String,
    },
    /// A static slot registered afresh: offered once the cache shows this version.
    Recycled {
        name: String,
        version: String,
    },
    Request {
        name: String,
        version: String,
    },
}

/// Applies `decision`; a hand-out names the request handed out before it (`after`).
async fn apply(ctx: &Context, decision: Decision, after: Option<String>) -> Result<Applied> {
    let written = match decision {
        Decision::Assign { request, provider, pool, nodes } => {
            let hand_out = HandOut { request: &request, provider, pool, after };
            assign(ctx, hand_out, nodes).await?
        }
        Decision::Wait { request, reason, message } => {
            let object = match wait_report(ctx, &request, reason, &message) {
                WaitReport::Nothing => return Ok(vec![].into()),
                WaitReport::NotYet(after) => return Ok(Applied::Later(after)),
                WaitReport::Due(object) => object,
            };
            tracing::info!(%reason, %message, "request waits");
            let mut status = object.status.clone().unwrap_or_default();
            let generation = object.metadata.generation;
            conditions::set_condition(
                &mut status.conditions,
                conditions::condition(
                    conditions::types::WAITING,
                    true,
                    reason.as_str(),
                    message.clone(),
                    generation,
                ),
            );
            status.observed_generation = generation;
            let updated = status::apply_request_status(&ctx.api(), &object, &status).await?;
            ctx.event(&updated, false, reason.as_str(), message).await;
            vec![Written::Request { name: request, version: updated.resource_version().unwrap_or_default() }]
        }
        Decision::Launch { request, provider, pool, reuse, launch } => {
            launch_for_request(ctx, &request, provider, pool, reuse, launch).await?
        }
        Decision::LaunchSpare { provider, pool, label, resources, count, spares } => {
            let mut written = Vec::new();
            for _ in 0..count {
                let node = new_node(ctx, &provider, &pool, &label, resources.clone(), None).await?;
                tracing::info!(node = %node.name_any(), ?spares, "launching a spare node for min-ready");
                written.push(Written::NewNode {
                    name: node.name_any(),
                    version: node.resource_version().unwrap_or_default(),
                });
            }
            written
        }
        Decision::Recycle { node } => recycle(ctx, &node).await?,
        Decision::KeepForReuse { after, .. } => return Ok(Applied::Later(after)),
        Decision::Undo { request } => undo_stranded(ctx, &request).await?,
        Decision::Decline { request, pools, message, release } => {
            let Some(object) = ctx.cached(&ctx.requests, &request) else { return Ok(vec![].into()) };
            tracing::info!(%message, "declining request");
            let mut written = release_nodes(ctx, &release).await?;
            let mut status = object.status.clone().unwrap_or_default();
            status.state = NodeRequestState::Failed;
            status.state_time = Some(Time(Timestamp::now()));
            status.declined_by = pools;
            let generation = object.metadata.generation;
            conditions::set_condition(
                &mut status.conditions,
                conditions::condition(
                    conditions::types::WAITING,
                    false,
                    WaitReason::Declined.as_str(),
                    message.clone(),
                    generation,
                ),
            );
            let updated = status::apply_request_status(&ctx.api(), &object, &status).await?;
            ctx.event(&updated, true, WaitReason::Declined.as_str(), message).await;
            written.push(Written::Request {
                name: request,
                version: updated.resource_version().unwrap_or_default(),
            });
            written
        }
    };
    Ok(written.into())
}

/// Whether a waiting request is to say why it waits.
enum WaitReport {
    /// It says so already (or is gone).
    Nothing,
    /// Not before this long: most waits are over sooner.
    NotYet(Duration),
    Due(Arc<NodeRequest>),
}

fn wait_report(ctx: &Context, request: &str, reason: WaitReason, message: &str) -> WaitReport {
    let Some(object) = ctx.cached(&ctx.requests, request) else { return WaitReport::Nothing };
    let status = object.status.clone().unwrap_or_default();
    let current = conditions::find(&status.conditions, conditions::types::WAITING);
    if current.is_some_and(|c| c.status == "True" && c.reason == reason.as_str() && c.message == message) {
        return WaitReport::Nothing;
    }
    let waited = object
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|created| Timestamp::now().duration_since(created.0).try_into().ok())
        .unwrap_or(REPORT_WAIT_AFTER);
    if waited < REPORT_WAIT_AFTER && current.is_none_or(|c| c.status != "True") {
        return WaitReport::NotYet(REPORT_WAIT_AFTER - waited);
    }
    WaitReport::Due(object)
}

/// Allocates the nodes, then marks the request fulfilled. If any write fails the allocations
/// made so far are undone, so a node is never left reserved for a request that did not get it.
async fn assign(ctx: &Context, hand_out: HandOut<'_>, names: Vec<String>) -> Result<Vec<Written>> {
    let HandOut { request, provider, pool, after } = hand_out;
    let Some(object) = ctx.cached(&ctx.requests, request) else { return Ok(vec![]) };
    let mut written = Vec::new();
    // Static slots back from use get their next registration with the allocation, in one write.
    // Each with the copy it was based on: the write's resourceVersion then covers the registration.
    let mut registered: BTreeMap<&str, (Arc<PoolNode>, PoolNodeStatus)> = BTreeMap::new();
    for name in &names {
        let Some(node) = ctx.cached(&ctx.nodes, name).filter(|n| n.is_back_from_use()) else { continue };
        match register_afresh(ctx, &node).await? {
            Fresh::Ready(status) => {
                registered.insert(name, (node, *status));
            }
            Fresh::NotReady(mut not_ready) => {
                written.append(&mut not_ready);
                return Ok(written); // decided again next pass, without that node
            }
        }
    }
    // The others are checked as they are (the registration's key scan is the stronger check).
    let unchecked: Vec<String> =
        names.iter().filter(|n| !registered.contains_key(n.as_str())).cloned().collect();
    if !static_hosts_answer(ctx, &unchecked).await? {
        return Ok(vec![]); // decided again next pass, without the unreachable nodes
    }
    // Usually every node is allocated now (ready nodes, slots back from use): the allocations
    // and the request's `fulfilled` are then written at once, tied by an allocation id that
    // the bridge must see on each node before it tells Zuul. Nodes launched for the request
    // were allocated before: the request's status then follows their allocations.
    let allocation_id = uuid::Uuid::new_v4().simple().to_string();
    let mut allocations = Vec::with_capacity(names.len());
    for name in &names {
        let (node, mut status) = match registered.remove(name.as_str()) {
            Some(fresh) => fresh,
            None => {
                let node =
                    ctx.cached(&ctx.nodes, name).ok_or_else(|| anyhow::anyhow!("node {name} vanished"))?;
                let status = node.status.clone().unwrap_or_default();
                (node, status)
            }
        };
        if status.allocated_to.as_deref() == Some(object.spec.request_id.as_str()) {
            continue; // launched for this request
        }
        status.allocate(&object, Some(&allocation_id));
        allocations.push((node, status));
    }
    let together = allocations.len() == names.len();
    let mut fulfilled =
        fulfilled_status(&object, &provider, &pool, &names, together.then_some(allocation_id));
    fulfilled.handed_out_after = after;
    let allocate_all = futures::future::join_all(
        allocations.iter().map(|(node, status)| ctx.write_node_status(node, status)),
    );
    let requests = ctx.api();
    let fulfil = status::apply_request_status(&requests, &object, &fulfilled);
    let (allocated, fulfilled) = if together {
        tokio::join!(allocate_all, fulfil)
    } else {
        let allocated = allocate_all.await;
        let fulfilled = match allocated.iter().all(Result::is_ok) {
            true => fulfil.await,
            false => Err(anyhow::anyhow!("not written: an allocation failed")),
        };
        (allocated, fulfilled)
    };
    let mut failure = None;
    let mut nodes_written = Vec::new();
    for result in allocated {
        match result {
            Ok(updated) => nodes_written.push(updated),
            Err(error) => _ = failure.get_or_insert(error),
        }
    }
    let error = match (failure, fulfilled) {
        (None, Ok(updated)) => {
            written.extend(nodes_written.into_iter().map(|node| Written::Node(Box::new(node))));
            written.push(Written::Request {
                name: request.to_owned(),
                version: updated.resource_version().unwrap_or_default(),
            });
            failpoint::hit(Failpoint::OperatorHandOutWritten);
            tracing::info!(nodes = ?names, %provider, %pool, "request assigned");
            return Ok(written);
        }
        (Some(error), Ok(updated)) => {
            revert_fulfilled(ctx, &updated, &object).await;
            error
        }
        (Some(error), Err(_)) | (None, Err(error)) => error,
    };
    futures::future::join_all(nodes_written.into_iter().map(|node| undo_allocation(ctx, node))).await;
    Err(error)
}

/// Clears an allocation this hand-out wrote on a node, as long as the node still shows it: the
/// first try writes on the copy just written, later ones on a fresh read. A write that meets
/// a conflict (the bridge recorded Zuul's view in between) is tried again rather than leaving
/// the node reserved for a request it was never handed to until the stranded-hand-out check.
async fn undo_allocation(ctx: &Context, written: PoolNode) {
    let name = written.name_any();
    let Some(Allocation { request_id, id }) = written.allocation() else { return };
    let (request_id, id) = (request_id.to_owned(), id.to_owned());
    let first_copy = std::sync::Mutex::new(Some(written));
    let undo = || async {
        let copy = first_copy.lock().expect("undo copy lock").take();
        let node = match copy {
            Some(node) => node,
            None => match ctx.api::<PoolNode>().get_opt(&name).await? {
                Some(node) => node,
                None => return Ok(false), // gone
            },
        };
        if node.allocation() != Some(Allocation { request_id: &request_id, id: &id }) {
            return Ok(false); // changed since: not ours to clear any more
        }
        let mut status = node.status.clone().unwrap_or_default();
        status.release();
        ctx.write_node_status(&node, &status).await?;
        Ok::<_, anyhow::Error>(true)
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .with_max_times(10);
    match undo.retry(backoff).when(revert_retryable).await {
        Ok(true) => tracing::info!(node = %name, request = %request_id, "allocation undone"),
        Ok(false) => {
            tracing::info!(node = %name, request = %request_id, "allocation changed since; left as it is")
        }
        Err(error) => {
            tracing::error!(node = %name, error = format!("{error:#}"), "could not undo an allocation")
        }
    }
}

/// A request to be handed out, from which pool, and the request handed out before it.
struct HandOut<'a> {
    request: &'a str,
    provider: String,
    pool: String,
    after: Option<String>,
}

/// The status of a request fulfilled with `names` from `provider`/`pool`.
fn fulfilled_status(
    object: &NodeRequest,
    provider: &str,
    pool: &str,
    names: &[String],
    allocation_id: Option<String>,
) -> NodeRequestStatus {
    let mut status = object.status.clone().unwrap_or_default();
    status.state = NodeRequestState::Fulfilled;
    status.state_time = Some(Time(Timestamp::now()));
    status.provider = Some(provider.to_owned());
    status.pool = Some(pool.to_owned());
    status.nodes = names.to_vec();
    status.allocation_id = allocation_id;
    status.handed_out_after = None;
    status.observed_generation = object.metadata.generation;
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::types::WAITING,
            false,
            WaitReason::Fulfilled.as_str(),
            format!("nodes from {provider}/{pool}"),
            object.metadata.generation,
        ),
    );
    status
}

/// The longest wait between two tries of [`revert_fulfilled`].
const REVERT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Puts back the status `before` had, after a `fulfilled` written beside allocations of which
/// one failed. The bridge never acts on that `fulfilled` (no node shows its allocation id), and
/// once it is reverted the next pass decides on the request again. Zuul never gives up on a
/// request, so one left `fulfilled` would wait for ever: the revert is tried again, backing off
/// up to [`REVERT_BACKOFF_MAX`], until it lands, the request is gone or no longer carries this
/// hand-out's allocation id, or the apiserver refuses it for good (a 4xx other than a conflict
/// or throttling).
async fn revert_fulfilled(ctx: &Context, written: &NodeRequest, before: &NodeRequest) {
    let previous = before.status.clone().unwrap_or_default();
    let allocation_id = written.status.as_ref().and_then(|s| s.allocation_id.clone());
    let name = written.name_any();
    // The first try writes on the copy just written; later ones read the request afresh.
    let first_copy = std::sync::Mutex::new(Some(written.clone()));
    let revert = || async {
        let fresh = first_copy.lock().expect("revert copy lock").take();
        let current = match fresh {
            Some(current) => current,
            None => ctx.api::<NodeRequest>().get(&name).await?,
        };
        if current.status.as_ref().and_then(|s| s.allocation_id.as_ref()) != allocation_id.as_ref() {
            return Ok(Revert::Superseded);
        }
        status::apply_request_status(&ctx.api(), &current, &previous).await?;
        Ok::<_, anyhow::Error>(Revert::Done)
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(REVERT_BACKOFF_MAX)
        .with_jitter()
        .without_max_times();
    let outcome = revert
        .retry(backoff)
        .when(revert_retryable)
        .notify(|error, next| {
            tracing::warn!(
                error = format!("{error:#}"),
                ?next,
                "reverting a request's fulfilled status failed"
            );
        })
        .await;
    match outcome {
        Ok(Revert::Done) => {
            tracing::info!("an allocation failed; the request's fulfilled status is reverted")
        }
        Ok(Revert::Superseded) => tracing::info!("an allocation failed; the request has changed since"),
        Err(error) if status::api_code(&error) == Some(404) => {
            tracing::info!("an allocation failed; the request is gone")
        }
        Err(error) => tracing::error!(
            error = format!("{error:#}"),
            "could not revert a fulfilled status whose allocations failed; the request waits until Zuul withdraws it"
        ),
    }
}

/// Puts a stranded hand-out (see [`plan::STRANDED_AFTER`]) back to `requested`, once fresh
/// reads confirm it: the request still names the allocation, and none of its nodes shows it.
async fn undo_stranded(ctx: &Context, name: &str) -> Result<Vec<Written>> {
    let requests: kube::Api<NodeRequest> = ctx.api();
    let Some(request) = requests.get_opt(name).await? else { return Ok(vec![]) };
    let Some(allocation) = request.handed_out_allocation() else { return Ok(vec![]) };
    let allocation_id = allocation.id.to_owned();
    let status = request.status.clone().unwrap_or_default();
    let nodes: kube::Api<PoolNode> = ctx.api();
    for node in &status.nodes {
        let fresh = nodes.get_opt(node).await?;
        if fresh.as_ref().and_then(|n| n.allocation()) == Some(allocation) {
            return Ok(vec![]); // the cache was behind
        }
    }
    tracing::warn!(
        nodes = ?status.nodes,
        %allocation_id,
        "fulfilled, but none of its nodes shows the allocation (an operator stopped before undoing a failed hand-out); deciding on the request again"
    );
    let mut requested = status;
    requested.state = NodeRequestState::Requested;
    requested.state_time = Some(Time(Timestamp::now()));
    requested.provider = None;
    requested.pool = None;
    requested.allocation_id = None;
    requested.handed_out_after = None;
    conditions::set_condition(
        &mut requested.conditions,
        conditions::condition(
            conditions::types::WAITING,
            true,
            WaitReason::HandOutUndone.as_str(),
            format!("none of {:?} was allocated to it; deciding again", requested.nodes),
            request.metadata.generation,
        ),
    );
    requested.nodes.clear();
    let updated = status::apply_request_status(&requests, &request, &requested).await?;
    Ok(vec![Written::Request {
        name: name.to_owned(),
        version: updated.resource_version().unwrap_or_default(),
    }])
}

/// How [`revert_fulfilled`] ended.
enum Revert {
    Done,
    /// Something else wrote the request's status meanwhile: there is nothing of ours to undo.
    Superseded,
}

/// Whether a failed revert is worth another try: anything but a refusal that another try would
/// meet again (the request is gone, or the apiserver rejects the write itself).
fn revert_retryable(error: &anyhow::Error) -> bool {
    match status::api_code(error) {
        Some(409 | 429) | None => true,
        Some(code) => code >= 500,
    }
}

/// A static slot back from use, registered afresh (nothing written yet), or why not.
enum Fresh {
    Ready(Box<PoolNodeStatus>),
    /// Its host does not answer (written: the slot waits in `init`) or is gone (the node is
    /// deleted).
    NotReady(Vec<Written>),
}

/// Starts a static slot's next registration: a new node to Zuul, as Nodepool does after use.
async fn register_afresh(ctx: &Context, node: &PoolNode) -> Result<Fresh> {
    let status = slots::next_registration(node, &node.status.clone().unwrap_or_default());
    match slots::register(node, status, ctx).await {
        Registration::Ready(status) => Ok(Fresh::Ready(Box::new(status))),
        Registration::Unreachable(status) => {
            let updated = ctx.write_node_status(node, &status).await?;
            let version = updated.resource_version().unwrap_or_default();
            Ok(Fresh::NotReady(vec![Written::Recycled { name: node.name_any(), version }]))
        }
        Registration::HostGone => {
            tracing::info!(node = %node.name_any(), "host no longer configured; deleting the node");
            delete_node(ctx, node).await?;
            Ok(Fresh::NotReady(vec![]))
        }
        Registration::NotStatic => Ok(Fresh::NotReady(vec![])),
    }
}

/// Registers a static slot back from use afresh, for the requests to come.
async fn recycle(ctx: &Context, name: &str) -> Result<Vec<Written>> {
    let Some(node) = ctx.cached(&ctx.nodes, name).filter(|n| n.is_back_from_use()) else {
        return Ok(vec![]);
    };
    match register_afresh(ctx, &node).await? {
        Fresh::Ready(status) => {
            let updated = ctx.write_node_status(&node, &status).await?;
            failpoint::hit(Failpoint::OperatorSlotRecycled);
            Ok(vec![Written::Recycled {
                name: name.to_owned(),
                version: updated.resource_version().unwrap_or_default(),
            }])
        }
        Fresh::NotReady(written) => Ok(written),
    }
}

async fn delete_node(ctx: &Context, node: &PoolNode) -> Result<()> {
    let api: kube::Api<PoolNode> = ctx.api();
    match api.delete(&node.name_any(), &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Checks, just before hand-out, that the static hosts among `names` still answer (when their
/// host keys are checked; Nodepool does no liveness check without). A node whose host does not
/// answer is taken out: deleted, so its slot is registered again, and handed out, only once the
/// host answers a key scan again.
async fn static_hosts_answer(ctx: &Context, names: &[String]) -> Result<bool> {
    let checks = names.iter().filter_map(|name| {
        let node = ctx.cached(&ctx.nodes, name)?;
        let slot = node.spec.static_host.clone()?;
        let provider = ctx.provider(&node.spec.provider)?;
        let host = nodepool_drivers::of(&provider).ok()?.slot_host(&provider, &node.spec.pool, &slot.host)?;
        if !host.scans_keys() {
            return None;
        }
        Some(async move {
            let result =
                nodepool_driver::keyscan::check_reachable(&slot.host, host.port(), HAND_OUT_CHECK).await;
            (node, result)
        })
    });
    let mut all_answer = true;
    for (node, result) in futures::future::join_all(checks).await {
        if let Err(error) = result {
            all_answer = false;
            tracing::warn!(node = %node.name_any(), %error, "static host does not answer; taking its node out");
            delete_node(ctx, &node).await?;
        }
    }
    Ok(all_answer)
}

/// Accepts a request for a cloud pool: `pending` first (the bridge then holds the request lock),
/// then the free nodes are allocated and the missing ones created, allocated to it.
async fn launch_for_request(
    ctx: &Context,
    request: &str,
    provider: String,
    pool: String,
    reuse: Vec<String>,
    launch: Vec<(String, NodeResources)>,
) -> Result<Vec<Written>> {
    let Some(object) = ctx.cached(&ctx.requests, request) else { return Ok(vec![]) };
    let mut written = Vec::new();
    let mut status = object.status.clone().unwrap_or_default();
    if status.state != NodeRequestState::Pending {
        status.state = NodeRequestState::Pending;
        status.state_time = Some(Time(Timestamp::now()));
        status.provider = Some(provider.clone());
        status.pool = Some(pool.clone());
        status.observed_generation = object.metadata.generation;
        let labels: Vec<&str> = launch.iter().map(|(l, _)| l.as_str()).collect();
        conditions::set_condition(
            &mut status.conditions,
            conditions::condition(
                conditions::types::WAITING,
                true,
                WaitReason::Launching.as_str(),
                format!("launching {labels:?} in {provider}/{pool}"),
                object.metadata.generation,
            ),
        );
        let updated = status::apply_request_status(&ctx.api(), &object, &status).await?;
        written.push(Written::Request {
            name: request.to_owned(),
            version: updated.resource_version().unwrap_or_default(),
        });
    }
    for name in &reuse {
        let Some(node) = ctx.cached(&ctx.nodes, name) else { continue };
        let mut node_status = node.status.clone().unwrap_or_default();
        node_status.allocate(&object, None);
        let updated = ctx.write_node_status(&node, &node_status).await?;
        written.push(Written::Node(Box::new(updated)));
    }
    for (label, resources) in launch {
        let node = new_node(ctx, &provider, &pool, &label, resources, Some(&object)).await?;
        tracing::info!(node = %node.name_any(), %provider, %pool, %label, "launching node");
        written.push(Written::NewNode {
            name: node.name_any(),
            version: node.resource_version().unwrap_or_default(),
        });
    }
    Ok(written)
}

/// Creates a cloud node in `init`, allocated to `request` if given; the PoolNode controller
/// launches it. Its footprint is recorded at once so quota counts it from the start.
async fn new_node(
    ctx: &Context,
    provider: &str,
    pool: &str,
    label: &str,
    resources: NodeResources,
    request: Option<&NodeRequest>,
) -> Result<PoolNode> {
    let api: kube::Api<PoolNode> = ctx.api();
    let mut node = PoolNode::new(
        "",
        PoolNodeSpec {
            provider: provider.to_owned(),
            pool: pool.to_owned(),
            labels: vec![label.to_owned()],
            static_host: None,
            hold: None,
            delete: false,
        },
    );
    node.metadata.name = None;
    // Short names: they become instance names (GCE allows 63 characters).
    let prefix: String = provider.chars().take(40).collect();
    node.metadata.generate_name = Some(format!("{}-", prefix.trim_end_matches('-')));
    node.metadata.labels = Some(BTreeMap::from([
        (node_labels::PROVIDER.to_owned(), provider.to_owned()),
        (node_labels::POOL.to_owned(), pool.to_owned()),
    ]));
    if let Some(owner) = ctx.provider(provider).and_then(|p| p.controller_owner_ref(&())) {
        node.metadata.owner_references = Some(vec![owner]);
    }
    node.metadata.finalizers = Some(vec![ZNODE_FINALIZER.to_owned()]);
    let created = api.create(&status::create_params(), &node).await.context("creating a PoolNode")?;
    ctx.launches.created(&created.name_any());
    let mut status = PoolNodeStatus {
        state: NodeState::Init,
        state_time: Some(Time(Timestamp::now())),
        resources: Some(resources),
        ..Default::default()
    };
    if let Some(request) = request {
        status.allocate(request, None);
    }
    match status::apply_new_node_status(&api, &created.name_any(), &status).await {
        Ok(updated) => {
            ctx.node_writes.record(&updated);
            Ok(updated)
        }
        Err(error) => {
            // Without its allocation the node would launch unasked for; take it back.
            let _ = api.delete(&created.name_any(), &Default::default()).await;
            Err(error)
        }
    }
}

/// Clears the allocation of nodes a declined request no longer needs.
async fn release_nodes(ctx: &Context, names: &[String]) -> Result<Vec<Written>> {
    let mut written = Vec::new();
    for name in names {
        let Some(node) = ctx.cached(&ctx.nodes, name) else { continue };
        let mut status = node.status.clone().unwrap_or_default();
        status.release();
        let updated = ctx.write_node_status(&node, &status).await?;
        written.push(Written::Node(Box::new(updated)));
    }
    Ok(written)
}

/// How long a host may take to accept a connection at hand-out.
const HAND_OUT_CHECK: Duration = Duration::from_secs(2);

/// Waits until the caches show every write of the last pass.
async fn wait_for_caches(ctx: &Context, written: &[Written]) {
    let caught_up = || {
        written.iter().all(|object| match object {
            Written::Node(node) => ctx.cached(&ctx.nodes, &node.name_any()).is_none_or(|n| {
                at_least(n.resource_version().as_deref(), &node.resource_version().unwrap_or_default())
            }),
            Written::Recycled { name, version } => ctx
                .cached(&ctx.nodes, name)
                .is_none_or(|n| at_least(n.resource_version().as_deref(), version)),
            Written::NewNode { name, version } => match ctx.cached(&ctx.nodes, name) {
                Some(node) => at_least(node.resource_version().as_deref(), version),
                // Deleted again already (a launch that failed at once): waiting for it to
                // show would stall every request for the whole catch-up time.
                None => ctx.nodes_watched.passed(version),
            },
            Written::Request { name, version } => ctx
                .cached(&ctx.requests, name)
                .is_none_or(|r| at_least(r.resource_version().as_deref(), version)),
        })
    };
    if !ctx.until_cached(caught_up).await {
        tracing::warn!(
            writes = written.len(),
            "caches did not show the last pass's writes in time; planning anyway"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revert_is_tried_again_unless_another_try_would_be_refused_the_same() {
        let refused = |code| {
            let status = kube::core::Status { code, ..kube::core::Status::failure("refused", "Test") };
            anyhow::Error::new(kube::Error::Api(Box::new(status)))
        };
        for code in [409, 429, 500, 503] {
            assert!(revert_retryable(&refused(code)), "{code}");
        }
        for code in [400, 403, 404, 422] {
            assert!(!revert_retryable(&refused(code)), "{code}");
        }
        assert!(revert_retryable(&anyhow::anyhow!("connection reset")));
        assert_eq!(status::api_code(&refused(404).context("reverting")), Some(404));
    }

    fn launch(request: &str) -> Decision {
        Decision::Launch {
            request: request.into(),
            provider: "p".into(),
            pool: "main".into(),
            reuse: vec![],
            launch: vec![("label".into(), NodeResources::default())],
        }
    }

    fn wait(request: &str) -> Decision {
        Decision::Wait { request: request.into(), reason: WaitReason::AtQuota, message: String::new() }
    }

    fn request_of(decision: &Decision) -> &str {
        match decision {
            Decision::Launch { request, .. } | Decision::Wait { request, .. } => request,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_pass_keeps_the_first_launches_and_every_other_decision() {
        let decisions = vec![wait("w1"), launch("l1"), wait("w2"), launch("l2"), launch("l3"), wait("w3")];
        let kept: Vec<_> = first_launches(decisions, 2).iter().map(request_of).map(str::to_owned).collect();
        assert_eq!(kept, ["w1", "l1", "w2", "l2", "w3"]);
    }
}
