//! The cloud behind each Provider: built from the provider's spec and its credentials Secret,
//! rebuilt when either changes, and wrapped in the provider's API rate limit. Also keeps what
//! the operator knows of each cloud between reconciles: paused pools and leak suspects.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use nodepool_crds::{
    Provider,
    pool_node::NodeResources,
    provider::{PoolRef, ResourceLimits, ResourceUsage},
};
use nodepool_driver::{Build, Cloud, Throttled, leaks::ResourceRef};

pub use nodepool_driver::CloudUnavailable;

struct Built {
    /// Provider generation and Secret resourceVersion the cloud was built from.
    fingerprint: String,
    cloud: Arc<dyn Cloud>,
}

/// Why a pool launches nothing new for now.
#[derive(Clone, Debug)]
pub struct Pause {
    pub reason: String,
    pub since: Instant,
}

/// How long a pool stays paused at most when no node of its provider goes away.
pub const PAUSE_RETRY: Duration = Duration::from_secs(30);

/// Resources seen leaked on the last pass.
type LeakSuspects = BTreeSet<ResourceRef>;

/// Cloud answers that rarely change (the cloud's quota, what a label's flavor costs), kept
/// per provider generation for [`ANSWER_TTL`]. A provider reconciles on every change of its
/// nodes; without this each reconcile would cost API calls, and tokens of the provider's rate
/// limit that launches and deletions need.
pub struct Answers<K, V>(Mutex<HashMap<K, Answer<V>>>);

/// An answer, when it was read and for which provider generation.
type Answer<V> = (Instant, Option<i64>, V);

impl<K, V> Default for Answers<K, V> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> Answers<K, V> {
    /// The answer read for this provider generation less than [`ANSWER_TTL`] ago, if any.
    pub fn get(&self, key: &K, generation: Option<i64>) -> Option<V> {
        let answers = self.0.lock().expect("answers lock");
        answers
            .get(key)
            .filter(|(at, seen, _)| *seen == generation && at.elapsed() < ANSWER_TTL)
            .map(|(_, _, value)| value.clone())
    }

    pub fn store(&self, key: K, generation: Option<i64>, value: V) {
        self.0.lock().expect("answers lock").insert(key, (Instant::now(), generation, value));
    }

    /// Drops the answers whose key matches.
    pub fn forget(&self, matches: impl Fn(&K) -> bool) {
        self.0.lock().expect("answers lock").retain(|key, _| !matches(key));
    }
}

#[derive(Default)]
pub struct Clouds {
    /// Where every cloud call is counted (none in unit tests).
    api_metrics: Option<nodepool_driver::CloudApiMetrics>,
    built: Mutex<HashMap<String, Built>>,
    pauses: Mutex<HashMap<PoolRef, Pause>>,
    leak_suspects: Mutex<HashMap<String, (Instant, LeakSuspects)>>,
    /// The cloud's quota per provider.
    pub quotas: Answers<String, ResourceLimits>,
    /// What the account's resources no provider here owns hold of its quota, per provider.
    pub unmanaged: Answers<String, ResourceUsage>,
    /// What a node of each (provider, pool, label) costs.
    pub label_resources: Answers<(String, String, String), NodeResources>,
}

/// How long a cloud's answer about its quota or a flavor is reused before it is asked again.
pub const ANSWER_TTL: Duration = Duration::from_secs(30);

impl Clouds {
    pub fn new(api_metrics: nodepool_driver::CloudApiMetrics) -> Self {
        Self { api_metrics: Some(api_metrics), ..Default::default() }
    }

    /// The provider's cloud; `Ok(None)` when its driver launches nothing (static hosts).
    pub async fn get(
        &self,
        client: &kube::Client,
        system_id: &str,
        provider: &Provider,
    ) -> Result<Option<Arc<dyn Cloud>>, CloudUnavailable> {
        let driver = nodepool_drivers::of(provider)?;
        if !driver.supply().launches() {
            return Ok(None);
        }
        let namespace = provider.namespace().unwrap_or_default();
        let credentials = match &provider.spec.credentials_secret_ref {
            Some(reference) => {
                let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
                let secret = secrets
                    .get_opt(&reference.name)
                    .await?
                    .ok_or_else(|| CloudUnavailable::SecretMissing(reference.name.clone()))?;
                Some(secret)
            }
            None => None,
        };
        let fingerprint = format!(
            "{}/{}",
            provider.metadata.generation.unwrap_or_default(),
            credentials.as_ref().and_then(|s| s.resource_version()).unwrap_or_default()
        );
        let key = provider.name_any();
        if let Some(built) = self.built.lock().expect("clouds lock").get(&key)
            && built.fingerprint == fingerprint
        {
            return Ok(Some(built.cloud.clone()));
        }
        let build = Build { provider, namespace: &namespace, system_id, credentials: credentials.as_ref() };
        let inner = driver.cloud(build).await?;
        let mut throttled = Throttled::new(inner, provider.spec.rate_limit.as_ref());
        if let Some(metrics) = &self.api_metrics {
            throttled = throttled.with_metrics(&key, metrics.clone());
        }
        let cloud: Arc<dyn Cloud> = Arc::new(throttled);
        tracing::info!(provider = %key, driver = provider.spec.driver.as_str(), "cloud client built");
        self.built.lock().expect("clouds lock").insert(key, Built { fingerprint, cloud: cloud.clone() });
        Ok(Some(cloud))
    }

    /// Pauses a pool after the cloud refused a launch for quota or capacity.
    pub fn pause(&self, provider: &str, pool: &str, reason: String) {
        let key = PoolRef::new(provider, pool);
        let mut pauses = self.pauses.lock().expect("pauses lock");
        if !pauses.contains_key(&key) {
            tracing::warn!(%provider, %pool, %reason, "pausing pool");
        }
        pauses.insert(key, Pause { reason, since: Instant::now() });
    }

    /// Drops everything kept for a provider that is gone.
    pub fn forget(&self, provider: &str) {
        self.built.lock().expect("clouds lock").remove(provider);
        self.pauses.lock().expect("pauses lock").retain(|key, _| key.provider != provider);
        self.leak_suspects.lock().expect("leak suspects lock").remove(provider);
        self.quotas.forget(|name| name == provider);
        self.unmanaged.forget(|name| name == provider);
        self.label_resources.forget(|(name, _, _)| name == provider);
    }

    /// Resumes every pool of a provider (a node went away, so quota freed up).
    pub fn resume(&self, provider: &str) {
        self.pauses.lock().expect("pauses lock").retain(|key, _| {
            let keep = key.provider != provider;
            if !keep {
                tracing::info!(%provider, pool = %key.pool, "resuming pool");
            }
            keep
        });
    }

    /// Why the pool is paused, if it is (pauses end by themselves after [`PAUSE_RETRY`]).
    pub fn paused(&self, provider: &str, pool: &str) -> Option<Pause> {
        let mut pauses = self.pauses.lock().expect("pauses lock");
        let key = PoolRef::new(provider, pool);
        match pauses.get(&key) {
            Some(pause) if pause.since.elapsed() >= PAUSE_RETRY => {
                pauses.remove(&key);
                None
            }
            other => other.cloned(),
        }
    }

    /// The provider's leak suspects from its last pass, if that pass is at least `interval` old
    /// (otherwise `None`: no pass is due).
    pub fn leak_pass_due(&self, provider: &str, interval: Duration) -> Option<LeakSuspects> {
        let suspects = self.leak_suspects.lock().expect("leak lock");
        match suspects.get(provider) {
            Some((at, _)) if at.elapsed() < interval => None,
            Some((_, suspects)) => Some(suspects.clone()),
            None => Some(BTreeSet::new()),
        }
    }

    pub fn record_leak_pass(&self, provider: &str, suspects: LeakSuspects) {
        self.leak_suspects.lock().expect("leak lock").insert(provider.to_owned(), (Instant::now(), suspects));
    }
}
