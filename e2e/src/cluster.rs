//! Helpers for tests running against the environment's apiserver.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::{
    api::core::v1::Namespace, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::wait::{await_condition, conditions},
};

/// Field manager used by the test harness.
pub const FIELD_MANAGER: &str = "nodepool-e2e";

/// Applies every nodepool.dev CRD (server-side apply) and waits until each is Established.
pub async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in nodepool_drivers::crds() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .with_context(|| format!("CRD {name} not Established within 30s"))??;
    }
    Ok(())
}

/// Creates a namespace with a unique name starting with `prefix`, so tests do not collide.
pub async fn fresh_namespace(client: &Client, prefix: &str) -> Result<String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.generate_name = Some(format!("{prefix}-"));
    let created =
        api.create(&PostParams::default(), &namespace).await.context("creating a test namespace")?;
    created.metadata.name.context("created namespace has no name")
}

/// A kubeconfig's `certificate-authority`, `client-certificate` and `client-key` files inlined
/// as `*-data`, as a user would put the kubeconfig in a Secret.
pub fn inline_kubeconfig_files(text: &str) -> String {
    use base64::Engine;
    let mut out = String::new();
    for line in text.lines() {
        let inlined = ["certificate-authority", "client-certificate", "client-key"].iter().find_map(|key| {
            let path = line.trim_start().strip_prefix(&format!("{key}: "))?;
            let indent = &line[..line.len() - line.trim_start().len()];
            let data = std::fs::read(path).ok()?;
            Some(format!("{indent}{key}-data: {}", base64::engine::general_purpose::STANDARD.encode(data)))
        });
        out.push_str(&inlined.unwrap_or_else(|| line.to_owned()));
        out.push('\n');
    }
    out
}

/// A kubeconfig that reaches `server` as the bearer of `token`, trusting the PEM `ca` (as a user
/// would put it in a provider's credentials Secret).
pub fn token_kubeconfig(server: &str, token: &str, ca: &[u8]) -> Result<String> {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    Ok(serde_yaml_ng::to_string(&serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": engine.encode(ca)}}],
        "users": [{"name": "launcher", "user": {"token": token}}],
        "contexts": [{"name": "launcher", "context": {"cluster": "c", "user": "launcher"}}],
        "current-context": "launcher",
    }))?)
}

/// A client acting as the bearer of `token` against `server`, trusting the PEM `ca`: what Zuul
/// builds from the credentials a Kubernetes-type node hands it.
pub fn client_with_token(server: &str, token: &str, ca: &[u8]) -> Result<Client> {
    let mut config = kube::Config::new(server.parse()?);
    config.auth_info.token = Some(token.to_owned().into());
    config.root_cert = Some(vec![first_certificate_der(ca)?]);
    Ok(Client::try_from(config)?)
}

/// DER of the first certificate in a PEM bundle.
pub fn first_certificate_der(pem: &[u8]) -> Result<Vec<u8>> {
    use base64::Engine;
    let text = std::str::from_utf8(pem)?;
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}
