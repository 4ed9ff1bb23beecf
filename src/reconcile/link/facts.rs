//! Customers (A6) and statistics (A7), each on its own cadence.
//!
//! These are reports about the link, not the link: a failure to read them never fails the
//! pass (the link stays Ready and in sync, the previous values stay in status). It is
//! logged, published as one Warning Event per run of failures, and retried at the next pass
//! when retryable, at the fact's own cadence otherwise. Due times not known to this process
//! (a restart) wait for the link's phase when status already has the fact, so a restart
//! sends no burst of A6 and A7.

use std::time::Duration;

use super::{external::External, link_hash, pass::Pass, pipeline::POLL_EARLY_MS, report::Happened};
use crate::{
    api::{CustomerCount, LinkStatistics},
    reconcile::{
        context::SlowFacts,
        pacing::{self, LastPoll},
        plan,
    },
    wecom::{
        WeComError,
        scheduler::{Priority, with_priority},
        unix_now, unix_now_ms,
    },
};

/// When the facts are due, from what this process planned or, after a restart, the link's
/// phase.
struct Clock {
    now: u64,
    hash: u64,
}

impl Clock {
    /// A fact never read is due now; one in status waits for the link's phase, a whole
    /// interval after `read_at` when status says it was read (changed) less than an
    /// interval ago.
    fn first_due(&self, known: bool, read_at: Option<&str>, every: Duration) -> u64 {
        if known {
            let last = LastPoll::restored(read_at, self.now, every);
            pacing::next_poll_ms(last, self.hash, every)
        } else {
            self.now
        }
    }

    fn next_due(&self, every: Duration) -> u64 {
        pacing::next_poll_ms(LastPoll::At(self.now), self.hash, every)
    }

    fn is_due(&self, due: u64) -> bool {
        due <= self.now + POLL_EARLY_MS
    }
}

pub(super) async fn refresh(pass: &mut Pass<'_>, ext: &External<'_>, link_id: &str) {
    let key = pass.key();
    let ctx = pass.ctx;
    let mut facts = ctx
        .slow_facts
        .lock()
        .ok()
        .and_then(|m| m.get(&key).cloned())
        .filter(|f| f.link_id == link_id)
        .unwrap_or_else(|| SlowFacts {
            link_id: link_id.to_string(),
            ..Default::default()
        });
    let clock = Clock {
        now: unix_now_ms(),
        hash: link_hash(pass.link),
    };
    refresh_customers(pass, ext, &mut facts, &clock).await;
    refresh_statistics(pass, ext, &mut facts, &clock).await;
    let (namespace, name) = key.split_once('/').unwrap_or_default();
    ctx.metrics.set_link_facts(
        namespace,
        name,
        link_id,
        pass.new.customers.as_ref(),
        pass.new.statistics.as_ref(),
    );
    if let Ok(mut map) = ctx.slow_facts.lock() {
        map.insert(key, facts);
    }
}

/// One fact's due time and run of failures (fields of [`SlowFacts`]), its cadence and how
/// its failures are reported.
struct Track<'f> {
    due: &'f mut Option<u64>,
    failing: &'f mut bool,
    every: Duration,
    reason: &'static str,
    what: &'static str,
}

impl Track<'_> {
    /// Whether the fact is due now; a due time this process does not know yet is set first
    /// (`known`: status already has the fact).
    fn is_due(&mut self, clock: &Clock, known: bool, read_at: Option<&str>) -> bool {
        let every = self.every;
        let due = *self
            .due
            .get_or_insert_with(|| clock.first_due(known, read_at, every));
        clock.is_due(due)
    }

    fn read(&mut self, clock: &Clock) {
        *self.due = Some(clock.next_due(self.every));
        *self.failing = false;
    }

    /// A failed read. One deferred by the budget or WeCom's rate limit is no failure: it
    /// is due when they say. Otherwise a run of failures starts (one Warning Event) or goes
    /// on; a retryable one is due again at the next pass, another at the fact's cadence.
    async fn failed(&mut self, pass: &Pass<'_>, clock: &Clock, err: &WeComError) {
        if let Some(after) = err.retry_after() {
            let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            *self.due = Some(clock.now.saturating_add(after));
            return;
        }
        if !err.is_retryable() {
            *self.due = Some(clock.next_due(self.every));
        }
        if !std::mem::replace(self.failing, true) {
            fact_failed(pass, self.reason, self.what, err).await;
        }
    }
}

async fn refresh_customers(
    pass: &mut Pass<'_>,
    ext: &External<'_>,
    facts: &mut SlowFacts,
    clock: &Clock,
) {
    let mut track = Track {
        due: &mut facts.customers_due,
        failing: &mut facts.customers_failing,
        every: pass.ctx.cadence.customers,
        reason: "CustomerCountFailed",
        what: "customers",
    };
    let customers = pass.new.customers.as_ref();
    let counted_at = customers.and_then(|c| c.counted_at.as_deref());
    if !track.is_due(clock, customers.is_some(), counted_at) {
        return;
    }
    let channels = &pass.link.spec.channels;
    let counted = with_priority(Priority::SlowFact, ext.customers(&facts.link_id, channels)).await;
    match counted {
        Ok((count, seen)) => {
            track.read(clock);
            facts.counted = Some(std::sync::Arc::new(seen));
            note_customers(pass, count);
        }
        Err(err) => track.failed(pass, clock, &err).await,
    }
}

/// Takes a new count into status, keeping when customers were last added as callbacks
/// reported it (A6 rarely says); an unchanged count is not written again.
fn note_customers(pass: &mut Pass<'_>, mut count: CustomerCount) {
    if let Some(previous) = pass
        .new
        .customers
        .as_ref()
        .and_then(CustomerCount::last_added_at)
    {
        count.note_added_at(previous);
    }
    let unchanged = pass.new.customers.as_ref().is_some_and(|c| {
        c.total == count.total
            && c.by_channel == count.by_channel
            && c.last_add_time == count.last_add_time
    });
    if !unchanged {
        count.counted_at = Some(pass.now.0.to_string());
        pass.new.customers = Some(count);
    }
}

async fn refresh_statistics(
    pass: &mut Pass<'_>,
    ext: &External<'_>,
    facts: &mut SlowFacts,
    clock: &Clock,
) {
    let mut track = Track {
        due: &mut facts.statistics_due,
        failing: &mut facts.statistics_failing,
        every: pass.ctx.cadence.statistics,
        reason: "StatisticsFailed",
        what: "statistics",
    };
    // Statistics record the days they cover, not when they were read: the next phase point.
    if !track.is_due(clock, pass.new.statistics.is_some(), None) {
        return;
    }
    let window = plan::stats_window(unix_now(), pass.ctx.cadence.statistics_days);
    let read = with_priority(Priority::SlowFact, ext.statistics(&facts.link_id, &window)).await;
    match read {
        Ok(stats) => {
            track.read(clock);
            pass.new.statistics = Some(LinkStatistics {
                window_days: window.days,
                click_customers: stats.click_link_customer_cnt,
                new_customers: stats.new_customer_cnt,
                from: window.from,
                to: window.to,
            });
        }
        Err(err) => track.failed(pass, clock, &err).await,
    }
}

async fn fact_failed(pass: &Pass<'_>, reason: &'static str, what: &'static str, err: &WeComError) {
    let error = crate::wecom::redact::scrub(&err.to_string());
    tracing::warn!(link = %pass.key(), %error, "could not refresh the link's {what}");
    pass.tell(Happened::FactFailed {
        reason,
        what,
        error: &error,
    })
    .await;
}
