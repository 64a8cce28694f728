//! `Label`: what Zuul jobs ask for, and how many ready nodes to keep waiting.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::GoDuration;

/// A node label. Providers serve it through their pools; the Label says what the site wants
/// of it regardless of provider.
#[derive(CustomResource, JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "nodepool.dev",
    version = "v1alpha1",
    kind = "Label",
    namespaced,
    status = "LabelStatus",
    shortname = "npl",
    category = "nodepool",
    printcolumn(name = "Min-Ready", type_ = "integer", json_path = ".spec.minReady"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.ready"),
    printcolumn(name = "In-Use", type_ = "integer", json_path = ".status.inUse"),
    printcolumn(name = "Providers", type_ = "string", json_path = ".status.providers"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct LabelSpec {
    /// Ready, unallocated nodes to keep at all times (Nodepool's `min-ready`). Default 0.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub min_ready: u32,
    /// Delete a ready, unallocated node older than this (Nodepool's `max-ready-age`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ready_age: Option<GoDuration>,
    /// Free text shown to users (Zuul's labels API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What is true of a label now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready nodes of this label (allocated or not).
    #[serde(default)]
    pub ready: u32,
    /// Nodes of this label in use by jobs.
    #[serde(default)]
    pub in_use: u32,
    /// Providers with a pool that serves this label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
}
