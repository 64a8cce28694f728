//! The bridge shares a ZooKeeper (and chroot) with a running Nodepool 11 launcher, as a site
//! moving provider by provider would: each serves its own labels, both decline what neither
//! serves, and a request fails only once every registered pool has declined it.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use nodepool_e2e::{stack::Stack, tools, zuul::Zuul};
use serde_json::{Value, json};

struct NodepoolLauncher {
    script: std::path::PathBuf,
    args: Vec<String>,
}

impl NodepoolLauncher {
    /// Nodepool 11's static launcher with one host: `np-label` (2 slots) and `np-single`.
    fn start(stack: &Stack) -> Result<NodepoolLauncher> {
        Self::start_with(stack, &[])
    }

    /// The same with more of `nodepool_static.py`'s options (later ones win).
    fn start_with(stack: &Stack, extra: &[&str]) -> Result<NodepoolLauncher> {
        let script = tools::repo_root().join("e2e/zuul/nodepool_static.py");
        let args: Vec<String> = [
            "--testenv-json",
            stack.testenv_json()?.to_str().context("path")?,
            "--chroot",
            &stack.chroot,
            "--workdir",
            stack.dir.join("nodepool").to_str().context("path")?,
            "--hosts",
            "1",
            "--slots",
            "2",
            "--label",
            "np-label",
            "--single-label",
            "np-single",
            "--provider",
            "nodepool-static",
        ]
        .map(str::to_owned)
        .to_vec();
        let mut args = args;
        args.extend(extra.iter().map(|a| a.to_string()));
        let output = Command::new("python3").arg(&script).arg("start").args(&args).output()?;
        if !output.status.success() {
            bail!("nodepool-launcher did not start:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(NodepoolLauncher { script, args })
    }
}

impl Drop for NodepoolLauncher {
    fn drop(&mut self) {
        let _ = Command::new("python3").arg(&self.script).arg("stop").args(&self.args).output();
    }
}

#[tokio::test]
async fn bridge_and_nodepool_11_share_one_zookeeper() -> Result<()> {
    let stack = Stack::start("side-by-side").await?;
    stack.apply_provider(stack.static_provider("lab", 2)).await?;
    stack.wait_for_ready_nodes(3, Duration::from_secs(60)).await?;
    let _nodepool = NodepoolLauncher::start(&stack)?;
    let mut zuul = Zuul::connect(&stack).await?;
    let pools =
        zuul.call("wait_launcher", json!({"labels": ["np-label", "static-label"], "timeout": 60})).await?;
    assert_eq!(pools["pools"].as_array().map(Vec::len), Some(2), "{pools}");

    // Each side serves its own label.
    for (label, provider) in [("np-label", "nodepool-static"), ("static-label", "lab")] {
        let request = zuul.request(&[label]).await?;
        let outcome = zuul.wait(&request, 90).await?;
        assert_eq!(outcome["state"], "fulfilled", "{label}: {outcome}");
        assert_eq!(outcome["nodeset_info"]["provider"], provider, "{label}: {outcome}");
        zuul.run_build(&request).await?;
    }

    // A label neither serves fails only after both pools declined.
    let request = zuul.request(&["no-such-label"]).await?;
    let outcome = zuul.wait(&request, 90).await?;
    assert_eq!(outcome["state"], "failed", "{outcome}");
    let declined = outcome["declined_by"].as_array().context("declined_by")?;
    assert_eq!(declined.len(), 2, "both pools declined: {outcome}");
    assert!(declined.iter().any(|id| id.as_str().unwrap_or_default().contains("PoolWorker.lab-main")));
    assert!(
        declined.iter().any(|id| id.as_str().unwrap_or_default().contains("PoolWorker.nodepool-static-main"))
    );
    Ok(())
}

/// Nodepool's priority rule across launchers (zk-protocol.md §6.3 step 3): a pool yields a
/// request to another launcher's pool with a better (lower) priority that serves its labels.
#[tokio::test]
async fn the_bridge_yields_to_a_better_priority_nodepool_pool() -> Result<()> {
    let stack = Stack::start("side-by-side-priority").await?;
    // Ours serves static-label at the default priority (100), with free nodes ready.
    stack.apply_provider(stack.static_provider("lab", 2)).await?;
    stack.wait_for_ready_nodes(3, Duration::from_secs(60)).await?;
    // Nodepool serves the same label at priority 10.
    let _nodepool = NodepoolLauncher::start_with(&stack, &["--label", "static-label", "--priority", "10"])?;
    let mut zuul = Zuul::connect(&stack).await?;
    zuul.call("wait_launcher", json!({"labels": ["static-label", "np-single"], "timeout": 60})).await?;

    for _ in 0..2 {
        let request = zuul.request(&["static-label"]).await?;
        let outcome = zuul.wait(&request, 90).await?;
        assert_eq!(outcome["state"], "fulfilled", "{outcome}");
        assert_eq!(outcome["nodeset_info"]["provider"], "nodepool-static", "ours must yield: {outcome}");
        // Our mirror of it says why we left it.
        let requests: kube::Api<nodepool_crds::NodeRequest> =
            kube::Api::namespaced(stack.client.clone(), &stack.namespace);
        if let Some(ours) = requests.get_opt(&request).await? {
            let others = &ours.spec.other_launchers;
            assert!(others.iter().any(|o| o.provider == "nodepool-static" && o.priority == 10), "{others:?}");
        }
        zuul.run_build(&request).await?;
    }
    Ok(())
}

/// The fields of a node Zuul's executor holds that a static `nodepool.yaml` decides, with the
/// host keys as a set: a key scan's order is not the file's, and Nodepool 11 lists the RSA key
/// once per RSA signature algorithm paramiko negotiates (twice against a current OpenSSH).
fn as_configured(node: &Value) -> Value {
    let keys: std::collections::BTreeSet<String> = node["host_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    json!({
        "label": node["label"], "provider": node["provider"], "pool": node["pool"],
        "interface_ip": node["interface_ip"], "hostname": node["hostname"],
        "connection_type": node["connection_type"], "connection_port": node["connection_port"],
        "username": node["username"], "python_path": node["python_path"], "shell_type": node["shell_type"],
        "attributes": node["attributes"], "host_keys": keys,
    })
}

/// Takes both slots of `label` as a build would and gives them back; what Zuul saw of each
/// node, and the slots they were.
async fn take_both_slots(zuul: &mut Zuul, label: &str) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut nodes = Vec::new();
    let mut slots = Vec::new();
    let mut builds = Vec::new();
    for _ in 0..2 {
        let request = zuul.request(&[label]).await?;
        let outcome = zuul.wait(&request, 90).await?;
        assert_eq!(outcome["state"], "fulfilled", "{outcome}");
        let accepted = zuul.call("accept", json!({"request_id": request})).await?;
        let node = accepted["nodes"][0].clone();
        slots.push(node["slot"].clone());
        nodes.push(as_configured(&node));
        builds.push(accepted["build"].clone());
    }
    for build in builds {
        zuul.call("return", json!({"build": build})).await?;
    }
    slots.sort_by_key(|s| s.as_i64());
    Ok((nodes, slots))
}

/// `nodepool import` round trip: a static `nodepool.yaml` served by Nodepool 11, then imported
/// and applied, serves Zuul's client the same nodes (labels, slots, host keys, attributes,
/// connection settings).
#[tokio::test]
async fn an_imported_static_nodepool_yaml_serves_what_nodepool_11_served() -> Result<()> {
    let stack = Stack::start("import-round-trip").await?;
    let config = json!({
        "labels": [{"name": "rt-label", "min-ready": 0}],
        "providers": [{
            "name": "round-trip",
            "driver": "static",
            "pools": [{
                "name": "main",
                "node-attributes": {"executor-zone": "lab", "rack": 7},
                "nodes": [{
                    "name": "127.0.0.1", "labels": ["rt-label"], "connection-port": stack.sshd.port,
                    "username": "zuul-worker", "python-path": "/usr/bin/python3", "shell-type": "sh",
                    "max-parallel-jobs": 2, "timeout": 10, "host-key-checking": true,
                }],
            }],
        }],
    });
    let json_path = stack.dir.join("nodepool-config.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&config)?)?;
    let yaml_path = stack.dir.join("nodepool.yaml");
    std::fs::write(&yaml_path, serde_yaml_ng::to_string(&config)?)?;

    let mut zuul = Zuul::connect(&stack).await?;
    let (from_nodepool, nodepool_slots) = {
        let _nodepool =
            NodepoolLauncher::start_with(&stack, &["--config-file", json_path.to_str().context("path")?])?;
        zuul.call("wait_launcher", json!({"labels": ["rt-label"], "timeout": 60})).await?;
        take_both_slots(&mut zuul, "rt-label").await?
    };
    assert!(
        from_nodepool[0]["host_keys"].as_array().is_some_and(|keys| !keys.is_empty()),
        "Nodepool scanned the host"
    );

    // Nodepool is stopped; the same file, imported and applied.
    let kubeconfig = stack.env.info.kubeconfig.to_str().context("kubeconfig path")?;
    let output = Command::new(nodepool_e2e::stack::binary("nodepool")?)
        .args(["--kubeconfig", kubeconfig, "-n", &stack.namespace, "import", "--apply"])
        .arg(&yaml_path)
        .output()?;
    let applied = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{applied}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        applied.contains("provider/round-trip applied") && applied.contains("label/rt-label applied"),
        "{applied}"
    );
    stack.wait_for_ready_nodes(2, Duration::from_secs(60)).await?;
    zuul.call("wait_launcher", json!({"labels": ["rt-label"], "timeout": 60})).await?;
    let (from_import, import_slots) = take_both_slots(&mut zuul, "rt-label").await?;

    assert_eq!(from_import, from_nodepool, "the imported provider serves the nodes Nodepool served");
    assert_eq!(import_slots, nodepool_slots);
    Ok(())
}
