//! `nodepool import` on real configurations: every YAML file under `nodepool/tests/fixtures/` of
//! Nodepool 11.0.0's sdist (fetched from PyPI by `e2e/zuul/nodepool_static.py sdist`). Each one
//! imports without a crash, every provider of it is carried or named in a note, and every object
//! produced is applied to the real apiserver (one namespace per fixture) and read back. A report
//! of what was carried and what not, per fixture, is kept as the test's artefact.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use kube::{
    Api,
    api::{DynamicObject, GroupVersionKind},
    discovery::ApiResource,
};
use nodepool_crds::annotations::IMPORTED_FROM;
use nodepool_e2e::{
    cluster,
    stack::{self},
    testenv::TestEnv,
    tools,
};
use serde_json::Value;

/// The fixtures folder of the unpacked sdist.
fn fixtures() -> Result<PathBuf> {
    let script = tools::repo_root().join("e2e/zuul/nodepool_static.py");
    let output = Command::new("python3").arg(script).arg("sdist").output()?;
    if !output.status.success() {
        bail!("fetching Nodepool's sdist failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    let answer: Value = serde_json::from_slice(&output.stdout)?;
    Ok(PathBuf::from(answer["fixtures"].as_str().context("fixtures path")?))
}

fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            yaml_files(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "yaml") {
            found.push(path);
        }
    }
    Ok(())
}

/// A fixture as Nodepool's tests load it: `str.format` with the test's values (`{{` is `{`).
/// A fixture with a placeholder the tests do not fill is one they read as it is.
fn as_nodepool_tests_load(text: &str) -> String {
    let values: BTreeMap<&str, &str> = [
        ("images_dir", "/var/lib/nodepool/images"),
        ("build_log_dir", "/var/log/nodepool/builds"),
        ("zookeeper_host", "zk.example.org"),
        ("zookeeper_port", "2281"),
        ("zookeeper_chroot", "/nodepool"),
        ("zookeeper_ca", "/etc/nodepool/ca.pem"),
        ("zookeeper_cert", "/etc/nodepool/client.pem"),
        ("zookeeper_key", "/etc/nodepool/client.key"),
        ("auth_path", "/etc/nodepool/auth"),
        ("context_name", "admin@cluster"),
        ("instance_profile_arn", "arn:aws:iam::123456789012:instance-profile/zuul"),
        ("security_group_id", "sg-0123456789abcdef0"),
        ("subnet_id", "subnet-0123456789abcdef0"),
    ]
    .into();
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if let Some(end) = tail.strip_prefix('{').and_then(|t| t.find('}'))
            && let Some(value) = values.get(&tail[1..=end])
        {
            out.push_str(value);
            rest = &tail[end + 2..];
        } else {
            return text.to_owned();
        }
    }
    out.push_str(rest);
    out
}

fn nodepool(args: &[&str], file: &Path) -> Result<std::process::Output> {
    Ok(Command::new(stack::binary("nodepool")?).args(args).arg(file).env("NODEPOOL_PORT", "8005").output()?)
}

/// JSON equality where `2` and `2.0` are the same number (the apiserver writes a whole float
/// without its fraction).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// The providers a fixture lists, by index.
fn provider_count(text: &str) -> usize {
    serde_yaml_ng::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["providers"].as_array().map(Vec::len))
        .unwrap_or(0)
}

#[tokio::test]
async fn every_nodepool_11_fixture_imports_and_the_apiserver_accepts_what_it_makes() -> Result<()> {
    let env = TestEnv::shared().await?;
    let client = env.kube_client().await?;
    cluster::install_crds(&client).await?;
    let kubeconfig = env.info.kubeconfig.to_str().context("kubeconfig path")?.to_owned();
    let work = env.info.dir.join("import-fixtures");
    std::fs::create_dir_all(&work)?;

    let root = fixtures()?;
    let mut files = Vec::new();
    yaml_files(&root, &mut files)?;
    files.sort();
    assert!(files.len() > 100, "only {} fixtures under {}", files.len(), root.display());

    let mut report = String::from("# nodepool import: Nodepool 11.0.0's fixtures\n\n");
    let (mut applied, mut refused_yaml) = (0, Vec::new());
    for file in &files {
        let name = file.strip_prefix(&root)?.display().to_string();
        let text = as_nodepool_tests_load(&std::fs::read_to_string(file)?);
        let loaded = work.join(name.replace('/', "__"));
        std::fs::write(&loaded, &text)?;

        let output = nodepool(&["import", "-o", "json"], &loaded)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.status.code() {
            Some(0) => {}
            Some(1) if stderr.contains("not valid YAML") && stderr.trim().lines().count() == 1 => {
                refused_yaml.push(name.clone());
                report.push_str(&format!("## {name}\n\nrefused: {}\n\n", stderr.trim()));
                continue;
            }
            status => bail!("{name}: import exited {status:?}:\n{stderr}"),
        }
        let import: Value =
            serde_json::from_slice(&output.stdout).with_context(|| format!("{name}: JSON"))?;
        let items = import["items"].as_array().context("items")?;
        let notes = import["notes"].as_array().context("notes")?;

        // Every provider is carried or has a note of its own.
        for i in 0..provider_count(&text) {
            let path = format!("providers[{i}]");
            let noted = notes.iter().any(|n| n["path"] == path.as_str() && n["kind"] == "not-carried");
            let carried = items.iter().any(|o| {
                o["kind"] == "Provider"
                    && o["metadata"]["annotations"][IMPORTED_FROM]
                        .as_str()
                        .is_some_and(|a| a.starts_with(&format!("{path} ")))
            });
            assert!(!(noted && carried), "{name}: {path} both carried and not: {import:#}");
            assert!(noted || carried, "{name}: {path} neither carried nor noted: {import:#}");
        }

        report.push_str(&format!("## {name}\n\n"));
        let mut kinds = BTreeMap::<&str, usize>::new();
        for item in items {
            *kinds.entry(item["kind"].as_str().unwrap_or("?")).or_default() += 1;
        }
        report.push_str(&format!("carried: {kinds:?}\n\n"));
        for note in notes {
            report.push_str(&format!(
                "- line {}: `{}`: {}: {}\n",
                note["line"],
                note["path"].as_str().unwrap_or(""),
                note["kind"].as_str().unwrap_or(""),
                note["message"].as_str().unwrap_or("")
            ));
        }
        report.push('\n');
        if items.is_empty() {
            continue;
        }

        // Applied to the real apiserver, and read back.
        let namespace = cluster::fresh_namespace(&client, "import").await?;
        let output =
            nodepool(&["--kubeconfig", &kubeconfig, "-n", &namespace, "import", "--apply"], &loaded)?;
        if !output.status.success() {
            bail!("{name}: apply failed:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        for item in items {
            let gvk =
                GroupVersionKind::try_from(&serde_json::from_value::<kube::api::TypeMeta>(item.clone())?)?;
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &namespace, &ApiResource::from_gvk(&gvk));
            let object_name = item["metadata"]["name"].as_str().context("name")?;
            let stored =
                api.get(object_name).await.with_context(|| format!("{name}: {} {object_name}", gvk.kind))?;
            if gvk.kind != "Secret" {
                assert!(
                    same(&stored.data["spec"], &item["spec"]),
                    "{name}: {} {object_name} stored as made:\n{:#}\n{:#}",
                    gvk.kind,
                    stored.data["spec"],
                    item["spec"]
                );
            }
            applied += 1;
        }
    }
    let report_path = work.join("report.md");
    std::fs::write(&report_path, &report)?;
    println!("{} fixtures, {applied} objects applied; report: {}", files.len(), report_path.display());

    assert_eq!(refused_yaml, ["config_validate/yaml_error.yaml"], "only the broken YAML is refused");
    assert!(applied > 300, "{applied} objects applied");
    // Fixtures of each driver we have came through with their providers.
    for (fixture, provider) in [
        ("static.yaml", "static-provider"),
        ("aws/aws.yaml", "ec2-us-west-2"),
        ("gce.yaml", "gcloud-provider"),
        ("kubernetes.yaml", "kubespray"),
        ("openshiftpods.yaml", "openshift"),
    ] {
        assert!(report.contains(&format!("## {fixture}\n")), "{fixture} in the report");
        let loaded = work.join(fixture.replace('/', "__"));
        let import: Value = serde_json::from_slice(&nodepool(&["import", "-o", "json"], &loaded)?.stdout)?;
        let providers: Vec<&str> = import["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| o["kind"] == "Provider")
            .filter_map(|o| o["metadata"]["name"].as_str())
            .collect();
        assert!(providers.contains(&provider), "{fixture}: {providers:?}");
    }
    Ok(())
}
