//! Which WeCom link an AcquisitionLink may touch, and how: pure decisions from the spec, the
//! status and what WeCom showed, so every case is a table row in a unit test.

use crate::api::{DeletionPolicy, LinkOrigin, ManagementPolicy, RemoteDeletePolicy};

/// The id this object already holds (status, else the link-id annotation) and how it got it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held<'a> {
    pub link_id: Option<&'a str>,
    pub origin: Option<LinkOrigin>,
}

/// Refuses a spec that would switch the object to another WeCom link: `spec.linkId` may be
/// set to the id the object holds (pinning it), never to another one. The CEL transition
/// rule catches a changed `spec.linkId`, but not one added to a link the controller created,
/// and not on API servers without CEL; writing to the other link would leave this one behind.
pub fn check_link_id(spec_link_id: Option<&str>, held: Held<'_>) -> Result<(), String> {
    match (spec_link_id, held.link_id) {
        (Some(wanted), Some(own)) if wanted != own => {
            let how = match held.origin {
                Some(LinkOrigin::Created) => "created",
                Some(LinkOrigin::Adopted) => "adopted",
                None => "holds",
            };
            Err(format!(
                "spec.linkId {wanted} differs from link {own} this object {how}: the link id is immutable once held. \
                 Remove spec.linkId or set it to {own}; to manage link {wanted}, create a new AcquisitionLink"
            ))
        }
        _ => Ok(()),
    }
}

/// One AcquisitionLink's claim on a WeCom link id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `namespace/name`.
    pub object: String,
    /// The id is in the object's status: it already manages the link.
    pub holds: bool,
    pub created: Option<k8s_openapi::jiff::Timestamp>,
}

impl Claim {
    /// Who keeps a link among its claimants: an object that already holds it (its status
    /// names it), then the older object, then namespace/name. Every pass of every claimant
    /// ranks the same claims the same way, so two objects never both think they own a link;
    /// an object without a creationTimestamp (not yet stored) ranks after those with one.
    fn rank(&self) -> (bool, bool, Option<k8s_openapi::jiff::Timestamp>, &str) {
        (
            !self.holds,
            self.created.is_none(),
            self.created,
            &self.object,
        )
    }
}

/// The object that keeps a link among all that claim it; `None` for no claimant. When it
/// goes away, the next in rank owns the link from its next pass on.
pub fn owner_of(claims: &[Claim]) -> Option<&Claim> {
    claims.iter().min_by(|a, b| a.rank().cmp(&b.rank()))
}

/// What to do with a link WeCom has, given how it differs from the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPresent {
    /// Nothing differs.
    InSync,
    /// Send the whole desired link (A4).
    Correct,
    /// Managed but paused: report, write nothing.
    Paused,
    /// Observed: report the drift (`Drifted`), write nothing.
    ReportDrift,
}

pub fn on_present(policy: ManagementPolicy, paused: bool, differs: bool) -> OnPresent {
    match (differs, policy, paused) {
        (false, _, _) => OnPresent::InSync,
        (true, ManagementPolicy::Observe, _) => OnPresent::ReportDrift,
        (true, ManagementPolicy::Manage, true) => OnPresent::Paused,
        (true, ManagementPolicy::Manage, false) => OnPresent::Correct,
    }
}

/// Whether a link WeCom no longer has is made again. Never for a link that was not created
/// here (its id cannot come back) or that is only observed.
pub fn recreate_when_gone(
    policy: ManagementPolicy,
    adopted: bool,
    on_remote_delete: RemoteDeletePolicy,
) -> bool {
    policy == ManagementPolicy::Manage
        && !adopted
        && on_remote_delete == RemoteDeletePolicy::Recreate
}

/// Whether deleting the object deletes the WeCom link (A5).
pub fn delete_on_cleanup(policy: ManagementPolicy, deletion: DeletionPolicy) -> bool {
    policy == ManagementPolicy::Manage && deletion == DeletionPolicy::Delete
}

/// What a pass knows of the link's app once it has resolved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppState {
    /// The app and a WeCom client for it are there, and WeCom does not refuse the app.
    Ready,
    /// The app or its Secret is missing: the link keeps working in WeCom, unmanaged.
    Missing,
    /// WeCom refuses the app's calls (permission, trusted IPs, credentials, a bad server).
    Refused,
}

/// What the observation found, reduced to what the decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Nothing looked: the app is not ready.
    NotLooked,
    /// The object knows no link id: nothing to look at.
    NoId,
    /// WeCom has the link; `differs` when it differs from the spec.
    Present { differs: bool },
    /// WeCom no longer lists the link.
    Gone,
}

/// Everything [`decide`] looks at: the spec and status of the object, its app, and what
/// WeCom showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation {
    pub app: AppState,
    pub seen: Seen,
    pub policy: ManagementPolicy,
    pub paused: bool,
    pub quota_exhausted: bool,
    pub on_remote_delete: RemoteDeletePolicy,
    /// `spec.linkId` names the link (adoption, or observation).
    pub named_by_spec: bool,
    /// How the object got the id it holds (status), when it holds one.
    pub origin: Option<LinkOrigin>,
}

/// Why a link that should be made is not made yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Paused,
    QuotaExhausted,
}

/// Why a link WeCom no longer has is left gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftGone {
    /// `managementPolicy: Observe`.
    Observed,
    /// The link was adopted: its id cannot come back.
    Adopted,
    /// `onRemoteDelete: Orphan`.
    OrphanPolicy,
}

/// The one thing a pass does, decided from a [`Situation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Wait for the app, calling nothing (`AppNotReady`).
    WaitForApp,
    /// Make the link (A3; first looking for one an interrupted create made).
    /// `replacing`: WeCom deleted the one this object had.
    Create { replacing: bool },
    /// A link should be made but may not be yet.
    HoldCreate { hold: Hold, replacing: bool },
    /// WeCom has the link: what to do with its differences.
    Present(OnPresent),
    /// `spec.linkId` names a link WeCom does not list and this object never held.
    NotInCorp,
    /// WeCom deleted the link and it is not made again.
    LeaveGone(LeftGone),
}

/// The decision of a pass: pure, so every combination is a row in the table test below.
pub fn decide(s: &Situation) -> Step {
    if s.app != AppState::Ready || s.seen == Seen::NotLooked {
        return Step::WaitForApp;
    }
    match s.seen {
        Seen::NotLooked => Step::WaitForApp,
        Seen::Present { differs } => Step::Present(on_present(s.policy, s.paused, differs)),
        // Never held: nothing was deleted, the id is not this corp's (a typo, another
        // corp's link). An observed link is never made either.
        Seen::Gone if s.named_by_spec && s.origin.is_none() => Step::NotInCorp,
        Seen::NoId if s.policy == ManagementPolicy::Observe => Step::NotInCorp,
        Seen::Gone => {
            let adopted = s.named_by_spec || s.origin == Some(LinkOrigin::Adopted);
            if recreate_when_gone(s.policy, adopted, s.on_remote_delete) {
                create_or_hold(s, true)
            } else if s.policy == ManagementPolicy::Observe {
                Step::LeaveGone(LeftGone::Observed)
            } else if adopted {
                Step::LeaveGone(LeftGone::Adopted)
            } else {
                Step::LeaveGone(LeftGone::OrphanPolicy)
            }
        }
        Seen::NoId => create_or_hold(s, false),
    }
}

/// A pause comes first (nothing is written), then the quota.
fn create_or_hold(s: &Situation, replacing: bool) -> Step {
    let hold = if s.paused {
        Some(Hold::Paused)
    } else if s.quota_exhausted {
        Some(Hold::QuotaExhausted)
    } else {
        None
    };
    match hold {
        Some(hold) => Step::HoldCreate { hold, replacing },
        None => Step::Create { replacing },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeletionPolicy::{Delete, Orphan};
    use ManagementPolicy::{Manage, Observe};
    use RemoteDeletePolicy::{Orphan as Keep, Recreate};

    fn held(id: Option<&str>, origin: Option<LinkOrigin>) -> Held<'_> {
        Held {
            link_id: id,
            origin,
        }
    }

    #[test]
    fn link_id_table() {
        let created = Some(LinkOrigin::Created);
        let adopted = Some(LinkOrigin::Adopted);
        // (spec.linkId, held, accepted)
        let rows: &[(Option<&str>, Held, bool)] = &[
            (None, held(None, None), true),
            (None, held(Some("a"), created), true),
            (Some("a"), held(Some("a"), created), true), // pinning
            (Some("b"), held(Some("a"), created), false), // created link keeps its id
            (Some("b"), held(Some("a"), adopted), false),
            (Some("b"), held(Some("a"), None), false), // status lost, annotation holds
            (Some("b"), held(None, None), true),       // adoption
        ];
        for (spec, held, accepted) in rows {
            let result = check_link_id(*spec, *held);
            assert_eq!(result.is_ok(), *accepted, "{spec:?} {held:?}: {result:?}");
        }
        let message = check_link_id(Some("b"), held(Some("a"), created)).unwrap_err();
        assert!(message.contains("link a this object created"), "{message}");
    }

    fn claim(object: &str, holds: bool, created: Option<i64>) -> Claim {
        Claim {
            object: object.into(),
            holds,
            created: created.map(|s| k8s_openapi::jiff::Timestamp::from_second(s).unwrap()),
        }
    }

    #[test]
    fn first_claimant_keeps_the_link() {
        let rows: &[(&[Claim], Option<&str>)] = &[
            (&[], None),
            (&[claim("ns/a", false, Some(5))], Some("ns/a")),
            // The holder wins even when younger.
            (
                &[
                    claim("ns/old", false, Some(1)),
                    claim("ns/young", true, Some(9)),
                ],
                Some("ns/young"),
            ),
            // Nobody holds it yet: the older object.
            (
                &[claim("ns/b", false, Some(9)), claim("ns/a", false, Some(1))],
                Some("ns/a"),
            ),
            // Same age: namespace/name decides.
            (
                &[claim("ns/b", false, Some(1)), claim("ns/a", false, Some(1))],
                Some("ns/a"),
            ),
            // Not yet stored (no timestamp) ranks last.
            (
                &[claim("ns/a", false, None), claim("ns/z", false, Some(7))],
                Some("ns/z"),
            ),
            // Two holders (a split brain of the past): the older one.
            (
                &[claim("ns/b", true, Some(2)), claim("ns/a", true, Some(3))],
                Some("ns/b"),
            ),
        ];
        for (claims, want) in rows {
            assert_eq!(
                owner_of(claims).map(|c| c.object.as_str()),
                *want,
                "{claims:?}"
            );
            let mut reversed = claims.to_vec();
            reversed.reverse();
            assert_eq!(
                owner_of(&reversed).map(|c| c.object.as_str()),
                *want,
                "the order of the store does not matter"
            );
        }
    }

    #[test]
    fn present_table() {
        let rows = [
            (Manage, false, false, OnPresent::InSync),
            (Manage, true, false, OnPresent::InSync),
            (Observe, false, false, OnPresent::InSync),
            (Manage, false, true, OnPresent::Correct),
            (Manage, true, true, OnPresent::Paused),
            (Observe, false, true, OnPresent::ReportDrift),
            (Observe, true, true, OnPresent::ReportDrift),
        ];
        for (policy, paused, differs, want) in rows {
            assert_eq!(
                on_present(policy, paused, differs),
                want,
                "{policy:?} {paused} {differs}"
            );
        }
    }

    /// One row of the decision table: `None` matches anything.
    struct Row {
        app: Option<AppState>,
        seen: Option<Seen>,
        policy: Option<ManagementPolicy>,
        paused: Option<bool>,
        quota_exhausted: Option<bool>,
        on_remote_delete: Option<RemoteDeletePolicy>,
        named_by_spec: Option<bool>,
        origin: Option<Option<LinkOrigin>>,
        step: Step,
    }

    const ANY: Row = Row {
        app: None,
        seen: None,
        policy: None,
        paused: None,
        quota_exhausted: None,
        on_remote_delete: None,
        named_by_spec: None,
        origin: None,
        step: Step::WaitForApp,
    };

    fn matches(row: &Row, s: &Situation) -> bool {
        fn ok<T: PartialEq>(want: &Option<T>, got: &T) -> bool {
            want.as_ref().is_none_or(|w| w == got)
        }
        ok(&row.app, &s.app)
            && ok(&row.seen, &s.seen)
            && ok(&row.policy, &s.policy)
            && ok(&row.paused, &s.paused)
            && ok(&row.quota_exhausted, &s.quota_exhausted)
            && ok(&row.on_remote_delete, &s.on_remote_delete)
            && ok(&row.named_by_spec, &s.named_by_spec)
            && ok(&row.origin, &s.origin)
    }

    /// The decision table, first matching row wins, checked against every combination of
    /// app state, what WeCom showed (no id, present, drifted, gone), both policies, pause,
    /// quota, onRemoteDelete, spec.linkId and origin: 3 x 5 x 2 x 2 x 2 x 2 x 2 x 3 = 1,440.
    #[test]
    fn decision_table_covers_every_combination() {
        use Hold::{Paused as HoldPaused, QuotaExhausted};
        let drifted = Some(Seen::Present { differs: true });
        let table = [
            // The app first: nothing is looked at or written while it is not ready.
            Row {
                app: Some(AppState::Missing),
                ..ANY
            },
            Row {
                app: Some(AppState::Refused),
                ..ANY
            },
            Row {
                seen: Some(Seen::NotLooked),
                ..ANY
            },
            // Present: in sync, corrected, held by a pause, or reported when observed.
            Row {
                seen: Some(Seen::Present { differs: false }),
                step: Step::Present(OnPresent::InSync),
                ..ANY
            },
            Row {
                seen: drifted,
                policy: Some(Observe),
                step: Step::Present(OnPresent::ReportDrift),
                ..ANY
            },
            Row {
                seen: drifted,
                paused: Some(true),
                step: Step::Present(OnPresent::Paused),
                ..ANY
            },
            Row {
                seen: drifted,
                step: Step::Present(OnPresent::Correct),
                ..ANY
            },
            // No id: made unless observed, paused or out of quota (a pause first).
            Row {
                seen: Some(Seen::NoId),
                policy: Some(Observe),
                step: Step::NotInCorp,
                ..ANY
            },
            Row {
                seen: Some(Seen::NoId),
                paused: Some(true),
                step: Step::HoldCreate {
                    hold: HoldPaused,
                    replacing: false,
                },
                ..ANY
            },
            Row {
                seen: Some(Seen::NoId),
                quota_exhausted: Some(true),
                step: Step::HoldCreate {
                    hold: QuotaExhausted,
                    replacing: false,
                },
                ..ANY
            },
            Row {
                seen: Some(Seen::NoId),
                step: Step::Create { replacing: false },
                ..ANY
            },
            // Gone: an id named by the spec and never held is not this corp's.
            Row {
                seen: Some(Seen::Gone),
                named_by_spec: Some(true),
                origin: Some(None),
                step: Step::NotInCorp,
                ..ANY
            },
            Row {
                seen: Some(Seen::Gone),
                policy: Some(Observe),
                step: Step::LeaveGone(LeftGone::Observed),
                ..ANY
            },
            Row {
                seen: Some(Seen::Gone),
                named_by_spec: Some(true),
                step: Step::LeaveGone(LeftGone::Adopted),
                ..ANY
            },
            Row {
                seen: Some(Seen::Gone),
                origin: Some(Some(LinkOrigin::Adopted)),
                step: Step::LeaveGone(LeftGone::Adopted),
                ..ANY
            },
            Row {
                seen: Some(Seen::Gone),
                on_remote_delete: Some(Keep),
                step: Step::LeaveGone(LeftGone::OrphanPolicy),
                ..ANY
            },
            Row {
                seen: Some(Seen::Gone),
                paused: Some(true),
                step: Step::HoldCreate {
                    hold: HoldPaused,
                    replacing: true,
                },
                ..ANY
            },
            Row {
                seen: Some(Seen::Gone),
                quota_exhausted: Some(true),
                step: Step::HoldCreate {
                    hold: QuotaExhausted,
                    replacing: true,
                },
                ..ANY
            },
            Row {
                seen: Some(Seen::Gone),
                step: Step::Create { replacing: true },
                ..ANY
            },
        ];
        let mut checked = 0;
        let mut used = vec![0; table.len()];
        for app in [AppState::Ready, AppState::Missing, AppState::Refused] {
            for seen in [
                Seen::NotLooked,
                Seen::NoId,
                Seen::Present { differs: false },
                Seen::Present { differs: true },
                Seen::Gone,
            ] {
                for policy in [Manage, Observe] {
                    for paused in [false, true] {
                        for quota_exhausted in [false, true] {
                            for on_remote_delete in [Recreate, Keep] {
                                for named_by_spec in [false, true] {
                                    for origin in
                                        [None, Some(LinkOrigin::Created), Some(LinkOrigin::Adopted)]
                                    {
                                        let s = Situation {
                                            app,
                                            seen,
                                            policy,
                                            paused,
                                            quota_exhausted,
                                            on_remote_delete,
                                            named_by_spec,
                                            origin,
                                        };
                                        let Some(row) = table.iter().position(|r| matches(r, &s))
                                        else {
                                            panic!("no row for {s:?}");
                                        };
                                        used[row] += 1;
                                        assert_eq!(
                                            decide(&s),
                                            table[row].step,
                                            "{s:?} (row {row})"
                                        );
                                        checked += 1;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 1440);
        assert!(
            used.iter().all(|n| *n > 0),
            "every row decides something: {used:?}"
        );
    }

    /// What must hold whatever the table says: an observed link and a paused one are never
    /// written, and nothing is written for an app that is not ready.
    #[test]
    fn observed_paused_and_waiting_links_are_never_written() {
        let writes = |step: Step| {
            matches!(
                step,
                Step::Create { .. } | Step::Present(OnPresent::Correct)
            )
        };
        for app in [AppState::Ready, AppState::Missing, AppState::Refused] {
            for seen in [Seen::NoId, Seen::Present { differs: true }, Seen::Gone] {
                for (policy, paused) in [(Observe, false), (Observe, true), (Manage, true)] {
                    for named_by_spec in [false, true] {
                        let s = Situation {
                            app,
                            seen,
                            policy,
                            paused,
                            quota_exhausted: false,
                            on_remote_delete: Recreate,
                            named_by_spec,
                            origin: Some(LinkOrigin::Created),
                        };
                        assert!(!writes(decide(&s)), "{s:?}");
                        let waiting = Situation {
                            app: AppState::Refused,
                            policy: Manage,
                            paused: false,
                            ..s
                        };
                        assert_eq!(decide(&waiting), Step::WaitForApp);
                    }
                }
            }
        }
    }

    #[test]
    fn gone_and_cleanup_tables() {
        assert!(recreate_when_gone(Manage, false, Recreate));
        assert!(!recreate_when_gone(Manage, false, Keep));
        assert!(!recreate_when_gone(Manage, true, Recreate));
        assert!(!recreate_when_gone(Observe, false, Recreate));
        assert!(delete_on_cleanup(Manage, Delete));
        assert!(!delete_on_cleanup(Manage, Orphan));
        assert!(!delete_on_cleanup(Observe, Delete));
        assert!(!delete_on_cleanup(Observe, Orphan));
    }
}
