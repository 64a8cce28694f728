//! The bridge shares a ZooKeeper (and chroot) with a running Nodepool 11 launcher, as a site
//! moving provider by provider would: each serves its own labels, both decline what neither
//! serves, and a request fails only once every registered pool has declined it.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use nodepool_e2e::{stack::Stack, tools, zuul::Zuul};
use serde_json::json;

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
