//! Kubernetes Events for a WeComApp's condition transitions, published by the app
//! reconciler after an A8 check and by the callback worker after a quota callback.

use kube::runtime::events::EventType;

use super::{
    conditions::{self, QUOTA_EXHAUSTED, QUOTA_EXPIRING_SOON, QUOTA_LOW, READY},
    context::Context,
};
use crate::api::{WeComApp, WeComAppStatus};

/// Events for quota transitions (QuotaLow, QuotaExhausted, QuotaRestored, QuotaExpiringSoon).
pub async fn publish_transitions(
    ctx: &Context,
    app: &WeComApp,
    old: &WeComAppStatus,
    new: &WeComAppStatus,
) {
    let flipped_on = |type_: &str| {
        conditions::is_true(&new.conditions, type_) && !conditions::is_true(&old.conditions, type_)
    };
    let message = |type_: &str| {
        conditions::find(&new.conditions, type_)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    if flipped_on(QUOTA_EXHAUSTED) {
        ctx.publish(
            app,
            EventType::Warning,
            "QuotaExhausted",
            "QuotaCheck",
            message(QUOTA_EXHAUSTED),
        )
        .await;
    } else if flipped_on(QUOTA_LOW) {
        ctx.publish(
            app,
            EventType::Warning,
            "QuotaLow",
            "QuotaCheck",
            message(QUOTA_LOW),
        )
        .await;
    }
    if conditions::is_true(&old.conditions, QUOTA_EXHAUSTED)
        && !conditions::is_true(&new.conditions, QUOTA_EXHAUSTED)
    {
        ctx.publish(
            app,
            EventType::Normal,
            "QuotaRestored",
            "QuotaCheck",
            message(QUOTA_EXHAUSTED),
        )
        .await;
    }
    if flipped_on(QUOTA_EXPIRING_SOON) {
        ctx.publish(
            app,
            EventType::Warning,
            "QuotaExpiringSoon",
            "QuotaCheck",
            message(QUOTA_EXPIRING_SOON),
        )
        .await;
    }
    let ready = |s: &WeComAppStatus| {
        conditions::find(&s.conditions, READY).map(|c| (c.status.clone(), c.reason.clone()))
    };
    if ready(new) != ready(old)
        && let Some(c) = conditions::find(&new.conditions, READY)
        && c.status == "False"
    {
        ctx.publish(
            app,
            EventType::Warning,
            &c.reason,
            "CredentialsCheck",
            c.message.clone(),
        )
        .await;
    }
}
