//! A `kubernetes` provider: context, credentials (a kubeconfig), pools and labels.

use std::collections::BTreeMap;

use nodepool_crds::provider::PoolLabel;
use nodepool_driver_kubernetes::{
    BLOCK, DEFAULT_KEY,
    settings::{EnvVar, KubernetesLabel, KubernetesProvider, LabelKind, PodSettings},
};

use super::{
    provider::{PoolDefaults, ProviderImport},
    yaml::{Field, Mapping},
};

/// A pool's `default-label-*` values, used by labels that do not set their own.
#[derive(Default)]
pub(super) struct LabelDefaults {
    cpu: Option<u64>,
    memory: Option<u64>,
    cpu_limit: Option<u64>,
    memory_limit: Option<u64>,
    extra_resources: BTreeMap<String, u64>,
}

/// A pool's `default-label-*` settings.
pub(super) fn label_defaults(pool: &mut Mapping, notes: &mut super::Notes) -> LabelDefaults {
    let mut count = |key: &str| pool.take(key).and_then(|v| v.count(notes));
    let defaults = LabelDefaults {
        cpu: count("default-label-cpu"),
        memory: count("default-label-memory"),
        cpu_limit: count("default-label-cpu-limit"),
        memory_limit: count("default-label-memory-limit"),
        // Nodepool 11 documents `default-label-extra-resources` but reads
        // `default-label-extra_resources`; either is taken.
        extra_resources: ["default-label-extra-resources", "default-label-extra_resources"]
            .into_iter()
            .filter_map(|key| pool.take(key))
            .flat_map(|field| resource_counts(field, notes))
            .collect(),
    };
    for key in ["default-label-storage", "default-label-storage-limit"] {
        pool.not_carried(key, "ephemeral-storage is not supported", notes);
    }
    defaults
}

const NOT_CARRIED: &[(&str, &str)] = &[
    ("spec", "a raw pod spec is not supported; use the label's own settings"),
    ("gpu", "GPU requests are not supported"),
    ("gpu-resource", "GPU requests are not supported"),
    ("storage", "ephemeral-storage requests are not supported"),
    ("storage-limit", "ephemeral-storage limits are not supported"),
    ("dynamic-labels", "labels formatted from the request are not supported"),
];

pub fn import(provider: &mut Mapping, import: &mut ProviderImport) {
    let notes = &mut import.draft.notes;
    let settings =
        KubernetesProvider { context: provider.take("context").and_then(|v| v.text(notes)), api_url: None };
    import.spec.driver_settings.insert(BLOCK, &settings).expect("serializes");
    import.credentials(
        &[DEFAULT_KEY],
        "a kubeconfig for the cluster (or remove credentialsSecretRef to use the operator's own account)",
    );
    import.each_pool(provider, &PoolDefaults::default(), |import, pool, out| {
        let notes = &mut import.draft.notes;
        let defaults = label_defaults(pool, notes);
        let labels = pool.take("labels").map(|l| l.list(notes)).unwrap_or_default();
        out.labels = labels.into_iter().filter_map(|label| pool_label(label, &defaults, import)).collect();
    });
}

fn pool_label(field: Field, defaults: &LabelDefaults, import: &mut ProviderImport) -> Option<PoolLabel> {
    let here = field.clone();
    let notes = &mut import.draft.notes;
    let mut label = field.mapping(notes)?;
    let name = label.take("name").and_then(|v| v.text(notes))?;
    let kind = match label.take("type").and_then(|v| v.text(notes)).as_deref() {
        Some("namespace") => LabelKind::Namespace,
        Some("pod") => LabelKind::Pod,
        other => {
            notes.invalid(&here, format!("label {name:?}: type must be namespace or pod, not {other:?}"));
            label.finish(notes);
            return None;
        }
    };
    let settings = KubernetesLabel { kind, pod: pod_settings(&mut label, defaults, notes) };
    label.finish(notes);
    if settings.kind == LabelKind::Pod && settings.pod.image.is_none() {
        notes.invalid(&here, format!("pod label {name:?} has no image"));
        return None;
    }
    let mut out = PoolLabel::named(&name);
    out.driver_settings.insert(BLOCK, &settings).expect("serializes");
    Some(out)
}

/// A label's container settings (Nodepool's names), with the pool's defaults; what has no
/// counterpart is noted. Shared with the OpenShift pods driver.
pub(super) fn pod_settings(
    label: &mut Mapping,
    defaults: &LabelDefaults,
    notes: &mut super::Notes,
) -> PodSettings {
    let mut count = |key: &str| label.take(key).and_then(|v| v.count(notes));
    let (cpu, memory, cpu_limit, memory_limit) =
        (count("cpu"), count("memory"), count("cpu-limit"), count("memory-limit"));
    let mut env = Vec::new();
    if let Some(list) = label.take("env") {
        for item in list.list(notes) {
            let Some(mut item) = item.mapping(notes) else { continue };
            let name = item.take("name").and_then(|v| v.text(notes));
            let value = item.take("value").and_then(|v| v.text(notes)).unwrap_or_default();
            item.finish(notes);
            env.extend(name.map(|name| EnvVar { name, value }));
        }
    }
    let mut image_pull_secrets = Vec::new();
    if let Some(list) = label.take("image-pull-secrets") {
        for item in list.list(notes) {
            let Some(mut item) = item.mapping(notes) else { continue };
            image_pull_secrets.extend(item.take("name").and_then(|v| v.text(notes)));
            item.finish(notes);
        }
    }
    let settings = PodSettings {
        image: label.take("image").and_then(|v| v.text(notes)),
        image_pull: label.take("image-pull").and_then(|v| v.text(notes)),
        image_pull_secrets,
        cpu: cpu.or(defaults.cpu).map(clamp_u32),
        memory: memory.or(defaults.memory),
        cpu_limit: cpu_limit.or(defaults.cpu_limit).map(clamp_u32),
        memory_limit: memory_limit.or(defaults.memory_limit),
        env,
        node_selector: label.take("node-selector").map(|v| v.string_map(notes)).unwrap_or_default(),
        scheduler_name: label.take("scheduler-name").and_then(|v| v.text(notes)),
        privileged: label.take("privileged").and_then(|v| v.flag(notes)),
        labels: label.take("labels").map(|v| v.string_map(notes)).unwrap_or_default(),
        annotations: label.take("annotations").map(|v| v.string_map(notes)).unwrap_or_default(),
        python_path: label.take("python-path").and_then(|v| v.text(notes)),
        shell_type: label.take("shell-type").and_then(|v| v.text(notes)),
        extra_resources: {
            let mut extra = defaults.extra_resources.clone();
            extra
                .extend(label.take("extra-resources").map(|v| resource_counts(v, notes)).unwrap_or_default());
            extra
        },
        // Kubernetes' own forms, as Nodepool passes them through.
        volumes: label
            .take("volumes")
            .map(|v| v.list(notes))
            .unwrap_or_default()
            .iter()
            .map(Field::json)
            .collect(),
        volume_mounts: label
            .take("volume-mounts")
            .map(|v| v.list(notes))
            .unwrap_or_default()
            .iter()
            .map(Field::json)
            .collect(),
    };
    for (key, why) in NOT_CARRIED {
        label.not_carried(key, why, notes);
    }
    settings
}

/// A mapping of resource names to counts (`extra-resources`).
fn resource_counts(field: Field, notes: &mut super::Notes) -> BTreeMap<String, u64> {
    let Some(mut mapping) = field.mapping(notes) else { return BTreeMap::new() };
    let mut counts = BTreeMap::new();
    for key in mapping.keys() {
        if let Some(count) = mapping.take(&key).and_then(|v| v.count(notes)) {
            counts.insert(key, count);
        }
    }
    counts
}

fn clamp_u32(value: u64) -> u32 {
    value.min(u32::MAX as u64) as u32
}
