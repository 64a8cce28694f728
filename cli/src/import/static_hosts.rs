//! A `static` provider: `pools[].nodes[]` → `pools[].hosts[]`.

use nodepool_crds::{ConnectionSettings, ConnectionType, GoDuration, provider::Pool};
use nodepool_driver_static::{HOSTS, StaticHost};

use super::{
    provider::{PoolDefaults, ProviderImport},
    yaml::{Field, Mapping},
};

pub fn import(provider: &mut Mapping, import: &mut ProviderImport) {
    let Some(pools) = provider.take("pools") else { return };
    for field in pools.list(&mut import.draft.notes) {
        let here = field.clone();
        let Some(mut pool) = field.mapping(&mut import.draft.notes) else { continue };
        let Some(base) = import.pool(&mut pool, &here, &PoolDefaults::default()) else { continue };
        let hosts: Vec<StaticHost> = pool
            .take("nodes")
            .map(|nodes| nodes.list(&mut import.draft.notes))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|node| host(node, import))
            .collect();
        pool.finish(&mut import.draft.notes);
        for (i, hosts) in split_by_name(hosts).into_iter().enumerate() {
            let mut pool = base.clone();
            if i > 0 {
                pool.name = format!("{}-{}", base.name, i + 1);
                import.draft.notes.changed(
                    &here,
                    format!("hosts named like an earlier one of this pool go to pool {:?}: host names are unique in a pool here", pool.name),
                );
            }
            set_hosts(&mut pool, &hosts);
            import.spec.pools.push(pool);
        }
    }
}

fn set_hosts(pool: &mut Pool, hosts: &[StaticHost]) {
    pool.driver_settings.insert(HOSTS, &hosts).expect("hosts serialize");
}

/// Nodepool tells hosts apart by name and port; here a pool's host names are unique. Hosts
/// sharing a name go to further pools with the same settings, the n-th of a name to the n-th.
fn split_by_name(hosts: Vec<StaticHost>) -> Vec<Vec<StaticHost>> {
    let mut pools: Vec<Vec<StaticHost>> = Vec::new();
    for host in hosts {
        match pools.iter_mut().find(|pool| pool.iter().all(|h| h.name != host.name)) {
            Some(pool) => pool.push(host),
            None => pools.push(vec![host]),
        }
    }
    if pools.is_empty() {
        pools.push(Vec::new());
    }
    pools
}

fn host(field: Field, import: &mut ProviderImport) -> Option<StaticHost> {
    let here = field.clone();
    let notes = &mut import.draft.notes;
    let mut node = field.mapping(notes)?;
    let name = node.take("name").and_then(|n| n.text(notes));
    let labels = node.take("labels").map(|l| l.words(notes)).unwrap_or_default();
    let mut connection = ConnectionSettings {
        username: node.take("username").and_then(|u| u.text(notes)),
        python_path: node.take("python-path").and_then(|p| p.text(notes)),
        shell_type: node.take("shell-type").and_then(|s| s.text(notes)),
        ..Default::default()
    };
    let mut usable = true;
    if let Some(field) = node.take("connection-type") {
        match field.text(notes).map(|t| serde_json::from_value::<ConnectionType>(t.into())) {
            Some(Ok(kind)) => connection.connection_type = Some(kind),
            Some(Err(_)) => {
                notes.invalid(
                    &field,
                    "a static host's connection type is ssh, winrm or network_cli; host not carried",
                );
                usable = false;
            }
            None => {}
        }
    }
    let port = node.take("connection-port").or_else(|| node.take("ssh-port"));
    connection.connection_port = port.and_then(|p| p.count(notes)).map(|p| p.clamp(1, 65535) as u16);
    let max_parallel_jobs =
        node.take("max-parallel-jobs").and_then(|m| m.count(notes)).unwrap_or(1).clamp(1, 1000) as u32;
    let timeout = node
        .take("timeout")
        .and_then(|t| t.number(notes))
        .map(|s| GoDuration::from_secs(s.ceil().max(1.0) as u64));
    let checking_field = node.take("host-key-checking");
    let mut host_key_checking = checking_field.as_ref().and_then(|c| c.flag(notes));
    let keys_field = node.take("host-key");
    let host_keys = keys_field.clone().map(|k| k.strings(notes)).unwrap_or_default();
    node.finish(notes);

    let (Some(name), true) = (name, usable) else {
        if usable {
            notes.invalid(&here, "a static node without a name");
        }
        return None;
    };
    if labels.is_empty() {
        notes.not_carried(
            &here,
            format!("static node {name:?} has no labels; a host here serves at least one"),
        );
        return None;
    }
    if connection.connection_type == Some(ConnectionType::Winrm) && host_key_checking != Some(false) {
        // Nodepool only checked that the WinRM port accepted a connection; here an SSH key scan
        // runs, which a WinRM host never answers.
        host_key_checking = Some(false);
        notes.changed(
            &checking_field.unwrap_or(here),
            "hostKeyChecking: false for a winrm host (an SSH key scan would never succeed)",
        );
    }
    if let (Some(keys), false) = (&keys_field, host_key_checking == Some(false)) {
        notes.changed(
            keys,
            "with host-key checking on, the scanned keys are handed to Zuul without comparing them to these",
        );
    }
    Some(StaticHost { name, labels, connection, max_parallel_jobs, host_keys, host_key_checking, timeout })
}
