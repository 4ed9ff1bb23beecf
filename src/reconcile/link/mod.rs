//! The AcquisitionLink reconciler (Crossplane's managed-resource shape, as a pipeline):
//!
//! - `mod.rs` (this file): the controller's entry points - one pass at a time per object, the
//!   reconcile slots, the finalizer, back-off - and the small facts about an object they share;
//! - [`pipeline`]: one pass over a live object, validate -> resolve -> observe -> decide ->
//!   act -> report;
//! - [`create`]: the crash-safe create step (marker, A3, id);
//! - [`present`] and [`facts`]: a link WeCom has (drift, A4) and its customers and statistics;
//! - [`cleanup`]: deletion (A5 or orphaning);
//! - [`external`]: the WeCom verbs, none touching Kubernetes;
//! - [`report`]: outcomes into conditions, and every Event message;
//! - [`pass`]: the status a pass builds and how it is written.
//!
//! The decision itself is pure, in [`super::decide`].

mod cleanup;
mod create;
mod external;
mod facts;
mod pass;
mod pipeline;
mod present;
mod report;

use std::{sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{Error as FinalizerError, Event as Finalizer, finalizer},
        reflector::ObjectRef,
    },
};
use serde_json::json;

use super::{
    conditions::{self, SYNCED, reason},
    context::{AppError, Context},
    decide,
    marker::CreateMarker,
    pacing::{self, LastPoll, PassCause},
    plan,
};
use crate::reconcile::cache;
use crate::{
    api::{
        AcquisitionLink, CREATE_PENDING_ANNOTATION, LINK_FINALIZER, PAUSED_ANNOTATION,
        RECONCILE_REQUESTED_ANNOTATION,
    },
    wecom::{
        WeComError,
        error::codes,
        scheduler::{Priority, with_priority},
        unix_now_ms,
    },
};
use pass::wrote;

/// Errors that end a pass without a status-level answer; the error policy retries them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    WeCom(#[from] WeComError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error("deletion of {0} is waiting: {1}")]
    DeletionBlocked(String, String),
    #[error("finalizer handling failed: {0}")]
    Finalizer(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::WeCom(_) => "wecom",
            Error::App(_) => "app",
            Error::DeletionBlocked(..) => "deletion_blocked",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn jitter() -> f64 {
    0.5 + rand::random::<f64>() * 0.5
}

/// The key of the link's app among the apps (`namespace/name`).
fn app_key(link: &AcquisitionLink) -> String {
    format!(
        "{}/{}",
        link.namespace().unwrap_or_default(),
        link.spec.app_ref.name
    )
}

fn link_hash(link: &AcquisitionLink) -> u64 {
    pacing::uid_hash(link.metadata.uid.as_deref().unwrap_or(&object_key(link)))
}

/// When the link's next poll is due (Unix ms): what this process planned, else its next
/// phase point (after a restart every link waits for its own phase: no burst).
fn poll_due(ctx: &Context, link: &AcquisitionLink, now_ms: u64) -> u64 {
    match ctx.polls.get(&object_key(link)) {
        Some(due) => due,
        None => plan_next_poll(ctx, link, now_ms),
    }
}

/// Plans the link's next poll at its next phase point, or, when status changed less than
/// an interval ago (a link created or edited just before a restart), at its first phase
/// point a whole interval after that change.
fn plan_next_poll(ctx: &Context, link: &AcquisitionLink, now_ms: u64) -> u64 {
    let interval = ctx.poll_interval(&app_key(link));
    let synced = link
        .status
        .as_ref()
        .and_then(|s| s.last_sync_time.as_deref());
    let last = LastPoll::restored(synced, now_ms, interval);
    let due = pacing::next_poll_ms(last, link_hash(link), interval);
    ctx.polls.set(&object_key(link), due);
    due
}

/// Notes what the pass learnt of the link's existence, for its next poll.
fn polled(ctx: &Context, link: &AcquisitionLink, last: LastPoll) {
    let interval = ctx.poll_interval(&app_key(link));
    ctx.polls.set(
        &object_key(link),
        pacing::next_poll_ms(last, link_hash(link), interval),
    );
}

/// Requeue at rest: at the link's next phase point of the poll interval.
fn at_rest(ctx: &Context, link: &AcquisitionLink) -> Action {
    let now = unix_now_ms();
    let mut due = poll_due(ctx, link, now);
    if due <= now {
        // This pass did not poll (a terminal outcome, a conflict): the next phase point.
        due = plan_next_poll(ctx, link, now);
    }
    Action::requeue(Duration::from_millis(due - now))
}

/// What started this pass, for the class of its WeCom requests.
fn pass_cause(link: &AcquisitionLink, ctx: &Context) -> PassCause {
    PassCause {
        callback: ctx.urgent.take(&object_key(link)),
        ..object_cause(link)
    }
}

/// What the object itself says it needs (everything but a callback's mark).
fn object_cause(link: &AcquisitionLink) -> PassCause {
    let status = link.status.as_ref();
    let observed = status.and_then(|s| s.observed_generation);
    let requested = link.annotations().get(RECONCILE_REQUESTED_ANNOTATION);
    PassCause {
        spec_changed: observed.is_some() && observed != link.metadata.generation,
        requested: requested.is_some()
            && requested != status.and_then(|s| s.last_handled_reconcile_at.as_ref()),
        deleting: link.metadata.deletion_timestamp.is_some(),
        callback: false,
        pause_changed: observed.is_some() && is_paused(link) != shows_paused(link),
        creating: link_id_of(link).is_none() || create_marker(link).is_some(),
    }
}

/// True when a person is waiting for a pass of this object (an edit, a deletion, a
/// requested pass, a pause toggled): the controller runs it on the urgent lane instead of
/// behind the passes already queued.
pub fn wants_urgent_pass(link: &AcquisitionLink) -> bool {
    let mut cause = object_cause(link);
    // A deletion has nothing to do once the finalizer is off.
    cause.deleting &= link.finalizers().iter().any(|f| f == LINK_FINALIZER);
    pacing::pass_priority(cause) == Priority::Now
}

/// Status says the link is paused (Synced=False, reason Paused).
fn shows_paused(link: &AcquisitionLink) -> bool {
    link.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, SYNCED))
        .is_some_and(|c| c.reason == reason::PAUSED)
}

/// The object to act on: the cached one, or, when the watch has already delivered another
/// version than the cache holds (the store lags during a relist), the object read from the
/// API server. `None` when it is gone. Acting on the newest version keeps an edit from
/// being lost (observedGeneration written for an older generation) and the finalizer and
/// marker writes from failing on a stale list or resourceVersion.
async fn newest(
    link: Arc<AcquisitionLink>,
    api: &Api<AcquisitionLink>,
    ctx: &Context,
) -> Result<Option<Arc<AcquisitionLink>>, Error> {
    // A pass that waited for another pass over the object holds it as it was when queued;
    // the cache has what that pass wrote by now (and `seen_versions` forgets a version once
    // the cache holds it).
    let link = match ctx.link_store.get(&ObjectRef::from_obj(&*link)) {
        Some(cached) if cached.metadata.uid == link.metadata.uid => cached,
        _ => link,
    };
    let (Some(uid), Some(version)) = (
        link.metadata.uid.as_deref(),
        link.metadata.resource_version.as_deref(),
    ) else {
        return Ok(Some(link));
    };
    if !ctx.seen_versions.differs(uid, version) {
        return Ok(Some(link));
    }
    tracing::debug!(link = %object_key(&link), version, "cache is older than the watch; reading the link");
    let read = api.get_opt(&link.name_any()).await?;
    ctx.seen_versions.forget(uid);
    match read {
        Some(mut fresh) if fresh.metadata.uid == link.metadata.uid => {
            if let Some(version) = fresh.metadata.resource_version.as_deref() {
                ctx.seen_versions.note(uid, version);
            }
            cache::trim_link(&mut fresh);
            Ok(Some(Arc::new(fresh)))
        }
        _ => Ok(None),
    }
}

/// How soon a pass that found its app over its share of the reconcile slots comes back.
fn slot_wait() -> Duration {
    Duration::from_millis(200 + rand::random::<u64>() % 800)
}

/// Entry point for the controller.
pub async fn reconcile(link: Arc<AcquisitionLink>, ctx: Arc<Context>) -> Result<Action, Error> {
    run_pass(link, ctx, false).await
}

/// Entry point for the urgent lane: the same pass, outside the app's share of the
/// controller's slots (the lane has its own bound).
pub async fn reconcile_urgent(
    link: Arc<AcquisitionLink>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    run_pass(link, ctx, true).await
}

async fn run_pass(
    link: Arc<AcquisitionLink>,
    ctx: Arc<Context>,
    urgent: bool,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let api: Api<AcquisitionLink> =
        Api::namespaced(ctx.kube.clone(), &link.namespace().unwrap_or_default());
    let _one_at_a_time = ctx.pass_locks.hold(&object_key(&link)).await;
    let _slot = if urgent {
        None
    } else {
        let apps = ctx.app_store.state().len();
        match ctx.slots.enter(&app_key(&link), apps) {
            Some(slot) => Some(slot),
            None => return Ok(Action::requeue(slot_wait())),
        }
    };
    let Some(link) = newest(link, &api, &ctx).await? else {
        return Ok(Action::await_change());
    };
    // A pass for what the last failed pass was about waits out its back-off.
    let object = link.clone();
    let cause = cause_of(&link);
    if let Some(left) = ctx.held_off.remaining(&object_key(&link), cause) {
        return Ok(Action::requeue(left));
    }
    // This pass runs; one that fails below holds the next off again.
    ctx.held_off.release(&object_key(&link));
    let link = match ensure_finalizer(link, &api, &ctx).await {
        Ok(link) => link,
        Err(kube::Error::Api(status)) if status.code == 409 => {
            tracing::debug!(link = %object.name_any(), "finalizer write raced a newer object; waiting for it");
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        Err(err) => return Err(err.into()),
    };
    let result = finalizer_outcome(apply_or_clean_up(link, &api, &ctx).await);
    after_pass(&object, &ctx, cause, &result);
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.metric_label(),
    };
    ctx.metrics
        .observe_reconcile("AcquisitionLink", label, started.elapsed());
    result
}

/// The pass proper, with the priority class of what started it: kube's finalizer helper
/// runs the pipeline for a live object and the cleanup for one being deleted.
async fn apply_or_clean_up(
    link: Arc<AcquisitionLink>,
    api: &Api<AcquisitionLink>,
    ctx: &Context,
) -> Result<Action, FinalizerError<Error>> {
    let class = pacing::pass_priority(pass_cause(&link, ctx));
    with_priority(class, async {
        if finalizer_comes_with_the_marker(&link) {
            return pipeline::apply(&link, ctx)
                .await
                .map_err(FinalizerError::ApplyFailed);
        }
        finalizer(api, LINK_FINALIZER, link, |event| async {
            match event {
                Finalizer::Apply(link) => pipeline::apply(&link, ctx).await,
                Finalizer::Cleanup(link) => cleanup::cleanup(&link, ctx).await,
            }
        })
        .await
    })
    .await
}

/// What a pass leaves for the next one: the count of failures in a row and the back-off
/// of a failed pass, or, once the cleanup succeeded and kube's helper removed the
/// finalizer, the object's versions forgotten.
fn after_pass(object: &AcquisitionLink, ctx: &Context, cause: u64, result: &Result<Action, Error>) {
    let key = object_key(object);
    if let Ok(mut failures) = ctx.pass_failures.lock() {
        match result {
            Ok(_) => {
                failures.remove(&key);
            }
            Err(_) => *failures.entry(key.clone()).or_default() += 1,
        }
    }
    match result {
        Err(err) => ctx
            .held_off
            .hold(&key, cause, retry_delay(object, err, ctx)),
        Ok(_)
            if object.metadata.deletion_timestamp.is_some()
                && object.finalizers().iter().any(|f| f == LINK_FINALIZER) =>
        {
            if let Some(uid) = object.metadata.uid.as_deref() {
                ctx.seen_versions.bury(uid);
            }
        }
        Ok(_) => {}
    }
}

/// True for a live object with no finalizer, no link id and no create in flight: nothing
/// exists in WeCom that a deletion would have to clean up, and the only way to make
/// something is a create, whose marker write adds the finalizer before A3 is sent. One
/// write instead of two, and no pass waiting for the finalizer's watch event in between.
fn finalizer_comes_with_the_marker(link: &AcquisitionLink) -> bool {
    link.metadata.deletion_timestamp.is_none()
        && !link.finalizers().iter().any(|f| f == LINK_FINALIZER)
        && link_id_of(link).is_none()
        && !link.annotations().contains_key(CREATE_PENDING_ANNOTATION)
}

/// Adds the finalizer to a live object that lacks it and has (or may have) a link in WeCom,
/// with the resourceVersion read (409 when the object changed: never a list written from a
/// stale cache), and goes on with the object written, in the same pass. A link without an
/// id gets it with its create marker instead.
async fn ensure_finalizer(
    link: Arc<AcquisitionLink>,
    api: &Api<AcquisitionLink>,
    ctx: &Context,
) -> Result<Arc<AcquisitionLink>, kube::Error> {
    if link.metadata.deletion_timestamp.is_some()
        || link.finalizers().iter().any(|f| f == LINK_FINALIZER)
        || finalizer_comes_with_the_marker(&link)
    {
        return Ok(link);
    }
    let mut finalizers = link.finalizers().to_vec();
    finalizers.push(LINK_FINALIZER.to_string());
    let patch = json!({ "metadata": {
        "resourceVersion": link.resource_version(),
        "finalizers": finalizers,
    }});
    let mut written = api
        .patch(
            &link.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    wrote(ctx, &written);
    cache::trim_link(&mut written);
    Ok(Arc::new(written))
}

/// The outcome of a pass run by kube's `finalizer()` helper. Adding or removing the
/// finalizer may race a newer version of the object than the cache had (the JSON patch's
/// `test` failed with 422, or a 409): the watch brings the newer version and its own pass,
/// so that is no failure worth a warning.
pub(super) fn finalizer_outcome(
    result: Result<Action, FinalizerError<Error>>,
) -> Result<Action, Error> {
    match result {
        Ok(action) => Ok(action),
        Err(FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e)) => Err(e),
        Err(
            FinalizerError::AddFinalizer(kube::Error::Api(status))
            | FinalizerError::RemoveFinalizer(kube::Error::Api(status)),
        ) if status.code == 409 || status.code == 422 => {
            tracing::debug!(message = %status.message, "finalizer update raced a newer object; waiting for it");
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        Err(other) => Err(Error::Finalizer(other.to_string())),
    }
}

/// Error policy: back off with jitter.
///
/// The count of consecutive failures comes from status and, when the Kubernetes API is the
/// thing failing (status cannot be written), from memory, so an outage still backs off.
pub fn error_policy(link: Arc<AcquisitionLink>, error: &Error, ctx: Arc<Context>) -> Action {
    if let Error::WeCom(err) = error
        && err.retry_after().is_some()
    {
        tracing::debug!(link = %link.name_any(), %err, "WeCom request deferred");
    } else {
        tracing::warn!(link = %link.name_any(), namespace = ?link.namespace(), %error, "reconcile failed");
    }
    Action::requeue(retry_delay(&link, error, &ctx))
}

/// When a failed pass may be tried again.
fn retry_delay(link: &AcquisitionLink, error: &Error, ctx: &Context) -> Duration {
    if let Error::WeCom(err) = error
        && let Some(after) = err.retry_after()
    {
        // Not sent: the corp's budget or WeCom's rate limit says when.
        return after;
    }
    let key = format!(
        "{}/{}",
        link.namespace().unwrap_or_default(),
        link.name_any()
    );
    let in_memory = ctx
        .pass_failures
        .lock()
        .ok()
        .and_then(|f| f.get(&key).copied())
        .unwrap_or(0);
    let in_status = link.status.as_ref().and_then(|s| s.failures).unwrap_or(0) + 1;
    let failures = in_status.max(in_memory);
    plan::retry_delay(failures, jitter())
}

/// What a person asked of the object, as one number: a failed pass holds off later passes
/// for the same one (see `HeldOff`), not for a new edit or request.
fn cause_of(link: &AcquisitionLink) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    link.metadata.generation.hash(&mut hash);
    link.metadata.deletion_timestamp.is_some().hash(&mut hash);
    let annotations = link.annotations();
    for key in [RECONCILE_REQUESTED_ANNOTATION, PAUSED_ANNOTATION] {
        annotations.get(key).hash(&mut hash);
    }
    hash.finish()
}

fn is_paused(link: &AcquisitionLink) -> bool {
    link.annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// The link id this object manages: status first, then the annotation (status lost), then
/// the spec (adoption). A spec.linkId naming another link is refused before this is used,
/// and never wins: deleting such an object must not delete the other link.
fn known_link_id(link: &AcquisitionLink) -> Option<String> {
    link_id_of(link).map(str::to_string)
}

/// [`known_link_id`] without a copy: what scans of the whole cache use (one per pass).
fn link_id_of(link: &AcquisitionLink) -> Option<&str> {
    let status = link.status.as_ref().and_then(|s| s.link_id.as_deref());
    let annotation = cache::link_id_annotation(link);
    [status, annotation, link.spec.link_id.as_deref()]
        .into_iter()
        .flatten()
        .find(|id| !id.is_empty())
}

fn object_key(link: &AcquisitionLink) -> String {
    format!(
        "{}/{}",
        link.namespace().unwrap_or_default(),
        link.name_any()
    )
}

fn claim_of(link: &AcquisitionLink) -> decide::Claim {
    decide::Claim {
        object: object_key(link),
        holds: link.status.as_ref().and_then(|s| s.link_id.as_deref()) == link_id_of(link),
        created: link.metadata.creation_timestamp.as_ref().map(|t| t.0),
    }
}

/// The other object that keeps the link this one names, if one does (see
/// [`decide::owner_of`] for who comes first). Built from the controller's link cache, so it
/// costs no call.
fn link_owned_by_another(link: &AcquisitionLink, ctx: &Context) -> Option<(String, String)> {
    let link_id = link_id_of(link)?;
    let mut claims: Vec<decide::Claim> = ctx
        .link_store
        .state()
        .iter()
        .filter(|other| other.metadata.uid != link.metadata.uid)
        .filter(|other| link_id_of(other) == Some(link_id))
        .map(|other| claim_of(other))
        .collect();
    claims.push(claim_of(link));
    let owner = decide::owner_of(&claims)?;
    (owner.object != object_key(link)).then(|| (link_id.to_string(), owner.object.clone()))
}

fn create_marker(link: &AcquisitionLink) -> Option<CreateMarker> {
    link.annotations()
        .get(CREATE_PENDING_ANNOTATION)
        .map(|v| CreateMarker::parse(v))
}

/// Reasons that wait for a spec change (or a reconcile request) instead of calling WeCom.
/// `CreateIncomplete` is not one: every pass looks at the candidates again (reads only), so
/// deleting the extra links in WeCom or removing the marker is picked up at the next resync.
fn is_terminal_reason(reason: &str) -> bool {
    matches!(
        reason,
        reason::INVALID_SPEC
            | reason::PERMISSION_DENIED
            | reason::WECOM_ERROR
            | reason::REMOTE_DELETED
    )
}

/// The condition reason for a terminal WeCom error.
fn terminal_reason(err: &WeComError) -> &'static str {
    match err.errcode() {
        Some(
            codes::INVALID_PARAMETER
            | codes::INVALID_PARAMETER_VALUE
            | codes::OUTSIDE_VISIBLE_RANGE,
        )
        | Some(codes::NO_EXTERNAL_CONTACT | codes::INVALID_LINK_ID) => reason::INVALID_SPEC,
        Some(41000..=41999) => reason::INVALID_SPEC,
        Some(
            codes::NO_PERMISSION
            | codes::IP_NOT_TRUSTED
            | codes::INVALID_CREDENTIAL
            | codes::INVALID_CORPID,
        ) => reason::PERMISSION_DENIED,
        _ => reason::WECOM_ERROR,
    }
}

/// How often a link whose app is missing or has no usable Secret looks again.
const APP_WAIT: Duration = Duration::from_secs(60);

fn paused_message() -> String {
    format!("annotation {PAUSED_ANNOTATION} is \"true\": no writes to WeCom")
}

/// A stable message for a WeCom error: the API, the errcode and our description, never
/// WeCom's errmsg (it carries request ids that change on every call).
fn stable_message(err: &WeComError) -> String {
    match err.errcode() {
        Some(code) => format!(
            "WeCom {} refused the request: errcode {code} ({}); fix the spec or the app, or set annotation {RECONCILE_REQUESTED_ANNOTATION} to retry",
            err.api(),
            crate::wecom::error::describe(code)
        ),
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{AcquisitionLinkStatus, CustomerCount},
        reconcile::{status_apply, traffic::SeenVersions},
    };
    use pass::apply_link_status;

    /// The callback worker bumped the customer count; a pass working from a cache that
    /// has not seen the bump changes its conditions. The pass's write must keep the count.
    #[tokio::test]
    async fn a_status_write_from_a_stale_cache_keeps_the_customers_a_callback_counted() {
        let sim = crate::kubesim::KubeSim::new()
            .spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        sim.install_crds().await.unwrap();
        let api: Api<AcquisitionLink> = Api::namespaced(sim.client().await, "default");
        let link: AcquisitionLink = serde_json::from_value(json!({
            "apiVersion": "acquisition.wecom.dev/v1alpha1",
            "kind": "AcquisitionLink",
            "metadata": {"name": "l", "namespace": "default"},
            "spec": {"appRef": {"name": "app"}, "linkName": "L", "range": {"userList": ["u"]}},
        }))
        .unwrap();
        api.create(&Default::default(), &link).await.unwrap();
        let seen = SeenVersions::default();
        let counted = |total| AcquisitionLinkStatus {
            link_id: Some("cawcde".into()),
            customers: Some(CustomerCount {
                total,
                ..Default::default()
            }),
            ..Default::default()
        };
        let stale = counted(1);
        apply_link_status(&seen, &api, "l", &AcquisitionLinkStatus::default(), &stale)
            .await
            .unwrap();
        // The callback worker's bump, as it writes it.
        status_apply::apply_status(
            &api,
            "l",
            status_apply::CALLBACK_MANAGER,
            status_apply::link_customers(&counted(2)),
            None,
        )
        .await
        .unwrap();
        let mut next = stale.clone();
        conditions::set(
            &mut next.conditions,
            SYNCED,
            true,
            reason::IN_SYNC,
            "",
            None,
            &now(),
        );
        apply_link_status(&seen, &api, "l", &stale, &next)
            .await
            .unwrap();
        let stored = api.get_status("l").await.unwrap().status.unwrap();
        assert_eq!(
            stored.customers.map(|c| c.total),
            Some(2),
            "the bump survives"
        );
        assert!(conditions::is_true(&stored.conditions, SYNCED));
        assert_eq!(stored.link_id.as_deref(), Some("cawcde"));
    }

    #[test]
    fn terminal_reasons_follow_errcodes() {
        let e = |code| WeComError::Api {
            api: crate::wecom::Api::CreateLink,
            errcode: code,
            errmsg: String::new(),
        };
        assert_eq!(terminal_reason(&e(40058)), reason::INVALID_SPEC);
        assert_eq!(terminal_reason(&e(60011)), reason::INVALID_SPEC);
        assert_eq!(terminal_reason(&e(48002)), reason::PERMISSION_DENIED);
        assert_eq!(terminal_reason(&e(12345)), reason::WECOM_ERROR);
        assert!(!stable_message(&e(40058)).contains("hint"));
    }
}
