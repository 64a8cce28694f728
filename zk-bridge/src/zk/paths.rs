//! The znode layout shared with Zuul (zk-protocol.md §1).

pub const REQUESTS: &str = "/nodepool/requests";
pub const REQUEST_LOCKS: &str = "/nodepool/requests-lock";
pub const NODES: &str = "/nodepool/nodes";
pub const POOL_COMPONENTS: &str = "/nodepool/components/pool";
pub const LAUNCHER_COMPONENTS: &str = "/nodepool/components/launcher";

pub fn request(id: &str) -> String {
    format!("{REQUESTS}/{id}")
}

pub fn request_lock(id: &str) -> String {
    format!("{REQUEST_LOCKS}/{id}")
}

pub fn node(id: &str) -> String {
    format!("{NODES}/{id}")
}

pub fn node_lock(id: &str) -> String {
    format!("{NODES}/{id}/lock")
}

/// What a path below `/nodepool` names.
#[derive(Debug, PartialEq, Eq)]
pub enum Znode<'a> {
    Request(&'a str),
    Node(&'a str),
    /// `/nodepool/nodes/<id>/lock` (`contender` none) or a contender in it.
    NodeLock {
        node: &'a str,
        contender: Option<&'a str>,
    },
    /// `/nodepool/components/pool/<name>`: any launcher's pool component.
    Component,
    Other,
}

pub fn classify(path: &str) -> Znode<'_> {
    if let Some(rest) = path.strip_prefix(REQUESTS).and_then(|rest| rest.strip_prefix('/')) {
        if !rest.is_empty() && !rest.contains('/') {
            return Znode::Request(rest);
        }
    } else if let Some(rest) = path.strip_prefix(NODES).and_then(|rest| rest.strip_prefix('/')) {
        let mut parts = rest.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(id), None, _) if !id.is_empty() => return Znode::Node(id),
            (Some(id), Some("lock"), contender) => return Znode::NodeLock { node: id, contender },
            _ => {}
        }
    }
    if path.strip_prefix(POOL_COMPONENTS).is_some_and(|rest| rest.starts_with('/') && rest.len() > 1) {
        return Znode::Component;
    }
    Znode::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        assert_eq!(classify("/nodepool/requests/200-0000000001"), Znode::Request("200-0000000001"));
        assert_eq!(classify("/nodepool/requests"), Znode::Other);
        assert_eq!(classify("/nodepool/components/pool/np1-0000000001"), Znode::Component);
        assert_eq!(classify("/nodepool/components/pool"), Znode::Other);
        assert_eq!(classify("/nodepool/requests-lock/200-0000000001"), Znode::Other);
        assert_eq!(classify("/nodepool/nodes/0000000003"), Znode::Node("0000000003"));
        assert_eq!(
            classify("/nodepool/nodes/0000000003/lock"),
            Znode::NodeLock { node: "0000000003", contender: None }
        );
        assert_eq!(
            classify("/nodepool/nodes/0000000003/lock/abc__lock__0000000000"),
            Znode::NodeLock { node: "0000000003", contender: Some("abc__lock__0000000000") }
        );
        assert_eq!(classify("/nodepool/nodes/0000000003/other"), Znode::Other);
    }
}
