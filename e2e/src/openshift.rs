//! OpenShift's project API (`e2e/openshift/openshift_api.py`) on loopback, in front of the test
//! environment's real kube-apiserver, one per test: what the OpenShift driver talks to.

use std::{process::Command, time::Duration};

use anyhow::Result;

use crate::{
    process::{self, Server},
    stack::Stack,
    tools,
};

pub struct OpenShiftApi {
    pub server: Server,
    /// `https://127.0.0.1:<port>`, served with the apiserver's certificate (the environment's CA).
    pub url: String,
}

impl OpenShiftApi {
    pub fn start(stack: &Stack) -> Result<OpenShiftApi> {
        let pki = stack.env.info.dir.join("pki");
        let port = process::free_port()?;
        let mut command = Command::new("python3");
        command
            .arg(tools::repo_root().join("e2e/openshift/openshift_api.py"))
            .args(["--port", &port.to_string(), "--apiserver", &stack.env.info.apiserver])
            .arg("--ca")
            .arg(pki.join("ca.crt"))
            .arg("--client-cert")
            .arg(pki.join("admin.crt"))
            .arg("--client-key")
            .arg(pki.join("admin.key"))
            .arg("--serving-cert")
            .arg(pki.join("apiserver.crt"))
            .arg("--serving-key")
            .arg(pki.join("apiserver.key"));
        let server = process::spawn("openshift-api", command, &stack.logs())?;
        process::wait_for_port(&server, port, Duration::from_secs(30))?;
        Ok(OpenShiftApi { server, url: format!("https://127.0.0.1:{port}") })
    }
}
