//! The environment's ZooKeeper speaks TLS only and requires a client certificate, as Zuul's does.

use std::{fs, time::Duration};

use anyhow::Result;
use nodepool_e2e::TestEnv;
use zookeeper_client::{Acls, CreateMode, TlsOptions};

#[tokio::test]
async fn zookeeper_accepts_mutual_tls_and_chroots() -> Result<()> {
    let env = TestEnv::shared().await?;
    let root = env.zookeeper(None).await?;
    let chroot = format!("/tls-test-{}", std::process::id());
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let _ = root.create(&chroot, b"", &options).await;

    let chrooted = env.zookeeper(Some(&chroot)).await?;
    chrooted.create("/nodepool", b"", &options).await?;
    let (data, _) = root.get_data(&format!("{chroot}/nodepool")).await?;
    assert!(data.is_empty());
    assert_eq!(chrooted.list_children("/").await?, vec!["nodepool".to_owned()]);
    chrooted.delete("/nodepool", None).await?;
    Ok(())
}

#[tokio::test]
async fn zookeeper_refuses_clients_without_a_certificate_or_tls() -> Result<()> {
    let env = TestEnv::shared().await?;
    nodepool_e2e::install_crypto_provider();
    let zk = &env.info.zookeeper;
    let ca_only = TlsOptions::new().with_pem_ca(&fs::read_to_string(&zk.tls_ca)?)?;
    let without_cert = zookeeper_client::Client::connector()
        .with_tls(ca_only)
        .with_connection_timeout(Duration::from_secs(2))
        .with_session_timeout(Duration::from_secs(4))
        .secure_connect(&zk.hosts);
    let result = tokio::time::timeout(Duration::from_secs(15), without_cert).await;
    assert!(!matches!(result, Ok(Ok(_))), "a client without a certificate got a session");

    let plain = zookeeper_client::Client::connector()
        .with_connection_timeout(Duration::from_secs(2))
        .with_session_timeout(Duration::from_secs(4))
        .connect(&zk.hosts);
    let result = tokio::time::timeout(Duration::from_secs(15), plain).await;
    assert!(!matches!(result, Ok(Ok(_))), "a plain-text client got a session");
    Ok(())
}
