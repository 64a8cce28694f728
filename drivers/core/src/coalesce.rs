//! Cloud calls that many state machines make at once, coalesced into one.
//!
//! Every launching or deleting node polls its instance. A call that arrives while another is in
//! flight, or within `spacing` of the last one, waits and is answered with the others by the
//! next call: under load, N nodes polling cost one `DescribeInstances` instead of N, and a lone
//! poll waits at most `spacing`. (Nodepool gets the same saving from one instance listing shared
//! for 10 s, which makes every launch wait up to 10 s.)

use std::{future::Future, sync::Mutex, time::Duration};

use tokio::{sync::oneshot, time::Instant};

use crate::{CloudError, cloud::CloudResult};

type Waiter<K, V> = (K, oneshot::Sender<CloudResult<Option<V>>>);

pub struct Coalescer<K, V> {
    spacing: Duration,
    waiting: Mutex<Vec<Waiter<K, V>>>,
    /// Held by the caller making the batch call; holds when the last one was made.
    last_call: tokio::sync::Mutex<Option<Instant>>,
}

impl<K: Clone + PartialEq, V: Clone> Coalescer<K, V> {
    pub fn new(spacing: Duration) -> Self {
        Self { spacing, waiting: Mutex::default(), last_call: tokio::sync::Mutex::new(None) }
    }

    /// The answer for `key`: `batch` is called with every key waiting (this one among them)
    /// and returns what it found, by key; a key it did not find is answered `None`. An error
    /// answers every key of the batch.
    pub async fn call<F, Fut>(&self, key: K, batch: F) -> CloudResult<Option<V>>
    where
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = CloudResult<Vec<(K, V)>>>,
    {
        let (answer, mut answered) = oneshot::channel();
        self.waiting.lock().expect("coalescer lock").push((key, answer));
        let mut last_call = self.last_call.lock().await;
        // The batch made while this caller waited for the lock may have answered it.
        if let Ok(answer) = answered.try_recv() {
            return answer;
        }
        if let Some(at) = *last_call {
            // Others arriving meanwhile join this batch.
            tokio::time::sleep_until(at + self.spacing).await;
        }
        let waiters = std::mem::take(&mut *self.waiting.lock().expect("coalescer lock"));
        *last_call = Some(Instant::now());
        let found = batch(waiters.iter().map(|(key, _)| key.clone()).collect()).await;
        for (key, answer) in waiters {
            let _ = answer.send(match &found {
                Ok(found) => Ok(found.iter().find(|(k, _)| *k == key).map(|(_, value)| value.clone())),
                Err(error) => Err(error.clone()),
            });
        }
        drop(last_call);
        answered.await.unwrap_or_else(|_| Err(CloudError::api("coalesced call", "the batch was dropped")))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_arriving_together_are_answered_by_one_batch_and_misses_are_none() {
        let coalescer = Arc::new(Coalescer::<u32, String>::new(Duration::from_millis(200)));
        let batches = Arc::new(AtomicUsize::new(0));
        let lookup = |coalescer: Arc<Coalescer<u32, String>>, batches: Arc<AtomicUsize>, key: u32| async move {
            coalescer
                .call(key, |keys| async move {
                    batches.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(keys.into_iter().filter(|k| k % 2 == 0).map(|k| (k, format!("v{k}"))).collect())
                })
                .await
        };
        let calls: Vec<_> =
            (0..10).map(|key| tokio::spawn(lookup(coalescer.clone(), batches.clone(), key))).collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap().unwrap());
        }
        assert_eq!(answers[4], Some("v4".to_owned()));
        assert_eq!(answers[5], None, "a key the batch did not find");
        assert!(batches.load(Ordering::SeqCst) <= 2, "ten calls, at most two batches");
        // A later lone call waits out the spacing, then goes alone.
        let started = Instant::now();
        assert_eq!(lookup(coalescer.clone(), batches.clone(), 8).await.unwrap(), Some("v8".to_owned()));
        assert!(started.elapsed() <= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn an_error_answers_every_caller_of_its_batch() {
        let coalescer = Coalescer::<u32, ()>::new(Duration::ZERO);
        let error =
            coalescer.call(1, |_| async { Err(CloudError::api("Describe", "boom")) }).await.unwrap_err();
        assert!(error.to_string().contains("boom"), "{error}");
    }
}
