//! One ZooKeeper session of the bridge. On start it registers pool components and resyncs both
//! sides (every request and node znode, every PoolNode and NodeRequest); then it is driven by
//! events: a persistent recursive watch on `/nodepool` and Kubernetes watches. When the session
//! ends every lock it held is gone, so the bridge drops all session state and starts over.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::{
    Api,
    runtime::{Controller, reflector::Store, watcher},
};
use nodepool_crds::{NodeRequest, PoolNode, Provider};
use zookeeper_client::{AddWatchMode, EventType, SessionState};

use nodepool_service::Health;

use crate::{
    components::Registry,
    dispatch::{Dispatcher, Key},
    metrics::Metrics,
    nodes, requests,
    zk::{self, ZooKeeperConfig, lock::Lock, paths},
};

/// What the bridge is configured with.
#[derive(Clone)]
pub struct Settings {
    pub kube: kube::Client,
    /// Namespace holding the Providers, NodeRequests and PoolNodes this bridge serves.
    pub namespace: String,
    pub zookeeper: ZooKeeperConfig,
    /// Host name used in pool-component names and ids.
    pub hostname: String,
    pub cleanup: crate::cleanup::CleanupSettings,
    pub metrics: Metrics,
    /// Readiness: the `zookeeper` check passes while a session is connected and resynced.
    pub health: Health,
}

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
    pub node_requests: Store<NodeRequest>,
    /// The znode of each PoolNode (by uid), from the `driver_data` of every node znode seen and
    /// every znode created this session, so a PoolNode whose id was never recorded (a crash
    /// after creating its znode, or a cache that has not caught up) is not registered twice.
    pub znodes_by_uid: Mutex<HashMap<String, crate::nodes::KnownZnode>>,
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

    fn resync_done(&self) {
        self.resynced.send_replace(true);
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

/// The readiness check that follows the ZooKeeper session.
pub const ZOOKEEPER_CHECK: &str = "zookeeper";

pub struct Session {
    zk: zookeeper_client::Client,
    settings: Settings,
}

impl Session {
    pub async fn start(settings: &Settings) -> Result<Session> {
        let zk = settings.zookeeper.connect().await?;
        for path in [
            paths::REQUESTS,
            paths::REQUEST_LOCKS,
            paths::NODES,
            paths::POOL_COMPONENTS,
            paths::LAUNCHER_COMPONENTS,
        ] {
            zk::ensure_path(&zk, path).await?;
        }
        settings.metrics.session_started();
        Ok(Session { zk, settings: settings.clone() })
    }

    /// Follows the session's state (it stays readable after the session is dropped).
    pub fn state_watcher(&self) -> zookeeper_client::StateWatcher {
        self.zk.state_watcher()
    }

    /// Runs until the ZooKeeper session ends.
    pub async fn run(self) -> Result<()> {
        let Session { zk, settings } = self;
        let kube = settings.kube.clone();
        let namespace = settings.namespace.clone();

        // Watch first, then resync, so nothing that happens in between is missed.
        let mut zk_events = zk.watch("/nodepool", AddWatchMode::PersistentRecursive).await?;
        let mut state = zk.state_watcher();

        // One watch per kind feeds both the cache the handlers read and the controller.
        let node_cache = nodepool_service::watch::shared_cache(
            Api::<PoolNode>::namespaced(kube.clone(), &namespace),
            || {},
        );
        let request_cache = nodepool_service::watch::shared_cache(
            Api::<NodeRequest>::namespaced(kube.clone(), &namespace),
            || {},
        );
        let (mut nodes_listed, mut requests_listed) = (node_cache.listed, request_cache.listed);
        let node_controller =
            Controller::for_stream(node_cache.events.applied_objects(), node_cache.store.clone())
                .with_config(nodepool_service::watch::controller_config());
        let request_controller =
            Controller::for_stream(request_cache.events.applied_objects(), request_cache.store.clone())
                .with_config(nodepool_service::watch::controller_config());
        let (node_store, request_store) = (node_cache.store, request_cache.store);
        let shared = Arc::new(Shared {
            zk,
            kube: kube.clone(),
            namespace: namespace.clone(),
            hostname: settings.hostname.clone(),
            registry: Default::default(),
            request_locks: Default::default(),
            node_mutexes: Default::default(),
            own_locks: Default::default(),
            pool_nodes: node_store,
            node_requests: request_store,
            znodes_by_uid: Default::default(),
            node_versions: Default::default(),
            metrics: settings.metrics.clone(),
            components: Default::default(),
            fulfilled_requests: Default::default(),
            mirrored_requests: Default::default(),
            mirror_wanted: Default::default(),
            pending_requests: Default::default(),
            withdrawn_requests: Default::default(),
            removed_znodes: Default::default(),
            resynced: tokio::sync::watch::Sender::new(false),
        });

        let reconciles = &settings.metrics.reconciles;
        let nodes_task = node_controller
            .run(reconciles.instrument("bridge_nodes", nodes::reconcile), nodes::error_policy, shared.clone())
            .for_each(|_| async {});
        let requests_task = request_controller
            .run(
                reconciles.instrument("bridge_requests", requests::reconcile),
                requests::error_policy,
                shared.clone(),
            )
            .for_each(|_| async {});
        let providers_task = sync_components(shared.clone());
        let cleanup_task = crate::cleanup::run(shared.clone(), settings.cleanup);
        let mirror_task = requests::mirror_new_requests(shared.clone());

        let events_task = async {
            nodes_listed.wait_for(|listed| *listed).await.context("PoolNode cache")?;
            requests_listed.wait_for(|listed| *listed).await.context("NodeRequest cache")?;
            resync_zookeeper(&shared).await?;
            shared.resync_done();
            tracing::info!("resync done; following events");
            settings.health.pass(ZOOKEEPER_CHECK);
            let mut dispatcher = Dispatcher::new(shared.clone());
            loop {
                let event = zk_events.changed().await;
                if event.event_type == EventType::Session {
                    if event.session_state.is_terminated() {
                        return Ok::<_, anyhow::Error>(());
                    }
                    if event.session_state == SessionState::SyncConnected {
                        // Reconnected within the session: the watch is back, but what changed
                        // while we were disconnected was not delivered. Read everything again.
                        tracing::info!("reconnected to ZooKeeper; resyncing");
                        for id in shared.zk.list_children(paths::NODES).await? {
                            dispatcher.submit(Key::Node(id));
                        }
                        submit_requests(&shared, &mut dispatcher).await?;
                        settings.health.pass(ZOOKEEPER_CHECK);
                    }
                    continue;
                }
                match paths::classify(&event.path) {
                    paths::Znode::Component => {
                        // A launcher (this bridge included) registered, left, paused or resumed
                        // a pool: requests passed over may be ours now, and whether ours yield
                        // may have changed.
                        *shared.components.lock().await = None;
                        if let Err(error) = submit_requests(&shared, &mut dispatcher).await {
                            tracing::warn!(error = format!("{error:#}"), "listing requests failed");
                        }
                    }
                    paths::Znode::Request(id) => dispatcher.submit(Key::Request(id.to_owned())),
                    paths::Znode::Node(id) => dispatcher.submit(Key::Node(id.to_owned())),
                    // Who holds a node's lock changes only with a contender of someone else's;
                    // the lock directory itself and our own brief locks leave it as it was.
                    paths::Znode::NodeLock { node, contender: Some(contender) }
                        if !shared.own_locks.is_or_was_ours(contender) =>
                    {
                        dispatcher.submit(Key::Node(node.to_owned()))
                    }
                    paths::Znode::NodeLock { .. } => {}
                    paths::Znode::Other => {}
                }
            }
        };
        let session_end = async {
            loop {
                let state = state.changed().await;
                settings.metrics.zookeeper_connected(state == SessionState::SyncConnected);
                if state != SessionState::SyncConnected {
                    settings.health.fail(ZOOKEEPER_CHECK, format!("ZooKeeper session {state:?}"));
                }
                if state.is_terminated() || state == SessionState::Expired {
                    return;
                }
            }
        };
        tokio::select! {
            () = nodes_task => tracing::warn!("PoolNode controller stopped"),
            () = requests_task => tracing::warn!("NodeRequest controller stopped"),
            result = providers_task => result?,
            result = cleanup_task => result?,
            result = mirror_task => result?,
            result = events_task => result?,
            () = session_end => tracing::warn!("ZooKeeper session ended"),
        }
        Ok(())
    }
}

/// Reads every request and node znode once, as if each had just changed.
async fn resync_zookeeper(shared: &Arc<Shared>) -> Result<()> {
    for id in shared.zk.list_children(paths::NODES).await? {
        if let Err(error) = nodes::on_node_event(shared, &id).await {
            tracing::warn!(node = %id, error = format!("{error:#}"), "resyncing a node failed");
        }
    }
    let present = shared.zk.list_children(paths::REQUESTS).await?;
    for id in &present {
        if let Err(error) = requests::on_request_event(shared, id).await {
            tracing::warn!(request = %id, error = format!("{error:#}"), "resyncing a request failed");
        }
    }
    requests::forget_withdrawn(shared, &present.into_iter().collect()).await
}

/// Has every open request read again.
async fn submit_requests(shared: &Shared, dispatcher: &mut Dispatcher) -> Result<()> {
    for id in shared.zk.list_children(paths::REQUESTS).await? {
        dispatcher.submit(Key::Request(id));
    }
    Ok(())
}

/// Keeps pool components in line with the Providers for the whole session.
async fn sync_components(shared: Arc<Shared>) -> Result<()> {
    let api: Api<Provider> = Api::namespaced(shared.kube.clone(), &shared.namespace);
    let (store, writer) = kube::runtime::reflector::store();
    let mut events =
        kube::runtime::reflector(writer, watcher(api, crate::watch_config()).default_backoff()).boxed();
    while let Some(event) = events.next().await {
        match event {
            // Wait for the whole initial list before registering anything.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "watching Providers");
                continue;
            }
        }
        let providers: Vec<Provider> = store.state().iter().map(|p| (**p).clone()).collect();
        // A change in what we serve rewrites our pool components; their watch events re-read
        // the open requests (see `dispatch`), so nothing passed over is missed.
        let mut registry = shared.registry.lock().await;
        if let Err(error) = registry.sync(&shared.zk, &shared.hostname, &providers).await {
            tracing::warn!(error = format!("{error:#}"), "updating pool components failed");
        }
    }
    Ok(())
}
