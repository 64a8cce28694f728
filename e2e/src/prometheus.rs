//! A real Prometheus (Debian's `/usr/bin/prometheus`) on loopback, scraping the operator and the
//! bridge every second, queried over its HTTP API.

use std::{fs, net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    process::{self, Server},
    stack::free_address,
};

pub struct Prometheus {
    pub address: SocketAddr,
    server: Server,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus in `dir`, scraping each `(job, address)` every second.
    pub fn start(dir: &Path, targets: &[(&str, SocketAddr)]) -> Result<Prometheus> {
        fs::create_dir_all(dir.join("data"))?;
        let jobs: Vec<String> = targets
            .iter()
            .map(|(job, address)| {
                format!("  - job_name: {job}\n    static_configs: [{{targets: ['{address}']}}]\n")
            })
            .collect();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{}",
                jobs.concat()
            ),
        )?;
        let address = free_address()?;
        let mut command = Command::new("prometheus");
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={address}"));
        let server = process::spawn("prometheus", command, &dir.join("logs"))
            .context("starting prometheus (Debian package `prometheus`, installed by install-deps.sh)")?;
        Ok(Prometheus { address, server, http: reqwest::Client::new() })
    }

    /// Evaluates `expr` now; the result vector (or matrix), or the error Prometheus gives.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let url = format!("http://{}/api/v1/query", self.address);
        let answer: Value = self.http.post(&url).form(&[("query", expr)]).send().await?.json().await?;
        if answer["status"] != "success" {
            bail!("{expr}: {} {}", answer["errorType"], answer["error"]);
        }
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until every scrape target is up.
    pub async fn wait_for_targets(&self, count: usize) -> Result<()> {
        crate::wait::until("every scrape target up", Duration::from_secs(60), async || {
            let up = self.query("up == 1").await.unwrap_or_default();
            Ok((up.len() == count).then_some(()))
        })
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.server.stop(Duration::from_secs(5));
    }
}

/// GETs `http://address/path`: the status code and the body.
pub async fn get(address: SocketAddr, path: &str) -> Result<(u16, String)> {
    let response = reqwest::get(format!("http://{address}{path}")).await?;
    Ok((response.status().as_u16(), response.text().await?))
}
