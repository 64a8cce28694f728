//! One ZooKeeper session of the bridge. On start it registers pool components and resyncs both
//! sides (every request and node znode, every PoolNode and NodeRequest); then it is driven by
//! events: a persistent recursive watch on `/nodepool` and Kubernetes watches. When the session
//! ends every lock it held is gone, so the bridge drops all session state and starts over.

use std::sync::Arc;

use anyhow::{Context, Result};
use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::{
    Api,
    runtime::{Controller, watcher},
};
use nodepool_crds::{NodeRequest, PoolNode, Provider};
use zookeeper_client::{AddWatchMode, EventType, PersistentWatcher, SessionState, StateWatcher};

use nodepool_service::Health;

use crate::{
    dispatch::{Dispatcher, Key},
    metrics::Metrics,
    nodes, requests,
    shared::Shared,
    zk::{self, ZooKeeperConfig, paths},
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
        let zk_events = zk.watch("/nodepool", AddWatchMode::PersistentRecursive).await?;
        let state = zk.state_watcher();

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
        let shared = Arc::new(Shared::new(
            zk,
            kube.clone(),
            namespace.clone(),
            settings.hostname.clone(),
            node_store,
            request_store,
            settings.metrics.clone(),
        ));

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
            follow_events(&shared, zk_events, &settings.health).await
        };
        let session_end = session_ended(state, &settings);
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

/// Follows ZooKeeper's events once the session is resynced: each changed request or node znode
/// goes to the dispatcher; a reconnect within the session reads everything again. Returns when
/// the session is closed.
async fn follow_events(
    shared: &Arc<Shared>,
    mut zk_events: PersistentWatcher,
    health: &Health,
) -> Result<()> {
    let mut dispatcher = Dispatcher::new(shared.clone());
    loop {
        let event = zk_events.changed().await;
        if event.event_type == EventType::Session {
            if event.session_state.is_terminated() {
                return Ok(());
            }
            if event.session_state == SessionState::SyncConnected {
                // Reconnected within the session: the watch is back, but what changed
                // while we were disconnected was not delivered. Read everything again.
                tracing::info!("reconnected to ZooKeeper; resyncing");
                for id in shared.zk.list_children(paths::NODES).await? {
                    dispatcher.submit(Key::Node(id));
                }
                submit_requests(shared, &mut dispatcher).await?;
                health.pass(ZOOKEEPER_CHECK);
            }
            continue;
        }
        match paths::classify(&event.path) {
            paths::Znode::Component => {
                // A launcher (this bridge included) registered, left, paused or resumed
                // a pool: requests passed over may be ours now, and whether ours yield
                // may have changed.
                *shared.components.lock().await = None;
                if let Err(error) = submit_requests(shared, &mut dispatcher).await {
                    tracing::warn!(error = format!("{error:#}"), "listing requests failed");
                }
            }
            paths::Znode::Request(id) => dispatcher.submit(Key::Request(id.to_owned())),
            paths::Znode::Node(id) => dispatcher.submit(Key::Node(id.to_owned())),
            // Who holds a node's lock changes only with a contender of someone else's;
            // the lock directory itself and our own brief locks leave it as it was.
            paths::Znode::NodeLock { node, contender: Some(contender) }
                if !shared.is_or_was_our_lock(contender) =>
            {
                dispatcher.submit(Key::Node(node.to_owned()))
            }
            paths::Znode::NodeLock { .. } => {}
            paths::Znode::Other => {}
        }
    }
}

/// Reports the session's state in the metrics and health checks; returns when it ended.
async fn session_ended(mut state: StateWatcher, settings: &Settings) {
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
