//! The lists Nodepool's operators know (`nodepool list`, `request-list`, `label-list`,
//! `image-list`), built from the custom resources: the `nodepool` command prints them, and the
//! operator serves them on Nodepool's web endpoints.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use nodepool_crds::{Image, Label, NodeRequest, PoolNode};

use crate::table::Table;

/// The node's ZooKeeper id (empty until the bridge registered it).
pub fn zk_id(node: &PoolNode) -> String {
    node.status.as_ref().and_then(|s| s.zuul_view()).and_then(|z| z.node_id.clone()).unwrap_or_default()
}

/// The node's state as Zuul and Nodepool name it.
pub fn node_state(node: &PoolNode) -> String {
    node.status.as_ref().map(|s| s.current_state()).unwrap_or_default().as_str().to_owned()
}

/// Nodepool's `dd:hh:mm:ss` since the node's state last changed.
fn age(node: &PoolNode) -> String {
    let since = node
        .status
        .as_ref()
        .and_then(|s| s.state_time.as_ref())
        .or(node.metadata.creation_timestamp.as_ref())
        .map(|t| t.0);
    let Some(since) = since else { return String::new() };
    let seconds = Timestamp::now().duration_since(since).as_secs().max(0);
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    format!("{days:02}:{:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Nodes with Nodepool's `list` columns (`--detail`: more of them), ordered by ZooKeeper id.
pub fn nodes<'a>(nodes: impl IntoIterator<Item = &'a PoolNode>, detail: bool) -> Table {
    let mut table = if detail {
        Table::new(&[
            "ID",
            "Name",
            "Provider",
            "Pool",
            "AZ",
            "Label",
            "Server ID",
            "Public IPv4",
            "Private IPv4",
            "IPv6",
            "Interface IP",
            "State",
            "Age",
            "Locked",
            "Allocated To",
            "Tenant",
            "Hold Job",
            "Comment",
        ])
    } else {
        Table::new(&["ID", "Provider", "Label", "Server ID", "Public IPv4", "IPv6", "State", "Age", "Locked"])
    };
    let mut nodes: Vec<&PoolNode> = nodes.into_iter().collect();
    nodes.sort_by(|a, b| zk_id(a).cmp(&zk_id(b)).then_with(|| a.name_any().cmp(&b.name_any())));
    for node in nodes {
        let status = node.status.clone().unwrap_or_default();
        let zuul = status.zuul_view().cloned().unwrap_or_default();
        let locked = if zuul.locked { "locked" } else { "unlocked" }.to_owned();
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        let label = node.spec.labels.join(",");
        if detail {
            let comment =
                zuul.comment.clone().or_else(|| node.spec.hold.as_ref().and_then(|h| h.comment.clone()));
            table.row(vec![
                zk_id(node),
                node.name_any(),
                node.spec.provider.clone(),
                node.spec.pool.clone(),
                text(&status.az),
                label,
                text(&status.external_id),
                text(&status.public_ipv4),
                text(&status.private_ipv4),
                text(&status.public_ipv6),
                text(&status.interface_ip),
                node_state(node),
                age(node),
                locked,
                text(&status.allocated_to),
                text(&status.tenant),
                text(&zuul.hold_job),
                text(&comment),
            ]);
        } else {
            table.row(vec![
                zk_id(node),
                node.spec.provider.clone(),
                label,
                text(&status.external_id),
                text(&status.public_ipv4),
                text(&status.public_ipv6),
                node_state(node),
                age(node),
                locked,
            ]);
        }
    }
    table
}

/// Node requests in Nodepool's order (Nodepool's `request-list`), with why each waits.
pub fn requests<'a>(requests: impl IntoIterator<Item = &'a NodeRequest>) -> Table {
    let mut requests: Vec<&NodeRequest> = requests.into_iter().collect();
    requests.sort_by(|a, b| a.spec.order().cmp(&b.spec.order()));
    let mut table = Table::new(&[
        "Request ID",
        "State",
        "Requestor",
        "Node Types",
        "Nodes",
        "Declined By",
        "Relative Priority",
        "Waiting For",
    ]);
    for request in requests {
        let status = request.status.clone().unwrap_or_default();
        let waiting =
            nodepool_crds::conditions::find(&status.conditions, nodepool_crds::conditions::types::WAITING)
                .filter(|c| c.status == "True")
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_default();
        table.row(vec![
            request.spec.request_id.clone(),
            status.state.as_str().to_owned(),
            request.spec.requestor.clone().unwrap_or_default(),
            request.spec.labels.join(","),
            status.nodes.join(","),
            status.declined_by.join(","),
            request.spec.relative_priority.to_string(),
            waiting,
        ]);
    }
    table
}

/// Labels with their ready and in-use nodes (Nodepool's `/label-list`, with counts).
pub fn labels<'a>(labels: impl IntoIterator<Item = &'a Label>) -> Table {
    let mut labels: Vec<&Label> = labels.into_iter().collect();
    labels.sort_by_key(|l| l.name_any());
    let mut table = Table::new(&["Label", "Min Ready", "Ready", "In Use", "Providers"]);
    for label in labels {
        let status = label.status.clone().unwrap_or_default();
        table.row(vec![
            label.name_any(),
            label.spec.min_ready.to_string(),
            status.ready.to_string(),
            status.in_use.to_string(),
            status.providers.join(","),
        ]);
    }
    table
}

/// What each provider resolved each image to (Nodepool's `image-list`).
pub fn images<'a>(images: impl IntoIterator<Item = &'a Image>) -> Table {
    let mut images: Vec<&Image> = images.into_iter().collect();
    images.sort_by_key(|i| i.name_any());
    let mut table = Table::new(&["Image", "Provider", "Provider Image ID", "Resolved At"]);
    for image in images {
        for resolved in image.status.iter().flat_map(|s| s.resolved.iter()) {
            table.row(vec![
                image.name_any(),
                resolved.provider.clone(),
                resolved.image_id.clone(),
                resolved.resolved_at.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
            ]);
        }
    }
    table
}

/// Whether each image is resolved for every provider that boots it (Nodepool's `image-status`).
pub fn image_status<'a>(images: impl IntoIterator<Item = &'a Image>) -> Table {
    let mut images: Vec<&Image> = images.into_iter().collect();
    images.sort_by_key(|i| i.name_any());
    let mut table = Table::new(&["Image", "Ready", "Reason", "Message", "Providers"]);
    for image in images {
        let status = image.status.clone().unwrap_or_default();
        let ready =
            nodepool_crds::conditions::find(&status.conditions, nodepool_crds::conditions::types::READY);
        let providers: Vec<&str> = status.resolved.iter().map(|r| r.provider.as_str()).collect();
        table.row(vec![
            image.name_any(),
            ready.map(|c| c.status.clone()).unwrap_or_else(|| "Unknown".into()),
            ready.map(|c| c.reason.clone()).unwrap_or_default(),
            ready.map(|c| c.message.clone()).unwrap_or_default(),
            providers.join(","),
        ]);
    }
    table
}
