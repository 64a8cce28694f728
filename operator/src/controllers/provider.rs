//! Provider reconciler: says whether the provider can serve (`Ready`), counts its nodes, and for
//! a slotted provider (static hosts) keeps one `PoolNode` per slot (Nodepool's static
//! registration, §6.8).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::controller::Action,
};
use nodepool_crds::{
    NodeState, OPERATOR_MANAGER, PoolNode, PoolNodeSpec, Provider, ZNODE_FINALIZER, conditions,
    labels as node_labels,
    pool_node::StaticSlot,
    provider::{NodeCounts, PoolLabelStatus, PoolStatus, ProviderStatus, QuotaStatus},
};
use nodepool_driver::Slot;

use super::{Error, retry_after};
use crate::{context::Context, status};

/// The shortest time between two status writes that only update node counts and quota use.
const COUNTS_REFRESH: Duration = Duration::from_secs(5);

pub async fn reconcile(provider: Arc<Provider>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Slots are counted from the node cache: it must hold every node before anything is created.
    ctx.caches_ready().await;
    // A driver this build lacks is told in the status by the cloud probe (`DriverUnavailable`).
    let slotted = nodepool_drivers::of(&provider).ok().filter(|driver| driver.supply().slots());
    if slotted.is_none() {
        if provider.metadata.deletion_timestamp.is_some() {
            return super::provider_deletion::step(&provider, &ctx).await;
        }
        super::provider_deletion::ensure_finalizer(&provider, &ctx).await?;
    }
    let name = provider.name_any();
    let nodes: Vec<Arc<PoolNode>> =
        ctx.nodes.state().into_iter().filter(|n| n.spec.provider == name).collect();
    let mut status = provider.status.clone().unwrap_or_default();
    let (ready, reason, message) = match slotted {
        Some(driver) => {
            status.pools = slotted_pools(driver, &provider);
            let readiness = readiness(&provider, &ctx).await?;
            match (readiness.0, driver.slots(&provider)) {
                (true, Ok(slots)) => {
                    sync_slots(&provider, &slots, &nodes, &ctx).await?;
                    readiness
                }
                (true, Err(error)) => (false, "BadSettings", error.to_string()),
                (false, _) => readiness,
            }
        }
        None => {
            let probe = super::cloud_provider::probe(&provider, &ctx).await?;
            status.pools = probe.pools;
            let quota = status.quota.get_or_insert_with(Default::default);
            quota.cloud = probe.cloud_quota;
            quota.unmanaged = probe.unmanaged;
            (probe.ready, probe.reason, probe.message)
        }
    };
    let generation = provider.metadata.generation;
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(conditions::types::READY, ready, reason, message, generation),
    );
    status.observed_generation = generation;
    status.nodes = Some(count_nodes(&nodes));
    let used = nodepool_crds::pool_node::footprint(nodes.iter().map(|n| n.as_ref()));
    let (cloud, unmanaged) =
        status.quota.as_ref().map(|q| (q.cloud.clone(), q.unmanaged.clone())).unwrap_or_default();
    status.quota = Some(QuotaStatus { used, limits: provider.spec.limits.clone(), cloud, unmanaged });
    // Slotted providers are looked at again now and then; cloud providers more often, as quota,
    // pauses and leaks change without any object changing.
    let mut next = if slotted.is_some() {
        Duration::from_secs(300)
    } else {
        ctx.settings.cleanup_interval.min(Duration::from_secs(30))
    };
    if let Some(wait) = write_status(&provider, &status, &ctx).await? {
        next = next.min(wait);
    }
    if slotted.is_none() && ready {
        super::cloud_provider::clean_up_leaks(&provider, &ctx).await;
    }
    Ok(Action::requeue(next))
}

/// Writes the status if it changed. Node counts and quota use change with every node that
/// comes and goes, many times a second on a busy provider; a change of only those is written
/// at most every [`COUNTS_REFRESH`], so the counts cost the apiserver a write every few seconds
/// instead of several per request. Returns how long to wait when the write was put off.
async fn write_status(
    provider: &Provider,
    status: &ProviderStatus,
    ctx: &Context,
) -> Result<Option<Duration>, Error> {
    let Some(old) = provider.status.as_ref() else {
        status::apply_status(&ctx.api::<Provider>(), provider, status).await?;
        ctx.provider_counts.written(&provider.name_any());
        return Ok(None);
    };
    if old == status {
        return Ok(None);
    }
    if without_counts(old) == without_counts(status)
        && let Some(wait) = ctx.provider_counts.wait(&provider.name_any(), COUNTS_REFRESH)
    {
        return Ok(Some(wait));
    }
    status::apply_status(&ctx.api::<Provider>(), provider, status).await?;
    ctx.provider_counts.written(&provider.name_any());
    Ok(None)
}

pub fn error_policy(provider: Arc<Provider>, error: &Error, _: Arc<Context>) -> Action {
    if crate::status::is_conflict(&error.0) {
        tracing::debug!(%error, "conflict; retrying with a fresh read");
        return retry_after(error);
    }
    tracing::warn!(provider = %provider.name_any(), %error, "provider reconcile failed");
    retry_after(error)
}

/// Every pool of a slotted provider, with the labels its hosts serve (the bridge registers a
/// pool's labels for Zuul from here; cloud pools list theirs in the spec too).
fn slotted_pools(driver: &dyn nodepool_driver::Driver, provider: &Provider) -> Vec<PoolStatus> {
    provider
        .spec
        .pools
        .iter()
        .map(|pool| {
            let mut names = driver.pool_labels(pool);
            names.sort();
            names.dedup();
            let labels = names
                .into_iter()
                .map(|name| PoolLabelStatus { name, launchable: true, ..Default::default() })
                .collect();
            PoolStatus { name: pool.name.clone(), labels, ..Default::default() }
        })
        .collect()
}

/// Whether a slotted provider can serve, with the reason shown in its `Ready` condition.
async fn readiness(provider: &Provider, ctx: &Context) -> Result<(bool, &'static str, String), Error> {
    if let Some(secret) = &provider.spec.credentials_secret_ref {
        let secrets: Api<Secret> = ctx.api();
        if secrets.get_opt(&secret.name).await?.is_none() {
            return Ok((false, "CredentialsMissing", format!("Secret {:?} does not exist", secret.name)));
        }
    }
    Ok((true, "Configured", "static hosts are registered as they answer".to_owned()))
}

/// A status without its node counts and quota use.
fn without_counts(status: &ProviderStatus) -> ProviderStatus {
    let mut status = status.clone();
    status.nodes = None;
    if let Some(quota) = &mut status.quota {
        quota.used = Default::default();
    }
    status
}

fn count_nodes(nodes: &[Arc<PoolNode>]) -> NodeCounts {
    let mut by_state = BTreeMap::new();
    for node in nodes {
        let state = node.status.as_ref().map(|s| s.state).unwrap_or_default();
        *by_state.entry(state).or_insert(0) += 1;
    }
    NodeCounts { total: nodes.len() as u32, by_state }
}

/// Waits until the node cache holds the nodes just created. Slots are matched against the
/// cache, and the provider reconciles again on its nodes' events, which come through another
/// watch than the cache's: a run before the cache caught up registered the same slot twice.
async fn wait_until_cached(names: &[String], ctx: &Context) {
    let cached = || names.iter().all(|name| ctx.cached(&ctx.nodes, name).is_some());
    if !ctx.until_cached(cached).await {
        tracing::warn!(nodes = ?names, "the node cache does not show the new slot nodes yet");
    }
}

/// Creates a PoolNode for every slot that has none, updates labels in place, and removes slots
/// no longer configured once they are idle.
async fn sync_slots(
    provider: &Provider,
    desired: &[Slot],
    nodes: &[Arc<PoolNode>],
    ctx: &Context,
) -> Result<(), Error> {
    let api: Api<PoolNode> = ctx.api();
    let name = provider.name_any();
    let live: Vec<&Arc<PoolNode>> =
        nodes.iter().filter(|n| n.metadata.deletion_timestamp.is_none()).collect();
    let slot_of = |node: &PoolNode| {
        node.spec.static_host.as_ref().map(|s| (node.spec.pool.clone(), s.host.clone(), s.slot))
    };

    let mut created_names = Vec::new();
    for slot in desired {
        let key = (slot.pool.clone(), slot.host.clone(), slot.slot);
        match live.iter().find(|n| slot_of(n).as_ref() == Some(&key)) {
            Some(node) if node.spec.labels != slot.labels => {
                let patch = serde_json::json!({"spec": {"labels": slot.labels}});
                let params =
                    PatchParams { field_manager: Some(OPERATOR_MANAGER.to_owned()), ..Default::default() };
                api.patch(&node.name_any(), &params, &Patch::Merge(&patch)).await?;
            }
            Some(_) => {}
            None => {
                let mut node = PoolNode::new(
                    "",
                    PoolNodeSpec {
                        provider: name.clone(),
                        pool: slot.pool.clone(),
                        labels: slot.labels.clone(),
                        static_host: Some(StaticSlot { host: slot.host.clone(), slot: slot.slot }),
                        hold: None,
                        delete: false,
                    },
                );
                node.metadata.name = None;
                node.metadata.generate_name = Some(format!("{name}-"));
                node.metadata.labels = Some(BTreeMap::from([
                    (node_labels::PROVIDER.to_owned(), name.clone()),
                    (node_labels::POOL.to_owned(), slot.pool.clone()),
                    (node_labels::STATIC_HOST.to_owned(), node_labels::value(&slot.host)),
                    (node_labels::SLOT.to_owned(), slot.slot.to_string()),
                ]));
                node.metadata.owner_references = provider.controller_owner_ref(&()).map(|owner| vec![owner]);
                node.metadata.finalizers = Some(vec![ZNODE_FINALIZER.to_owned()]);
                let created = api.create(&crate::status::create_params(), &node).await?;
                tracing::info!(provider = %name, host = %slot.host, slot = slot.slot, node = %created.name_any(), "registering static slot");
                created_names.push(created.name_any());
            }
        }
    }
    wait_until_cached(&created_names, ctx).await;
    for node in live {
        let Some(key) = slot_of(node) else { continue };
        if desired.iter().any(|s| (s.pool.clone(), s.host.clone(), s.slot) == key) {
            continue;
        }
        let status = node.status.clone().unwrap_or_default();
        let idle = matches!(status.state, NodeState::Init | NodeState::Ready)
            && status.allocated_to.is_none()
            && !status.zookeeper.as_ref().is_some_and(|z| z.locked);
        if idle {
            tracing::info!(provider = %name, node = %node.name_any(), host = %key.1, "deregistering removed static slot");
            api.delete(&node.name_any(), &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{ProviderStatus, QuotaStatus, node_labels::value as label_value, without_counts};
    use nodepool_crds::provider::{NodeCounts, ResourceLimits, ResourceUsage};

    #[test]
    fn node_counts_and_quota_use_are_told_apart_from_other_changes() {
        let status = |servers: u32, limit: Option<u32>| ProviderStatus {
            nodes: Some(NodeCounts { total: servers, ..Default::default() }),
            quota: Some(QuotaStatus {
                used: ResourceUsage { servers, ..Default::default() },
                limits: limit.map(|max| ResourceLimits { max_servers: Some(max), ..Default::default() }),
                cloud: None,
                unmanaged: None,
            }),
            ..Default::default()
        };
        assert_eq!(without_counts(&status(1, Some(10))), without_counts(&status(7, Some(10))));
        assert_ne!(
            without_counts(&status(1, Some(10))),
            without_counts(&status(1, Some(20))),
            "a new limit is written at once"
        );
    }

    #[test]
    fn host_names_become_valid_label_values() {
        assert_eq!(label_value("arm64-01.lab.example.org"), "arm64-01.lab.example.org");
        assert_eq!(label_value("[::1]"), "1");
        assert_eq!(label_value("192.0.2.17"), "192.0.2.17");
    }
}
