//! The simulated cloud: instances live in this process's memory and behave as the provider's
//! `spec.simulated` says — launch latency, a share of instances that fail to boot, the cloud's
//! own quota and a capacity limit. It goes through exactly the same state machines as the real
//! drivers, which is what makes it useful for benchmarks and fault tests.
//!
//! Instances are kept per provider in a process-wide registry, so rebuilding the driver after
//! a spec change keeps them; an operator restart loses them (they "vanish", which the
//! lifecycle handles like any instance that disappeared).

use std::{
    collections::{BTreeMap, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use kube::ResourceExt;
use nodepool_crds::{
    ImageSpec,
    driver_blocks::{Block, DriverShape},
    pool_node::NodeResources,
    provider::{Pool, PoolLabel, ResourceLimits},
};
use nodepool_driver::{
    Build, Cloud, CloudError, CloudUnavailable, Driver, Instance, InstanceSpec, InstanceState, Supply,
    cloud::CloudResult,
};

pub mod settings;
pub use settings::{SimulatedImage, SimulatedProvider};

/// The block of every simulated setting: `spec.simulated` of a Provider and of an Image.
pub const BLOCK: &str = "simulated";

/// The simulated driver's descriptor.
pub struct Simulated;

#[async_trait]
impl Driver for Simulated {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn shape(&self) -> DriverShape {
        DriverShape {
            name: self.name(),
            needs_credentials: false,
            provider: Some(Block::of::<SimulatedProvider>(BLOCK)),
            pool: None,
            label: None,
            image: Some(Block::of::<SimulatedImage>(BLOCK)),
        }
    }

    fn supply(&self) -> Supply {
        Supply::Launched
    }

    async fn cloud(&self, build: Build<'_>) -> Result<Arc<dyn Cloud>, CloudUnavailable> {
        let name = build.provider.name_any();
        let settings = build.provider.spec.driver_settings.parse(BLOCK)?.unwrap_or_default();
        let key = format!("{}/{name}", build.namespace);
        Ok(Arc::new(SimulatedCloud::new(&key, &name, build.system_id, settings)))
    }
}

/// Flavors the simulated cloud offers: name, vCPUs, MiB.
pub const FLAVORS: [(&str, u32, u64); 4] =
    [("small", 1, 1024), ("medium", 2, 4096), ("large", 4, 8192), ("xlarge", 8, 16384)];
/// The flavor of a label that names none.
pub const DEFAULT_FLAVOR: &str = "small";

#[derive(Debug)]
struct SimInstance {
    instance: Instance,
    resources: NodeResources,
    token: String,
    created: Instant,
    /// Set when the instance fails to boot.
    boot_failure: Option<String>,
    deleted: Option<Instant>,
}

#[derive(Debug, Default)]
struct Account {
    instances: BTreeMap<String, SimInstance>,
    next_id: u64,
}

/// Accounts by `<namespace>/<provider>`.
static ACCOUNTS: LazyLock<Mutex<HashMap<String, Arc<Mutex<Account>>>>> = LazyLock::new(Default::default);

/// One provider's view of the simulated cloud.
pub struct SimulatedCloud {
    settings: SimulatedProvider,
    account: Arc<Mutex<Account>>,
    system_id: String,
    provider: String,
}

impl SimulatedCloud {
    /// The cloud of `key` (one per provider), with the provider's current settings.
    pub fn new(key: &str, provider: &str, system_id: &str, settings: SimulatedProvider) -> Self {
        let account = ACCOUNTS.lock().expect("registry lock").entry(key.to_owned()).or_default().clone();
        Self { settings, account, system_id: system_id.to_owned(), provider: provider.to_owned() }
    }

    fn latency(&self) -> Duration {
        self.settings.launch_latency.map(|d| d.0).unwrap_or_default()
    }

    /// Instances that exist now (not deleted), for tests.
    pub fn live_instances(&self) -> usize {
        let now = Instant::now();
        let mut account = self.account.lock().expect("account lock");
        self.refresh(&mut account, now);
        account.instances.values().filter(|i| i.deleted.is_none()).count()
    }

    /// Brings every instance up to date with the clock; deleted ones disappear after half the
    /// launch latency.
    fn refresh(&self, account: &mut Account, now: Instant) {
        let latency = self.latency();
        account.instances.retain(|_, i| i.deleted.is_none_or(|at| now.duration_since(at) < latency / 2));
        for sim in account.instances.values_mut() {
            sim.instance.state = match (&sim.deleted, &sim.boot_failure) {
                (Some(_), _) => InstanceState::Stopping,
                _ if now.duration_since(sim.created) < latency => InstanceState::Pending,
                (None, Some(reason)) => InstanceState::Failed(reason.clone()),
                (None, None) => InstanceState::Running,
            };
        }
    }

    fn usage(account: &Account) -> (u32, u32, u64) {
        account
            .instances
            .values()
            .filter(|i| i.deleted.is_none())
            .fold((0, 0, 0), |(n, c, r), i| (n + 1, c + i.resources.cores, r + i.resources.ram))
    }
}

/// A share in [0, 1) derived from the token, so whether an attempt fails is reproducible.
fn share(token: &str) -> f64 {
    let mut hasher = DefaultHasher::new();
    token.hash(&mut hasher);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn flavor(label: &PoolLabel) -> CloudResult<NodeResources> {
    let name = label.instance_type.as_deref().unwrap_or(DEFAULT_FLAVOR);
    FLAVORS
        .iter()
        .find(|(flavor, _, _)| *flavor == name)
        .map(|(_, cores, ram)| NodeResources { cores: *cores, ram: *ram, instances: 1, ..Default::default() })
        .ok_or_else(|| {
            let known: Vec<&str> = FLAVORS.iter().map(|f| f.0).collect();
            CloudError::Invalid(format!("unknown simulated flavor {name:?}; known: {known:?}"))
        })
}

#[async_trait]
impl Cloud for SimulatedCloud {
    async fn create(&self, spec: &InstanceSpec) -> CloudResult<Instance> {
        let resources = flavor(&spec.label)?;
        let now = Instant::now();
        let mut account = self.account.lock().expect("account lock");
        self.refresh(&mut account, now);
        if let Some(existing) = account.instances.values().find(|i| i.token == spec.token) {
            return Ok(existing.instance.clone());
        }
        let (servers, cores, ram) = Self::usage(&account);
        if let Some(capacity) = self.settings.capacity
            && servers >= capacity
        {
            return Err(CloudError::Capacity(format!(
                "no capacity left for another instance ({capacity} running)"
            )));
        }
        if let Some(quota) = &self.settings.quota {
            let over = quota.max_servers.is_some_and(|max| servers + 1 > max)
                || quota.max_cores.is_some_and(|max| cores + resources.cores > max)
                || quota.max_ram.is_some_and(|max| ram + resources.ram > max);
            if over {
                return Err(CloudError::Quota(format!(
                    "instance quota exceeded (using {servers} instances, {cores} vCPUs, {ram} MiB)"
                )));
            }
        }
        account.next_id += 1;
        let n = account.next_id;
        let id = format!("sim-{n:08x}");
        let address = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
        let boot_failure = (share(&spec.token) < self.settings.failure_rate.unwrap_or(0.0))
            .then(|| "simulated boot failure".to_owned());
        let instance = Instance {
            id: id.clone(),
            state: InstanceState::Pending,
            interface_ip: Some(address.clone()),
            public_ipv4: None,
            private_ipv4: Some(address),
            public_ipv6: None,
            region: Some("simulated".into()),
            az: Some("simulated-a".into()),
            image_id: spec.image_id.clone(),
            tags: spec.tags.clone(),
            access: None,
            resources: None,
        };
        account.instances.insert(
            id,
            SimInstance {
                instance,
                resources,
                token: spec.token.clone(),
                created: now,
                boot_failure,
                deleted: None,
            },
        );
        self.refresh(&mut account, now);
        let created = &account.instances[&format!("sim-{n:08x}")];
        Ok(created.instance.clone())
    }

    async fn get(&self, id: &str) -> CloudResult<Option<Instance>> {
        let mut account = self.account.lock().expect("account lock");
        self.refresh(&mut account, Instant::now());
        Ok(account.instances.get(id).map(|i| i.instance.clone()))
    }

    async fn delete(&self, id: &str) -> CloudResult<()> {
        let now = Instant::now();
        let mut account = self.account.lock().expect("account lock");
        if let Some(sim) = account.instances.get_mut(id) {
            sim.deleted.get_or_insert(now);
        }
        self.refresh(&mut account, now);
        Ok(())
    }

    async fn list_instances(&self) -> CloudResult<Vec<Instance>> {
        let mut account = self.account.lock().expect("account lock");
        self.refresh(&mut account, Instant::now());
        Ok(account
            .instances
            .values()
            .filter(|i| nodepool_driver::tags::owned_by(&i.instance.tags, &self.system_id, &self.provider))
            .map(|i| i.instance.clone())
            .collect())
    }

    async fn quota_limits(&self, _pools: &[Pool]) -> CloudResult<ResourceLimits> {
        Ok(self.settings.quota.clone().unwrap_or_default())
    }

    async fn label_resources(&self, _pool: &Pool, label: &PoolLabel) -> CloudResult<NodeResources> {
        flavor(label)
    }

    async fn resolve_image(&self, image: &ImageSpec) -> CloudResult<String> {
        // Any image is "available"; a fixed id is kept so tests can see it carried through.
        let image: Option<SimulatedImage> = image.driver_settings.parse(BLOCK)?;
        Ok(image.and_then(|i| i.image_id).unwrap_or_else(|| "simulated-image".into()))
    }
}

#[cfg(test)]
mod tests;
