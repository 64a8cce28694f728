//! The cloud part of the PoolNode reconciler: runs the driver framework's create and delete
//! state machines for one node, storing their progress in the node's status after every step
//! so a restarted operator resumes where it stood.
//!
//! `init` → `building` (create state machine) → `ready` | `failed` | `aborted`;
//! anything finished → `deleting` (delete state machine) → the object is deleted.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::controller::Action,
};
use nodepool_crds::{
    ConnectionSettings, NodeState, OPERATOR_MANAGER, PoolNode, PoolNodeStatus, Provider, conditions,
    labels as node_labels,
    pool_node::KubernetesAccess,
    provider::{Pool, PoolLabel},
};
use nodepool_driver::{
    Cloud, InstanceSpec,
    create::{self, LaunchResult, Next, Plan, Progress, Step},
    delete,
    tags::{self, TagContext},
};

use super::Error;
use crate::{context::Context, status};
use nodepool_crds::conditions::types::LAUNCHED;

/// Condition saying how the node's launch went.
/// How long one SSH host-key scan may take.
const SCAN_TIMEOUT: Duration = Duration::from_secs(10);
/// Retrying when the provider or its cloud is unavailable.
const RETRY_UNAVAILABLE: Duration = Duration::from_secs(15);

fn now() -> Time {
    Time(Timestamp::now())
}

fn requeue(after: Duration) -> Action {
    Action::requeue(after.max(Duration::from_millis(10)))
}

/// The provider, pool and label a cloud node belongs to, and its cloud.
struct Placement {
    provider: Arc<Provider>,
    pool: Pool,
    label: PoolLabel,
    cloud: Arc<dyn Cloud>,
}

async fn placement(node: &PoolNode, ctx: &Context) -> Result<Placement, String> {
    let provider = ctx
        .provider(&node.spec.provider)
        .ok_or_else(|| format!("Provider {:?} does not exist", node.spec.provider))?;
    let pool = provider
        .spec
        .pools
        .iter()
        .find(|p| p.name == node.spec.pool)
        .cloned()
        .ok_or_else(|| format!("pool {:?} is no longer configured", node.spec.pool))?;
    let wanted = node.spec.labels.first().cloned().unwrap_or_default();
    let label = pool
        .labels
        .iter()
        .find(|l| l.name == wanted)
        .cloned()
        .ok_or_else(|| format!("label {wanted:?} is no longer configured in pool {:?}", pool.name))?;
    let cloud = match ctx.cloud(&provider).await {
        Ok(Some(cloud)) => cloud,
        Ok(None) => return Err("the provider has no cloud".into()),
        Err(error) => return Err(error.to_string()),
    };
    Ok(Placement { provider, pool, label, cloud })
}

/// How Zuul logs in to a node of `label`: the Image's settings over Nodepool's defaults.
fn connection(label: &PoolLabel, ctx: &Context) -> ConnectionSettings {
    let image = label.image.as_deref().and_then(|name| ctx.image(name)).map(|i| i.spec.connection.clone());
    image.unwrap_or_default().with_defaults()
}

fn launch_plan(node: &PoolNode, status: &PoolNodeStatus, placement: &Placement, ctx: &Context) -> Plan {
    let provider = &placement.provider;
    let context = TagContext {
        system_id: ctx.settings.system_id.clone(),
        provider: provider.name_any(),
        pool: placement.pool.name.clone(),
        node: node.name_any(),
        label: placement.label.name.clone(),
        request_id: status.allocated_to.clone(),
        tenant: status.tenant.clone(),
        requestor: status.requestor.clone(),
    };
    let image_id = super::cloud_provider::image_for(provider, &placement.label, ctx).ok().flatten();
    let connection = connection(&placement.label, ctx);
    let port = connection.connection_port.unwrap_or(22);
    let ssh = connection.connection_type.unwrap_or_default().is_ssh();
    Plan {
        spec: InstanceSpec {
            token: String::new(),
            attempt: 1,
            node: node.name_any(),
            pool: placement.pool.clone(),
            label: placement.label.clone(),
            image_id,
            tags: tags::instance_tags(&placement.label, &context),
            first_try: false,
        },
        launch_retries: provider.spec.launch_retries,
        boot_timeout: provider.spec.boot_timeout.0,
        launch_timeout: provider.spec.launch_timeout.0,
        host_key_checking: placement.pool.host_key_checking && ssh,
        ssh_port: port,
        scan_timeout: SCAN_TIMEOUT,
        unsent_token: None,
    }
}

/// The Secret that holds a Kubernetes-type node's token: owned by the node, so it goes with it.
fn token_secret_name(node: &PoolNode) -> String {
    format!("{}-kubernetes", node.name_any())
}

/// Keeps the token of a Kubernetes-type node in a Secret the node owns, and returns what the
/// status says of its access (everything but the token).
async fn keep_token(
    node: &PoolNode,
    credentials: &nodepool_driver::KubernetesCredentials,
    ctx: &Context,
) -> Result<KubernetesAccess, Error> {
    let name = token_secret_name(node);
    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            owner_references: node.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            "token".to_owned(),
            ByteString(credentials.token.clone().into_bytes()),
        )])),
        ..Default::default()
    };
    secret.metadata.labels =
        Some(BTreeMap::from([(node_labels::PROVIDER.to_owned(), node.spec.provider.clone())]));
    let params = PatchParams::apply(OPERATOR_MANAGER).force();
    ctx.api::<Secret>().patch(&name, &params, &Patch::Apply(&secret)).await?;
    Ok(KubernetesAccess {
        host: credentials.host.clone(),
        namespace: credentials.namespace.clone(),
        user: credentials.user.clone(),
        skip_tls: credentials.skip_tls,
        ca_crt: credentials.ca_crt.clone(),
        pod: credentials.pod.clone(),
        token_secret: name,
    })
}

/// Writes the status a launch step produced (remembered as ours, see [`nodepool_service::written`]).
///
/// The step's cloud call is made by now. If the write conflicts because the scheduler or the
/// bridge wrote the node in between (its allocation, the bridge's ZooKeeper view), the node is read
/// again and, as long as its launch stands where this step started, the step's outcome is
/// written onto the fresh copy. Failing instead would repeat the cloud call, and under a burst
/// of launches a good part of all cloud calls went that way.
async fn write_status(node: &PoolNode, status: &PoolNodeStatus, ctx: &Context) -> Result<PoolNode, Error> {
    let api: Api<PoolNode> = ctx.api();
    match ctx.write_node_status(node, status).await {
        Ok(updated) => Ok(updated),
        Err(error) if status::is_conflict(&error) => {
            let Some(fresh) = api.get_opt(&node.name_any()).await? else { return Err(error.into()) };
            let launch_of = |n: &PoolNode| n.status.as_ref().map(|s| (s.state, s.launch.clone()));
            if launch_of(&fresh) != launch_of(node) {
                return Err(error.into());
            }
            let merged = launch_step_onto(&fresh.status.clone().unwrap_or_default(), status);
            Ok(ctx.write_node_status(&fresh, &merged).await?)
        }
        Err(error) => Err(error.into()),
    }
}

/// A launch step's status written onto a fresh copy of the node: the scheduler's part, the
/// allocation, is taken whole from the fresh copy (which request, which hand-out, for whom); the
/// rest is the step's, the node's resources included (the scheduler writes those once, at
/// creation, and the launch replaces them with what the instance holds).
fn launch_step_onto(fresh: &PoolNodeStatus, step: &PoolNodeStatus) -> PoolNodeStatus {
    PoolNodeStatus {
        allocated_to: fresh.allocated_to.clone(),
        allocation_id: fresh.allocation_id.clone(),
        tenant: fresh.tenant.clone(),
        requestor: fresh.requestor.clone(),
        ..step.clone()
    }
}

/// How long a new node may stay without the status its creator writes next.
const UNCLAIMED_GRACE: Duration = Duration::from_secs(10);

/// A cloud node whose creator has not written its status yet: wait for it, and delete the
/// node if it never comes (its creator stopped in between; nothing was launched).
pub async fn unclaimed(node: &PoolNode, ctx: &Context) -> Result<Action, Error> {
    let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now);
    let age: Duration = Timestamp::now().duration_since(created).try_into().unwrap_or_default();
    if age < UNCLAIMED_GRACE {
        return Ok(requeue(UNCLAIMED_GRACE - age));
    }
    tracing::warn!("node never got its status from the scheduler; deleting it");
    let api: Api<PoolNode> = ctx.api();
    // Only the node as seen here: if its status was written since, the delete is refused.
    let unchanged = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: node.resource_version(),
            uid: node.uid(),
        }),
        ..Default::default()
    };
    match api.delete(&node.name_any(), &unchanged).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Action::await_change()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Action::await_change()),
        Err(error) => Err(error.into()),
    }
}

/// `init` or `building`: takes the launch as far as it goes.
pub async fn launch(node: &PoolNode, mut status: PoolNodeStatus, ctx: &Context) -> Result<Action, Error> {
    let placement = match placement(node, ctx).await {
        Ok(placement) => placement,
        Err(problem) if status.state == NodeState::Init => {
            tracing::warn!(%problem, "cannot launch");
            return fail(node, status, ctx, problem).await;
        }
        Err(problem) => {
            tracing::warn!(%problem, "launch waits for its provider");
            return Ok(requeue(RETRY_UNAVAILABLE));
        }
    };
    let mut progress = match status.launch.as_ref().and_then(Progress::from_status) {
        Some(progress) if status.state == NodeState::Building => progress,
        _ => {
            tracing::info!(provider = %placement.provider.name_any(), label = %placement.label.name, "launch starting");
            status.state = NodeState::Building;
            status.state_time = Some(now());
            Progress::start(SystemTime::now())
        }
    };
    let mut plan = launch_plan(node, &status, &placement, ctx);
    if progress.step == Step::Create {
        let token = progress.token(&node.name_any());
        plan.unsent_token = ctx.launches.first_send(&node.name_any(), &token).then_some(token);
    }
    let next = create::advance(placement.cloud.as_ref(), &plan, &mut progress, SystemTime::now()).await;
    status.external_id = progress.instance_id.clone().or(status.external_id);
    if !matches!(next, Next::Wait(_)) {
        ctx.launches.finished(&node.name_any()); // no more creates for this node
    }
    match next {
        Next::Wait(after) => {
            let stored = progress.to_status();
            if status.launch.as_ref() != Some(&stored)
                || node.status.as_ref().map(|s| s.state) != Some(NodeState::Building)
            {
                status.launch = Some(stored);
                write_status(node, &status, ctx).await?;
            }
            Ok(requeue(after))
        }
        Next::Ready { instance, host_keys } => {
            tracing::info!(instance = %instance.id, address = ?instance.interface_ip, attempt = progress.attempt, "node ready");
            status.state = NodeState::Ready;
            status.state_time = Some(now());
            status.external_id = Some(instance.id.clone());
            status.interface_ip = instance.interface_ip.clone();
            status.hostname = instance.interface_ip.clone();
            status.public_ipv4 = instance.public_ipv4.clone();
            status.private_ipv4 = instance.private_ipv4.clone();
            status.public_ipv6 = instance.public_ipv6.clone();
            status.region = instance.region.clone();
            status.az = instance.az.clone();
            status.image_id = instance.image_id.clone().or(plan.spec.image_id.clone());
            if let Some(resources) = &instance.resources {
                // What the instance holds (an EC2 Fleet chose its type), not the label's estimate;
                // keys the instance does not report (its volumes' quota codes) stay as estimated.
                let mut held = status.resources.take().unwrap_or_default();
                held.cores = resources.cores;
                held.ram = resources.ram;
                held.instances = resources.instances;
                held.other.extend(resources.other.clone());
                status.resources = Some(held);
            }
            let access = instance.access.as_ref();
            status.connection = Some(match access {
                // As the driver says: a namespace or pod has no login user or port.
                Some(access) => access.connection.clone(),
                None => connection(&placement.label, ctx),
            });
            if let Some(credentials) = access.and_then(|a| a.kubernetes.as_ref()) {
                status.kubernetes = Some(keep_token(node, credentials, ctx).await?);
            }
            status.host_keys = host_keys;
            status.attributes = placement.pool.node_attributes.clone();
            status.launch = Some(progress.to_status());
            conditions::set_condition(
                &mut status.conditions,
                conditions::condition(
                    LAUNCHED,
                    true,
                    "Ready",
                    format!("instance {} after {} attempt(s)", instance.id, progress.attempt),
                    node.metadata.generation,
                ),
            );
            write_status(node, &status, ctx).await?;
            ctx.metrics.launched(node, LaunchResult::Ready, launch_time(&progress));
            Ok(Action::await_change())
        }
        Next::Failed(message) => {
            status.launch = Some(progress.to_status());
            let action = fail(node, status, ctx, message).await?;
            ctx.metrics.launched(
                node,
                progress.failure.unwrap_or(LaunchResult::Unknown),
                launch_time(&progress),
            );
            Ok(action)
        }
        Next::Aborted(message) => {
            tracing::warn!(%message, "launch aborted: the cloud is out of quota or capacity");
            ctx.clouds.pause(&placement.provider.name_any(), &placement.pool.name, message.clone());
            status.launch = Some(progress.to_status());
            status.state = NodeState::Aborted;
            status.state_time = Some(now());
            conditions::set_condition(
                &mut status.conditions,
                conditions::condition(LAUNCHED, false, "Aborted", message.clone(), node.metadata.generation),
            );
            let updated = write_status(node, &status, ctx).await?;
            ctx.metrics.launched(
                node,
                progress.failure.unwrap_or(LaunchResult::Quota),
                launch_time(&progress),
            );
            ctx.event(&updated, true, "LaunchAborted", message).await;
            Ok(Action::await_change())
        }
    }
}

/// How long a launch has been going, all attempts included.
fn launch_time(progress: &Progress) -> Duration {
    SystemTime::now().duration_since(progress.launch_started).unwrap_or_default()
}

async fn fail(
    node: &PoolNode,
    mut status: PoolNodeStatus,
    ctx: &Context,
    message: String,
) -> Result<Action, Error> {
    tracing::warn!(%message, "launch failed");
    status.state = NodeState::Failed;
    status.state_time = Some(now());
    let launch = status.launch.get_or_insert_with(Default::default);
    launch.last_error = Some(message.clone());
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            LAUNCHED,
            false,
            conditions::reasons::LAUNCH_FAILED,
            message.clone(),
            node.metadata.generation,
        ),
    );
    let updated = write_status(node, &status, ctx).await?;
    ctx.event(&updated, true, "LaunchFailed", message).await;
    Ok(Action::await_change())
}

/// Deletes the node's instance (`deleting`), then the object. A node that never reached the
/// cloud goes at once.
pub async fn tear_down(node: &PoolNode, ctx: &Context, why: &str) -> Result<Action, Error> {
    let name = node.name_any();
    ctx.launches.finished(&name);
    let mut status = node.status.clone().unwrap_or_default();
    let launched = status.external_id.is_some() || status.launch.is_some() || status.state != NodeState::Init;
    if launched {
        let provider = ctx.provider(&node.spec.provider);
        let cloud = match &provider {
            Some(provider) => ctx.cloud(provider).await.ok().flatten(),
            None => None,
        };
        let Some(cloud) = cloud else {
            tracing::warn!(provider = %node.spec.provider, "cannot reach the node's cloud to delete its instance; retrying");
            return Ok(requeue(RETRY_UNAVAILABLE));
        };
        if status.state != NodeState::Deleting {
            tracing::info!(instance = ?status.external_id, why, "deleting node");
            status.state = NodeState::Deleting;
            status.state_time = Some(now());
            ctx.write_node_status(node, &status).await?;
            return Ok(Action::await_change()); // Zuul sees `deleting` before the instance goes
        }
        match delete::advance(cloud.as_ref(), &name, status.external_id.as_deref()).await {
            delete::Next::Wait(after) => return Ok(requeue(after)),
            delete::Next::Gone => {
                tracing::info!(instance = ?status.external_id, "instance deleted")
            }
        }
    }
    let api: Api<PoolNode> = ctx.api();
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => return Err(error.into()),
    }
    // Quota freed up: a pool paused for quota may try again. (Not after an aborted launch,
    // which freed nothing; that would only retry into the same refusal.)
    if status.interface_ip.is_some() {
        ctx.clouds.resume(&node.spec.provider);
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use nodepool_crds::pool_node::NodeResources;

    use super::*;

    #[test]
    fn a_launch_step_written_after_a_conflict_keeps_the_whole_allocation_and_its_own_resources() {
        let fresh = PoolNodeStatus {
            allocated_to: Some("200-0000000007".into()),
            allocation_id: Some("hand-out-3".into()),
            tenant: Some("tenant-one".into()),
            resources: Some(NodeResources { cores: 8, instances: 1, ..Default::default() }),
            ..Default::default()
        };
        let step = PoolNodeStatus {
            state: NodeState::Ready,
            resources: Some(NodeResources { cores: 2, instances: 1, ..Default::default() }),
            ..Default::default()
        };
        let merged = launch_step_onto(&fresh, &step);
        assert_eq!(merged.state, NodeState::Ready);
        assert_eq!(
            (merged.allocated_to.as_deref(), merged.allocation_id.as_deref(), merged.tenant.as_deref()),
            (Some("200-0000000007"), Some("hand-out-3"), Some("tenant-one"))
        );
        assert_eq!(merged.resources.map(|r| r.cores), Some(2), "what the instance holds (a fleet's choice)");
    }
}
