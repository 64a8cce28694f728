//! Image reconciler: resolves each `Image` in the cloud of every provider whose pools boot it
//! (AWS filters → the newest matching AMI, GCE family → its newest image), records the result
//! per provider in the status, and refreshes it regularly, so a newly published image is picked
//! up without anyone touching the object.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{ResourceExt, runtime::controller::Action};
use nodepool_crds::{Image, ImageStatus, conditions, image::ResolvedImage};

use super::{Error, retry_after};
use crate::{context::Context, status};

/// How often images are looked up again.
pub const REFRESH: Duration = Duration::from_secs(600);

pub async fn reconcile(image: Arc<Image>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.caches_ready().await;
    let name = image.name_any();
    let users: Vec<_> = ctx
        .providers
        .state()
        .into_iter()
        .filter(|p| nodepool_drivers::of(p).is_ok_and(|driver| driver.supply().launches()))
        .filter(|p| {
            p.spec.pools.iter().any(|pool| pool.labels.iter().any(|l| l.image.as_deref() == Some(&name)))
        })
        .collect();
    let previous = image.status.clone().unwrap_or_default();
    let mut resolved = Vec::new();
    let mut problems = Vec::new();
    for provider in &users {
        let provider_name = provider.name_any();
        let cloud = match ctx.cloud(provider).await {
            Ok(Some(cloud)) => cloud,
            Ok(None) => continue,
            Err(error) => {
                problems.push(format!("{provider_name}: {error}"));
                continue;
            }
        };
        match cloud.resolve_image(&image.spec).await {
            Ok(image_id) => {
                let unchanged =
                    previous.resolved.iter().find(|r| r.provider == provider_name && r.image_id == image_id);
                if unchanged.is_none() {
                    tracing::info!(image = %name, provider = %provider_name, %image_id, "image resolved");
                }
                resolved.push(ResolvedImage {
                    provider: provider_name,
                    image_id,
                    resolved_at: unchanged
                        .and_then(|r| r.resolved_at.clone())
                        .or(Some(Time(Timestamp::now()))),
                });
            }
            Err(error) => {
                tracing::warn!(image = %name, provider = %provider_name, %error, "image not found");
                problems.push(format!("{provider_name}: {error}"));
            }
        }
    }
    let generation = image.metadata.generation;
    let (ready, reason, message) = match (problems.is_empty(), users.is_empty()) {
        (true, true) => (true, "Unused", "no provider boots this image".to_owned()),
        (true, false) => (true, "Resolved", format!("resolved for {} provider(s)", resolved.len())),
        (false, _) => (false, "NotFound", problems.join("; ")),
    };
    let mut status =
        ImageStatus { observed_generation: generation, conditions: previous.conditions.clone(), resolved };
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(conditions::types::READY, ready, reason, message.clone(), generation),
    );
    if image.status.as_ref() != Some(&status) {
        status::apply_status(&ctx.api::<Image>(), &image, &status).await?;
        if !ready {
            ctx.event(image.as_ref(), true, "NotFound", message).await;
        }
    }
    Ok(Action::requeue(if ready { REFRESH } else { Duration::from_secs(30) }))
}

pub fn error_policy(image: Arc<Image>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(image = %image.name_any(), %error, "image reconcile failed");
    retry_after(error)
}
