//! Is a host there, and what are its SSH host keys.
//!
//! Host keys are scanned with OpenSSH's `ssh-keyscan`, which performs a real SSH key exchange
//! with the host (as Nodepool's paramiko-based scan does), run as a child process so a slow host
//! never blocks anything else. Only nodes whose connection type is `ssh` are scanned.

use std::time::Duration;

use tokio::{net::TcpStream, process::Command};

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
    fn parses_keyscan_output() {
        let output = "# 127.0.0.1:22 SSH-2.0-OpenSSH_9.2\n[127.0.0.1]:2222 ssh-ed25519 AAAAC3Nza\n[127.0.0.1]:2222 ssh-rsa AAAAB3Nza\n";
        assert_eq!(parse_keyscan(output), ["ssh-ed25519 AAAAC3Nza", "ssh-rsa AAAAB3Nza"]);
    }
}
