//! The quota loop: quota callbacks set the WeComApp's conditions (with Events), ask for an
//! A8 refresh, and re-trigger the links waiting for quota once it is back.

use crate::reconcile::cache;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, ResourceExt, runtime::reflector::ObjectRef};
use tokio::sync::mpsc;

use crate::{
    api::{WeComApp, WeComAppStatus},
    isolation,
    reconcile::{
        conditions::{self, LOW_BALANCE, QUOTA_EXHAUSTED, QUOTA_EXPIRING_SOON, QUOTA_LOW, reason},
        context::Context,
        events::publish_transitions,
        status_apply,
        triggers::{Triggers, trigger},
    },
    wecom::event::ChangeType,
};

/// A quota callback for one app.
#[derive(Debug, Clone)]
pub(super) struct QuotaNotice {
    pub(super) namespace: String,
    pub(super) app: String,
    pub(super) change: ChangeType,
    pub(super) expire_time: Option<i64>,
    pub(super) expire_quota_num: Option<u64>,
}

/// Sets the quota conditions a quota callback implies. `false` for other change types.
/// The messages are stable (no timestamps), and name the callback, so an operator can tell
/// them from an A8 reading (which replaces them at the next check).
pub fn apply_quota_callback(
    status: &mut WeComAppStatus,
    change: &ChangeType,
    expire_time: Option<i64>,
    expire_quota_num: Option<u64>,
    generation: Option<i64>,
    now: &Time,
) -> bool {
    let c = &mut status.conditions;
    match change {
        ChangeType::BalanceLow => conditions::set(
            c,
            QUOTA_LOW,
            true,
            reason::BALANCE_LOW,
            format!(
                "WeCom reports fewer than {LOW_BALANCE} quota left (balance_low callback): buy more quota"
            ),
            generation,
            now,
        ),
        ChangeType::BalanceExhausted => {
            conditions::set(
                c,
                QUOTA_EXHAUSTED,
                true,
                reason::BALANCE_EXHAUSTED,
                "the acquisition quota is used up (balance_exhausted callback): no new link is created until quota is added",
                generation,
                now,
            );
            conditions::set(
                c,
                QUOTA_LOW,
                true,
                reason::BALANCE_LOW,
                "the acquisition quota is used up (balance_exhausted callback): buy more quota",
                generation,
                now,
            );
        }
        ChangeType::BalanceIncreased => conditions::set(
            c,
            QUOTA_EXHAUSTED,
            false,
            reason::BALANCE_OK,
            "quota was added (balance_increased callback); links are created again",
            generation,
            now,
        ),
        ChangeType::QuotaExpireSoon => {
            let amount = expire_quota_num
                .map(|n| n.to_string())
                .unwrap_or_else(|| "some".to_string());
            let when = expire_time
                .and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t).ok())
                .map(|t| t.to_string())
                .unwrap_or_else(|| "soon".to_string());
            conditions::set(
                c,
                QUOTA_EXPIRING_SOON,
                true,
                reason::BATCH_EXPIRING,
                format!(
                    "{amount} quota expire at {when} (quota_expire_soon callback): use or renew it"
                ),
                generation,
                now,
            );
        }
        _ => return false,
    }
    true
}

pub(super) async fn quota_loop(
    context: Arc<Context>,
    triggers: Triggers,
    mut notices: mpsc::Receiver<QuotaNotice>,
    follow_up: Duration,
) {
    while let Some(notice) = notices.recv().await {
        let applied =
            isolation::catch(apply_quota_notice(&context, &triggers, &notice, follow_up)).await;
        if let Err(panic) = applied {
            context
                .metrics
                .count_panic(isolation::task::CALLBACK_WORKER);
            tracing::error!(
                namespace = %notice.namespace,
                app = %notice.app,
                panic = %panic,
                "applying a quota callback panicked (a bug); the next A8 check reports the quota"
            );
        }
    }
}

/// Writes the conditions (guarded by resourceVersion), publishes the transitions, and asks
/// for an A8 refresh.
async fn apply_quota_notice(
    context: &Arc<Context>,
    triggers: &Triggers,
    notice: &QuotaNotice,
    follow_up: Duration,
) {
    let (namespace, name) = (notice.namespace.as_str(), notice.app.as_str());
    let api: Api<WeComApp> = Api::namespaced(context.kube.clone(), namespace);
    let mut current = context.app(namespace, name);
    let observed_before = quota_observed_at(current.as_deref());
    for _ in 0..3 {
        let Some(app) = current.take() else {
            tracing::debug!(
                namespace,
                app = name,
                "quota callback for a WeComApp that is gone"
            );
            return;
        };
        let old = app.status.clone().unwrap_or_default();
        let mut new = old.clone();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        apply_quota_callback(
            &mut new,
            &notice.change,
            notice.expire_time,
            notice.expire_quota_num,
            app.metadata.generation,
            &now,
        );
        if new.conditions == old.conditions {
            break;
        }
        match status_apply::apply_status(
            &api,
            name,
            status_apply::CALLBACK_MANAGER,
            status_apply::app_quota_conditions(&new),
            app.resource_version().as_deref(),
        )
        .await
        {
            Ok(_) => {
                tracing::info!(namespace, app = name, change = %notice.change, "quota conditions updated from a callback");
                publish_transitions(context, &app, &old, &new).await;
                break;
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                current = api.get_status(name).await.ok().map(Arc::new);
            }
            Err(err) => {
                tracing::warn!(namespace, app = name, error = %err, "could not write the quota conditions; the A8 refresh reports the quota");
                break;
            }
        }
    }
    context.expire_quota_check(namespace, name);
    trigger(&triggers.apps, ObjectRef::new(name).within(namespace));
    if notice.change == ChangeType::BalanceIncreased {
        tokio::spawn(retrigger_waiting_links(
            context.clone(),
            triggers.clone(),
            namespace.to_string(),
            name.to_string(),
            observed_before,
            follow_up,
        ));
    }
}

fn quota_observed_at(app: Option<&WeComApp>) -> Option<String> {
    app?.status.as_ref()?.quota.as_ref()?.observed_at.clone()
}

/// Once the A8 refresh has landed (or `timeout` passed), reconciles the app's links that
/// have no WeCom link yet: they were refused for lack of quota and would otherwise wait
/// for their next requeue.
async fn retrigger_waiting_links(
    context: Arc<Context>,
    triggers: Triggers,
    namespace: String,
    app: String,
    observed_before: Option<String>,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while quota_observed_at(context.app(&namespace, &app).as_deref()) == observed_before
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for link in context.link_store.state() {
        let waiting = link.status.as_ref().is_none_or(|s| s.link_id.is_none())
            && link.spec.link_id.is_none()
            && cache::link_id_annotation(&link).is_none();
        if waiting
            && link.namespace().as_deref() == Some(namespace.as_str())
            && link.spec.app_ref.name == app
        {
            trigger(&triggers.links, ObjectRef::from_obj(&*link));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn quota_callbacks_set_the_matching_conditions() {
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_790_000_000).unwrap());
        let mut status = WeComAppStatus::default();
        assert!(apply_quota_callback(
            &mut status,
            &ChangeType::BalanceExhausted,
            None,
            None,
            Some(1),
            &now
        ));
        assert!(conditions::is_true(&status.conditions, QUOTA_EXHAUSTED));
        assert!(conditions::is_true(&status.conditions, QUOTA_LOW));
        assert!(apply_quota_callback(
            &mut status,
            &ChangeType::BalanceIncreased,
            None,
            None,
            Some(1),
            &now
        ));
        assert!(!conditions::is_true(&status.conditions, QUOTA_EXHAUSTED));
        assert!(apply_quota_callback(
            &mut status,
            &ChangeType::QuotaExpireSoon,
            Some(1_767_196_800),
            Some(150),
            Some(1),
            &now
        ));
        let expiring = conditions::find(&status.conditions, QUOTA_EXPIRING_SOON).unwrap();
        assert_eq!(expiring.status, "True");
        assert!(
            expiring.message.contains("150") && expiring.message.contains("2025-12-31T16:00:00Z"),
            "{}",
            expiring.message
        );
        let before = status.clone();
        assert!(!apply_quota_callback(
            &mut status,
            &ChangeType::DeleteLink,
            None,
            None,
            Some(1),
            &now
        ));
        assert_eq!(status, before);
    }
}
