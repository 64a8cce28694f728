//! `nodepool-demo`: the main job, locally. Starts (or reuses) the control plane and TLS ZooKeeper,
//! runs nodepool-operator and nodepool-zk-bridge, registers a static provider on a local sshd,
//! and lets Zuul's own client request a node, use it and return it.

use std::time::Duration;

use anyhow::{Result, bail};
use nodepool_e2e::stack::Stack;

#[tokio::main]
async fn main() -> Result<()> {
    let stack = Stack::start("demo").await?;
    let ns = stack.namespace.clone();
    println!(
        "namespace {ns}, ZooKeeper chroot {}, logs in {}",
        stack.chroot,
        stack.dir.join("logs").display()
    );
    stack.apply_provider(stack.static_provider("local-static", 2)).await?;
    println!("\nProvider local-static: two slots on 127.0.0.1 and one on localhost, served by a local sshd");
    stack.wait_for_ready_nodes(3, Duration::from_secs(60)).await?;
    kubectl(&stack, &["get", "nodepool", "-n", &ns])?;

    println!("\nZuul 14.3 (its own client classes) requests a node, accepts, uses and returns it:");
    let output = stack.zuul(&["run-scenario", "happy", "--timeout", "30"]).await?;
    // Print the driver's own lines: parsing them would turn 128-bit trace ids into floats.
    let stdout = String::from_utf8_lossy(&output.stdout);
    for text in stdout.lines() {
        let Ok(line) = serde_json::from_str::<serde_json::Value>(text) else { continue };
        if let Some(step) = line.get("step") {
            println!("  {:<16} {text}", step.as_str().unwrap_or_default());
        } else if let Some(result) = line.get("result") {
            println!("  result: {result}");
        }
    }
    if !output.status.success() {
        bail!("the request was not served:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    // The used slot's znode goes and its next registration comes a moment after Zuul returns it:
    // show the table once every slot is ready again, as the words say.
    stack.wait_for_ready_nodes(3, Duration::from_secs(30)).await?;
    println!("\nAfter use the slot is registered afresh (new ZooKeeper id):");
    kubectl(&stack, &["get", "poolnodes,noderequests", "-n", &ns, "-o", "wide"])?;
    println!("\nThe control plane keeps running; `e2e/scripts/demo.sh down` stops it.");
    Ok(())
}

fn kubectl(stack: &Stack, args: &[&str]) -> Result<()> {
    let output = stack.env.kubectl(args)?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}
