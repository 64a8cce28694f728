//! Metrics, probes and dashboards on a live run: the operator and the bridge serve Zuul
//! (static and simulated-cloud nodes, a failing launch), a real Prometheus scrapes both, and
//! every panel query of the chart's Grafana dashboards must be valid and return data.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};
use nodepool_e2e::{
    prometheus::{Prometheus, get},
    stack::{Stack, free_address},
    wait,
    zuul::Zuul,
};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// The value of the sample `series` (name with labels, exactly as exposed) in `body`.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

/// `promtool check metrics` on an exposition body: its lint findings, if any.
async fn promtool_check(body: &str) -> Result<()> {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package `prometheus`)")?;
    child.stdin.take().context("promtool stdin")?.write_all(body.as_bytes()).await?;
    let output = child.wait_with_output().await?;
    if !output.status.success() || !output.stdout.is_empty() || !output.stderr.is_empty() {
        bail!(
            "promtool check metrics: {:?}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Every `targets[].expr` of every dashboard in the chart, with the panel's title.
fn dashboard_queries() -> Result<Vec<(String, String)>> {
    let dir = repo().join("charts/nodepool-operator/dashboards");
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let mut panels: Vec<Value> = dashboard["panels"].as_array().cloned().unwrap_or_default();
        // Rows may nest their panels.
        let nested: Vec<Value> =
            panels.iter().flat_map(|p| p["panels"].as_array().cloned().unwrap_or_default()).collect();
        panels.extend(nested);
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    queries.push((format!("{file}: {}", panel["title"]), expr.replace("$provider", ".*")));
                }
            }
        }
    }
    if queries.len() < 10 {
        bail!("only {} panel queries found in {}", queries.len(), dir.display());
    }
    Ok(queries)
}

#[tokio::test]
async fn metrics_probes_and_dashboards_on_a_live_run() -> Result<()> {
    let stack = Stack::start("observability").await?;
    let prometheus = Prometheus::start(
        &stack.dir.join("prometheus"),
        &[("operator", stack.operator_http), ("bridge", stack.bridge_http)],
    )?;
    let pools = |labels: Value| json!([{"name": "main", "hostKeyChecking": false, "labels": labels}]);
    stack.apply_provider(stack.static_provider("lab", 1)).await?;
    stack
        .apply_provider(stack.simulated_provider(
            "sim",
            json!({"pools": pools(json!([{"name": "sim-small", "instanceType": "small"}])),
                   "limits": {"maxServers": 10}}),
        ))
        .await?;
    // Every boot fails, once: a launch error of Nodepool's `error.status` kind.
    stack
        .apply_provider(stack.simulated_provider(
            "sim-broken",
            json!({"pools": pools(json!([{"name": "sim-flaky", "instanceType": "small"}])),
                   "launchRetries": 1, "simulated": {"failureRate": 1.0}}),
        ))
        .await?;
    stack.wait_for_ready_nodes(2, WAIT).await?;
    stack.launchable("sim").await?;
    stack.launchable("sim-broken").await?;

    let mut zuul = Zuul::connect(&stack).await?;
    for labels in [&["static-label"][..], &["sim-small"]] {
        let request = zuul.request(labels).await?;
        let outcome = zuul.wait(&request, 60).await?;
        assert_eq!(outcome["state"], "fulfilled", "{labels:?}: {outcome}");
        zuul.run_build(&request).await?;
    }
    let flaky = zuul.request(&["sim-flaky"]).await?;
    let outcome = zuul.wait(&flaky, 60).await?;
    assert_eq!(outcome["state"], "failed", "{outcome}");

    // What each binary exposes, and what the run must have left in it.
    let operator = wait::until("launch metrics", WAIT, async || {
        let (_, body) = get(stack.operator_http, "/metrics").await?;
        let launched = r#"nodepool_launches_total{provider="sim",pool="main",label="sim-small",result="ready"}"#;
        let failed = r#"nodepool_launches_total{provider="sim-broken",pool="main",label="sim-flaky",result="error.status"}"#;
        Ok((sample(&body, launched) >= Some(1.0) && sample(&body, failed) == Some(1.0)).then_some(body))
    })
    .await?;
    for series in [
        r#"nodepool_provider_ready{provider="lab"}"#,
        r#"nodepool_provider_ready{provider="sim"}"#,
        r#"nodepool_provider_quota_limit{provider="sim",resource="servers",source="provider"}"#,
    ] {
        assert!(sample(&operator, series).is_some(), "{series} missing:\n{operator}");
    }
    assert_eq!(sample(&operator, r#"nodepool_provider_ready{provider="sim"}"#), Some(1.0));
    assert_eq!(
        sample(
            &operator,
            r#"nodepool_provider_quota_limit{provider="sim",resource="servers",source="provider"}"#
        ),
        Some(10.0)
    );
    assert!(
        sample(&operator, r#"nodepool_cloud_api_calls_total{provider="sim",operation="create"}"#)
            >= Some(1.0),
        "{operator}"
    );
    assert!(
        operator.contains(r#"nodepool_reconcile_duration_seconds_count{controller="scheduler"}"#),
        "{operator}"
    );
    assert!(operator.contains("nodepool_label_nodes{label=\"static-label\",state=\"ready\"}"), "{operator}");

    let (_, bridge) = get(stack.bridge_http, "/metrics").await?;
    assert_eq!(sample(&bridge, "nodepool_zookeeper_connected"), Some(1.0), "{bridge}");
    assert!(sample(&bridge, "nodepool_request_fulfilment_duration_seconds_count") >= Some(2.0), "{bridge}");
    assert!(
        sample(&bridge, r#"nodepool_bridge_request_outcomes_total{state="failed"}"#) >= Some(1.0),
        "{bridge}"
    );
    assert!(sample(&bridge, "nodepool_bridge_request_mirror_lag_seconds_count") >= Some(3.0), "{bridge}");
    promtool_check(&operator).await.context("operator /metrics")?;
    promtool_check(&bridge).await.context("bridge /metrics")?;

    // Probes: both live and ready; the bridge's readiness includes its ZooKeeper session.
    for address in [stack.operator_http, stack.bridge_http] {
        assert_eq!(get(address, "/healthz").await?.0, 200);
        let (status, report) = get(address, "/readyz").await?;
        assert_eq!(status, 200, "{report}");
        assert!(report.contains("[+] apiserver ok"), "{report}");
    }
    assert!(get(stack.bridge_http, "/readyz").await?.1.contains("[+] zookeeper ok"));

    // Prometheus scraped both; every dashboard panel's query is valid and has data.
    prometheus.wait_for_targets(2).await?;
    let queries = dashboard_queries()?;
    let mut empty = Vec::new();
    // Rates need two samples of a counter after it changed; give the scrapes time to come in.
    wait::until("every dashboard query has data", WAIT, async || {
        empty.clear();
        for (panel, expr) in &queries {
            // An invalid query fails the test at once, with Prometheus's error.
            let result = prometheus.query(expr).await.with_context(|| format!("panel {panel}"))?;
            if result.is_empty() {
                empty.push(format!("{panel}: {expr}"));
            }
        }
        Ok(empty.is_empty().then_some(()))
    })
    .await
    .with_context(|| format!("queries without data: {empty:#?}"))?;
    Ok(())
}

#[tokio::test]
async fn a_bridge_without_zookeeper_is_live_but_not_ready() -> Result<()> {
    let stack = Stack::prepare("observability-no-zk").await?;
    // A port nothing listens on.
    let nowhere = free_address()?;
    let address = free_address()?.to_string();
    let _bridge = nodepool_e2e::process::StopOnDrop(stack.spawn_bridge(
        "bridge-no-zk",
        &[("NODEPOOL_ZOOKEEPER_HOSTS", &nowhere.to_string()), ("NODEPOOL_HTTP_ADDRESS", &address)],
    )?);
    let address = address.parse()?;
    let report = wait::until("the bridge answering /readyz", WAIT, async || {
        Ok(get(address, "/readyz").await.ok().filter(|(status, _)| *status == 503).map(|(_, report)| report))
    })
    .await?;
    assert!(report.contains("[-] zookeeper failed"), "{report}");
    assert!(report.contains("[+] apiserver ok"), "{report}");
    assert_eq!(get(address, "/healthz").await?.0, 200, "liveness does not depend on ZooKeeper");
    let (_, metrics) = get(address, "/metrics").await?;
    assert_eq!(sample(&metrics, "nodepool_zookeeper_connected"), Some(0.0), "{metrics}");
    Ok(())
}
