//! The static driver: a static host serves `maxParallelJobs` nodes ("slots"). Nothing is launched;
//! a slot is registered once its host answers, and registered afresh after every use.
//!
//! Host keys are scanned with OpenSSH's `ssh-keyscan`, which performs a real SSH key exchange
//! with the host (as Nodepool's paramiko-based scan does), run as a child process so a slow host
//! never blocks anything else.

use std::time::Duration;

use nodepool_crds::{
    ConnectionSettings, Provider,
    provider::{Pool, StaticHost},
};
use tokio::{net::TcpStream, process::Command};

/// Default time a reachability check or key scan may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One node a static provider should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub pool: String,
    pub host: String,
    pub slot: u32,
    pub labels: Vec<String>,
}

/// Every slot of every host of a static provider's pools.
pub fn desired_slots(provider: &Provider) -> Vec<Slot> {
    provider
        .spec
        .pools
        .iter()
        .flat_map(|pool| {
            pool.hosts.iter().flatten().flat_map(move |host| {
                (0..host.max_parallel_jobs).map(move |slot| Slot {
                    pool: pool.name.clone(),
                    host: host.name.clone(),
                    slot,
                    labels: host.labels.clone(),
                })
            })
        })
        .collect()
}

/// The pool and host configuration of `host` in `provider`.
pub fn find_host<'a>(provider: &'a Provider, pool: &str, host: &str) -> Option<(&'a Pool, &'a StaticHost)> {
    let pool = provider.spec.pools.iter().find(|p| p.name == pool)?;
    let host = pool.hosts.iter().flatten().find(|h| h.name == host)?;
    Some((pool, host))
}

/// How Zuul connects to a host: its own settings with Nodepool's defaults.
pub fn connection(host: &StaticHost) -> ConnectionSettings {
    let defaults = ConnectionSettings {
        username: Some("zuul".into()),
        connection_type: Some(Default::default()),
        connection_port: Some(22),
        python_path: Some("auto".into()),
        shell_type: None,
    };
    host.connection.or(&defaults)
}

/// Whether host keys are scanned for `host` (host setting, else the pool's).
pub fn host_key_checking(pool: &Pool, host: &StaticHost) -> bool {
    host.host_key_checking.unwrap_or(pool.host_key_checking)
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("{host}:{port} unreachable: {reason}")]
    Unreachable { host: String, port: u16, reason: String },
    #[error("ssh-keyscan of {host}:{port} returned no host keys{detail}")]
    NoKeys { host: String, port: u16, detail: String },
    #[error("running ssh-keyscan: {0}")]
    Spawn(std::io::Error),
}

/// Opens (and closes) a TCP connection to the host's port.
pub async fn check_reachable(host: &str, port: u16, timeout: Duration) -> Result<(), ProbeError> {
    let unreachable = |reason: String| ProbeError::Unreachable { host: host.to_owned(), port, reason };
    // Resolved off the runtime's threads (`lookup_host`) and within the timeout: this runs on the
    // scheduler's path before every hand-out, and a slow DNS server must not stall it.
    let connect = async {
        let address = tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut addresses| addresses.next())
            .ok_or_else(|| ProbeError::Resolve(host.to_owned()))?;
        TcpStream::connect(address).await.map_err(|error| unreachable(error.to_string()))
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result.map(drop),
        Err(_) => Err(unreachable(format!("no answer within {timeout:?}"))),
    }
}

/// Scans the host's SSH keys; returns them as `<type> <base64>` lines, sorted.
pub async fn scan_host_keys(host: &str, port: u16, timeout: Duration) -> Result<Vec<String>, ProbeError> {
    check_reachable(host, port, timeout).await?;
    let seconds = timeout.as_secs().max(1).to_string();
    let output = Command::new("ssh-keyscan")
        .args(["-T", &seconds, "-p", &port.to_string(), host])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(ProbeError::Spawn)?;
    let keys = parse_keyscan(&String::from_utf8_lossy(&output.stdout));
    if keys.is_empty() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail =
            stderr.lines().find(|l| !l.starts_with('#')).map(|l| format!(": {l}")).unwrap_or_default();
        return Err(ProbeError::NoKeys { host: host.to_owned(), port, detail });
    }
    Ok(keys)
}

/// `ssh-keyscan` prints `host keytype base64` per key and `# ...` comments.
fn parse_keyscan(output: &str) -> Vec<String> {
    let mut keys: Vec<String> = output
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_host, key_type, key) = (fields.next()?, fields.next()?, fields.next()?);
            Some(format!("{key_type} {key}"))
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(yaml: serde_json::Value) -> Provider {
        Provider::new("lab", serde_json::from_value(yaml).unwrap())
    }

    #[tokio::test]
    async fn a_probe_tells_a_name_that_does_not_resolve_from_a_port_that_does_not_answer() {
        // `.invalid` never resolves (RFC 2606); generous, for a resolver that is slow to say so.
        let error = check_reachable("no-such-host.invalid", 22, Duration::from_secs(60)).await.unwrap_err();
        assert!(matches!(error, ProbeError::Resolve(ref host) if host == "no-such-host.invalid"), "{error}");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let timeout = Duration::from_secs(5);
        check_reachable("127.0.0.1", port, timeout).await.unwrap();
        drop(listener); // nothing listens there now
        let error = check_reachable("127.0.0.1", port, timeout).await.unwrap_err();
        assert!(matches!(error, ProbeError::Unreachable { port: p, .. } if p == port), "{error}");
    }

    #[test]
    fn every_host_gets_max_parallel_jobs_slots() {
        let provider = provider(serde_json::json!({
            "driver": "static",
            "pools": [{"name": "a", "hosts": [
                {"name": "h1", "labels": ["x"], "maxParallelJobs": 2},
                {"name": "h2", "labels": ["x", "y"]},
            ]}]
        }));
        let slots = desired_slots(&provider);
        let names: Vec<_> = slots.iter().map(|s| (s.host.as_str(), s.slot)).collect();
        assert_eq!(names, [("h1", 0), ("h1", 1), ("h2", 0)]);
        assert_eq!(slots[2].labels, ["x", "y"]);
    }

    #[test]
    fn connection_defaults_are_nodepools() {
        let provider = provider(serde_json::json!({
            "driver": "static",
            "pools": [{"name": "a", "hosts": [{"name": "h", "labels": ["x"], "connectionPort": 2022}]}]
        }));
        let (pool, host) = find_host(&provider, "a", "h").unwrap();
        let connection = connection(host);
        assert_eq!(connection.username.as_deref(), Some("zuul"));
        assert_eq!(connection.connection_port, Some(2022));
        assert_eq!(connection.python_path.as_deref(), Some("auto"));
        assert!(host_key_checking(pool, host));
    }

    #[test]
    fn parses_keyscan_output() {
        let output = "# 127.0.0.1:22 SSH-2.0-OpenSSH_9.2\n[127.0.0.1]:2222 ssh-ed25519 AAAAC3Nza\n[127.0.0.1]:2222 ssh-rsa AAAAB3Nza\n";
        assert_eq!(parse_keyscan(output), ["ssh-ed25519 AAAAC3Nza", "ssh-rsa AAAAB3Nza"]);
    }
}
