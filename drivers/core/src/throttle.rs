//! The per-provider cloud API rate limit: a token bucket every call of every pool of a provider
//! draws from, applied by wrapping the driver in [`Throttled`], which also records each call in
//! the [`CloudApiMetrics`].

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use nodepool_crds::{
    ImageSpec,
    pool_node::NodeResources,
    provider::{Pool, PoolLabel, RateLimit, ResourceLimits},
};
use tokio::{sync::Mutex, time::Instant};

use crate::{
    CloudApiMetrics,
    cloud::{Cloud, CloudResult, Instance, InstanceSpec, LeakedResource},
};

/// A token bucket: `burst` calls at once, refilled at `per_second`.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl RateLimiter {
    pub fn new(limit: &RateLimit) -> Self {
        let burst = f64::from(limit.burst.max(1));
        Self {
            per_second: limit.requests_per_second,
            burst,
            bucket: Mutex::new(Bucket { tokens: burst, refilled_at: Instant::now() }),
        }
    }

    /// Waits for a token. Callers queue on the bucket's lock, so they are served in order.
    pub async fn acquire(&self) {
        let mut bucket = self.bucket.lock().await;
        loop {
            let now = Instant::now();
            let elapsed = now.duration_since(bucket.refilled_at).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
            bucket.refilled_at = now;
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                return;
            }
            let wait = (1.0 - bucket.tokens) / self.per_second;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

/// A cloud whose every call first takes a token from the provider's bucket, and is counted.
pub struct Throttled {
    inner: Arc<dyn Cloud>,
    limiter: Option<RateLimiter>,
    metrics: Option<(String, CloudApiMetrics)>,
}

impl Throttled {
    pub fn new(inner: Arc<dyn Cloud>, limit: Option<&RateLimit>) -> Self {
        Self { inner, limiter: limit.map(RateLimiter::new), metrics: None }
    }

    /// Records every call in `metrics` under the provider's name.
    pub fn with_metrics(mut self, provider: &str, metrics: CloudApiMetrics) -> Self {
        self.metrics = Some((provider.to_owned(), metrics));
        self
    }

    /// Waits for a token, then makes the call and records it.
    async fn call<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = CloudResult<T>>,
    ) -> CloudResult<T> {
        if let Some(limiter) = &self.limiter {
            limiter.acquire().await;
        }
        let started = Instant::now();
        let result = call.await;
        if let Some((provider, metrics)) = &self.metrics {
            metrics.record(provider, operation, started.elapsed().as_secs_f64(), &result);
        }
        result
    }
}

#[async_trait]
impl Cloud for Throttled {
    async fn create(&self, spec: &InstanceSpec) -> CloudResult<Instance> {
        self.call("create", self.inner.create(spec)).await
    }
    async fn get(&self, id: &str) -> CloudResult<Option<Instance>> {
        self.call("get", self.inner.get(id)).await
    }
    async fn delete(&self, id: &str) -> CloudResult<()> {
        self.call("delete", self.inner.delete(id)).await
    }
    async fn list_instances(&self) -> CloudResult<Vec<Instance>> {
        self.call("list_instances", self.inner.list_instances()).await
    }
    async fn quota_limits(&self) -> CloudResult<ResourceLimits> {
        self.call("quota_limits", self.inner.quota_limits()).await
    }
    async fn label_resources(&self, pool: &Pool, label: &PoolLabel) -> CloudResult<NodeResources> {
        self.call("label_resources", self.inner.label_resources(pool, label)).await
    }
    async fn resolve_image(&self, image: &ImageSpec) -> CloudResult<String> {
        self.call("resolve_image", self.inner.resolve_image(image)).await
    }
    async fn list_other_resources(&self) -> CloudResult<Vec<LeakedResource>> {
        self.call("list_other_resources", self.inner.list_other_resources()).await
    }
    async fn delete_other_resource(&self, resource: &LeakedResource) -> CloudResult<()> {
        self.call("delete_other_resource", self.inner.delete_other_resource(resource)).await
    }
    async fn check_access(&self) -> CloudResult<()> {
        self.call("check_access", self.inner.check_access()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_beyond_the_burst_wait_for_the_rate() {
        // Real time (tokio's paused clock needs the test-util feature, which would rebuild the
        // whole dependency graph for tests); only the lower bound is asserted, which a slow
        // machine cannot break.
        let limiter = RateLimiter::new(&RateLimit { requests_per_second: 20.0, burst: 2 });
        let start = Instant::now();
        for _ in 0..7 {
            limiter.acquire().await;
        }
        // 2 at once, then 5 more at 20/s: at least 250 ms.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(245), "{elapsed:?}");
    }
}
