//! The Kubernetes objects of one node: its namespace, the service account Zuul acts as with its
//! token Secret, role and binding, and for a pod label the pod.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{
            Container, EnvVar, LocalObjectReference, Namespace, Pod, PodSpec, ResourceRequirements, Secret,
            SecurityContext, ServiceAccount,
        },
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use nodepool_crds::ConnectionType;

use crate::{
    SERVICE_ACCOUNT,
    settings::{KubernetesLabel, LabelKind, PodSettings},
};

/// Namespace annotation: `namespace` or `pod`, so a later look knows what the node is.
pub const KIND_ANNOTATION: &str = "nodepool.dev/label-kind";
/// Namespace annotation: the pod of a pod label.
pub const POD_ANNOTATION: &str = "nodepool.dev/pod";
/// Namespace annotations: what Zuul runs Ansible with on the node.
pub const PYTHON_PATH_ANNOTATION: &str = "nodepool.dev/python-path";
pub const SHELL_TYPE_ANNOTATION: &str = "nodepool.dev/shell-type";

/// The role of a namespace label: manage what a job deploys in its namespace.
const NAMESPACE_ROLE: &str = "zuul";
/// The role of a pod label: exec into, read the log of and port-forward to the pod only.
const POD_ROLE: &str = "zuul-restricted";
const ROLE_BINDING: &str = "zuul-role";

/// A namespace name for a launch attempt token (`<node>-a<attempt>`): a DNS label of at most 63
/// characters, the same for the same token.
pub fn namespace_name(token: &str) -> String {
    let clean: String = token
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
        .collect();
    let clean = clean.trim_matches('-').to_owned();
    if clean.len() <= 63 {
        return clean;
    }
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = token
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{}-{:08x}", clean[..54].trim_end_matches('-'), hash as u32)
}

/// A pod name for a label name (label names may hold characters pod names may not).
pub fn pod_name(label: &str) -> String {
    namespace_name(label)
}

pub use nodepool_crds::labels::value as label_value;

/// The node's namespace; `pod` names the pod of a pod label.
pub fn namespace(
    name: &str,
    tags: &BTreeMap<String, String>,
    label: &KubernetesLabel,
    pod: Option<&str>,
) -> Namespace {
    let mut labels: BTreeMap<String, String> = label.pod.labels.clone();
    labels.extend(tags.iter().map(|(k, v)| (k.clone(), label_value(v))));
    let mut annotations = BTreeMap::from([(
        KIND_ANNOTATION.to_owned(),
        match label.kind {
            LabelKind::Namespace => "namespace".to_owned(),
            LabelKind::Pod => "pod".to_owned(),
        },
    )]);
    if let Some(pod) = pod {
        annotations.insert(POD_ANNOTATION.to_owned(), pod.to_owned());
    }
    if let Some(path) = &label.pod.python_path {
        annotations.insert(PYTHON_PATH_ANNOTATION.to_owned(), path.clone());
    }
    if let Some(shell) = &label.pod.shell_type {
        annotations.insert(SHELL_TYPE_ANNOTATION.to_owned(), shell.clone());
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub fn service_account(namespace: &str) -> ServiceAccount {
    ServiceAccount { metadata: meta(SERVICE_ACCOUNT, namespace), ..Default::default() }
}

/// The service account's long-lived token, filled in by the cluster's token controller (a
/// token that expires would cut off a job, or a node held for days).
pub fn token_secret(namespace: &str) -> Secret {
    let mut metadata = meta(SERVICE_ACCOUNT, namespace);
    metadata.annotations =
        Some(BTreeMap::from([("kubernetes.io/service-account.name".to_owned(), SERVICE_ACCOUNT.to_owned())]));
    Secret { metadata, type_: Some("kubernetes.io/service-account-token".into()), ..Default::default() }
}

pub fn role(namespace: &str, kind: LabelKind) -> Role {
    let all: Vec<String> =
        ["create", "delete", "get", "list", "patch", "update", "watch"].map(String::from).to_vec();
    let rule = |resources: &[&str], verbs: Vec<String>| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs,
        ..Default::default()
    };
    let rules = match kind {
        LabelKind::Namespace => vec![
            rule(
                &[
                    "pods",
                    "pods/exec",
                    "pods/log",
                    "pods/portforward",
                    "services",
                    "endpoints",
                    "configmaps",
                    "secrets",
                    "persistentvolumeclaims",
                ],
                all,
            ),
            PolicyRule {
                api_groups: Some(vec!["apps".into(), "batch".into()]),
                resources: Some(
                    ["deployments", "replicasets", "statefulsets", "jobs", "cronjobs"]
                        .map(String::from)
                        .to_vec(),
                ),
                verbs: ["create", "delete", "get", "list", "patch", "update", "watch"]
                    .map(String::from)
                    .to_vec(),
                ..Default::default()
            },
        ],
        LabelKind::Pod => vec![
            rule(&["pods"], vec!["get".into(), "list".into()]),
            rule(&["pods/exec", "pods/log", "pods/portforward"], all),
        ],
    };
    let name = match kind {
        LabelKind::Namespace => NAMESPACE_ROLE,
        LabelKind::Pod => POD_ROLE,
    };
    Role { metadata: meta(name, namespace), rules: Some(rules) }
}

pub fn role_binding(namespace: &str, kind: LabelKind) -> RoleBinding {
    let role = match kind {
        LabelKind::Namespace => NAMESPACE_ROLE,
        LabelKind::Pod => POD_ROLE,
    };
    RoleBinding {
        metadata: meta(ROLE_BINDING, namespace),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: SERVICE_ACCOUNT.into(),
            namespace: Some(namespace.into()),
            ..Default::default()
        }]),
    }
}

/// The pod of a pod label: one long-running shell container, as Nodepool runs it.
/// The pod of a pod label, as Nodepool builds it; an error names a volume or mount that is not
/// one.
pub fn pod(
    namespace: &str,
    name: &str,
    tags: &BTreeMap<String, String>,
    label: &PodSettings,
) -> Result<Pod, String> {
    let (volumes, volume_mounts) = label.volumes()?;
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(cpu) = label.cpu {
        requests.insert("cpu".to_owned(), Quantity(cpu.to_string()));
    }
    if let Some(memory) = label.memory {
        requests.insert("memory".to_owned(), Quantity(format!("{memory}Mi")));
    }
    if let Some(cpu) = label.cpu_limit.or(label.cpu) {
        limits.insert("cpu".to_owned(), Quantity(cpu.to_string()));
    }
    if let Some(memory) = label.memory_limit.or(label.memory) {
        limits.insert("memory".to_owned(), Quantity(format!("{memory}Mi")));
    }
    let container = Container {
        name: name.to_owned(),
        image: label.image.clone(),
        image_pull_policy: Some(label.image_pull.clone().unwrap_or_else(|| "IfNotPresent".into())),
        command: Some(vec!["/bin/sh".into(), "-c".into()]),
        args: Some(vec!["while true; do sleep 30; done;".into()]),
        env: Some(
            label
                .env
                .iter()
                .map(|e| EnvVar { name: e.name.clone(), value: Some(e.value.clone()), ..Default::default() })
                .collect(),
        ),
        resources: Some(ResourceRequirements {
            requests: (!requests.is_empty()).then_some(requests),
            limits: (!limits.is_empty()).then_some(limits),
            ..Default::default()
        }),
        security_context: label
            .privileged
            .map(|privileged| SecurityContext { privileged: Some(privileged), ..Default::default() }),
        volume_mounts: (!volume_mounts.is_empty()).then_some(volume_mounts),
        ..Default::default()
    };
    let mut labels: BTreeMap<String, String> = label.labels.clone();
    labels.extend(tags.iter().map(|(k, v)| (k.clone(), label_value(v))));
    let mut metadata = meta(name, namespace);
    metadata.labels = Some(labels);
    metadata.annotations = (!label.annotations.is_empty()).then(|| label.annotations.clone());
    Ok(Pod {
        metadata,
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            node_selector: (!label.node_selector.is_empty()).then(|| label.node_selector.clone()),
            scheduler_name: label.scheduler_name.clone(),
            service_account_name: None,
            image_pull_secrets: (!label.image_pull_secrets.is_empty()).then(|| {
                label
                    .image_pull_secrets
                    .iter()
                    .map(|name| LocalObjectReference { name: name.clone() })
                    .collect()
            }),
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The connection type of a label's nodes.
pub fn connection_type(kind: LabelKind) -> ConnectionType {
    match kind {
        LabelKind::Namespace => ConnectionType::Namespace,
        LabelKind::Pod => ConnectionType::Kubectl,
    }
}

fn meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_owned()), namespace: Some(namespace.to_owned()), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_dns_labels_and_stable() {
        assert_eq!(namespace_name("k8s-x7b2q-a1"), "k8s-x7b2q-a1");
        assert_eq!(namespace_name("Pool_One.node-a2"), "pool-one-node-a2");
        let long = "a".repeat(80) + "-a1";
        let name = namespace_name(&long);
        assert!(name.len() <= 63, "{name}");
        assert_eq!(name, namespace_name(&long), "the same token gives the same name");
        assert_ne!(name, namespace_name(&("a".repeat(80) + "-a2")), "another attempt, another name");
    }

    #[test]
    fn a_pods_volumes_and_mounts_are_passed_through_and_a_bad_one_is_named() {
        let mut label = PodSettings { image: Some("debian:bookworm".into()), ..Default::default() };
        label.volumes = vec![serde_json::json!({"name": "cache", "emptyDir": {"medium": "Memory"}})];
        label.volume_mounts = vec![serde_json::json!({"name": "cache", "mountPath": "/cache"})];
        let built = pod("ns", "box", &BTreeMap::new(), &label).unwrap();
        let spec = built.spec.unwrap();
        let volume = &spec.volumes.unwrap()[0];
        assert_eq!(
            (volume.name.as_str(), volume.empty_dir.as_ref().and_then(|e| e.medium.as_deref())),
            ("cache", Some("Memory"))
        );
        let mount = &spec.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!((mount.name.as_str(), mount.mount_path.as_str()), ("cache", "/cache"));
        label.volume_mounts = vec![serde_json::json!({"name": "cache", "mountPath": 5})];
        let error = pod("ns", "box", &BTreeMap::new(), &label).unwrap_err();
        assert!(
            error.starts_with("volume mount {\"mountPath\":5,\"name\":\"cache\"}: invalid type"),
            "{error}"
        );
        assert_eq!(label.footprint().unwrap_err(), error, "the label is not launchable, for the same reason");
    }

    #[test]
    fn the_pod_role_reaches_only_the_pod_and_names_the_log_subresource_correctly() {
        let role = role("ns", LabelKind::Pod);
        let resources: Vec<String> =
            role.rules.unwrap().into_iter().flat_map(|r| r.resources.unwrap_or_default()).collect();
        assert_eq!(resources, ["pods", "pods/exec", "pods/log", "pods/portforward"]);
    }
}
