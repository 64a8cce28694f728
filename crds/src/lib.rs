//! The custom resources of nodepool-operator: API group `nodepool.dev`, version `v1alpha1`.
//!
//! | kind          | what it says                                                        |
//! |---------------|---------------------------------------------------------------------|
//! | [`Provider`]  | a cloud account or a set of static hosts, with pools and limits      |
//! | [`Label`]     | what jobs ask for, and how many ready nodes to keep                  |
//! | [`Image`]     | how to find a cloud image in each kind of cloud                      |
//! | [`NodeRequest`] | one Zuul node request, mirrored from ZooKeeper                     |
//! | [`PoolNode`]  | one node and its lifecycle                                           |
//! | [`TenantLimit`] | how much one Zuul tenant may use at once                           |
//!
//! Each driver's own settings are not typed here: they are blocks named after the driver
//! ([`driver_blocks`]), typed in the driver's crate, and written into the CRDs by the registry of
//! drivers (`drivers/registry`), which also generates the checked-in YAML under `crds/generated/`
//! (`make crds`).

// `#[kube(printcolumn(...))]` repeats `type_ = ...` on purpose; clippy reads it as a duplicate.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod conditions;
pub mod driver_blocks;
pub mod image;
pub mod label;
pub mod node_request;
pub mod pool_node;
pub mod provider;
pub mod quota;
pub mod reference;
pub mod tenant_limit;

pub use common::{ConnectionSettings, ConnectionType, GoDuration, SecretKeyRef};
pub use driver_blocks::DriverBlocks;
pub use image::{Image, ImageSpec, ImageStatus};
pub use label::{Label, LabelSpec, LabelStatus};
pub use node_request::{
    NodeRequest, NodeRequestSpec, NodeRequestState, NodeRequestStatus, RequestZooKeeperView,
};
pub use pool_node::{NodeState, PoolNode, PoolNodeSpec, PoolNodeStatus, ZooKeeperView};
pub use provider::{DriverName, Provider, ProviderSpec, ProviderStatus};
pub use tenant_limit::{TenantLimit, TenantLimitSpec, TenantLimitStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every kind in this crate.
pub const GROUP: &str = "nodepool.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Field manager of the operator (server-side apply).
pub const OPERATOR_MANAGER: &str = "nodepool-operator";
/// Field manager of the zk-bridge (server-side apply).
pub const BRIDGE_MANAGER: &str = "nodepool-zk-bridge";
/// Finalizer the bridge removes once a PoolNode's znode is gone, so a znode never outlives its
/// PoolNode. The operator creates every PoolNode with it (one write less per node, and no node
/// can go before the bridge has seen it); the bridge adds it to any node that lacks it.
pub const ZNODE_FINALIZER: &str = "nodepool.dev/znode";

/// Labels the operator puts on PoolNodes.
pub mod labels {
    pub const PROVIDER: &str = "nodepool.dev/provider";
    pub const POOL: &str = "nodepool.dev/pool";
    pub const STATIC_HOST: &str = "nodepool.dev/static-host";
    pub const SLOT: &str = "nodepool.dev/slot";

    /// `text` as a Kubernetes label value: `[A-Za-z0-9_.-]` only (others become `_`), at most
    /// 63 characters, starting and ending alphanumeric.
    pub fn value(text: &str) -> String {
        let value: String = text
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
            .take(63)
            .collect();
        value.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
    }
}

/// Annotations put on objects by this project's tools.
pub mod annotations {
    /// Where in a `nodepool.yaml` an object made by `nodepool import` came from, e.g.
    /// `providers[1] (line 40)`.
    pub const IMPORTED_FROM: &str = "nodepool.dev/imported-from";
}

/// Every CustomResourceDefinition, in the order they are installed, without the drivers' blocks:
/// `nodepool_drivers::crds()` is what gets installed.
pub fn base_crds() -> Vec<CustomResourceDefinition> {
    [Provider::crd(), Label::crd(), Image::crd(), NodeRequest::crd(), PoolNode::crd(), TenantLimit::crd()]
        .into_iter()
        .map(schema_formats::kubernetes_only)
        .collect()
}

/// Schema `format`s as Kubernetes knows them. schemars names Rust's unsigned integers
/// (`uint16`, `uint32`, ...), which the apiserver does not recognise: `kubectl apply` warns
/// `unrecognized format "uint32"` for every such field.
pub mod schema_formats {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use serde_json::Value;

    /// Every format the apiserver validates (k8s.io/kube-openapi `strfmt` defaults, plus the
    /// OpenAPI number formats).
    pub const KNOWN: &[&str] = &[
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "binary",
        "date",
        "date-time",
        "datetime",
        "duration",
        "password",
        "bsonobjectid",
        "uri",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "cidr",
        "mac",
        "uuid",
        "uuid3",
        "uuid4",
        "uuid5",
        "isbn",
        "isbn10",
        "isbn13",
        "creditcard",
        "ssn",
        "hexcolor",
        "rgbcolor",
    ];

    /// The CRD with unsigned integer formats widened to the signed format that holds them (the
    /// `minimum: 0` schemars writes beside them stays) and any other unknown format dropped.
    pub fn kubernetes_only(crd: CustomResourceDefinition) -> CustomResourceDefinition {
        let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
        rewrite(&mut value);
        serde_json::from_value(value).expect("a rewritten CRD deserializes")
    }

    fn rewrite(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(format)) = map.get("format") {
                    match format.as_str() {
                        "uint8" | "uint16" | "int8" | "int16" => {
                            map.insert("format".into(), Value::String("int32".into()));
                        }
                        "uint32" | "uint64" | "uint" => {
                            map.insert("format".into(), Value::String("int64".into()));
                        }
                        known if KNOWN.contains(&known) => {}
                        _ => {
                            map.remove("format");
                        }
                    }
                }
                map.values_mut().for_each(rewrite);
            }
            Value::Array(items) => items.iter_mut().for_each(rewrite),
            _ => {}
        }
    }

    /// Every `format` in a schema, for tests.
    pub fn all(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(format)) = map.get("format") {
                    out.push(format.clone());
                }
                map.values().for_each(|v| all(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| all(v, out)),
            _ => {}
        }
    }
}

/// The file name under `crds/generated/` for a CRD, e.g. `providers.nodepool.dev.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// Renders one CRD as the YAML document that is checked in.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml_ng::to_string(crd).expect("a CRD always serializes to YAML");
    format!("# Generated by `make crds`; do not edit.\n{body}")
}
