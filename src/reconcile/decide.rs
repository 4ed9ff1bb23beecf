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
