//! One pass's view of an AcquisitionLink: the status it is building, and how that status
//! is written (server-side apply, one field manager per part).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{Api, ResourceExt};

use super::{create_marker, is_paused, now, object_key, report::Happened, shows_paused};
use crate::{
    api::{AcquisitionLink, AcquisitionLinkStatus, RECONCILE_REQUESTED_ANNOTATION},
    reconcile::{
        conditions::{self, READY, SYNCED, Stamped, reason},
        context::Context,
        status_apply,
        traffic::SeenVersions,
    },
};

use super::Error;

/// One pass's view of the object and the status it is building.
pub(super) struct Pass<'a> {
    pub(super) ctx: &'a Context,
    pub(super) link: &'a AcquisitionLink,
    pub(super) api: Api<AcquisitionLink>,
    pub(super) generation: Option<i64>,
    pub(super) old: AcquisitionLinkStatus,
    pub(super) new: AcquisitionLinkStatus,
    pub(super) now: Time,
    /// False when the pass failed before it could act on the current generation: then
    /// `status.observedGeneration` stays where it was, so nobody (ArgoCD included) reads
    /// an edit WeCom never received as applied.
    pub(super) generation_observed: bool,
}

impl<'a> Pass<'a> {
    pub(super) fn new(link: &'a AcquisitionLink, ctx: &'a Context) -> Self {
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

    pub(super) fn key(&self) -> String {
        object_key(self.link)
    }

    /// Ready=False while a pass waits to see whether an interrupted create made the link.
    pub(super) fn checking_interrupted_create(&mut self) {
        self.set(
            READY,
            false,
            reason::CREATING,
            "checking whether an interrupted create made the link",
        );
    }

    /// The previous pass left the link in sync (or knowingly drifted or paused) for this
    /// generation, without failures or an interrupted create: nothing is pending.
    pub(super) fn at_rest(&self) -> bool {
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
    pub(super) fn previous_synced_reason(&self) -> Option<&str> {
        conditions::find(&self.old.conditions, SYNCED)
            .filter(|c| c.observed_generation == self.generation && c.status == "False")
            .map(|c| c.reason.as_str())
    }

    /// Publishes what happened in this pass.
    pub(super) async fn tell(&self, happened: Happened<'_>) {
        super::report::tell(self.ctx, self.link, happened).await;
    }

    /// True when neither condition already carries `reason`: an outcome's Event goes out
    /// only then, so repeated passes with the same outcome do not flood `kubectl describe`.
    pub(super) fn reason_is_new(&self, reason: &str) -> bool {
        [SYNCED, READY].iter().all(|type_| {
            conditions::find(&self.old.conditions, type_).map(|c| c.reason.as_str()) != Some(reason)
        })
    }

    /// Writes the status when it changed. `lastSyncTime` moves only together with a real
    /// change, so a pass on an in-sync link writes nothing.
    pub(super) async fn write_status(mut self) -> Result<(), Error> {
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
pub(super) async fn apply_link_status(
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
pub(super) fn wrote(ctx: &Context, written: &AcquisitionLink) {
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

impl conditions::Stamped for Pass<'_> {
    fn parts(&mut self) -> (&mut Vec<Condition>, Option<i64>, &Time) {
        (&mut self.new.conditions, self.generation, &self.now)
    }
}
