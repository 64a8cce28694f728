//! Metrics, probes and dashboards on a live run: the operator and the bridge serve Zuul
//! (static and simulated-cloud nodes, a failing launch), a real Prometheus scrapes both, and
//! every panel query of the chart's Grafana dashboards must be valid and return data.

use std::{process::Stdio, time::Duration};

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
    let dir = nodepool_e2e::tools::repo_root().join("charts/nodepool-operator/dashboards");
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

/// Every value of the field `name` on a JSON log line: the event's own, and its spans'.
fn field_values<'a>(line: &'a Value, name: &str) -> Vec<&'a str> {
    let spans = line["spans"].as_array().into_iter().flatten();
    [line].into_iter().chain(spans).filter_map(|object| object[name].as_str()).collect()
}

/// Whether a JSON log line has the field `name`, and only with `value`.
fn names(line: &Value, name: &str, value: &str) -> bool {
    let values = field_values(line, name);
    !values.is_empty() && values.iter().all(|v| *v == value)
}

/// The JSON log lines of a process started by `stack` under `name`.
fn json_lines(stack: &Stack, name: &str) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(stack.logs().join(format!("{name}.log")))?;
    text.lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
        .collect()
}

/// Lines logged about a request carry Zuul's request id, and lines logged while working on a
/// node carry the PoolNode's name (and, once it has one, its znode id), whichever function
/// logged them: the ids come from spans around each reconcile and scheduling decision.
#[tokio::test]
async fn log_lines_carry_the_request_and_node_ids() -> Result<()> {
    let mut stack = Stack::prepare("observability-log-ids").await?;
    let operator_http = stack.operator_http.to_string();
    let bridge_http = stack.bridge_http.to_string();
    let json = ("NODEPOOL_LOG_JSON", "true");
    stack.operator =
        Some(stack.spawn_operator("operator", &[json, ("NODEPOOL_HTTP_ADDRESS", &operator_http)])?);
    stack.bridge = Some(stack.spawn_bridge("bridge", &[json, ("NODEPOOL_HTTP_ADDRESS", &bridge_http)])?);
    let pools = json!([{"name": "main", "hostKeyChecking": false,
                        "labels": [{"name": "sim-small", "instanceType": "small"}]}]);
    stack.apply_provider(stack.simulated_provider("sim", json!({"pools": pools}))).await?;
    stack.launchable("sim").await?;

    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["sim-small"]).await?;
    let outcome = zuul.wait(&request, 60).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let node_id = outcome["nodes"][0].as_str().context("no node id")?.to_owned();
    zuul.run_build(&request).await?;
    // The used node is deleted: its last lines are logged by then.
    wait::until("the used node deleted", WAIT, async || Ok(stack.nodes().await?.is_empty().then_some(())))
        .await?;

    let operator = json_lines(&stack, "operator")?;
    let bridge = json_lines(&stack, "bridge")?;
    let message = |line: &Value| line["message"].as_str().unwrap_or_default().to_owned();
    // What each binary says about this request, and that each line names it.
    for (lines, about_the_request) in [
        (&operator, &["launching node", "request assigned"][..]),
        (&bridge, &["mirrored request", "request fulfilled", "request withdrawn"]),
    ] {
        for expected in about_the_request {
            let said: Vec<&Value> = lines.iter().filter(|l| message(l) == *expected).collect();
            assert!(!said.is_empty(), "nobody logged {expected:?}");
            for line in said {
                assert!(names(line, "request", &request), "{line}");
            }
        }
    }
    // Every line of the node's reconciles names the node; those after its registration in
    // ZooKeeper name the znode too.
    let node_lines: Vec<&Value> = operator
        .iter()
        .chain(&bridge)
        .filter(|line| {
            line["spans"].as_array().is_some_and(|spans| spans.iter().any(|s| s["name"] == "node"))
        })
        .collect();
    for expected in ["launch starting", "node ready", "deleting node", "removed node from ZooKeeper"] {
        let line = node_lines.iter().find(|l| message(l) == expected);
        let line = line.with_context(|| format!("no line {expected:?} inside a node span"))?;
        assert!(!field_values(line, "node").is_empty(), "{line}");
        if expected != "launch starting" && expected != "node ready" {
            assert!(names(line, "node_id", &node_id), "{line}");
        }
    }
    Ok(())
}
