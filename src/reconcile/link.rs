//! The AcquisitionLink reconciler: observe (A2), diff, at most one mutating call (A3, A4 or
//! A5), report - Crossplane's managed-resource shape.
//!
//! Creation is crash-safe: a `create-pending` annotation is written (with the object's
//! resourceVersion, so a racing writer gets a 409) before A3, and the new id is written
//! right after. A pass that finds the marker without an id looks for the link the
//! interrupted pass may have made (A1 + A2) before it creates anything.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use futures::TryStreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{Error as FinalizerError, Event as Finalizer, finalizer},
    },
};
use serde_json::{Value, json};

use super::{
    conditions::{self, READY, SYNCED, reason},
    context::{AppError, Context, SlowFacts, WECOM_REQUEST_TIMEOUT},
    decide::{self, OnPresent},
    marker::{CREATE_SEND_WINDOW, CreateMarker},
    pacing::{self, LastPoll, PassCause},
    plan::{self, DesiredLink},
    status_apply,
    traffic::SeenVersions,
};
use crate::{
    api::{
        AcquisitionLink, AcquisitionLinkStatus, CREATE_PENDING_ANNOTATION, CustomerCount,
        LINK_FINALIZER, LINK_ID_ANNOTATION, LinkOrigin, LinkStatistics, ManagementPolicy,
        PAUSED_ANNOTATION, QuotaSummary, RECONCILE_REQUESTED_ANNOTATION, WeComApp,
    },
    wecom::{
        Api as WeComApi, ErrorClass, WeComError,
        client::WeComClient,
        error::codes,
        scheduler::{self, Priority, with_priority},
        types::RemoteLink,
        unix_now_ms,
    },
};

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

use crate::wecom::unix_now;

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

/// Plans the link's next poll at its next phase point.
fn plan_next_poll(ctx: &Context, link: &AcquisitionLink, now_ms: u64) -> u64 {
    let interval = ctx.poll_interval(&app_key(link));
    let due = pacing::next_poll_ms(LastPoll::Unknown { now: now_ms }, link_hash(link), interval);
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
        creating: known_link_id(link).is_none() || create_marker(link).is_some(),
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
            fresh.metadata.managed_fields = None;
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
    let namespace = link.namespace().unwrap_or_default();
    let api: Api<AcquisitionLink> = Api::namespaced(ctx.kube.clone(), &namespace);
    let name = link.name_any();
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
            tracing::debug!(link = %name, "finalizer write raced a newer object; waiting for it");
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        Err(err) => return Err(err.into()),
    };
    let class = pacing::pass_priority(pass_cause(&link, &ctx));
    let result = with_priority(class, async {
        if finalizer_comes_with_the_marker(&link) {
            return apply(&link, &ctx)
                .await
                .map_err(FinalizerError::ApplyFailed);
        }
        finalizer(&api, LINK_FINALIZER, link, |event| async {
            match event {
                Finalizer::Apply(link) => apply(&link, &ctx).await,
                Finalizer::Cleanup(link) => cleanup(&link, &ctx).await,
            }
        })
        .await
    })
    .await;
    let result = finalizer_outcome(result);
    let key = format!("{namespace}/{name}");
    if let Ok(mut failures) = ctx.pass_failures.lock() {
        match &result {
            Ok(_) => {
                failures.remove(&key);
            }
            Err(_) => *failures.entry(key.clone()).or_default() += 1,
        }
    }
    match &result {
        Err(err) => ctx
            .held_off
            .hold(&key, cause, retry_delay(&object, err, &ctx)),
        // The cleanup succeeded and kube's helper removed the finalizer.
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
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.metric_label(),
    };
    ctx.metrics
        .observe_reconcile("AcquisitionLink", label, started.elapsed());
    result
}

/// True for a live object with no finalizer, no link id and no create in flight: nothing
/// exists in WeCom that a deletion would have to clean up, and the only way to make
/// something is a create, whose marker write adds the finalizer before A3 is sent. One
/// write instead of two, and no pass waiting for the finalizer's watch event in between.
fn finalizer_comes_with_the_marker(link: &AcquisitionLink) -> bool {
    link.metadata.deletion_timestamp.is_none()
        && !link.finalizers().iter().any(|f| f == LINK_FINALIZER)
        && known_link_id(link).is_none()
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
    written.metadata.managed_fields = None;
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

/// One pass's view of the object and the status it is building.
struct Pass<'a> {
    ctx: &'a Context,
    link: &'a AcquisitionLink,
    api: Api<AcquisitionLink>,
    generation: Option<i64>,
    old: AcquisitionLinkStatus,
    new: AcquisitionLinkStatus,
    now: Time,
    /// False when the pass failed before it could act on the current generation: then
    /// `status.observedGeneration` stays where it was, so nobody (ArgoCD included) reads
    /// an edit WeCom never received as applied.
    generation_observed: bool,
}

impl<'a> Pass<'a> {
    fn new(link: &'a AcquisitionLink, ctx: &'a Context) -> Self {
        let namespace = link.namespace().unwrap_or_default();
        let old = link.status.clone().unwrap_or_default();
        let mut new = old.clone();
        new.last_handled_reconcile_at = link
            .annotations()
            .get(RECONCILE_REQUESTED_ANNOTATION)
            .cloned();
        Pass {
            ctx,
            link,
            api: Api::namespaced(ctx.kube.clone(), &namespace),
            generation: link.metadata.generation,
            old,
            new,
            now: now(),
            generation_observed: true,
        }
    }

    fn key(&self) -> String {
        object_key(self.link)
    }

    fn set(&mut self, type_: &str, status: bool, reason: &str, message: impl Into<String>) {
        let generation = self.generation;
        let now = self.now.clone();
        conditions::set(
            &mut self.new.conditions,
            type_,
            status,
            reason,
            message,
            generation,
            &now,
        );
    }

    /// Ready=False while a pass waits to see whether an interrupted create made the link.
    fn checking_interrupted_create(&mut self) {
        self.set(
            READY,
            false,
            reason::CREATING,
            "checking whether an interrupted create made the link",
        );
    }

    /// The previous pass left the link in sync (or knowingly drifted or paused) for this
    /// generation, without failures or an interrupted create: nothing is pending.
    fn at_rest(&self) -> bool {
        let settled = |type_: &str, also: &[&str]| {
            conditions::find(&self.old.conditions, type_).is_some_and(|c| {
                c.observed_generation == self.generation
                    && (c.status == "True" || also.contains(&c.reason.as_str()))
            })
        };
        self.old.observed_generation == self.generation
            && is_paused(self.link) == shows_paused(self.link)
            && self.old.failures.is_none()
            && self.old.link_id.is_some()
            && create_marker(self.link).is_none()
            && settled(READY, &[])
            && settled(SYNCED, &[reason::DRIFTED, reason::PAUSED])
    }

    /// The previous pass ended with this Synced reason for the same generation.
    fn previous_synced_reason(&self) -> Option<&str> {
        conditions::find(&self.old.conditions, SYNCED)
            .filter(|c| c.observed_generation == self.generation && c.status == "False")
            .map(|c| c.reason.as_str())
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        self.ctx
            .publish(self.link, type_, reason, reason, note)
            .await;
    }

    /// Publishes an Event only when the Synced/Ready reason is new, so repeated passes with
    /// the same outcome do not flood `kubectl describe`.
    async fn event_on_change(&self, type_: EventType, reason: &str, note: String) {
        let before = conditions::find(&self.old.conditions, SYNCED).map(|c| c.reason.as_str());
        let before_ready = conditions::find(&self.old.conditions, READY).map(|c| c.reason.as_str());
        if before != Some(reason) && before_ready != Some(reason) {
            self.event(type_, reason, note).await;
        }
    }

    /// Writes the status when it changed. `lastSyncTime` moves only together with a real
    /// change, so a pass on an in-sync link writes nothing.
    async fn write_status(mut self) -> Result<(), Error> {
        if self.generation_observed {
            self.new.observed_generation = self.generation;
        }
        let mut old_cmp = self.old.clone();
        old_cmp.last_sync_time = None;
        let mut new_cmp = self.new.clone();
        new_cmp.last_sync_time = None;
        let ready = conditions::find(&self.new.conditions, READY).map(|c| c.status.clone());
        self.ctx
            .metrics
            .set_link_ready(&self.key(), Some(ready.as_deref().unwrap_or("Unknown")));
        if old_cmp == new_cmp {
            return Ok(());
        }
        self.new.last_sync_time = Some(self.now.0.to_string());
        apply_link_status(
            &self.ctx.seen_versions,
            &self.api,
            &self.link.name_any(),
            &self.old,
            &self.new,
        )
        .await
    }
}

/// Applies what changed between `old` and `new`: the reconciler's part of the status as
/// `wecom-acq-link`, the customers and statistics as `wecom-acq-link-facts`, each only when
/// it differs, so a customer count a callback bumped is never written back from a stale
/// cache by a pass that did not count the customers itself.
async fn apply_link_status(
    seen: &SeenVersions,
    api: &Api<AcquisitionLink>,
    name: &str,
    old: &AcquisitionLinkStatus,
    new: &AcquisitionLinkStatus,
) -> Result<(), Error> {
    let (old_main, old_facts) = status_apply::link_parts(old);
    let (new_main, new_facts) = status_apply::link_parts(new);
    let parts = [
        (status_apply::LINK_MANAGER, old_main, new_main),
        (status_apply::LINK_FACTS_MANAGER, old_facts, new_facts),
    ];
    for (manager, old, new) in parts {
        if new != old {
            let written = status_apply::apply_status(api, name, manager, new, None).await?;
            note_version(seen, &written);
        }
    }
    Ok(())
}

/// Notes the version a write of this pass produced: a pass that the write's own watch
/// event queued, and that finds the older version in the cache, reads the object again
/// instead of taking its own half-written state for an interrupted create.
fn wrote(ctx: &Context, written: &AcquisitionLink) {
    note_version(&ctx.seen_versions, written);
}

fn note_version(seen: &SeenVersions, written: &AcquisitionLink) {
    if let (Some(uid), Some(version)) = (
        written.metadata.uid.as_deref(),
        written.metadata.resource_version.as_deref(),
    ) {
        seen.note(uid, version);
    }
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
    link.status
        .as_ref()
        .and_then(|s| s.link_id.clone())
        .filter(|id| !id.is_empty())
        .or_else(|| link.annotations().get(LINK_ID_ANNOTATION).cloned())
        .filter(|id| !id.is_empty())
        .or_else(|| link.spec.link_id.clone())
        .filter(|id| !id.is_empty())
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
        holds: link.status.as_ref().and_then(|s| s.link_id.as_deref())
            == known_link_id(link).as_deref(),
        created: link.metadata.creation_timestamp.as_ref().map(|t| t.0),
    }
}

/// The other object that keeps the link this one names, if one does (see
/// [`decide::owner_of`] for who comes first). Built from the controller's link cache, so it
/// costs no call.
fn link_owned_by_another(link: &AcquisitionLink, ctx: &Context) -> Option<(String, String)> {
    let link_id = known_link_id(link)?;
    let mut claims: Vec<decide::Claim> = ctx
        .link_store
        .state()
        .iter()
        .filter(|other| other.metadata.uid != link.metadata.uid)
        .filter(|other| known_link_id(other).as_deref() == Some(link_id.as_str()))
        .map(|other| claim_of(other))
        .collect();
    claims.push(claim_of(link));
    let owner = decide::owner_of(&claims)?;
    (owner.object != object_key(link)).then(|| (link_id, owner.object.clone()))
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

enum Observed {
    Exists(RemoteLink),
    Gone,
}

/// A pass at rest may poll this much before its due time (requeues are not exact).
const POLL_EARLY_MS: u64 = 500;

/// A2 by id. An error on A2 for a known id is only a hint: the link is gone only when A1
/// no longer lists it (WECOM-NOTES: the code for a deleted link is undocumented). The A1
/// listing is the app's shared one (see [`super::traffic::Sweeps`]), taken after this A2
/// was sent: links whose A2 failed meanwhile share it, and it cannot predate a deletion
/// the A2 saw.
async fn observe(
    ctx: &Context,
    link: &AcquisitionLink,
    client: &WeComClient,
    link_id: &str,
) -> Result<Observed, WeComError> {
    let asked = tokio::time::Instant::now();
    match client.get_link(link_id).await {
        Ok(remote) => Ok(Observed::Exists(remote)),
        Err(err) if err.class() == ErrorClass::Retryable => Err(err),
        Err(err) => {
            let listing = ctx.sweeps.listing(&app_key(link), client, asked).await?;
            if listing.ids.contains(link_id) {
                Err(err)
            } else {
                Ok(Observed::Gone)
            }
        }
    }
}

async fn apply(link: &AcquisitionLink, ctx: &Context) -> Result<Action, Error> {
    let mut pass = Pass::new(link, ctx);
    let forced = pass.new.last_handled_reconcile_at.is_some()
        && pass.new.last_handled_reconcile_at != pass.old.last_handled_reconcile_at;

    // Validate: the CEL rules already refuse most of this at admission; the link-id rules
    // also cover what CEL cannot see (a linkId added to a link created here) and API
    // servers without CEL.
    let held = decide::Held {
        link_id: pass
            .old
            .link_id
            .as_deref()
            .or_else(|| {
                link.annotations()
                    .get(LINK_ID_ANNOTATION)
                    .map(String::as_str)
            })
            .filter(|id| !id.is_empty()),
        origin: pass.old.origin,
    };
    let changed_link_id = decide::check_link_id(link.spec.link_id.as_deref(), held).err();
    if let Some(message) = changed_link_id.or_else(|| plan::validate(&link.spec).err()) {
        pass.set(READY, false, reason::INVALID_SPEC, message.clone());
        pass.set(SYNCED, false, reason::INVALID_SPEC, message.clone());
        pass.event_on_change(EventType::Warning, reason::INVALID_SPEC, message)
            .await;
        pass.write_status().await?;
        return Ok(Action::await_change());
    }

    if let Some((link_id, owner)) = link_owned_by_another(link, ctx) {
        return link_id_conflict(pass, &link_id, &owner).await;
    }

    // Resolve the app (same namespace only: no cross-namespace secrets).
    let namespace = link.namespace().unwrap_or_default();
    let app_name = &link.spec.app_ref.name;
    let app = match ctx.app(&namespace, app_name) {
        Some(app) => app,
        None => {
            let message = AppError::NotFound {
                namespace: namespace.clone(),
                name: app_name.clone(),
            }
            .to_string();
            return app_not_ready(pass, AppTrouble::Unreachable, message, APP_WAIT).await;
        }
    };
    let client = match ctx.apps.client_for(&app).await {
        Ok(client) => client,
        Err(err) => {
            return app_not_ready(pass, AppTrouble::Unreachable, err.to_string(), APP_WAIT).await;
        }
    };
    // The app's WeCom calls are refused (permission, trusted IPs, credentials, a bad
    // server): the link's would be too. It waits without calling WeCom; the app turning
    // Ready triggers it.
    if let Some(ready) = app
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, READY))
        .filter(|c| c.status == "False" && super::app::is_app_level_reason(&c.reason))
    {
        let message = format!(
            "WeComApp {app_name} is not ready ({}): {}",
            ready.reason, ready.message
        );
        return app_not_ready(pass, AppTrouble::Refused, message, ctx.cadence.resync).await;
    }
    pass.new.quota = app
        .status
        .as_ref()
        .and_then(|s| s.quota.as_ref())
        .map(|q| QuotaSummary {
            balance: q.balance,
            total: q.total,
        });

    // A terminal outcome for this generation waits for a change instead of hammering WeCom.
    if !forced
        && let Some(previous) = pass.previous_synced_reason()
        && is_terminal_reason(previous)
    {
        pass.write_status().await?;
        return Ok(at_rest(ctx, link));
    }

    // At rest, a pass asks WeCom only when the link's poll is due: passes that come
    // earlier (a restart's first pass, an app change) wait for the link's phase.
    if scheduler::current_priority() == Priority::Poll && pass.at_rest() {
        let now = unix_now_ms();
        let due = poll_due(ctx, link, now);
        if due > now + POLL_EARLY_MS {
            pass.write_status().await?;
            return Ok(Action::requeue(Duration::from_millis(due - now)));
        }
    }

    let result = match known_link_id(link) {
        Some(link_id) => match observe(ctx, link, &client, &link_id).await {
            Ok(Observed::Exists(remote)) => {
                polled(ctx, link, LastPoll::At(unix_now_ms()));
                sync_existing(&mut pass, &client, remote).await
            }
            Ok(Observed::Gone) => remote_deleted(&mut pass, &client, &app, &link_id).await,
            Err(err) => Err(Error::WeCom(err)),
        },
        None => create(&mut pass, &client, &app, None).await,
    };
    match result {
        Ok(action) => {
            pass.new.failures = None;
            pass.write_status().await?;
            Ok(action)
        }
        // Not sent (the corp's budget has no room for this class now, or WeCom's rate
        // limit closed the API): nothing was learnt or done; come back when it says.
        Err(Error::WeCom(err)) if err.retry_after().is_some() => {
            let after = err.retry_after().unwrap_or_default();
            tracing::debug!(link = %pass.key(), %err, "WeCom request deferred");
            Ok(Action::requeue(after))
        }
        // An error about the app, not this link (permission, trusted IPs, credentials, a
        // bad server): no terminal outcome that only a change of the link would clear. The
        // link asks again with a back-off from the resync interval, so fixing it in WeCom
        // heals the link by itself.
        Err(Error::WeCom(err)) if super::app::app_level_reason(&err).is_some() => {
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
            let delay = super::app::app_recheck_delay(ctx.cadence.resync, failures);
            app_not_ready(pass, AppTrouble::Refused, message, delay).await
        }
        Err(Error::WeCom(err)) => wecom_failure(pass, err).await,
        Err(other) => Err(other),
    }
}

/// Another object keeps the link: report it, call nothing. The pass comes back at the resync
/// interval, so the object takes the link over once the other one is gone.
async fn link_id_conflict(mut pass: Pass<'_>, link_id: &str, owner: &str) -> Result<Action, Error> {
    let message = format!(
        "link {link_id} is managed by AcquisitionLink {owner}, which claimed it first; this object makes no WeCom call \
         and deleting it leaves the link. Point spec.linkId at another link, or delete one of the two objects"
    );
    pass.set(READY, false, reason::LINK_ID_CONFLICT, message.clone());
    pass.set(SYNCED, false, reason::LINK_ID_CONFLICT, message.clone());
    pass.event_on_change(EventType::Warning, reason::LINK_ID_CONFLICT, message)
        .await;
    let (ctx, link) = (pass.ctx, pass.link);
    pass.write_status().await?;
    Ok(at_rest(ctx, link))
}

/// How often a link whose app is missing or has no usable Secret looks again.
const APP_WAIT: Duration = Duration::from_secs(60);

/// Why a link waits for its app.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AppTrouble {
    /// The app or its Secret is missing: nothing is known against the link, which keeps
    /// working in WeCom, so an existing link stays Ready; Synced says it is not managed.
    Unreachable,
    /// WeCom refuses the app's calls (permission, trusted IPs, credentials, a bad server):
    /// the link is not Ready either.
    Refused,
}

/// The link cannot be served because of its app: `Synced=False` (and `Ready=False` when
/// refused, or no link exists yet), reason `AppNotReady`, saying why; the next pass after
/// `requeue` (or when the app turns Ready).
async fn app_not_ready(
    mut pass: Pass<'_>,
    trouble: AppTrouble,
    message: String,
    requeue: Duration,
) -> Result<Action, Error> {
    if trouble == AppTrouble::Refused || pass.new.link_id.is_none() {
        pass.set(READY, false, reason::APP_NOT_READY, message.clone());
    }
    pass.set(SYNCED, false, reason::APP_NOT_READY, message.clone());
    pass.event_on_change(EventType::Warning, reason::APP_NOT_READY, message)
        .await;
    pass.write_status().await?;
    Ok(Action::requeue(requeue))
}

/// Classifies a WeCom failure into the status and the next attempt.
async fn wecom_failure(mut pass: Pass<'_>, err: WeComError) -> Result<Action, Error> {
    match err.class() {
        ErrorClass::Retryable | ErrorClass::TokenInvalid => {
            let failures = pass.old.failures.unwrap_or(0).saturating_add(1);
            pass.new.failures = Some(failures);
            pass.generation_observed = pass.old.observed_generation == pass.generation;
            let message = format!("{}; retrying with back-off", err.summary());
            // A Ready=False left by an older generation (say InvalidSpec) no longer
            // describes this one: say that WeCom has yet to answer for it.
            let stale_not_ready = conditions::find(&pass.old.conditions, READY)
                .is_some_and(|c| c.status == "False" && c.observed_generation != pass.generation);
            if stale_not_ready {
                pass.set(READY, false, reason::RETRYABLE_ERROR, message.clone());
            }
            pass.set(SYNCED, false, reason::RETRYABLE_ERROR, message);
            let (ctx, link) = (pass.ctx, pass.link);
            pass.write_status().await?;
            let delay = plan::retry_delay(failures, jitter());
            ctx.held_off.hold(&object_key(link), cause_of(link), delay);
            Ok(Action::requeue(delay))
        }
        ErrorClass::Terminal => {
            let reason = terminal_reason(&err);
            let message = stable_message(&err);
            pass.new.failures = None;
            pass.set(READY, false, reason, message.clone());
            pass.set(SYNCED, false, reason, message);
            pass.event_on_change(
                EventType::Warning,
                reason,
                crate::wecom::redact::scrub(&err.to_string()),
            )
            .await;
            let (ctx, link) = (pass.ctx, pass.link);
            pass.write_status().await?;
            Ok(at_rest(ctx, link))
        }
    }
}

/// The link exists: fix drift with one A4 carrying the whole desired link, then report.
async fn sync_existing(
    pass: &mut Pass<'_>,
    client: &WeComClient,
    remote: RemoteLink,
) -> Result<Action, Error> {
    let link = pass.link;
    let desired = DesiredLink::from_spec(&link.spec);
    let changes = plan::diff(&desired, &remote);
    record_identity(pass, &remote.link_id, &remote.url).await?;
    if pass.new.origin.is_none() {
        if link.spec.link_id.is_some() {
            pass.new.origin = Some(LinkOrigin::Adopted);
            let (reason, verb) = if link.spec.management_policy == ManagementPolicy::Observe {
                ("Observing", "observing (never writing)")
            } else {
                ("Adopted", "adopted")
            };
            pass.event(
                EventType::Normal,
                reason,
                format!(
                    "{verb} existing link {} ({}) named by spec.linkId",
                    remote.link_id, remote.url
                ),
            )
            .await;
        } else {
            pass.new.origin = Some(LinkOrigin::Created);
        }
    }
    let listed = changes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let observed = link.spec.management_policy == ManagementPolicy::Observe;
    match decide::on_present(
        link.spec.management_policy,
        is_paused(link),
        !changes.is_empty(),
    ) {
        OnPresent::InSync => {}
        OnPresent::ReportDrift => return report_drift(pass, client, &remote, &listed).await,
        OnPresent::Paused => {
            pass.set(
                READY,
                false,
                reason::PAUSED,
                format!("link differs from the spec ({listed}) and is paused"),
            );
            pass.set(SYNCED, false, reason::PAUSED, paused_message());
            return Ok(at_rest(pass.ctx, pass.link));
        }
        OnPresent::Correct => {
            client
                .update_link(&desired.update_request(&remote.link_id))
                .await?;
            let spec_changed = pass.old.observed_generation != pass.generation;
            let (reason, verb) = if spec_changed {
                ("Updated", "updated to the new spec")
            } else {
                ("DriftCorrected", "drifted in WeCom and was corrected")
            };
            pass.event(
                EventType::Normal,
                reason,
                format!("link {} {verb}: {listed}", remote.link_id),
            )
            .await;
        }
    }
    pass.set(
        READY,
        true,
        reason::AVAILABLE,
        format!("link {} matches the spec", remote.link_id),
    );
    if is_paused(link) && !observed {
        pass.set(SYNCED, false, reason::PAUSED, paused_message());
    } else {
        pass.set(SYNCED, true, reason::IN_SYNC, "the last pass succeeded");
    }
    refresh_slow_facts(pass, client, &remote.link_id).await;
    Ok(at_rest(pass.ctx, pass.link))
}

fn paused_message() -> String {
    format!("annotation {PAUSED_ANNOTATION} is \"true\": no writes to WeCom")
}

/// An observed link differs from the spec: say how, change nothing in WeCom. It is still
/// Ready (it exists and its facts are reported).
async fn report_drift(
    pass: &mut Pass<'_>,
    client: &WeComClient,
    remote: &RemoteLink,
    listed: &str,
) -> Result<Action, Error> {
    let message = format!(
        "observed link {} differs from the spec ({listed}); managementPolicy is Observe, so it is reported, not corrected",
        remote.link_id
    );
    pass.set(
        READY,
        true,
        reason::AVAILABLE,
        format!("link {} is observed", remote.link_id),
    );
    pass.set(SYNCED, false, reason::DRIFTED, message.clone());
    pass.event_on_change(EventType::Normal, reason::DRIFTED, message)
        .await;
    refresh_slow_facts(pass, client, &remote.link_id).await;
    Ok(at_rest(pass.ctx, pass.link))
}

/// Puts the id and URLs in status and makes sure the id annotation is there.
async fn record_identity(pass: &mut Pass<'_>, link_id: &str, url: &str) -> Result<(), Error> {
    pass.new.link_id = Some(link_id.to_string());
    pass.new.url = Some(url.to_string());
    pass.new.channel_urls = plan::channel_urls(url, &pass.link.spec.channels);
    let annotations = pass.link.annotations();
    if annotations.get(LINK_ID_ANNOTATION).map(String::as_str) != Some(link_id)
        || annotations.contains_key(CREATE_PENDING_ANNOTATION)
    {
        let patch = json!({ "metadata": { "annotations": {
            LINK_ID_ANNOTATION: link_id,
            CREATE_PENDING_ANNOTATION: Value::Null,
        }}});
        let written = pass
            .api
            .patch(
                &pass.link.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        wrote(pass.ctx, &written);
    }
    Ok(())
}

/// Customers (A6) and statistics (A7) on their own cadence.
///
/// These are reports about the link, not the link: a failure to read them never fails the
/// pass (the link stays Ready and in sync, the previous values stay in status). It is logged,
/// published as one Warning Event per run of failures, and retried at the next pass when
/// retryable, at the fact's own cadence otherwise.
async fn refresh_slow_facts(pass: &mut Pass<'_>, client: &WeComClient, link_id: &str) {
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
    let now = unix_now_ms();
    let hash = link_hash(pass.link);
    // Unknown due times (a restart): a fact never read is due now; one in status waits for
    // the link's phase, so a restart sends no burst of A6 and A7.
    let first_due = |known: bool, every: Duration| {
        if known {
            pacing::next_poll_ms(LastPoll::Unknown { now }, hash, every)
        } else {
            now
        }
    };
    let next_due = |every: Duration| pacing::next_poll_ms(LastPoll::At(now), hash, every);
    let customers_due = *facts
        .customers_due
        .get_or_insert_with(|| first_due(pass.new.customers.is_some(), ctx.cadence.customers));
    if customers_due <= now + POLL_EARLY_MS {
        let counted = with_priority(
            Priority::SlowFact,
            count_customers(client, link_id, &pass.link.spec.channels),
        )
        .await;
        match counted {
            Ok((mut count, counted)) => {
                facts.counted = std::sync::Arc::new(counted);
                // A6 rarely says when customers were added: keep what callbacks reported.
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
                facts.customers_due = Some(next_due(ctx.cadence.customers));
                facts.customers_failing = false;
            }
            Err(err) if err.retry_after().is_some() => {
                facts.customers_due = Some(now + retry_after_ms(&err));
            }
            Err(err) => {
                if !err.is_retryable() {
                    facts.customers_due = Some(next_due(ctx.cadence.customers));
                }
                if !std::mem::replace(&mut facts.customers_failing, true) {
                    slow_fact_failed(pass, "CustomerCountFailed", "customers", &err).await;
                }
            }
        }
    }
    let statistics_due = *facts
        .statistics_due
        .get_or_insert_with(|| first_due(pass.new.statistics.is_some(), ctx.cadence.statistics));
    if statistics_due <= now + POLL_EARLY_MS {
        let window = plan::stats_window(unix_now(), ctx.cadence.statistics_days);
        let read = with_priority(
            Priority::SlowFact,
            client.statistic(link_id, window.start_time, window.end_time),
        )
        .await;
        match read {
            Ok(stats) => {
                pass.new.statistics = Some(LinkStatistics {
                    window_days: window.days,
                    click_customers: stats.click_link_customer_cnt,
                    new_customers: stats.new_customer_cnt,
                    from: window.from,
                    to: window.to,
                });
                facts.statistics_due = Some(next_due(ctx.cadence.statistics));
                facts.statistics_failing = false;
            }
            Err(err) if err.retry_after().is_some() => {
                facts.statistics_due = Some(now + retry_after_ms(&err));
            }
            Err(err) => {
                if !err.is_retryable() {
                    facts.statistics_due = Some(next_due(ctx.cadence.statistics));
                }
                if !std::mem::replace(&mut facts.statistics_failing, true) {
                    slow_fact_failed(pass, "StatisticsFailed", "statistics", &err).await;
                }
            }
        }
    }
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

fn retry_after_ms(err: &WeComError) -> u64 {
    err.retry_after()
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// All customers of a link (A6, every page), counted per customer_channel, and who they
/// are (see [`SlowFacts::counted`]).
async fn count_customers(
    client: &WeComClient,
    link_id: &str,
    channels: &[String],
) -> Result<(CustomerCount, std::collections::HashSet<u64>), WeComError> {
    let mut count = CustomerCount::default();
    let mut seen = std::collections::HashSet::new();
    let mut customers = std::pin::pin!(client.customers(link_id));
    while let Some(customer) = customers.try_next().await? {
        count.total += 1;
        seen.insert(super::context::customer_key(
            &customer.external_userid,
            &customer.userid,
        ));
        let channel = crate::metrics::bounded_channel(channels, &customer.state);
        *count.by_channel.entry(channel.to_string()).or_default() += 1;
        if let Some(added) = customer.add_time {
            count.note_added_at(added);
        }
    }
    Ok((count, seen))
}

async fn slow_fact_failed(pass: &Pass<'_>, reason: &str, what: &str, err: &WeComError) {
    let message = crate::wecom::redact::scrub(&err.to_string());
    tracing::warn!(link = %pass.key(), error = %message, "could not refresh the link's {what}");
    pass.event(
        EventType::Warning,
        reason,
        format!("could not refresh {what}; the last values stay in status: {message}"),
    )
    .await;
}

/// WeCom no longer has the link: recreate it or mark it orphaned, per spec.
async fn remote_deleted(
    pass: &mut Pass<'_>,
    client: &WeComClient,
    app: &WeComApp,
    link_id: &str,
) -> Result<Action, Error> {
    let link = pass.link;
    if link.spec.link_id.is_some() && pass.old.origin.is_none() {
        // Never adopted: nothing was deleted, the id is not this corp's (a typo, or a link
        // of another app's corp). Checked again on every pass, in case WeCom was wrong.
        let message = format!(
            "spec.linkId {link_id} is not a link of WeComApp {} (WeCom does not list it): check the id and spec.appRef. An adopted link is never created",
            link.spec.app_ref.name
        );
        pass.set(READY, false, reason::LINK_NOT_FOUND, message.clone());
        pass.set(SYNCED, false, reason::LINK_NOT_FOUND, message.clone());
        pass.event_on_change(EventType::Warning, reason::LINK_NOT_FOUND, message)
            .await;
        return Ok(at_rest(pass.ctx, pass.link));
    }
    let adopted = link.spec.link_id.is_some() || pass.old.origin == Some(LinkOrigin::Adopted);
    let old_url = pass.old.url.clone().unwrap_or_default();
    let policy = link.spec.management_policy;
    if !decide::recreate_when_gone(policy, adopted, link.spec.on_remote_delete) {
        let why = if policy == ManagementPolicy::Observe {
            "managementPolicy is Observe, so it is not recreated"
        } else if adopted {
            "the link was adopted (spec.linkId), so it is not recreated"
        } else {
            "onRemoteDelete is Orphan"
        };
        let message = format!(
            "link {link_id} was deleted in WeCom; {why}. Delete this object, or set onRemoteDelete: Recreate"
        );
        pass.set(READY, false, reason::REMOTE_DELETED, message.clone());
        pass.set(SYNCED, false, reason::REMOTE_DELETED, message.clone());
        pass.event_on_change(EventType::Warning, reason::REMOTE_DELETED, message)
            .await;
        return Ok(at_rest(pass.ctx, pass.link));
    }
    // Status still naming the dead link means this pass is the first to see it gone. When the
    // recreate has to wait (paused, quota exhausted), the id stays in the annotation and
    // later passes find it gone again: they have nothing new to report.
    let first_seen = pass.old.link_id.as_deref() == Some(link_id) || pass.old.conditions.is_empty();
    if first_seen {
        pass.event(
            EventType::Warning,
            reason::REMOTE_DELETED,
            format!("link {link_id} ({old_url}) was deleted in WeCom; recreating it (onRemoteDelete: Recreate)"),
        )
        .await;
    }
    pass.new.link_id = None;
    pass.new.url = None;
    pass.new.channel_urls.clear();
    pass.new.customers = None;
    pass.new.statistics = None;
    pass.new.origin = None;
    create(pass, client, app, Some((link_id.to_string(), old_url))).await
}

/// Links that an interrupted create may have made: same name and range, created after the
/// marker (with a minute of clock slack), not claimed by another AcquisitionLink.
async fn find_orphans(
    pass: &Pass<'_>,
    client: &WeComClient,
    marker: &CreateMarker,
) -> Result<Vec<RemoteLink>, Error> {
    let desired = DesiredLink::from_spec(&pass.link.spec);
    let me = pass.link.metadata.uid.clone();
    let claimed: BTreeSet<String> = pass
        .ctx
        .link_store
        .state()
        .iter()
        .filter(|other| other.metadata.uid != me)
        .filter_map(|other| known_link_id(other))
        .collect();
    let ids: Vec<String> = client.list_links().try_collect().await?;
    let mut found = Vec::new();
    for id in ids.into_iter().filter(|id| !claimed.contains(id)) {
        match client.get_link(&id).await {
            Ok(remote) if marker.matches(&remote, &desired) => found.push(remote),
            Ok(_) => {}
            Err(err) if err.is_retryable() => return Err(err.into()),
            Err(_) => {}
        }
    }
    Ok(found)
}

/// Rewrites a marker whose time is unknown with this pass's time, keeping what it says of
/// the request, and waits the whole grace from now before anything is created.
async fn restart_marker_clock(pass: &mut Pass<'_>, marker: &CreateMarker) -> Result<Action, Error> {
    let restarted = CreateMarker {
        at: Some(unix_now()),
        ..marker.clone()
    };
    let patch = json!({ "metadata": {
        "resourceVersion": pass.link.resource_version(),
        "annotations": { CREATE_PENDING_ANNOTATION: restarted.to_annotation() }
    }});
    let written = pass
        .api
        .patch(
            &pass.link.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    wrote(pass.ctx, &written);
    pass.checking_interrupted_create();
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// No link yet: check quota, guard with the marker, A3, persist the id at once.
async fn create(
    pass: &mut Pass<'_>,
    client: &WeComClient,
    app: &WeComApp,
    replacing: Option<(String, String)>,
) -> Result<Action, Error> {
    let link = pass.link;
    let ctx = pass.ctx;
    if is_paused(link) {
        pass.set(
            READY,
            false,
            reason::PAUSED,
            "no link exists yet and the object is paused",
        );
        pass.set(SYNCED, false, reason::PAUSED, paused_message());
        return Ok(at_rest(ctx, link));
    }
    // The QuotaExhausted condition is the one signal: the app reconciler sets it from A8
    // (balance 0) and the callback worker from balance_exhausted / balance_increased, so a
    // balance_increased callback unblocks creation at once, before the next A8.
    let exhausted = app
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, conditions::QUOTA_EXHAUSTED));
    if exhausted {
        let message = format!(
            "the acquisition quota of WeComApp {} is exhausted; the link is created when quota returns",
            app.name_any()
        );
        pass.set(READY, false, reason::QUOTA_EXHAUSTED, message.clone());
        pass.set(SYNCED, false, reason::QUOTA_EXHAUSTED, message.clone());
        pass.event_on_change(EventType::Warning, reason::QUOTA_EXHAUSTED, message)
            .await;
        return Ok(Action::requeue(ctx.cadence.quota));
    }

    if let Some(marker) = create_marker(link) {
        let Some(since) = marker.at else {
            // A marker without a readable time: how long ago A3 may have run is unknown,
            // so the grace starts now (the marker is rewritten with this pass's time).
            return restart_marker_clock(pass, &marker).await;
        };
        let found = find_orphans(pass, client, &marker).await?;
        match found.as_slice() {
            [one] => {
                let remote = one.clone();
                record_identity(pass, &remote.link_id, &remote.url).await?;
                pass.new.origin = Some(LinkOrigin::Created);
                pass.event(
                    EventType::Normal,
                    "Adopted",
                    format!(
                        "found link {} made by an interrupted create and adopted it",
                        remote.link_id
                    ),
                )
                .await;
                return sync_existing(pass, client, remote).await;
            }
            [] => {
                let age = unix_now() - since;
                // The interrupted A3 was sent within the send window of the marker and may
                // have run until the request timeout; A1 may lag behind it by the grace.
                let grace = (CREATE_SEND_WINDOW + WECOM_REQUEST_TIMEOUT + ctx.cadence.create_grace)
                    .as_secs() as i64;
                if age < grace {
                    pass.checking_interrupted_create();
                    return Ok(Action::requeue(Duration::from_secs(
                        (grace - age).max(1) as u64
                    )));
                }
            }
            many => {
                let ids: Vec<&str> = many.iter().map(|l| l.link_id.as_str()).collect();
                let message = format!(
                    "an interrupted create left several candidate links ({}); delete the extra ones in WeCom, set spec.linkId to the one to keep, or remove annotation {CREATE_PENDING_ANNOTATION} to create a new one; nothing is written to WeCom meanwhile",
                    ids.join(", ")
                );
                pass.set(READY, false, reason::CREATE_INCOMPLETE, message.clone());
                pass.set(SYNCED, false, reason::CREATE_INCOMPLETE, message.clone());
                pass.event_on_change(EventType::Warning, reason::CREATE_INCOMPLETE, message)
                    .await;
                return Ok(at_rest(ctx, link));
            }
        }
    }

    // No marker for an A3 the budget would not send now: the pass comes back when it has
    // room (a deferral), with nothing written.
    client.would_admit(WeComApi::CreateLink)?;

    // The marker, with the resourceVersion we read: if someone else wrote the object since,
    // this is a 409 and nothing is created in this pass. A3 must leave within the send
    // window of the marker's time, or not at all.
    let desired = DesiredLink::from_spec(&link.spec);
    let send_by = tokio::time::Instant::now() + CREATE_SEND_WINDOW;
    // The finalizer comes with the marker when the link has none yet (see
    // `finalizer_comes_with_the_marker`): it is on the object before A3 is sent.
    let mut finalizers = link.finalizers().to_vec();
    if !finalizers.iter().any(|f| f == LINK_FINALIZER) {
        finalizers.push(LINK_FINALIZER.to_string());
    }
    let marker = json!({ "metadata": {
        "resourceVersion": link.resource_version(),
        "finalizers": finalizers,
        "annotations": {
            CREATE_PENDING_ANNOTATION: CreateMarker::for_request(unix_now(), &desired).to_annotation(),
            LINK_ID_ANNOTATION: Value::Null,
        }
    }});
    match pass
        .api
        .patch(
            &link.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&marker),
        )
        .await
    {
        Ok(written) => wrote(ctx, &written),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        Err(err) => return Err(err.into()),
    }

    let created = match client
        .create_link_sent_by(&desired.create_request(), send_by)
        .await
    {
        Ok(created) => created,
        Err(err) => {
            // A definitive WeCom answer, or a request never sent, means no link was made:
            // drop the marker. A timeout or a lost connection may have made one: keep it,
            // the next pass looks.
            if err.certainly_not_acted_on() {
                let clear = json!({ "metadata": { "annotations": { CREATE_PENDING_ANNOTATION: Value::Null } } });
                if let Ok(written) = pass
                    .api
                    .patch(
                        &link.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&clear),
                    )
                    .await
                {
                    wrote(ctx, &written);
                }
            }
            return Err(err.into());
        }
    };

    // Persist the id at once, retrying within the pass: losing it would orphan the link.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match record_identity(pass, &created.link_id, &created.url).await {
            Ok(()) => break,
            Err(err) if attempt < 4 => {
                tracing::warn!(%err, link_id = %created.link_id, "could not record the new link id yet; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(err) => return Err(err),
        }
    }
    pass.new.origin = Some(LinkOrigin::Created);
    pass.new.failures = None;
    match replacing {
        Some((old_id, old_url)) => {
            let from = if old_url.is_empty() {
                String::new()
            } else {
                format!(" from {old_url}")
            };
            pass.event(
                EventType::Warning,
                "Recreated",
                format!(
                    "link {old_id} was replaced by {}: the URL changed{from} to {}; shared QR codes and URLs must be updated",
                    created.link_id, created.url
                ),
            )
            .await
        }
        None => {
            pass.event(
                EventType::Normal,
                "Created",
                format!("created link {} ({})", created.link_id, created.url),
            )
            .await
        }
    }
    pass.set(
        READY,
        true,
        reason::AVAILABLE,
        format!("link {} matches the spec", created.link_id),
    );
    pass.set(SYNCED, true, reason::IN_SYNC, "the last pass succeeded");
    // A link just made has no customers and no clicks: known without asking WeCom.
    let window = plan::stats_window(unix_now(), ctx.cadence.statistics_days);
    pass.new.customers = Some(CustomerCount {
        counted_at: Some(pass.now.0.to_string()),
        ..CustomerCount::default()
    });
    pass.new.statistics = Some(LinkStatistics {
        window_days: window.days,
        click_customers: 0,
        new_customers: 0,
        from: window.from,
        to: window.to,
    });
    // Publish the new link in status right away, before the slower A6/A7. The annotation
    // already holds the id, so a failure here loses nothing: the final write retries it.
    pass.new.observed_generation = pass.generation;
    pass.new.last_sync_time = Some(pass.now.0.to_string());
    match apply_link_status(
        &ctx.seen_versions,
        &pass.api,
        &link.name_any(),
        &pass.old,
        &pass.new,
    )
    .await
    {
        Ok(_) => pass.old = pass.new.clone(),
        Err(err) => {
            tracing::warn!(%err, link = %pass.key(), "could not write the new link id to status yet")
        }
    }
    // A link just made has no customers and no statistics, and WeCom has nothing new to
    // say about it: no A2, A6 or A7 before their intervals have passed.
    let now = unix_now_ms();
    polled(ctx, link, LastPoll::Created(now));
    let hash = link_hash(link);
    let facts = SlowFacts {
        link_id: created.link_id.clone(),
        customers_due: Some(pacing::next_poll_ms(
            LastPoll::Created(now),
            hash,
            ctx.cadence.customers,
        )),
        statistics_due: Some(pacing::next_poll_ms(
            LastPoll::Created(now),
            hash,
            ctx.cadence.statistics,
        )),
        ..Default::default()
    };
    if let Ok(mut map) = ctx.slow_facts.lock() {
        map.insert(pass.key(), facts);
    }
    let (namespace, name) = (link.namespace().unwrap_or_default(), link.name_any());
    ctx.metrics.set_link_facts(
        &namespace,
        &name,
        &created.link_id,
        pass.new.customers.as_ref(),
        pass.new.statistics.as_ref(),
    );
    Ok(at_rest(ctx, link))
}

/// Deletion: A5 for `Delete` (a link already gone is success), nothing for `Orphan`.
async fn cleanup(link: &AcquisitionLink, ctx: &Context) -> Result<Action, Error> {
    let result = cleanup_remote(link, ctx).await;
    if let Err(err) = &result {
        // Say in status why the object is still there (the finalizer stays until the
        // WeCom link is gone), so `kubectl describe` and ArgoCD show it, not only the logs.
        let message = match err {
            Error::WeCom(e) if e.errcode().is_some() => stable_message(e),
            other => crate::wecom::redact::scrub(&other.to_string()),
        };
        let mut pass = Pass::new(link, ctx);
        pass.set(
            READY,
            false,
            reason::DELETING,
            format!("deleting: {message}"),
        );
        pass.set(
            SYNCED,
            false,
            reason::DELETING,
            format!("deletion waits: {message}"),
        );
        if let Err(write) = pass.write_status().await {
            tracing::debug!(%write, "could not report the blocked deletion in status");
        }
        ctx.metrics.set_link_ready(
            &format!(
                "{}/{}",
                link.namespace().unwrap_or_default(),
                link.name_any()
            ),
            None,
        );
    }
    result
}

/// Deletes (or leaves) the WeCom link of an object being deleted.
async fn cleanup_remote(link: &AcquisitionLink, ctx: &Context) -> Result<Action, Error> {
    let namespace = link.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", link.name_any());
    ctx.metrics.set_link_ready(&key, None);
    ctx.metrics.forget_link(&namespace, &link.name_any());
    if let Ok(mut facts) = ctx.slow_facts.lock() {
        facts.remove(&key);
    }
    ctx.polls.forget(&key);
    if let Some((id, owner)) = link_owned_by_another(link, ctx) {
        ctx.publish(
            link,
            EventType::Normal,
            "Orphaned",
            "Delete",
            format!("left link {id} in WeCom: AcquisitionLink {owner} manages it"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let link_id = known_link_id(link);
    if !decide::delete_on_cleanup(link.spec.management_policy, link.spec.deletion_policy) {
        if let Some(id) = &link_id {
            let why = match link.spec.management_policy {
                ManagementPolicy::Observe => "managementPolicy: Observe",
                ManagementPolicy::Manage => "deletionPolicy: Orphan",
            };
            ctx.publish(
                link,
                EventType::Normal,
                "Orphaned",
                "Delete",
                format!("left link {id} in WeCom ({why})"),
            )
            .await;
        }
        return Ok(Action::await_change());
    }
    if link_id.is_none() && create_marker(link).is_none() {
        return Ok(Action::await_change());
    }
    // An app missing from a cache still being filled is not a deleted app.
    super::context::filled(&ctx.app_store).await;
    let Some(app) = ctx.app(&namespace, &link.spec.app_ref.name) else {
        ctx.publish(
            link,
            EventType::Warning,
            "Orphaned",
            "Delete",
            format!(
                "WeComApp {} is gone, so link {} cannot be deleted in WeCom; it is left as it is",
                link.spec.app_ref.name,
                link_id.as_deref().unwrap_or("(unknown)")
            ),
        )
        .await;
        return Ok(Action::await_change());
    };
    if is_paused(link) {
        return Err(Error::DeletionBlocked(
            key,
            format!(
                "remove annotation {PAUSED_ANNOTATION} to let the controller delete the WeCom link"
            ),
        ));
    }
    let client = cleanup_client(link, ctx, &app, link_id.as_deref()).await?;
    let targets: Vec<String> = match link_id {
        Some(id) => vec![id],
        None => {
            let pass = Pass::new(link, ctx);
            let marker = create_marker(link).unwrap_or_default();
            find_orphans(&pass, &client, &marker)
                .await?
                .into_iter()
                .map(|l| l.link_id)
                .collect()
        }
    };
    for id in targets {
        if ctx.deleted_links.contains(&id) {
            continue;
        }
        let asked = tokio::time::Instant::now();
        match client.delete_link(&id).await {
            Ok(()) => {}
            Err(err) if err.errcode().is_some() && err.class() == ErrorClass::Terminal => {
                let listing = ctx.sweeps.listing(&app_key(link), &client, asked).await?;
                if listing.ids.contains(&id) {
                    return Err(err.into());
                }
            }
            Err(err) => return Err(err.into()),
        }
        ctx.deleted_links.insert(&id);
        ctx.publish(
            link,
            EventType::Normal,
            "Deleted",
            "Delete",
            format!("deleted link {id} in WeCom"),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// The client that deletes a link in WeCom: the app's, or, when the app's Secret is
/// already gone, the one the controller still holds. Holding none blocks the deletion with
/// a message (status, Event and log line) that says what to do.
async fn cleanup_client(
    link: &AcquisitionLink,
    ctx: &Context,
    app: &WeComApp,
    link_id: Option<&str>,
) -> Result<WeComClient, Error> {
    let err = match ctx.apps.client_for(app).await {
        Ok(client) => return Ok(client),
        Err(err @ (AppError::SecretNotFound { .. } | AppError::SecretKeyMissing { .. })) => err,
        Err(err) => return Err(err.into()),
    };
    if let Some(client) = ctx.apps.held(app) {
        tracing::info!(link = %link.name_any(), %err, "deleting with the credentials the controller still holds");
        return Ok(client);
    }
    let message = format!(
        "{err}, and this controller holds no credentials of the app, so link {} cannot be \
         deleted in WeCom: restore the Secret, or remove finalizer {LINK_FINALIZER} from this \
         AcquisitionLink to leave the link in WeCom",
        link_id.unwrap_or("(being created)")
    );
    // A terminating namespace refuses Events: the log line and status still say it.
    tracing::warn!(link = %link.name_any(), namespace = ?link.namespace(), %message, "deletion blocked");
    ctx.publish(
        link,
        EventType::Warning,
        "DeletionBlocked",
        "Delete",
        message.clone(),
    )
    .await;
    let key = format!(
        "{}/{}",
        link.namespace().unwrap_or_default(),
        link.name_any()
    );
    Err(Error::DeletionBlocked(key, message))
}

#[cfg(test)]
mod tests {
    use super::*;

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
