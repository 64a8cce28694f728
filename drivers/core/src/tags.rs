//! Tags (AWS) and labels (GCE) on everything the project creates. They say which installation,
//! provider, pool and node a resource belongs to, so two installations can share one cloud
//! account and a resource nobody owns any more can be recognised as leaked.

use std::collections::BTreeMap;

use nodepool_crds::provider::PoolLabel;

/// The provider name (Nodepool's tag of the same name).
pub const PROVIDER: &str = "nodepool_provider_name";
/// The `PoolNode` name (Nodepool's tag of the same name, which holds its node id).
pub const NODE_ID: &str = "nodepool_node_id";
/// The pool name (Nodepool's tag of the same name).
pub const POOL: &str = "nodepool_pool_name";
/// The label (Nodepool's tag of the same name).
pub const LABEL: &str = "nodepool_node_label";
/// Which installation of nodepool-operator created it.
pub const SYSTEM_ID: &str = "nodepool_system_id";
/// The `Image` an uploaded image or snapshot is for (its owner, as a node is an instance's).
pub const IMAGE: &str = "nodepool_image";

/// What a launch knows about the node and its request, for formatting dynamic tags.
#[derive(Clone, Debug, Default)]
pub struct TagContext {
    pub system_id: String,
    pub provider: String,
    pub pool: String,
    pub node: String,
    pub label: String,
    pub request_id: Option<String>,
    pub tenant: Option<String>,
    pub requestor: Option<String>,
}

/// Every tag of one instance: the label's static tags, its dynamic tags formatted from the
/// request, then the ownership tags (which nothing may override).
pub fn instance_tags(label: &PoolLabel, context: &TagContext) -> BTreeMap<String, String> {
    let mut tags = label.tags.clone();
    for (key, template) in &label.dynamic_tags {
        tags.insert(key.clone(), format_dynamic(template, context));
    }
    tags.insert(SYSTEM_ID.into(), context.system_id.clone());
    tags.insert(PROVIDER.into(), context.provider.clone());
    tags.insert(POOL.into(), context.pool.clone());
    tags.insert(NODE_ID.into(), context.node.clone());
    tags.insert(LABEL.into(), context.label.clone());
    tags
}

/// Formats `{request.tenant_name}`-style fields (Nodepool's `dynamic-tags`). Fields without a
/// value become empty; an unknown field is left as written, so a typo shows on the instance.
pub fn format_dynamic(template: &str, context: &TagContext) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let field = &rest[start + 1..start + end];
        let value = match field {
            "request.id" => context.request_id.clone(),
            "request.tenant_name" => context.tenant.clone(),
            "request.requestor" => context.requestor.clone(),
            "node.id" => Some(context.node.clone()),
            "node.provider" => Some(context.provider.clone()),
            "node.pool" => Some(context.pool.clone()),
            "node.label" => Some(context.label.clone()),
            _ => {
                out.push_str(&rest[start..start + end + 1]);
                rest = &rest[start + end + 1..];
                continue;
            }
        };
        out.push_str(&value.unwrap_or_default());
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Whether an instance's tags say it belongs to this installation's provider.
pub fn owned_by(tags: &BTreeMap<String, String>, system_id: &str, provider: &str) -> bool {
    tags.get(SYSTEM_ID).map(String::as_str) == Some(system_id)
        && tags.get(PROVIDER).map(String::as_str) == Some(provider)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> TagContext {
        TagContext {
            system_id: "sys".into(),
            provider: "aws-east".into(),
            pool: "main".into(),
            node: "aws-east-x1".into(),
            label: "ubuntu".into(),
            request_id: Some("200-0000000001".into()),
            tenant: Some("openstack".into()),
            requestor: None,
        }
    }

    #[test]
    fn dynamic_tags_are_formatted_and_unknown_fields_kept() {
        let formatted =
            format_dynamic("{request.tenant_name}/{node.label} by {request.requestor}{x.y}", &context());
        assert_eq!(formatted, "openstack/ubuntu by {x.y}");
        assert_eq!(format_dynamic("open {brace", &context()), "open {brace");
    }

    #[test]
    fn ownership_tags_cannot_be_overridden_by_a_label() {
        let mut label = PoolLabel::named("ubuntu");
        label.tags =
            BTreeMap::from([(PROVIDER.to_owned(), "someone-else".to_owned()), ("team".into(), "ci".into())]);
        label.dynamic_tags = BTreeMap::from([("tenant".to_owned(), "{request.tenant_name}".to_owned())]);
        let tags = instance_tags(&label, &context());
        assert_eq!(tags[PROVIDER], "aws-east");
        assert_eq!(tags["team"], "ci");
        assert_eq!(tags["tenant"], "openstack");
        assert!(owned_by(&tags, "sys", "aws-east"));
        assert!(!owned_by(&tags, "other-installation", "aws-east"));
    }
}
