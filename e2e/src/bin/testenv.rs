//! `nodepool-testenv up` starts (or reuses) the local control plane and TLS ZooKeeper and prints,
//! as one JSON object, how to reach them; `nodepool-testenv down` stops them.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use nodepool_e2e::{TestEnv, testenv};

#[derive(Parser)]
#[command(about = "Local kube-apiserver, etcd and TLS ZooKeeper for nodepool-operator")]
struct Cli {
    /// Environment directory (default: $NODEPOOL_TESTENV_DIR or ~/.cache/nodepool-operator/testenv).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the environment, or reuse a healthy one, and print its connection data as JSON.
    Up {
        /// Always start a new environment, stopping any running one.
        #[arg(long)]
        fresh: bool,
        /// Also install the nodepool.dev CRDs.
        #[arg(long)]
        crds: bool,
    },
    /// Stop the environment.
    Down,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
        )
        .init();
    let cli = Cli::parse();
    let dir = cli.dir.unwrap_or_else(testenv::default_dir);
    match cli.command {
        Command::Up { fresh, crds } => {
            let env = TestEnv::up(&dir, fresh).await?;
            if crds {
                nodepool_e2e::cluster::install_crds(&env.kube_client().await?).await?;
            }
            let zk = &env.info.zookeeper;
            let summary = serde_json::json!({
                "kubeconfig": env.info.kubeconfig,
                "apiserver": env.info.apiserver,
                "zookeeper": {
                    "hosts": zk.hosts,
                    "tls_ca": zk.tls_ca,
                    "tls_cert": zk.tls_cert,
                    "tls_key": zk.tls_key,
                },
                "dir": env.info.dir,
                "logs": env.info.dir.join("logs"),
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Down => TestEnv::down(&dir)?,
    }
    Ok(())
}
