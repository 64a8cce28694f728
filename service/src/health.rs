//! Readiness: named checks that components of a binary keep current, plus a live check that
//! the apiserver answers. `/readyz` is ready when all of them pass.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

/// The readiness checks of one process. Cheap to clone; clones share the checks.
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<BTreeMap<&'static str, Result<(), String>>>>,
    apiserver: Option<kube::Client>,
}

impl Health {
    /// Health whose readiness also requires the apiserver behind `client` to answer.
    pub fn new(client: kube::Client) -> Self {
        Self { checks: Default::default(), apiserver: Some(client) }
    }

    /// Adds (or replaces) a check, failing with `reason` until [`Health::pass`] is called.
    pub fn pending(&self, name: &'static str, reason: impl Into<String>) {
        self.set(name, Err(reason.into()));
    }

    /// Marks a check as passing.
    pub fn pass(&self, name: &'static str) {
        self.set(name, Ok(()));
    }

    /// Marks a check as failing, with why.
    pub fn fail(&self, name: &'static str, reason: impl Into<String>) {
        self.set(name, Err(reason.into()));
    }

    fn set(&self, name: &'static str, result: Result<(), String>) {
        self.checks.lock().expect("health checks lock").insert(name, result);
    }

    /// Runs the checks: one line per check, and whether all passed.
    pub async fn readiness(&self) -> (bool, String) {
        let mut results: BTreeMap<&'static str, Result<(), String>> =
            self.checks.lock().expect("health checks lock").clone();
        if let Some(client) = &self.apiserver {
            let answer = tokio::time::timeout(Duration::from_secs(3), client.apiserver_version()).await;
            let result = match answer {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(format!("apiserver: {error}")),
                Err(_) => Err("apiserver: no answer within 3 s".to_owned()),
            };
            results.insert("apiserver", result);
        }
        let ready = results.values().all(Result::is_ok);
        let mut report = String::new();
        for (name, result) in &results {
            match result {
                Ok(()) => report.push_str(&format!("[+] {name} ok\n")),
                Err(reason) => report.push_str(&format!("[-] {name} failed: {reason}\n")),
            }
        }
        report.push_str(if ready { "readyz check passed\n" } else { "readyz check failed\n" });
        (ready, report)
    }
}
