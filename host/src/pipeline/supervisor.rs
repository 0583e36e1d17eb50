//! The one restart loop every worker runs under (stages, reports, joins): run the worker until
//! it finishes, and when it fails, start it again after an exponential backoff with jitter.
//!
//! A worker that fails for good (a topic deleted, an authorization taken away, a broker that
//! refuses its transactions) would otherwise restart every second forever, each time
//! re-creating its clients and flooding the log; backing off to [`MAX_DELAY`] keeps the host
//! quiet and cheap while the cause is fixed, and the jitter keeps many workers that failed
//! together (a broker outage) from all retrying in the same instant. A run that lasted
//! [`HEALTHY_RUN`] counts as recovered: the next failure starts from [`FIRST_DELAY`] again.
//! Each worker resumes from what it committed, so a restart loses or repeats nothing.

use std::future::Future;
use std::time::Duration;

use rand::RngExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Wait before the first restart.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between two restarts.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A run this long resets the backoff.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The waits between restarts: doubling from [`FIRST_DELAY`] up to [`MAX_DELAY`], each drawn
/// at random from its upper half.
#[derive(Debug)]
pub struct Backoff {
    ceiling: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            ceiling: FIRST_DELAY,
        }
    }
}

impl Backoff {
    /// The wait before the next restart; each call doubles the next one's ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (ceiling * 2).min(MAX_DELAY);
        let half = ceiling / 2;
        half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// Starts over from [`FIRST_DELAY`].
    pub fn reset(&mut self) {
        self.ceiling = FIRST_DELAY;
    }
}

/// Runs `worker` (named `name` in the log, e.g. "stage sauce") until it returns `Ok` or `stop`
/// is cancelled; each `Err` is logged with the time of the next try, which comes after a
/// [`Backoff`] delay.
pub async fn supervise<F, Fut>(name: &str, stop: &CancellationToken, mut worker: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let err = match worker().await {
            Ok(()) => return,
            Err(err) => err,
        };
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        if stop.is_cancelled() {
            tracing::error!(worker = name, "stopped while shutting down: {err:#}");
            return;
        }
        let delay = backoff.next_delay();
        tracing::error!(
            worker = name,
            retry_in_ms = delay.as_millis() as u64,
            "{name} failed: {err:#}; restarting in {:.1} s",
            delay.as_secs_f64()
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter() {
        let mut backoff = Backoff::default();
        let mut ceiling = FIRST_DELAY;
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(MAX_DELAY);
        }
        assert_eq!(ceiling, MAX_DELAY);
        let delays: Vec<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= MAX_DELAY / 2 && *d <= MAX_DELAY)
        );
        assert!(
            delays.windows(2).any(|w| w[0] != w[1]),
            "jitter: not every delay the same: {delays:?}"
        );
        backoff.reset();
        assert!(backoff.next_delay() <= FIRST_DELAY);
    }

    /// A worker that always fails is tried about log2(window) + window/MAX_DELAY times, not
    /// once a second.
    #[tokio::test(start_paused = true)]
    async fn a_failing_worker_backs_off() {
        let tries = Arc::new(AtomicU32::new(0));
        let stop = CancellationToken::new();
        let counted = tries.clone();
        let supervised = tokio::spawn({
            let stop = stop.clone();
            async move {
                supervise("test worker", &stop, || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async { anyhow::bail!("always fails") }
                })
                .await;
            }
        });
        // Ten virtual minutes: a restart every second would be 600 tries.
        tokio::time::sleep(Duration::from_secs(600)).await;
        let made = tries.load(Ordering::SeqCst);
        assert!((10..=50).contains(&made), "{made} tries in 600 s");
        stop.cancel();
        supervised.await.expect("the supervisor ends once stopped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_finishes_is_not_restarted() {
        let tries = AtomicU32::new(0);
        supervise("test worker", &CancellationToken::new(), || {
            tries.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .await;
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
