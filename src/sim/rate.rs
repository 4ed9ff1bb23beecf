//! WeCom's frequency limits for one API: at most N calls in any sliding minute and M in any
//! sliding hour, and the block an overrun earns (45009 for every call until 60 s, or one
//! hour, after the call that went over). Pure bookkeeping on a clock the caller passes in,
//! so the simulator can move it forward (`POST /_sim/clock`) and tests need not wait.
//!
//! Calls are counted in buckets (100 ms for the minute, 1 s for the hour), so a window
//! holds at most 600 or 3,600 counters however many calls it sees: 150,000 calls an hour
//! cost the same as ten. A bucket leaves the window once its start is a full window old,
//! so a limit is enforced to within one bucket (the simulator is at most 100 ms, or 1 s,
//! more lenient than an exact sliding window, never stricter).

use std::collections::VecDeque;
use std::time::Duration;

/// Which window refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overrun {
    Minute,
    Hour,
}

impl Overrun {
    pub fn describe(self) -> &'static str {
        match self {
            Overrun::Minute => "a minute",
            Overrun::Hour => "an hour",
        }
    }
}

/// One sliding window: counts per bucket, oldest first, and the block after an overrun.
#[derive(Debug, Clone)]
struct Window {
    span: Duration,
    bucket: Duration,
    /// (bucket number since the clock's start, calls in it); only non-empty buckets.
    counts: VecDeque<(u64, u32)>,
    total: u64,
    blocked_until: Option<Duration>,
}

impl Window {
    fn new(span: Duration, bucket: Duration) -> Window {
        Window {
            span,
            bucket,
            counts: VecDeque::new(),
            total: 0,
            blocked_until: None,
        }
    }

    fn bucket_of(&self, at: Duration) -> u64 {
        u64::try_from(at.as_millis() / self.bucket.as_millis().max(1)).unwrap_or(u64::MAX)
    }

    /// Drops the buckets that started a full span (or more) before `now`.
    fn expire(&mut self, now: Duration) {
        while let Some(&(b, n)) = self.counts.front() {
            let start = u128::from(b) * self.bucket.as_millis();
            if start + self.span.as_millis() > now.as_millis() {
                break;
            }
            self.counts.pop_front();
            self.total = self.total.saturating_sub(u64::from(n));
        }
    }

    fn blocked(&self, now: Duration) -> bool {
        self.blocked_until.is_some_and(|until| now < until)
    }

    fn record(&mut self, now: Duration) {
        let b = self.bucket_of(now);
        match self.counts.back_mut() {
            Some((last, n)) if *last == b => *n = n.saturating_add(1),
            _ => self.counts.push_back((b, 1)),
        }
        self.total += 1;
    }
}

/// The limits of one API and what it has seen.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_minute: Option<u32>,
    per_hour: Option<u32>,
    minute: Window,
    hour: Window,
}

impl RateLimiter {
    pub fn new(per_minute: Option<u32>, per_hour: Option<u32>) -> RateLimiter {
        RateLimiter {
            per_minute,
            per_hour,
            minute: Window::new(Duration::from_secs(60), Duration::from_millis(100)),
            hour: Window::new(Duration::from_secs(3600), Duration::from_secs(1)),
        }
    }

    /// Admits a call at `now` (counting it) or says which limit refuses it. A call past a
    /// limit starts that window's block; refused calls do not count toward any limit, so a
    /// caller that backs off recovers once the block has passed.
    pub fn admit(&mut self, now: Duration) -> Result<(), Overrun> {
        if self.hour.blocked(now) {
            return Err(Overrun::Hour);
        }
        if self.minute.blocked(now) {
            return Err(Overrun::Minute);
        }
        self.minute.expire(now);
        self.hour.expire(now);
        if self
            .per_hour
            .is_some_and(|n| self.hour.total >= u64::from(n))
        {
            self.hour.blocked_until = Some(now + self.hour.span);
            return Err(Overrun::Hour);
        }
        if self
            .per_minute
            .is_some_and(|n| self.minute.total >= u64::from(n))
        {
            self.minute.blocked_until = Some(now + self.minute.span);
            return Err(Overrun::Minute);
        }
        self.minute.record(now);
        self.hour.record(now);
        Ok(())
    }

    /// The counters held (for the cost check in tests).
    pub fn buckets(&self) -> usize {
        self.minute.counts.len() + self.hour.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_minute_overrun_blocks_for_sixty_seconds() {
        let mut r = RateLimiter::new(Some(2), None);
        assert_eq!(r.admit(S(10)), Ok(()));
        assert_eq!(r.admit(S(30)), Ok(()));
        assert_eq!(r.admit(S(40)), Err(Overrun::Minute));
        // The call at 10 s has left the window at 70 s, but the block lasts until 100 s.
        assert_eq!(r.admit(S(99)), Err(Overrun::Minute));
        assert_eq!(r.admit(S(100)), Ok(()));
    }

    #[test]
    fn an_hour_overrun_blocks_for_an_hour_from_the_overrun() {
        let mut r = RateLimiter::new(None, Some(3));
        for t in [0, 1000, 2000] {
            assert_eq!(r.admit(S(t)), Ok(()));
        }
        assert_eq!(r.admit(S(3000)), Err(Overrun::Hour));
        // The window alone would admit again at 3600 s; the block holds until 6600 s.
        assert_eq!(r.admit(S(6599)), Err(Overrun::Hour));
        assert_eq!(r.admit(S(6600)), Ok(()));
    }

    #[test]
    fn the_hour_window_slides() {
        let mut r = RateLimiter::new(None, Some(2));
        assert_eq!(r.admit(S(0)), Ok(()));
        assert_eq!(r.admit(S(1800)), Ok(()));
        assert_eq!(r.admit(S(3600)), Ok(()), "the call at 0 s is an hour old");
        assert_eq!(r.admit(S(3601)), Err(Overrun::Hour));
    }

    #[test]
    fn counting_is_compact() {
        let mut r = RateLimiter::new(Some(10_000), Some(150_000));
        let mut admitted = 0u32;
        for i in 0..150_000u64 {
            // 150,000 calls spread over 59 minutes: 2,542 a minute.
            if r.admit(Duration::from_millis(i * 23_600 / 1000)).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 150_000);
        assert!(r.buckets() <= 600 + 3600, "{} buckets", r.buckets());
        assert_eq!(r.admit(S(3540)), Err(Overrun::Hour));
    }
}
