//! The state one ZooKeeper session of the bridge shares between its tasks: the clients, the
//! caches, the locks it holds and what it knows of ZooKeeper. Everything here ends with the
//! session (its locks are gone then), so nothing outlives a reconnect.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Result;
use kube::{Api, runtime::reflector::Store};
use nodepool_crds::{NodeRequest, PoolNode};

use crate::{
    components::Registry,
    metrics::Metrics,
    zk::{self, lock::Lock},
};

/// State shared by the tasks of one session.
pub struct Shared {
    pub zk: zookeeper_client::Client,
    pub kube: kube::Client,
    pub namespace: String,
    pub hostname: String,
    pub registry: tokio::sync::Mutex<Registry>,
    /// Request locks we hold while a request is pending, by request id.
    pub request_locks: tokio::sync::Mutex<HashMap<String, Lock>>,
    /// Serialises work on one node (by PoolNode uid) within this process.
    node_mutexes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Lock contenders of ours, so our brief locks never count as "locked by Zuul".
    own_locks: zk::lock::OwnLocks,
    pub pool_nodes: Store<PoolNode>,
    /// The token of each Kubernetes-type node (by PoolNode uid), read once from the Secret the
    /// node owns: a node's znode is written many times, its token never changes.
    pub node_tokens: Mutex<HashMap<String, String>>,
    pub node_requests: Store<NodeRequest>,
    /// The znode of each PoolNode (by uid), from the `driver_data` of every node znode seen and
    /// every znode created this session, so a PoolNode whose id was never recorded (a crash
    /// after creating its znode, or a cache that has not caught up) is not registered twice.
    pub znodes_by_uid: Mutex<HashMap<String, KnownZnode>>,
    /// The newest copy of each PoolNode this session wrote or read fresh: a reconcile on an
    /// older cached copy waits for the cache.
    pub node_versions: nodepool_service::written::WrittenVersions,
    pub metrics: Metrics,
    /// Requests whose fulfilment this session wrote to ZooKeeper. ZooKeeper itself is the record
    /// (a restarted bridge finds the request already fulfilled there); this saves re-checking it
    /// on every later event of the NodeRequest.
    pub fulfilled_requests: crate::recent::Recent,
    /// Requests whose NodeRequest this session created (the cache may not show it yet).
    pub mirrored_requests: crate::recent::Recent,
    /// Set when a request znode has no NodeRequest yet: wakes [`crate::requests::mirror_new_requests`].
    pub mirror_wanted: tokio::sync::Notify,
    /// Requests an event came for that have no NodeRequest yet: the next mirror round reads them
    /// while it lists the others, one ZooKeeper round trip for both.
    pub new_request_hints: Mutex<std::collections::HashSet<String>>,
    /// Requests this session found or made `pending` in ZooKeeper (see `fulfilled_requests`).
    pub pending_requests: crate::recent::Recent,
    /// Requests withdrawn (their NodeRequest deleted) this session: request ids are never
    /// reused, so a second event for one needs no second delete.
    pub withdrawn_requests: crate::recent::Recent,
    /// Node znodes this session removed itself (the last use of a static slot, a deleted node):
    /// their disappearance is no news, whatever a lagging cache still says of them.
    pub removed_znodes: crate::recent::Recent,
    /// Every launcher's pool components, read once and kept until one of them changes.
    pub(crate) components: tokio::sync::Mutex<Option<Vec<crate::components::Component>>>,
    /// True once the session's resync has read every znode (see [`Shared::until_resynced`]).
    resynced: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// Waits until this session has read every request and node znode. Before that, what it
    /// knows of ZooKeeper is incomplete: a reconcile could register a node whose znode exists
    /// (its id never recorded before a crash), or act on a request ZooKeeper has moved past.
    /// After a restart the PoolNode and NodeRequest reconciles start at once, and did exactly
    /// that within the first 100 ms (duplicate znodes that nothing owned afterwards).
    pub async fn until_resynced(&self) {
        let mut resynced = self.resynced.subscribe();
        let _ = resynced.wait_for(|done| *done).await;
    }

    pub fn pool_node_api(&self) -> Api<PoolNode> {
        Api::namespaced(self.kube.clone(), &self.namespace)
    }

    pub fn node_request_api(&self) -> Api<NodeRequest> {
        Api::namespaced(self.kube.clone(), &self.namespace)
    }

    /// The cached NodeRequest of request `id` (named after it).
    pub fn cached_request(&self, id: &str) -> Option<Arc<NodeRequest>> {
        self.node_requests.get(&kube::runtime::reflector::ObjectRef::new(id).within(&self.namespace))
    }

    /// The cached PoolNode called `name`.
    pub fn cached_node(&self, name: &str) -> Option<Arc<PoolNode>> {
        self.pool_nodes.get(&kube::runtime::reflector::ObjectRef::new(name).within(&self.namespace))
    }

    pub fn node_mutex(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.node_mutexes.lock().unwrap().entry(uid.to_owned()).or_default().clone()
    }

    pub fn forget_node_mutex(&self, uid: &str) {
        self.node_mutexes.lock().unwrap().remove(uid);
    }

    /// Takes a lock without waiting, its contender known as ours throughout.
    pub async fn try_lock(&self, dir: &str) -> Result<Option<Lock>> {
        let token = self.own_locks.begin();
        let lock = zk::lock::try_acquire(&self.zk, dir, &token).await;
        if !matches!(lock, Ok(Some(_))) {
            self.own_locks.end(&token);
        }
        lock
    }

    pub async fn unlock(&self, lock: Lock) {
        let token = lock.token.clone();
        lock.release(&self.zk).await;
        self.lock_gone(&token);
    }

    /// [`Lock::write_and_release`], forgetting the lock once it is gone.
    pub async fn write_and_unlock(
        &self,
        lock: Lock,
        path: &str,
        data: &[u8],
        version: i32,
    ) -> std::result::Result<(), (Lock, zookeeper_client::Error)> {
        let token = lock.token.clone();
        lock.write_and_release(&self.zk, path, data, version).await?;
        self.lock_gone(&token);
        Ok(())
    }

    /// Forgets a lock whose contender is gone by other means (its whole znode deleted).
    pub fn lock_gone(&self, token: &str) {
        self.own_locks.end(token);
    }

    /// Whether a lock contender is (or was, moments ago) one of this bridge's own brief locks.
    pub fn is_or_was_our_lock(&self, contender: &str) -> bool {
        self.own_locks.is_or_was_ours(contender)
    }

    /// Whether someone other than this bridge holds or waits for the lock in `dir`.
    pub async fn locked_by_others(&self, dir: &str) -> Result<bool> {
        let names = zk::lock::contenders(&self.zk, dir).await?;
        Ok(names.iter().any(|name| !self.own_locks.is_ours(name)))
    }

    /// Every launcher's registered pool components (cached until a component changes).
    pub async fn registered_components(&self) -> Result<Vec<crate::components::Component>> {
        let mut cached = self.components.lock().await;
        if cached.is_none() {
            *cached = Some(crate::components::registered(&self.zk).await?);
        }
        Ok(cached.clone().unwrap_or_default())
    }

    /// The PoolNode a znode mirrors, found by the uid recorded in its `driver_data`.
    pub fn pool_node_by_uid(&self, uid: &str) -> Option<Arc<PoolNode>> {
        self.pool_nodes.state().into_iter().find(|node| node.metadata.uid.as_deref() == Some(uid))
    }

    /// The PoolNode mirrored to znode `node_id`.
    pub fn pool_node_by_node_id(&self, node_id: &str) -> Option<Arc<PoolNode>> {
        self.pool_nodes.state().into_iter().find(|node| {
            node.status.as_ref().and_then(|s| s.zookeeper.as_ref()).and_then(|z| z.node_id.as_deref())
                == Some(node_id)
        })
    }
}

impl Shared {
    /// The state of a new session: nothing known of ZooKeeper yet, nothing resynced.
    pub fn new(
        zk: zookeeper_client::Client,
        kube: kube::Client,
        namespace: String,
        hostname: String,
        pool_nodes: Store<PoolNode>,
        node_requests: Store<NodeRequest>,
        metrics: Metrics,
    ) -> Self {
        Shared {
            zk,
            kube,
            namespace,
            hostname,
            registry: Default::default(),
            request_locks: Default::default(),
            node_mutexes: Default::default(),
            own_locks: Default::default(),
            pool_nodes,
            node_tokens: Default::default(),
            node_requests,
            znodes_by_uid: Default::default(),
            node_versions: Default::default(),
            metrics,
            components: Default::default(),
            fulfilled_requests: Default::default(),
            mirrored_requests: Default::default(),
            mirror_wanted: Default::default(),
            new_request_hints: Default::default(),
            pending_requests: Default::default(),
            withdrawn_requests: Default::default(),
            removed_znodes: Default::default(),
            resynced: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Marks the session's resync done (see [`Shared::until_resynced`]).
    pub fn resync_done(&self) {
        self.resynced.send_replace(true);
    }
}

/// A znode the bridge knows for a PoolNode: which registration of the node it is, and its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownZnode {
    pub registration: u32,
    pub node_id: String,
    /// When the bridge created it, while nothing about it is written into the PoolNode yet.
    pub unrecorded_since: Option<Instant>,
}

impl KnownZnode {
    /// A znode found in ZooKeeper (not one this session has just created).
    pub fn found(registration: u32, node_id: &str) -> Self {
        KnownZnode { registration, node_id: node_id.to_owned(), unrecorded_since: None }
    }
}
