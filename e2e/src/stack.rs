//! The whole system for one test: its own namespace and ZooKeeper chroot in the shared
//! environment, a real sshd for static hosts, and the `nodepool-operator` and
//! `nodepool-zk-bridge` binaries running as separate processes, as in production.

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use nodepool_crds::{NodeState, PoolNode, Provider};
use zookeeper_client::{Acls, CreateMode};

use crate::{
    TestEnv, cluster,
    process::{self, Server},
    sshd::Sshd,
    tools,
};

pub struct Stack {
    pub env: TestEnv,
    pub client: Client,
    pub namespace: String,
    /// ZooKeeper chroot shared by the bridge and Zuul in this test, e.g. `/e2e-zuul-x1y2z`.
    pub chroot: String,
    pub dir: PathBuf,
    pub sshd: Sshd,
    pub operator: Option<Server>,
    pub bridge: Option<Server>,
    /// Where the operator and the bridge serve `/metrics`, `/healthz` and `/readyz`.
    pub operator_http: SocketAddr,
    pub bridge_http: SocketAddr,
    /// Run operator and bridge with their production cleanup intervals (60 s, and 8 h for
    /// orphaned request locks) instead of the tests' 1 s; benchmarks measure what a site runs.
    pub production_intervals: bool,
}

/// A loopback address with a port free right now (for a child process to bind).
pub fn free_address() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], crate::process::free_port()?)))
}

/// A workspace binary next to the running one: `target/debug/NAME`, seen from a binary in
/// `target/debug` or from a test in `target/debug/deps`; or in `$NODEPOOL_E2E_BINARIES`.
pub fn binary(name: &str) -> Result<PathBuf> {
    // Another build's binaries (an older commit's, to compare against) when asked for.
    if let Some(dir) = std::env::var_os("NODEPOOL_E2E_BINARIES") {
        let path = PathBuf::from(dir).join(name);
        return path
            .is_file()
            .then_some(path.clone())
            .with_context(|| format!("{} is missing", path.display()));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the running binary has no directory")?;
    let candidates = [dir.join(name), dir.parent().map(|p| p.join(name)).unwrap_or_default()];
    candidates.into_iter().find(|path| path.is_file()).with_context(|| {
        format!("{name} is missing next to {}: run `cargo build --workspace --bins` first", exe.display())
    })
}

impl Stack {
    /// Starts operator, bridge and sshd for a test called `name`.
    pub async fn start(name: &str) -> Result<Stack> {
        let mut stack = Stack::prepare(name).await?;
        stack.start_operator()?;
        stack.start_bridge()?;
        Ok(stack)
    }

    /// A namespace, a ZooKeeper chroot and an sshd for a test called `name`, without operator
    /// or bridge (for tests that start their own).
    pub async fn prepare(name: &str) -> Result<Stack> {
        Self::prepare_in(TestEnv::shared().await?, name).await
    }

    /// As [`Stack::prepare`], on the environment `env` instead of the shared one.
    pub async fn prepare_in(env: TestEnv, name: &str) -> Result<Stack> {
        let client = env.kube_client().await?;
        cluster::install_crds(&client).await?;
        let namespace = cluster::fresh_namespace(&client, name).await?;
        let chroot = format!("/{namespace}");
        let root = env.zookeeper(None).await?;
        match root.create(&chroot, b"", &CreateMode::Persistent.with_acls(Acls::anyone_all())).await {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
            Err(error) => return Err(error).context("creating the test chroot"),
        }
        let dir = env.info.dir.join("stacks").join(&namespace);
        fs::create_dir_all(&dir)?;
        let sshd = Sshd::start(&dir.join("sshd"))?;
        Ok(Stack {
            env,
            client,
            namespace,
            chroot,
            dir,
            sshd,
            operator: None,
            bridge: None,
            operator_http: free_address()?,
            bridge_http: free_address()?,
            production_intervals: false,
        })
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    fn with_env(&self, mut command: Command) -> Command {
        command
            .env("KUBECONFIG", &self.env.info.kubeconfig)
            .env("NODEPOOL_NAMESPACE", &self.namespace)
            .env("RUST_LOG", std::env::var("NODEPOOL_E2E_LOG").unwrap_or_else(|_| "info".into()));
        command
    }

    pub fn start_operator(&mut self) -> Result<()> {
        self.start_operator_with(&[])
    }

    /// Starts the operator with `env` added (e.g. `NODEPOOL_FAILPOINTS`).
    pub fn start_operator_with(&mut self, env: &[(&str, &str)]) -> Result<()> {
        let address = self.operator_http.to_string();
        let mut env = env.to_vec();
        env.push(("NODEPOOL_HTTP_ADDRESS", &address));
        self.operator = Some(self.spawn_operator("operator", &env)?);
        Ok(())
    }

    /// Starts an operator process logging to `<name>.log`; `env` adds to or overrides the
    /// test defaults (e.g. another `KUBECONFIG`, leader election).
    pub fn spawn_operator(&self, name: &str, env: &[(&str, &str)]) -> Result<Server> {
        let mut command = self.with_env(Command::new(binary("nodepool-operator")?));
        // Leak cleanup every second, so tests need not wait Nodepool's 60 s.
        if !self.production_intervals {
            command.env("NODEPOOL_CLEANUP_INTERVAL", "1");
        }
        command.envs(env.iter().copied());
        process::spawn(name, command, &self.logs())
    }

    pub fn start_bridge(&mut self) -> Result<()> {
        self.start_bridge_with(&[])
    }

    /// Starts the bridge with `env` added (e.g. `NODEPOOL_FAILPOINTS`).
    pub fn start_bridge_with(&mut self, env: &[(&str, &str)]) -> Result<()> {
        let address = self.bridge_http.to_string();
        let mut env = env.to_vec();
        env.push(("NODEPOOL_HTTP_ADDRESS", &address));
        self.bridge = Some(self.spawn_bridge("bridge", &env)?);
        Ok(())
    }

    /// Starts a bridge process logging to `<name>.log`, connected to the test's chroot; `env`
    /// adds to or overrides the test defaults.
    pub fn spawn_bridge(&self, name: &str, env: &[(&str, &str)]) -> Result<Server> {
        let zk = &self.env.info.zookeeper;
        let mut command = self.with_env(Command::new(binary("nodepool-zk-bridge")?));
        command
            .env("NODEPOOL_ZOOKEEPER_HOSTS", format!("{}{}", zk.hosts, self.chroot))
            .env("NODEPOOL_ZOOKEEPER_TLS_CA", &zk.tls_ca)
            .env("NODEPOOL_ZOOKEEPER_TLS_CERT", &zk.tls_cert)
            .env("NODEPOOL_ZOOKEEPER_TLS_KEY", &zk.tls_key)
            .env("NODEPOOL_HOSTNAME", "e2e-bridge");
        if !self.production_intervals {
            // Tests cannot wait Nodepool's 60 s and 8 h: clean up every second, and remove an
            // orphan znode 2 s after its last write (30 s in production).
            command
                .env("NODEPOOL_CLEANUP_INTERVAL", "1")
                .env("NODEPOOL_REQUEST_LOCK_MAX_AGE", "1")
                .env("NODEPOOL_ORPHAN_GRACE", "2");
        }
        command.envs(env.iter().copied());
        process::spawn(name, command, &self.logs())
    }

    /// Kills the bridge at once (SIGKILL: no clean shutdown), as a crash would.
    pub fn kill_bridge(&mut self) {
        if let Some(bridge) = self.bridge.take() {
            bridge.stop(Duration::ZERO);
            wait_until_bindable(self.bridge_http);
        }
    }

    /// Kills the operator at once, as a crash would.
    pub fn kill_operator(&mut self) {
        if let Some(operator) = self.operator.take() {
            operator.stop(Duration::ZERO);
            wait_until_bindable(self.operator_http);
        }
    }

    /// Applies a Provider (server-side apply, as `kubectl apply --server-side` would).
    pub async fn apply_provider(&self, provider: serde_json::Value) -> Result<()> {
        let api: Api<Provider> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = provider["metadata"]["name"].as_str().context("provider needs a name")?.to_owned();
        api.patch(&name, &PatchParams::apply(cluster::FIELD_MANAGER).force(), &Patch::Apply(&provider))
            .await?;
        Ok(())
    }

    /// Applies any namespaced nodepool.dev object (a Label, an Image, ...).
    pub async fn apply<K>(&self, object: serde_json::Value) -> Result<()>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = object["metadata"]["name"].as_str().context("object needs a name")?.to_owned();
        api.patch(&name, &PatchParams::apply(cluster::FIELD_MANAGER).force(), &Patch::Apply(&object)).await?;
        Ok(())
    }

    /// A Provider of the stack, as the apiserver has it now.
    pub async fn provider(&self, name: &str) -> Result<Provider> {
        let api: Api<Provider> = Api::namespaced(self.client.clone(), &self.namespace);
        Ok(api.get(name).await?)
    }

    /// Waits until the provider is Ready and every label of its pools can be launched.
    pub async fn launchable(&self, name: &str) -> Result<Provider> {
        crate::wait::until(&format!("provider {name} ready to launch"), Duration::from_secs(60), async || {
            let provider = self.provider(name).await?;
            let ok = ready_condition(&provider).is_some_and(|c| c.status == "True")
                && provider.status.as_ref().is_some_and(|s| {
                    !s.pools.is_empty() && s.pools.iter().all(|p| p.labels.iter().all(|l| l.launchable))
                });
            Ok(ok.then_some(provider))
        })
        .await
    }

    /// Every PoolNode of the stack.
    pub async fn nodes(&self) -> Result<Vec<PoolNode>> {
        let api: Api<PoolNode> = Api::namespaced(self.client.clone(), &self.namespace);
        Ok(api.list(&Default::default()).await?.items)
    }

    /// A simulated-cloud provider with one pool `main` serving `sim-small` (flavor small) and
    /// `sim-large` (flavor large); `spec` is merged over that (e.g. limits, `simulated` settings).
    pub fn simulated_provider(&self, name: &str, spec: serde_json::Value) -> serde_json::Value {
        let mut provider = serde_json::json!({
            "apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": name},
            "spec": {"driver": "simulated", "pools": [{
                "name": "main",
                "hostKeyChecking": false,
                "nodeAttributes": {"executor-zone": "sim"},
                "labels": [
                    {"name": "sim-small", "instanceType": "small"},
                    {"name": "sim-large", "instanceType": "large"},
                ],
            }]},
        });
        if let (Some(base), Some(extra)) = (provider["spec"].as_object_mut(), spec.as_object()) {
            for (key, value) in extra {
                base.insert(key.clone(), value.clone());
            }
        }
        provider
    }

    /// A static provider on this stack's sshd: `static-label` with `slots` slots on 127.0.0.1, and
    /// `static-single` with one slot on `localhost` (the cancel and priority scenarios need a
    /// label with exactly one node).
    pub fn static_provider(&self, name: &str, slots: u32) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": name},
            "spec": {"driver": "static", "pools": [{
                "name": "main",
                "nodeAttributes": {"executor-zone": "e2e"},
                "hosts": [
                    {"name": "127.0.0.1", "labels": ["static-label"], "connectionPort": self.sshd.port,
                     "maxParallelJobs": slots, "username": "zuul-worker"},
                    {"name": "localhost", "labels": ["static-single"], "connectionPort": self.sshd.port},
                ],
            }]},
        })
    }

    /// Waits until `count` nodes are ready and registered in ZooKeeper (a reused static slot: in
    /// its current registration), and not taken by Zuul.
    pub async fn wait_for_ready_nodes(&self, count: usize, timeout: Duration) -> Result<Vec<PoolNode>> {
        let api: Api<PoolNode> = Api::namespaced(self.client.clone(), &self.namespace);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let nodes: Vec<PoolNode> = api
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter(|n| {
                    n.status.as_ref().is_some_and(|s| {
                        s.state == NodeState::Ready
                            && s.zuul_view().is_some_and(|z| z.node_id.is_some() && z.zuul_state.is_none())
                    })
                })
                .collect();
            if nodes.len() >= count {
                return Ok(nodes);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "only {} of {count} nodes ready after {timeout:?}; see {}",
                    nodes.len(),
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The JSON `nodepool-testenv up` prints, for tools that take `--testenv-json`.
    pub fn testenv_json(&self) -> Result<PathBuf> {
        let path = self.dir.join("testenv.json");
        let zk = &self.env.info.zookeeper;
        let json = serde_json::json!({
            "kubeconfig": self.env.info.kubeconfig,
            "zookeeper": {"hosts": zk.hosts, "tls_ca": zk.tls_ca, "tls_cert": zk.tls_cert, "tls_key": zk.tls_key},
        });
        fs::write(&path, serde_json::to_vec_pretty(&json)?)?;
        Ok(path)
    }

    /// Runs `e2e/zuul/zuul_driver.py` (Zuul 14.3's own client classes) against this stack.
    pub async fn zuul(&self, args: &[&str]) -> Result<Output> {
        self.zuul_at(&self.chroot, args).await
    }

    /// Runs Zuul's client against another chroot of the same ZooKeeper (e.g. a Nodepool's).
    pub async fn zuul_at(&self, chroot: &str, args: &[&str]) -> Result<Output> {
        let mut command = self.zuul_command(chroot, args)?;
        command.output().await.with_context(|| {
            format!(
                "running {:?} (e2e/scripts/install-deps.sh installs Zuul)",
                command.as_std().get_program()
            )
        })
    }

    /// The command that runs Zuul's client against `chroot` with `args`, to be started by the
    /// caller (e.g. while the test goes on changing the stack).
    pub fn zuul_command(&self, chroot: &str, args: &[&str]) -> Result<tokio::process::Command> {
        let python = tools::cache_dir().join("venv-zuul/bin/python");
        let script = tools::repo_root().join("e2e/zuul/zuul_driver.py");
        let mut command = tokio::process::Command::new(&python);
        command
            .arg(&script)
            .arg("--testenv-json")
            .arg(self.testenv_json()?)
            .args(["--chroot", chroot])
            .args(args)
            .env("ZUUL_VENV_PYTHON", &python)
            .kill_on_drop(true);
        Ok(command)
    }
}

/// Waits (up to 30 s) until `address` can be listened on again. A killed process's threads can
/// outlive its main thread (whose `/proc/<pid>/fd` is then empty) and keep its listener open for
/// a while, most of all when it held a lot of memory; a restart on the same address must wait.
fn wait_until_bindable(address: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpListener::bind(address).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for server in [self.bridge.take(), self.operator.take()].into_iter().flatten() {
            server.stop(Duration::from_secs(5));
        }
    }
}

/// A provider's `Ready` condition.
pub fn ready_condition(
    provider: &Provider,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let status = provider.status.as_ref()?;
    nodepool_crds::conditions::find(&status.conditions, nodepool_crds::conditions::types::READY).cloned()
}

/// Parses the JSON lines a tool printed on stdout.
pub fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}
