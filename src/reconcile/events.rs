//! Kubernetes Events for a WeComApp's condition transitions, published by the app
//! reconciler after an A8 check and by the callback worker after a quota callback.

use super::{
    conditions::{self, QUOTA_EXHAUSTED, QUOTA_EXPIRING_SOON, QUOTA_LOW, READY},
    context::Context,
    notice::Notice,
};
use crate::api::{WeComApp, WeComAppStatus};

/// Events for quota transitions (QuotaLow, QuotaExhausted, QuotaRestored, QuotaExpiringSoon)
/// and for the app turning not Ready.
pub async fn publish_transitions(
    ctx: &Context,
    app: &WeComApp,
    old: &WeComAppStatus,
    new: &WeComAppStatus,
) {
    for notice in transitions(old, new) {
        ctx.publish(app, &notice).await;
    }
}

/// The Events a change of an app's conditions calls for, each with the message of the
/// condition it reports.
pub fn transitions(old: &WeComAppStatus, new: &WeComAppStatus) -> Vec<Notice> {
    let flipped_on = |type_: &str| {
        conditions::is_true(&new.conditions, type_) && !conditions::is_true(&old.conditions, type_)
    };
    let message = |type_: &str| {
        conditions::find(&new.conditions, type_)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    let mut notices = Vec::new();
    if flipped_on(QUOTA_EXHAUSTED) {
        notices.push(Notice::warning(
            "QuotaExhausted",
            QUOTA_CHECK,
            message(QUOTA_EXHAUSTED),
        ));
    } else if flipped_on(QUOTA_LOW) {
        notices.push(Notice::warning("QuotaLow", QUOTA_CHECK, message(QUOTA_LOW)));
    }
    if conditions::is_true(&old.conditions, QUOTA_EXHAUSTED)
        && !conditions::is_true(&new.conditions, QUOTA_EXHAUSTED)
    {
        notices.push(Notice::normal(
            "QuotaRestored",
            QUOTA_CHECK,
            message(QUOTA_EXHAUSTED),
        ));
    }
    if flipped_on(QUOTA_EXPIRING_SOON) {
        notices.push(Notice::warning(
            "QuotaExpiringSoon",
            QUOTA_CHECK,
            message(QUOTA_EXPIRING_SOON),
        ));
    }
    let ready = |s: &WeComAppStatus| {
        conditions::find(&s.conditions, READY).map(|c| (c.status.clone(), c.reason.clone()))
    };
    if ready(new) != ready(old)
        && let Some(c) = conditions::find(&new.conditions, READY)
        && c.status == "False"
    {
        notices.push(Notice::warning(
            c.reason.clone(),
            "CredentialsCheck",
            c.message.clone(),
        ));
    }
    notices
}

const QUOTA_CHECK: &str = "QuotaCheck";
