//! The bridge's ZooKeeper recipes against a real ZooKeeper: kazoo locks taken in one round trip,
//! a write that releases its lock in the same transaction, and a node removal that ZooKeeper
//! refuses while anyone holds or waits for the node's lock.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use nodepool_e2e::TestEnv;
use nodepool_zk_bridge::zk::{
    Removal,
    lock::{self, contenders},
    remove_unless_locked,
};
use zookeeper_client::{Acls, Client, CreateMode, EventType};

/// A fresh, empty directory for one test.
async fn scratch(zk: &Client) -> Result<String> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = format!("/recipes-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    zk.create(&dir, b"", &persistent()).await?;
    Ok(dir)
}

fn persistent() -> zookeeper_client::CreateOptions<'static> {
    CreateMode::Persistent.with_acls(Acls::anyone_all())
}

fn marked(data: &[u8]) -> Option<Vec<u8>> {
    (!data.is_empty()).then(|| b"deleted".to_vec())
}

#[tokio::test]
async fn a_lock_is_taken_once_and_refused_while_held() -> Result<()> {
    let env = TestEnv::shared().await?;
    let (ours, zuul) = (env.zookeeper(None).await?, env.zookeeper(None).await?);
    let dir = format!("{}/lock", scratch(&ours).await?);

    // The directory does not exist yet: it is made, and the lock taken.
    let held = lock::try_acquire(&zuul, &dir, "a1b2").await?.expect("a free lock is taken");
    assert_eq!(contenders(&ours, &dir).await?, vec![held.contender.rsplit('/').next().unwrap().to_owned()]);

    // Held by another session: refused, and the attempt leaves no contender behind.
    assert!(lock::try_acquire(&ours, &dir, "c3d4").await?.is_none());
    assert_eq!(contenders(&ours, &dir).await?.len(), 1);

    held.release(&zuul).await;
    let ours_now = lock::try_acquire(&ours, &dir, "c3d4").await?.expect("a released lock is taken");
    assert!(ours_now.contender.contains("/c3d4__lock__"));
    ours_now.release(&ours).await;
    assert!(contenders(&ours, &dir).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_write_releases_its_lock_in_the_same_transaction_or_not_at_all() -> Result<()> {
    let env = TestEnv::shared().await?;
    let zk = env.zookeeper(None).await?;
    let node = format!("{}/node", scratch(&zk).await?);
    let dir = format!("{node}/lock");
    zk.create(&node, b"v0", &persistent()).await?;

    let held = lock::try_acquire(&zk, &dir, "e5f6").await?.expect("a free lock is taken");
    held.write_and_release(&zk, &node, b"v1", 0).await.map_err(|(_, error)| error)?;
    let (data, stat) = zk.get_data(&node).await?;
    assert_eq!((data.as_slice(), stat.version), (b"v1".as_slice(), 1));
    assert!(contenders(&zk, &dir).await?.is_empty(), "the write released the lock");

    // A write naming a stale version changes nothing: the data stays, the lock is still held.
    let held = lock::try_acquire(&zk, &dir, "e5f6").await?.expect("a free lock is taken");
    let (held, error) = held.write_and_release(&zk, &node, b"v2", 0).await.expect_err("stale version");
    assert!(matches!(error, zookeeper_client::Error::BadVersion), "{error:?}");
    assert_eq!(zk.get_data(&node).await?.0, b"v1");
    assert_eq!(contenders(&zk, &dir).await?.len(), 1);
    held.release(&zk).await;
    Ok(())
}

#[tokio::test]
async fn a_node_is_removed_only_while_nobody_holds_its_lock() -> Result<()> {
    let env = TestEnv::shared().await?;
    let (ours, zuul) = (env.zookeeper(None).await?, env.zookeeper(None).await?);
    let base = scratch(&ours).await?;
    let node = format!("{base}/node");
    let dir = format!("{node}/lock");
    ours.create(&node, b"{}", &persistent()).await?;
    ours.create(&dir, b"", &persistent()).await?;

    // Zuul holds the lock: nothing changes.
    let zuuls = lock::try_acquire(&zuul, &dir, "0a0b").await?.expect("a free lock is taken");
    assert_eq!(remove_unless_locked(&ours, &node, &dir, marked).await?, Removal::Locked);
    assert_eq!(ours.get_data(&node).await?.0, b"{}");

    // Released: marked (the watch sees the data change before the deletion) and removed.
    zuuls.release(&zuul).await;
    let (_, _, watch) = zuul.get_and_watch_data(&node).await?;
    assert_eq!(remove_unless_locked(&ours, &node, &dir, marked).await?, Removal::Done);
    assert_eq!(watch.changed().await.event_type, EventType::NodeDataChanged);
    assert!(ours.check_stat(&node).await?.is_none());

    // Never locked (no lock directory), or gone already: removed, or nothing to do.
    ours.create(&node, b"", &persistent()).await?;
    assert_eq!(remove_unless_locked(&ours, &node, &dir, marked).await?, Removal::Done);
    assert!(ours.check_stat(&node).await?.is_none());
    assert_eq!(remove_unless_locked(&ours, &node, &dir, marked).await?, Removal::Done);

    // A child besides the lock directory: left for the long way, unchanged.
    ours.create(&node, b"{}", &persistent()).await?;
    ours.create(&format!("{node}/other"), b"", &persistent()).await?;
    assert_eq!(remove_unless_locked(&ours, &node, &dir, marked).await?, Removal::OtherChildren);
    assert_eq!(ours.get_data(&node).await?.0, b"{}");
    Ok(())
}
