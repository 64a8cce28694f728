//! The Helm chart: lint, render, reject bad values, install into the real apiserver; then the
//! operator and the bridge run with exactly the RBAC the chart grants (authenticated with their
//! ServiceAccounts' tokens from the TokenRequest API), serve Zuul, and are denied the rest.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Secret, ServiceAccount},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
    config::{AuthInfo, KubeConfigOptions, Kubeconfig},
};
use nodepool_crds::{NodeRequest, PoolNode, Provider};
use nodepool_e2e::{stack::Stack, tools, zuul::Zuul};
use serde_json::{Value, json};

fn chart() -> PathBuf {
    tools::repo_root().join("charts/nodepool-operator")
}

/// Runs helm; its output, or an error with what it printed.
fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Result<String> {
    let mut command = Command::new(tools::helm());
    if let Some(kubeconfig) = kubeconfig {
        command.env("KUBECONFIG", kubeconfig);
    }
    let output =
        command.args(args).output().context("running helm (built by e2e/scripts/install-deps.sh)")?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("helm {args:?} failed:\n{text}");
    }
    Ok(text)
}

#[test]
fn the_bridge_reads_secrets_only_when_kubernetes_nodes_need_it() -> Result<()> {
    let reads_secrets = |objects: &[Value]| {
        objects
            .iter()
            .filter(|o| {
                o["kind"] == "Role" && o["metadata"]["name"].as_str().is_some_and(|n| n.contains("bridge"))
            })
            .any(|role| {
                role["rules"].as_array().into_iter().flatten().any(|rule| {
                    rule["resources"].as_array().into_iter().flatten().any(|r| r == "secrets")
                        && rule["verbs"].as_array().into_iter().flatten().any(|v| v == "get")
                })
            })
    };
    assert!(!reads_secrets(&render(&[])?), "by default the bridge reads no Secret");
    assert!(reads_secrets(&render(&["--set=bridge.readsNodeTokens=true"])?), "readsNodeTokens grants it");
    Ok(())
}

/// The objects `helm template` renders with `args`.
fn render(args: &[&str]) -> Result<Vec<Value>> {
    let chart = chart();
    let mut all = vec!["template", "np", chart.to_str().context("chart path")?, "--namespace", "ci"];
    all.extend_from_slice(args);
    let yaml = helm(&all, None)?;
    let mut objects = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn kinds(objects: &[Value]) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for object in objects {
        *kinds.entry(object["kind"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    kinds
}

#[test]
fn chart_lints_renders_and_rejects_bad_values() -> Result<()> {
    let chart = chart();
    let chart = chart.to_str().context("chart path")?;
    helm(&["lint", "--strict", chart], None)?;
    let all_features = format!("{chart}/ci/all-features-values.yaml");
    helm(&["lint", "--strict", chart, "--values", &all_features], None)?;

    // Defaults: two Deployments, each with its own ServiceAccount, Service, PDB and two Roles (its
    // work in the watched namespace, its Lease in the release namespace), and the dashboards as
    // ConfigMaps; no ServiceMonitor unless asked for.
    let objects = render(&[])?;
    let counts = kinds(&objects);
    for (kind, count) in [
        ("Deployment", 2),
        ("ServiceAccount", 2),
        ("Role", 4),
        ("RoleBinding", 4),
        ("Service", 2),
        ("PodDisruptionBudget", 2),
        ("ConfigMap", 2),
    ] {
        assert_eq!(counts.get(kind), Some(&count), "{kind}: {counts:?}");
    }
    assert!(!counts.contains_key("ServiceMonitor"), "{counts:?}");
    assert!(!counts.contains_key("ClusterRole"), "nothing cluster-wide: {counts:?}");
    for deployment in objects.iter().filter(|o| o["kind"] == "Deployment") {
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let name = container["name"].clone();
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
        let args: Vec<&str> =
            container["args"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        assert!(args.contains(&"--leader-election"), "{name}: {args:?}");
    }
    for dashboards in objects.iter().filter(|o| o["kind"] == "ConfigMap") {
        assert_eq!(dashboards["metadata"]["labels"]["grafana_dashboard"], "1");
    }
    let bridge = objects
        .iter()
        .find(|o| {
            o["kind"] == "Deployment" && o["spec"]["template"]["spec"]["containers"][0]["name"] == "zk-bridge"
        })
        .context("bridge Deployment")?;
    let rendered =
        render(&["--set", "zookeeper.hosts={zk1:2281,zk2:2281}", "--set", "zookeeper.chroot=/zuul"])?;
    let bridge_args = |objects: &[Value]| -> Vec<String> {
        objects
            .iter()
            .filter(|o| o["kind"] == "Deployment")
            .flat_map(|o| {
                o["spec"]["template"]["spec"]["containers"][0]["args"].as_array().cloned().unwrap_or_default()
            })
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    };
    assert!(bridge_args(&rendered).contains(&"--zookeeper-hosts=zk1:2281,zk2:2281/zuul".to_owned()));
    assert!(bridge["spec"]["template"]["spec"]["volumes"].to_string().contains("zookeeper-client-tls"));

    // With every option on: a ServiceMonitor for both components.
    let counts = kinds(&render(&["--values", &all_features])?);
    assert_eq!(counts.get("ServiceMonitor"), Some(&1), "{counts:?}");

    // values.schema.json rejects bad values before anything is rendered.
    for bad in [
        "logFormat=xml",
        "operator.replicas=0",
        "zookeeper.hosts={zk1}",
        "zookeeper.chroot=zuul",
        "image.pullPolicy=Sometimes",
        "operator.replica=2",
        "podDisruptionBudget.maxUnavailable=0",
    ] {
        let error = render(&["--set", bad]).err().with_context(|| format!("--set {bad} was accepted"))?;
        assert!(error.to_string().contains("schema"), "--set {bad}: {error:#}");
    }
    Ok(())
}

#[test]
fn the_chart_ships_the_generated_crds() -> Result<()> {
    let generated = tools::repo_root().join("crds/generated");
    let shipped = chart().join("crds");
    let names = |dir: &Path| -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        names.sort();
        Ok(names)
    };
    assert_eq!(names(&generated)?, names(&shipped)?, "run `make crds`");
    for name in names(&generated)? {
        let (a, b) = (std::fs::read(generated.join(&name))?, std::fs::read(shipped.join(&name))?);
        assert!(a == b, "charts/nodepool-operator/crds/{name} differs from crds/generated: run `make crds`");
    }
    Ok(())
}

/// A kubeconfig like the administrator's, authenticated with a ServiceAccount token instead.
async fn service_account_kubeconfig(stack: &Stack, account: &str) -> Result<(PathBuf, kube::Client)> {
    let accounts: Api<ServiceAccount> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
        ..Default::default()
    };
    let token = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for {account}"))?
        .status
        .context("token status")?
        .token
        .context("no token issued")?;
    let mut kubeconfig = Kubeconfig::read_from(&stack.env.info.kubeconfig)?;
    for named in &mut kubeconfig.auth_infos {
        named.auth_info = Some(AuthInfo { token: Some(token.clone().into()), ..Default::default() });
    }
    let path = stack.dir.join(format!("{account}.kubeconfig"));
    std::fs::write(&path, serde_yaml_ng::to_string(&kubeconfig)?)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok((path, kube::Client::try_from(config)?))
}

/// Asserts the apiserver refuses `call` with 403 Forbidden.
async fn forbidden<T: std::fmt::Debug>(what: &str, call: impl Future<Output = kube::Result<T>>) {
    match call.await {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn installed_chart_grants_exactly_what_operator_and_bridge_need() -> Result<()> {
    let mut stack = Stack::prepare("helm-rbac").await?;
    let namespace = stack.namespace.clone();
    let chart = chart();
    let zookeeper_host = format!("--set=zookeeper.hosts={{{}}}", stack.env.info.zookeeper.hosts);
    helm(
        &[
            "install",
            "np",
            chart.to_str().context("chart path")?,
            "--namespace",
            &namespace,
            &zookeeper_host,
            "--set=operator.replicas=2",
            "--wait=false",
        ],
        Some(&stack.env.info.kubeconfig),
    )?;

    // The chart's ServiceAccounts, found by component.
    let accounts: Api<ServiceAccount> = Api::namespaced(stack.client.clone(), &namespace);
    let account = |component: &'static str| {
        let accounts = accounts.clone();
        async move {
            let list = accounts
                .list(&ListParams::default().labels(&format!("app.kubernetes.io/component={component}")))
                .await?;
            list.items
                .first()
                .and_then(|a| a.metadata.name.clone())
                .with_context(|| format!("{component} ServiceAccount"))
        }
    };
    let (operator_kubeconfig, operator) =
        service_account_kubeconfig(&stack, &account("operator").await?).await?;
    let (bridge_kubeconfig, bridge) =
        service_account_kubeconfig(&stack, &account("zk-bridge").await?).await?;

    // Both binaries, as the chart runs them: leader election on, with the chart's RBAC only.
    let (operator_http, bridge_http) = (stack.operator_http.to_string(), stack.bridge_http.to_string());
    let operator_path = operator_kubeconfig.to_str().context("path")?;
    let bridge_path = bridge_kubeconfig.to_str().context("path")?;
    stack.operator = Some(stack.spawn_operator(
        "operator",
        &[
            ("KUBECONFIG", operator_path),
            ("NODEPOOL_HTTP_ADDRESS", &operator_http),
            ("NODEPOOL_LEADER_ELECTION", "true"),
            ("POD_NAME", "operator-0"),
        ],
    )?);
    stack.bridge = Some(stack.spawn_bridge(
        "bridge",
        &[
            ("KUBECONFIG", bridge_path),
            ("NODEPOOL_HTTP_ADDRESS", &bridge_http),
            ("NODEPOOL_LEADER_ELECTION", "true"),
            ("POD_NAME", "bridge-0"),
        ],
    )?);

    // They do their job: static nodes registered, a Zuul request served, the nodes recycled.
    stack.apply_provider(stack.static_provider("lab", 1)).await?;
    stack.wait_for_ready_nodes(2, Duration::from_secs(60)).await?;
    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["static-label"]).await?;
    let outcome = zuul.wait(&request, 60).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    zuul.run_build(&request).await?;
    // An unknown label is declined, and the operator records an Event saying why (events.k8s.io).
    let unknown = zuul.request(&["no-such-label"]).await?;
    assert_eq!(zuul.wait(&unknown, 60).await?["state"], "failed");
    stack.wait_for_ready_nodes(2, Duration::from_secs(60)).await?;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(stack.client.clone(), &namespace);
    let published = nodepool_e2e::wait::until("the operator's Events", Duration::from_secs(30), async || {
        let list = events.list(&ListParams::default()).await?;
        let ours: Vec<_> = list
            .items
            .into_iter()
            .filter(|e| e.reporting_controller.as_deref() == Some("nodepool-operator"))
            .collect();
        Ok((!ours.is_empty()).then_some(ours))
    })
    .await?;
    assert!(published.iter().any(|e| e.reason.as_deref() == Some("Declined")), "{published:?}");
    for log in ["operator.log", "bridge.log"] {
        let text = std::fs::read_to_string(stack.logs().join(log))?;
        assert!(!text.contains("forbidden"), "{log} shows a permission the chart does not grant:\n{text}");
    }

    // A cloud Provider gets the operator's cleanup finalizer, and deleting it goes through it.
    let providers: Api<Provider> = Api::namespaced(stack.client.clone(), &namespace);
    stack.apply_provider(stack.simulated_provider("sim", json!({}))).await?;
    nodepool_e2e::wait::until(
        "the cleanup finalizer on a cloud Provider",
        Duration::from_secs(30),
        async || {
            let sim = providers.get("sim").await?;
            Ok(sim
                .metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == "nodepool.dev/cloud-instances")
                .then_some(()))
        },
    )
    .await?;
    providers.delete("sim", &DeleteParams::default()).await?;
    nodepool_e2e::wait::until("the cloud Provider deleted", Duration::from_secs(30), async || {
        Ok(providers.get_opt("sim").await?.is_none().then_some(()))
    })
    .await?;

    // ...and are refused what they must not do.
    let in_namespace =
        |client: &kube::Client| -> (Api<Secret>, Api<Provider>, Api<PoolNode>, Api<NodeRequest>) {
            let c = client.clone();
            (
                Api::namespaced(c.clone(), &namespace),
                Api::namespaced(c.clone(), &namespace),
                Api::namespaced(c.clone(), &namespace),
                Api::namespaced(c, &namespace),
            )
        };
    let (secrets, providers, nodes, requests) = in_namespace(&operator);
    forbidden("operator lists Secrets", secrets.list(&ListParams::default())).await;
    forbidden("operator deletes a Provider", providers.delete("lab", &DeleteParams::default())).await;
    let forged: Provider = serde_json::from_value(json!({
        "apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": "forged"},
        "spec": {"driver": "static", "pools": [{"name": "main", "hosts": [{"name": "h", "labels": ["l"]}]}]}}))?;
    forbidden("operator creates a Provider", providers.create(&PostParams::default(), &forged)).await;
    forbidden("operator deletes a NodeRequest", requests.delete("anything", &DeleteParams::default())).await;
    forbidden(
        "operator reads another namespace",
        Api::<PoolNode>::namespaced(operator.clone(), "default").list(&ListParams::default()),
    )
    .await;
    forbidden(
        "operator reads Secrets cluster-wide",
        Api::<Secret>::all(operator.clone()).list(&ListParams::default()),
    )
    .await;
    let _ = nodes;

    let (secrets, providers, nodes, _) = in_namespace(&bridge);
    forbidden("bridge reads a Secret", secrets.get("zookeeper-client-tls")).await;
    forbidden("bridge deletes a PoolNode", nodes.delete("anything", &DeleteParams::default())).await;
    forbidden(
        "bridge creates a PoolNode",
        nodes.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
        "apiVersion": "nodepool.dev/v1alpha1", "kind": "PoolNode", "metadata": {"name": "forged"},
        "spec": {"provider": "lab", "pool": "main", "labels": ["static-label"]}}))?,
        ),
    )
    .await;
    forbidden("bridge deletes a Provider", providers.delete("lab", &DeleteParams::default())).await;

    // Leadership is held through the chart's Lease permissions.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(stack.client.clone(), &namespace);
    for (lease, holder) in [
        (format!("nodepool-operator-{namespace}"), "operator-0"),
        (format!("nodepool-zk-bridge-{namespace}"), "bridge-0"),
    ] {
        let lease = leases.get(&lease).await.with_context(|| format!("Lease {lease}"))?;
        assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some(holder));
    }
    Ok(())
}
