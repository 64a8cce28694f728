//! Where the environment finds its programs: the Go-built control plane, Java's ZooKeeper, and
//! the tools installed by `e2e/scripts/install-deps.sh`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The repository root: `$NODEPOOL_REPO`, else the checkout around the current directory, else
/// the one this crate was built from.
///
/// Found at run time because builds are shared: every checkout builds into the same
/// `~/.cache` target directory, so a binary built from another clone would otherwise run that
/// clone's scripts, or scripts that are gone.
pub fn repo_root() -> PathBuf {
    if let Some(dir) = env::var_os("NODEPOOL_REPO") {
        return PathBuf::from(dir);
    }
    let is_root =
        |dir: &Path| dir.join("e2e/k8s-tools/build.sh").is_file() && dir.join("Cargo.toml").is_file();
    if let Ok(cwd) = env::current_dir()
        && let Some(root) = cwd.ancestors().find(|dir| is_root(dir))
    {
        return root.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e/ has a parent").to_path_buf()
}

/// Everything cached between runs: `$NODEPOOL_CACHE`, else `~/.cache/nodepool-operator`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("NODEPOOL_CACHE") {
        return PathBuf::from(dir);
    }
    let home = env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache/nodepool-operator")
}

/// The directory with `etcd`, `kube-apiserver` and `kube-controller-manager`.
///
/// `$NODEPOOL_K8S_BIN` wins; otherwise `e2e/k8s-tools/build.sh` is run, which returns at once when
/// the binaries for the pinned go.sum are cached and builds them otherwise.
pub fn k8s_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("NODEPOOL_K8S_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = repo_root().join("e2e/k8s-tools/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .env("NODEPOOL_CACHE", cache_dir())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed (is Go installed?):\n{}", script.display(), String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8(output.stdout)?;
    let dir = stdout.lines().last().context("build.sh printed no directory")?;
    Ok(PathBuf::from(dir))
}

/// `kubectl`: `$KUBECTL`, else the one `install-deps.sh` put in the cache, else `PATH`.
pub fn kubectl() -> PathBuf {
    tool("KUBECTL", "kubectl")
}

/// `helm`: `$HELM`, else the one `install-deps.sh` built into the cache, else `PATH`.
pub fn helm() -> PathBuf {
    tool("HELM", "helm")
}

fn tool(variable: &str, name: &str) -> PathBuf {
    if let Some(path) = env::var_os(variable) {
        return PathBuf::from(path);
    }
    let cached = cache_dir().join("tools/bin").join(name);
    if cached.exists() { cached } else { PathBuf::from(name) }
}

/// Java class path for Debian's ZooKeeper with TLS. The jar's manifest leaves out
/// netty-codec and netty-resolver, which the Netty TLS server needs.
pub fn zookeeper_classpath() -> Result<String> {
    let jars = ["zookeeper.jar", "netty-codec.jar", "netty-resolver.jar", "slf4j-simple.jar"];
    let dir = Path::new("/usr/share/java");
    for jar in jars {
        if !dir.join(jar).exists() {
            bail!(
                "{} is missing: install Debian's zookeeper package (e2e/scripts/install-deps.sh)",
                dir.join(jar).display()
            );
        }
    }
    Ok(jars.map(|jar| dir.join(jar).display().to_string()).join(":"))
}
