//! The Compute Engine test double (`e2e/gce/gce_double.py`) on loopback, one per test, with a
//! service account whose key the driver authenticates with (the double checks every JWT).

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    process::{self, Server},
    tools,
};

pub const PROJECT: &str = "ci-project";
pub const REGION: &str = "us-central1";
pub const ZONE: &str = "us-central1-a";

pub struct GceDouble {
    pub server: Server,
    pub endpoint: String,
}

impl GceDouble {
    /// Starts a fresh double; instances boot after `boot_delay` seconds.
    pub fn start(logs: &Path, boot_delay: f64) -> Result<GceDouble> {
        let port = process::free_port()?;
        let mut command = Command::new("python3");
        command.arg(tools::repo_root().join("e2e/gce/gce_double.py")).args([
            "--port",
            &port.to_string(),
            "--boot-delay",
            &boot_delay.to_string(),
            "--delete-delay",
            "0.2",
        ]);
        let server = process::spawn("gce-double", command, logs)?;
        process::wait_for_port(&server, port, Duration::from_secs(30))?;
        Ok(GceDouble { server, endpoint: format!("http://127.0.0.1:{port}") })
    }

    /// Calls one of the double's control endpoints (`/double/...`) and returns its JSON answer.
    pub fn control(&self, method: &str, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let output = Command::new("curl")
            .args(["-sS", "--fail-with-body", "-X", method, "-H", "Content-Type: application/json"])
            .args(["--data-binary", &body.to_string()])
            .arg(format!("{}{path}", self.endpoint))
            .output()
            .context("running curl")?;
        if !output.status.success() {
            bail!(
                "{method} {path}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        if output.stdout.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&output.stdout).with_context(|| format!("{method} {path}: not JSON"))
    }

    /// A new service account of the test project; returns its key JSON.
    pub fn service_account(&self, account: &str) -> Result<serde_json::Value> {
        self.control(
            "POST",
            "/double/service-accounts",
            serde_json::json!({"project": PROJECT, "accountId": account}),
        )
    }

    /// Everything the double holds (instances with the request that created them, quotas, ...).
    pub fn state(&self) -> Result<serde_json::Value> {
        let output = Command::new("curl")
            .args(["-sS", "--fail"])
            .arg(format!("{}/double/state", self.endpoint))
            .output()?;
        serde_json::from_slice(&output.stdout).context("reading /double/state")
    }
}

impl Drop for GceDouble {
    fn drop(&mut self) {
        self.server.stop(Duration::ZERO);
    }
}
