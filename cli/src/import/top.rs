//! The top level of `nodepool.yaml`: what becomes objects, what becomes Helm values or flags,
//! and what belongs to `nodepool-builder`.

use nodepool_crds::{TenantLimit, TenantLimitSpec, provider::ResourceLimits};

use super::{Draft, drivers, labels, manifest, origin, provider, yaml::Field};

/// `nodepool-builder`'s settings: there is no image builder here.
const BUILDER: &[&str] =
    &["diskimages", "elements-dir", "images-dir", "build-log-dir", "build-log-retention"];

pub fn import(root: Field, draft: &mut Draft) {
    if matches!(root.node, super::yaml::Node::Null) {
        return;
    }
    let Some(mut top) = root.mapping(&mut draft.notes) else { return };
    let notes = &mut draft.notes;
    if let Some(servers) = top.take("zookeeper-servers") {
        let where_ = zookeeper_hosts(servers.clone(), notes);
        notes.elsewhere(&servers, where_);
    }
    if let Some(tls) = top.take("zookeeper-tls") {
        notes.elsewhere(
            &tls,
            "a Secret with the CA, certificate and key (Helm zookeeper.tlsSecret; bridge --zookeeper-tls-ca/-cert/-key)",
        );
    }
    if let Some(timeout) = top.take("zookeeper-timeout") {
        let seconds = timeout.number(notes).map_or_else(|| "?".into(), |s| s.ceil().to_string());
        notes.elsewhere(
            &timeout,
            format!("Helm zookeeper.sessionTimeout: {seconds} (bridge --zookeeper-session-timeout)"),
        );
    }
    if let Some(webapp) = top.take("webapp") {
        notes.elsewhere(
            &webapp,
            "Helm httpPort (--http-address): the operator serves Nodepool's web endpoints there",
        );
    }
    if let Some(age) = top.take("max-hold-age") {
        let seconds = age.int(notes).unwrap_or(0);
        let value = if seconds > 0 { seconds.to_string() } else { "unset (unlimited)".into() };
        notes.elsewhere(&age, format!("Helm operator.maxHoldAge: {value} (operator --max-hold-age)"));
    }
    for key in BUILDER {
        top.not_carried(key, "nodepool-builder has no counterpart: build images in your own pipeline and refer to them with an Image", notes);
    }
    if let Some(list) = top.take("labels") {
        for label in list.list(&mut draft.notes) {
            labels::import(label, draft);
        }
    }
    if let Some(list) = top.take("tenant-resource-limits") {
        for limit in list.list(&mut draft.notes) {
            tenant_limit(limit, draft);
        }
    }
    if let Some(list) = top.take("providers") {
        for field in list.list(&mut draft.notes) {
            provider::import(field, draft, drivers::reader);
        }
    }
    top.finish(&mut draft.notes);
}

/// `zookeeper-servers` as the bridge's `--zookeeper-hosts`.
fn zookeeper_hosts(servers: Field, notes: &mut super::Notes) -> String {
    let mut hosts = Vec::new();
    let mut chroot = None;
    for server in servers.list(notes) {
        let Some(mut server) = server.mapping(notes) else { continue };
        let host = server.take("host").and_then(|h| h.text(notes)).unwrap_or_default();
        let port = server.take("port").and_then(|p| p.count(notes)).unwrap_or(2281);
        hosts.push(format!("{host}:{port}"));
        chroot = chroot.or(server.take("chroot").and_then(|c| c.text(notes)));
    }
    format!(
        "bridge --zookeeper-hosts {}{} (Helm zookeeper.hosts and zookeeper.chroot)",
        hosts.join(","),
        chroot.unwrap_or_default()
    )
}

/// `tenant-resource-limits[]` → a `TenantLimit`.
fn tenant_limit(field: Field, draft: &mut Draft) {
    let here = field.clone();
    let Some(mut limit) = field.mapping(&mut draft.notes) else { return };
    let notes = &mut draft.notes;
    let Some(tenant) = limit.take("tenant-name").and_then(|t| t.text(notes)) else {
        notes.invalid(&here, "a tenant limit without tenant-name");
        limit.finish(notes);
        return;
    };
    let count = |key: &str, limit: &mut super::yaml::Mapping, notes: &mut super::Notes| {
        limit.take(key).and_then(|v| v.int(notes)).filter(|v| *v >= 0)
    };
    let mut limits = ResourceLimits {
        max_servers: count("max-servers", &mut limit, notes).map(|v| v.min(u32::MAX as i64) as u32),
        max_cores: count("max-cores", &mut limit, notes).map(|v| v.min(u32::MAX as i64) as u32),
        max_ram: count("max-ram", &mut limit, notes).map(|v| v as u64),
        ..Default::default()
    };
    // Nodepool: `max-volumes` and `max-volume-gb` limit `volumes` and `volume-gb`; any other key
    // limits the resource of that name.
    for (key, resource) in [("max-volumes", "volumes"), ("max-volume-gb", "volume-gb")] {
        if let Some(count) = count(key, &mut limit, notes) {
            limits.max_resources.insert(resource.to_owned(), count as u64);
        }
    }
    for key in limit.keys() {
        let Some(value) = limit.take(&key) else { continue };
        match value.int(notes) {
            Some(count) if count >= 0 => {
                limits.max_resources.insert(key, count as u64);
            }
            // Nodepool: a negative limit is no limit; `int` has noted a value that is no number.
            _ => {}
        }
    }
    let Some(name) = draft.name_for("TenantLimit", &tenant, &here) else { return };
    let object = TenantLimit::new(&name, TenantLimitSpec { tenant, limits });
    draft.tenant_limits.push((origin(&here), manifest(&object)));
}
