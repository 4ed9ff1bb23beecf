//! The request budget of one WeCom app: a token bucket every HTTP request of the app passes
//! through (gettoken, API calls and their retries alike), so a controller with many links
//! stays well under WeCom's published 10,000 calls per minute and corp.
//!
//! Callers wait for a permit; the budget never fails a call. Hand-written rather than taken
//! from `governor` because the wait must run on tokio's clock: tests pause and advance it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A continuously refilled token bucket of `requests_per_minute`, with a burst of a tenth
/// of that (at least one request).
#[derive(Debug)]
pub struct RequestBudget {
    /// Tokens added per second.
    rate_per_sec: f64,
    burst: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// May go negative: each waiting caller has reserved the token it will use, so waiters
    /// are served in the order they arrived.
    tokens: f64,
    refilled_at: Instant,
}

impl RequestBudget {
    /// `requests_per_minute` of 0 is treated as 1: a budget that never admits a request
    /// would hang every caller forever.
    pub fn new(requests_per_minute: u32) -> Self {
        let rpm = requests_per_minute.max(1);
        let burst = f64::from((rpm / 10).max(1));
        Self {
            rate_per_sec: f64::from(rpm) / 60.0,
            burst,
            state: Mutex::new(BucketState {
                tokens: burst,
                refilled_at: Instant::now(),
            }),
        }
    }

    /// The most requests admitted at once after an idle period.
    pub fn burst(&self) -> u32 {
        // `burst` came from a u32, so the conversion back is exact.
        self.burst as u32
    }

    /// Waits until one request may be sent. A caller dropped while waiting loses its
    /// reservation (the budget is then briefly stricter than configured, never looser).
    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes one token and returns how long to wait until it is really available.
    fn reserve(&self) -> Duration {
        // The lock is never held across an await; a poisoned lock only means another
        // caller panicked mid-update of two numbers, which are still usable.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let earned = now.duration_since(state.refilled_at).as_secs_f64() * self.rate_per_sec;
        state.tokens = (state.tokens + earned).min(self.burst);
        state.refilled_at = now;
        state.tokens -= 1.0;
        if state.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.tokens / self.rate_per_sec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn burst_is_admitted_at_once_then_requests_are_paced() {
        // 600/min = 10/s, burst 60.
        let budget = RequestBudget::new(600);
        assert_eq!(budget.burst(), 60);
        let start = Instant::now();
        for _ in 0..60 {
            budget.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst must not wait");
        budget.acquire().await;
        let after_one = start.elapsed();
        assert!(
            after_one >= Duration::from_millis(99) && after_one <= Duration::from_millis(101),
            "{after_one:?}"
        );
        for _ in 0..9 {
            budget.acquire().await;
        }
        let after_ten = start.elapsed();
        assert!(
            after_ten >= Duration::from_millis(999) && after_ten <= Duration::from_millis(1001),
            "{after_ten:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refill_is_continuous_and_capped_at_the_burst() {
        let budget = RequestBudget::new(60); // 1/s, burst 6
        assert_eq!(budget.burst(), 6);
        for _ in 0..6 {
            budget.acquire().await;
        }
        // An hour idle earns only a burst, not 3600 requests.
        tokio::time::advance(Duration::from_secs(3600)).await;
        let start = Instant::now();
        for _ in 0..6 {
            budget.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        budget.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(999));
    }

    #[tokio::test(start_paused = true)]
    async fn tiny_budgets_still_admit_one_request() {
        let budget = RequestBudget::new(0);
        assert_eq!(budget.burst(), 1);
        let start = Instant::now();
        budget.acquire().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        budget.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(59));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_budget() {
        let budget = Arc::new(RequestBudget::new(120)); // 2/s, burst 12
        let start = Instant::now();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let budget = Arc::clone(&budget);
                tokio::spawn(async move {
                    budget.acquire().await;
                    start.elapsed()
                })
            })
            .collect();
        let mut done = Vec::new();
        for task in tasks {
            done.push(task.await.unwrap());
        }
        done.sort();
        // 12 at once, then 20 more at 2/s: the last one waits 10 s.
        assert_eq!(done.iter().filter(|d| d.is_zero()).count(), 12);
        let last = done[31];
        assert!(
            last >= Duration::from_millis(9_999) && last <= Duration::from_millis(10_001),
            "{last:?}"
        );
    }
}
