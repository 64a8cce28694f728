//! nodepool-operator: the controllers behind the nodepool.dev custom resources.
//!
//! - [`scheduler`]: hands requests to pools in Nodepool's order (one pass over all requests).
//! - [`controllers::provider`]: provider status, and the slots of static providers.
//! - [`controllers::pool_node`]: node lifecycle: registration, Zuul's states, release, deletion.
//! - [`controllers::label`]: label status.

pub mod clouds;
pub mod context;
pub mod controllers;
pub mod launches;
pub mod metrics;
pub mod scheduler;
pub mod slots;
pub mod status;
pub mod status_page;
pub mod web;

use std::sync::Arc;

use anyhow::Result;
use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::WatchStreamExt;
use kube::{
    Api,
    runtime::{Controller, reflector, watcher},
};
use nodepool_crds::{Image, Label, NodeRequest, PoolNode, Provider, TenantLimit};

pub use context::{Context, Settings};

/// Runs every controller until one of them stops.
pub async fn run(settings: Settings) -> Result<()> {
    let client = settings.client.clone();
    let namespace = settings.namespace.clone();
    let providers: Api<Provider> = Api::namespaced(client.clone(), &namespace);
    let nodes: Api<PoolNode> = Api::namespaced(client.clone(), &namespace);
    let requests: Api<NodeRequest> = Api::namespaced(client.clone(), &namespace);
    let labels: Api<Label> = Api::namespaced(client.clone(), &namespace);
    let tenant_limits: Api<TenantLimit> = Api::namespaced(client.clone(), &namespace);
    let images: Api<Image> = Api::namespaced(client.clone(), &namespace);

    let provider_controller = Controller::new(providers.clone(), crate::watch_config())
        .with_config(nodepool_service::watch::controller_config());
    let label_controller = Controller::new(labels, crate::watch_config())
        .with_config(nodepool_service::watch::controller_config());
    let tenant_limit_controller = Controller::new(tenant_limits, crate::watch_config())
        .with_config(nodepool_service::watch::controller_config());
    let image_controller = Controller::new(images.clone(), crate::watch_config())
        .with_config(nodepool_service::watch::controller_config());

    // The caches the scheduler and the reconcilers read. Provider and request caches are
    // separate from the controllers' own stores on purpose: a store's `wait_until_ready` wakes
    // only one waiter, and each controller already waits on its own store before it starts.
    // PoolNodes, the one kind that grows into the thousands, have a single cache shared with
    // the PoolNode controller (its readiness is read off the watch stream instead), kept
    // without managedFields (server-side-apply bookkeeping nothing here reads).
    let (provider_store, provider_writer) = reflector::store();
    let scheduler_wake = Arc::new(tokio::sync::Notify::new());
    let node_cache = {
        let wake = scheduler_wake.clone();
        nodepool_service::watch::shared_cache(nodes.clone(), move || wake.notify_one())
    };
    let node_store = node_cache.store.clone();
    let mut nodes_listed = node_cache.listed.clone();
    // NodeRequests: one watch for the cache and for the PoolNode controller, which looks at the
    // nodes reserved for a request when it changes or goes away.
    let request_cache = {
        let wake = scheduler_wake.clone();
        nodepool_service::watch::shared_cache(requests.clone(), move || wake.notify_one())
    };
    let request_store = request_cache.store.clone();
    let mut requests_listed = request_cache.listed.clone();
    let (ready_tx, caches_ready) = tokio::sync::watch::channel(false);
    let context = Arc::new(Context::new(
        settings,
        provider_store.clone(),
        (node_store.clone(), node_cache.progress.clone()),
        request_store.clone(),
        label_controller.store(),
        tenant_limit_controller.store(),
        image_controller.store(),
        caches_ready,
        scheduler_wake,
    ));

    context.settings.listings.observe(web::Stores {
        namespace: namespace.clone(),
        providers: provider_store.clone(),
        nodes: node_store.clone(),
        requests: request_store.clone(),
        labels: context.labels.clone(),
        images: context.images.clone(),
    });
    context.metrics.observe(metrics::Caches {
        providers: provider_store.clone(),
        nodes: node_store.clone(),
        requests: request_store.clone(),
    });

    // Every change to requests, nodes or providers is a reason for another scheduling pass.
    let node_controller = Controller::for_stream(node_cache.events.applied_objects(), node_store.clone())
        .with_config(nodepool_service::watch::controller_config());
    let cache_tasks = reflector::reflector(
        provider_writer,
        watcher(providers.clone(), crate::watch_config()).default_backoff(),
    )
    .for_each(wake_scheduler(context.scheduler_wake.clone()));
    // The one waiter on those stores; everyone else waits on `caches_ready`.
    let gate = async move {
        let ready = async {
            provider_store.wait_until_ready().await?;
            // The node and request stores' own waiter is the PoolNode controller.
            let _ = nodes_listed.wait_for(|listed| *listed).await;
            let _ = requests_listed.wait_for(|listed| *listed).await;
            Ok::<_, kube::runtime::reflector::store::WriterDropped>(())
        };
        if ready.await.is_ok() {
            let _ = ready_tx.send(true);
        }
        std::future::pending::<()>().await
    };
    let image_task = image_task(image_controller, &providers, &context);
    let provider_task = provider_task(provider_controller, images, &context);
    let node_task = node_task(node_controller, request_cache.events, &context);
    let tenant_limit_task = tenant_limit_controller
        .run(
            context.metrics.reconciles.instrument("tenant_limit", controllers::tenant_limit::reconcile),
            controllers::tenant_limit::error_policy,
            context.clone(),
        )
        .for_each(log_controller_error);
    let label_task = label_controller
        .run(
            context.metrics.reconciles.instrument("label", controllers::label::reconcile),
            controllers::label::error_policy,
            context.clone(),
        )
        .for_each(log_controller_error);
    let scheduler_task = scheduler::run(context.clone());

    tokio::select! {
        () = cache_tasks => tracing::warn!("the Provider watch ended"),
        () = gate => {}
        () = provider_task => tracing::warn!("Provider controller ended"),
        () = node_task => tracing::warn!("PoolNode controller ended"),
        () = label_task => tracing::warn!("Label controller ended"),
        () = image_task => tracing::warn!("Image controller ended"),
        () = tenant_limit_task => tracing::warn!("TenantLimit controller ended"),
        result = scheduler_task => result?,
    }
    Ok(())
}

/// The Image controller. An image resolving (or not) changes what its providers can launch, and
/// a provider's labels decide which images must be resolved for it.
fn image_task(
    controller: Controller<Image>,
    providers: &Api<Provider>,
    context: &Arc<Context>,
) -> impl std::future::Future<Output = ()> + use<> {
    let namespace = context.settings.namespace.clone();
    let images_of = move |provider: Provider| {
        let names: std::collections::BTreeSet<String> = provider
            .spec
            .pools
            .iter()
            .flat_map(|p| p.labels.iter().filter_map(|l| l.image.clone()))
            .collect();
        names
            .into_iter()
            .map(|name| kube::runtime::reflector::ObjectRef::<Image>::new(&name).within(&namespace))
            .collect::<Vec<_>>()
    };
    controller
        .watches(providers.clone(), crate::watch_config(), images_of)
        .run(
            context.metrics.reconciles.instrument("image", controllers::image::reconcile),
            controllers::image::error_policy,
            context.clone(),
        )
        .for_each(log_controller_error)
}

/// The Provider controller, woken by its nodes (through a metadata-only watch: the many, large
/// PoolNodes are not deserialized and held a second time for it) and by the Images its labels
/// boot.
fn provider_task(
    controller: Controller<Provider>,
    images: Api<Image>,
    context: &Arc<Context>,
) -> impl std::future::Future<Output = ()> + use<> {
    let node_metadata: Api<kube::core::PartialObjectMeta<PoolNode>> =
        Api::namespaced(context.settings.client.clone(), &context.settings.namespace);
    let node_owners = watcher(node_metadata, crate::watch_config()).touched_objects();
    let providers = context.providers.clone();
    let image_users = move |image: Image| {
        let name = image.name_any();
        providers
            .state()
            .into_iter()
            .filter(|p| {
                p.spec.pools.iter().any(|pool| pool.labels.iter().any(|l| l.image.as_deref() == Some(&name)))
            })
            .map(|p| kube::runtime::reflector::ObjectRef::from_obj(p.as_ref()))
            .collect::<Vec<_>>()
    };
    controller
        .owns_stream(node_owners)
        .watches(images, crate::watch_config(), image_users)
        .run(
            context.metrics.reconciles.instrument("provider", controllers::provider::reconcile),
            controllers::provider::error_policy,
            context.clone(),
        )
        .for_each(log_controller_error)
}

/// The PoolNode controller. A request that goes away (Zuul cancelled or accepted it) is a
/// reason to look at the nodes reserved for it: unless Zuul holds them, they are released.
fn node_task<E>(
    controller: Controller<PoolNode>,
    request_events: E,
    context: &Arc<Context>,
) -> impl std::future::Future<Output = ()> + use<E>
where
    E: futures::Stream<Item = Result<watcher::Event<NodeRequest>, watcher::Error>> + Send + 'static,
{
    let nodes = context.nodes.clone();
    let reserved_for = move |request: NodeRequest| {
        nodes
            .state()
            .into_iter()
            .filter(|node| {
                node.status.as_ref().and_then(|s| s.allocated_to.as_deref())
                    == Some(request.spec.request_id.as_str())
            })
            .map(|node| kube::runtime::reflector::ObjectRef::from_obj(node.as_ref()))
            .collect::<Vec<_>>()
    };
    controller
        .watches_stream(request_events.touched_objects(), reserved_for)
        .run(
            context.metrics.reconciles.instrument("pool_node", controllers::pool_node::reconcile),
            controllers::pool_node::error_policy,
            context.clone(),
        )
        .for_each(log_controller_error)
}

/// A stream consumer that wakes the scheduler on every item.
fn wake_scheduler<T>(notify: Arc<tokio::sync::Notify>) -> impl FnMut(T) -> std::future::Ready<()> {
    move |_| {
        notify.notify_one();
        std::future::ready(())
    }
}

/// Reconcile failures are logged by each error policy; this reports what else a controller
/// stream yields: watch errors and objects missing from the cache.
async fn log_controller_error<T: std::fmt::Debug, E: std::fmt::Display>(
    result: Result<T, kube::runtime::controller::Error<controllers::Error, E>>,
) {
    match result {
        Ok(_) | Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
        Err(error) => tracing::warn!(%error, "controller stream error"),
    }
}

/// How every watch is opened (see [`nodepool_service::watch`]).
pub fn watch_config() -> kube::runtime::watcher::Config {
    nodepool_service::watch::config()
}
