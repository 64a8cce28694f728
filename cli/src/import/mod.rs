//! `nodepool import`: the custom resources that reproduce a Nodepool 11 `nodepool.yaml`
//! (Providers, Labels, Images, TenantLimits, and Secret templates for credentials), with a note
//! for every setting that is not carried as written, naming its path and line.
//!
//! The mapping is `docs/migration.md` §1, setting by setting. Every key of the file is either
//! read or reported ([`yaml::Mapping::finish`]), so nothing is dropped without a word.

mod apply;
mod aws;
mod drivers;
mod gce;
mod images;
mod kubernetes;
mod labels;
mod names;
mod notes;
mod openshift;
mod openshift_pods;
mod provider;
mod static_hosts;
mod top;
mod yaml;

use std::collections::BTreeSet;

use kube::Resource;
use nodepool_crds::annotations::IMPORTED_FROM;
use serde::Serialize;

pub use apply::apply;
use notes::Notes;
pub use notes::{Note, NoteKind};
use yaml::Field;
pub use yaml::NotYaml;

/// Nodepool's `%(NODEPOOL_…)` substitution: each such variable of `environment` replaced by its
/// value, before the text is read as YAML (as Nodepool does).
pub fn substitute_env(text: &str, environment: impl IntoIterator<Item = (String, String)>) -> String {
    environment
        .into_iter()
        .filter(|(name, _)| name.starts_with("NODEPOOL_"))
        .fold(text.to_owned(), |text, (name, value)| text.replace(&format!("%({name})"), &value))
}

/// What a `nodepool.yaml` becomes.
#[derive(Debug, Serialize)]
pub struct Import {
    /// The objects to apply, Secrets (templates) first, then Images, Labels, TenantLimits and
    /// Providers: each refers only to objects before it.
    /// Each says where in the file it came from in the annotation [`IMPORTED_FROM`].
    pub items: Vec<serde_json::Value>,
    pub notes: Vec<Note>,
}

/// Reads `text` as a `nodepool.yaml`. Only text that is not YAML at all is an error; anything
/// else that cannot be carried is a note.
pub fn import(text: &str) -> Result<Import, NotYaml> {
    let root = yaml::parse(text)?;
    let mut draft = Draft::default();
    top::import(root, &mut draft);
    Ok(draft.finish())
}

/// The objects made so far, and the notes.
#[derive(Default)]
struct Draft {
    notes: Notes,
    secrets: Vec<(String, serde_json::Value)>,
    images: images::Images,
    labels: Vec<(String, serde_json::Value)>,
    tenant_limits: Vec<(String, serde_json::Value)>,
    providers: Vec<(String, serde_json::Value)>,
    /// Names taken, per kind, so that two Nodepool names that map to one object name do not
    /// overwrite each other.
    taken: BTreeSet<(&'static str, String)>,
}

impl Draft {
    /// A free object name of `kind` for Nodepool's `wanted`, noting any change on `field`.
    fn name_for(&mut self, kind: &'static str, wanted: &str, field: &Field) -> Option<String> {
        let Some(base) = names::object_name(wanted) else {
            self.notes.invalid(field, format!("{wanted:?} cannot be made a Kubernetes object name"));
            return None;
        };
        let mut name = base.clone();
        let mut n = 2;
        while !self.taken.insert((kind, name.clone())) {
            name = format!("{base}-{n}");
            n += 1;
        }
        if name != wanted {
            self.notes.changed(
                field,
                format!("the {kind} is named {name:?} (object names are lowercase letters, digits, '-' and '.', and unique)"),
            );
        }
        Some(name)
    }

    fn finish(self) -> Import {
        let images = self.images.into_objects();
        let items = self
            .secrets
            .into_iter()
            .chain(images)
            .chain(self.labels)
            .chain(self.tenant_limits)
            .chain(self.providers)
            .map(|(origin, mut object)| {
                object["metadata"]["annotations"][IMPORTED_FROM] = origin.into();
                object
            })
            .collect();
        Import { items, notes: self.notes.into_vec() }
    }
}

/// `object` as JSON with its apiVersion and kind.
fn manifest<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> serde_json::Value {
    let mut value = serde_json::to_value(object).expect("a custom resource serializes");
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    value
}

/// `providers[1] (line 40)`: where an object came from, for the comment above it.
fn origin(field: &Field) -> String {
    format!("{} (line {})", field.path, field.line)
}

/// The manifests as one YAML stream.
pub fn render_yaml(import: &Import) -> anyhow::Result<String> {
    let mut out = String::new();
    for object in &import.items {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(object)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
