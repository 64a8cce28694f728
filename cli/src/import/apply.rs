//! `nodepool import --apply`: the objects through server-side apply, Secrets only when missing.

use anyhow::{Context, Result, bail};
use kube::{
    Api,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    discovery::ApiResource,
};

use crate::cluster::Cluster;

use super::Import;

/// The field manager of the applied fields, so a later import takes over its own fields only.
const FIELD_MANAGER: &str = "nodepool-import";

/// Applies every object of `import` in one namespace, in order. A Secret that exists is left as
/// it is: the import writes templates, and must never overwrite real credentials.
pub async fn apply(cluster: &Cluster, import: &Import, dry_run: bool) -> Result<String> {
    let Some(namespace) = &cluster.namespace else { bail!("--apply needs one namespace, not -A") };
    let mut report = String::new();
    let mut failed = Vec::new();
    for item in &import.items {
        match apply_one(cluster, namespace, item, dry_run).await {
            Ok(line) => report.push_str(&line),
            Err(error) => failed.push(format!("{error:#}")),
        }
    }
    if !failed.is_empty() {
        print!("{report}");
        bail!("{} of {} objects not applied:\n  {}", failed.len(), import.items.len(), failed.join("\n  "));
    }
    Ok(report)
}

/// Applies one object; the line that says what happened to it.
async fn apply_one(
    cluster: &Cluster,
    namespace: &str,
    item: &serde_json::Value,
    dry_run: bool,
) -> Result<String> {
    let object: DynamicObject = serde_json::from_value(item.clone()).context("an imported object")?;
    let types = object.types.clone().context("an imported object without apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(&types).context("apiVersion")?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), namespace, &ApiResource::from_gvk(&gvk));
    let name = object.metadata.name.clone().context("an imported object without a name")?;
    let what = format!("{}/{name}", types.kind.to_lowercase());
    let verb = if types.kind == "Secret" {
        if api.get_opt(&name).await.map_err(|e| refused(&what, e))?.is_some() {
            "kept (exists)"
        } else {
            let params = PostParams { dry_run, ..Default::default() };
            api.create(&params, &object).await.map_err(|e| refused(&what, e))?;
            "created (a template: fill in its values)"
        }
    } else {
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.dry_run = dry_run;
        api.patch(&name, &params, &Patch::Apply(&object)).await.map_err(|e| refused(&what, e))?;
        "applied"
    };
    let suffix = if dry_run { " (server dry run)" } else { "" };
    Ok(format!("{what} {verb}{suffix}\n"))
}

/// The apiserver's own message (a validation failure names the field), not the whole status.
fn refused(what: &str, error: kube::Error) -> anyhow::Error {
    match error {
        kube::Error::Api(status) => anyhow::anyhow!("{what}: {}", status.message),
        other => anyhow::Error::new(other).context(what.to_owned()),
    }
}
