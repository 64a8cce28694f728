//! `providers[]` → `Provider` objects: the settings every driver shares, then the driver's own
//! (one module per driver).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use nodepool_crds::{
    GoDuration, Provider, ProviderSpec, SecretKeyRef,
    provider::{Pool, RateLimit},
};

use super::{
    Draft, manifest, names, origin,
    yaml::{Field, Mapping},
};

/// One provider being imported: its object name, its spec so far, and the whole import.
pub struct ProviderImport<'a> {
    pub name: String,
    pub spec: ProviderSpec,
    pub draft: &'a mut Draft,
    /// Where the provider is, for notes about it as a whole.
    pub field: Field,
    pool_names: BTreeSet<String>,
}

/// How a driver's module reads the rest of a provider of its driver.
pub type Read = fn(&mut Mapping, &mut ProviderImport);

/// `providers[i]`: the keys every driver has, then the rest by `read_for(driver)`; a driver
/// without a reader is named as not carried.
pub fn import(field: Field, draft: &mut Draft, read_for: fn(&str) -> Option<Read>) {
    let here = field.clone();
    let Some(mut provider) = field.mapping(&mut draft.notes) else { return };
    let notes = &mut draft.notes;
    let Some(nodepool_name) = provider.take("name").and_then(|n| n.text(notes)) else {
        notes.invalid(&here, "a provider without a name");
        return;
    };
    let driver = provider.take("driver").and_then(|d| d.text(notes)).unwrap_or_else(|| "openstack".into());
    let Some(read) = read_for(&driver) else {
        notes.not_carried(
            &here,
            format!("provider {nodepool_name:?}: the {driver} driver is not in nodepool-operator; keep this provider in Nodepool"),
        );
        return;
    };
    let Some(name) = draft.name_for("Provider", &nodepool_name, &here) else { return };
    let mut import = ProviderImport {
        name,
        spec: ProviderSpec::new(&driver, Vec::new()),
        draft,
        field: here.clone(),
        pool_names: BTreeSet::new(),
    };
    import.common(&mut provider);
    read(&mut provider, &mut import);
    let ProviderImport { name, spec, draft, .. } = import;
    provider.finish(&mut draft.notes);
    if spec.pools.is_empty() {
        draft.notes.not_carried(
            &here,
            format!("provider {nodepool_name:?} has no pool to serve from; a Provider needs one"),
        );
        return;
    }
    draft.providers.push((origin(&here), manifest(&Provider::new(&name, spec))));
}

impl ProviderImport<'_> {
    /// The keys every driver's provider has (Nodepool's `ProviderConfig`).
    fn common(&mut self, provider: &mut Mapping) {
        let notes = &mut self.draft.notes;
        if let Some(priority) = provider.take("priority").and_then(|p| p.int(notes)) {
            self.spec.priority = Some(priority.clamp(i32::MIN as i64, i32::MAX as i64) as i32);
        }
        if let Some(field) = provider.take("max-concurrency")
            && let Some(n) = field.int(notes).filter(|n| *n > 0)
        {
            self.spec.max_concurrency = Some(n.min(u32::MAX as i64) as u32);
            notes.changed(
                &field,
                "caps the nodes launching at once (Nodepool capped the requests handled at once)",
            );
        }
        if let Some(retries) = provider.take("launch-retries").and_then(|r| r.count(notes)) {
            self.spec.launch_retries = retries.clamp(1, 100) as u32;
        }
        if let Some(field) = provider.take("boot-timeout")
            && let Some(seconds) = field.number(notes).filter(|s| *s > 0.0)
        {
            self.spec.boot_timeout = GoDuration::from_secs(seconds.ceil() as u64);
            notes.changed(
                &field,
                "covers each attempt until the instance runs and answers SSH (Nodepool: the key scan only)",
            );
        }
        if let Some(field) = provider.take("launch-timeout")
            && let Some(seconds) = field.number(notes).filter(|s| *s > 0.0)
        {
            self.spec.launch_timeout = GoDuration::from_secs(seconds.ceil() as u64);
            notes.changed(&field, "covers the whole launch, every retry included (Nodepool: each attempt)");
        }
    }

    /// A cloud API rate (`rate`, operations per second) as the provider's rate limit.
    pub fn rate(&mut self, field: Field) {
        if let Some(rate) = field.number(&mut self.draft.notes).filter(|r| *r > 0.0) {
            self.spec.rate_limit = Some(RateLimit { requests_per_second: rate, burst: 1 });
            self.draft
                .notes
                .changed(&field, "rateLimit covers every cloud call (Nodepool limited mutating calls only)");
        }
    }

    /// Points the provider at a Secret `<provider>-credentials` and adds its template, with a
    /// placeholder for each key: values are never copied.
    pub fn credentials(&mut self, keys: &[&str], why: &str) {
        let secret_name = format!("{}-credentials", self.name);
        let data: BTreeMap<String, String> =
            keys.iter().map(|key| ((*key).to_owned(), format!("REPLACE-ME: {why}"))).collect();
        let secret = Secret {
            metadata: kube::api::ObjectMeta { name: Some(secret_name.clone()), ..Default::default() },
            string_data: Some(data),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let mut value = serde_json::to_value(&secret).expect("a Secret serializes");
        value["apiVersion"] = "v1".into();
        value["kind"] = "Secret".into();
        self.draft.secrets.push((format!("{} (credentials)", origin(&self.field)), value));
        self.spec.credentials_secret_ref = Some(SecretKeyRef { name: secret_name, key: None });
    }

    /// Each of the provider's `pools`: the keys every pool has, then `driver` reads its own
    /// into the pool; the keys left are reported.
    pub fn each_pool(
        &mut self,
        provider: &mut Mapping,
        defaults: &PoolDefaults,
        mut driver: impl FnMut(&mut Self, &mut Mapping, &mut Pool),
    ) {
        let Some(pools) = provider.take("pools") else { return };
        for field in pools.list(&mut self.draft.notes) {
            let here = field.clone();
            let Some(mut pool) = field.mapping(&mut self.draft.notes) else { continue };
            let Some(mut out) = self.pool(&mut pool, &here, defaults) else { continue };
            driver(self, &mut pool, &mut out);
            pool.finish(&mut self.draft.notes);
            self.spec.pools.push(out);
        }
    }

    /// The keys every pool has (Nodepool's `ProviderPool`), with `defaults` from the provider
    /// where Nodepool had them.
    pub fn pool(&mut self, pool: &mut Mapping, here: &Field, defaults: &PoolDefaults) -> Option<Pool> {
        let notes = &mut self.draft.notes;
        let wanted = pool.take("name").and_then(|n| n.text(notes));
        let Some(wanted) = wanted else {
            notes.invalid(here, "a pool without a name");
            return None;
        };
        let Some(base) = names::dns_label(&wanted) else {
            notes.invalid(here, format!("pool {wanted:?} cannot be made a DNS label"));
            return None;
        };
        if defaults.name_is_a_namespace && base != wanted {
            notes
                .invalid(here, format!("pool {wanted:?} names a project, and is not a valid namespace name"));
            return None;
        }
        let mut name = base.clone();
        let mut n = 2;
        while !self.pool_names.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        if name != wanted {
            notes.changed(
                here,
                format!("the pool is named {name:?} (pool names are DNS labels, unique in the provider)"),
            );
        }
        let mut out = Pool::named(&name);
        let limit = |key: &str, pool: &mut Mapping, notes: &mut super::Notes| {
            pool.take(key).and_then(|v| v.int(notes))
        };
        // Nodepool: a missing limit is unlimited; a negative one too.
        out.max_servers =
            limit("max-servers", pool, notes).or(defaults.max_servers).filter(|v| *v >= 0).map(clamp_u32);
        out.max_cores =
            limit("max-cores", pool, notes).or(defaults.max_cores).filter(|v| *v >= 0).map(clamp_u32);
        out.max_ram =
            limit("max-ram", pool, notes).or(defaults.max_ram).filter(|v| *v >= 0).map(|v| v as u64);
        if let Some(priority) = pool.take("priority").and_then(|p| p.int(notes)) {
            out.priority = Some(priority.clamp(i32::MIN as i64, i32::MAX as i64) as i32);
        }
        if let Some(attributes) = pool.take("node-attributes") {
            if let serde_json::Value::Object(map) = attributes.json() {
                out.node_attributes = Some(map.into_iter().collect());
            } else if !matches!(attributes.node, super::yaml::Node::Null) {
                notes.invalid(&attributes, "node-attributes must be a mapping");
            }
        }
        let checking =
            pool.take("host-key-checking").and_then(|c| c.flag(notes)).or(defaults.host_key_checking);
        out.host_key_checking = checking.unwrap_or(true);
        // Nodepool: the provider's `max-resources` are each pool's defaults, key by key.
        out.max_resources = defaults.max_resources.clone();
        if let Some(field) = pool.take("max-resources") {
            out.max_resources.extend(max_resources(field, notes));
        }
        Some(out)
    }
}

/// `max-resources`: a mapping of resource keys (on AWS, Service Quotas codes) to counts.
pub fn max_resources(field: Field, notes: &mut super::Notes) -> BTreeMap<String, u64> {
    let Some(mut mapping) = field.mapping(notes) else { return BTreeMap::new() };
    let mut limits = BTreeMap::new();
    for key in mapping.keys() {
        let Some(value) = mapping.take(&key) else { continue };
        match value.int(notes) {
            Some(count) if count >= 0 => {
                limits.insert(key, count as u64);
            }
            // Nodepool: a negative limit is no limit; `int` has noted a value that is no number.
            _ => {}
        }
    }
    limits
}

fn clamp_u32(value: i64) -> u32 {
    value.clamp(0, u32::MAX as i64) as u32
}

/// The number under the last of `keys` that is set (Nodepool reads several names for one
/// setting, a later one winning); every one of them is taken.
pub fn last_count_of(mapping: &mut Mapping, keys: &[&str], notes: &mut super::Notes) -> Option<i64> {
    keys.iter().filter_map(|key| mapping.take(key)).filter_map(|field| field.int(notes)).next_back()
}

/// Pool settings a provider sets for all its pools (AWS's provider-level limits and switches).
#[derive(Default)]
pub struct PoolDefaults {
    pub max_servers: Option<i64>,
    pub max_cores: Option<i64>,
    pub max_ram: Option<i64>,
    pub host_key_checking: Option<bool>,
    /// Other resources' limits by key (AWS's provider-level `max-resources`).
    pub max_resources: BTreeMap<String, u64>,
    /// The pool's name is a namespace that exists (OpenShift pods): it cannot be renamed.
    pub name_is_a_namespace: bool,
}
