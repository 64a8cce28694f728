//! Reaching the cluster as `kubectl` does: kubeconfig, context and namespace flags.

use anyhow::{Context, Result};
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::de::DeserializeOwned;

use crate::Cli;

/// A client and the namespace the command works in (`None`: every namespace).
pub struct Cluster {
    pub client: Client,
    pub namespace: Option<String>,
}

impl Cluster {
    pub async fn connect(cli: &Cli) -> Result<Cluster> {
        let options = KubeConfigOptions { context: cli.context.clone(), ..Default::default() };
        let config = match &cli.kubeconfig {
            Some(path) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            None if cli.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
            None => kube::Config::infer().await.context("no kubeconfig and no in-cluster account")?,
        };
        let namespace = match (cli.all_namespaces, &cli.namespace) {
            (true, _) => None,
            (false, Some(namespace)) => Some(namespace.clone()),
            (false, None) => Some(config.default_namespace.clone()),
        };
        let client = Client::try_from(config).context("building the Kubernetes client")?;
        Ok(Cluster { client, namespace })
    }

    /// The API of a namespaced kind, in the chosen namespace or all of them.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }
}
