//! `nodepool-bench`: Zuul's own client against the operator + bridge and, in the same run and on
//! the same ZooKeeper, against Nodepool 11's launcher.
//!
//! - `--cloud static` (default): the same static hosts and slots for both.
//! - `--cloud simulated`: single-use nodes launched on our simulated cloud with zero launch
//!   latency, against Nodepool 11 on its in-tree fake cloud.
//!
//! Each worker loops request → fulfilled → accept → in-use → used, as Zuul's executor does.
//! Prints fulfilled requests per second and request-to-fulfilled latency, and the ratios.
//!
//! `--scale N` (simulated cloud) keeps N nodes under one operator and prints its resident
//! memory and how long a restarted operator takes to resync; `--burst N --rate R` submits N
//! single-node requests at once against a provider limited to R cloud calls per second and
//! compares the time they take with the time the rate limit allows.
//!
//! Every run starts a control plane and ZooKeeper of its own (in `~/.cache/nodepool-operator/
//! bench-env`) and stops them at the end.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Parser;
use nodepool_e2e::{stack::Stack, testenv::TestEnv, tools};

#[path = "bench/aws.rs"]
mod aws;
#[path = "bench/scale.rs"]
mod scale;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Static-node throughput and latency: nodepool-operator vs Nodepool 11")]
struct Cli {
    /// Worker counts to measure (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    workers: Vec<u32>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 20)]
    duration: u32,
    /// Static hosts (127.0.0.1, 127.0.0.2, ...).
    #[arg(long, default_value_t = 4)]
    hosts: u32,
    /// Slots (max-parallel-jobs) per host.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Measure only nodepool-operator.
    #[arg(long)]
    skip_nodepool: bool,
    /// `static` hosts, single-use nodes on the `simulated` cloud (vs Nodepool's fake cloud), or
    /// single-use EC2 instances on moto (`aws`, vs Nodepool's AWS driver on a moto of its own).
    #[arg(long, value_enum, default_value_t = BenchCloud::Static)]
    cloud: BenchCloud,
    /// Instead of throughput: keep this many nodes (simulated cloud) and measure memory and resync.
    #[arg(long)]
    scale: Option<u32>,
    /// Instead of throughput: submit this many single-node requests at once (simulated cloud).
    #[arg(long)]
    burst: Option<u32>,
    /// The provider's cloud API rate limit for `--burst`, calls per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Where the nodes of a throughput run come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchCloud {
    Static,
    Simulated,
    Aws,
}

fn bench_args(workers: u32, duration: u32, label: &str) -> Vec<String> {
    ["bench", "--workers", &workers.to_string(), "--duration", &duration.to_string(), "--label", label]
        .map(str::to_owned)
        .to_vec()
}

/// The label both systems serve in `--cloud simulated` mode.
const CLOUD_LABEL: &str = "bench-label";

fn simulated_provider(rate: Option<f64>) -> Value {
    json!({
        "apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": "bench"},
        "spec": {"driver": "simulated", "rateLimit": rate.map(|r| json!({"requestsPerSecond": r, "burst": 1})),
                 "pools": [{"name": "main", "hostKeyChecking": false,
                            "labels": [{"name": CLOUD_LABEL, "instanceType": "small"}]}]},
    })
}

/// The bench result a Zuul client run printed; what Zuul's classes logged (their exceptions, if
/// any request failed) is kept in `log`.
fn parse_bench(output: &std::process::Output, log: &std::path::Path) -> Result<Value> {
    if let Err(error) = std::fs::write(log, &output.stderr) {
        eprintln!("keeping the Zuul client's log in {}: {error}", log.display());
    }
    nodepool_e2e::stack::json_lines(output)
        .into_iter()
        .find_map(|line| line.get("bench").cloned())
        .with_context(|| format!("no bench result; stderr:\n{}", String::from_utf8_lossy(&output.stderr)))
}

/// Stops the bench's environment however the run ends.
struct EnvGuard(PathBuf);

impl Drop for EnvGuard {
    fn drop(&mut self) {
        if let Err(error) = TestEnv::down(&self.0) {
            eprintln!("stopping the bench environment in {}: {error:#}", self.0.display());
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Cleanup passes at their production intervals, as Nodepool runs at its defaults.
    // A control plane and ZooKeeper of the bench's own, started fresh and stopped at the end:
    // objects left by tests or earlier runs in the shared environment (10,000 PoolNodes after
    // `--scale`) would weigh on the figures.
    let env_dir = tools::cache_dir().join("bench-env");
    let _env = EnvGuard(env_dir.clone());
    let mut stack = Stack::prepare_in(TestEnv::up(&env_dir, true).await?, "bench").await?;
    stack.production_intervals = true;
    stack.start_operator()?;
    stack.start_bridge()?;
    if let Some(nodes) = cli.scale {
        return scale::run(&mut stack, nodes).await;
    }
    if let Some(requests) = cli.burst {
        return scale::burst(&stack, requests, cli.rate).await;
    }
    let results = match cli.cloud {
        BenchCloud::Aws => aws::run(&stack, &cli.workers, cli.duration, cli.skip_nodepool).await?,
        BenchCloud::Static | BenchCloud::Simulated => static_or_simulated(&stack, &cli).await?,
    };
    print_results(&results, &cli.workers);
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&results)?)?;
    }
    Ok(())
}

/// `--cloud static` or `simulated`: ours, then Nodepool 11 on the same hosts or its fake cloud.
async fn static_or_simulated(stack: &Stack, cli: &Cli) -> Result<Vec<Value>> {
    let cloud = cli.cloud == BenchCloud::Simulated;
    let label = if cloud { CLOUD_LABEL } else { "static-label" };
    if cloud {
        stack.apply_provider(simulated_provider(None)).await?;
    }
    let hosts: Vec<Value> = (1..=cli.hosts)
        .map(|i| {
            json!({"name": format!("127.0.0.{i}"), "labels": ["static-label"], "maxParallelJobs": cli.slots,
                   "hostKeyChecking": false})
        })
        .collect();
    if !cloud {
        stack
            .apply_provider(json!({
                "apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": "bench"},
                "spec": {"driver": "static", "pools": [{"name": "main", "hosts": hosts}]},
            }))
            .await?;
        stack.wait_for_ready_nodes((cli.hosts * cli.slots) as usize, Duration::from_secs(120)).await?;
    } else {
        tokio::time::sleep(Duration::from_secs(2)).await; // the provider's first status
    }

    let mut results = Vec::new();
    for &workers in &cli.workers {
        eprintln!("nodepool-operator, {workers} workers, {}s ...", cli.duration);
        let ours = parse_bench(
            &stack
                .zuul(
                    &bench_args(workers, cli.duration, label).iter().map(String::as_str).collect::<Vec<_>>(),
                )
                .await?,
            &stack.logs().join(format!("zuul-bench-operator-{workers}.log")),
        )?;
        results.push(json!({"system": "nodepool-operator", "workers": workers, "result": ours}));
    }

    if !cli.skip_nodepool {
        let chroot = format!("{}-nodepool", stack.chroot);
        let workdir = stack.dir.join("nodepool");
        let script = tools::repo_root().join("e2e/zuul/nodepool_static.py");
        let common = |action: &str| {
            let mut command = Command::new("python3");
            command
                .arg(&script)
                .arg(action)
                .arg("--testenv-json")
                .arg(stack.testenv_json().expect("testenv json"))
                .args([
                    "--chroot",
                    &chroot,
                    "--hosts",
                    &cli.hosts.to_string(),
                    "--slots",
                    &cli.slots.to_string(),
                ])
                .arg("--workdir")
                .arg(&workdir);
            if cloud {
                command.args(["--cloud", "fake", "--label", CLOUD_LABEL]);
            }
            command
        };
        let started = common("start").output().context("starting Nodepool 11's launcher")?;
        if !started.status.success() {
            bail!("nodepool-launcher did not start:\n{}", String::from_utf8_lossy(&started.stderr));
        }
        for &workers in &cli.workers {
            eprintln!("Nodepool 11, {workers} workers, {}s ...", cli.duration);
            let args = bench_args(workers, cli.duration, label);
            let theirs = parse_bench(
                &stack.zuul_at(&chroot, &args.iter().map(String::as_str).collect::<Vec<_>>()).await?,
                &stack.logs().join(format!("zuul-bench-nodepool-{workers}.log")),
            )?;
            results.push(json!({"system": "nodepool-11", "workers": workers, "result": theirs}));
        }
        common("stop").output().ok();
    }

    Ok(results)
}

/// The results as a table, each system's error samples, and ours against Nodepool's.
fn print_results(results: &[Value], workers: &[u32]) {
    println!("| system | workers | fulfilled/s | p50 ms | p99 ms | fulfilled | errors | EC2 calls/node |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in results {
        let r = &row["result"];
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row["system"].as_str().unwrap_or_default(),
            row["workers"],
            r["fulfilled_per_s"],
            r["latency_ms"]["p50"],
            r["latency_ms"]["p99"],
            r["fulfilled"],
            r["errors"],
            r["ec2_calls_per_node"].as_f64().map_or("-".to_owned(), |c| format!("{c:.1}"))
        );
    }
    for row in results.iter().filter(|r| r["result"]["ec2_calls_by_action"].is_object()) {
        let (system, workers) = (row["system"].as_str().unwrap_or_default(), &row["workers"]);
        println!("EC2 calls ({system}, {workers} workers): {}", row["result"]["ec2_calls_by_action"]);
    }
    for row in results {
        for sample in row["result"]["error_samples"].as_array().into_iter().flatten() {
            println!(
                "error ({}, {} workers): {}",
                row["system"].as_str().unwrap_or_default(),
                row["workers"],
                sample
            );
        }
    }
    for &workers in workers {
        let find = |system: &str| {
            results
                .iter()
                .find(|r| r["system"] == system && r["workers"] == workers)
                .map(|r| r["result"].clone())
        };
        if let (Some(ours), Some(theirs)) = (find("nodepool-operator"), find("nodepool-11")) {
            let ratio =
                |key: &str| ours[key].as_f64().unwrap_or(0.0) / theirs[key].as_f64().unwrap_or(f64::NAN);
            let p50 = theirs["latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN)
                / ours["latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN);
            println!(
                "{workers} workers: throughput {:.1}x Nodepool 11, p50 latency {:.1}x lower",
                ratio("fulfilled_per_s"),
                p50
            );
        }
    }
}
