//! The `nodepool` command against a running stack (real apiserver, bridge and ZooKeeper), as an
//! operator uses it: list, info, hold, release and delete nodes by name or ZooKeeper id, list
//! requests and labels; tables and JSON; one clear line and a failing exit on a mistake. Also
//! through `kubectl nodepool`, and the same lists on the operator's Nodepool-style web endpoints.

use std::{process::Output, time::Duration};

use anyhow::{Context, Result, bail};
use kube::Api;
use nodepool_crds::{NodeState, PoolNode};
use nodepool_e2e::{
    stack::{self, Stack},
    zuul::Zuul,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn nodepool(stack: &Stack, args: &[&str]) -> Result<Output> {
    let kubeconfig = stack.env.info.kubeconfig.to_str().context("kubeconfig path")?;
    let output = std::process::Command::new(stack::binary("nodepool")?)
        .args(["--kubeconfig", kubeconfig, "-n", &stack.namespace])
        .args(args)
        .output()?;
    Ok(output)
}

/// Runs a command that must succeed; its standard output.
fn ok(stack: &Stack, args: &[&str]) -> Result<String> {
    let output = nodepool(stack, args)?;
    if !output.status.success() {
        bail!("nodepool {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn json_of(stack: &Stack, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    Ok(serde_json::from_str(&ok(stack, &all)?)?)
}

async fn node(stack: &Stack, name: &str) -> Result<PoolNode> {
    Ok(Api::<PoolNode>::namespaced(stack.client.clone(), &stack.namespace).get(name).await?)
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await? {
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not reached after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn an_operator_lists_holds_releases_and_deletes_nodes_with_nodepools_commands() -> Result<()> {
    let stack = Stack::start("cli").await?;
    stack.apply_provider(stack.static_provider("lab", 2)).await?;
    let ready = stack.wait_for_ready_nodes(3, WAIT).await?;

    // `list`: Nodepool's columns, one row per node, each with its ZooKeeper id.
    let table = ok(&stack, &["list"])?;
    let header = table.lines().nth(1).context("header line")?;
    for column in ["ID", "Provider", "Label", "Server ID", "Public IPv4", "IPv6", "State", "Age", "Locked"] {
        assert!(header.contains(column), "no {column} in {header}");
    }
    assert_eq!(table.lines().filter(|l| l.contains("| lab ")).count(), 3, "{table}");
    let listed = json_of(&stack, &["list"])?;
    let listed = listed.as_array().context("a JSON list")?;
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|n| n["state"] == "ready" && n["locked"] == "unlocked"), "{listed:?}");
    let filtered = json_of(&stack, &["list", "--label", "static-single"])?;
    assert_eq!(filtered.as_array().map(Vec::len), Some(1), "{filtered}");
    let single = ready.iter().find(|n| n.spec.labels == ["static-single"]).context("static-single node")?;
    let single_name = single.metadata.name.clone().context("name")?;
    let zk_id = filtered[0]["id"].as_str().context("ZooKeeper id")?.to_owned();
    assert_eq!(
        Some(zk_id.as_str()),
        single.status.as_ref().and_then(|s| s.zuul_view()).and_then(|z| z.node_id.as_deref())
    );

    // `info` finds a node by its ZooKeeper id as well as by name.
    let info = json_of(&stack, &["info", &zk_id])?;
    assert_eq!(info["metadata"]["name"], single_name.as_str(), "{info}");

    // Nodepool's web endpoints on the operator, from its caches.
    let base = format!("http://{}", stack.operator_http);
    let http = reqwest::Client::new();
    let get = async |path: &str, json: bool| -> Result<(u16, String)> {
        let mut request = http.get(format!("{base}{path}"));
        if json {
            request = request.header("Accept", "application/json");
        }
        let response = request.send().await?;
        Ok((response.status().as_u16(), response.text().await?))
    };
    assert_eq!(get("/ready", false).await?, (200, "OK\n".to_owned()));
    let (status, text) = get("/node-list", false).await?;
    assert_eq!(status, 200);
    assert!(text.lines().nth(1).is_some_and(|header| header.starts_with("| ID ")), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("| lab ")).count(), 3, "{text}");
    let (_, one) = get(&format!("/node-list?node_id={zk_id}&fields=id,state,label"), true).await?;
    assert_eq!(
        serde_json::from_str::<Value>(&one)?,
        json!([{"id": zk_id, "state": "ready", "label": "static-single"}])
    );
    let (_, dib) = get("/dib-image-list.json", false).await?;
    assert_eq!(serde_json::from_str::<Value>(&dib)?, json!([]));
    assert_eq!(get("/no-such-page", false).await?.0, 404);

    // `hold` by ZooKeeper id: the node is held, with the reason as its comment.
    ok(&stack, &["hold", &zk_id, "--reason", "debugging the image", "--expires", "2h"])?;
    let held = node(&stack, &single_name).await?;
    let hold = held.spec.hold.clone().context("spec.hold")?;
    assert_eq!(hold.comment.as_deref(), Some("debugging the image"));
    assert_eq!(hold.expiration.map(|e| e.to_string()).as_deref(), Some("2h"));
    until("the node held", async || {
        Ok(node(&stack, &single_name).await?.status.is_some_and(|s| s.state == NodeState::Hold))
    })
    .await?;
    let held = json_of(&stack, &["list", "--state", "hold", "--detail"])?;
    assert_eq!(held[0]["comment"], "debugging the image", "{held}");

    // `release`: the hold goes, and the slot comes back as a fresh node.
    ok(&stack, &["release", &single_name])?;
    assert!(node(&stack, &single_name).await.map(|n| n.spec.hold.is_none()).unwrap_or(true));
    let again = nodepool(&stack, &["release", "no-such-node"])?;
    assert!(!again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stderr).trim(), "nodepool: no node \"no-such-node\"");

    // `request-list` shows Zuul's request; `label-list` the labels.
    stack.wait_for_ready_nodes(3, WAIT).await?;
    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["static-label"]).await?;
    assert_eq!(zuul.wait(&request, 60).await?["state"], "fulfilled");
    let requests = json_of(&stack, &["request-list"])?;
    let ours = requests.as_array().into_iter().flatten().find(|r| r["request_id"] == request.as_str());
    let ours = ours.with_context(|| format!("request {request} in {requests}"))?;
    assert_eq!(ours["state"], "fulfilled");
    assert_eq!(ours["node_types"], "static-label");
    stack
        .apply::<nodepool_crds::Label>(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Label",
            "metadata": {"name": "static-label"}, "spec": {"minReady": 1}}))
        .await?;
    let labels = ok(&stack, &["label-list"])?;
    assert!(labels.contains("| static-label "), "{labels}");
    let (_, served) = get("/request-list.json", false).await?;
    let served: Value = serde_json::from_str(&served)?;
    assert!(served.as_array().into_iter().flatten().any(|r| r["request_id"] == request.as_str()), "{served}");

    // `delete`: the node goes (a static slot is then registered afresh).
    let victim = ready.iter().find(|n| n.spec.labels == ["static-label"]).context("a static-label node")?;
    let victim_name = victim.metadata.name.clone().context("name")?;
    let said = ok(&stack, &["delete", &victim_name])?;
    assert!(said.contains(&victim_name), "{said}");
    until("the deleted node gone", async || {
        let nodes = Api::<PoolNode>::namespaced(stack.client.clone(), &stack.namespace);
        Ok(nodes.get_opt(&victim_name).await?.is_none())
    })
    .await?;

    // `delete --now` refuses a node Zuul has locked (a job runs on it) ...
    stack.wait_for_ready_nodes(3, WAIT).await?;
    let request = zuul.request(&["static-label"]).await?;
    assert_eq!(zuul.wait(&request, 60).await?["state"], "fulfilled");
    let accepted = zuul.call("accept", json!({"request_id": request})).await?;
    let in_use = accepted["nodes"][0]["id"].as_str().context("the accepted node's id")?.to_owned();
    until("Zuul's lock mirrored", async || {
        Ok(json_of(&stack, &["info", &in_use])?["status"]["zookeeper"]["locked"] == true)
    })
    .await?;
    let refused = nodepool(&stack, &["delete", &in_use, "--now"])?;
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("is locked by Zuul"), "{said}");
    assert!(json_of(&stack, &["info", &in_use]).is_ok(), "the locked node is still there");
    zuul.call("return", json!({"build": accepted["build"]})).await?;
    // ... and returns only once a free node is gone.
    let free = stack.wait_for_ready_nodes(3, WAIT).await?;
    let free =
        free.iter().find(|n| n.spec.labels == ["static-label"]).context("a ready static-label node")?;
    let free_name = free.metadata.name.clone().context("name")?;
    let said = ok(&stack, &["delete", &free_name, "--now"])?;
    assert!(said.contains("deleted"), "{said}");
    let nodes = Api::<PoolNode>::namespaced(stack.client.clone(), &stack.namespace);
    assert!(nodes.get_opt(&free_name).await?.is_none(), "gone when delete --now returns");

    // `image-status`: every Image, with whether it is resolved where it is used.
    stack
        .apply::<nodepool_crds::Image>(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Image",
            "metadata": {"name": "debian"}, "spec": {"simulated": {"imageId": "debian-12"}}}))
        .await?;
    let images = json_of(&stack, &["image-status"])?;
    assert_eq!(images[0]["image"], "debian", "{images}");

    // Completion scripts for the shells, knowing the commands.
    for shell in ["bash", "zsh"] {
        let script =
            std::process::Command::new(stack::binary("nodepool")?).args(["completions", shell]).output()?;
        assert!(script.status.success(), "completions {shell}");
        let script = String::from_utf8(script.stdout)?;
        assert!(script.contains("request-list") && script.contains("nodepool"), "{shell}: {script}");
    }

    // `erase`: refused for a provider that exists; a gone provider's leftover nodes are deleted.
    let refused = nodepool(&stack, &["erase", "lab"])?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("provider \"lab\" exists"), "{refused:?}");
    stack
        .apply::<PoolNode>(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "PoolNode",
            "metadata": {"name": "left-over"}, "spec": {"provider": "gone", "pool": "main", "labels": ["x"]}}))
        .await?;
    let said = ok(&stack, &["erase", "gone"])?;
    assert_eq!(said.trim(), "erased 1 node(s) of provider gone");
    until("the left-over node gone", async || {
        let nodes = Api::<PoolNode>::namespaced(stack.client.clone(), &stack.namespace);
        Ok(nodes.get_opt("left-over").await?.is_none())
    })
    .await?;

    // The same program as a kubectl plugin.
    let plugin_dir = stack::binary("kubectl-nodepool")?.parent().context("binary dir")?.to_path_buf();
    let path = format!("{}:{}", plugin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let output = std::process::Command::new(nodepool_e2e::tools::kubectl())
        .env("KUBECONFIG", &stack.env.info.kubeconfig)
        .env("PATH", path)
        .args(["nodepool", "-n", &stack.namespace, "list", "-o", "json"])
        .output()?;
    assert!(output.status.success(), "kubectl nodepool: {}", String::from_utf8_lossy(&output.stderr));
    let via_kubectl: Value = serde_json::from_slice(&output.stdout)?;
    assert!(!via_kubectl.as_array().context("a JSON list")?.is_empty());
    Ok(())
}
