//! The cloud side of the Provider reconciler: whether the cloud answers with these credentials,
//! its quota, what each pool label costs and boots, paused pools, and leak cleanup.

use std::collections::HashSet;

use kube::{Api, ResourceExt, api::ListParams};
use nodepool_crds::{
    Image, PoolNode, Provider, labels as node_labels,
    provider::{PoolLabelStatus, PoolStatus, ResourceLimits, ResourceUsage},
};
use nodepool_driver::{Cloud, CloudError, leaks};

use super::Error;
use crate::{clouds::CloudUnavailable, context::Context};

/// What the provider's `Ready` condition and pool statuses say.
pub struct Probe {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    pub pools: Vec<PoolStatus>,
    pub cloud_quota: Option<ResourceLimits>,
    /// What the account's other resources hold of that quota; `None` when nothing.
    pub unmanaged: Option<ResourceUsage>,
}

fn not_ready(reason: &'static str, message: String) -> Probe {
    Probe { ready: false, reason, message, pools: Vec::new(), cloud_quota: None, unmanaged: None }
}

/// Talks to the provider's cloud: credentials, quota, and each label's footprint and image.
pub async fn probe(provider: &Provider, ctx: &Context) -> Result<Probe, Error> {
    let cloud = match ctx.cloud(provider).await {
        Ok(Some(cloud)) => cloud,
        Ok(None) => return Ok(not_ready("BadSettings", "no cloud for this driver".into())),
        Err(CloudUnavailable::Kube(error)) => return Err(error.into()),
        Err(error @ (CloudUnavailable::SecretMissing(_) | CloudUnavailable::SecretKeyMissing { .. })) => {
            return Ok(not_ready("CredentialsMissing", error.to_string()));
        }
        Err(error @ (CloudUnavailable::UnknownDriver(_) | CloudUnavailable::NoCloud(_))) => {
            return Ok(not_ready("DriverUnavailable", error.to_string()));
        }
        Err(error @ CloudUnavailable::BadSettings(_)) => {
            return Ok(not_ready("BadSettings", error.to_string()));
        }
    };
    let name = provider.name_any();
    let generation = provider.metadata.generation;
    let quota = match ctx.clouds.quotas.get(&name, generation) {
        Some(quota) => Ok(quota),
        None => cloud
            .quota_limits(&provider.spec.pools)
            .await
            .inspect(|quota| ctx.clouds.quotas.store(name.clone(), generation, quota.clone())),
    };
    let cloud_quota = match quota {
        Ok(quota) => quota,
        Err(CloudError::Auth(message)) => return Ok(not_ready("CredentialsRefused", message)),
        Err(error) => {
            tracing::warn!(provider = %name, %error, "cloud does not answer");
            return Ok(not_ready("CloudUnreachable", error.to_string()));
        }
    };
    let unmanaged = match ctx.clouds.unmanaged.get(&name, generation) {
        Some(usage) => Some(usage),
        None => match cloud.unmanaged_usage().await {
            Ok(usage) => {
                ctx.clouds.unmanaged.store(name.clone(), generation, usage.clone());
                Some(usage)
            }
            // Quota is still known; launches go on and the cloud's own refusals pause the pool.
            Err(error) => {
                tracing::warn!(provider = %name, %error, "cannot count the account's other resources");
                None
            }
        },
    }
    .filter(|usage| *usage != ResourceUsage::default());
    let mut pools = Vec::new();
    for pool in &provider.spec.pools {
        let pause = ctx.clouds.paused(&name, &pool.name);
        let mut labels = Vec::new();
        for label in &pool.labels {
            labels.push(label_status(cloud.as_ref(), provider, pool, label, ctx).await);
        }
        pools.push(PoolStatus {
            name: pool.name.clone(),
            paused: pause.is_some(),
            paused_reason: pause.map(|p| p.reason),
            labels,
        });
    }
    let message = format!("the {} cloud answers", provider.spec.driver.as_str());
    Ok(Probe {
        ready: true,
        reason: "CloudReachable",
        message,
        pools,
        cloud_quota: Some(cloud_quota),
        unmanaged,
    })
}

async fn label_status(
    cloud: &dyn Cloud,
    provider: &Provider,
    pool: &nodepool_crds::provider::Pool,
    label: &nodepool_crds::provider::PoolLabel,
    ctx: &Context,
) -> PoolLabelStatus {
    let mut status = PoolLabelStatus { name: label.name.clone(), ..Default::default() };
    let image = match image_for(provider, label, ctx) {
        Ok(image) => image,
        Err(message) => {
            status.message = Some(message);
            return status;
        }
    };
    let key = (provider.name_any(), pool.name.clone(), label.name.clone());
    let generation = provider.metadata.generation;
    let resources = match ctx.clouds.label_resources.get(&key, generation) {
        Some(resources) => Ok(resources),
        None => cloud
            .label_resources(pool, label)
            .await
            .inspect(|resources| ctx.clouds.label_resources.store(key, generation, resources.clone())),
    };
    match resources {
        Ok(resources) => {
            status.launchable = true;
            status.resources = Some(resources);
            status.image_id = image;
        }
        Err(error) => status.message = Some(error.to_string()),
    }
    status
}

/// The image a label boots on this provider, as the Image controller resolved it.
pub fn image_for(
    provider: &Provider,
    label: &nodepool_crds::provider::PoolLabel,
    ctx: &Context,
) -> Result<Option<String>, String> {
    let Some(name) = &label.image else {
        let needs_image = nodepool_drivers::of(provider).is_ok_and(|driver| driver.needs_image());
        return if needs_image { Err("the label names no image".into()) } else { Ok(None) };
    };
    let image = ctx.image(name).ok_or_else(|| format!("Image {name:?} does not exist"))?;
    let provider_name = provider.name_any();
    let resolved =
        image.status.as_ref().and_then(|s| s.resolved.iter().find(|r| r.provider == provider_name));
    match resolved {
        Some(resolved) => Ok(Some(resolved.image_id.clone())),
        None => {
            let why = image
                .status
                .as_ref()
                .and_then(|s| {
                    nodepool_crds::conditions::find(&s.conditions, nodepool_crds::conditions::types::READY)
                })
                .map(|c| c.message.clone())
                .unwrap_or_else(|| "not resolved yet".into());
            Err(format!("Image {name:?} is not available on this provider: {why}"))
        }
    }
}

/// One leak pass, when one is due: instances, volumes, hosts, uploaded images and snapshots
/// tagged for this provider and installation that no PoolNode or Image owns are deleted once
/// seen on two passes in a row.
pub async fn clean_up_leaks(provider: &Provider, ctx: &Context) {
    let name = provider.name_any();
    let Some(previous) = ctx.clouds.leak_pass_due(&name, ctx.settings.cleanup_interval) else { return };
    let Ok(Some(cloud)) = ctx.cloud(provider).await else { return };
    // Fresh from the apiserver, not the cache: a node must never look leaked because a cache lags.
    let api: Api<PoolNode> = ctx.api();
    let selector = format!("{}={name}", node_labels::PROVIDER);
    let images: Api<Image> = ctx.api();
    let all = ListParams::default();
    let owners = match tokio::try_join!(node_names(&api, &selector), images.list_metadata(&all)) {
        Ok((nodes, images)) => leaks::Owners {
            nodes,
            images: images.items.into_iter().filter_map(|i| i.metadata.name).collect(),
        },
        Err(error) => {
            tracing::warn!(provider = %name, %error, "listing nodes and images for leak cleanup failed");
            return;
        }
    };
    match leaks::pass(cloud.as_ref(), &owners, &previous).await {
        Ok(pass) => {
            ctx.metrics.leak_pass(&name);
            for resource in &pass.deleted {
                tracing::info!(provider = %name, kind = %resource.kind, id = %resource.id, owner = ?resource.owner, "leaked resource deleted");
                ctx.metrics.leak_removed(&name, resource.kind);
            }
            if !pass.deleted.is_empty() {
                let note = format!("deleted {} leaked resource(s)", pass.deleted.len());
                ctx.event(provider, false, "LeakCleanup", note).await;
            }
            ctx.clouds.record_leak_pass(&name, pass.suspected);
        }
        Err(error) => tracing::warn!(provider = %name, %error, "leak cleanup pass failed"),
    }
}

/// The names of the PoolNodes matching `selector`, read from the apiserver in pages of
/// metadata only: with thousands of nodes a full list of whole objects every leak pass cost
/// more memory than all the operator's caches together.
async fn node_names(api: &Api<PoolNode>, selector: &str) -> Result<HashSet<String>, kube::Error> {
    const PAGE: u32 = 500;
    let mut names = HashSet::new();
    let mut params = ListParams::default().labels(selector).limit(PAGE);
    loop {
        let page = api.list_metadata(&params).await?;
        names.extend(page.items.into_iter().filter_map(|n| n.metadata.name));
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(names),
        }
    }
}
