//! What every controller shares.

use std::{sync::Arc, time::Duration};

use kube::{Api, runtime::reflector::Store};
use nodepool_crds::{Label, NodeRequest, PoolNode, Provider};
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
}

pub struct Context {
    pub client: kube::Client,
    pub namespace: String,
    pub max_hold_age: Option<Duration>,
    pub providers: Store<Provider>,
    pub nodes: Store<PoolNode>,
    pub requests: Store<NodeRequest>,
    pub labels: Store<Label>,
    /// Wakes the scheduler for another pass.
    pub scheduler_wake: Arc<Notify>,
    /// True once the provider, node and request caches hold their initial lists.
    caches_ready: tokio::sync::watch::Receiver<bool>,
}

impl Context {
    pub fn new(
        settings: Settings,
        providers: Store<Provider>,
        nodes: Store<PoolNode>,
        requests: Store<NodeRequest>,
        labels: Store<Label>,
        caches_ready: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Context {
            client: settings.client,
            namespace: settings.namespace,
            max_hold_age: settings.max_hold_age,
            providers,
            nodes,
            requests,
            labels,
            scheduler_wake: Arc::new(Notify::new()),
            caches_ready,
        }
    }

    /// Waits until the caches hold their initial lists (any number of callers may wait).
    pub async fn caches_ready(&self) {
        let mut ready = self.caches_ready.clone();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn provider(&self, name: &str) -> Option<Arc<Provider>> {
        self.providers.get(&kube::runtime::reflector::ObjectRef::new(name).within(&self.namespace))
    }
}
