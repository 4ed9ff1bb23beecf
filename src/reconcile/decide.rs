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
