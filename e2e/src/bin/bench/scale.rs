//! Scale and burst measurements on the simulated cloud.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::Api;
use nodepool_crds::{Label, NodeState, PoolNode};
use nodepool_e2e::{stack::Stack, zuul::Zuul};
use serde_json::json;

use super::{CLOUD_LABEL, simulated_provider};

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}

async fn ready_nodes(stack: &Stack) -> Result<usize> {
    let api: Api<PoolNode> = Api::namespaced(stack.client.clone(), &stack.namespace);
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .iter()
        .filter(|n| {
            n.status.as_ref().is_some_and(|s| {
                s.state == NodeState::Ready && s.zookeeper.as_ref().is_some_and(|z| z.node_id.is_some())
            })
        })
        .count())
}

/// Keeps `nodes` ready nodes (a Label's minReady), then measures the operator's memory, and how
/// long a killed and restarted operator takes to resync and to serve a request again.
pub async fn run(stack: &mut Stack, nodes: u32) -> Result<()> {
    stack.apply_provider(simulated_provider(None)).await?;
    stack
        .apply::<Label>(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Label",
            "metadata": {"name": CLOUD_LABEL}, "spec": {"minReady": nodes}}))
        .await?;
    let start = Instant::now();
    loop {
        let ready = ready_nodes(stack).await?;
        eprintln!("{ready}/{nodes} nodes ready after {:.0}s", start.elapsed().as_secs_f64());
        if ready >= nodes as usize {
            break;
        }
        if start.elapsed() > Duration::from_secs(3600) {
            bail!("only {ready} of {nodes} nodes after an hour");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let launch_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(10)).await; // let reconciles settle
    let operator = stack.operator.as_ref().context("operator")?.pid;
    let bridge = stack.bridge.as_ref().context("bridge")?.pid;
    let operator_rss = rss_mib(operator)?;
    let bridge_rss = rss_mib(bridge)?;

    // A restart: how long until the caches hold every object again and a request is served.
    stack.kill_operator();
    let restarted = Instant::now();
    stack.start_operator()?;
    let log = stack.operator.as_ref().context("operator")?.log.clone();
    let before = std::fs::read_to_string(&log)?.matches("scheduler running").count();
    let resync_s = loop {
        let now = std::fs::read_to_string(&log)?.matches("scheduler running").count();
        if now > before {
            break restarted.elapsed().as_secs_f64();
        }
        if restarted.elapsed() > Duration::from_secs(300) {
            bail!("the restarted operator did not resync within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut zuul = Zuul::connect(stack).await?;
    let request = zuul.request(&[CLOUD_LABEL]).await?;
    let outcome = zuul.wait(&request, 300).await?;
    let served_s = restarted.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let operator_rss_after = rss_mib(stack.operator.as_ref().context("operator")?.pid)?;

    println!(
        "| nodes | launched in | operator RSS | bridge RSS | resync after restart | request served after restart | operator RSS after restart |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {nodes} | {launch_s:.0} s | {operator_rss:.0} MiB | {bridge_rss:.0} MiB | {resync_s:.2} s | {served_s:.2} s ({}) | {operator_rss_after:.0} MiB |",
        outcome["state"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// Submits `requests` single-node requests at once against a provider limited to `rate` cloud
/// calls per second. Each launch on the simulated cloud with no latency costs two calls (create,
/// then one look that finds it running), so the limit allows `2 × requests / rate` seconds.
pub async fn burst(stack: &Stack, requests: u32, rate: f64) -> Result<()> {
    stack.apply_provider(simulated_provider(Some(rate))).await?;
    tokio::time::sleep(Duration::from_secs(3)).await; // the provider's first status
    let mut zuul = Zuul::connect(stack).await?;
    let start = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..requests {
        ids.push(zuul.request(&[CLOUD_LABEL]).await?);
    }
    let submitted_s = start.elapsed().as_secs_f64();
    let mut failed = 0;
    for id in &ids {
        if zuul.wait(id, 3600).await?["state"] != "fulfilled" {
            failed += 1;
        }
    }
    let took = start.elapsed().as_secs_f64();
    let allowed = 2.0 * f64::from(requests) / rate;
    let calls = cloud_calls(stack).await?;
    println!(
        "| requests | rate limit | submitted in | all fulfilled after | rate limit allows | ratio | not fulfilled |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {requests} | {rate}/s | {submitted_s:.1} s | {took:.1} s | {allowed:.1} s | {:.2} | {failed} |",
        took / allowed
    );
    println!("cloud API calls during the burst (all draw on the limit): {calls}");
    Ok(())
}

/// The operator's count of cloud API calls by operation, from its `/metrics`.
async fn cloud_calls(stack: &Stack) -> Result<String> {
    let url = format!("http://{}/metrics", stack.operator_http);
    let text = reqwest::get(&url).await?.text().await.with_context(|| format!("reading {url}"))?;
    let mut calls: Vec<String> = text
        .lines()
        .filter(|line| line.starts_with("nodepool_cloud_api_calls_total{"))
        .filter_map(|line| {
            let operation = line.split("operation=\"").nth(1)?.split('"').next()?;
            let count = line.rsplit(' ').next()?;
            Some(format!("{operation} {count}"))
        })
        .collect();
    calls.sort();
    Ok(calls.join(", "))
}
