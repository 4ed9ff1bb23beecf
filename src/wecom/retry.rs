//! How long to wait before retrying a retryable WeCom error: exponential backoff with full
//! jitter, bounded by a number of attempts and by the time spent on one call.
//!
//! Full jitter (a uniform wait between zero and the exponential cap) spreads the retries of
//! many links that failed together, so they do not hit WeCom again in one wave.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::error::{Api, WeComError, codes};

/// The shortest wait after a frequency limit (45009). WeCom blocks the caller for a minute
/// once the limit trips; retrying within milliseconds only extends the block.
pub const FREQUENCY_LIMIT_FLOOR: Duration = Duration::from_secs(1);

/// Bounds of the retry loop of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (4 = one call and three retries, the most
    /// WeCom recommends for -1). 1 disables retries.
    pub max_attempts: u32,
    /// The cap of the first retry's wait; it doubles per retry.
    pub base_delay: Duration,
    /// The largest cap.
    pub max_delay: Duration,
    /// No retry starts later than this after the call began.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries at all: every error is returned as it comes.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The upper bound of the wait before retry number `retry` (1 = the first retry):
    /// `min(max_delay, base_delay * 2^(retry-1))`.
    pub fn cap(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The wait before retry number `retry` given `unit`, a number in `[0, 1]` (the jitter):
    /// `unit * cap(retry)`, raised to [`FREQUENCY_LIMIT_FLOOR`] after a 45009.
    pub fn delay_with(&self, retry: u32, errcode: Option<i64>, unit: f64) -> Duration {
        let jittered = self.cap(retry).mul_f64(unit.clamp(0.0, 1.0));
        if errcode == Some(codes::FREQUENCY_LIMIT) {
            jittered.max(FREQUENCY_LIMIT_FLOOR)
        } else {
            jittered
        }
    }

    /// The wait before retry number `retry`, with fresh jitter.
    pub fn delay(&self, retry: u32, errcode: Option<i64>) -> Duration {
        let unit = rand::thread_rng().gen_range(0.0..=1.0);
        self.delay_with(retry, errcode, unit)
    }

    /// Whether retry number `retry`, after waiting `delay` with `elapsed` already spent,
    /// stays within the policy.
    pub fn allows(&self, retry: u32, elapsed: Duration, delay: Duration) -> bool {
        retry < self.max_attempts && elapsed.saturating_add(delay) <= self.max_elapsed
    }
}

/// One failed attempt, and whether repeating it is safe.
#[derive(Debug)]
pub(crate) struct AttemptFailure {
    pub error: WeComError,
    /// False when a retry could do harm even though the error is retryable: a create that
    /// may have reached WeCom, or a token fetch that already ran its own retries.
    pub may_retry: bool,
}

impl AttemptFailure {
    pub fn retryable_if_class_says(error: WeComError) -> Self {
        Self {
            error,
            may_retry: true,
        }
    }

    pub fn final_(error: WeComError) -> Self {
        Self {
            error,
            may_retry: false,
        }
    }
}

/// Runs `attempt` (given the attempt number, from 1) until it succeeds, fails for good, or
/// the policy gives up. Terminal and token errors come back as they are; a retryable error
/// that outlived the policy comes back as [`WeComError::RetriesExhausted`].
pub(crate) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    api: Api,
    mut attempt: F,
) -> Result<T, WeComError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, AttemptFailure>>,
{
    let started = Instant::now();
    let mut number = 1;
    loop {
        let failure = match attempt(number).await {
            Ok(value) => return Ok(value),
            Err(failure) => failure,
        };
        if !failure.may_retry || !failure.error.is_retryable() {
            return Err(failure.error);
        }
        let delay = policy.delay(number, failure.error.errcode());
        if !policy.allows(number, started.elapsed(), delay) {
            return Err(WeComError::RetriesExhausted {
                api,
                attempts: number,
                last: Box::new(failure.error),
            });
        }
        tracing::debug!(
            api = api.name(),
            attempt = number,
            outcome = %failure.error.metric_label(),
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "WeCom call failed, backing off before retrying"
        );
        tokio::time::sleep(delay).await;
        number += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn caps_double_from_the_base_up_to_the_maximum() {
        let policy = RetryPolicy::default();
        let caps: Vec<_> = (1..=7).map(|r| policy.cap(r).as_millis()).collect();
        assert_eq!(caps, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        // Absurd retry numbers neither overflow nor exceed the maximum.
        assert_eq!(policy.cap(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_cap() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay_with(3, None, 0.0), Duration::ZERO);
        assert_eq!(policy.delay_with(3, None, 1.0), Duration::from_millis(800));
        assert_eq!(policy.delay_with(3, None, 0.5), Duration::from_millis(400));
        // Out-of-range jitter is clamped, never beyond the cap.
        assert_eq!(policy.delay_with(3, None, 7.0), Duration::from_millis(800));
        for retry in 1..=10 {
            for _ in 0..200 {
                let delay = policy.delay(retry, Some(codes::SYSTEM_BUSY));
                assert!(delay <= policy.cap(retry), "retry {retry}: {delay:?}");
            }
        }
    }

    #[test]
    fn random_jitter_is_not_constant() {
        let policy = RetryPolicy::default();
        let delays: std::collections::HashSet<_> = (0..50).map(|_| policy.delay(5, None)).collect();
        assert!(delays.len() > 1, "jitter must vary: {delays:?}");
    }

    #[test]
    fn frequency_limit_waits_at_least_the_floor() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            ..RetryPolicy::default()
        };
        for unit in [0.0, 0.3, 1.0] {
            assert_eq!(
                policy.delay_with(1, Some(codes::FREQUENCY_LIMIT), unit),
                FREQUENCY_LIMIT_FLOOR
            );
        }
        let slow = RetryPolicy::default();
        assert_eq!(
            slow.delay_with(6, Some(codes::FREQUENCY_LIMIT), 1.0),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn attempts_and_elapsed_time_bound_the_retries() {
        let policy = RetryPolicy::default();
        let zero = Duration::ZERO;
        assert!(policy.allows(1, zero, zero));
        assert!(policy.allows(3, zero, zero));
        assert!(!policy.allows(4, zero, zero), "4 attempts = 3 retries");
        assert!(policy.allows(1, Duration::from_secs(29), Duration::from_secs(1)));
        assert!(!policy.allows(1, Duration::from_secs(29), Duration::from_millis(1001)));
        assert!(!RetryPolicy::never().allows(1, zero, zero));
    }

    fn api_error(errcode: i64) -> WeComError {
        WeComError::Api {
            api: Api::GetLink,
            errcode,
            errmsg: String::new(),
        }
    }

    /// Runs `with_retries` over a scripted sequence of results, recording when each
    /// attempt started (on tokio's paused clock).
    async fn run_script(
        policy: &RetryPolicy,
        script: Vec<Result<u32, AttemptFailure>>,
    ) -> (Result<u32, WeComError>, Vec<Duration>) {
        let started = Instant::now();
        let script = Mutex::new(script.into_iter());
        let starts = Mutex::new(Vec::new());
        let result = with_retries(policy, Api::GetLink, |_| {
            starts.lock().unwrap().push(started.elapsed());
            let next = script.lock().unwrap().next().expect("script too short");
            async move { next }
        })
        .await;
        (result, starts.into_inner().unwrap())
    }

    fn retryable(errcode: i64) -> Result<u32, AttemptFailure> {
        Err(AttemptFailure::retryable_if_class_says(api_error(errcode)))
    }

    #[tokio::test(start_paused = true)]
    async fn system_busy_is_retried_within_the_caps() {
        let policy = RetryPolicy::default();
        let (result, starts) = run_script(&policy, vec![retryable(-1), retryable(-1), Ok(7)]).await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(starts.len(), 3);
        assert!(starts[1] - starts[0] <= policy.cap(1), "{starts:?}");
        assert!(starts[2] - starts[1] <= policy.cap(2), "{starts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn frequency_limit_backs_off_at_least_the_floor() {
        let (result, starts) = run_script(
            &RetryPolicy::default(),
            vec![retryable(codes::FREQUENCY_LIMIT), Ok(1)],
        )
        .await;
        assert_eq!(result.unwrap(), 1);
        assert!(starts[1] - starts[0] >= FREQUENCY_LIMIT_FLOOR, "{starts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn terminal_errors_return_at_once() {
        let (result, starts) = run_script(
            &RetryPolicy::default(),
            vec![retryable(codes::INVALID_PARAMETER)],
        )
        .await;
        assert_eq!(result.unwrap_err(), api_error(codes::INVALID_PARAMETER));
        assert_eq!(starts, vec![Duration::ZERO]);
    }

    #[tokio::test(start_paused = true)]
    async fn unsafe_retries_are_not_made() {
        let timeout = WeComError::Timeout {
            api: Api::CreateLink,
        };
        let (result, starts) = run_script(
            &RetryPolicy::default(),
            vec![Err(AttemptFailure::final_(timeout.clone()))],
        )
        .await;
        assert_eq!(result.unwrap_err(), timeout);
        assert_eq!(starts.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts() {
        let policy = RetryPolicy::default();
        let (result, starts) = run_script(&policy, (0..4).map(|_| retryable(-1)).collect()).await;
        match result.unwrap_err() {
            WeComError::RetriesExhausted {
                api,
                attempts,
                last,
            } => {
                assert_eq!(api, Api::GetLink);
                assert_eq!(attempts, 4);
                assert_eq!(*last, api_error(-1));
            }
            other => panic!("expected RetriesExhausted, got {other:?}"),
        }
        assert_eq!(starts.len(), 4);
        let cap_sum: Duration = (1..=3).map(|r| policy.cap(r)).sum();
        assert!(starts[3] <= cap_sum, "{starts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_time_budget_is_spent() {
        // Every 45009 waits at least a second; a 2.5 s budget allows two retries at most.
        let policy = RetryPolicy {
            max_attempts: 100,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            max_elapsed: Duration::from_millis(2500),
        };
        let (result, starts) = run_script(
            &policy,
            (0..100)
                .map(|_| retryable(codes::FREQUENCY_LIMIT))
                .collect(),
        )
        .await;
        assert!(matches!(
            result.unwrap_err(),
            WeComError::RetriesExhausted { attempts: 3, .. }
        ));
        assert_eq!(starts.len(), 3);
        assert!(*starts.last().unwrap() <= policy.max_elapsed);
    }
}
