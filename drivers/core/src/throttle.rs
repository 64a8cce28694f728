//! The per-provider cloud API rate limit: a token bucket every call of every pool of a provider
//! draws from, applied by wrapping the driver in [`Throttled`], which also records each call in
//! the [`CloudApiMetrics`].

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use nodepool_crds::{
    ImageSpec,
    pool_node::NodeResources,
    provider::{Pool, PoolLabel, RateLimit, ResourceLimits, ResourceUsage},
};
use tokio::{sync::Mutex, time::Instant};

use crate::{
    CloudApiMetrics,
    cloud::{Cloud, CloudResult, Instance, InstanceSpec, LeakedResource},
};

/// A token bucket (`burst` calls at once, refilled at `per_second`), kept as the time its next
/// call is due (the generic cell rate algorithm). Each call's slot is counted from the one
/// before it, not from when its caller woke: a timer that fires a little late then does not
/// stretch every interval, which held a 50/s limit to about 48.7 calls a second.
#[derive(Debug)]
pub struct RateLimiter {
    schedule: Mutex<Schedule>,
}

#[derive(Debug)]
struct Schedule {
    /// Time between calls at the limit.
    interval: Duration,
    /// How far ahead of its due time a call may go: the burst beyond the first call.
    tolerance: Duration,
    /// When the next call is due at the limit (in the past when the limiter was idle).
    due: Option<Instant>,
}

impl Schedule {
    /// Takes the next slot for a call made at `now`; returns when the call may go.
    fn admit(&mut self, now: Instant) -> Instant {
        let due = self.due.map_or(now, |due| due.max(now));
        self.due = Some(due + self.interval);
        due.checked_sub(self.tolerance).map_or(now, |earliest| earliest.max(now))
    }
}

impl RateLimiter {
    pub fn new(limit: &RateLimit) -> Self {
        // The CRD admits only positive rates; anything else gets a careful one call a second.
        let interval =
            Duration::try_from_secs_f64(1.0 / limit.requests_per_second).unwrap_or(Duration::from_secs(1));
        let tolerance = interval * (limit.burst.max(1) - 1);
        Self { schedule: Mutex::new(Schedule { interval, tolerance, due: None }) }
    }

    /// Waits for a token. Callers queue on the lock, so they are served in order.
    pub async fn acquire(&self) {
        let mut schedule = self.schedule.lock().await;
        let go = schedule.admit(Instant::now());
        tokio::time::sleep_until(go).await;
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
    async fn quota_limits(&self, pools: &[Pool]) -> CloudResult<ResourceLimits> {
        self.call("quota_limits", self.inner.quota_limits(pools)).await
    }

    async fn unmanaged_usage(&self) -> CloudResult<ResourceUsage> {
        self.call("unmanaged_usage", self.inner.unmanaged_usage()).await
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

    #[test]
    fn a_caller_woken_late_does_not_slow_the_calls_after_it() {
        let limiter = RateLimiter::new(&RateLimit { requests_per_second: 50.0, burst: 1 });
        let mut schedule = limiter.schedule.try_lock().unwrap();
        let start = Instant::now();
        let (mut now, mut last) = (start, start);
        for _ in 0..100 {
            let go = schedule.admit(now);
            assert!(go >= last, "calls go in order");
            last = go;
            now = go + Duration::from_millis(3); // each caller wakes 3 ms after its slot
        }
        // 100 calls at 50/s: the last goes 99 × 20 ms after the first, lateness or not.
        assert_eq!(last - start, Duration::from_millis(20) * 99);
    }

    #[test]
    fn an_idle_limiter_allows_only_its_burst_at_once() {
        let limiter = RateLimiter::new(&RateLimit { requests_per_second: 10.0, burst: 3 });
        let mut schedule = limiter.schedule.try_lock().unwrap();
        let start = Instant::now();
        schedule.admit(start);
        let later = start + Duration::from_secs(60); // idle for a minute: no credit beyond the burst
        let slots: Vec<Duration> = (0..5).map(|_| schedule.admit(later) - later).collect();
        let ms = Duration::from_millis;
        assert_eq!(slots, [ms(0), ms(0), ms(0), ms(100), ms(200)]);
    }
}
