//! The WeComApp reconciler: checks the credentials, asks A8 once per app on its cadence
//! (shared by all the app's links), and reports quota conditions.

use std::{sync::Arc, time::Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
    },
};

use super::{
    app_usage::{links_using, waiting_message},
    conditions::{
        self, EXPIRY_WARNING_DAYS, LOW_BALANCE, QUOTA_EXHAUSTED, QUOTA_EXPIRING_SOON, QUOTA_LOW,
        READY, Stamped, THROTTLED, reason,
    },
    context::{AppError, Context},
    events::publish_transitions,
    link::{Error, finalizer_outcome},
    notice::Notice,
    pacing, status_apply,
};
use crate::{
    api::{APP_IN_USE_FINALIZER, AppPolling, AppQuota, QuotaBatchStatus, WeComApp, WeComAppStatus},
    wecom::{
        Api as WeComApi, ErrorClass, WeComError,
        client::WeComClient,
        error::codes,
        scheduler::{Priority, with_priority},
        types::QuotaResponse,
    },
};
use kube::runtime::reflector::ObjectRef;

/// The longest wait between two checks of an app that fails for an app-level reason.
pub const APP_RECHECK_MAX: std::time::Duration = std::time::Duration::from_secs(3600);

/// The Ready reason of a WeCom error about the app rather than one link: the permission
/// (48002), the trusted IPs (60020), refused credentials or tokens, or a server at
/// apiBaseUrl answering what WeCom never sends. `None` for passing and link-level errors.
/// Such errors heal when fixed in WeCom: they are re-checked with
/// [`app_recheck_delay`], never left waiting for a spec change.
pub fn app_level_reason(err: &WeComError) -> Option<&'static str> {
    match err.class() {
        ErrorClass::Retryable => return None,
        ErrorClass::TokenInvalid => return Some(reason::CREDENTIALS_INVALID),
        ErrorClass::Terminal => {}
    }
    if err.is_bad_answer() {
        return Some(reason::BAD_ANSWER);
    }
    match err.errcode() {
        Some(codes::NO_PERMISSION) => Some(reason::PERMISSION_DENIED),
        Some(codes::IP_NOT_TRUSTED) => Some(reason::IP_NOT_ALLOWED),
        Some(codes::INVALID_CREDENTIAL | codes::INVALID_CORPID) => {
            Some(reason::CREDENTIALS_INVALID)
        }
        _ if err.api() == WeComApi::GetToken => Some(reason::CREDENTIALS_INVALID),
        _ => None,
    }
}

/// True for the Ready reasons [`app_level_reason`] gives.
pub fn is_app_level_reason(ready_reason: &str) -> bool {
    matches!(
        ready_reason,
        reason::PERMISSION_DENIED
            | reason::IP_NOT_ALLOWED
            | reason::CREDENTIALS_INVALID
            | reason::BAD_ANSWER
    )
}

/// How long after its `failures`-th consecutive app-level failure an app (or a link that
/// met one) asks WeCom again: the resync interval, doubling, at most [`APP_RECHECK_MAX`].
pub fn app_recheck_delay(resync: std::time::Duration, failures: u32) -> std::time::Duration {
    let doublings = failures.saturating_sub(1).min(20);
    resync
        .saturating_mul(1u32 << doublings)
        .min(APP_RECHECK_MAX)
}

fn rfc3339(unix: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The app's quota status from an A8 answer.
pub fn quota_status(quota: &QuotaResponse, now: &Time) -> AppQuota {
    AppQuota {
        total: quota.total,
        balance: quota.balance,
        batches: quota
            .quota_list
            .iter()
            .map(|b| QuotaBatchStatus {
                expire_date: rfc3339(b.expire_date),
                balance: b.balance,
            })
            .collect(),
        observed_at: Some(now.0.to_string()),
    }
}

/// Sets QuotaLow, QuotaExhausted and QuotaExpiringSoon from a quota reading.
pub fn set_quota_conditions(
    status: &mut WeComAppStatus,
    quota: &QuotaResponse,
    generation: Option<i64>,
    now: &Time,
) {
    for (type_, is, reason, message) in quota_conditions(quota, now) {
        conditions::set(
            &mut status.conditions,
            type_,
            is,
            reason,
            message,
            generation,
            now,
        );
    }
}

/// The quota conditions a reading calls for: (type, status, reason, message).
fn quota_conditions(
    quota: &QuotaResponse,
    now: &Time,
) -> [(&'static str, bool, &'static str, String); 3] {
    let balance = quota.balance;
    let remaining = format!("{balance} remaining");
    let exhausted = if balance == 0 {
        (
            QUOTA_EXHAUSTED,
            true,
            reason::BALANCE_EXHAUSTED,
            "the acquisition quota is used up: no new link is created until quota is added"
                .to_string(),
        )
    } else {
        (
            QUOTA_EXHAUSTED,
            false,
            reason::BALANCE_OK,
            remaining.clone(),
        )
    };
    let low = if balance < LOW_BALANCE {
        (
            QUOTA_LOW,
            true,
            reason::BALANCE_LOW,
            format!("only {balance} remaining (below {LOW_BALANCE}): buy more quota"),
        )
    } else {
        (QUOTA_LOW, false, reason::BALANCE_OK, remaining)
    };
    let horizon = now.0.as_second() + EXPIRY_WARNING_DAYS * 86_400;
    let expiring: Vec<_> = quota
        .quota_list
        .iter()
        .filter(|b| b.balance > 0 && b.expire_date <= horizon)
        .collect();
    let expiring = match expiring.iter().min_by_key(|b| b.expire_date) {
        Some(first) => {
            let amount: u64 = expiring.iter().map(|b| b.balance).sum();
            let day = super::plan::stats_window(first.expire_date, 1).to;
            (
                QUOTA_EXPIRING_SOON,
                true,
                reason::BATCH_EXPIRING,
                format!(
                    "{amount} quota expire within {EXPIRY_WARNING_DAYS} days, the first batch on {day}: use or renew it"
                ),
            )
        }
        None => (
            QUOTA_EXPIRING_SOON,
            false,
            reason::NO_BATCH_EXPIRING,
            format!("no batch expires within {EXPIRY_WARNING_DAYS} days"),
        ),
    };
    [exhausted, low, expiring]
}

/// How often an app whose deletion waits for its links looks again (a store read, no call).
const DELETION_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn reconcile(app: Arc<WeComApp>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_guarded(app, &ctx).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.metric_label(),
    };
    ctx.metrics
        .observe_reconcile("WeComApp", label, started.elapsed());
    result
}

pub fn error_policy(app: Arc<WeComApp>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(app = %app.name_any(), namespace = ?app.namespace(), %error, "reconcile failed");
    Action::requeue(super::plan::retry_delay(
        2,
        0.5 + rand::random::<f64>() * 0.5,
    ))
}

/// The app pass behind its in-use finalizer: added before anything else, removed only
/// when no link of the namespace refers to the app any more.
async fn reconcile_guarded(app: Arc<WeComApp>, ctx: &Context) -> Result<Action, Error> {
    let namespace = app.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", app.name_any());
    if app.metadata.deletion_timestamp.is_some() {
        // An unsynced link cache would look empty and let the app go before its links.
        super::context::filled(&ctx.link_store).await;
        let users = links_using(&ctx.link_store, &app);
        if !users.is_empty() {
            announce_waiting(&app, ctx, &key, &users).await;
            return Ok(Action::requeue(DELETION_RECHECK));
        }
    }
    let api: Api<WeComApp> = Api::namespaced(ctx.kube.clone(), &namespace);
    let result = finalizer(&api, APP_IN_USE_FINALIZER, app, |event| async {
        match event {
            Finalizer::Apply(app) => reconcile_inner(&app, ctx).await,
            Finalizer::Cleanup(app) => {
                // Looked at again here: a link made since the check above keeps the app.
                let users = links_using(&ctx.link_store, &app);
                if users.is_empty() {
                    if let Ok(mut waiting) = ctx.app_deletions.lock() {
                        waiting.remove(&key);
                    }
                    Ok(Action::await_change())
                } else {
                    Err(Error::DeletionBlocked(key.clone(), waiting_message(&users)))
                }
            }
        }
    })
    .await;
    finalizer_outcome(result)
}

/// Says once per change of the number of links why a deleted app is still there: an
/// Event (refused in a terminating namespace, so also a log line).
async fn announce_waiting(app: &WeComApp, ctx: &Context, key: &str, users: &[String]) {
    let changed = ctx
        .app_deletions
        .lock()
        .map(|mut waiting| waiting.insert(key.to_string(), users.len()) != Some(users.len()))
        .unwrap_or(true);
    if changed {
        let message = waiting_message(users);
        tracing::info!(app = %key, %message, "WeComApp deletion waits for its links");
        ctx.publish(app, &Notice::normal("WaitingForLinks", "Delete", message))
            .await;
    }
}

/// One pass over a live WeComApp: the status it builds and when it comes back.
struct AppPass<'a> {
    app: &'a WeComApp,
    ctx: &'a Context,
    namespace: String,
    name: String,
    /// `namespace/name`.
    key: String,
    generation: Option<i64>,
    now: Time,
    old: WeComAppStatus,
    new: WeComAppStatus,
    requeue: std::time::Duration,
}

impl<'a> AppPass<'a> {
    fn new(app: &'a WeComApp, ctx: &'a Context) -> Self {
        let namespace = app.namespace().unwrap_or_default();
        let name = app.name_any();
        let old = app.status.clone().unwrap_or_default();
        AppPass {
            app,
            ctx,
            key: format!("{namespace}/{name}"),
            namespace,
            name,
            generation: app.metadata.generation,
            now: Time(k8s_openapi::jiff::Timestamp::now()),
            new: old.clone(),
            old,
            requeue: ctx.cadence.quota,
        }
    }

    fn come_back_within(&mut self, after: std::time::Duration) {
        self.requeue = self.requeue.min(after);
    }

    /// App-level failures in a row (the checks back off while they last).
    fn failures(&self) -> u32 {
        self.ctx
            .app_failures
            .lock()
            .ok()
            .and_then(|m| m.get(&self.key).copied())
            .unwrap_or(0)
    }

    /// Whether A8 is due: on the quota cadence, or while the app fails for an app-level
    /// reason on a back-off from the resync interval; a spec change checks at once.
    fn quota_due(&self, failures: u32) -> bool {
        let every = if failures > 0 {
            app_recheck_delay(self.ctx.cadence.resync, failures)
        } else {
            self.ctx.cadence.quota
        };
        self.ctx
            .quota_checks
            .lock()
            .ok()
            .and_then(|m| m.get(&self.key).copied())
            .is_none_or(|at| at.elapsed() >= every)
            || self.spec_changed()
    }

    fn spec_changed(&self) -> bool {
        self.old.observed_generation != self.generation
    }

    fn note_checked(&self) {
        if let Ok(mut checks) = self.ctx.quota_checks.lock() {
            checks.insert(self.key.clone(), Instant::now());
        }
    }

    /// Publishes the transitions and writes the status. The quota and its conditions are
    /// applied apart, and only when this pass read them (A8): a quota condition a callback
    /// set is never written back from a stale cache.
    async fn finish(mut self) -> Result<Action, Error> {
        self.new.observed_generation = self.generation;
        publish_transitions(self.ctx, self.app, &self.old, &self.new).await;
        let api: Api<WeComApp> = Api::namespaced(self.ctx.kube.clone(), &self.namespace);
        let (old_main, old_quota) = status_apply::app_parts(&self.old);
        let (new_main, new_quota) = status_apply::app_parts(&self.new);
        for (manager, old, new) in [
            (status_apply::APP_MANAGER, old_main, new_main),
            (status_apply::APP_QUOTA_MANAGER, old_quota, new_quota),
        ] {
            if new != old {
                status_apply::apply_status(&api, &self.name, manager, new, None).await?;
            }
        }
        Ok(Action::requeue(self.requeue))
    }
}

impl conditions::Stamped for AppPass<'_> {
    fn parts(&mut self) -> (&mut Vec<Condition>, Option<i64>, &Time) {
        (&mut self.new.conditions, self.generation, &self.now)
    }
}

async fn reconcile_inner(app: &WeComApp, ctx: &Context) -> Result<Action, Error> {
    let dropped = ctx.apps.retain_apps(&ctx.app_store);
    if dropped > 0 {
        tracing::debug!(dropped, "dropped the WeCom clients of deleted WeComApps");
    }
    let mut pass = AppPass::new(app, ctx);
    let failures = pass.failures();
    let due = pass.quota_due(failures);
    match ctx.apps.client_for(app).await {
        Err(err) => {
            let reason = match err {
                AppError::SecretNotFound { .. } | AppError::SecretKeyMissing { .. } => {
                    reason::SECRET_NOT_FOUND
                }
                AppError::ApiHostNotAllowed { .. } => reason::API_HOST_NOT_ALLOWED,
                AppError::AuthorizationCancelled { .. } => reason::AUTHORIZATION_CANCELLED,
                _ => reason::CREDENTIALS_INVALID,
            };
            pass.set(READY, false, reason, err.to_string());
            pass.requeue = std::time::Duration::from_secs(60);
        }
        Ok(client) => {
            traffic(&mut pass, &client).await;
            if due {
                check_quota(&mut pass, &client, failures).await;
            }
        }
    }
    pass.finish().await
}

/// A8 and what it says of the credentials and the quota. A spec change is a person's; the
/// periodic reading is a slow fact.
async fn check_quota(pass: &mut AppPass<'_>, client: &WeComClient, failures: u32) {
    let class = if pass.spec_changed() {
        Priority::Now
    } else {
        Priority::SlowFact
    };
    match with_priority(class, client.quota()).await {
        // Not sent (the budget, or WeCom's rate limit): asked again when it says.
        Err(err) if err.retry_after().is_some() => {
            pass.come_back_within(err.retry_after().unwrap_or_default());
        }
        Ok(quota) => {
            pass.note_checked();
            if let Ok(mut failing) = pass.ctx.app_failures.lock() {
                failing.remove(&pass.key);
            }
            pass.set(
                READY,
                true,
                reason::CREDENTIALS_READY,
                "credentials accepted by WeCom",
            );
            pass.new.quota = Some(quota_status(&quota, &pass.now));
            set_quota_conditions(&mut pass.new, &quota, pass.generation, &pass.now);
            pass.ctx
                .metrics
                .set_quota(&pass.namespace, &pass.name, &quota);
        }
        Err(err) => quota_failed(pass, &err, failures),
    }
}

/// A8 failed. A refusal (48002, 60020, a bad answer...) will not change by asking again
/// soon: it counts as this period's check, and while it lasts the app asks again after a
/// back-off from the resync interval (fixed in WeCom, the app heals by itself). A refused
/// secret is looked at again every minute, since fixing the Secret changes nothing the
/// controller watches (the client answers from memory until the secret changes).
/// Retryable errors ask again after a short back-off.
fn quota_failed(pass: &mut AppPass<'_>, err: &WeComError, failures: u32) {
    let app_reason = app_level_reason(err);
    let bad_credential = err.errcode() == Some(codes::INVALID_CREDENTIAL);
    if err.is_retryable() {
        pass.requeue = super::plan::retry_delay(2, 1.0);
    } else if bad_credential {
        pass.requeue = std::time::Duration::from_secs(60);
    } else {
        pass.note_checked();
    }
    if app_reason.is_some() {
        let failures = failures.saturating_add(1);
        if let Ok(mut failing) = pass.ctx.app_failures.lock() {
            failing.insert(pass.key.clone(), failures);
        }
        if !bad_credential {
            pass.requeue = app_recheck_delay(pass.ctx.cadence.resync, failures);
        }
    }
    let reason = match err.class() {
        ErrorClass::Retryable => reason::RETRYABLE_ERROR,
        _ => app_reason.unwrap_or(reason::WECOM_ERROR),
    };
    let message = err.summary();
    // A passing WeCom hiccup (busy, frequency limit, timeout) says nothing about the
    // credentials: an app already Ready stays Ready, and the check is retried after a
    // back-off.
    let keep_ready = err.is_retryable()
        && conditions::find(&pass.old.conditions, READY)
            .is_some_and(|c| c.status == "True" && c.observed_generation == pass.generation);
    if keep_ready {
        tracing::warn!(app = %pass.key, error = %message, "quota check failed; retrying");
    } else {
        pass.set(READY, false, reason, message);
    }
}

/// How much of the app's cap the A1 sweeps that look for deleted links may use.
const SWEEP_SHARE: f64 = 0.05;
/// The shortest time between two sweeps of one app.
const SWEEP_MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// The app's traffic: its WeCom rate-limit state (`Throttled`), the poll interval its
/// budget allows for its links (status, metric, and what the link passes use), and the A1
/// sweep that finds links deleted in WeCom without one A2 per link.
async fn traffic(pass: &mut AppPass<'_>, client: &WeComClient) {
    throttled(pass, client);
    // An app pass that ran before the link cache was filled would count no links and
    // schedule no sweep until its next quota check (10 minutes by default): a link deleted
    // in WeCom meanwhile waited for it.
    super::context::filled(&pass.ctx.link_store).await;
    let links: Vec<_> = pass
        .ctx
        .link_store
        .state()
        .into_iter()
        .filter(|l| {
            l.namespace().as_deref() == Some(pass.namespace.as_str())
                && l.spec.app_ref.name == pass.name
        })
        .collect();
    let rpm = pass
        .app
        .spec
        .requests_per_minute
        .unwrap_or(crate::defaults::REQUESTS_PER_MINUTE);
    poll_interval(pass, client, links.len(), rpm);
    sweep(pass, client, &links, rpm).await;
}

/// Throttled: set while any API of the corp is closed, cleared once all are open.
fn throttled(pass: &mut AppPass<'_>, client: &WeComClient) {
    let blocked = client.scheduler().blocked();
    if let Some(longest) = blocked.iter().map(|(_, d)| *d).max() {
        let apis: Vec<&str> = blocked.iter().map(|(api, _)| api.name()).collect();
        let lifts = k8s_openapi::jiff::Timestamp::now()
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
                longest.as_secs() as i64,
            ))
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        let message = format!(
            "WeCom's rate limit closed {} for corp {}; no call to it before {lifts} (other work goes on)",
            apis.join(", "),
            pass.app.spec.corp_id
        );
        pass.set(THROTTLED, true, reason::RATE_LIMITED, message);
        pass.come_back_within(longest + std::time::Duration::from_secs(1));
    } else if conditions::find(&pass.new.conditions, THROTTLED).is_some() {
        pass.set(
            THROTTLED,
            false,
            reason::WITHIN_LIMITS,
            "every WeCom API of the corp is open",
        );
    }
}

/// The poll interval for this many links within the budget: what the link passes use, in
/// status and as a metric.
fn poll_interval(pass: &mut AppPass<'_>, client: &WeComClient, links: usize, rpm: u32) {
    let ctx = pass.ctx;
    let slow = pacing::slow_calls_per_link_hour(ctx.cadence.customers, ctx.cadence.statistics);
    let interval = pacing::effective_resync(
        ctx.cadence.resync,
        links,
        rpm,
        client.scheduler().limits().per_minute,
        slow,
    );
    ctx.poll_intervals.set(&pass.key, interval);
    ctx.metrics
        .effective_resync
        .get_or_create(&crate::metrics::AppLabels {
            namespace: pass.namespace.clone(),
            app: pass.name.clone(),
        })
        .set(interval.as_secs_f64());
    pass.new.polling = Some(AppPolling {
        interval_seconds: interval.as_secs(),
        links: links as u64,
        stretched: interval > ctx.cadence.resync,
    });
}

/// The sweep: one A1 listing (100 ids a page) against every link of the app that holds an
/// id; a link whose id is missing gets a pass at once. At most SWEEP_SHARE of the app's
/// cap, and never more often than a minute or less often than the resync interval.
async fn sweep(
    pass: &mut AppPass<'_>,
    client: &WeComClient,
    links: &[Arc<crate::api::AcquisitionLink>],
    rpm: u32,
) {
    let ctx = pass.ctx;
    let pages = links
        .len()
        .div_ceil(crate::wecom::client::LIST_LINK_PAGE_LIMIT as usize) as f64;
    let sweep_every =
        std::time::Duration::from_secs_f64(pages * 60.0 / (f64::from(rpm) * SWEEP_SHARE).max(1e-9))
            .max(SWEEP_MIN_INTERVAL)
            .min(ctx.cadence.resync.max(SWEEP_MIN_INTERVAL));
    let last = ctx.sweeps.last(&pass.key);
    let sweep_due = last
        .as_ref()
        .is_none_or(|l| l.taken_at.elapsed() >= sweep_every);
    if links.is_empty() || sweep_due {
        // With no links, nothing to sweep yet: the next pass looks again within a sweep
        // interval, so a link created later is swept without waiting for the quota cadence.
        if !links.is_empty() {
            sweep_now(pass, client, links).await;
        }
        pass.come_back_within(sweep_every);
    } else if let Some(last) = last {
        pass.come_back_within(
            sweep_every
                .saturating_sub(last.taken_at.elapsed())
                .max(std::time::Duration::from_secs(1)),
        );
    }
}

/// One A1 listing; every link whose id it lacks gets a pass at once. A link created while
/// the listing runs may be missing from it: its pass then finds it with its own A2, at the
/// cost of that one call.
async fn sweep_now(
    pass: &AppPass<'_>,
    client: &WeComClient,
    links: &[Arc<crate::api::AcquisitionLink>],
) {
    let ctx = pass.ctx;
    let listing = with_priority(
        Priority::Poll,
        ctx.sweeps
            .listing(&pass.key, client, tokio::time::Instant::now()),
    )
    .await;
    let listing = match listing {
        Ok(listing) => listing,
        Err(err) => {
            tracing::debug!(app = %pass.key, error = %err.summary(), "A1 sweep not done; the links' own polls go on");
            return;
        }
    };
    for link in links {
        let Some(id) = link.status.as_ref().and_then(|s| s.link_id.as_deref()) else {
            continue;
        };
        if link.metadata.deletion_timestamp.is_none() && !listing.ids.contains(id) {
            let link_key = format!("{}/{}", pass.namespace, link.name_any());
            tracing::info!(link = %link_key, link_id = %id, "WeCom no longer lists the link; reconciling it now");
            ctx.urgent.mark(&link_key);
            let _ = ctx.link_trigger.try_send(ObjectRef::from_obj(&**link));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wecom::types::QuotaBatch;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn app_level_errors_get_their_own_reason() {
        let api_error = |api, errcode| WeComError::Api {
            api,
            errcode,
            errmsg: "hint: [x]".into(),
        };
        let reason_of = |api, errcode| app_level_reason(&api_error(api, errcode));
        assert_eq!(
            reason_of(WeComApi::Quota, 48002),
            Some(reason::PERMISSION_DENIED)
        );
        assert_eq!(
            reason_of(WeComApi::GetLink, 60020),
            Some(reason::IP_NOT_ALLOWED)
        );
        assert_eq!(
            reason_of(WeComApi::GetToken, 40001),
            Some(reason::CREDENTIALS_INVALID)
        );
        assert_eq!(
            reason_of(WeComApi::GetToken, 40013),
            Some(reason::CREDENTIALS_INVALID)
        );
        assert_eq!(
            reason_of(WeComApi::Quota, 42001),
            Some(reason::CREDENTIALS_INVALID)
        );
        let not_json = WeComError::NotJson {
            api: WeComApi::Quota,
            status: 200,
            content_type: "content type \"text/html\"".into(),
        };
        assert_eq!(app_level_reason(&not_json), Some(reason::BAD_ANSWER));
        // Link-level and passing errors are not the app's.
        assert_eq!(reason_of(WeComApi::CreateLink, 40058), None);
        assert_eq!(reason_of(WeComApi::GetLink, 301002), None);
        assert_eq!(reason_of(WeComApi::Quota, 45009), None);
        assert_eq!(reason_of(WeComApi::Quota, 99999), None);
        for reason in [
            reason::PERMISSION_DENIED,
            reason::IP_NOT_ALLOWED,
            reason::CREDENTIALS_INVALID,
            reason::BAD_ANSWER,
        ] {
            assert!(is_app_level_reason(reason));
        }
        assert!(!is_app_level_reason(reason::INVALID_SPEC));
    }

    #[test]
    fn app_rechecks_double_from_the_resync_interval_up_to_an_hour() {
        let resync = std::time::Duration::from_secs(300);
        let delays: Vec<u64> = (1..=6)
            .map(|n| app_recheck_delay(resync, n).as_secs())
            .collect();
        assert_eq!(delays, vec![300, 600, 1200, 2400, 3600, 3600]);
        assert_eq!(app_recheck_delay(resync, u32::MAX), APP_RECHECK_MAX);
    }

    #[test]
    fn quota_conditions_follow_balance_and_expiry() {
        let now = at(1_790_000_000);
        let quota = QuotaResponse {
            total: 5,
            balance: 10,
            quota_list: vec![QuotaBatch {
                expire_date: 1_790_000_000 + 3 * 86_400,
                balance: 10,
            }],
        };
        let mut status = WeComAppStatus::default();
        set_quota_conditions(&mut status, &quota, Some(1), &now);
        assert!(conditions::is_true(&status.conditions, QUOTA_LOW));
        assert!(!conditions::is_true(&status.conditions, QUOTA_EXHAUSTED));
        assert!(conditions::is_true(&status.conditions, QUOTA_EXPIRING_SOON));
        let empty = QuotaResponse {
            total: 15,
            balance: 0,
            quota_list: vec![],
        };
        set_quota_conditions(&mut status, &empty, Some(1), &now);
        assert!(conditions::is_true(&status.conditions, QUOTA_EXHAUSTED));
        assert!(!conditions::is_true(
            &status.conditions,
            QUOTA_EXPIRING_SOON
        ));
    }
}
