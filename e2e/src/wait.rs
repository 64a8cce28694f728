//! Waiting in tests: poll a condition until it holds or a deadline passes.

use std::time::Duration;

use anyhow::{Result, bail};

/// Polls `check` every 250 ms until it returns `Some`, failing with `what` after `timeout`.
pub async fn until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not reached after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
