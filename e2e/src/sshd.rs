//! A real OpenSSH server on loopback, for host-key scanning and reachability tests.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::process::{self, Server};

pub struct Sshd {
    pub port: u16,
    pub server: Server,
    dir: PathBuf,
    /// The server's public host keys as `<type> <base64>`, to compare with what a scan finds.
    pub host_keys: Vec<String>,
}

impl Sshd {
    /// Starts `sshd -D` with fresh ed25519 and RSA host keys, listening on 127.0.0.1 only.
    pub fn start(dir: &Path) -> Result<Sshd> {
        fs::create_dir_all(dir)?;
        fs::create_dir_all("/run/sshd").ok(); // privilege-separation directory
        let mut host_keys = Vec::new();
        let mut key_files = Vec::new();
        for kind in ["ed25519", "rsa"] {
            let key: PathBuf = dir.join(format!("ssh_host_{kind}_key"));
            let _ = fs::remove_file(&key);
            let _ = fs::remove_file(key.with_extension("pub"));
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", "", "-f"])
                .arg(&key)
                .status()
                .context("running ssh-keygen (install openssh-client)")?;
            if !status.success() {
                bail!("ssh-keygen failed for {kind}");
            }
            let public = fs::read_to_string(format!("{}.pub", key.display()))?;
            let mut fields = public.split_whitespace();
            host_keys.push(format!(
                "{} {}",
                fields.next().unwrap_or_default(),
                fields.next().unwrap_or_default()
            ));
            key_files.push(key);
        }
        host_keys.sort();
        let port = process::free_port()?;
        let config = dir.join("sshd_config");
        let mut text = format!(
            "Port {port}\nListenAddress 127.0.0.1\nPidFile {}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nMaxStartups 200\n",
            dir.join("sshd.pid").display()
        );
        for key in &key_files {
            text.push_str(&format!("HostKey {}\n", key.display()));
        }
        fs::write(&config, text)?;
        let server = serve(dir, port)?;
        Ok(Sshd { port, server, dir: dir.to_path_buf(), host_keys })
    }

    /// Stops the server (the host "goes down").
    pub fn stop(&self) {
        self.server.stop(Duration::from_secs(2));
    }

    /// Starts the server again on the same port with the same keys.
    pub fn start_again(&mut self) -> Result<()> {
        self.server = serve(&self.dir, self.port)?;
        Ok(())
    }
}

fn serve(dir: &Path, port: u16) -> Result<Server> {
    let mut command = Command::new("/usr/sbin/sshd");
    command.arg("-D").arg("-e").arg("-f").arg(dir.join("sshd_config"));
    let server = process::spawn("sshd", command, &dir.join("logs"))?;
    process::wait_for_port(&server, port, Duration::from_secs(10))?;
    Ok(server)
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.server.stop(Duration::from_secs(2));
    }
}
