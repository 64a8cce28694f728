//! moto's EC2 emulation (`moto_server`, from PyPI) on loopback, one server per test, and an
//! EC2 client to look at what the driver did there.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};

use crate::{
    process::{self, Server},
    tools,
};

/// The region the tests use.
pub const REGION: &str = "us-east-1";

pub struct Moto {
    pub server: Server,
    pub endpoint: String,
}

impl Moto {
    /// Starts a fresh moto server; its log goes to `logs/moto.log`.
    pub fn start(logs: &Path) -> Result<Moto> {
        Self::start_with_quotas(logs, &serde_json::json!({}))
    }

    /// Starts a fresh moto server whose account has these Service Quotas, e.g.
    /// `{"ec2": {"L-1216C47A": 32}}`: Service Quotas answers with them and EC2 refuses a launch
    /// past the standard families' vCPU quotas with `VcpuLimitExceeded` (`e2e/aws/moto_server.py`).
    pub fn start_with_quotas(logs: &Path, quotas: &serde_json::Value) -> Result<Moto> {
        let python = tools::cache_dir().join("venv-moto/bin/python");
        if !python.is_file() {
            bail!("{} is missing: run e2e/scripts/install-deps.sh", python.display());
        }
        let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("aws/moto_server.py");
        let port = process::free_port()?;
        let mut command = Command::new(python);
        command.arg(server).args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        command.env("NODEPOOL_E2E_SERVICE_QUOTAS", quotas.to_string());
        // Where moto's request recorder writes, once a test starts it (`start_recording`).
        command.env("MOTO_RECORDER_FILEPATH", logs.join(format!("moto-requests-{port}.jsonl")));
        let server = process::spawn("moto", command, logs)?;
        process::wait_for_port(&server, port, Duration::from_secs(30))?;
        Ok(Moto { server, endpoint: format!("http://127.0.0.1:{port}") })
    }

    /// Starts moto's request recorder afresh: every API request from now on is kept, as sent,
    /// and none from before.
    pub async fn start_recording(&self) -> Result<()> {
        let client = reqwest::Client::new();
        for action in ["reset-recording", "start-recording"] {
            let url = format!("{}/moto-api/recorder/{action}", self.endpoint);
            client.post(url).send().await?.error_for_status()?;
        }
        Ok(())
    }

    /// The EC2 query-API requests recorded since `start_recording`, as `(Action, form fields)`.
    pub async fn recorded_ec2_requests(&self) -> Result<Vec<(String, Vec<(String, String)>)>> {
        let url = format!("{}/moto-api/recorder/download-recording", self.endpoint);
        let text = reqwest::Client::new().get(url).send().await?.error_for_status()?.text().await?;
        let mut requests = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let record: serde_json::Value = serde_json::from_str(line)?;
            let body = record["body"].as_str().unwrap_or_default();
            let body = if record["body_encoded"] == true {
                use base64::Engine;
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(body)?)?
            } else {
                body.to_owned()
            };
            let fields: Vec<(String, String)> =
                form_urlencoded::parse(body.as_bytes()).into_owned().collect();
            if let Some((_, action)) = fields.iter().find(|(k, _)| k == "Action") {
                requests.push((action.clone(), fields.clone()));
            }
        }
        Ok(requests)
    }

    /// An EC2 client with moto's default credentials.
    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        self.ec2_with("testing", "testing")
    }

    pub fn ec2_with(&self, access_key: &str, secret_key: &str) -> aws_sdk_ec2::Client {
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new(access_key, secret_key, None, None, "e2e"))
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    /// Turns on moto's credential checks and returns a key pair that works (an IAM user with
    /// an `ec2:*` policy); any other key is refused with `AuthFailure` from then on.
    pub fn require_credentials(&self) -> Result<(String, String)> {
        let python = tools::cache_dir().join("venv-moto/bin/python");
        let script = r#"
import json, sys, urllib.request, boto3
endpoint = sys.argv[1]
def reset_auth(count):
    # A form content type (urllib's default) makes moto read an empty body.
    urllib.request.urlopen(urllib.request.Request(endpoint + "/moto-api/reset-auth", data=count.encode(),
                                                  method="POST", headers={"Content-Type": "text/plain"}))
reset_auth("inf")
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
iam.create_user(UserName="nodepool")
iam.put_user_policy(UserName="nodepool", PolicyName="ec2", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="nodepool")["AccessKey"]
reset_auth("0")
print(json.dumps([key["AccessKeyId"], key["SecretAccessKey"]]))
"#;
        let output = Command::new(python).args(["-c", script, &self.endpoint]).output()?;
        if !output.status.success() {
            bail!("setting up moto's IAM failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let (id, secret): (String, String) =
            serde_json::from_slice(&output.stdout).context("reading the access key moto made")?;
        Ok((id, secret))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.server.stop(Duration::ZERO);
    }
}
