//! The WeComApp reconciler: checks the credentials, asks A8 once per app on its cadence
//! (shared by all the app's links), and reports quota conditions.

use std::{sync::Arc, time::Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{Event as Finalizer, finalizer},
    },
};

use super::{
    app_usage::{links_using, waiting_message},
    conditions::{
        self, EXPIRY_WARNING_DAYS, LOW_BALANCE, QUOTA_EXHAUSTED, QUOTA_EXPIRING_SOON, QUOTA_LOW,
        READY, THROTTLED, reason,
    },
    context::Context,
    events::publish_transitions,
    link::{Error, finalizer_outcome},
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
    let c = &mut status.conditions;
    let balance = quota.balance;
    if balance == 0 {
        conditions::set(
            c,
            QUOTA_EXHAUSTED,
            true,
            reason::BALANCE_EXHAUSTED,
            "the acquisition quota is used up: no new link is created until quota is added",
            generation,
            now,
        );
    } else {
        conditions::set(
            c,
            QUOTA_EXHAUSTED,
            false,
            reason::BALANCE_OK,
            format!("{balance} remaining"),
            generation,
            now,
        );
    }
    if balance < LOW_BALANCE {
        conditions::set(
            c,
            QUOTA_LOW,
            true,
            reason::BALANCE_LOW,
            format!("only {balance} remaining (below {LOW_BALANCE}): buy more quota"),
            generation,
            now,
        );
    } else {
        conditions::set(
            c,
            QUOTA_LOW,
            false,
            reason::BALANCE_OK,
            format!("{balance} remaining"),
            generation,
            now,
        );
    }
    let horizon = now.0.as_second() + EXPIRY_WARNING_DAYS * 86_400;
    let expiring: Vec<_> = quota
        .quota_list
        .iter()
        .filter(|b| b.balance > 0 && b.expire_date <= horizon)
        .collect();
    if let Some(first) = expiring.iter().min_by_key(|b| b.expire_date) {
        let amount: u64 = expiring.iter().map(|b| b.balance).sum();
        let day = super::plan::stats_window(first.expire_date, 1).to;
        conditions::set(
            c,
            QUOTA_EXPIRING_SOON,
            true,
            reason::BATCH_EXPIRING,
            format!(
                "{amount} quota expire within {EXPIRY_WARNING_DAYS} days, the first batch on {day}: use or renew it"
            ),
            generation,
            now,
        );
    } else {
        conditions::set(
            c,
            QUOTA_EXPIRING_SOON,
            false,
            reason::NO_BATCH_EXPIRING,
            format!("no batch expires within {EXPIRY_WARNING_DAYS} days"),
            generation,
            now,
        );
    }
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
        ctx.publish(app, EventType::Normal, "WaitingForLinks", "Delete", message)
            .await;
    }
}

async fn reconcile_inner(app: &WeComApp, ctx: &Context) -> Result<Action, Error> {
    let dropped = ctx.apps.retain_apps(&ctx.app_store);
    if dropped > 0 {
        tracing::debug!(dropped, "dropped the WeCom clients of deleted WeComApps");
    }
    let namespace = app.namespace().unwrap_or_default();
    let name = app.name_any();
    let key = format!("{namespace}/{name}");
    let api: Api<WeComApp> = Api::namespaced(ctx.kube.clone(), &namespace);
    let old = app.status.clone().unwrap_or_default();
    let mut new = old.clone();
    let generation = app.metadata.generation;
    let now = Time(k8s_openapi::jiff::Timestamp::now());

    // While the app fails for an app-level reason, its checks back off instead of
    // following the quota cadence.
    let failures = ctx
        .app_failures
        .lock()
        .ok()
        .and_then(|m| m.get(&key).copied())
        .unwrap_or(0);
    let every = if failures > 0 {
        app_recheck_delay(ctx.cadence.resync, failures)
    } else {
        ctx.cadence.quota
    };
    let due = ctx
        .quota_checks
        .lock()
        .ok()
        .and_then(|m| m.get(&key).copied())
        .is_none_or(|at| at.elapsed() >= every)
        || old.observed_generation != generation;
    let mut requeue = ctx.cadence.quota;
    match ctx.apps.client_for(app).await {
        Err(err) => {
            let reason = match err {
                super::context::AppError::SecretNotFound { .. }
                | super::context::AppError::SecretKeyMissing { .. } => reason::SECRET_NOT_FOUND,
                super::context::AppError::ApiHostNotAllowed { .. } => reason::API_HOST_NOT_ALLOWED,
                super::context::AppError::AuthorizationCancelled { .. } => {
                    reason::AUTHORIZATION_CANCELLED
                }
                _ => reason::CREDENTIALS_INVALID,
            };
            conditions::set(
                &mut new.conditions,
                READY,
                false,
                reason,
                err.to_string(),
                generation,
                &now,
            );
            requeue = std::time::Duration::from_secs(60);
        }
        Ok(client) => {
            traffic(app, ctx, &client, &mut new, &mut requeue, &now).await;
            if due {
                // A spec change is a person's; the periodic reading is a slow fact.
                let class = if old.observed_generation != generation {
                    Priority::Now
                } else {
                    Priority::SlowFact
                };
                check_quota(
                    app,
                    ctx,
                    &client,
                    class,
                    &old,
                    &mut new,
                    &mut requeue,
                    failures,
                    &now,
                )
                .await;
            }
        }
    }
    new.observed_generation = generation;
    publish_transitions(ctx, app, &old, &new).await;
    // The quota and its conditions are applied apart, and only when this pass read them
    // (A8): a quota condition a callback set is never written back from a stale cache.
    let (old_main, old_quota) = status_apply::app_parts(&old);
    let (new_main, new_quota) = status_apply::app_parts(&new);
    if new_main != old_main {
        status_apply::apply_status(&api, &name, status_apply::APP_MANAGER, new_main, None).await?;
    }
    if new_quota != old_quota {
        status_apply::apply_status(
            &api,
            &name,
            status_apply::APP_QUOTA_MANAGER,
            new_quota,
            None,
        )
        .await?;
    }
    Ok(Action::requeue(requeue))
}

/// A8 and what it says of the credentials and the quota.
#[allow(clippy::too_many_arguments)]
async fn check_quota(
    app: &WeComApp,
    ctx: &Context,
    client: &WeComClient,
    class: Priority,
    old: &WeComAppStatus,
    new: &mut WeComAppStatus,
    requeue: &mut std::time::Duration,
    failures: u32,
    now: &Time,
) {
    let namespace = app.namespace().unwrap_or_default();
    let name = app.name_any();
    let key = format!("{namespace}/{name}");
    let generation = app.metadata.generation;
    let now = now.clone();
    let answer = with_priority(class, client.quota()).await;
    match answer {
        // Not sent (the budget, or WeCom's rate limit): asked again when it says.
        Err(err) if err.retry_after().is_some() => {
            *requeue = err.retry_after().unwrap_or_default().min(*requeue);
        }
        Ok(quota) => {
            if let Ok(mut checks) = ctx.quota_checks.lock() {
                checks.insert(key.clone(), Instant::now());
            }
            if let Ok(mut failing) = ctx.app_failures.lock() {
                failing.remove(&key);
            }
            conditions::set(
                &mut new.conditions,
                READY,
                true,
                reason::CREDENTIALS_READY,
                "credentials accepted by WeCom",
                generation,
                &now,
            );
            new.quota = Some(quota_status(&quota, &now));
            set_quota_conditions(new, &quota, generation, &now);
            ctx.metrics.set_quota(&namespace, &name, &quota);
        }
        Err(err) => {
            // A refusal (48002, 60020, a bad answer...) will not change by asking again
            // soon: count it as this period's check, and while it lasts ask again after
            // a back-off from the resync interval (fixed in WeCom, the app heals by
            // itself). A refused secret is looked at again every minute, since fixing
            // the Secret changes nothing the controller watches (the client answers
            // from memory until the secret changes). Retryable errors ask again after
            // a short back-off.
            let app_reason = app_level_reason(&err);
            if err.is_retryable() {
                *requeue = super::plan::retry_delay(2, 1.0);
            } else if err.errcode() == Some(codes::INVALID_CREDENTIAL) {
                *requeue = std::time::Duration::from_secs(60);
            } else if let Ok(mut checks) = ctx.quota_checks.lock() {
                checks.insert(key.clone(), Instant::now());
            }
            if app_reason.is_some() {
                let failures = failures.saturating_add(1);
                if let Ok(mut failing) = ctx.app_failures.lock() {
                    failing.insert(key.clone(), failures);
                }
                if err.errcode() != Some(codes::INVALID_CREDENTIAL) {
                    *requeue = app_recheck_delay(ctx.cadence.resync, failures);
                }
            }
            let reason = match err.class() {
                ErrorClass::Retryable => reason::RETRYABLE_ERROR,
                _ => app_reason.unwrap_or(reason::WECOM_ERROR),
            };
            let message = err.summary();
            // A passing WeCom hiccup (busy, frequency limit, timeout) says nothing
            // about the credentials: an app already Ready stays Ready, and the check
            // is retried after a back-off.
            let keep_ready = err.is_retryable()
                && conditions::find(&old.conditions, READY)
                    .is_some_and(|c| c.status == "True" && c.observed_generation == generation);
            if keep_ready {
                tracing::warn!(app = %key, error = %message, "quota check failed; retrying");
            } else {
                conditions::set(
                    &mut new.conditions,
                    READY,
                    false,
                    reason,
                    message,
                    generation,
                    &now,
                );
            }
        }
    }
}

/// How much of the app's cap the A1 sweeps that look for deleted links may use.
const SWEEP_SHARE: f64 = 0.05;
/// The shortest time between two sweeps of one app.
const SWEEP_MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// The app's traffic: its WeCom rate-limit state (`Throttled`), the poll interval its
/// budget allows for its links (status, metric, and what the link passes use), and the A1
/// sweep that finds links deleted in WeCom without one A2 per link.
async fn traffic(
    app: &WeComApp,
    ctx: &Context,
    client: &WeComClient,
    new: &mut WeComAppStatus,
    requeue: &mut std::time::Duration,
    now: &Time,
) {
    let namespace = app.namespace().unwrap_or_default();
    let name = app.name_any();
    let key = format!("{namespace}/{name}");
    let generation = app.metadata.generation;
    let scheduler = client.scheduler();

    // Throttled: set while any API of the corp is closed, cleared once all are open.
    let blocked = scheduler.blocked();
    if let Some(longest) = blocked.iter().map(|(_, d)| *d).max() {
        let apis: Vec<&str> = blocked.iter().map(|(api, _)| api.name()).collect();
        let lifts = k8s_openapi::jiff::Timestamp::now()
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
                longest.as_secs() as i64,
            ))
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        conditions::set(
            &mut new.conditions,
            THROTTLED,
            true,
            reason::RATE_LIMITED,
            format!(
                "WeCom's rate limit closed {} for corp {}; no call to it before {lifts} (other work goes on)",
                apis.join(", "),
                app.spec.corp_id
            ),
            generation,
            now,
        );
        *requeue = (*requeue).min(longest + std::time::Duration::from_secs(1));
    } else if conditions::find(&new.conditions, THROTTLED).is_some() {
        conditions::set(
            &mut new.conditions,
            THROTTLED,
            false,
            reason::WITHIN_LIMITS,
            "every WeCom API of the corp is open",
            generation,
            now,
        );
    }

    // The poll interval for this many links within the budget. An app pass that ran before
    // the link cache was filled would count no links and schedule no sweep until its next
    // quota check (10 minutes by default): a link deleted in WeCom meanwhile waited for it.
    super::context::filled(&ctx.link_store).await;
    let links: Vec<_> = ctx
        .link_store
        .state()
        .into_iter()
        .filter(|l| {
            l.namespace().as_deref() == Some(namespace.as_str()) && l.spec.app_ref.name == name
        })
        .collect();
    let rpm = app
        .spec
        .requests_per_minute
        .unwrap_or(super::context::DEFAULT_REQUESTS_PER_MINUTE);
    let slow = pacing::slow_calls_per_link_hour(ctx.cadence.customers, ctx.cadence.statistics);
    let interval = pacing::effective_resync(
        ctx.cadence.resync,
        links.len(),
        rpm,
        scheduler.limits().per_minute,
        slow,
    );
    ctx.poll_intervals.set(&key, interval);
    ctx.metrics
        .effective_resync
        .get_or_create(&crate::metrics::AppLabels {
            namespace: namespace.clone(),
            app: name.clone(),
        })
        .set(interval.as_secs_f64());
    new.polling = Some(AppPolling {
        interval_seconds: interval.as_secs(),
        links: links.len() as u64,
        stretched: interval > ctx.cadence.resync,
    });

    // The sweep: one A1 listing (100 ids a page) against every link of the app that holds
    // an id; a link whose id is missing gets a pass at once. At most SWEEP_SHARE of the
    // app's cap, and never more often than a minute or less often than the resync interval.
    let pages = links
        .len()
        .div_ceil(crate::wecom::client::LIST_LINK_PAGE_LIMIT as usize) as f64;
    let sweep_every =
        std::time::Duration::from_secs_f64(pages * 60.0 / (f64::from(rpm) * SWEEP_SHARE).max(1e-9))
            .max(SWEEP_MIN_INTERVAL)
            .min(ctx.cadence.resync.max(SWEEP_MIN_INTERVAL));
    let last = ctx.sweeps.last(&key);
    let sweep_due = last
        .as_ref()
        .is_none_or(|l| l.taken_at.elapsed() >= sweep_every);
    if links.is_empty() {
        // Nothing to sweep yet; the next pass looks again within a sweep interval, so a
        // link created later is swept without waiting for the quota cadence.
        *requeue = (*requeue).min(sweep_every);
    } else if sweep_due {
        // A link created while the listing runs may be missing from it: its pass then
        // finds it with its own A2, at the cost of that one call.
        let listing = with_priority(
            Priority::Poll,
            ctx.sweeps
                .listing(&key, client, tokio::time::Instant::now()),
        )
        .await;
        match listing {
            Ok(listing) => {
                for link in &links {
                    let Some(id) = link.status.as_ref().and_then(|s| s.link_id.as_deref()) else {
                        continue;
                    };
                    if link.metadata.deletion_timestamp.is_none() && !listing.ids.contains(id) {
                        let link_key = format!("{namespace}/{}", link.name_any());
                        tracing::info!(link = %link_key, link_id = %id, "WeCom no longer lists the link; reconciling it now");
                        ctx.urgent.mark(&link_key);
                        let _ = ctx.link_trigger.try_send(ObjectRef::from_obj(&**link));
                    }
                }
            }
            Err(err) => {
                tracing::debug!(app = %key, error = %err.summary(), "A1 sweep not done; the links' own polls go on")
            }
        }
        *requeue = (*requeue).min(sweep_every);
    } else if let Some(last) = last {
        *requeue = (*requeue).min(
            sweep_every
                .saturating_sub(last.taken_at.elapsed())
                .max(std::time::Duration::from_secs(1)),
        );
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
