//! Requests: `/nodepool/requests/<id>` is mirrored into a `NodeRequest` (spec, bridge-owned) and
//! the operator's outcome (status) is written back under the request lock (zk-protocol.md §3.1,
//! §4.2, §6.4, §6.5).

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use nodepool_crds::{
    BRIDGE_MANAGER, NodeRequest, NodeRequestState, PoolNode, RequestZooKeeperView,
    node_request::{NodeRequestSpec, OtherLauncherPool, RequestOrder},
};
use nodepool_service::failpoint::{self, Failpoint};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::{
    components,
    metrics::Outcome,
    nodes::{self, SyncOutcome},
    shared::Shared,
    zk::{model::RequestDoc, paths},
};

/// Errors a reconcile reports to the controller (which retries).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Error(#[from] anyhow::Error);

/// A request open for our pools, as read from ZooKeeper.
struct OpenRequest {
    id: String,
    doc: RequestDoc,
    /// Our pool-component ids.
    ours: Vec<String>,
}

impl OpenRequest {
    fn order(&self) -> RequestOrder<'_> {
        RequestOrder::new(&self.id, self.doc.relative_priority)
    }
}

/// Reads request `id` and returns it if our pools are to serve it: `requested`, not declined by
/// every pool of ours. A withdrawn request is forgotten, a malformed one failed.
async fn read_open(shared: &Arc<Shared>, id: &str) -> Result<Option<OpenRequest>> {
    let data = match shared.zk.get_data(&paths::request(id)).await {
        Ok((data, _)) => data,
        Err(zookeeper_client::Error::NoNode) => return withdrawn(shared, id).await.map(|()| None),
        Err(error) => return Err(error).context("reading the request"),
    };
    let doc = match RequestDoc::parse(&data) {
        Ok(doc) => doc,
        Err(error) => return fail_malformed(shared, id, &error.to_string(), data.len()).await.map(|()| None),
    };
    if doc.state != NodeRequestState::Requested {
        return Ok(None);
    }
    let ours = shared.registry.lock().await.ids();
    if ours.is_empty() || ours.iter().all(|pool| doc.declined_by.contains(pool)) {
        return Ok(None); // we serve nothing yet, or every pool of ours declined it
    }
    if doc.node_types.is_empty() {
        return fail_malformed(shared, id, "node_types is empty", data.len()).await.map(|()| None);
    }
    Ok(Some(OpenRequest { id: id.to_owned(), doc, ours }))
}

/// The NodeRequest spec of an open request.
async fn spec_of(shared: &Shared, request: &OpenRequest) -> Result<NodeRequestSpec> {
    let doc = &request.doc;
    Ok(NodeRequestSpec {
        request_id: request.id.clone(),
        labels: doc.node_types.clone(),
        relative_priority: doc.relative_priority,
        requestor: doc.requestor.clone(),
        tenant: doc.tenant_name.clone(),
        preferred_provider: doc.provider.clone(),
        reuse: doc.reuse,
        event_id: doc.event_id.clone(),
        other_launchers: other_launchers(shared, &request.ours, doc).await?,
    })
}

/// How long a change of a request this session has just mirrored waits for its NodeRequest to
/// reach the cache (the change is applied to it then).
const MIRROR_CACHE_LAG: Duration = Duration::from_secs(2);

/// A change of `/nodepool/requests/<id>` (or the resync at session start). A new request is
/// left to [`mirror_new_requests`], which creates NodeRequests in Nodepool's order; a change
/// of one already mirrored (its relative priority, or which other launchers could serve it) is
/// applied to its NodeRequest.
#[tracing::instrument(name = "request", skip_all, fields(request = %id))]
pub async fn on_request_event(shared: &Arc<Shared>, id: &str) -> Result<()> {
    if shared.cached_request(id).is_none() && !shared.mirrored_requests.contains(id) {
        shared.new_request_hints.lock().expect("new request hints lock").insert(id.to_owned());
        shared.mirror_wanted.notify_one();
        return Ok(());
    }
    let Some(request) = read_open(shared, id).await? else { return Ok(()) };
    let existing = match shared.cached_request(id) {
        Some(existing) => existing,
        None => {
            let cached = || shared.cached_request(id).is_some();
            nodepool_service::written::until_cached(MIRROR_CACHE_LAG, cached).await;
            let Some(existing) = shared.cached_request(id) else { return Ok(()) };
            existing
        }
    };
    let spec = spec_of(shared, &request).await?;
    if existing.spec.relative_priority == spec.relative_priority
        && existing.spec.other_launchers == spec.other_launchers
    {
        return Ok(());
    }
    mirror(shared, id, spec, false).await.with_context(|| format!("updating request {id}"))?;
    tracing::info!(relative_priority = request.doc.relative_priority, "updated request");
    Ok(())
}

/// Creates the NodeRequests of new requests, whenever [`on_request_event`] finds one, until the
/// session ends. Each round lists what ZooKeeper holds and mirrors every request not mirrored
/// yet, one after the other in Nodepool's order, so the scheduler never sees a request without
/// the better ones that were in ZooKeeper with it. Created side by side, as each request's
/// event came, a burst (after a restart, a reconnect, a pause, or just at once) reached the
/// scheduler in any order, and Zuul's own `test_node_request_priority` saw the worse request
/// fulfilled first.
pub async fn mirror_new_requests(shared: Arc<Shared>) -> Result<()> {
    shared.until_resynced().await;
    loop {
        match mirror_round(&shared).await {
            Ok(Round::Done) => shared.mirror_wanted.notified().await,
            Ok(Round::SomeFailed) => tokio::time::sleep(MIRROR_RETRY).await,
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "mirroring new requests failed; trying again");
                tokio::time::sleep(MIRROR_RETRY).await;
            }
        }
    }
}

/// When a round that could not mirror every new request is tried again.
const MIRROR_RETRY: Duration = Duration::from_secs(1);

/// How a round of [`mirror_new_requests`] ended.
enum Round {
    Done,
    /// A request could not be mirrored (the apiserver failed): the next round tries again.
    SomeFailed,
}

/// One round of [`mirror_new_requests`]: the new requests, created in Nodepool's order.
async fn mirror_round(shared: &Arc<Shared>) -> Result<Round> {
    let (mut open, mut round) = read_new_requests(shared).await?;
    open.sort_by(|a, b| a.order().cmp(&b.order()));
    for request in open {
        let span = tracing::info_span!("request", request = %request.id);
        let Err(error) = mirror_new(shared, &request).instrument(span.clone()).await else { continue };
        if crate::api_code(&error) == Some(422) {
            // Not a NodeRequest the apiserver accepts (more labels than it allows, say): the
            // request cannot be served, and is failed as Nodepool fails a request it cannot read.
            let problem = format!("{error:#}");
            fail_malformed(shared, &request.id, &problem, problem.len()).instrument(span).await?;
        } else {
            span.in_scope(|| {
                tracing::warn!(error = format!("{error:#}"), "mirroring a new request failed; trying again")
            });
            round = Round::SomeFailed;
        }
    }
    Ok(round)
}

/// Every request in ZooKeeper without a NodeRequest yet that our pools are to serve, and
/// whether one could not be read (the next round reads it again).
async fn read_new_requests(shared: &Arc<Shared>) -> Result<(Vec<OpenRequest>, Round)> {
    // The requests whose events woke us are read while the others are listed: in the usual case
    // (one new request) the round costs one round trip before the create, as a mirror without
    // the listing did.
    let hints: Vec<String> =
        std::mem::take(&mut *shared.new_request_hints.lock().expect("new request hints lock"))
            .into_iter()
            .collect();
    let (ids, hinted) = tokio::join!(
        shared.zk.list_children(paths::REQUESTS),
        futures::future::join_all(hints.iter().map(|id| read_open(shared, id))),
    );
    let ids = ids.context("listing requests")?;
    let mut already_read: std::collections::HashMap<String, Result<Option<OpenRequest>>> =
        hints.into_iter().zip(hinted).collect();
    let new: Vec<String> = ids
        .into_iter()
        .filter(|id| {
            shared.cached_request(id).is_none()
                && !shared.mirrored_requests.contains(id)
                && !shared.withdrawn_requests.contains(id)
        })
        .collect();
    let mut reads = Vec::with_capacity(new.len());
    let mut to_read = Vec::new();
    for id in new {
        match already_read.remove(&id) {
            Some(read) => reads.push((id, read)),
            None => to_read.push(id),
        }
    }
    let more = futures::future::join_all(to_read.iter().map(|id| read_open(shared, id))).await;
    reads.extend(to_read.into_iter().zip(more));
    let mut open = Vec::with_capacity(reads.len());
    let mut round = Round::Done;
    for (id, read) in reads {
        match read {
            Ok(Some(request)) => open.push(request),
            Ok(None) => {}
            Err(error) => {
                // Nothing else may bring it back (its event is spent): the next round does.
                tracing::warn!(request = %id, error = format!("{error:#}"), "reading a new request failed");
                round = Round::SomeFailed;
            }
        }
    }
    Ok((open, round))
}

/// Creates the NodeRequest of a new request.
async fn mirror_new(shared: &Arc<Shared>, request: &OpenRequest) -> Result<()> {
    let id = &request.id;
    let spec = spec_of(shared, request).await?;
    // The lock directory is made beside the mirror: the lock that writes the request's outcome
    // then costs no round trip to make it (Nodepool's launchers lock every request they see, so
    // the directory would exist anyway; the cleanup removes it once the request is gone).
    let (mirrored, ()) = tokio::join!(mirror(shared, id, spec, true), make_lock_dir(shared, id));
    mirrored.with_context(|| format!("mirroring request {id}"))?;
    shared.mirrored_requests.insert(id);
    shared.metrics.request_mirrored(request.doc.created_time);
    let age_ms = crate::metrics::age_ms(request.doc.created_time);
    tracing::info!(labels = ?request.doc.node_types, age_ms, relative_priority = request.doc.relative_priority, "mirrored request");
    Ok(())
}

/// Writes the NodeRequest's spec as the bridge. A new request is created outright: an apply
/// that creates reads the object from etcd first, which cost ~12 ms of the ~30 ms a mirror took
/// under load, on the path of every request. The bridge still owns every field it sets (the
/// create names it as field manager); later changes are applied.
async fn mirror(shared: &Shared, id: &str, spec: NodeRequestSpec, new: bool) -> kube::Result<()> {
    let api = shared.node_request_api();
    if new {
        let request = NodeRequest::new(id, spec.clone());
        let params = PostParams { field_manager: Some(BRIDGE_MANAGER.to_owned()), ..Default::default() };
        match api.create(&params, &request).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {} // there already; our cache lags
            Err(error) => return Err(error),
        }
    }
    let body = json!({
        "apiVersion": "nodepool.dev/v1alpha1", "kind": "NodeRequest",
        "metadata": {"name": id}, "spec": spec,
    });
    api.patch(id, &PatchParams::apply(BRIDGE_MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

/// Makes a new request's lock directory (see [`mirror_new`]). A failure only costs the lock
/// that round trip later.
async fn make_lock_dir(shared: &Shared, id: &str) {
    if let Err(error) = crate::zk::ensure_path(&shared.zk, &paths::request_lock(id)).await {
        tracing::debug!(error = format!("{error:#}"), "making the request's lock directory");
    }
}

/// Other launchers' pools that could take the request (Nodepool's candidate pools, §6.3): they
/// support all its labels, are not paused and have not declined it.
async fn other_launchers(
    shared: &Shared,
    ours: &[String],
    request: &RequestDoc,
) -> Result<Vec<OtherLauncherPool>> {
    let mut pools: Vec<OtherLauncherPool> = shared
        .registered_components()
        .await?
        .into_iter()
        .filter(|c| !ours.contains(&c.id) && !request.declined_by.contains(&c.id) && !c.paused)
        .filter(|c| request.node_types.iter().all(|label| c.supported_labels.contains(label)))
        .map(|c| OtherLauncherPool { id: c.id, provider: c.provider_name, priority: c.priority })
        .collect();
    pools.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(pools)
}

/// Deletes the NodeRequest of every request Zuul withdrew while this bridge was not looking (it
/// was down, or its session ended): `present` is what ZooKeeper listed. A NodeRequest left
/// behind stayed `fulfilled` for a request Zuul had deleted; its nodes' allocation was undone
/// after 30 s and the scheduler handed the ghost request other nodes, which nothing released
/// (a static pool ran dry under a kill loop). Each absence is confirmed by a fresh look, as a
/// request created after the listing may have been mirrored meanwhile.
pub async fn forget_withdrawn(
    shared: &Arc<Shared>,
    present: &std::collections::HashSet<String>,
) -> Result<()> {
    for request in shared.node_requests.state() {
        let id = request.spec.request_id.as_str();
        if present.contains(id) || request.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if shared.zk.check_stat(&paths::request(id)).await?.is_none() {
            withdrawn(shared, id).instrument(tracing::info_span!("request", request = %id)).await?;
        }
    }
    Ok(())
}

/// The requester deleted its request: release what we hold and forget it.
async fn withdrawn(shared: &Arc<Shared>, id: &str) -> Result<()> {
    if let Some(lock) = shared.request_locks.lock().await.remove(id) {
        shared.unlock(lock).await;
    }
    if shared.withdrawn_requests.contains(id) {
        return Ok(());
    }
    record_zuuls_view_of_nodes(shared, id).await?;
    match shared.node_request_api().delete(id, &DeleteParams::default()).await {
        Ok(_) => tracing::info!("request withdrawn"),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            tracing::debug!("request withdrawn; its NodeRequest was already gone")
        }
        Err(error) => return Err(error).context("deleting a withdrawn NodeRequest"),
    }
    shared.withdrawn_requests.insert(id);
    shared.fulfilled_requests.remove(id);
    shared.pending_requests.remove(id);
    Ok(())
}

/// Records what ZooKeeper shows now of the nodes allocated to request `id` (Zuul's lock, its
/// `in-use` or `used`) before the NodeRequest goes. The operator releases a node of a gone
/// request that shows no sign of Zuul, and Zuul locks a request's nodes before it deletes the
/// request; but it may lock, use and return a node within milliseconds, before that node's own
/// events reach us under load. Without this, such a node was released, handed to another
/// request, and then deleted as used (found by the AWS quota test under `make test`).
async fn record_zuuls_view_of_nodes(shared: &Arc<Shared>, id: &str) -> Result<()> {
    let allocated: Vec<Arc<PoolNode>> = shared
        .pool_nodes
        .state()
        .into_iter()
        .filter(|n| n.status.as_ref().and_then(|s| s.allocated_to.as_deref()) == Some(id))
        // A static slot is recycled under a new registration as soon as Zuul returns it; a view
        // read here could land after that and describe the old one (seen in the ZooKeeper
        // restart test). Slots come back through their own events.
        .filter(|n| n.spec.static_host.is_none())
        .collect();
    for node in allocated {
        let recorded = node.status.as_ref().and_then(|s| s.zuul_view()).and_then(|v| v.node_id.clone());
        let known = node
            .uid()
            .and_then(|uid| shared.znodes_by_uid.lock().unwrap().get(&uid).map(|k| k.node_id.clone()));
        // Only a znode that is there: one that is gone is the node events' business (a missing
        // znode read here would register the node again).
        let Some(node_id) = recorded.or(known) else { continue };
        if shared.zk.check_stat(&paths::node(&node_id)).await?.is_some() {
            let pause = Some(nodepool_service::failpoint::Pause::BridgeWithdrawalNodeRead);
            crate::nodes::record_zuuls_view(shared, &node_id, pause).await?;
        }
    }
    Ok(())
}

/// A request we cannot read: log it, and fail it if it is a JSON object we can write back.
async fn fail_malformed(shared: &Arc<Shared>, id: &str, problem: &str, size: usize) -> Result<()> {
    let problem = crate::zk::model::log_excerpt(problem);
    tracing::error!(request = %id, %problem, size, "malformed node request");
    shared.metrics.malformed("request");
    let path = paths::request(id);
    let Some(lock) = shared.try_lock(&paths::request_lock(id)).await? else { return Ok(()) };
    let result = async {
        let (data, _) = shared.zk.get_data(&path).await?;
        let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(&data) else {
            return Ok(()); // not even an object: nothing sensible to write
        };
        if doc.get("state").and_then(Value::as_str) != Some(NodeRequestState::Requested.as_str()) {
            return Ok(());
        }
        let mut declined: Vec<Value> =
            doc.get("declined_by").and_then(Value::as_array).cloned().unwrap_or_default();
        for pool in shared.registry.lock().await.ids() {
            if !declined.contains(&Value::String(pool.clone())) {
                declined.push(Value::String(pool));
            }
        }
        doc.insert("declined_by".into(), Value::Array(declined));
        // Zuul's cache reads these keys on every request; give them Nodepool's defaults.
        for (key, default) in [
            ("node_types", json!([])),
            ("nodes", json!([])),
            ("requestor", Value::Null),
            ("requestor_data", Value::Null),
            ("provider", Value::Null),
            ("event_id", Value::Null),
        ] {
            doc.entry(key).or_insert(default);
        }
        doc.insert("state".into(), json!(NodeRequestState::Failed.as_str()));
        doc.insert("state_time".into(), json!(crate::zk::model::now()));
        shared.zk.set_data(&path, &serde_json::to_vec(&doc)?, None).await?;
        tracing::warn!("failed a malformed request");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    shared.unlock(lock).await;
    match result {
        Err(error) if matches!(error.downcast_ref(), Some(zookeeper_client::Error::NoNode)) => Ok(()),
        other => other,
    }
}

/// Writes the operator's outcome for a `NodeRequest` back to ZooKeeper.
pub async fn reconcile(request: Arc<NodeRequest>, shared: Arc<Shared>) -> Result<Action, Error> {
    shared.until_resynced().await;
    let span = nodepool_service::logging::request_span(&request);
    reconcile_request(request, shared).instrument(span).await
}

async fn reconcile_request(request: Arc<NodeRequest>, shared: Arc<Shared>) -> Result<Action, Error> {
    let id = request.spec.request_id.clone();
    let status = request.status.clone().unwrap_or_default();
    let written = status.zookeeper.as_ref().and_then(|z| z.state);
    let action = match status.state {
        NodeRequestState::Fulfilled
            if written != Some(NodeRequestState::Fulfilled) && !shared.fulfilled_requests.contains(&id) =>
        {
            write_fulfilled(&shared, &request, &id, &status.nodes).await?
        }
        NodeRequestState::Failed
            if !matches!(written, Some(NodeRequestState::Failed | NodeRequestState::Requested)) =>
        {
            write_declined(&shared, &request, &id).await?
        }
        NodeRequestState::Pending if written.is_none() && !shared.pending_requests.contains(&id) => {
            write_pending(&shared, &id).await?
        }
        _ => Action::await_change(),
    };
    Ok(action)
}

pub fn error_policy(request: Arc<NodeRequest>, error: &Error, _: Arc<Shared>) -> Action {
    let _span = nodepool_service::logging::request_span(&request).entered();
    if crate::is_conflict(&error.0) {
        return Action::requeue(Duration::from_millis(50));
    }
    tracing::warn!(%error, "writing a request outcome failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

const RETRY_SOON: Duration = Duration::from_millis(50);

/// Our lock on a request.
struct RequestLock {
    lock: crate::zk::lock::Lock,
    /// Held since the request was made `pending` (kept until its outcome is written).
    since_pending: bool,
}

/// Our lock on the request: the one held since `pending`, or a fresh non-blocking one.
async fn take_lock(shared: &Shared, id: &str) -> Result<Option<RequestLock>> {
    if let Some(lock) = shared.request_locks.lock().await.remove(id) {
        return Ok(Some(RequestLock { lock, since_pending: true }));
    }
    let lock = shared.try_lock(&paths::request_lock(id)).await?;
    Ok(lock.map(|lock| RequestLock { lock, since_pending: false }))
}

/// Gives up a lock without writing: one held since `pending` is kept for the next attempt.
async fn put_back(shared: &Shared, id: &str, lock: RequestLock) {
    if lock.since_pending {
        shared.request_locks.lock().await.insert(id.to_owned(), lock.lock);
    } else {
        shared.unlock(lock.lock).await;
    }
}

/// A request as read, with the version a write based on it must name.
struct Versioned {
    doc: RequestDoc,
    version: i32,
}

/// Reads the request; `None` if it was withdrawn.
async fn read_versioned(shared: &Shared, id: &str) -> Result<Option<Versioned>> {
    match shared.zk.get_data(&paths::request(id)).await {
        Ok((data, stat)) => {
            let doc = RequestDoc::parse(&data).map_err(|error| {
                anyhow::anyhow!(
                    "re-reading the request: {}",
                    crate::zk::model::log_excerpt(&error.to_string())
                )
            })?;
            Ok(Some(Versioned { doc, version: stat.version }))
        }
        Err(zookeeper_client::Error::NoNode) => Ok(None),
        Err(error) => Err(error).context("re-reading the request"),
    }
}

/// Takes our lock on the request and reads it, both at once (each is a round trip on the way
/// to an outcome): a read that came before the lock is still good for a write that names its
/// version (see [`update_locked`]). `None` if someone else holds the lock.
async fn lock_and_read(
    shared: &Shared,
    id: &str,
) -> Result<Option<(RequestLock, Result<Option<Versioned>>)>> {
    let (lock, read) = tokio::join!(take_lock(shared, id), read_versioned(shared, id));
    Ok(lock?.map(|lock| (lock, read)))
}

/// What [`update_locked`]'s `update` decided.
enum Update<T> {
    /// Write the changed document.
    Write(T),
    /// Leave the request as it is.
    Leave(T),
}

/// What becomes of our lock on the request once [`update_locked`] is done with it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LockAfter {
    /// Released: with the write, in the same transaction, or on its own when nothing is written.
    Released,
    /// Kept if the request was written (held from `pending` until the outcome), else released.
    KeptIfWritten,
}

/// Applies `update` to the request and writes it, under our `lock`, which then goes as `after`
/// says. `read` is the copy read while the lock was taken; the write names its version, so a
/// request Zuul changed in between (its relative priority, say) is read again and updated
/// afresh. `Ok(None)`: withdrawn (its NodeRequest is then deleted here).
async fn update_locked<T>(
    shared: &Arc<Shared>,
    id: &str,
    lock: RequestLock,
    after: LockAfter,
    mut read: Result<Option<Versioned>>,
    mut update: impl FnMut(&mut RequestDoc) -> Result<Update<T>>,
) -> Result<Option<T>> {
    let path = paths::request(id);
    let mut lock = lock.lock;
    let outcome = loop {
        let Versioned { mut doc, version } = match read {
            Ok(Some(read)) => read,
            other => break other.map(|_| None),
        };
        let value = match update(&mut doc) {
            Ok(Update::Write(value)) => value,
            Ok(Update::Leave(value)) => break Ok(Some(value)),
            Err(error) => break Err(error),
        };
        let error = if after == LockAfter::Released {
            match shared.write_and_unlock(lock, &path, &doc.to_bytes(), version).await {
                Ok(()) => return Ok(Some(value)),
                Err((held, error)) => {
                    lock = held;
                    error
                }
            }
        } else {
            match shared.zk.set_data(&path, &doc.to_bytes(), Some(version)).await {
                Ok(_) => {
                    shared.request_locks.lock().await.insert(id.to_owned(), lock);
                    return Ok(Some(value));
                }
                Err(error) => error,
            }
        };
        match error {
            zookeeper_client::Error::BadVersion => read = read_versioned(shared, id).await,
            zookeeper_client::Error::NoNode => break Ok(None),
            error => break Err(error).context("writing the request"),
        }
    };
    shared.unlock(lock).await;
    if matches!(outcome, Ok(None)) {
        // Zuul withdrew it meanwhile: its NodeRequest goes too, whatever outcome was being written.
        withdrawn(shared, id).await?;
    }
    outcome
}

/// The znode ids of the request's nodes, each brought in line with its PoolNode (allocated to
/// the request); `None` while one is not in ZooKeeper yet or locked by someone else.
async fn mirrored_nodes(
    shared: &Arc<Shared>,
    names: &[String],
    id: &str,
    allocation_id: Option<&str>,
) -> Result<Option<Vec<String>>> {
    let mut node_ids = Vec::with_capacity(names.len());
    for name in names {
        let Some(node) = allocated_node(shared, name, id, allocation_id).await? else { return Ok(None) };
        match nodes::sync(shared, &node, nodes::RecordId::Later).await? {
            SyncOutcome::Mirrored(node_id) => node_ids.push(node_id),
            SyncOutcome::NotMirrored | SyncOutcome::LockedByOthers | SyncOutcome::Behind => return Ok(None),
        }
    }
    Ok(Some(node_ids))
}

async fn write_fulfilled(
    shared: &Arc<Shared>,
    request: &NodeRequest,
    id: &str,
    names: &[String],
) -> Result<Action> {
    // Every node must be in ZooKeeper, allocated to this request and unlocked, before the
    // request says so; the request's lock is taken meanwhile, as the two do not depend on
    // each other.
    let allocation_id = request.status.as_ref().and_then(|s| s.allocation_id.as_deref());
    let nodes = mirrored_nodes(shared, names, id, allocation_id);
    let (node_ids, locked) = tokio::join!(nodes, lock_and_read(shared, id));
    let Some((lock, read)) = locked? else { return Ok(Action::requeue(RETRY_SOON)) };
    let node_ids = match node_ids {
        Ok(Some(node_ids)) => node_ids,
        not_yet => {
            put_back(shared, id, lock).await;
            not_yet?;
            return Ok(Action::requeue(RETRY_SOON));
        }
    };
    after_earlier_hand_out(shared, request).await;
    let outcome = update_locked(shared, id, lock, LockAfter::Released, read, |doc| {
        if doc.state == NodeRequestState::Fulfilled && doc.nodes == node_ids {
            return Ok(Update::Leave(Ok((doc.created_time, false)))); // written before this bridge restarted
        }
        if !matches!(doc.state, NodeRequestState::Requested | NodeRequestState::Pending) {
            return Ok(Update::Leave(Err(format!(
                "the request is already {} in ZooKeeper",
                doc.state.as_str()
            ))));
        }
        doc.nodes = node_ids.clone();
        doc.set_state(NodeRequestState::Fulfilled);
        Ok(Update::Write(Ok((doc.created_time, true))))
    })
    .await
    .context("writing fulfilled");
    match outcome? {
        None => {} // withdrawn (see update_locked)
        Some(Ok((created_time, written))) => {
            if written {
                failpoint::hit(Failpoint::BridgeRequestFulfilled);
                shared.metrics.outcome(Outcome::Fulfilled, created_time);
            }
            // Not recorded in the NodeRequest: Zuul deletes the request within moments, and the
            // write would cost the apiserver one more update per request for nothing.
            let age_ms = crate::metrics::age_ms(created_time);
            tracing::info!(nodes = ?node_ids, age_ms, "request fulfilled");
            shared.fulfilled_requests.insert(id);
        }
        Some(Err(problem)) => {
            tracing::warn!(%problem, "cannot fulfil");
            let view = RequestZooKeeperView { error: Some(problem), ..Default::default() };
            patch_view(shared, request, view).await?;
        }
    }
    Ok(Action::await_change())
}

/// How long a hand-out's `fulfilled` waits at most for the one handed out before it (a safety
/// net: that one is usually written within milliseconds, or no longer fulfilled).
const HAND_OUT_ORDER_WAIT: Duration = Duration::from_secs(1);

/// Waits until the request handed out before this one (`status.handedOutAfter`) is written to
/// ZooKeeper, withdrawn, or no longer fulfilled (reverted, or failed to write), at most
/// [`HAND_OUT_ORDER_WAIT`]: Zuul then sees hand-outs in the operator's order, in both the order
/// of the writes and their `state_time`.
async fn after_earlier_hand_out(shared: &Shared, request: &NodeRequest) {
    let Some(earlier) = request.status.as_ref().and_then(|s| s.handed_out_after.as_deref()) else { return };
    let settled = || {
        shared.fulfilled_requests.contains(earlier)
            || shared.cached_request(earlier).is_none_or(|other| {
                let status = other.status.clone().unwrap_or_default();
                status.state != NodeRequestState::Fulfilled
                    || status.zookeeper.as_ref().is_some_and(|z| z.error.is_some() || z.state.is_some())
            })
    };
    if !nodepool_service::written::until_cached(HAND_OUT_ORDER_WAIT, settled).await {
        tracing::debug!(%earlier, "the earlier hand-out is not written yet; writing this one anyway");
    }
}

/// How long a node's allocation may trail its request's `fulfilled` in the cache before it is
/// read fresh: the operator writes both at once, and either may come first.
const ALLOCATION_LAG: Duration = Duration::from_secs(1);

/// A node allocated to request `id` (with allocation `allocation_id`, when the request names
/// one): from the cache once it shows the allocation, else read fresh. `None` if it is not
/// (yet) allocated so: the operator reverts a `fulfilled` whose allocations failed.
async fn allocated_node(
    shared: &Shared,
    name: &str,
    id: &str,
    allocation_id: Option<&str>,
) -> Result<Option<Arc<PoolNode>>> {
    let cached = || shared.cached_node(name).filter(|node| shows_allocation(node, id, allocation_id));
    // The operator reverts a `fulfilled` whose allocations failed, and decides again at once:
    // this attempt is then over, and the request's next reconcile takes the new one.
    let superseded = || {
        let request = shared.cached_request(id);
        request.and_then(|r| r.status.as_ref()?.allocation_id.clone()).as_deref() != allocation_id
    };
    if allocation_id.is_some() {
        nodepool_service::written::until_cached(ALLOCATION_LAG, || cached().is_some() || superseded()).await;
    }
    if let Some(node) = cached() {
        return Ok(Some(node));
    }
    if allocation_id.is_some() && superseded() {
        tracing::debug!(node = %name, "the hand-out was reverted; its request is decided again");
        return Ok(None);
    }
    let node = shared.pool_node_api().get(name).await.with_context(|| format!("PoolNode {name}"))?;
    shared.node_versions.record(&node);
    if !shows_allocation(&node, id, allocation_id) {
        tracing::warn!(node = %name, "the request is fulfilled but its node is not allocated to it; waiting");
        return Ok(None);
    }
    Ok(Some(Arc::new(node)))
}

/// Whether this copy of a node shows it allocated to request `id` by allocation `allocation_id`
/// (any allocation to `id` when the request names none: its allocations were written first).
fn shows_allocation(node: &PoolNode, id: &str, allocation_id: Option<&str>) -> bool {
    let Some(status) = node.status.as_ref() else { return false };
    status.allocated_to.as_deref() == Some(id)
        && (allocation_id.is_none() || status.allocation_id.as_deref() == allocation_id)
}

/// Adds our pools to `declined_by`; the request fails once every registered pool declined.
async fn write_declined(shared: &Arc<Shared>, request: &NodeRequest, id: &str) -> Result<Action> {
    let ours = shared.registry.lock().await.ids();
    let registered = components::all_registered_ids(&shared.zk).await?;
    let Some((lock, read)) = lock_and_read(shared, id).await? else { return Ok(Action::requeue(RETRY_SOON)) };
    let outcome = update_locked(shared, id, lock, LockAfter::Released, read, |doc| {
        if !matches!(doc.state, NodeRequestState::Requested | NodeRequestState::Pending) {
            return Ok(Update::Leave(None));
        }
        for pool in &ours {
            if !doc.declined_by.contains(pool) {
                doc.declined_by.push(pool.clone());
            }
        }
        let everyone_declined = registered.iter().all(|pool| doc.declined_by.contains(pool));
        doc.nodes.clear();
        doc.set_state(if everyone_declined { NodeRequestState::Failed } else { NodeRequestState::Requested });
        Ok(Update::Write(Some((everyone_declined, doc.declined_by.clone(), doc.created_time))))
    })
    .await
    .context("writing the decline");
    if let Some((failed, declined_by, created_time)) = outcome?.flatten() {
        shared.metrics.outcome(if failed { Outcome::Failed } else { Outcome::Declined }, created_time);
        tracing::info!(failed, "request declined by our pools");
        let state = if failed { NodeRequestState::Failed } else { NodeRequestState::Requested };
        let view = RequestZooKeeperView { state: Some(state), declined_by, ..Default::default() };
        patch_view(shared, request, view).await?;
    }
    Ok(Action::await_change())
}

/// Accepts the request: `pending`, keeping the request lock until the outcome is written.
async fn write_pending(shared: &Arc<Shared>, id: &str) -> Result<Action> {
    let Some((lock, read)) = lock_and_read(shared, id).await? else { return Ok(Action::requeue(RETRY_SOON)) };
    let outcome = update_locked(shared, id, lock, LockAfter::KeptIfWritten, read, |doc| {
        match doc.state {
            NodeRequestState::Requested => {
                doc.set_state(NodeRequestState::Pending);
                Ok(Update::Write(Pending::Written(doc.created_time)))
            }
            NodeRequestState::Pending => Ok(Update::Leave(Pending::Already)), // written before this bridge restarted
            _ => Ok(Update::Leave(Pending::NotRequested)),
        }
    })
    .await
    .context("writing pending")?;
    match outcome {
        Some(Pending::Written(created_time)) => shared.metrics.outcome(Outcome::Pending, created_time),
        Some(Pending::Already) => {}
        // Not requested any more, or withdrawn (see update_locked).
        Some(Pending::NotRequested) | None => return Ok(Action::await_change()),
    }
    // Like fulfilment, not echoed into the NodeRequest: ZooKeeper is the record.
    shared.pending_requests.insert(id);
    Ok(Action::await_change())
}

/// What [`write_pending`] found.
enum Pending {
    Written(Option<f64>),
    /// `pending` already (written by this bridge before it restarted).
    Already,
    /// No longer `requested`: nothing to accept.
    NotRequested,
}

async fn patch_view(shared: &Shared, request: &NodeRequest, view: RequestZooKeeperView) -> Result<()> {
    let body = json!({
        "apiVersion": "nodepool.dev/v1alpha1", "kind": "NodeRequest",
        "status": {"zookeeper": view},
    });
    let api: Api<NodeRequest> = shared.node_request_api();
    api.patch_status(&request.name_any(), &PatchParams::apply(BRIDGE_MANAGER).force(), &Patch::Apply(&body))
        .await
        .context("recording what was written to ZooKeeper")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use nodepool_crds::{PoolNodeSpec, PoolNodeStatus};

    use super::*;

    fn node(allocated_to: Option<&str>, allocation_id: Option<&str>) -> PoolNode {
        let mut node = PoolNode::new("n", PoolNodeSpec::default());
        node.status = Some(PoolNodeStatus {
            allocated_to: allocated_to.map(str::to_owned),
            allocation_id: allocation_id.map(str::to_owned),
            ..Default::default()
        });
        node
    }

    #[test]
    fn a_node_must_show_the_requests_allocation_id() {
        let current = node(Some("200-1"), Some("b"));
        assert!(shows_allocation(&current, "200-1", Some("b")));
        // A copy from an earlier hand-out to the same request, since undone.
        assert!(!shows_allocation(&node(Some("200-1"), Some("a")), "200-1", Some("b")));
        assert!(!shows_allocation(&node(None, None), "200-1", Some("b")));
        assert!(!shows_allocation(&node(Some("200-2"), Some("b")), "200-1", Some("b")));
    }

    #[test]
    fn without_an_allocation_id_any_allocation_to_the_request_counts() {
        // The request's status followed its allocations (nodes launched for it).
        assert!(shows_allocation(&node(Some("200-1"), None), "200-1", None));
        assert!(shows_allocation(&node(Some("200-1"), Some("a")), "200-1", None));
        assert!(!shows_allocation(&node(Some("200-2"), None), "200-1", None));
        assert!(!shows_allocation(&PoolNode::new("n", PoolNodeSpec::default()), "200-1", None));
    }
}
