//! `--cloud aws`: single-use EC2 instances on moto, through our AWS driver and through Nodepool
//! 11's, with the EC2 API calls each makes per node counted from moto's request recorder.
//!
//! Each system gets a moto server of its own: moto keeps terminated instances listed, so on a
//! shared one whoever runs second would list (and wait for) the first one's instances too.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::types::Filter;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use nodepool_crds::{Image, Provider};
use nodepool_e2e::{moto::Moto, stack::Stack, tools, wait::until};
use serde_json::{Value, json};

use super::{CLOUD_LABEL, bench_args, parse_bench};

/// The instance type both systems launch.
const INSTANCE_TYPE: &str = "t3.micro";

/// Service Quotas far above what a run launches: Nodepool's driver reads them at start and
/// fails without them; ours reads them too. Neither is held back by quota.
fn generous_quotas() -> Value {
    json!({"ec2": {"L-1216C47A": 100_000, "L-34B43A08": 100_000}, "ebs": {}})
}

/// Measures both systems at each worker count; one row per (system, workers).
pub async fn run(stack: &Stack, workers: &[u32], duration: u32, skip_nodepool: bool) -> Result<Vec<Value>> {
    let mut results = Vec::new();
    let logs = stack.logs();
    {
        let moto = Moto::start_with_quotas(&logs, &generous_quotas())?;
        let image = first_ami(&moto).await?;
        apply_ours(stack, &moto, &image).await?;
        for &count in workers {
            eprintln!("nodepool-operator on moto, {count} workers, {duration}s ...");
            let args = bench_args(count, duration, CLOUD_LABEL);
            moto.start_recording().await?;
            let output = stack.zuul(&args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
            let log = logs.join(format!("zuul-bench-operator-aws-{count}.log"));
            let result = with_calls(parse_bench(&output, &log)?, &moto).await?;
            results.push(json!({"system": "nodepool-operator", "workers": count, "result": result}));
        }
        // Nothing of ours may call the next system's moto, nor this one while it is measured.
        delete_ours(stack).await?;
    }
    if skip_nodepool {
        return Ok(results);
    }
    let moto = Moto::start_with_quotas(&logs, &generous_quotas())?;
    let image = first_ami(&moto).await?;
    let chroot = format!("{}-nodepool-aws", stack.chroot);
    let nodepool = |action: &str| {
        let mut command = Command::new("python3");
        command
            .arg(tools::repo_root().join("e2e/zuul/nodepool_static.py"))
            .arg(action)
            .arg("--testenv-json")
            .arg(stack.testenv_json().expect("testenv json"))
            .args(["--cloud", "aws", "--aws-endpoint", &moto.endpoint, "--image-id", &image])
            .args(["--instance-type", INSTANCE_TYPE, "--label", CLOUD_LABEL, "--chroot", &chroot])
            .arg("--workdir")
            .arg(stack.dir.join("nodepool-aws"));
        command
    };
    let started = nodepool("start").output().context("starting Nodepool 11's launcher")?;
    if !started.status.success() {
        bail!("nodepool-launcher did not start:\n{}", String::from_utf8_lossy(&started.stderr));
    }
    for &count in workers {
        eprintln!("Nodepool 11 on moto, {count} workers, {duration}s ...");
        let args = bench_args(count, duration, CLOUD_LABEL);
        moto.start_recording().await?;
        let output = stack.zuul_at(&chroot, &args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
        let log = logs.join(format!("zuul-bench-nodepool-aws-{count}.log"));
        let result = with_calls(parse_bench(&output, &log)?, &moto).await?;
        results.push(json!({"system": "nodepool-11", "workers": count, "result": result}));
    }
    nodepool("stop").output().ok();
    Ok(results)
}

/// An AMI moto serves (the same on every moto server).
async fn first_ami(moto: &Moto) -> Result<String> {
    let images = moto.ec2().describe_images().owners("amazon").send().await?;
    let mut ids: Vec<&str> = images.images().iter().filter_map(|i| i.image_id()).collect();
    ids.sort();
    ids.first().map(|id| (*id).to_owned()).context("moto serves no AMI")
}

/// Our Provider `bench` on `moto`: the label of [`INSTANCE_TYPE`] from `image`, host keys not
/// checked, no client-side rate limit (our default).
async fn apply_ours(stack: &Stack, moto: &Moto, image: &str) -> Result<()> {
    stack
        .apply::<Secret>(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bench-keys"},
            "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}}))
        .await?;
    stack
        .apply::<Image>(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Image",
            "metadata": {"name": "bench-ami"}, "spec": {"username": "ec2-user", "aws": {"imageId": image}}}))
        .await?;
    stack
        .apply_provider(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": "bench"},
            "spec": {"driver": "aws", "aws": {"region": nodepool_e2e::moto::REGION, "endpoint": moto.endpoint},
                     "credentialsSecretRef": {"name": "bench-keys"},
                     "pools": [{"name": "main", "hostKeyChecking": false,
                                "labels": [{"name": CLOUD_LABEL, "image": "bench-ami",
                                            "instanceType": INSTANCE_TYPE}]}]}}))
        .await?;
    stack.launchable("bench").await.map(|_| ())
}

/// Deletes our Provider and waits until it is gone (its instances terminated first).
async fn delete_ours(stack: &Stack) -> Result<()> {
    let api: Api<Provider> = Api::namespaced(stack.client.clone(), &stack.namespace);
    api.delete("bench", &Default::default()).await?;
    until("the bench Provider gone", Duration::from_secs(120), async || {
        Ok(api.get_opt("bench").await?.is_none().then_some(()))
    })
    .await
}

/// The bench result with the EC2 API calls moto recorded for it, in all and per node: from
/// the run's start until every instance it launched is terminated, so the calls that delete a
/// system's last nodes after the run count too (Nodepool's come up to a minute later).
async fn with_calls(mut result: Value, moto: &Moto) -> Result<Value> {
    // moto records the bench's own looks too; they are taken off below.
    let looks = std::sync::atomic::AtomicUsize::new(0);
    until("every instance of the run terminated", Duration::from_secs(180), async || {
        let running =
            Filter::builder().name("instance-state-name").values("pending").values("running").build();
        looks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let output = moto.ec2().describe_instances().filters(running).send().await?;
        Ok(output.reservations().iter().all(|r| r.instances().is_empty()).then_some(()))
    })
    .await?;
    let looks = looks.load(std::sync::atomic::Ordering::Relaxed);
    let requests = moto.recorded_ec2_requests().await?;
    let calls = requests.len().saturating_sub(looks);
    let mut by_action = std::collections::BTreeMap::<String, usize>::new();
    for (action, _) in &requests {
        *by_action.entry(action.clone()).or_default() += 1;
    }
    if let Some(describes) = by_action.get_mut("DescribeInstances") {
        *describes = describes.saturating_sub(looks);
    }
    result["ec2_calls_by_action"] = json!(by_action);
    let fulfilled = result["fulfilled"].as_f64().unwrap_or(0.0);
    result["ec2_calls"] = json!(calls);
    result["ec2_calls_per_node"] = json!(if fulfilled > 0.0 { calls as f64 / fulfilled } else { f64::NAN });
    Ok(result)
}
