//! A long-lived Zuul client (scheduler + executor built from Zuul 14.3's own classes) driven
//! command by command through `zuul_driver.py serve`, for tests that do things between steps
//! (kill the bridge, restart the operator, ...).

use std::process::Stdio;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::{stack::Stack, tools};

pub struct Zuul {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    /// Zuul's system id (the `requestor` of its requests).
    pub system_id: String,
}

impl Zuul {
    /// Starts the client against `stack`'s chroot and waits until it is connected.
    pub async fn connect(stack: &Stack) -> Result<Zuul> {
        let python = tools::cache_dir().join("venv-zuul/bin/python");
        let mut child = Command::new(&python)
            .arg(tools::repo_root().join("e2e/zuul/zuul_driver.py"))
            .arg("--testenv-json")
            .arg(stack.testenv_json()?)
            .args(["--chroot", &stack.chroot, "serve"])
            .env("ZUUL_VENV_PYTHON", &python)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stack.dir.join("logs/zuul.log"))?)
            .kill_on_drop(true)
            .spawn()
            .context("starting zuul_driver.py serve")?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let ready: Value =
            serde_json::from_str(&stdout.next_line().await?.context("zuul_driver exited at start")?)?;
        let system_id = ready["system_id"].as_str().context("no system id")?.to_owned();
        Ok(Zuul { child, stdin, stdout, next_id: 0, system_id })
    }

    /// Sends one command and returns its `result`; a failed command is an error.
    pub async fn call(&mut self, op: &str, mut args: Value) -> Result<Value> {
        self.next_id += 1;
        args["id"] = json!(self.next_id);
        args["op"] = json!(op);
        self.stdin.write_all(format!("{args}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let line =
            self.stdout.next_line().await?.with_context(|| format!("zuul_driver exited during {op}"))?;
        let answer: Value = serde_json::from_str(&line)?;
        if answer["ok"] != json!(true) {
            bail!("{op} failed: {} {}", answer["error_type"], answer["error"]);
        }
        Ok(answer["result"].clone())
    }

    /// Submits a request for `labels`; returns its id.
    pub async fn request(&mut self, labels: &[&str]) -> Result<String> {
        let result = self.call("request", json!({"labels": labels})).await?;
        Ok(result["request_id"].as_str().context("request id")?.to_owned())
    }

    /// Waits for the request to be fulfilled or failed; returns the `wait` result.
    pub async fn wait(&mut self, request_id: &str, timeout_seconds: u64) -> Result<Value> {
        self.call("wait", json!({"request_id": request_id, "timeout": timeout_seconds})).await
    }

    /// Accepts, uses and returns a fulfilled request's nodes, like an executor running a build.
    pub async fn run_build(&mut self, request_id: &str) -> Result<Value> {
        let build = self.call("accept", json!({"request_id": request_id})).await?["build"].clone();
        self.call("use", json!({"build": build})).await?;
        self.call("return", json!({"build": build})).await
    }
}

impl Drop for Zuul {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
