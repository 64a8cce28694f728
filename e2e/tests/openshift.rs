//! The OpenShift driver against OpenShift's project API as served by `e2e/openshift/
//! openshift_api.py` in front of the test environment's real kube-apiserver and
//! kube-controller-manager (no OpenShift runs here; see that file for what it serves). The
//! provider's account is a service account that may request projects and nothing else, as a
//! self-provisioner: everything in a project it gets as that project's admin. Zuul's own client
//! gets a project node whose credentials work in the project and nowhere else, a second request
//! waits while the pool's `maxServers` (Nodepool's `max-projects`) is reached, the project goes after use,
//! and a project whose node is gone is cleaned up.

use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Secret, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use nodepool_crds::PoolNode;
use nodepool_e2e::{cluster, openshift::OpenShiftApi, stack::Stack, wait::until, zuul::Zuul};
use serde_json::json;

const WAIT: u64 = 90;

async fn wait_until<T>(what: &str, check: impl AsyncFnMut() -> Result<Option<T>>) -> Result<T> {
    until(what, Duration::from_secs(WAIT), check).await
}

/// A service account `self-provisioner` in the stack's namespace that may request projects (and
/// see the projects it is admin of), nothing else; its token and the cluster's CA.
async fn self_provisioner(stack: &Stack) -> Result<(String, Vec<u8>)> {
    let create = PostParams::default();
    let name = format!("{}-self-provisioner", stack.namespace);
    let accounts: Api<ServiceAccount> = Api::namespaced(stack.client.clone(), &stack.namespace);
    accounts
        .create(&create, &serde_json::from_value(json!({"metadata": {"name": "self-provisioner"}}))?)
        .await?;
    let roles: Api<ClusterRole> = Api::all(stack.client.clone());
    let role = json!({"metadata": {"name": name}, "rules": [
        {"apiGroups": ["project.openshift.io"], "resources": ["projectrequests"], "verbs": ["create", "list"]},
        {"apiGroups": ["project.openshift.io"], "resources": ["projects"], "verbs": ["list"]},
    ]});
    roles.create(&create, &serde_json::from_value(role)?).await?;
    let bindings: Api<ClusterRoleBinding> = Api::all(stack.client.clone());
    let binding = json!({"metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "self-provisioner", "namespace": stack.namespace}]});
    bindings.create(&create, &serde_json::from_value(binding)?).await?;
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let secret = json!({"metadata": {"name": "self-provisioner-token",
        "annotations": {"kubernetes.io/service-account.name": "self-provisioner"}},
        "type": "kubernetes.io/service-account-token"});
    secrets.create(&create, &serde_json::from_value(secret)?).await?;
    wait_until("the self-provisioner's token", async || {
        let data = secrets.get("self-provisioner-token").await?.data.unwrap_or_default();
        Ok(match (data.get("token"), data.get("ca.crt")) {
            (Some(token), Some(ca)) => Some((String::from_utf8(token.0.clone())?, ca.0.clone())),
            _ => None,
        })
    })
    .await
}

#[tokio::test]
async fn zuul_gets_a_project_it_administers_alone_and_it_goes_after_use() -> Result<()> {
    let stack = Stack::start("openshift").await?;
    let openshift = OpenShiftApi::start(&stack)?;
    let (token, ca) = self_provisioner(&stack).await?;
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let kubeconfig = cluster::token_kubeconfig(&openshift.url, &token, &ca)?;
    let secret = json!({"metadata": {"name": "openshift"}, "stringData": {"kubeconfig": kubeconfig}});
    secrets.create(&PostParams::default(), &serde_json::from_value(secret)?).await?;
    stack
        .apply_provider(json!({
            "apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": "oc"},
            "spec": {
                "driver": "openshift",
                "credentialsSecretRef": {"name": "openshift"},
                "launchRetries": 1, "bootTimeout": "60s",
                "openshift": {},
                "pools": [{"name": "main", "maxServers": 1, "labels": [
                    {"name": "oc-project", "openshift": {"type": "project", "cpu": 1, "memory": 512}},
                ]}],
            },
        }))
        .await?;
    stack.launchable("oc").await?;

    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["oc-project"]).await?;
    let outcome = zuul.wait(&request, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    // One project at most: a second request waits for the first to be given back.
    let second = zuul.request(&["oc-project"]).await?;
    let accepted = zuul.call("accept", json!({"request_id": request})).await?;
    let node = accepted["nodes"][0].clone();
    assert_eq!(node["connection_type"], "project", "{node}");
    assert_eq!(node["python_path"], "auto", "{node}");
    let credentials = &node["connection_port"];
    let project = credentials["namespace"].as_str().context("namespace")?.to_owned();
    assert_eq!(credentials["name"], project.as_str());
    assert_eq!(credentials["user"], "zuul-worker");
    assert_eq!(credentials["host"], openshift.url.as_str(), "{credentials}");
    assert_eq!(credentials["skiptls"], false);
    let zuul_token = credentials["token"].as_str().context("token")?.to_owned();
    assert_ne!(zuul_token, token, "Zuul gets the project's own account, not the provider's");
    let zuul_ca =
        base64::engine::general_purpose::STANDARD.decode(credentials["ca_crt"].as_str().context("ca")?)?;

    // The project was requested by the provider's account, which OpenShift made its admin.
    let namespace = Api::<Namespace>::all(stack.client.clone()).get(&project).await?;
    let requester = namespace.metadata.annotations.unwrap_or_default()["openshift.io/requester"].clone();
    assert_eq!(requester, format!("system:serviceaccount:{}:self-provisioner", stack.namespace));
    assert!(stack.nodes().await?.len() == 1, "maxServers 1: the second request has no node yet");

    // Zuul's credentials, through the same API server: allowed in the project, refused
    // anywhere else; Zuul may read its project through OpenShift's project API.
    let as_zuul = cluster::client_with_token(&openshift.url, &zuul_token, &zuul_ca)?;
    let config_map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "from-the-job"}}))?;
    Api::<ConfigMap>::namespaced(as_zuul.clone(), &project)
        .create(&PostParams::default(), &config_map)
        .await?;
    let elsewhere = Api::<ConfigMap>::namespaced(as_zuul.clone(), &stack.namespace)
        .create(&PostParams::default(), &config_map)
        .await;
    assert!(matches!(elsewhere, Err(kube::Error::Api(ref e)) if e.code == 403), "{elsewhere:?}");
    let projects = kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("project.openshift.io", "v1", "Project"),
        "projects",
    );
    let seen = Api::<kube::core::DynamicObject>::all_with(as_zuul.clone(), &projects).get(&project).await?;
    assert_eq!(seen.data["status"]["phase"], "Active", "{seen:?}");

    // After use the project goes, and the waiting request gets a project of its own.
    let build = accepted["build"].clone();
    zuul.call("use", json!({"build": build})).await?;
    zuul.call("return", json!({"build": build})).await?;
    let namespaces: Api<Namespace> = Api::all(stack.client.clone());
    wait_until("the used project deleted", async || {
        let gone =
            namespaces.get_opt(&project).await?.is_none_or(|n| n.metadata.deletion_timestamp.is_some());
        Ok(gone.then_some(()))
    })
    .await?;
    let outcome = zuul.wait(&second, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");

    // A project whose node is gone (its PoolNode removed behind the operator's back) is a leak,
    // found by the record in it, and deleted.
    let nodes: Api<PoolNode> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let node = stack.nodes().await?.into_iter().next().context("the second request's node")?;
    let leaked = node.status.as_ref().and_then(|s| s.external_id.clone()).context("its project")?;
    let name = node.metadata.name.clone().context("node name")?;
    nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"finalizers": null}})))
        .await?;
    nodes.delete(&name, &DeleteParams::default()).await?;
    wait_until("the leaked project deleted", async || {
        let gone = namespaces.get_opt(&leaked).await?.is_none_or(|n| n.metadata.deletion_timestamp.is_some());
        Ok(gone.then_some(()))
    })
    .await?;
    Ok(())
}
