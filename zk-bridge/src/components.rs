//! Pool components: one ephemeral-sequential znode per (Provider, pool), so Zuul lists our labels
//! and Nodepool launchers sharing the ZooKeeper count our pools when declining (§2.3).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use nodepool_crds::{Provider, provider::Pool};
use zookeeper_client::{Acls, Client, CreateMode};

use crate::zk::{model::PoolComponent, paths};

/// A pool we registered, keyed by `provider/pool`.
#[derive(Clone, Debug)]
pub struct RegisteredPool {
    pub path: String,
    pub component: PoolComponent,
    pub version: i32,
}

/// Our registrations in this session.
#[derive(Debug, Default)]
pub struct Registry {
    pools: BTreeMap<String, RegisteredPool>,
}

/// The labels a pool serves: those its spec launches, and those the operator lists in the pool's
/// status (a static pool's labels come from its hosts, which only the operator's drivers read).
pub fn supported_labels(provider: &Provider, pool: &Pool) -> Vec<String> {
    let launched = pool.labels.iter().map(|label| label.name.clone());
    let pool_status = provider.status.as_ref().and_then(|s| s.pools.iter().find(|p| p.name == pool.name));
    let served = pool_status.into_iter().flat_map(|p| p.labels.iter().map(|label| label.name.clone()));
    let mut labels: Vec<String> = launched.chain(served).collect();
    labels.sort();
    labels.dedup();
    labels
}

pub fn pool_key(provider: &str, pool: &str) -> String {
    format!("{provider}/{pool}")
}

impl Registry {
    /// The component id of our pool `provider/pool`, if registered.
    pub fn id_of(&self, key: &str) -> Option<&str> {
        self.pools.get(key).map(|pool| pool.component.id.as_str())
    }

    /// Every component id we registered.
    pub fn ids(&self) -> Vec<String> {
        self.pools.values().map(|pool| pool.component.id.clone()).collect()
    }

    /// Brings our registrations in line with the Providers: registers new pools, updates changed
    /// ones in place (version-checked), and removes pools that are gone.
    pub async fn sync(&mut self, zk: &Client, hostname: &str, providers: &[Provider]) -> Result<()> {
        let mut wanted = BTreeMap::new();
        // A Provider being deleted serves no more requests: its pools leave the registry.
        for provider in providers.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            let Some(provider_name) = provider.metadata.name.as_deref() else { continue };
            for pool in &provider.spec.pools {
                let priority = pool.priority.or(provider.spec.priority).unwrap_or(100);
                // Paused as Nodepool's pool workers are: by the operator (the provider is
                // paused) or because the cloud refused a launch for quota (the pool's status).
                let paused = provider.spec.paused
                    || provider
                        .status
                        .as_ref()
                        .is_some_and(|s| s.pools.iter().any(|p| p.name == pool.name && p.paused));
                wanted.insert(
                    pool_key(provider_name, &pool.name),
                    (
                        provider_name.to_owned(),
                        pool.name.clone(),
                        supported_labels(provider, pool),
                        priority,
                        paused,
                    ),
                );
            }
        }
        let stale: Vec<String> =
            self.pools.keys().filter(|key| !wanted.contains_key(*key)).cloned().collect();
        for key in stale {
            if let Some(pool) = self.pools.remove(&key) {
                tracing::info!(pool = %key, id = %pool.component.id, "unregistering pool component");
                match zk.delete(&pool.path, None).await {
                    Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                    Err(error) => return Err(error).with_context(|| format!("deleting {}", pool.path)),
                }
            }
        }
        for (key, (provider_name, pool_name, labels, priority, paused)) in wanted {
            match self.pools.get_mut(&key) {
                Some(existing) => {
                    let component = &mut existing.component;
                    if component.supported_labels == labels
                        && component.priority == priority
                        && component.paused == paused
                    {
                        continue;
                    }
                    component.supported_labels = labels;
                    component.priority = priority;
                    component.paused = paused;
                    let data = serde_json::to_vec(component)?;
                    let stat = zk
                        .set_data(&existing.path, &data, Some(existing.version))
                        .await
                        .with_context(|| format!("updating {}", existing.path))?;
                    existing.version = stat.version;
                }
                None => {
                    let component = PoolComponent {
                        hostname: hostname.to_owned(),
                        id: format!(
                            "{hostname}-PoolWorker.{provider_name}-{}-{}",
                            pool_name,
                            uuid::Uuid::new_v4().simple()
                        ),
                        kind: "pool".into(),
                        model_api: 0,
                        name: pool_name,
                        paused,
                        priority,
                        provider_name,
                        state: "running".into(),
                        supported_labels: labels,
                        version: concat!("nodepool-operator ", env!("CARGO_PKG_VERSION")).into(),
                    };
                    let options = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
                    let prefix = format!("{}/{hostname}", paths::POOL_COMPONENTS);
                    let data = serde_json::to_vec(&component)?;
                    let (stat, sequence) =
                        zk.create(&prefix, &data, &options).await.context("registering a pool component")?;
                    tracing::info!(pool = %key, id = %component.id, "registered pool component");
                    let path = format!("{prefix}{sequence}");
                    self.pools.insert(key, RegisteredPool { path, component, version: stat.version });
                }
            }
        }
        Ok(())
    }
}

/// What the bridge reads of any launcher's pool component: lenient, so a launcher writing
/// fewer (or more) fields still counts.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Component {
    pub id: String,
    #[serde(default)]
    pub provider_name: String,
    #[serde(default)]
    pub supported_labels: Vec<String>,
    #[serde(default = "default_priority")]
    pub priority: i32,
    #[serde(default)]
    pub paused: bool,
}

fn default_priority() -> i32 {
    100
}

/// Every pool component registered in ZooKeeper, ours and other launchers'. Those without an
/// id are left out.
pub async fn registered(zk: &Client) -> Result<Vec<Component>> {
    let mut components = Vec::new();
    for child in zk.list_children(paths::POOL_COMPONENTS).await? {
        let path = format!("{}/{child}", paths::POOL_COMPONENTS);
        match zk.get_data(&path).await {
            Ok((data, _)) => {
                if let Ok(component) = serde_json::from_slice::<Component>(&data) {
                    components.push(component);
                }
            }
            Err(zookeeper_client::Error::NoNode) => {}
            Err(error) => return Err(error).with_context(|| format!("reading {path}")),
        }
    }
    Ok(components)
}

/// The ids of every registered pool component.
pub async fn all_registered_ids(zk: &Client) -> Result<Vec<String>> {
    Ok(registered(zk).await?.into_iter().map(|c| c.id).collect())
}
