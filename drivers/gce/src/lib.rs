//! The Google Compute Engine driver: [`nodepool_driver::Cloud`] over `google-cloud-compute-v1`.
//!
//! - An instance's id is `<zone>/<name>`; its name is the launch token, so creating again after
//!   a restart finds the instance instead of making a second one. Attempts go through the
//!   provider's zones in order.
//! - `instances.insert` answers with an operation; quota and capacity errors arrive in that
//!   operation, not as HTTP errors, so the driver remembers each pending insert and reads its
//!   operation when the instance does not show up.
//! - Labels carry the framework's ownership tags (sanitised to GCE's label rules).
//! - Quota: the region's `CPUS` and `INSTANCES`; sizes from `machineTypes.get` (cached).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use async_trait::async_trait;
use google_cloud_compute_v1::{
    Error as GceError,
    client::{Images, Instances, MachineTypes, Regions, ZoneOperations},
    model::{
        self, AccessConfig, AttachedDisk, AttachedDiskInitializeParams, Metadata, NetworkInterface,
        Scheduling, ServiceAccount, Tags,
    },
};
use nodepool_crds::{
    ImageSpec,
    pool_node::NodeResources,
    provider::{Pool, PoolLabel, ResourceLimits},
};
use nodepool_driver::{Cloud, CloudError, Instance, InstanceSpec, InstanceState, cloud::CloudResult, tags};

mod descriptor;
pub mod settings;

pub use descriptor::{DEFAULT_KEY, Gce};
use settings::{GceImage, GceLabel, GcePool};

/// The block of every GCE setting: `spec.gce`, `pools[].gce`, `pools[].labels[].gce`, and an
/// Image's `spec.gce`.
pub const BLOCK: &str = "gce";

/// Settings the driver is built from.
#[derive(Clone, Debug)]
pub struct GceSettings {
    pub provider: String,
    pub system_id: String,
    pub project: String,
    pub region: String,
    pub zones: Vec<String>,
    pub endpoint: Option<String>,
    /// The service-account key JSON.
    pub service_account_key: serde_json::Value,
}

pub struct GceCloud {
    settings: GceSettings,
    instances: Instances,
    operations: ZoneOperations,
    images: Images,
    machine_types: MachineTypes,
    regions: Regions,
    /// Inserts whose instance may not exist yet: instance id → operation name.
    pending_inserts: Mutex<HashMap<String, String>>,
    /// Inserts whose operation failed: instance id → the error, answered again on every `get`
    /// until the instance is deleted, so a step repeated after a lost status write sees the
    /// same outcome.
    failed_inserts: Mutex<HashMap<String, CloudError>>,
    /// vCPUs and MiB per machine type.
    sizes: Mutex<HashMap<String, NodeResources>>,
}

/// Why the driver could not be built.
#[derive(Debug)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! client {
    ($kind:ty, $settings:expr, $credentials:expr) => {{
        let mut builder = <$kind>::builder().with_credentials($credentials.clone());
        if let Some(endpoint) = &$settings.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        builder
            .build()
            .await
            .map_err(|e| BuildError(format!("building the {} client: {e}", stringify!($kind))))?
    }};
}

impl GceCloud {
    pub async fn new(settings: GceSettings) -> Result<Self, BuildError> {
        if settings.zones.is_empty() {
            return Err(BuildError("a gce provider needs at least one zone".into()));
        }
        let credentials = google_cloud_auth::credentials::service_account::Builder::new(
            settings.service_account_key.clone(),
        )
        .build()
        .map_err(|e| BuildError(format!("the service-account key is not usable: {e}")))?;
        Ok(Self {
            instances: client!(Instances, settings, credentials),
            operations: client!(ZoneOperations, settings, credentials),
            images: client!(Images, settings, credentials),
            machine_types: client!(MachineTypes, settings, credentials),
            regions: client!(Regions, settings, credentials),
            settings,
            pending_inserts: Mutex::default(),
            failed_inserts: Mutex::default(),
            sizes: Mutex::default(),
        })
    }

    fn zone_for(&self, attempt: u32) -> &str {
        let zones = &self.settings.zones;
        &zones[(attempt.max(1) as usize - 1) % zones.len()]
    }

    fn to_instance(&self, zone: &str, instance: &model::Instance) -> Instance {
        use model::instance::Status;
        let state = match &instance.status {
            Some(Status::Running) => InstanceState::Running,
            Some(Status::Provisioning | Status::Staging | Status::Pending | Status::Repairing) | None => {
                InstanceState::Pending
            }
            Some(Status::Stopping | Status::Suspending | Status::Deprovisioning) => InstanceState::Stopping,
            Some(other) => InstanceState::Failed(format!(
                "the instance is {}{}",
                other.name().unwrap_or("in an unknown state"),
                instance.status_message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
            )),
        };
        let interface = instance.network_interfaces.first();
        let private = interface.and_then(|n| n.network_ip.clone());
        let public = interface.and_then(|n| n.access_configs.iter().find_map(|a| a.nat_ip.clone()));
        let name = instance.name.clone().unwrap_or_default();
        Instance {
            id: format!("{zone}/{name}"),
            state,
            interface_ip: public.clone().or(private.clone()),
            public_ipv4: public,
            private_ipv4: private,
            public_ipv6: None,
            region: Some(self.settings.region.clone()),
            az: Some(zone.to_owned()),
            image_id: None,
            tags: instance.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            access: None,
            resources: None,
        }
    }

    fn body(&self, spec: &InstanceSpec, zone: &str, name: &str) -> CloudResult<model::Instance> {
        let label = &spec.label;
        let gce: GceLabel = label.driver_settings.parse(BLOCK)?.unwrap_or_default();
        let pool: GcePool = spec.pool.driver_settings.parse(BLOCK)?.unwrap_or_default();
        let machine_type = label.instance_type.as_deref().ok_or_else(|| {
            CloudError::Invalid(format!("label {} has no instanceType (machine type)", label.name))
        })?;
        let image = spec
            .image_id
            .clone()
            .ok_or_else(|| CloudError::Invalid(format!("label {} has no image", label.name)))?;

        let mut params = AttachedDiskInitializeParams::default();
        params.source_image = Some(image);
        params.disk_size_gb = label.volume_size_gb.map(i64::from);
        params.disk_type = label.volume_type.as_ref().map(|t| format!("zones/{zone}/diskTypes/{t}"));
        let mut disk = AttachedDisk::default();
        disk.boot = Some(true);
        disk.auto_delete = Some(true);
        disk.initialize_params = Some(params);

        let mut interface = NetworkInterface::default();
        interface.network = pool.network.clone();
        interface.subnetwork = pool.subnetwork.clone();
        if pool.external_ip {
            let mut access = AccessConfig::default();
            access.name = Some("External NAT".into());
            access.r#type = Some(model::access_config::Type::OneToOneNat);
            interface.access_configs = vec![access];
        }

        let mut metadata = Metadata::default();
        let mut items: BTreeMap<String, String> = gce.metadata.clone();
        if let Some(script) = &label.user_data {
            items.insert("startup-script".into(), script.clone());
        }
        metadata.items = items
            .into_iter()
            .map(|(key, value)| {
                let mut item = model::metadata::Items::default();
                item.key = Some(key);
                item.value = Some(value);
                item
            })
            .collect();

        let mut instance = model::Instance::default();
        instance.name = Some(name.to_owned());
        instance.machine_type = Some(format!("zones/{zone}/machineTypes/{machine_type}"));
        instance.disks = vec![disk];
        instance.network_interfaces = vec![interface];
        instance.labels = spec.tags.iter().map(|(k, v)| (label_text(k), label_text(v))).collect();
        instance.metadata = Some(metadata);
        if !gce.network_tags.is_empty() {
            let mut tags = Tags::default();
            tags.items = gce.network_tags.clone();
            instance.tags = Some(tags);
        }
        if let Some(email) = &gce.service_account {
            let mut account = ServiceAccount::default();
            account.email = Some(email.clone());
            account.scopes = vec!["https://www.googleapis.com/auth/cloud-platform".into()];
            instance.service_accounts = vec![account];
        }
        if label.spot {
            let mut scheduling = Scheduling::default();
            scheduling.provisioning_model = Some(model::scheduling::ProvisioningModel::Spot);
            scheduling.automatic_restart = Some(false);
            scheduling.on_host_maintenance = Some(model::scheduling::OnHostMaintenance::Terminate);
            instance.scheduling = Some(scheduling);
        }
        Ok(instance)
    }

    /// An instance the API does not list (yet, or ever): what we know of it from our insert.
    fn not_yet_listed(&self, id: &str, zone: &str, state: InstanceState) -> Instance {
        Instance {
            region: Some(self.settings.region.clone()),
            az: Some(zone.to_owned()),
            ..Instance::new(id.to_owned(), state, BTreeMap::new())
        }
    }

    async fn get_in_zone(&self, zone: &str, name: &str) -> CloudResult<Option<model::Instance>> {
        match self
            .instances
            .get()
            .set_project(&self.settings.project)
            .set_zone(zone)
            .set_instance(name)
            .send()
            .await
        {
            Ok(instance) => Ok(Some(instance)),
            Err(error) if error.http_status_code() == Some(404) => Ok(None),
            Err(error) => Err(classify("instances.get", &error)),
        }
    }

    /// What became of an insert whose instance is not there: `None` while it is still under
    /// way, `Some(None)` when it ended well, `Some(Some(error))` when it failed.
    async fn insert_outcome(&self, zone: &str, operation: &str) -> CloudResult<Option<Option<CloudError>>> {
        let op = self
            .operations
            .get()
            .set_project(&self.settings.project)
            .set_zone(zone)
            .set_operation(operation)
            .send()
            .await
            .map_err(|e| classify("zoneOperations.get", &e))?;
        if op.status != Some(model::operation::Status::Done) {
            return Ok(None);
        }
        Ok(Some(operation_error(&op)))
    }
}

/// A GCE label key or value: lowercase letters, digits, `_` and `-`, at most 63 characters.
pub fn label_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' { c } else { '_' }
        })
        .take(63)
        .collect()
}

/// The error an operation ended with, sorted like any other cloud error.
fn operation_error(op: &model::Operation) -> Option<CloudError> {
    let first = op.error.as_ref()?.errors.first()?;
    let code = first.code.clone().unwrap_or_default();
    let text = format!("{code}: {}", first.message.clone().unwrap_or_default());
    Some(if code.contains("QUOTA") {
        CloudError::Quota(text)
    } else if code.contains("RESOURCE_POOL_EXHAUSTED") || code.contains("STOCKOUT") {
        CloudError::Capacity(text)
    } else {
        CloudError::Invalid(text)
    })
}

/// Sorts an API error by HTTP status and reason.
pub fn classify(operation: &'static str, error: &GceError) -> CloudError {
    let text = format!("{operation}: {error}");
    match error.http_status_code() {
        Some(401) => CloudError::Auth(text),
        Some(403) if text.to_lowercase().contains("quota") => CloudError::Quota(text),
        Some(403) => CloudError::Auth(text),
        Some(429) => CloudError::Throttled(text),
        Some(400 | 404 | 409) => CloudError::Invalid(text),
        _ => CloudError::api(operation, error),
    }
}

fn split_id(id: &str) -> CloudResult<(&str, &str)> {
    id.split_once('/')
        .ok_or_else(|| CloudError::Invalid(format!("{id:?} is not a <zone>/<name> instance id")))
}

#[async_trait]
impl Cloud for GceCloud {
    async fn create(&self, spec: &InstanceSpec) -> CloudResult<Instance> {
        let zone = self.zone_for(spec.attempt).to_owned();
        let name = label_text(&spec.token).replace('_', "-");
        let id = format!("{zone}/{name}");
        if self.pending_inserts.lock().expect("lock").contains_key(&id)
            || self.failed_inserts.lock().expect("lock").contains_key(&id)
        {
            // Inserted already; `get` tells how that went.
            return self
                .get(&id)
                .await?
                .ok_or_else(|| CloudError::api("instances.insert", "the inserted instance vanished"));
        }
        if let Some(existing) = self.get_in_zone(&zone, &name).await? {
            return Ok(self.to_instance(&zone, &existing));
        }
        let body = self.body(spec, &zone, &name)?;
        let op = match self
            .instances
            .insert()
            .set_project(&self.settings.project)
            .set_zone(&zone)
            .set_body(body)
            .send()
            .await
        {
            Ok(op) => op,
            Err(error) if error.http_status_code() == Some(409) => {
                // Created meanwhile (a retried request): adopt it.
                let existing = self.get_in_zone(&zone, &name).await?;
                return existing
                    .map(|i| self.to_instance(&zone, &i))
                    .ok_or_else(|| CloudError::api("instances.insert", "409 but no instance"));
            }
            Err(error) => return Err(classify("instances.insert", &error)),
        };
        if let Some(error) = operation_error(&op) {
            return Err(error);
        }
        if let Some(op_name) = op.name.clone() {
            self.pending_inserts.lock().expect("lock").insert(id.clone(), op_name);
        }
        let mut instance = self.not_yet_listed(&id, &zone, InstanceState::Pending);
        instance.image_id = spec.image_id.clone();
        instance.tags = spec.tags.iter().map(|(k, v)| (label_text(k), label_text(v))).collect();
        Ok(instance)
    }

    async fn get(&self, id: &str) -> CloudResult<Option<Instance>> {
        let (zone, name) = split_id(id)?;
        let placeholder = |state: InstanceState| self.not_yet_listed(id, zone, state);
        if let Some(error) = self.failed_inserts.lock().expect("lock").get(id).cloned() {
            return Ok(Some(placeholder(InstanceState::Refused(error.to_string()))));
        }
        if let Some(instance) = self.get_in_zone(zone, name).await? {
            if instance.status == Some(model::instance::Status::Running) {
                self.pending_inserts.lock().expect("lock").remove(id);
            }
            return Ok(Some(self.to_instance(zone, &instance)));
        }
        let pending = self.pending_inserts.lock().expect("lock").get(id).cloned();
        let Some(operation) = pending else { return Ok(None) };
        match self.insert_outcome(zone, &operation).await? {
            None => Ok(Some(placeholder(InstanceState::Pending))),
            Some(None) => {
                self.pending_inserts.lock().expect("lock").remove(id);
                Ok(None)
            }
            Some(Some(error)) => {
                self.pending_inserts.lock().expect("lock").remove(id);
                match error {
                    error @ (CloudError::Quota(_) | CloudError::Capacity(_)) => {
                        self.failed_inserts.lock().expect("lock").insert(id.to_owned(), error.clone());
                        Ok(Some(placeholder(InstanceState::Refused(error.to_string()))))
                    }
                    other => Ok(Some(placeholder(InstanceState::Failed(other.to_string())))),
                }
            }
        }
    }

    async fn delete(&self, id: &str) -> CloudResult<()> {
        let (zone, name) = split_id(id)?;
        self.pending_inserts.lock().expect("lock").remove(id);
        if self.failed_inserts.lock().expect("lock").remove(id).is_some() {
            return Ok(()); // never created
        }
        match self
            .instances
            .delete()
            .set_project(&self.settings.project)
            .set_zone(zone)
            .set_instance(name)
            .send()
            .await
        {
            Ok(op) => match operation_error(&op) {
                Some(error) => Err(error),
                None => Ok(()),
            },
            Err(error) if error.http_status_code() == Some(404) => Ok(()),
            Err(error) => Err(classify("instances.delete", &error)),
        }
    }

    async fn list_instances(&self) -> CloudResult<Vec<Instance>> {
        let filter = format!(
            "labels.{} = \"{}\" AND labels.{} = \"{}\"",
            tags::PROVIDER,
            label_text(&self.settings.provider),
            tags::SYSTEM_ID,
            label_text(&self.settings.system_id)
        );
        let mut found = Vec::new();
        for zone in &self.settings.zones {
            let mut page_token: Option<String> = None;
            loop {
                let page = self
                    .instances
                    .list()
                    .set_project(&self.settings.project)
                    .set_zone(zone)
                    .set_filter(filter.clone())
                    .set_or_clear_page_token(page_token.clone())
                    .send()
                    .await
                    .map_err(|e| classify("instances.list", &e))?;
                found.extend(page.items.iter().map(|i| self.to_instance(zone, i)));
                match page.next_page_token.filter(|t| !t.is_empty()) {
                    Some(token) => page_token = Some(token),
                    None => break,
                }
            }
        }
        Ok(found)
    }

    async fn quota_limits(&self, _pools: &[Pool]) -> CloudResult<ResourceLimits> {
        let region = self
            .regions
            .get()
            .set_project(&self.settings.project)
            .set_region(&self.settings.region)
            .send()
            .await
            .map_err(|e| classify("regions.get", &e))?;
        let limit = |metric: &str| {
            region
                .quotas
                .iter()
                .find(|q| q.metric.as_ref().and_then(|m| m.name()) == Some(metric))
                .and_then(|q| q.limit)
                .map(|l| l.max(0.0) as u32)
        };
        Ok(ResourceLimits {
            max_servers: limit("INSTANCES"),
            max_cores: limit("CPUS"),
            max_ram: None,
            ..Default::default()
        })
    }

    async fn label_resources(&self, _pool: &Pool, label: &PoolLabel) -> CloudResult<NodeResources> {
        let machine_type = label.instance_type.clone().ok_or_else(|| {
            CloudError::Invalid(format!("label {} has no instanceType (machine type)", label.name))
        })?;
        if let Some(size) = self.sizes.lock().expect("lock").get(&machine_type) {
            return Ok(size.clone());
        }
        let found = self
            .machine_types
            .get()
            .set_project(&self.settings.project)
            .set_zone(self.zone_for(1))
            .set_machine_type(&machine_type)
            .send()
            .await
            .map_err(|e| classify("machineTypes.get", &e))?;
        let size = NodeResources {
            cores: found.guest_cpus.unwrap_or(0).max(0) as u32,
            ram: found.memory_mb.unwrap_or(0).max(0) as u64,
            instances: 1,
            ..Default::default()
        };
        self.sizes.lock().expect("lock").insert(machine_type, size.clone());
        Ok(size)
    }

    async fn resolve_image(&self, image: &ImageSpec) -> CloudResult<String> {
        let gce: GceImage = image
            .driver_settings
            .parse(BLOCK)?
            .ok_or_else(|| CloudError::Invalid("the Image has no spec.gce".into()))?;
        let project = gce.project.clone().unwrap_or_else(|| self.settings.project.clone());
        let found = match (&gce.image, &gce.family) {
            (Some(name), _) => self
                .images
                .get()
                .set_project(&project)
                .set_image(name)
                .send()
                .await
                .map_err(|e| classify("images.get", &e))?,
            (None, Some(family)) => self
                .images
                .get_from_family()
                .set_project(&project)
                .set_family(family)
                .send()
                .await
                .map_err(|e| classify("images.getFromFamily", &e))?,
            (None, None) => {
                return Err(CloudError::Invalid("spec.gce names neither an image nor a family".into()));
            }
        };
        found.self_link.ok_or_else(|| CloudError::api("images.get", "the image has no selfLink"))
    }
}
