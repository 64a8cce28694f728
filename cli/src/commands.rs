//! One function per command: read the custom resources, print Nodepool's columns, or change a
//! node as Nodepool's command would.

use anyhow::{Context, Result, bail};
use kube::{
    ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use nodepool_crds::{GoDuration, Image, Label, NodeRequest, PoolNode, pool_node::AdminHold};
use serde_json::json;

use nodepool_service::{
    listing,
    table::{self, Output},
};

use crate::{Cli, Command, cluster::Cluster};

pub async fn run(cli: &Cli) -> Result<String> {
    if let Command::Import { file, apply, dry_run } = &cli.command {
        return import(cli, file, *apply, *dry_run).await;
    }
    let cluster = Cluster::connect(cli).await?;
    let output = match cli.output {
        crate::Output::Table => Output::Table,
        crate::Output::Json => Output::Json,
        crate::Output::Yaml => Output::Yaml,
    };
    match &cli.command {
        Command::List { detail, provider, label, state } => {
            let nodes = list_nodes(&cluster).await?;
            let nodes = nodes.iter().filter(|node| {
                provider.as_ref().is_none_or(|p| &node.spec.provider == p)
                    && label.as_ref().is_none_or(|l| node.spec.labels.contains(l))
                    && state.as_ref().is_none_or(|s| listing::node_state(node) == *s)
            });
            listing::nodes(nodes, *detail).render(output)
        }
        Command::Info { node } => {
            let node = find_node(&cluster, node).await?;
            match output {
                Output::Table => listing::nodes([&node], true).render(Output::Yaml),
                output => table::document(&node, output),
            }
        }
        Command::Hold { node, reason, expires } => {
            let expiration = expires
                .as_deref()
                .map(|e| e.parse::<GoDuration>().map_err(anyhow::Error::from))
                .transpose()
                .context("--expires")?;
            let node = find_node(&cluster, node).await?;
            let hold = AdminHold { comment: Some(reason.clone()), expiration };
            patch_node(&cluster, &node, json!({"spec": {"hold": hold}})).await?;
            Ok(format!("node {} ({}) held\n", node.name_any(), listing::zk_id(&node)))
        }
        Command::Release { node } => {
            let node = find_node(&cluster, node).await?;
            if node.spec.hold.is_none() {
                bail!("node {} is not held by an operator", node.name_any());
            }
            patch_node(&cluster, &node, json!({"spec": {"hold": null}})).await?;
            Ok(format!("node {} ({}) released\n", node.name_any(), listing::zk_id(&node)))
        }
        Command::Delete { node: wanted, now, timeout } => {
            let mut node = find_node(&cluster, wanted).await?;
            if *now {
                // As Nodepool's `delete --now` takes the node lock with a 5 s timeout: a lock
                // held for a moment (the bridge writing the node) is waited out.
                let api = node_api(&cluster, &node);
                let deadline = tokio::time::Instant::now() + LOCK_WAIT;
                while is_locked(&node) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    node = api.get(&node.name_any()).await.context("reading the node again")?;
                }
            }
            let locked = is_locked(&node);
            let name = node.name_any();
            if *now && locked {
                bail!(
                    "node {name} is locked by Zuul (a job runs on it); without --now it is deleted once Zuul unlocks it"
                );
            }
            // Through the operator's delete path (instance first), as Nodepool's `delete` marks
            // the node `deleting` for its launcher; deleting the object would skip that.
            patch_node(&cluster, &node, json!({"spec": {"delete": true}})).await?;
            let api = node_api(&cluster, &node);
            if *now {
                let timeout =
                    timeout.parse::<GoDuration>().map_err(anyhow::Error::from).context("--timeout")?;
                wait_gone(&api, &name, timeout.0).await?;
                return Ok(format!("node {name} ({}) deleted\n", listing::zk_id(&node)));
            }
            let when = if locked { "once Zuul unlocks it" } else { "now" };
            Ok(format!("node {name} ({}) is deleted {when}\n", listing::zk_id(&node)))
        }
        Command::Erase { provider } => erase(&cluster, provider).await,
        Command::RequestList => {
            let requests = cluster
                .api::<NodeRequest>()
                .list(&ListParams::default())
                .await
                .context("listing NodeRequests")?;
            listing::requests(&requests.items).render(output)
        }
        Command::LabelList => {
            let labels =
                cluster.api::<Label>().list(&ListParams::default()).await.context("listing Labels")?;
            listing::labels(&labels.items).render(output)
        }
        Command::ImageStatus => {
            let images =
                cluster.api::<Image>().list(&ListParams::default()).await.context("listing Images")?;
            listing::image_status(&images.items).render(output)
        }
        Command::Completions { .. } => unreachable!("printed before connecting"),
        Command::Import { .. } => unreachable!("run before connecting"),
        Command::ImageList => {
            let images =
                cluster.api::<Image>().list(&ListParams::default()).await.context("listing Images")?;
            listing::images(&images.items).render(output)
        }
    }
}

/// `nodepool import`: the objects on standard output (or applied), the notes on standard error.
async fn import(cli: &Cli, file: &std::path::Path, apply: bool, dry_run: bool) -> Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let text = crate::import::substitute_env(&text, std::env::vars());
    let import = crate::import::import(&text).with_context(|| file.display().to_string())?;
    if cli.output == crate::Output::Json && !apply {
        return Ok(serde_json::to_string_pretty(&import)? + "\n");
    }
    for note in &import.notes {
        eprintln!("{}: {note}", file.display());
    }
    if apply {
        let cluster = Cluster::connect(cli).await?;
        return crate::import::apply(&cluster, &import, dry_run).await;
    }
    crate::import::render_yaml(&import)
}

/// How long `delete --now` waits for a node's lock to go, as Nodepool's lock timeout.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the node's current registration is locked in ZooKeeper (a slot back from use still
/// shows its last registration's view, which does not count).
fn is_locked(node: &PoolNode) -> bool {
    node.status.as_ref().and_then(|s| s.zuul_view()).is_some_and(|z| z.locked)
}

/// Waits until the PoolNode `name` is gone: the operator has deleted its instance and the
/// bridge its ZooKeeper record (their finalizers).
async fn wait_gone(api: &kube::Api<PoolNode>, name: &str, timeout: std::time::Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while api.get_opt(name).await?.is_some() {
        if tokio::time::Instant::now() >= deadline {
            bail!("node {name} is still being deleted after {timeout:?}; see `nodepool info {name}`");
        }
        // Deleting an instance takes seconds; a few reads a second cost the apiserver nothing.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Deletes the nodes of a provider that is gone. A provider that exists is refused: deleting it
/// tears its nodes down properly (its instances included).
async fn erase(cluster: &Cluster, provider: &str) -> Result<String> {
    let providers = cluster.api::<nodepool_crds::Provider>().list(&ListParams::default()).await?;
    if providers.items.iter().any(|p| p.name_any() == provider) {
        bail!(
            "provider {provider:?} exists; delete it (kubectl delete provider {provider}) instead of erasing it"
        );
    }
    let nodes = list_nodes(cluster).await?;
    let leftovers: Vec<&PoolNode> = nodes.iter().filter(|n| n.spec.provider == provider).collect();
    for node in &leftovers {
        node_api(cluster, node).delete(&node.name_any(), &DeleteParams::default()).await?;
    }
    Ok(format!("erased {} node(s) of provider {provider}\n", leftovers.len()))
}

/// Every node (in the chosen namespace or all); `listing::nodes` orders them for printing.
async fn list_nodes(cluster: &Cluster) -> Result<Vec<PoolNode>> {
    Ok(cluster.api::<PoolNode>().list(&ListParams::default()).await.context("listing PoolNodes")?.items)
}

/// A node by its PoolNode name or its ZooKeeper id (what Zuul and Nodepool's users know).
async fn find_node(cluster: &Cluster, wanted: &str) -> Result<PoolNode> {
    let nodes = list_nodes(cluster).await?;
    let mut found = nodes.into_iter().filter(|n| n.name_any() == wanted || listing::zk_id(n) == wanted);
    let node = found.next().with_context(|| format!("no node {wanted:?}"))?;
    if found.next().is_some() {
        bail!("several nodes are {wanted:?} (in different namespaces); say which with -n");
    }
    Ok(node)
}

fn node_api(cluster: &Cluster, node: &PoolNode) -> kube::Api<PoolNode> {
    kube::Api::namespaced(cluster.client.clone(), &node.namespace().unwrap_or_default())
}

async fn patch_node(cluster: &Cluster, node: &PoolNode, patch: serde_json::Value) -> Result<()> {
    node_api(cluster, node).patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}
