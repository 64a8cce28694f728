//! What every controller shares.

use std::{sync::Arc, time::Duration};

use kube::{
    Api, Resource,
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::Store,
    },
};
use nodepool_crds::{Image, Label, NodeRequest, PoolNode, PoolNodeStatus, Provider, TenantLimit};

use crate::{clouds::Clouds, metrics::Metrics};
use nodepool_service::watch::WatchProgress;
use tokio::sync::Notify;

/// Configuration of the operator.
#[derive(Clone)]
pub struct Settings {
    pub client: kube::Client,
    /// Namespace whose nodepool.dev objects this operator manages.
    pub namespace: String,
    /// Delete held nodes after this long even without a per-node expiration (Nodepool's
    /// `max-hold-age`); `None` keeps them until Zuul releases them.
    pub max_hold_age: Option<Duration>,
    /// Tags everything this installation creates in a cloud, so installations sharing an
    /// account never touch each other's instances.
    pub system_id: String,
    /// How often each cloud provider is checked for leaked instances and volumes.
    pub cleanup_interval: Duration,
    /// Where the controllers record what they do.
    pub metrics: Arc<Metrics>,
    /// What Nodepool's web endpoints show (`web`), given the caches once they exist.
    pub listings: Arc<crate::web::Listings>,
}

pub struct Context {
    /// How the operator was configured; `metrics` is a copy of `settings.metrics` for brevity.
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// The cloud behind each provider, and what is known of it between reconciles.
    pub clouds: Clouds,
    pub providers: Store<Provider>,
    pub nodes: Store<PoolNode>,
    /// How far the watch behind `nodes` has got.
    pub nodes_watched: WatchProgress,
    pub requests: Store<NodeRequest>,
    pub labels: Store<Label>,
    pub tenant_limits: Store<TenantLimit>,
    pub images: Store<Image>,
    /// When the operator first saw each vanished request gone (for releasing its nodes).
    vanished_requests: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// When each Provider's node counts were last written (see the Provider reconciler).
    pub provider_counts: WriteTimes,
    /// The version of our last status write to each PoolNode (see [`nodepool_service::written`]).
    pub node_writes: nodepool_service::written::WrittenVersions,
    /// Launch tokens no create was sent with yet (see [`crate::launches`]).
    pub launches: crate::launches::Launches,
    /// Wakes the scheduler for another pass.
    pub scheduler_wake: Arc<Notify>,
    /// True once the provider, node and request caches hold their initial lists.
    caches_ready: tokio::sync::watch::Receiver<bool>,
    /// Publishes Kubernetes Events (shown by `kubectl describe`).
    recorder: Recorder,
}

impl Context {
    // One argument per cache; a builder would only move the list elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Settings,
        providers: Store<Provider>,
        (nodes, nodes_watched): (Store<PoolNode>, WatchProgress),
        requests: Store<NodeRequest>,
        labels: Store<Label>,
        tenant_limits: Store<TenantLimit>,
        images: Store<Image>,
        caches_ready: tokio::sync::watch::Receiver<bool>,
        scheduler_wake: Arc<Notify>,
    ) -> Self {
        let recorder = Recorder::new(
            settings.client.clone(),
            Reporter { controller: "nodepool-operator".into(), instance: None },
        );
        Context {
            recorder,
            clouds: Clouds::new(settings.metrics.cloud_api.clone()),
            metrics: settings.metrics.clone(),
            settings,
            providers,
            nodes,
            nodes_watched,
            requests,
            labels,
            tenant_limits,
            images,
            vanished_requests: Default::default(),
            provider_counts: Default::default(),
            node_writes: Default::default(),
            launches: Default::default(),
            scheduler_wake,
            caches_ready,
        }
    }

    /// Applies the operator's part of a PoolNode's status and remembers the version the write
    /// produced, so reconciles on older cached copies wait (see [`nodepool_service::written`]).
    pub async fn write_node_status(
        &self,
        node: &PoolNode,
        status: &PoolNodeStatus,
    ) -> anyhow::Result<PoolNode> {
        let updated = crate::status::apply_node_status(&self.api(), node, status).await?;
        self.node_writes.record(&updated);
        Ok(updated)
    }

    /// Waits until the caches hold their initial lists (any number of callers may wait).
    pub async fn caches_ready(&self) {
        let mut ready = self.caches_ready.clone();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// Waits until `caught_up` holds for the caches, which show this operator's own writes a
    /// moment after they are made, checking every few milliseconds for at most
    /// [`CACHE_CATCH_UP`]. Returns whether they caught up; callers that plan on the caches go
    /// on either way, as a lagging watch must not stop them for good.
    pub async fn until_cached(&self, caught_up: impl Fn() -> bool) -> bool {
        nodepool_service::written::until_cached(CACHE_CATCH_UP, caught_up).await
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.settings.client.clone(), &self.settings.namespace)
    }

    /// Publishes an Event about `object`; a failure to publish is logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_owned(),
            note: Some(note),
            action: "Scheduling".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, "publishing an event failed");
        }
    }

    /// The object called `name` in this namespace, as the cache `store` shows it.
    pub fn cached<K>(&self, store: &Store<K>, name: &str) -> Option<Arc<K>>
    where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        store.get(&kube::runtime::reflector::ObjectRef::new(name).within(&self.settings.namespace))
    }

    pub fn provider(&self, name: &str) -> Option<Arc<Provider>> {
        self.cached(&self.providers, name)
    }
}

impl Context {
    /// The cloud behind a provider (`Ok(None)` for a static one).
    pub async fn cloud(
        &self,
        provider: &Provider,
    ) -> Result<Option<Arc<dyn nodepool_driver::Cloud>>, crate::clouds::CloudUnavailable> {
        self.clouds.get(&self.settings.client, &self.settings.system_id, provider).await
    }

    /// How long ago the operator first saw `request` gone (zero the first time).
    pub fn request_gone_for(&self, request: &str) -> Duration {
        let mut vanished = self.vanished_requests.lock().expect("vanished lock");
        // Forget requests gone long ago, so the map does not grow for ever.
        vanished.retain(|_, since| since.elapsed() < Duration::from_secs(3600));
        vanished.entry(request.to_owned()).or_insert_with(std::time::Instant::now).elapsed()
    }

    pub fn image(&self, name: &str) -> Option<Arc<Image>> {
        self.cached(&self.images, name)
    }
}

/// How long [`Context::until_cached`] waits at most. Under a burst the watches can lag by
/// seconds; planning on a cache without one's own new nodes would create them again, so this is
/// generous.
pub const CACHE_CATCH_UP: Duration = Duration::from_secs(30);

/// When something was last written, by key: for writes that may be put off for a while.
#[derive(Default)]
pub struct WriteTimes(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

impl WriteTimes {
    /// How long until `key` may be written again, or `None` if it may be written now.
    pub fn wait(&self, key: &str, interval: Duration) -> Option<Duration> {
        let times = self.0.lock().expect("write times lock");
        let elapsed = times.get(key)?.elapsed();
        (elapsed < interval).then(|| interval - elapsed)
    }

    pub fn written(&self, key: &str) {
        self.0.lock().expect("write times lock").insert(key.to_owned(), std::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_put_off_until_the_interval_has_passed() {
        let times = WriteTimes::default();
        assert_eq!(times.wait("p", Duration::from_secs(5)), None, "never written: write now");
        times.written("p");
        let wait = times.wait("p", Duration::from_secs(5)).expect("just written: wait");
        assert!(wait > Duration::from_secs(4) && wait <= Duration::from_secs(5), "{wait:?}");
        assert_eq!(times.wait("other", Duration::from_secs(5)), None, "keys are separate");
        assert_eq!(times.wait("p", Duration::ZERO), None);
    }
}
