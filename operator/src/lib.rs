//! nodepool-operator: the controllers behind the nodepool.dev custom resources.
//!
//! - [`scheduler`]: hands requests to pools in Nodepool's order (one pass over all requests).
//! - [`controllers::provider`]: provider status, and the slots of static providers.
//! - [`controllers::pool_node`]: node lifecycle: registration, Zuul's states, release, deletion.
//! - [`controllers::label`]: label status.

pub mod context;
pub mod controllers;
pub mod scheduler;
pub mod status;

use std::sync::Arc;

use anyhow::Result;
use futures::StreamExt;
use kube::{
    Api,
    runtime::{Controller, reflector, watcher},
};
use nodepool_crds::{Label, NodeRequest, PoolNode, Provider};

pub use context::{Context, Settings};

/// Runs every controller until one of them stops.
pub async fn run(settings: Settings) -> Result<()> {
    let client = settings.client.clone();
    let namespace = settings.namespace.clone();
    let providers: Api<Provider> = Api::namespaced(client.clone(), &namespace);
    let nodes: Api<PoolNode> = Api::namespaced(client.clone(), &namespace);
    let requests: Api<NodeRequest> = Api::namespaced(client.clone(), &namespace);
    let labels: Api<Label> = Api::namespaced(client.clone(), &namespace);

    let provider_controller = Controller::new(providers.clone(), watcher::Config::default());
    let node_controller = Controller::new(nodes.clone(), watcher::Config::default());
    let label_controller = Controller::new(labels, watcher::Config::default());
    let (request_store, request_writer) = reflector::store();
    let request_stream = reflector::reflector(request_writer, watcher(requests, watcher::Config::default()));

    let context = Arc::new(Context::new(
        settings,
        provider_controller.store(),
        node_controller.store(),
        request_store,
        label_controller.store(),
    ));

    // Every change to requests, nodes or providers is a reason for another scheduling pass.
    let wake = context.scheduler_wake.clone();
    let request_events = request_stream.for_each(|_| async { wake.notify_one() });
    let provider_task = provider_controller
        .owns(nodes, watcher::Config::default())
        .run(controllers::provider::reconcile, controllers::provider::error_policy, context.clone())
        .for_each(log_controller_error);
    let node_task = node_controller
        .run(controllers::pool_node::reconcile, controllers::pool_node::error_policy, context.clone())
        .for_each(log_controller_error);
    let label_task = label_controller
        .run(controllers::label::reconcile, controllers::label::error_policy, context.clone())
        .for_each(log_controller_error);
    let scheduler_task = scheduler::run(context.clone());

    tokio::select! {
        () = request_events => tracing::warn!("NodeRequest watch ended"),
        () = provider_task => tracing::warn!("Provider controller ended"),
        () = node_task => tracing::warn!("PoolNode controller ended"),
        () = label_task => tracing::warn!("Label controller ended"),
        result = scheduler_task => result?,
    }
    Ok(())
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
