//! `nodepool`: Nodepool's operator commands (`list`, `info`, `hold`, `release`, `delete`,
//! `request-list`, `label-list`, `image-list`, `import`) over nodepool-operator's custom resources, with
//! Nodepool's names and columns. Installed as `kubectl-nodepool` too, so `kubectl nodepool list`
//! works: both binaries call [`main`].

mod cluster;
mod commands;
pub mod import;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Operate nodepool-operator as Nodepool's command line does.
#[derive(Parser)]
#[command(name = "nodepool", version, about)]
pub struct Cli {
    /// Path to the kubeconfig file (default: `$KUBECONFIG`, else `~/.kube/config`, else the
    /// in-cluster account).
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace nodepool-operator watches (default: the context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, global = true)]
    all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Command {
    /// List nodes (Nodepool's `nodepool list`).
    List {
        /// More columns: pool, addresses, allocation, hold.
        #[arg(long)]
        detail: bool,
        /// Only nodes of this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Only nodes of this label.
        #[arg(long)]
        label: Option<String>,
        /// Only nodes in this state (`ready`, `in-use`, `hold`, ...).
        #[arg(long)]
        state: Option<String>,
    },
    /// Everything known of one node, by name or ZooKeeper id.
    Info { node: String },
    /// Hold a node for inspection: it is handed to no job until released.
    Hold {
        node: String,
        /// Why (shown as the node's comment).
        #[arg(long)]
        reason: String,
        /// Release the hold after this long (`90m`, `24h`); default: until released or the
        /// operator's maximum hold age.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Release an operator's hold: the node is deleted (a static slot comes back fresh).
    Release { node: String },
    /// Delete a node. A node Zuul has locked (a job runs on it) goes once Zuul unlocks it.
    Delete {
        node: String,
        /// Wait until the node is gone (its instance deleted, its ZooKeeper record removed).
        /// Refused for a node Zuul has locked, as Nodepool's `delete --now` is.
        #[arg(long)]
        now: bool,
        /// With --now: how long to wait.
        #[arg(long, default_value = "5m", requires = "now")]
        timeout: String,
    },
    /// Delete what is left of a provider that no longer exists: its nodes (Nodepool's `erase`).
    Erase { provider: String },
    /// List node requests (Nodepool's `request-list`).
    RequestList,
    /// List labels with their ready and in-use nodes (Nodepool's `/label-list`).
    LabelList,
    /// List images and what each provider resolved them to (Nodepool's `image-list`).
    ImageList,
    /// Whether each image is resolved everywhere it is used, and why not (Nodepool's
    /// `image-status`).
    ImageStatus,
    /// Print the custom resources that reproduce a Nodepool 11 `nodepool.yaml`, and, on
    /// standard error, each setting that is not carried as written, with its line. `-o json`
    /// prints `{"items": [...], "notes": [...]}`.
    Import {
        /// The `nodepool.yaml` to read.
        file: std::path::PathBuf,
        /// Apply the objects (server-side apply) in the namespace instead of printing them.
        /// Credentials Secrets are created as templates when missing, never overwritten.
        #[arg(long)]
        apply: bool,
        /// With --apply: let the apiserver check everything, but change nothing.
        #[arg(long, requires = "apply")]
        dry_run: bool,
    },
    /// Print the shell completion script, e.g. `source <(nodepool completions bash)`.
    Completions { shell: clap_complete::Shell },
}

/// Runs the command line (the `nodepool` and `kubectl-nodepool` binaries both call this).
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        // Named as invoked, so `kubectl-nodepool` gets completions of its own name.
        let name = std::env::args().next().and_then(|arg0| {
            std::path::Path::new(&arg0).file_name().map(|n| n.to_string_lossy().into_owned())
        });
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(
            shell,
            &mut command,
            name.unwrap_or_else(|| "nodepool".into()),
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match commands::run(&cli).await {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("nodepool: {error:#}");
            ExitCode::FAILURE
        }
    }
}
