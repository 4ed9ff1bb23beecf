//! When a link's polling and slow facts are due, and how often an app's links can be polled
//! within its budget: pure functions of the link's UID, the clock and the cadence.
//!
//! Every link polls at its own phase of the interval, from a hash of its UID, so 10,000
//! links spread uniformly over the interval instead of pulsing together, and the phase is
//! the same after a restart or a leader change: a restart sends no burst, each link just
//! waits for its next phase point.

use std::time::Duration;

use crate::wecom::scheduler::Priority;

/// A stable 64-bit hash of a UID (FNV-1a: the same in every build and process, unlike the
/// standard library's hasher, which may change between Rust versions).
pub fn uid_hash(uid: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in uid.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short keys that differ only at the end: fold the high
    // half in (a finaliser as in splitmix64).
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

/// The link's offset within every `interval`, in milliseconds.
pub fn phase_ms(uid_hash: u64, interval: Duration) -> u64 {
    let interval_ms = (interval.as_millis() as u64).max(1);
    uid_hash % interval_ms
}

/// Milliseconds from `now_ms` (Unix milliseconds) to the first phase point of the link
/// strictly after `after_ms`, counted from `now_ms` (zero when that point has passed).
pub fn until_phase_after(now_ms: u64, after_ms: u64, uid_hash: u64, interval: Duration) -> u64 {
    let interval_ms = (interval.as_millis() as u64).max(1);
    let phase = phase_ms(uid_hash, interval);
    // Phase points are phase + k * interval, k >= 0.
    let point = if after_ms < phase {
        phase
    } else {
        phase + ((after_ms - phase) / interval_ms + 1) * interval_ms
    };
    point.saturating_sub(now_ms)
}

/// When the next poll of a link is due, in Unix milliseconds, given what is known of the
/// last one.
pub fn next_poll_ms(last: LastPoll, uid_hash: u64, interval: Duration) -> u64 {
    let interval_ms = interval.as_millis() as u64;
    let after = match last {
        // At rest passes land on phase points: the next is one interval on. A late pass
        // (deferred by the budget) comes back to its phase within half an interval more.
        LastPoll::At(at) => at + interval_ms / 2,
        // Nothing to learn from WeCom until a whole interval has passed.
        LastPoll::Created(at) => at + interval_ms,
        // Unknown (a restart, a new leader): the next phase point.
        LastPoll::Unknown { now } => now,
    };
    after + until_phase_after(after, after, uid_hash, interval)
}

/// What a pass knows of the last time it asked WeCom about the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastPoll {
    /// A2 at this Unix millisecond.
    At(u64),
    /// The controller created the link at this Unix millisecond.
    Created(u64),
    /// Nothing (this process has not polled it).
    Unknown { now: u64 },
}

impl LastPoll {
    /// What a process that has not asked WeCom itself (a restart, a new leader) learns from
    /// a time status records (RFC 3339: `lastSyncTime`, `customers.countedAt`), which moves
    /// only when the controller learnt something new about the link. Less than `every`
    /// ago, nothing new is expected before a whole interval from then, as for a link just
    /// created; older, unreadable or in the future, the next phase point.
    pub fn restored(stamp: Option<&str>, now: u64, every: Duration) -> LastPoll {
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        let at = stamp
            .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .and_then(|t| u64::try_from(t.as_millisecond()).ok());
        match at {
            Some(at) if at <= now && now < at.saturating_add(every_ms) => LastPoll::Created(at),
            _ => LastPoll::Unknown { now },
        }
    }
}

/// What started a pass, for its priority class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassCause {
    /// The spec changed since status last observed it.
    pub spec_changed: bool,
    /// `reconcile-requested-at` is new.
    pub requested: bool,
    /// The object is being deleted.
    pub deleting: bool,
    /// A callback asked for this pass (a link reported deleted).
    pub callback: bool,
    /// The paused annotation was set or removed since status last showed it.
    pub pause_changed: bool,
    /// No link exists yet, or an interrupted create is being recovered.
    pub creating: bool,
}

/// The class of a pass's WeCom requests (slow facts within it ask as [`Priority::SlowFact`]).
pub fn pass_priority(cause: PassCause) -> Priority {
    if cause.spec_changed
        || cause.requested
        || cause.deleting
        || cause.callback
        || cause.pause_changed
    {
        Priority::Now
    } else if cause.creating {
        Priority::Create
    } else {
        Priority::Poll
    }
}

/// The share of an app's cap (and of its corp's per-API limit) that polling may use; the
/// rest stays free for edits, creates and recovery.
pub const POLL_SHARE: f64 = 0.5;

/// The interval at which `links` links of an app can each be polled (one A2) within
/// [`POLL_SHARE`] of the app's cap of `requests_per_minute` (which also carries the slow
/// facts: `slow_calls_per_link_hour`) and of its corp's per-API limit; never shorter than
/// `resync`.
pub fn effective_resync(
    resync: Duration,
    links: usize,
    requests_per_minute: u32,
    corp_per_minute: u32,
    slow_calls_per_link_hour: f64,
) -> Duration {
    if links == 0 {
        return resync;
    }
    let links = links as f64;
    let app_share = f64::from(requests_per_minute) * POLL_SHARE;
    // What the slow facts leave of the app's share, per minute.
    let slow_per_minute = links * slow_calls_per_link_hour / 60.0;
    let for_polls = (app_share - slow_per_minute)
        .max(app_share * 0.1)
        .min(f64::from(corp_per_minute) * POLL_SHARE);
    let seconds = links * 60.0 / for_polls.max(f64::MIN_POSITIVE);
    resync.max(Duration::from_secs_f64(seconds.min(86_400.0 * 7.0)))
}

/// Calls per link and hour the slow facts need: one A6 page per customers interval and one
/// A7 per statistics interval (links with more than 1,000 customers need more A6 pages).
pub fn slow_calls_per_link_hour(customers: Duration, statistics: Duration) -> f64 {
    let per_hour = |every: Duration| 3600.0 / every.as_secs_f64().max(1.0);
    per_hour(customers) + per_hour(statistics)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn phases_of_ten_thousand_uids_spread_uniformly() {
        // 10,000 UIDs shaped as Kubernetes makes them, into 20 slices of the interval.
        let mut slices = [0u32; 20];
        for i in 0..10_000u32 {
            let uid = format!("6f1c2a3b-{:04x}-4d5e-8f90-{:012x}", i % 65_536, i * 7919);
            let phase = phase_ms(uid_hash(&uid), FIVE_MIN);
            slices[(phase * 20 / 300_000) as usize] += 1;
        }
        // 500 expected per slice; a uniform spread stays within about 4 sigma (~90).
        for (i, n) in slices.iter().enumerate() {
            assert!(
                (410..=590).contains(n),
                "slice {i}: {n} of 10,000 ({slices:?})"
            );
        }
    }

    #[test]
    fn the_next_phase_point_is_strictly_after_and_within_one_interval() {
        let hash = uid_hash("a");
        let phase = phase_ms(hash, FIVE_MIN);
        for after in [0, phase, phase + 1, 1_000_000, 1_700_000_000_000] {
            let wait = until_phase_after(after, after, hash, FIVE_MIN);
            assert!(wait > 0 && wait <= 300_000, "after {after}: {wait}");
            assert_eq!((after + wait) % 300_000, phase);
        }
    }

    #[test]
    fn polls_at_rest_are_one_interval_apart_and_creates_wait_a_whole_interval() {
        let hash = uid_hash("b");
        let now = 1_700_000_000_000;
        let first = next_poll_ms(LastPoll::Unknown { now }, hash, FIVE_MIN);
        assert!(first > now && first <= now + 300_000);
        let second = next_poll_ms(LastPoll::At(first), hash, FIVE_MIN);
        assert_eq!(second - first, 300_000);
        // A late poll (deferred by 40 s) returns to its phase.
        let late = next_poll_ms(LastPoll::At(first + 40_000), hash, FIVE_MIN);
        assert_eq!(late, second);
        let created = next_poll_ms(LastPoll::Created(now), hash, FIVE_MIN);
        assert!(created >= now + 300_000 && created <= now + 600_000);
    }

    #[test]
    fn after_a_restart_a_recent_status_change_waits_a_whole_interval() {
        let hash = uid_hash("c");
        // 2023-11-14T22:13:20Z
        let now = 1_700_000_000_000;
        let two_minutes_ago = Some("2023-11-14T22:11:20.5Z");
        let last = LastPoll::restored(two_minutes_ago, now, FIVE_MIN);
        assert_eq!(last, LastPoll::Created(now - 119_500));
        let due = next_poll_ms(last, hash, FIVE_MIN);
        assert!(due >= now - 119_500 + 300_000, "{due}");
        // Older than an interval, unreadable, in the future or absent: the next phase point.
        for stamp in [
            Some("2023-11-14T22:08:20Z"),
            Some("yesterday"),
            Some("2023-11-14T23:00:00Z"),
            None,
        ] {
            assert_eq!(
                LastPoll::restored(stamp, now, FIVE_MIN),
                LastPoll::Unknown { now },
                "{stamp:?}"
            );
        }
    }

    #[test]
    fn passes_a_person_or_wecom_asked_for_come_first() {
        let now = |c: PassCause| pass_priority(c);
        assert_eq!(
            now(PassCause {
                spec_changed: true,
                creating: true,
                ..Default::default()
            }),
            Priority::Now
        );
        for cause in [
            PassCause {
                requested: true,
                ..Default::default()
            },
            PassCause {
                deleting: true,
                ..Default::default()
            },
            PassCause {
                callback: true,
                ..Default::default()
            },
            PassCause {
                pause_changed: true,
                ..Default::default()
            },
        ] {
            assert_eq!(now(cause), Priority::Now);
        }
        assert_eq!(
            now(PassCause {
                creating: true,
                ..Default::default()
            }),
            Priority::Create
        );
        assert_eq!(now(PassCause::default()), Priority::Poll);
    }

    #[test]
    fn the_poll_interval_stretches_when_the_budget_cannot_cover_it() {
        let slow = slow_calls_per_link_hour(Duration::from_secs(1800), Duration::from_secs(3600));
        assert_eq!(slow, 3.0);
        // 100 links at 600/min: 20/min of polls, far within 300/min.
        assert_eq!(effective_resync(FIVE_MIN, 100, 600, 10_000, slow), FIVE_MIN);
        // 10,000 links at 600/min: slow facts take 500/min of the 300/min share, so polls
        // get a tenth of it (30/min): 10,000 links every 333 minutes.
        let stretched = effective_resync(FIVE_MIN, 10_000, 600, 10_000, slow);
        assert_eq!(stretched.as_secs(), 20_000);
        // At WeCom's limit: 5,000 - 500 = 4,500/min for polls, 10,000 links every 133 s,
        // so the 5-minute resync stands.
        assert_eq!(
            effective_resync(FIVE_MIN, 10_000, 10_000, 10_000, slow),
            FIVE_MIN
        );
        // 10,000 links polled every 30 s would need 20,000/min.
        let fast = effective_resync(Duration::from_secs(30), 10_000, 10_000, 10_000, slow);
        assert!(fast.as_secs() >= 133 && fast.as_secs() <= 134, "{fast:?}");
        assert_eq!(effective_resync(FIVE_MIN, 0, 1, 1, slow), FIVE_MIN);
    }
}
