//! What a link pass ends with, and what happened on the way, turned into status conditions
//! and Events: one function ([`report`]) writes an [`Outcome`] into the conditions and
//! publishes its Event, and every message the link reconciler publishes is composed here,
//! so the messages stay stable and consistent.

use kube::runtime::events::EventType;

use super::{pass::Pass, paused_message};
use crate::{
    api::{AcquisitionLink, CREATE_PENDING_ANNOTATION, LINK_FINALIZER},
    reconcile::{
        conditions::{READY, SYNCED, Stamped, reason},
        context::Context,
        decide::{Hold, LeftGone},
        notice::Notice,
    },
};

/// The action of the Events a pass publishes.
const RECONCILE: &str = "Reconcile";
/// The action of the Events a deletion publishes.
const DELETE: &str = "Delete";

/// One condition as the pass leaves it.
pub(super) struct Cond {
    status: bool,
    reason: &'static str,
    message: String,
}

impl Cond {
    fn new(status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Cond {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// How a pass ends: the Ready and Synced conditions it sets (`None` leaves one as it was)
/// and the Event that says so, published only when its reason is new to the object.
pub(super) struct Outcome {
    ready: Option<Cond>,
    synced: Option<Cond>,
    notice: Option<Notice>,
}

impl Outcome {
    /// Ready=False and Synced=False for one reason, and a Warning Event with the message.
    fn failed(reason: &'static str, message: String) -> Self {
        Outcome {
            ready: Some(Cond::new(false, reason, message.clone())),
            synced: Some(Cond::new(false, reason, message.clone())),
            notice: Some(Notice::warning(reason, RECONCILE, message)),
        }
    }

    pub(super) fn invalid_spec(message: String) -> Self {
        Self::failed(reason::INVALID_SPEC, message)
    }

    pub(super) fn link_id_conflict(link_id: &str, owner: &str) -> Self {
        Self::failed(
            reason::LINK_ID_CONFLICT,
            format!(
                "link {link_id} is managed by AcquisitionLink {owner}, which claimed it first; this object makes no WeCom call \
                 and deleting it leaves the link. Point spec.linkId at another link, or delete one of the two objects"
            ),
        )
    }

    /// The link waits for its app; Ready is set only when `not_ready` (WeCom refuses the
    /// app, or no link exists yet): a link whose app is only missing keeps working.
    pub(super) fn app_not_ready(message: String, not_ready: bool) -> Self {
        Outcome {
            ready: not_ready.then(|| Cond::new(false, reason::APP_NOT_READY, message.clone())),
            ..Self::failed(reason::APP_NOT_READY, message)
        }
    }

    /// A retryable failure: Synced says it; Ready only when it still describes an older
    /// generation (`stale_ready`). No Event: the back-off retries it.
    pub(super) fn retrying(summary: String, stale_ready: bool) -> Self {
        let message = format!("{summary}; retrying with back-off");
        Outcome {
            ready: stale_ready.then(|| Cond::new(false, reason::RETRYABLE_ERROR, message.clone())),
            synced: Some(Cond::new(false, reason::RETRYABLE_ERROR, message)),
            notice: None,
        }
    }

    /// A terminal WeCom answer: the conditions carry the stable message, the Event the
    /// (scrubbed) answer itself.
    pub(super) fn refused(reason: &'static str, stable: String, answer: String) -> Self {
        Outcome {
            notice: Some(Notice::warning(reason, RECONCILE, answer)),
            ..Self::failed(reason, stable)
        }
    }

    pub(super) fn not_in_corp(link_id: &str, app: &str) -> Self {
        Self::failed(
            reason::LINK_NOT_FOUND,
            format!(
                "spec.linkId {link_id} is not a link of WeComApp {app} (WeCom does not list it): check the id and spec.appRef. An adopted link is never created"
            ),
        )
    }

    pub(super) fn left_gone(link_id: &str, why: LeftGone) -> Self {
        let why = match why {
            LeftGone::Observed => "managementPolicy is Observe, so it is not recreated",
            LeftGone::Adopted => "the link was adopted (spec.linkId), so it is not recreated",
            LeftGone::OrphanPolicy => "onRemoteDelete is Orphan",
        };
        Self::failed(
            reason::REMOTE_DELETED,
            format!(
                "link {link_id} was deleted in WeCom; {why}. Delete this object, or set onRemoteDelete: Recreate"
            ),
        )
    }

    /// A link to be made is not made yet.
    pub(super) fn create_held(hold: Hold, app: &str) -> Self {
        match hold {
            Hold::Paused => Outcome {
                ready: Some(Cond::new(
                    false,
                    reason::PAUSED,
                    "no link exists yet and the object is paused",
                )),
                synced: Some(Cond::new(false, reason::PAUSED, paused_message())),
                notice: None,
            },
            Hold::QuotaExhausted => Self::failed(
                reason::QUOTA_EXHAUSTED,
                format!(
                    "the acquisition quota of WeComApp {app} is exhausted; the link is created when quota returns"
                ),
            ),
        }
    }

    pub(super) fn create_incomplete(ids: &[&str]) -> Self {
        Self::failed(
            reason::CREATE_INCOMPLETE,
            format!(
                "an interrupted create left several candidate links ({}); delete the extra ones in WeCom, set spec.linkId to the one to keep, or remove annotation {CREATE_PENDING_ANNOTATION} to create a new one; nothing is written to WeCom meanwhile",
                ids.join(", ")
            ),
        )
    }

    /// The link differs from the spec and the object is paused.
    pub(super) fn drift_paused(changes: &str) -> Self {
        Outcome {
            ready: Some(Cond::new(
                false,
                reason::PAUSED,
                format!("link differs from the spec ({changes}) and is paused"),
            )),
            synced: Some(Cond::new(false, reason::PAUSED, paused_message())),
            notice: None,
        }
    }

    /// An observed link differs from the spec: reported, not corrected. Still Ready.
    pub(super) fn drifted(link_id: &str, changes: &str) -> Self {
        let message = format!(
            "observed link {link_id} differs from the spec ({changes}); managementPolicy is Observe, so it is reported, not corrected"
        );
        Outcome {
            ready: Some(Cond::new(
                true,
                reason::AVAILABLE,
                format!("link {link_id} is observed"),
            )),
            synced: Some(Cond::new(false, reason::DRIFTED, message.clone())),
            notice: Some(Notice::normal(reason::DRIFTED, RECONCILE, message)),
        }
    }

    /// The link exists as the spec says (`paused`: a managed link whose writes are paused).
    pub(super) fn available(link_id: &str, paused: bool) -> Self {
        let synced = if paused {
            Cond::new(false, reason::PAUSED, paused_message())
        } else {
            Cond::new(true, reason::IN_SYNC, "the last pass succeeded")
        };
        Outcome {
            ready: Some(Cond::new(
                true,
                reason::AVAILABLE,
                format!("link {link_id} matches the spec"),
            )),
            synced: Some(synced),
            notice: None,
        }
    }
}

/// Writes the outcome into the pass's conditions and publishes its Event when the reason
/// is new to the object.
pub(super) async fn report(pass: &mut Pass<'_>, outcome: Outcome) {
    let notice = outcome.notice.filter(|n| pass.reason_is_new(&n.reason));
    for (type_, cond) in [(READY, outcome.ready), (SYNCED, outcome.synced)] {
        if let Some(c) = cond {
            pass.set(type_, c.status, c.reason, c.message);
        }
    }
    if let Some(notice) = notice {
        pass.ctx.publish(pass.link, &notice).await;
    }
}

/// Something a pass or a deletion did or saw, published as it happens.
pub(super) enum Happened<'a> {
    /// spec.linkId named an existing link, now adopted (or observed).
    Adopted {
        link_id: &'a str,
        url: &'a str,
        observed: bool,
    },
    /// A pass found the link an interrupted create made.
    FoundInterrupted {
        link_id: &'a str,
    },
    /// A4 sent: after a spec change, or to correct a drift made in WeCom.
    Updated {
        link_id: &'a str,
        changes: &'a str,
        spec_changed: bool,
    },
    Created {
        link_id: &'a str,
        url: &'a str,
    },
    /// WeCom deleted the link; it is being made again.
    RemoteDeleted {
        link_id: &'a str,
        url: &'a str,
    },
    /// The new link replaces one WeCom deleted: its URL changed.
    Recreated {
        old_id: &'a str,
        old_url: &'a str,
        link_id: &'a str,
        url: &'a str,
    },
    /// A6 or A7 failed; the previous values stay.
    FactFailed {
        reason: &'static str,
        what: &'static str,
        error: &'a str,
    },
    /// Deleting the object left the link in WeCom.
    Orphaned {
        link_id: &'a str,
        why: Orphaned<'a>,
    },
    /// Deleting the object deleted the link in WeCom.
    Deleted {
        link_id: &'a str,
    },
    /// The link cannot be deleted in WeCom yet: the message says what to do.
    DeletionBlocked {
        message: &'a str,
    },
}

/// Why a deletion left the link in WeCom.
pub(super) enum Orphaned<'a> {
    OwnedBy(&'a str),
    Policy(&'static str),
    AppGone(&'a str),
}

/// What a link-less object's deletion is blocked on, in the words of its Event.
pub(super) fn deletion_blocked_message(cause: &str, link_id: Option<&str>) -> String {
    format!(
        "{cause}, and this controller holds no credentials of the app, so link {} cannot be \
         deleted in WeCom: restore the Secret, or remove finalizer {LINK_FINALIZER} from this \
         AcquisitionLink to leave the link in WeCom",
        link_id.unwrap_or("(being created)")
    )
}

/// Publishes what happened to `link` (the one way the link reconciler sends Events).
pub(super) async fn tell(ctx: &Context, link: &AcquisitionLink, happened: Happened<'_>) {
    ctx.publish(link, &happened.notice()).await;
}

impl Happened<'_> {
    fn notice(&self) -> Notice {
        match self {
            Happened::Adopted {
                link_id,
                url,
                observed,
            } => adopted(link_id, url, *observed),
            Happened::FoundInterrupted { link_id } => Notice::normal(
                "Adopted",
                RECONCILE,
                format!("found link {link_id} made by an interrupted create and adopted it"),
            ),
            Happened::Updated {
                link_id,
                changes,
                spec_changed,
            } => updated(link_id, changes, *spec_changed),
            Happened::Created { link_id, url } => Notice::normal(
                "Created",
                RECONCILE,
                format!("created link {link_id} ({url})"),
            ),
            Happened::RemoteDeleted { link_id, url } => Notice::warning(
                reason::REMOTE_DELETED,
                RECONCILE,
                format!(
                    "link {link_id} ({url}) was deleted in WeCom; recreating it (onRemoteDelete: Recreate)"
                ),
            ),
            Happened::Recreated {
                old_id,
                old_url,
                link_id,
                url,
            } => recreated(old_id, old_url, link_id, url),
            Happened::FactFailed {
                reason,
                what,
                error,
            } => Notice::warning(
                *reason,
                RECONCILE,
                format!("could not refresh {what}; the last values stay in status: {error}"),
            ),
            Happened::Orphaned { link_id, why } => orphaned(link_id, why),
            Happened::Deleted { link_id } => Notice::normal(
                "Deleted",
                DELETE,
                format!("deleted link {link_id} in WeCom"),
            ),
            Happened::DeletionBlocked { message } => {
                Notice::warning("DeletionBlocked", DELETE, message.to_string())
            }
        }
    }
}

fn adopted(link_id: &str, url: &str, observed: bool) -> Notice {
    let (reason, verb) = if observed {
        ("Observing", "observing (never writing)")
    } else {
        ("Adopted", "adopted")
    };
    Notice::normal(
        reason,
        RECONCILE,
        format!("{verb} existing link {link_id} ({url}) named by spec.linkId"),
    )
}

fn updated(link_id: &str, changes: &str, spec_changed: bool) -> Notice {
    let (reason, verb) = if spec_changed {
        ("Updated", "updated to the new spec")
    } else {
        ("DriftCorrected", "drifted in WeCom and was corrected")
    };
    Notice::normal(
        reason,
        RECONCILE,
        format!("link {link_id} {verb}: {changes}"),
    )
}

fn recreated(old_id: &str, old_url: &str, link_id: &str, url: &str) -> Notice {
    let from = if old_url.is_empty() {
        String::new()
    } else {
        format!(" from {old_url}")
    };
    Notice::warning(
        "Recreated",
        RECONCILE,
        format!(
            "link {old_id} was replaced by {link_id}: the URL changed{from} to {url}; shared QR codes and URLs must be updated"
        ),
    )
}

fn orphaned(link_id: &str, why: &Orphaned<'_>) -> Notice {
    let (type_, message) = match why {
        Orphaned::OwnedBy(owner) => (
            EventType::Normal,
            format!("left link {link_id} in WeCom: AcquisitionLink {owner} manages it"),
        ),
        Orphaned::Policy(policy) => (
            EventType::Normal,
            format!("left link {link_id} in WeCom ({policy})"),
        ),
        Orphaned::AppGone(app) => (
            EventType::Warning,
            format!(
                "WeComApp {app} is gone, so link {link_id} cannot be deleted in WeCom; it is left as it is"
            ),
        ),
    };
    Notice::new(type_, "Orphaned", DELETE, message)
}
