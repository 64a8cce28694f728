//! Nodes: each `PoolNode` past `init` is mirrored to `/nodepool/nodes/<id>`, written only under
//! the kazoo node lock; what Zuul writes to the znode (in-use, used, hold, user data) and whether
//! Zuul holds the lock are carried back into `status.zookeeper` (zk-protocol.md §2.2, §3.2, §4.3,
//! §4.4).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use nodepool_crds::{
    BRIDGE_MANAGER, NodeState, PoolNode, ZNODE_FINALIZER, ZooKeeperView, pool_node::KubernetesAccess,
};
use nodepool_service::failpoint::{self, Failpoint, Pause};
use serde_json::{Value, json};
use tracing::Instrument;
use zookeeper_client::{Acls, CreateMode, Error as ZkError};

use crate::{
    components::pool_key,
    shared::{KnownZnode, Shared},
    zk::{
        self, Removal,
        lock::Lock,
        model::{NodeDoc, ZuulFields, now},
        paths,
    },
};

#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Error(#[from] anyhow::Error);

/// The result of bringing one node's znode in line with its PoolNode.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The znode matches the PoolNode.
    Mirrored(String),
    /// The node is still in `init`; it is not in ZooKeeper yet.
    NotMirrored,
    /// The znode needs a write but someone (Zuul) holds its lock.
    LockedByOthers,
    /// The copy of the PoolNode is older than a registration this bridge knows a znode of (a
    /// lagging cache): acting on it would register or retire the wrong registration.
    Behind,
}

pub async fn reconcile(node: Arc<PoolNode>, shared: Arc<Shared>) -> Result<Action, Error> {
    shared.until_resynced().await;
    let span = nodepool_service::logging::node_span(&node);
    reconcile_node(node, shared).instrument(span).await
}

async fn reconcile_node(node: Arc<PoolNode>, shared: Arc<Shared>) -> Result<Action, Error> {
    if node.metadata.deletion_timestamp.is_some() {
        return Ok(finalize(&shared, &node).await?);
    }
    if !node.finalizers().iter().any(|f| f == ZNODE_FINALIZER) {
        let mut finalizers = node.finalizers().to_vec();
        finalizers.push(ZNODE_FINALIZER.to_owned());
        set_finalizers(&shared, &node, finalizers).await.context("adding the znode finalizer")?;
        return Ok(Action::await_change()); // the update brings us back here
    }
    if shared.node_versions.cache_is_behind(node.as_ref()) {
        // We wrote or read a newer copy (a request fulfilled from a fresh read registers the
        // node's next use): its watch event brings us back; the requeue is a safety net.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    match sync(&shared, &node, RecordId::Now).await? {
        SyncOutcome::LockedByOthers => Ok(Action::requeue(Duration::from_secs(2))),
        // The cache's next event for the node brings us back; the requeue is a safety net.
        SyncOutcome::Behind => Ok(Action::requeue(Duration::from_secs(1))),
        // Come back to record the new znode's id, unless Zuul's lock records it first.
        _ => match node.uid().and_then(|uid| unrecorded_for(&shared, &uid)) {
            Some(waited) => Ok(Action::requeue(RECORD_NEW_ID_AFTER.saturating_sub(waited))),
            None => Ok(Action::await_change()),
        },
    }
}

/// How long the id of a znode the bridge has just created goes unrecorded in its PoolNode. A
/// node handed out at once (a static slot back from use, under load) gets it recorded with
/// Zuul's lock, in one write; recording it on its own first cost the apiserver one more write
/// per use, and the scheduler's allocation of the node, based on the copy before it, failed as
/// a conflict whenever that write came first. The scheduler does not need the id to hand a node
/// out (nor does anything else of ours: the bridge knows its znodes).
const RECORD_NEW_ID_AFTER: Duration = Duration::from_millis(1000);

/// How long ago the bridge created the znode of the node with `uid`, if it has written nothing
/// about it into the PoolNode since.
fn unrecorded_for(shared: &Shared, uid: &str) -> Option<Duration> {
    let known = shared.znodes_by_uid.lock().unwrap();
    known.get(uid)?.unrecorded_since.map(|since| since.elapsed())
}

/// Whether the id of the node's znode is still to be left unrecorded (see [`RECORD_NEW_ID_AFTER`]).
fn leave_unrecorded(shared: &Shared, uid: &str) -> bool {
    unrecorded_for(shared, uid).is_some_and(|waited| waited < RECORD_NEW_ID_AFTER)
}

/// The bridge wrote its view of the node's current znode into the PoolNode.
fn recorded(shared: &Shared, uid: &str) {
    if let Some(known) = shared.znodes_by_uid.lock().unwrap().get_mut(uid) {
        known.unrecorded_since = None;
    }
}

/// Replaces the node's finalizer list (see [`nodepool_service::finalizers::replace`]).
async fn set_finalizers(
    shared: &Shared,
    node: &PoolNode,
    finalizers: Vec<String>,
) -> Result<(), kube::Error> {
    nodepool_service::finalizers::replace(&shared.pool_node_api(), node, finalizers, BRIDGE_MANAGER).await
}

pub fn error_policy(node: Arc<PoolNode>, error: &Error, _: Arc<Shared>) -> Action {
    let _span = nodepool_service::logging::node_span(&node).entered();
    if crate::is_conflict(&error.0) {
        return Action::requeue(Duration::from_millis(50));
    }
    tracing::warn!(%error, "mirroring a node failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// The newest registration of the node (by uid) this session knows a znode of.
fn known_registration(shared: &Shared, uid: &str) -> Option<u32> {
    shared.znodes_by_uid.lock().unwrap().get(uid).map(|known| known.registration)
}

/// Remembers a znode found in ZooKeeper as the node's, unless it is a duplicate of the same
/// registration (left by a crash; the cleanup removes it) or a newer registration's znode is
/// known already. Of two znodes of one registration, the one recorded in the PoolNode
/// (`recorded`) is the node's, else the one this session created, else the lower id.
/// `unrecorded_since` is kept for the znode this session created.
pub(crate) fn remember_found(
    shared: &Shared,
    uid: &str,
    registration: u32,
    node_id: &str,
    recorded: Option<&str>,
) {
    if recorded.is_some_and(|recorded| recorded != node_id) {
        return;
    }
    let mut known = shared.znodes_by_uid.lock().unwrap();
    let keep_existing = known.get(uid).is_some_and(|existing| {
        existing.registration > registration
            || (existing.registration == registration
                && existing.node_id != node_id
                && recorded.is_none()
                && (existing.unrecorded_since.is_some() || existing.node_id.as_str() < node_id))
    });
    if keep_existing {
        return;
    }
    let ours_still_unrecorded = known
        .get(uid)
        .filter(|k| k.node_id == node_id && k.registration == registration)
        .and_then(|k| k.unrecorded_since);
    let mut entry = KnownZnode::found(registration, node_id);
    entry.unrecorded_since = ours_still_unrecorded;
    known.insert(uid.to_owned(), entry);
}

fn registration(node: &PoolNode) -> u32 {
    node.status.as_ref().map(|s| s.registration).unwrap_or(0)
}

/// The znode id recorded in the PoolNode, whatever registration it belongs to.
fn recorded_node_id(node: &PoolNode) -> Option<String> {
    node.status.as_ref()?.zookeeper.as_ref()?.node_id.clone()
}

/// The znode of the node's current registration: as recorded in the PoolNode, or as this session
/// knows it (the PoolNode in the cache may not show our last write yet).
pub(crate) fn current_node_id(shared: &Shared, node: &PoolNode, uid: &str) -> Option<String> {
    let status = node.status.as_ref();
    if let Some(id) = status.and_then(|s| s.zuul_view()).and_then(|view| view.node_id.clone()) {
        return Some(id);
    }
    let known = shared.znodes_by_uid.lock().unwrap().get(uid).cloned()?;
    (known.registration == registration(node)).then_some(known.node_id)
}

/// A znode of an earlier registration: the one this session created, whose id may never have
/// been recorded, else the one recorded in the PoolNode (also the current registration's while
/// the node is back in `init`), unless this session has already moved past it.
fn earlier_node_id(shared: &Shared, node: &PoolNode, uid: &str) -> Option<String> {
    let status = node.status.as_ref()?;
    let known = shared.znodes_by_uid.lock().unwrap().get(uid).cloned();
    // Strictly older only: the request handler registers a node from a fresh read, so the
    // cached copy a reconcile gets may be a registration behind the znode we know. That znode
    // is the current one, and Zuul may be about to lock it.
    if let Some(known) = &known
        && known.registration < status.registration
    {
        return Some(known.node_id.clone());
    }
    let view = status.zookeeper.as_ref()?;
    let old = view.node_id.clone()?;
    if view.registration == status.registration && status.state != NodeState::Init {
        return None;
    }
    match known {
        Some(known) if known.node_id != old => None, // retired already; the cache lags
        _ => Some(old),
    }
}

/// Whether a sync records the znode id in the PoolNode (`status.zookeeper`) before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordId {
    Now,
    /// Left to the node's own reconcile, which the write that got us here queues anyway: a
    /// request is fulfilled without waiting for an apiserver write.
    Later,
}

/// Makes the znode of `node` match it, creating the znode if needed.
pub async fn sync(shared: &Arc<Shared>, node: &PoolNode, record: RecordId) -> Result<SyncOutcome> {
    let uid = node.uid().context("PoolNode without uid")?;
    let mutex = shared.node_mutex(&uid);
    let _serialised = mutex.lock().await;
    let state = node.status.as_ref().map(|s| s.state).unwrap_or_default();
    if node.metadata.deletion_timestamp.is_some() {
        return Ok(SyncOutcome::NotMirrored);
    }
    if known_registration(shared, &uid).is_some_and(|known| known > registration(node)) {
        tracing::debug!(node = %node.name_any(), "the copy is behind a registration in ZooKeeper; not acting on it");
        return Ok(SyncOutcome::Behind);
    }
    // A static slot back from use is a new node to Zuul: the znode of its last use goes first.
    if let Some(old) = earlier_node_id(shared, node, &uid) {
        if !retire(shared, node, &uid, &old).await? {
            return Ok(SyncOutcome::LockedByOthers);
        }
        if state == NodeState::Init {
            // Not ready (its host does not answer): nothing of it is in ZooKeeper now.
            let view = ZooKeeperView { registration: registration(node), ..Default::default() };
            patch_view(shared, &node.name_any(), &view).await?;
        }
    }
    if state == NodeState::Init {
        return Ok(SyncOutcome::NotMirrored);
    }
    let Some(node_id) = current_node_id(shared, node, &uid) else {
        return create(shared, node, &uid).await;
    };

    let path = paths::node(&node_id);
    let Some((current, version)) = read_doc(shared, &path).await? else {
        return create(shared, node, &uid).await; // the znode was deleted: register anew
    };
    let desired = desired_doc(shared, node, Some(&current)).await?;
    if same_document(&desired, &current) {
        record_node_id(shared, node, &uid, &node_id, record).await?;
        return Ok(SyncOutcome::Mirrored(node_id));
    }
    let Some(lock) = shared.try_lock(&paths::node_lock(&node_id)).await? else {
        return Ok(SyncOutcome::LockedByOthers);
    };
    if !write_under_lock(shared, node, &path, (current, version), lock).await? {
        return create(shared, node, &uid).await;
    }
    record_node_id(shared, node, &uid, &node_id, record).await?;
    Ok(SyncOutcome::Mirrored(node_id))
}

/// Writes the node's document to its znode and releases our `lock` on it. The write names the
/// version of `read`, made before the lock was taken: if Zuul wrote in between, it fails, and
/// the document is made again from a fresh read (a re-read on every write would cost a round
/// trip on the way to `fulfilled`). False if the znode is gone.
async fn write_under_lock(
    shared: &Shared,
    node: &PoolNode,
    path: &str,
    read: (Value, i32),
    mut lock: Lock,
) -> Result<bool> {
    let (mut current, mut version) = read;
    loop {
        let desired = desired_doc(shared, node, Some(&current)).await?;
        let error = match shared.write_and_unlock(lock, path, desired.to_string().as_bytes(), version).await {
            Ok(()) => {
                failpoint::hit(Failpoint::BridgeNodeWritten);
                return Ok(true);
            }
            Err((held, error)) => {
                lock = held;
                error
            }
        };
        let fresh = match error {
            ZkError::BadVersion => read_doc(shared, path).await,
            ZkError::NoNode => Ok(None),
            error => Err(anyhow::Error::new(error).context("writing the node")),
        };
        match fresh {
            Ok(Some(fresh)) => (current, version) = fresh,
            gone_or_failed => {
                shared.unlock(lock).await;
                return gone_or_failed.map(|_| false);
            }
        }
    }
}

/// Removes the znode of a node's earlier registration and forgets it, so the PoolNode registers
/// afresh. False if someone else holds its lock.
async fn retire(shared: &Arc<Shared>, node: &PoolNode, uid: &str, node_id: &str) -> Result<bool> {
    if !remove_znode(shared, node_id).await? {
        return Ok(false);
    }
    failpoint::hit(Failpoint::BridgeNodeRetired);
    let mut known = shared.znodes_by_uid.lock().unwrap();
    if known.get(uid).is_some_and(|k| k.node_id == node_id) {
        known.remove(uid);
    }
    tracing::info!(node = %node.name_any(), %node_id, "retired the znode of the node's last use");
    Ok(true)
}

/// Marks the znode `deleted` and removes it with its lock directory, in one transaction that
/// ZooKeeper refuses while anyone holds or waits for the lock: two requests instead of eleven
/// (five of them writes), and Zuul's node cache sees no lock come and go. False if someone else
/// holds or waits for the lock (the znode is then left alone); true if it is gone.
pub(crate) async fn remove_znode(shared: &Arc<Shared>, node_id: &str) -> Result<bool> {
    shared.removed_znodes.insert(node_id); // before its watch event can come
    let (path, lock_dir) = (paths::node(node_id), paths::node_lock(node_id));
    let removed = match zk::remove_unless_locked(&shared.zk, &path, &lock_dir, marked_deleted).await {
        Ok(Removal::Done) => Ok(true),
        Ok(Removal::Locked) => Ok(false),
        Ok(Removal::OtherChildren) => remove_under_lock(shared, node_id).await,
        Err(error) => Err(error),
    };
    if !matches!(removed, Ok(true)) {
        shared.removed_znodes.remove(node_id);
    }
    removed
}

/// The long way, for a znode with children of its own besides the lock: lock it, write
/// `deleted`, delete it recursively.
async fn remove_under_lock(shared: &Arc<Shared>, node_id: &str) -> Result<bool> {
    let path = paths::node(node_id);
    let Some(lock) = shared.try_lock(&paths::node_lock(node_id)).await? else { return Ok(false) };
    let removed = async {
        let data = match shared.zk.get_data(&path).await {
            Ok((data, _)) => data,
            Err(ZkError::NoNode) => Vec::new(),
            Err(error) => return Err(error).context("reading the node"),
        };
        if let Some(marked) = marked_deleted(&data) {
            shared.zk.set_data(&path, &marked, None).await.context("writing deleted")?;
        }
        zk::delete_recursive(&shared.zk, &path).await // removes our lock contender too
    }
    .await;
    match removed {
        Ok(()) => shared.lock_gone(&lock.token),
        Err(_) => shared.unlock(lock).await, // so the next attempt (or Zuul) can take it
    }
    removed.map(|()| true)
}

/// A node document in state `deleted`, as Nodepool writes it before deleting a node; `None` if
/// the data is no document (nothing to mark).
fn marked_deleted(data: &[u8]) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut doc)) = serde_json::from_slice(data) else { return None };
    doc.insert("state".into(), json!("deleted"));
    doc.insert("state_time".into(), json!(now()));
    Some(Value::Object(doc).to_string().into_bytes())
}

async fn create(shared: &Arc<Shared>, node: &PoolNode, uid: &str) -> Result<SyncOutcome> {
    let doc = desired_doc(shared, node, None).await?;
    let options = CreateMode::PersistentSequential.with_acls(Acls::anyone_all());
    let prefix = format!("{}/", paths::NODES);
    let (_, sequence) = shared
        .zk
        .create(&prefix, &serde_json::to_vec(&doc)?, &options)
        .await
        .context("creating the node znode")?;
    failpoint::hit(Failpoint::BridgeNodeCreated);
    let node_id = sequence.to_string();
    let allocated = node.status.as_ref().is_some_and(|s| s.allocated_to.is_some());
    if !allocated {
        // It waits for a request. Made now, its lock directory saves the hand-out (which locks
        // the node) a round trip: otherwise the first lock makes it, after a failed try.
        match shared.zk.create(&paths::node_lock(&node_id), b"", &zk::persistent()).await {
            Ok(_) | Err(ZkError::NodeExists | ZkError::NoNode) => {}
            Err(error) => tracing::warn!(%node_id, %error, "could not make the node's lock directory"),
        }
    }
    let known = KnownZnode {
        registration: registration(node),
        node_id: node_id.clone(),
        unrecorded_since: Some(Instant::now()),
    };
    shared.znodes_by_uid.lock().unwrap().insert(uid.to_owned(), known);
    tracing::info!(node = %node.name_any(), %node_id, "registered node in ZooKeeper");
    Ok(SyncOutcome::Mirrored(node_id)) // its id is recorded later (RECORD_NEW_ID_AFTER)
}

/// A node's document and the version a write based on it names; `None` if the znode is gone
/// (or empty, as a znode only being created is).
async fn read_doc(shared: &Shared, path: &str) -> Result<Option<(Value, i32)>> {
    match shared.zk.get_data(path).await {
        Ok((data, _)) if data.is_empty() => Ok(None),
        Ok((data, stat)) => Ok(Some((serde_json::from_slice(&data).unwrap_or(Value::Null), stat.version))),
        Err(zookeeper_client::Error::NoNode) => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {path}")),
    }
}

/// Equal but for the keys Zuul adds (`id`) and the timestamps only we set.
fn same_document(desired: &Value, current: &Value) -> bool {
    let strip = |doc: &Value| {
        let mut doc = doc.clone();
        if let Some(map) = doc.as_object_mut() {
            map.remove("id");
        }
        doc
    };
    strip(desired) == strip(current)
}

/// States only Zuul writes; the operator adopts them, it never overrides them with `ready`.
fn zuul_owned(state: NodeState) -> bool {
    matches!(state, NodeState::InUse | NodeState::Used | NodeState::Hold)
}

/// The znode document for `node`, keeping Zuul's fields (and Zuul's state) from `current`.
async fn desired_doc(shared: &Shared, node: &PoolNode, current: Option<&Value>) -> Result<Value> {
    let status = node.status.clone().unwrap_or_default();
    let get = |key: &str| current.and_then(|doc| doc.get(key)).cloned().unwrap_or(Value::Null);
    let current_state = get("state").as_str().and_then(NodeState::parse);
    let mut state = status.state;
    if let Some(zuul_state) = current_state.filter(|s| zuul_owned(*s))
        && matches!(status.state, NodeState::Ready | NodeState::InUse | NodeState::Used | NodeState::Hold)
    {
        state = zuul_state;
    }
    let state_time = match (current_state == Some(state), get("state_time").as_f64()) {
        (true, Some(time)) => time,
        _ => now(),
    };
    let created_time = get("created_time").as_f64().unwrap_or_else(|| {
        node.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond() as f64 / 1000.0)
            .unwrap_or_else(now)
    });
    let connection = status.connection.clone().unwrap_or_default();
    // A Kubernetes-type node's "port" is the credentials object Zuul builds its kubeconfig from
    // (Nodepool writes it to both fields).
    let port = match &status.kubernetes {
        Some(access) => kubernetes_credentials(shared, node, access).await?,
        None => json!(connection.connection_port.unwrap_or(22)),
    };
    let launcher = match &node.spec.static_host {
        Some(_) => Some("static driver".to_owned()),
        None => shared
            .registry
            .lock()
            .await
            .id_of(&pool_key(&node.spec.provider, &node.spec.pool))
            .map(str::to_owned),
    };
    let doc = NodeDoc {
        state: state.as_str().to_owned(),
        state_time,
        created_time,
        type_: node.spec.labels.clone(),
        provider: Some(node.spec.provider.clone()),
        pool: Some(node.spec.pool.clone()),
        cloud: None,
        region: status.region.clone(),
        az: status.az.clone(),
        host_id: None,
        launcher,
        allocated_to: status.allocated_to.clone(),
        interface_ip: status.interface_ip.clone(),
        public_ipv4: status.public_ipv4.clone(),
        private_ipv4: status.private_ipv4.clone(),
        public_ipv6: status.public_ipv6.clone(),
        hostname: status.hostname.clone(),
        connection_type: Some(connection.connection_type.unwrap_or_default().as_str().to_owned()),
        connection_port: port.clone(),
        ssh_port: port,
        // Nodepool's default user, except for a Kubernetes-type node, which has none.
        username: match status.kubernetes {
            Some(_) => connection.username,
            None => Some(connection.username.unwrap_or_else(|| "zuul".into())),
        },
        python_path: Some(connection.python_path.unwrap_or_else(|| "auto".into())),
        shell_type: connection.shell_type,
        host_keys: status.host_keys.clone(),
        image_id: status.image_id.clone(),
        external_id: status.external_id.clone().map(Value::String).unwrap_or(Value::Null),
        attributes: status.attributes.clone().map(|a| json!(a)).unwrap_or(Value::Null),
        resources: status.resources.as_ref().map(nodepool_resources).unwrap_or(Value::Null),
        slot: node.spec.static_host.as_ref().map(|s| s.slot),
        driver_data: json!({"k8s": {
            "namespace": node.namespace(), "name": node.name_any(), "uid": node.uid(),
            "registration": status.registration,
        }}),
        node_properties: json!({}),
        tenant_name: status.tenant.clone(),
        requestor: status.requestor.clone(),
        user_data: get("user_data"),
        hold_job: get("hold_job"),
        // Zuul's hold reason, else an operator's (`spec.hold.comment`).
        comment: match get("comment") {
            Value::Null => node
                .spec
                .hold
                .as_ref()
                .and_then(|h| h.comment.clone())
                .map(Value::String)
                .unwrap_or(Value::Null),
            comment => comment,
        },
        hold_expiration: get("hold_expiration"),
    };
    Ok(serde_json::to_value(doc).expect("a node document always serializes"))
}

/// The service-account token in a node's token Secret.
async fn read_token(shared: &Shared, name: &str) -> Result<String> {
    let secrets: Api<Secret> = Api::namespaced(shared.kube.clone(), &shared.namespace);
    let secret = secrets
        .get_opt(name)
        .await
        .with_context(|| format!("reading Secret {name}"))?
        .with_context(|| format!("the token Secret {name} does not exist"))?;
    secret
        .data
        .as_ref()
        .and_then(|data| data.get("token"))
        .map(|token| String::from_utf8_lossy(&token.0).into_owned())
        .with_context(|| format!("Secret {name} has no token"))
}

/// The `connection_port` object of a Kubernetes-type node, as Nodepool writes it: where the API
/// is, the namespace, the service account and its token (read from the Secret the node owns).
async fn kubernetes_credentials(
    shared: &Shared,
    node: &PoolNode,
    access: &KubernetesAccess,
) -> Result<Value> {
    let uid = node.uid().unwrap_or_default();
    let cached = shared.node_tokens.lock().unwrap().get(&uid).cloned();
    let token = match cached {
        Some(token) => token,
        None => {
            let token = read_token(shared, &access.token_secret).await?;
            shared.node_tokens.lock().unwrap().insert(uid, token.clone());
            token
        }
    };
    let mut credentials = json!({
        "name": access.namespace, "namespace": access.namespace, "host": access.host,
        "skiptls": access.skip_tls, "token": token, "user": access.user,
    });
    if let Some(ca) = access.ca_crt.as_ref().filter(|_| !access.skip_tls) {
        credentials["ca_crt"] = json!(ca);
    }
    if let Some(pod) = &access.pod {
        credentials["pod"] = json!(pod);
    }
    Ok(credentials)
}

/// Records the znode id of the node's current registration in `status.zookeeper` if it is not
/// there yet, with what ZooKeeper shows of the znode now (the caller holds the node's mutex).
/// The view is read afresh rather than taken from `node`: that copy may be older than a view
/// recorded while this caller waited for the mutex, and writing it back would undo that one.
async fn record_node_id(
    shared: &Arc<Shared>,
    node: &PoolNode,
    uid: &str,
    node_id: &str,
    record: RecordId,
) -> Result<()> {
    if record == RecordId::Later || leave_unrecorded(shared, uid) {
        return Ok(());
    }
    let status = node.status.clone().unwrap_or_default();
    if status.zuul_view().is_some_and(|view| view.node_id.as_deref() == Some(node_id)) {
        return Ok(());
    }
    record_view_in_turn(shared, uid, node_id, None).await
}

async fn patch_view(shared: &Shared, name: &str, view: &ZooKeeperView) -> Result<()> {
    tracing::debug!(node = %name, ?view, "recording what ZooKeeper shows of the node");
    let body =
        json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "PoolNode", "status": {"zookeeper": view}});
    match shared
        .pool_node_api()
        .patch_status(name, &PatchParams::apply(BRIDGE_MANAGER).force(), &Patch::Apply(&body))
        .await
    {
        Ok(updated) => {
            failpoint::hit(Failpoint::BridgeViewRecorded);
            shared.node_versions.record(&updated);
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error).with_context(|| format!("recording ZooKeeper state of PoolNode {name}")),
    }
}

/// The PoolNode is being deleted: lock the znode, mark it `deleted`, remove it with its lock
/// directory, then let the PoolNode go. A node Zuul holds locked is left alone until released.
async fn finalize(shared: &Arc<Shared>, node: &PoolNode) -> Result<Action> {
    let uid = node.uid().unwrap_or_default();
    let known = shared.znodes_by_uid.lock().unwrap().get(&uid).map(|k| k.node_id.clone());
    let mut node_ids: Vec<String> = recorded_node_id(node).into_iter().chain(known).collect();
    node_ids.dedup();
    for node_id in node_ids {
        if !remove_znode(shared, &node_id).await? {
            tracing::info!(%node_id, "node is locked by someone else; deleting it later");
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        tracing::info!(%node_id, "removed node from ZooKeeper");
    }
    shared.znodes_by_uid.lock().unwrap().remove(&uid);
    shared.node_tokens.lock().unwrap().remove(&uid);
    let finalizers: Vec<String> =
        node.finalizers().iter().filter(|f| *f != ZNODE_FINALIZER).cloned().collect();
    match set_finalizers(shared, node, finalizers).await {
        Ok(()) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => return Err(error).context("removing the znode finalizer"),
    }
    shared.forget_node_mutex(&uid);
    Ok(Action::await_change())
}

/// A change of `/nodepool/nodes/<id>` or of its lock: carry Zuul's view back to the PoolNode.
pub async fn on_node_event(shared: &Arc<Shared>, node_id: &str) -> Result<()> {
    record_zuuls_view(shared, node_id, None).await
}

/// Records what ZooKeeper shows of node `node_id` in its PoolNode. `pause` lets a test slow
/// this run down between its reads and its write (see [`failpoint::pause`]).
///
/// Several handlers record the same node: its own events, and the handler of a request Zuul
/// withdrew, which records the request's nodes before the NodeRequest goes. They take turns
/// (the node's mutex, which registering the node takes too) and each reads ZooKeeper in its
/// turn, so the last record is the newest. Side by side, a record read while Zuul held the
/// lock landed after the one made when Zuul had let go: a node Zuul used and returned within
/// milliseconds looked untouched, was released and handed out again, or looked locked for good.
#[tracing::instrument(name = "znode", skip_all, fields(node_id = %node_id))]
pub async fn record_zuuls_view(shared: &Arc<Shared>, node_id: &str, pause: Option<Pause>) -> Result<()> {
    let uid = match uid_of_known_znode(shared, node_id) {
        Some(uid) => uid,
        None => match read_znode(shared, node_id).await? {
            Znode::Ours(fields) => fields.pool_node_uid.clone().unwrap_or_default(),
            Znode::Gone => return node_vanished(shared, node_id).await,
            Znode::Unreadable | Znode::NotOurs => return Ok(()),
        },
    };
    let mutex = shared.node_mutex(&uid);
    let _turn = mutex.lock().await;
    record_view_in_turn(shared, &uid, node_id, pause).await
}

/// [`record_zuuls_view`] for a caller that holds the mutex of the node with `uid`.
async fn record_view_in_turn(
    shared: &Arc<Shared>,
    uid: &str,
    node_id: &str,
    pause: Option<Pause>,
) -> Result<()> {
    // The lock before the data: Zuul writes `in-use`, `used` or `hold` before it unlocks, so a
    // node it has let go is never seen unlocked with the state it had before.
    let locked = shared.locked_by_others(&paths::node_lock(node_id)).await?;
    let fields = match read_znode(shared, node_id).await? {
        Znode::Ours(fields) if fields.pool_node_uid.as_deref() == Some(uid) => fields,
        Znode::Gone => return node_vanished(shared, node_id).await,
        _ => return Ok(()),
    };
    let Some(node) = cached_registration(shared, uid, fields.registration).await else {
        remember_found(shared, uid, fields.registration, node_id, None);
        return Ok(());
    };
    if fields.registration < registration(&node) || node.metadata.deletion_timestamp.is_some() {
        return Ok(()); // the znode of an earlier use, or of a node being deleted: on its way out
    }
    let recorded_id = node
        .status
        .as_ref()
        .and_then(|s| s.zookeeper.as_ref())
        .filter(|view| view.registration == fields.registration)
        .and_then(|view| view.node_id.as_deref());
    remember_found(shared, uid, fields.registration, node_id, recorded_id);
    if current_node_id(shared, &node, uid).is_some_and(|current| current != node_id) {
        return Ok(()); // a duplicate of the current registration (left by a crash): swept
    }
    if fields.registration > registration(&node) {
        tracing::warn!(
            node = %node.name_any(),
            registration = fields.registration,
            "the PoolNode cache stayed behind the znode; Zuul's view of it not recorded"
        );
        return Ok(());
    }
    let view = ZooKeeperView {
        registration: fields.registration,
        node_id: Some(node_id.to_owned()),
        zuul_state: fields.state.filter(|s| zuul_owned(*s)),
        locked,
        hold_job: fields.hold_job,
        comment: fields.comment,
        hold_expiration: fields.hold_expiration,
        user_data: Some(fields.user_data).filter(|v| !v.is_null()),
    };
    let recorded_view = node.status.as_ref().and_then(|s| s.zuul_view());
    if !zuul_touched(&view) && recorded_view.is_none_or(|v| !zuul_touched(v)) && leave_unrecorded(shared, uid)
    {
        return Ok(()); // only the id would be new: see RECORD_NEW_ID_AFTER
    }
    if let Some(pause) = pause {
        failpoint::pause(pause).await;
    }
    if node.status.as_ref().and_then(|s| s.zookeeper.as_ref()) != Some(&view) {
        patch_view(shared, &node.name_any(), &view).await?;
        recorded(shared, uid);
    }
    Ok(())
}

/// What a node znode holds, as far as recording Zuul's view goes.
enum Znode {
    Ours(ZuulFields),
    NotOurs,
    Unreadable,
    Gone,
}

async fn read_znode(shared: &Shared, node_id: &str) -> Result<Znode> {
    let data = match shared.zk.get_data(&paths::node(node_id)).await {
        Ok((data, _)) => data,
        Err(zookeeper_client::Error::NoNode) => return Ok(Znode::Gone),
        Err(error) => return Err(error).context("reading the node"),
    };
    let Some(fields) = ZuulFields::parse(&data) else {
        if !data.is_empty() {
            tracing::warn!("unreadable node znode; left alone");
            shared.metrics.malformed("node");
        }
        return Ok(Znode::Unreadable);
    };
    Ok(if fields.pool_node_uid.is_some() { Znode::Ours(fields) } else { Znode::NotOurs })
}

/// The PoolNode (by uid) of a znode this session created or has seen.
fn uid_of_known_znode(shared: &Shared, node_id: &str) -> Option<String> {
    let known = shared.znodes_by_uid.lock().unwrap();
    known.iter().find(|(_, znode)| znode.node_id == node_id).map(|(uid, _)| uid.clone())
}

/// How long a ZooKeeper event of a node waits for the PoolNode cache to show the node's
/// registration the znode belongs to. A request fulfilled with a static slot's next registration
/// reads the node fresh and registers its znode before the cache has the operator's write, and
/// Zuul locks that znode within milliseconds: dropped, its lock and `in-use` would go unrecorded.
const CACHE_CATCH_UP: Duration = Duration::from_secs(2);

/// The cached PoolNode with `uid`, once the cache shows at least `registration` of it (or after
/// [`CACHE_CATCH_UP`], as it is then), and shows this session's last write to it: what is
/// recorded is compared with the cached copy, and one older than our last record would hide it.
async fn cached_registration(shared: &Shared, uid: &str, registration: u32) -> Option<Arc<PoolNode>> {
    let caught_up = || {
        shared.pool_node_by_uid(uid).is_none_or(|n| {
            self::registration(&n) >= registration && !shared.node_versions.cache_is_behind(n.as_ref())
        })
    };
    nodepool_service::written::until_cached(CACHE_CATCH_UP, caught_up).await;
    shared.pool_node_by_uid(uid)
}

/// Whether Zuul has done anything with a node: locked it, set its state, held it, left data.
fn zuul_touched(view: &ZooKeeperView) -> bool {
    view.locked
        || view.zuul_state.is_some()
        || view.hold_job.is_some()
        || view.comment.is_some()
        || view.hold_expiration.is_some()
        || view.user_data.is_some()
}

/// A znode of ours disappeared without us deleting it: register the node again.
async fn node_vanished(shared: &Arc<Shared>, node_id: &str) -> Result<()> {
    if shared.removed_znodes.contains(node_id) {
        return Ok(()); // we removed it ourselves
    }
    let Some(node) = shared.pool_node_by_node_id(node_id) else { return Ok(()) };
    let state = node.status.as_ref().map(|s| s.state).unwrap_or_default();
    let current = node.status.as_ref().and_then(|s| s.zuul_view()).is_some();
    if node.metadata.deletion_timestamp.is_some() || state == NodeState::Init || !current {
        return Ok(()); // we removed it ourselves
    }
    if let Some(uid) = node.uid() {
        let mut known = shared.znodes_by_uid.lock().unwrap();
        if known.get(&uid).is_some_and(|k| k.node_id == node_id) {
            known.remove(&uid);
        } else if known.contains_key(&uid) {
            return Ok(()); // retired by us; the cache has not caught up yet
        }
    }
    tracing::warn!(node = %node.name_any(), %node_id, "node znode vanished; registering it again");
    let mut view = node.status.as_ref().and_then(|s| s.zookeeper.clone()).unwrap_or_default();
    view.node_id = None;
    patch_view(shared, &node.name_any(), &view).await
}

/// A node's `resources` as Nodepool writes them: `cores`, `ram`, `instances` and every other key
/// (a Service Quotas code, an extended resource) side by side, for Zuul's tenant limits.
fn nodepool_resources(resources: &nodepool_crds::quota::NodeResources) -> Value {
    let mut fields = serde_json::Map::new();
    fields.insert("cores".into(), json!(resources.cores));
    fields.insert("ram".into(), json!(resources.ram));
    fields.insert("instances".into(), json!(resources.instances));
    for (key, amount) in &resources.other {
        fields.insert(key.clone(), json!(amount));
    }
    Value::Object(fields)
}
