//! The simulated corp's acquisition quota: batches with an expiry date, consumed one per new
//! customer from the batch that expires first, and the threshold crossings WeCom pushes
//! callbacks for (balance below 20, exhausted, increased from 0, a batch expiring soon).

use serde::Serialize;

use crate::wecom::types::{QuotaBatch, QuotaResponse};

/// WeCom warns (`balance_low`) when the balance drops below this.
pub const LOW_BALANCE: u64 = 20;
/// Days before a batch's expiry at which WeCom pushes `quota_expire_soon`.
pub const EXPIRE_SOON_DAYS: [i64; 5] = [14, 7, 3, 2, 1];
const DAY: i64 = 86_400;

/// A threshold the quota crossed: the callbacks the simulator pushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaSignal {
    BalanceLow,
    BalanceExhausted,
    BalanceIncreased,
    /// A batch will expire at `expire_time` with `expire_quota_num` left.
    ExpireSoon {
        expire_time: i64,
        expire_quota_num: u64,
    },
}

/// The quota as the simulator keeps it.
#[derive(Debug, Clone, Default)]
pub struct QuotaLedger {
    batches: Vec<QuotaBatch>,
    /// Cumulative quota used (A8 `total`).
    used: u64,
    /// Sim time of the last expiry check: thresholds in `(checked_at, now]` fire.
    checked_at: i64,
}

/// `/_sim/state` view of the quota: the A8 answer plus every batch, expired ones included.
#[derive(Debug, Clone, Serialize)]
pub struct QuotaDump {
    #[serde(flatten)]
    pub a8: QuotaResponse,
    pub batches: Vec<BatchDump>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchDump {
    pub expire_date: i64,
    pub balance: u64,
    pub expired: bool,
}

/// Midnight (China time, UTC+8) of the day `days` after the China-time day of `now`.
pub fn china_midnight_after(now: i64, days: i64) -> i64 {
    let day = china_day(now) + days;
    day * DAY - 8 * 3600
}

/// The China-time (UTC+8) day number of a unix time.
pub fn china_day(ts: i64) -> i64 {
    (ts + 8 * 3600).div_euclid(DAY)
}

impl QuotaLedger {
    pub fn new(batches: Vec<QuotaBatch>, now: i64) -> QuotaLedger {
        QuotaLedger {
            batches,
            used: 0,
            checked_at: now,
        }
    }

    /// The built-in quota: one batch of 1000 expiring at midnight a year after `now`.
    pub fn builtin_batches(now: i64) -> Vec<QuotaBatch> {
        vec![QuotaBatch {
            expire_date: china_midnight_after(now, 365),
            balance: 1000,
        }]
    }

    fn live(&self, now: i64) -> impl Iterator<Item = &QuotaBatch> {
        self.batches.iter().filter(move |b| b.expire_date > now)
    }

    /// Sum of the balances of unexpired batches.
    pub fn balance(&self, now: i64) -> u64 {
        self.live(now).map(|b| b.balance).sum()
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    /// The A8 answer.
    pub fn a8(&self, now: i64) -> QuotaResponse {
        let mut quota_list: Vec<QuotaBatch> = self.live(now).cloned().collect();
        quota_list.sort_by_key(|b| b.expire_date);
        QuotaResponse {
            total: self.used,
            balance: self.balance(now),
            quota_list,
        }
    }

    pub fn dump(&self, now: i64) -> QuotaDump {
        QuotaDump {
            a8: self.a8(now),
            batches: self
                .batches
                .iter()
                .map(|b| BatchDump {
                    expire_date: b.expire_date,
                    balance: b.balance,
                    expired: b.expire_date <= now,
                })
                .collect(),
        }
    }

    /// Takes one unit from the unexpired batch that expires first. `None` when the balance
    /// is 0; otherwise the signals the consumption crossed.
    pub fn consume_one(&mut self, now: i64) -> Option<Vec<QuotaSignal>> {
        let before = self.balance(now);
        let batch = self
            .batches
            .iter_mut()
            .filter(|b| b.expire_date > now && b.balance > 0)
            .min_by_key(|b| b.expire_date)?;
        batch.balance -= 1;
        self.used += 1;
        Some(transitions(before, self.balance(now)))
    }

    /// Replaces every batch (`PUT /_sim/quota`); cumulative use is kept.
    pub fn replace(&mut self, batches: Vec<QuotaBatch>, now: i64) -> Vec<QuotaSignal> {
        let before = self.balance(now);
        self.batches = batches;
        transitions(before, self.balance(now))
    }

    /// Moves the expiry check to `now`: every `quota_expire_soon` threshold of a batch with
    /// quota left that lies in `(last check, now]` fires, oldest first.
    pub fn advance_to(&mut self, now: i64) -> Vec<QuotaSignal> {
        if now <= self.checked_at {
            return vec![];
        }
        let mut crossed: Vec<(i64, QuotaSignal)> = Vec::new();
        for b in &self.batches {
            if b.balance == 0 {
                continue;
            }
            for days in EXPIRE_SOON_DAYS {
                let at = b.expire_date - days * DAY;
                if self.checked_at < at && at <= now {
                    crossed.push((
                        at,
                        QuotaSignal::ExpireSoon {
                            expire_time: b.expire_date,
                            expire_quota_num: b.balance,
                        },
                    ));
                }
            }
        }
        self.checked_at = now;
        crossed.sort_by_key(|(at, _)| *at);
        crossed.into_iter().map(|(_, s)| s).collect()
    }
}

/// Signals for a balance change from `before` to `after`.
fn transitions(before: u64, after: u64) -> Vec<QuotaSignal> {
    let mut out = Vec::new();
    if before == 0 && after > 0 {
        out.push(QuotaSignal::BalanceIncreased);
    }
    if before > 0 && after == 0 {
        out.push(QuotaSignal::BalanceExhausted);
    } else if before >= LOW_BALANCE && after < LOW_BALANCE && after > 0 {
        out.push(QuotaSignal::BalanceLow);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn batch(balance: u64, expire_date: i64) -> QuotaBatch {
        QuotaBatch {
            expire_date,
            balance,
        }
    }

    #[test]
    fn consumes_from_the_batch_expiring_first() {
        let mut q = QuotaLedger::new(vec![batch(5, NOW + 10 * DAY), batch(1, NOW + 2 * DAY)], NOW);
        q.consume_one(NOW).unwrap();
        let a8 = q.a8(NOW);
        assert_eq!(a8.total, 1);
        assert_eq!(a8.balance, 5);
        assert_eq!(a8.quota_list[0], batch(0, NOW + 2 * DAY));
    }

    #[test]
    fn expired_batches_do_not_count() {
        let mut q = QuotaLedger::new(vec![batch(5, NOW - 1), batch(2, NOW + DAY)], NOW);
        assert_eq!(q.balance(NOW), 2);
        assert_eq!(q.a8(NOW).quota_list.len(), 1);
        q.consume_one(NOW).unwrap();
        q.consume_one(NOW).unwrap();
        assert_eq!(q.consume_one(NOW), None);
        assert_eq!(q.used(), 2);
    }

    #[test]
    fn low_then_exhausted_then_increased() {
        let mut q = QuotaLedger::new(vec![batch(20, NOW + DAY)], NOW);
        assert_eq!(q.consume_one(NOW), Some(vec![QuotaSignal::BalanceLow]));
        for _ in 0..18 {
            assert_eq!(q.consume_one(NOW), Some(vec![]));
        }
        assert_eq!(
            q.consume_one(NOW),
            Some(vec![QuotaSignal::BalanceExhausted])
        );
        assert_eq!(
            q.replace(vec![batch(3, NOW + DAY)], NOW),
            vec![QuotaSignal::BalanceIncreased]
        );
    }

    #[test]
    fn expire_soon_fires_once_per_threshold_crossed() {
        let expiry = china_midnight_after(NOW, 15);
        let mut q = QuotaLedger::new(vec![batch(7, expiry), batch(0, expiry)], NOW);
        assert!(q.advance_to(NOW + DAY / 2).is_empty());
        let fired = q.advance_to(expiry - 13 * DAY);
        assert_eq!(
            fired,
            vec![QuotaSignal::ExpireSoon {
                expire_time: expiry,
                expire_quota_num: 7
            }]
        );
        assert!(q.advance_to(expiry - 13 * DAY + 10).is_empty());
        // Jumping past 7, 3, 2 and 1 days fires each of them.
        assert_eq!(q.advance_to(expiry - 1).len(), 4);
    }

    #[test]
    fn china_midnight_is_utc_16h() {
        let m = china_midnight_after(NOW, 1);
        assert_eq!((m + 8 * 3600) % DAY, 0);
        assert_eq!(china_day(m), china_day(NOW) + 1);
    }
}
