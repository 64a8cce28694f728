//! OpenShift's project API (`project.openshift.io/v1`) and the objects of one node's project:
//! the record of what the node is, and the binding that makes its service account the
//! project's admin.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::ConfigMap,
        rbac::v1::{RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
    core::{ApiResource, DynamicObject, GroupVersionKind},
};
use nodepool_driver::cloud::CloudResult;
use nodepool_driver_kubernetes::{SERVICE_ACCOUNT, classify, objects::label_value};
use serde_json::json;

use crate::{RECORD, settings::OpenShiftLabelKind};

const GROUP: &str = "project.openshift.io";

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, "v1", kind), plural)
}

/// A project as far as the driver cares.
pub struct Project {
    pub name: String,
    pub terminating: bool,
}

impl Project {
    fn of(object: DynamicObject) -> Self {
        let terminating = object.metadata.deletion_timestamp.is_some()
            || object.data.pointer("/status/phase").and_then(|p| p.as_str()) == Some("Terminating");
        Project { name: object.metadata.name.unwrap_or_default(), terminating }
    }
}

/// The project API of one cluster, as the provider's account.
pub struct Projects {
    requests: Api<DynamicObject>,
    projects: Api<DynamicObject>,
}

impl Projects {
    pub fn new(client: &Client) -> Self {
        Projects {
            requests: Api::all_with(client.clone(), &resource("ProjectRequest", "projectrequests")),
            projects: Api::all_with(client.clone(), &resource("Project", "projects")),
        }
    }

    /// Requests project `name`. One that exists already is taken (a resumed launch made it).
    /// The labels go with the request, as Nodepool sends them; OpenShift's default template
    /// does not carry them to the project.
    pub async fn request(&self, name: &str, labels: &BTreeMap<String, String>) -> CloudResult<()> {
        let labels: BTreeMap<&String, String> = labels.iter().map(|(k, v)| (k, label_value(v))).collect();
        let body: DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("{GROUP}/v1"), "kind": "ProjectRequest",
            "metadata": {"name": name, "labels": labels},
        }))
        .expect("a ProjectRequest is a valid object");
        match self.requests.create(&PostParams::default(), &body).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(classify("requesting the project", error)),
        }
    }

    /// The project, or `None` once it is gone. OpenShift answers a project one may not see,
    /// which includes one deleted with the admin binding in it, as forbidden.
    pub async fn get(&self, name: &str) -> CloudResult<Option<Project>> {
        match self.projects.get(name).await {
            Ok(object) => Ok(Some(Project::of(object))),
            Err(kube::Error::Api(status)) if matches!(status.code, 403 | 404) => Ok(None),
            Err(error) => Err(classify("reading the project", error)),
        }
    }

    /// Deletes the project and everything in it; one already gone is no error.
    pub async fn delete(&self, name: &str) -> CloudResult<()> {
        match self.projects.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if matches!(status.code, 403 | 404) => Ok(()),
            Err(error) => Err(classify("deleting the project", error)),
        }
    }

    /// Every project the account may see.
    pub async fn list(&self) -> CloudResult<Vec<Project>> {
        let listed =
            self.projects.list(&ListParams::default()).await.map_err(|e| classify("listing projects", e))?;
        Ok(listed.items.into_iter().map(Project::of).collect())
    }

    /// Whether the account may request projects: OpenShift answers a list of project requests
    /// with a success status exactly then (what `oc new-project` asks first).
    pub async fn may_request(&self) -> CloudResult<()> {
        match self.requests.list(&ListParams::default()).await {
            Ok(_) => Ok(()),
            // A success Status is not a list; the call got through, which is what counts.
            Err(kube::Error::SerdeError(_)) => Ok(()),
            Err(error) => Err(classify("asking whether projects may be requested", error)),
        }
    }
}

/// What a node is, kept in its project (see [`RECORD`]): the ownership tags as labels, and what
/// Zuul needs to know as data.
pub fn record(
    project: &str,
    tags: &BTreeMap<String, String>,
    kind: OpenShiftLabelKind,
    pod: Option<&str>,
    python_path: Option<&str>,
    shell_type: Option<&str>,
) -> ConfigMap {
    let mut data = BTreeMap::from([("kind".to_owned(), kind.as_str().to_owned())]);
    for (key, value) in [("pod", pod), ("pythonPath", python_path), ("shellType", shell_type)] {
        if let Some(value) = value {
            data.insert(key.to_owned(), value.to_owned());
        }
    }
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(RECORD.to_owned()),
            namespace: Some(project.to_owned()),
            labels: Some(tags.iter().map(|(k, v)| (k.clone(), label_value(v))).collect()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// Makes the node's service account the project's admin, as Nodepool does (`admin-0`).
pub fn admin_binding(project: &str) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some("admin-0".to_owned()),
            namespace: Some(project.to_owned()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "admin".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: SERVICE_ACCOUNT.into(),
            namespace: Some(project.to_owned()),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_carries_the_tags_and_what_zuul_needs() {
        let tags = BTreeMap::from([("nodepool_provider_name".to_owned(), "oc".to_owned())]);
        let record = record("oc-x-a1", &tags, OpenShiftLabelKind::Pod, Some("box"), None, Some("sh"));
        assert_eq!(record.metadata.labels.unwrap()["nodepool_provider_name"], "oc");
        let data = record.data.unwrap();
        assert_eq!(
            (data["kind"].as_str(), data["pod"].as_str(), data["shellType"].as_str()),
            ("pod", "box", "sh")
        );
        assert!(!data.contains_key("pythonPath"));
    }
}
