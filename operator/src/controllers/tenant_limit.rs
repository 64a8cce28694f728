//! TenantLimit status: what the tenant's nodes hold now. The limit itself is enforced by the
//! scheduler, which recomputes usage on every pass.

use std::{sync::Arc, time::Duration};

use kube::{ResourceExt, runtime::controller::Action};
use nodepool_crds::{TenantLimit, TenantLimitStatus};

use super::{Error, retry_after};
use crate::{context::Context, scheduler::capacity, status};

pub async fn reconcile(limit: Arc<TenantLimit>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.caches_ready().await;
    let budgets = capacity::tenant_budgets(std::slice::from_ref(&limit), &ctx.nodes.state());
    let status = TenantLimitStatus {
        observed_generation: limit.metadata.generation,
        used: budgets.into_iter().next().map(|b| b.used).unwrap_or_default(),
    };
    if limit.status.as_ref() != Some(&status) {
        status::apply_status(&ctx.api::<TenantLimit>(), &limit, &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(10)))
}

pub fn error_policy(limit: Arc<TenantLimit>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(tenant_limit = %limit.name_any(), %error, "tenant limit reconcile failed");
    retry_after(error)
}
