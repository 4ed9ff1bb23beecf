//! One pass over a live AcquisitionLink, as a fixed pipeline (Stackable's operator shape,
//! with Crossplane's external client):
//!
//! validate -> resolve (app, client) -> observe (one [`Observation`]) -> decide (pure:
//! [`decide::decide`]) -> act (the [`External`] verbs, the create step's marker protocol)
//! -> report ([`report::report`] into the status the pass writes once, at its end).

use std::{sync::Arc, time::Duration};

use kube::{ResourceExt, runtime::controller::Action};

use super::{
    APP_WAIT, Error, at_rest, cause_of, create,
    external::{External, Observed},
    is_paused, is_terminal_reason, jitter, known_link_id, link_owned_by_another, object_key,
    pass::Pass,
    poll_due, polled, present,
    report::{Outcome, report},
    stable_message, terminal_reason,
};
use crate::reconcile::cache;
use crate::{
    api::{AcquisitionLink, QuotaSummary, WeComApp},
    reconcile::{
        app::{app_level_reason, app_recheck_delay, is_app_level_reason},
        conditions::{self, QUOTA_EXHAUSTED, READY},
        context::{AppError, Context},
        decide::{self, AppState, Seen, Situation, Step},
        pacing::LastPoll,
        plan::{self, DesiredLink, FieldChange},
    },
    wecom::{
        Api as WeComApi, ErrorClass, WeComError,
        client::WeComClient,
        scheduler::{self, Priority},
        types::RemoteLink,
        unix_now_ms,
    },
};

/// A pass at rest may poll this much before its due time (requeues are not exact).
pub(super) const POLL_EARLY_MS: u64 = 500;

/// What observing the link found.
pub(super) enum Observation {
    /// The app is not ready: nothing was asked.
    NotLooked,
    /// The object knows no link id.
    NoId,
    Present {
        remote: RemoteLink,
        changes: Vec<FieldChange>,
    },
    /// WeCom no longer lists the link with this id.
    Gone(String),
}

/// The app and the client the pass works with, or why it waits for them.
enum Resolved {
    Ready(Arc<WeComApp>, WeComClient),
    Waiting {
        state: AppState,
        message: String,
        requeue: Duration,
    },
}

pub(super) async fn apply(link: &AcquisitionLink, ctx: &Context) -> Result<Action, Error> {
    let mut pass = Pass::new(link, ctx);
    if let Some(message) = validate(&pass) {
        report(&mut pass, Outcome::invalid_spec(message)).await;
        pass.write_status().await?;
        return Ok(Action::await_change());
    }
    if let Some((link_id, owner)) = link_owned_by_another(link, ctx) {
        report(&mut pass, Outcome::link_id_conflict(&link_id, &owner)).await;
        pass.write_status().await?;
        return Ok(at_rest(ctx, link));
    }
    let resolved = resolve(link, ctx).await;
    let observation = match &resolved {
        Resolved::Waiting { .. } => Observation::NotLooked,
        Resolved::Ready(app, client) => {
            pass.new.quota = quota_of(app);
            if let Some(action) = needs_no_look(&pass) {
                pass.write_status().await?;
                return Ok(action);
            }
            match observe(&pass, &External::for_link(ctx, client, link)).await {
                Ok(observation) => observation,
                Err(err) => return settle(pass, Err(err)).await,
            }
        }
    };
    let step = decide::decide(&situation(&pass, &resolved, &observation));
    let (app, client) = match resolved {
        Resolved::Ready(app, client) => (app, client),
        Resolved::Waiting {
            state,
            message,
            requeue,
        } => return wait_for_app(pass, state, message, requeue).await,
    };
    let ext = External::for_link(ctx, &client, link);
    let result = act(&mut pass, &app, &ext, step, observation).await;
    settle(pass, result).await
}

/// What the CEL rules refuse at admission, checked again for what CEL cannot see (a
/// linkId added to a link created here) and for API servers without CEL.
fn validate(pass: &Pass<'_>) -> Option<String> {
    let link = pass.link;
    let held = decide::Held {
        link_id: pass
            .old
            .link_id
            .as_deref()
            .or_else(|| cache::link_id_annotation(link))
            .filter(|id| !id.is_empty()),
        origin: pass.old.origin,
    };
    decide::check_link_id(link.spec.link_id.as_deref(), held)
        .err()
        .or_else(|| plan::validate(&link.spec).err())
}

/// The link's app (same namespace only: no cross-namespace secrets) and its client; an app
/// whose WeCom calls are refused (permission, trusted IPs, credentials, a bad server) makes
/// the link wait without calling WeCom; the app turning Ready triggers it.
async fn resolve(link: &AcquisitionLink, ctx: &Context) -> Resolved {
    let namespace = link.namespace().unwrap_or_default();
    let app_name = &link.spec.app_ref.name;
    let missing = |message: String| Resolved::Waiting {
        state: AppState::Missing,
        message,
        requeue: APP_WAIT,
    };
    let Some(app) = ctx.app(&namespace, app_name) else {
        return missing(
            AppError::NotFound {
                namespace,
                name: app_name.clone(),
            }
            .to_string(),
        );
    };
    let client = match ctx.apps.client_for(&app).await {
        Ok(client) => client,
        Err(err) => return missing(err.to_string()),
    };
    let refused = app
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, READY))
        .filter(|c| c.status == "False" && is_app_level_reason(&c.reason));
    match refused {
        Some(ready) => Resolved::Waiting {
            state: AppState::Refused,
            message: format!(
                "WeComApp {app_name} is not ready ({}): {}",
                ready.reason, ready.message
            ),
            requeue: ctx.cadence.resync,
        },
        None => Resolved::Ready(app, client),
    }
}

fn quota_of(app: &WeComApp) -> Option<QuotaSummary> {
    app.status
        .as_ref()
        .and_then(|s| s.quota.as_ref())
        .map(|q| QuotaSummary {
            balance: q.balance,
            total: q.total,
        })
}

/// A pass that need not look at WeCom: a terminal outcome for this generation waits for a
/// change instead of hammering WeCom, and at rest a pass asks only when the link's poll is
/// due (passes that come earlier, a restart's first pass or an app change, wait for the
/// link's phase).
fn needs_no_look(pass: &Pass<'_>) -> Option<Action> {
    let (ctx, link) = (pass.ctx, pass.link);
    let forced = pass.new.last_handled_reconcile_at.is_some()
        && pass.new.last_handled_reconcile_at != pass.old.last_handled_reconcile_at;
    if !forced
        && pass
            .previous_synced_reason()
            .is_some_and(is_terminal_reason)
    {
        return Some(at_rest(ctx, link));
    }
    if scheduler::current_priority() == Priority::Poll && pass.at_rest() {
        let now = unix_now_ms();
        let due = poll_due(ctx, link, now);
        if due > now + POLL_EARLY_MS {
            return Some(Action::requeue(Duration::from_millis(due - now)));
        }
    }
    None
}

async fn observe(pass: &Pass<'_>, ext: &External<'_>) -> Result<Observation, Error> {
    let Some(link_id) = known_link_id(pass.link) else {
        return Ok(Observation::NoId);
    };
    match ext.observe(&link_id).await? {
        Observed::Exists(remote) => {
            polled(pass.ctx, pass.link, LastPoll::At(unix_now_ms()));
            let changes = plan::diff(&DesiredLink::from_spec(&pass.link.spec), &remote);
            Ok(Observation::Present { remote, changes })
        }
        Observed::Gone => Ok(Observation::Gone(link_id)),
    }
}

fn situation(pass: &Pass<'_>, resolved: &Resolved, observation: &Observation) -> Situation {
    let link = pass.link;
    let (app, quota_exhausted) = match resolved {
        Resolved::Ready(app, _) => (
            AppState::Ready,
            app.status
                .as_ref()
                .is_some_and(|s| conditions::is_true(&s.conditions, QUOTA_EXHAUSTED)),
        ),
        Resolved::Waiting { state, .. } => (*state, false),
    };
    Situation {
        app,
        seen: match observation {
            Observation::NotLooked => Seen::NotLooked,
            Observation::NoId => Seen::NoId,
            Observation::Present { changes, .. } => Seen::Present {
                differs: !changes.is_empty(),
            },
            Observation::Gone(_) => Seen::Gone,
        },
        policy: link.spec.management_policy,
        paused: is_paused(link),
        quota_exhausted,
        on_remote_delete: link.spec.on_remote_delete,
        named_by_spec: link.spec.link_id.is_some(),
        origin: pass.old.origin,
    }
}

/// Carries out the decision.
async fn act(
    pass: &mut Pass<'_>,
    app: &WeComApp,
    ext: &External<'_>,
    step: Step,
    observation: Observation,
) -> Result<Action, Error> {
    let (ctx, link) = (pass.ctx, pass.link);
    let gone_id = match &observation {
        Observation::Gone(id) => Some(id.clone()),
        _ => None,
    };
    match (step, observation) {
        (Step::Present(on), Observation::Present { remote, changes }) => {
            present::sync(pass, ext, remote, &changes, on).await
        }
        (Step::NotInCorp, _) => {
            let id = gone_id
                .or_else(|| link.spec.link_id.clone())
                .unwrap_or_default();
            report(pass, Outcome::not_in_corp(&id, &link.spec.app_ref.name)).await;
            Ok(at_rest(ctx, link))
        }
        (Step::LeaveGone(why), _) => {
            report(pass, Outcome::left_gone(&gone_id.unwrap_or_default(), why)).await;
            Ok(at_rest(ctx, link))
        }
        (Step::Create { replacing }, _) => {
            let replaced = forget_gone(pass, replacing, gone_id).await;
            create::create(pass, ext, replaced).await
        }
        (Step::HoldCreate { hold, replacing }, _) => {
            forget_gone(pass, replacing, gone_id).await;
            report(pass, Outcome::create_held(hold, &app.name_any())).await;
            Ok(match hold {
                decide::Hold::Paused => at_rest(ctx, link),
                decide::Hold::QuotaExhausted => Action::requeue(ctx.cadence.quota),
            })
        }
        // Decided only for an app that is not ready, handled before acting; and a
        // present-link step comes only with a present link.
        (Step::WaitForApp | Step::Present(_), _) => Ok(Action::requeue(APP_WAIT)),
    }
}

/// WeCom no longer has the link and it is made again: say so the first time, and drop what
/// status says of the dead link. Returns the dead link's id and URL.
async fn forget_gone(
    pass: &mut Pass<'_>,
    replacing: bool,
    gone_id: Option<String>,
) -> Option<(String, String)> {
    let link_id = gone_id.filter(|_| replacing)?;
    let old_url = pass.old.url.clone().unwrap_or_default();
    // Status still naming the dead link means this pass is the first to see it gone. When
    // the recreate has to wait (paused, quota exhausted), the id stays in the annotation
    // and later passes find it gone again: they have nothing new to report.
    let first_seen =
        pass.old.link_id.as_deref() == Some(link_id.as_str()) || pass.old.conditions.is_empty();
    if first_seen {
        pass.tell(super::report::Happened::RemoteDeleted {
            link_id: &link_id,
            url: &old_url,
        })
        .await;
    }
    pass.new.link_id = None;
    pass.new.url = None;
    pass.new.channel_urls.clear();
    pass.new.customers = None;
    pass.new.statistics = None;
    pass.new.origin = None;
    Some((link_id, old_url))
}

/// The link cannot be served because of its app: `Synced=False` (and `Ready=False` when
/// WeCom refuses the app, or no link exists yet), reason `AppNotReady`, saying why.
async fn wait_for_app(
    mut pass: Pass<'_>,
    state: AppState,
    message: String,
    requeue: Duration,
) -> Result<Action, Error> {
    let not_ready = state == AppState::Refused || pass.new.link_id.is_none();
    report(&mut pass, Outcome::app_not_ready(message, not_ready)).await;
    pass.write_status().await?;
    Ok(Action::requeue(requeue))
}

/// Ends the pass: writes the status it built, or turns a failure into status and the next
/// attempt.
async fn settle(mut pass: Pass<'_>, result: Result<Action, Error>) -> Result<Action, Error> {
    match result {
        Ok(action) => {
            pass.new.failures = None;
            pass.write_status().await?;
            Ok(action)
        }
        // Not sent (the corp's budget has no room for this class now, or WeCom's rate
        // limit closed the API): nothing was learnt or done; come back when it says.
        Err(Error::WeCom(err)) if err.retry_after().is_some() => {
            tracing::debug!(link = %pass.key(), %err, "WeCom request deferred");
            Ok(Action::requeue(err.retry_after().unwrap_or_default()))
        }
        Err(Error::WeCom(err)) if app_level_reason(&err).is_some() => app_refused(pass, err).await,
        Err(Error::WeCom(err)) => wecom_failure(pass, err).await,
        Err(other) => Err(other),
    }
}

/// An error about the app, not this link (permission, trusted IPs, credentials, a bad
/// server): no terminal outcome that only a change of the link would clear. The link asks
/// again with a back-off from the resync interval, so fixing it in WeCom heals the link by
/// itself.
async fn app_refused(mut pass: Pass<'_>, err: WeComError) -> Result<Action, Error> {
    let app_name = &pass.link.spec.app_ref.name;
    let message = if err.api() == WeComApi::GetToken {
        format!(
            "WeComApp {app_name} cannot get an access token: {}; fix the app's secretRef or corpId",
            err.summary()
        )
    } else {
        format!(
            "WeComApp {app_name} is refused by WeCom: {}; fixed in WeCom, the link recovers by itself",
            err.summary()
        )
    };
    let failures = pass.old.failures.unwrap_or(0).saturating_add(1);
    pass.new.failures = Some(failures);
    let delay = app_recheck_delay(pass.ctx.cadence.resync, failures);
    wait_for_app(pass, AppState::Refused, message, delay).await
}

/// Classifies a WeCom failure about the link into the status and the next attempt.
async fn wecom_failure(mut pass: Pass<'_>, err: WeComError) -> Result<Action, Error> {
    let (ctx, link) = (pass.ctx, pass.link);
    match err.class() {
        ErrorClass::Retryable | ErrorClass::TokenInvalid => {
            let failures = pass.old.failures.unwrap_or(0).saturating_add(1);
            pass.new.failures = Some(failures);
            pass.generation_observed = pass.old.observed_generation == pass.generation;
            // A Ready=False left by an older generation (say InvalidSpec) no longer
            // describes this one: say that WeCom has yet to answer for it.
            let stale_ready = conditions::find(&pass.old.conditions, READY)
                .is_some_and(|c| c.status == "False" && c.observed_generation != pass.generation);
            report(&mut pass, Outcome::retrying(err.summary(), stale_ready)).await;
            pass.write_status().await?;
            let delay = plan::retry_delay(failures, jitter());
            ctx.held_off.hold(&object_key(link), cause_of(link), delay);
            Ok(Action::requeue(delay))
        }
        ErrorClass::Terminal => {
            pass.new.failures = None;
            let answer = crate::wecom::redact::scrub(&err.to_string());
            let outcome = Outcome::refused(terminal_reason(&err), stable_message(&err), answer);
            report(&mut pass, outcome).await;
            pass.write_status().await?;
            Ok(at_rest(ctx, link))
        }
    }
}
