//! Label status: how many nodes of the label are ready and in use, and which providers serve it.

use std::{sync::Arc, time::Duration};

use kube::{ResourceExt, runtime::controller::Action};
use nodepool_crds::{Label, LabelStatus, NodeState};

use super::{Error, retry_after};
use crate::{context::Context, scheduler::views, status};

pub async fn reconcile(label: Arc<Label>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.caches_ready().await;
    let name = label.name_any();
    let nodes = ctx.nodes.state();
    let count = |state| views::count_in_state(nodes.iter().map(|n| n.as_ref()), &name, state) as u32;
    let mut providers: Vec<String> = views::pools(&ctx.providers.state(), &|_, _| None)
        .into_iter()
        .filter(|pool| pool.labels.contains(&name))
        .map(|pool| pool.provider)
        .collect();
    providers.dedup();
    let status = LabelStatus {
        observed_generation: label.metadata.generation,
        ready: count(NodeState::Ready),
        in_use: count(NodeState::InUse),
        providers,
    };
    if label.status.as_ref() != Some(&status) {
        status::apply_status(&ctx.api::<Label>(), &label, &status).await?;
    }
    // Counts follow node changes; refresh them regularly rather than on every node event.
    Ok(Action::requeue(Duration::from_secs(10)))
}

pub fn error_policy(label: Arc<Label>, error: &Error, _: Arc<Context>) -> Action {
    if crate::status::is_conflict(&error.0) {
        tracing::debug!(%error, "conflict; retrying with a fresh read");
        return retry_after(error);
    }
    tracing::warn!(label = %label.name_any(), %error, "label reconcile failed");
    retry_after(error)
}
