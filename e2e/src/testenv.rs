//! A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) and a TLS-only
//! ZooKeeper on loopback, started by the project for its tests and for people.
//!
//! One environment lives in a directory (default `~/.cache/nodepool-operator/testenv`) described by
//! its `env.json`. [`TestEnv::shared`] reuses a healthy environment or starts a new one, under a
//! file lock so parallel test binaries agree on one. Tests isolate themselves with their own
//! namespace and ZooKeeper chroot.

use std::{
    fs::{self, File, OpenOptions},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::{Deserialize, Serialize};

use crate::{
    pki::{self, Authority},
    process::{self, Server},
    tools,
};

/// What a person or an outside tool needs to reach the environment (printed by `up`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnvInfo {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub apiserver: String,
    pub zookeeper: ZooKeeperInfo,
    pub servers: Vec<Server>,
}

/// ZooKeeper connection data in the shape Zuul's `[zookeeper]` section takes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ZooKeeperInfo {
    /// `host:port` for TLS connections (no plain-text port is open).
    pub hosts: String,
    pub tls_ca: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
}

/// A running environment.
#[derive(Clone, Debug)]
pub struct TestEnv {
    pub info: EnvInfo,
}

const ENV_FILE: &str = "env.json";

/// The directory of the shared environment: `$NODEPOOL_TESTENV_DIR`, else under the cache.
pub fn default_dir() -> PathBuf {
    std::env::var_os("NODEPOOL_TESTENV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools::cache_dir().join("testenv"))
}

impl TestEnv {
    /// Reuses the environment in [`default_dir`] if it is healthy, else starts a fresh one.
    pub async fn shared() -> Result<TestEnv> {
        Self::up(&default_dir(), false).await
    }

    /// Starts (or with `fresh == false`, reuses) the environment in `dir`.
    pub async fn up(dir: &Path, fresh: bool) -> Result<TestEnv> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let _lock = lock(dir)?;
        if !fresh && let Some(existing) = Self::load(dir)? {
            if existing.healthy().await {
                return Ok(existing);
            }
            tracing::info!(dir = %dir.display(), "test environment is not healthy; starting a new one");
        }
        stop_servers(dir)?;
        let env = start(dir)?;
        env.wait_ready().await.inspect_err(|_| env.stop_servers())?;
        let json = serde_json::to_string_pretty(&env.info)?;
        fs::write(dir.join(ENV_FILE), json)?;
        Ok(env)
    }

    /// Stops the servers of the environment in `dir` (if any) and forgets it.
    pub fn down(dir: &Path) -> Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        let _lock = lock(dir)?;
        stop_servers(dir)
    }

    fn load(dir: &Path) -> Result<Option<TestEnv>> {
        let path = dir.join(ENV_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let info =
                    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
                Ok(Some(TestEnv { info }))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    async fn healthy(&self) -> bool {
        if !self.info.servers.iter().all(Server::is_running) {
            return false;
        }
        let apiserver = async { self.apiserver_ready().await.unwrap_or(false) };
        let zookeeper = async { self.zookeeper(None).await.is_ok() };
        let (apiserver, zookeeper) = tokio::join!(apiserver, zookeeper);
        apiserver && zookeeper
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(dead) = self.info.servers.iter().find(|server| !server.is_running()) {
                bail!("{} exited during start-up; log tail:\n{}", dead.name, dead.log_tail(40));
            }
            if self.apiserver_ready().await.unwrap_or(false) {
                break;
            }
            if Instant::now() > deadline {
                bail!("kube-apiserver not ready after 90s; see {}", self.info.dir.join("logs").display());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        loop {
            match self.zookeeper(None).await {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() > deadline => {
                    let zk = self.info.servers.iter().find(|s| s.name == "zookeeper");
                    bail!(
                        "ZooKeeper not reachable over TLS: {error:#}; log tail:\n{}",
                        zk.map(|s| s.log_tail(40)).unwrap_or_default()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    async fn apiserver_ready(&self) -> Result<bool> {
        let port = self.info.apiserver.rsplit(':').next().and_then(|port| port.parse::<u16>().ok());
        let address =
            std::net::SocketAddr::from(([127, 0, 0, 1], port.context("apiserver URL has no port")?));
        if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            return Ok(false); // not listening yet; spare the client's error logs
        }
        let client = self.kube_client().await?;
        let request = http::Request::get("/readyz").body(Vec::new())?;
        Ok(client.request_text(request).await.is_ok_and(|body| body.trim() == "ok"))
    }

    /// A client authenticated as the environment's administrator (group `system:masters`).
    pub async fn kube_client(&self) -> Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(&self.info.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A TLS ZooKeeper session, optionally chrooted (`/test-xyz`; the chroot must exist).
    pub async fn zookeeper(&self, chroot: Option<&str>) -> Result<zookeeper_client::Client> {
        crate::install_crypto_provider();
        let zk = &self.info.zookeeper;
        let tls = zookeeper_client::TlsOptions::new()
            .with_pem_ca(&fs::read_to_string(&zk.tls_ca)?)?
            .with_pem_identity(&fs::read_to_string(&zk.tls_cert)?, &fs::read_to_string(&zk.tls_key)?)?;
        let cluster = format!("{}{}", zk.hosts, chroot.unwrap_or(""));
        let client = zookeeper_client::Client::connector()
            .with_tls(tls)
            .with_session_timeout(Duration::from_secs(10))
            .with_connection_timeout(Duration::from_secs(5))
            .secure_connect(&cluster)
            .await
            .with_context(|| format!("connecting to ZooKeeper at {cluster} over TLS"))?;
        Ok(client)
    }

    /// Runs `kubectl` against the environment.
    pub fn kubectl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let kubectl = tools::kubectl();
        Command::new(&kubectl).env("KUBECONFIG", &self.info.kubeconfig).args(args).output().with_context(
            || format!("running {} (install it with e2e/scripts/install-deps.sh)", kubectl.display()),
        )
    }

    fn stop_servers(&self) {
        // Reverse start order: dependants first.
        for server in self.info.servers.iter().rev() {
            server.stop(Duration::from_secs(10));
        }
    }
}

fn lock(dir: &Path) -> Result<File> {
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
    file.lock().context("locking the test environment directory")?;
    Ok(file)
}

fn stop_servers(dir: &Path) -> Result<()> {
    if let Some(env) = TestEnv::load(dir)? {
        env.stop_servers();
        fs::remove_file(dir.join(ENV_FILE))?;
    }
    Ok(())
}

/// Generates certificates and configuration and starts every server (without waiting for them).
fn start(dir: &Path) -> Result<TestEnv> {
    // The stacks (logs, sshd keys) of the environment before go too: they belong to a control
    // plane that is gone, and grew to 1.2 GB over a day of runs.
    for sub in ["pki", "etcd", "zookeeper", "logs", "stacks"] {
        let path = dir.join(sub);
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(&path)?;
    }
    let bin = tools::k8s_bin_dir()?;
    let pki_dir = dir.join("pki");
    let logs = dir.join("logs");
    let ca = Authority::new("nodepool-testenv-ca")?;
    let ca_file = pki_dir.join("ca.crt");
    fs::write(&ca_file, &ca.cert_pem)?;
    let write_pair = |name: &str, pair: &pki::Pair| -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = (pki_dir.join(format!("{name}.crt")), pki_dir.join(format!("{name}.key")));
        fs::write(&cert, &pair.cert_pem)?;
        pki::write_private(&key, &pair.key_pem)?;
        Ok((cert, key))
    };

    let mut servers = Vec::new();
    let result = (|| -> Result<EnvInfo> {
        // etcd
        let (etcd_port, peer_port) = (process::free_port()?, process::free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.args(["--name", "testenv", "--unsafe-no-fsync", "--log-level", "warn"])
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("testenv={peer_url}")]);
        servers.push(process::spawn("etcd", etcd, &logs)?);
        process::wait_for_port(servers.last().unwrap(), etcd_port, Duration::from_secs(30))?;

        // kube-apiserver
        let api_port = process::free_port()?;
        let apiserver_url = format!("https://127.0.0.1:{api_port}");
        let (serving_cert, serving_key) = write_pair(
            "apiserver",
            &ca.server("kube-apiserver", &["kubernetes", "kubernetes.default", "kubernetes.default.svc"])?,
        )?;
        let (admin_cert, admin_key) =
            write_pair("admin", &ca.client("nodepool-admin", Some("system:masters"))?)?;
        let (sa_private, sa_public) = pki::signing_key()?;
        let sa_key = pki_dir.join("sa.key");
        let sa_pub = pki_dir.join("sa.pub");
        pki::write_private(&sa_key, &sa_private)?;
        fs::write(&sa_pub, sa_public)?;
        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .args(["--etcd-servers", &etcd_url, "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--tls-cert-file={}", serving_cert.display()))
            .arg(format!("--tls-private-key-file={}", serving_key.display()))
            .arg(format!("--client-ca-file={}", ca_file.display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-issuer={apiserver_url}"))
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!("--service-account-signing-key-file={}", sa_key.display()))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            // The endpoint reconciler refuses loopback addresses; nothing here needs the
            // `kubernetes` Service endpoints.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--cert-dir={}", pki_dir.display()))
            .arg("--allow-privileged=true");
        servers.push(process::spawn("kube-apiserver", apiserver, &logs)?);

        let kubeconfig = dir.join("admin.kubeconfig");
        fs::write(&kubeconfig, kubeconfig_yaml(&apiserver_url, &ca_file, &admin_cert, &admin_key))?;

        // kube-controller-manager: service-account tokens, namespace deletion, garbage collection,
        // and the aggregated ClusterRoles (`admin`, `edit`, `view`), which the OpenShift tests
        // bind a project's admin to.
        let mut kcm = Command::new(bin.join("kube-controller-manager"));
        for flag in ["--kubeconfig", "--authentication-kubeconfig", "--authorization-kubeconfig"] {
            kcm.arg(format!("{flag}={}", kubeconfig.display()));
        }
        kcm.args(["--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false"])
            .arg(format!("--service-account-private-key-file={}", sa_key.display()))
            .arg(format!("--root-ca-file={}", ca_file.display()))
            .arg("--use-service-account-credentials=false")
            .arg("--controllers=serviceaccount-token-controller,serviceaccount-controller,namespace-controller,garbage-collector-controller,clusterrole-aggregation-controller");
        servers.push(process::spawn("kube-controller-manager", kcm, &logs)?);

        // ZooKeeper, TLS only with client certificates, as Zuul requires.
        let zk_port = process::free_port()?;
        let zk_server = ca.server("zookeeper", &[])?;
        let keystore = pki_dir.join("zookeeper-keystore.pem");
        pki::write_private(&keystore, &format!("{}{}", zk_server.cert_pem, zk_server.key_pem))?;
        let (zk_client_cert, zk_client_key) = write_pair("zookeeper-client", &ca.client("nodepool", None)?)?;
        let zoo_cfg = dir.join("zookeeper/zoo.cfg");
        fs::write(
            &zoo_cfg,
            format!(
                "tickTime=2000\ndataDir={data}\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=ruok,srvr,stat,mntr\n\
                 serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
                 secureClientPortAddress=127.0.0.1\nsecureClientPort={zk_port}\n\
                 ssl.clientAuth=need\n\
                 ssl.keyStore.location={keystore}\nssl.keyStore.type=PEM\n\
                 ssl.trustStore.location={ca}\nssl.trustStore.type=PEM\n",
                data = dir.join("zookeeper/data").display(),
                keystore = keystore.display(),
                ca = ca_file.display(),
            ),
        )?;
        servers.push(spawn_zookeeper(dir)?);

        Ok(EnvInfo {
            dir: dir.to_path_buf(),
            kubeconfig,
            apiserver: apiserver_url,
            zookeeper: ZooKeeperInfo {
                hosts: format!("127.0.0.1:{zk_port}"),
                tls_ca: ca_file.clone(),
                tls_cert: zk_client_cert,
                tls_key: zk_client_key,
            },
            servers: servers.clone(),
        })
    })();
    match result {
        Ok(info) => Ok(TestEnv { info }),
        Err(error) => {
            for server in servers.iter().rev() {
                server.stop(Duration::from_secs(5));
            }
            Err(error)
        }
    }
}

/// Starts ZooKeeper on the configuration (and data) in `dir/zookeeper`.
fn spawn_zookeeper(dir: &Path) -> Result<Server> {
    let logs = dir.join("logs");
    let mut zookeeper = Command::new("java");
    zookeeper
        .args(["-Xmx256m", "-cp", &tools::zookeeper_classpath()?])
        .arg(format!("-Dzookeeper.log.dir={}", logs.display()))
        .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
        .arg(dir.join("zookeeper/zoo.cfg"));
    process::spawn("zookeeper", zookeeper, &logs)
}

impl TestEnv {
    /// Stops ZooKeeper, keeps it down for `downtime`, and starts it again on the same data, as
    /// a ZooKeeper restart in production would. Sessions whose timeout is shorter than the
    /// downtime expire. Tests that use this must not share the environment with others running
    /// at the same time (put them in a test binary of their own).
    pub async fn restart_zookeeper(&mut self, downtime: Duration) -> Result<()> {
        let dir = self.info.dir.clone();
        let _lock = lock(&dir)?;
        let index =
            self.info.servers.iter().position(|s| s.name == "zookeeper").context("no zookeeper server")?;
        self.info.servers[index].stop(Duration::from_secs(10));
        tokio::time::sleep(downtime).await;
        self.info.servers[index] = spawn_zookeeper(&dir)?;
        fs::write(dir.join(ENV_FILE), serde_json::to_string_pretty(&self.info)?)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.zookeeper(None).await.is_err() {
            if Instant::now() > deadline {
                bail!("ZooKeeper did not come back; see {}", dir.join("logs/zookeeper.log").display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
}

fn kubeconfig_yaml(server: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: testenv\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: admin\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n\
         contexts:\n- name: testenv\n  context:\n    cluster: testenv\n    user: admin\n    namespace: default\n\
         current-context: testenv\n",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    )
}
