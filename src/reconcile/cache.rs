//! What the controller keeps of the objects it caches (issue #11: 10,000 links within
//! 64 MiB). The reflector's store holds every AcquisitionLink and WeComApp the controller
//! watches; it keeps what a pass reads and drops the rest:
//! - of every object, `managedFields` and the `kubectl.kubernetes.io/last-applied-configuration`
//!   annotation: the server's record of who wrote which field, and client-side apply's copy
//!   of the whole object (ArgoCD's and kubectl's), together most of an object's size;
//! - of a link, its labels and the annotations outside `acquisition.wecom.dev/` (ArgoCD's
//!   tracking label and annotations among them): no pass reads them, and each non-empty map
//!   costs a B-tree node of over 500 bytes;
//! - of a link whose `status.linkId` holds the id its `acquisition.wecom.dev/link-id`
//!   annotation holds (every link at rest), that annotation, noted in
//!   `status.link_id_annotated`: [`link_id_annotation`] reads either form.
//!
//! A cached object is never written back whole: the controller's writes are patches of
//! the fields they change and server-side apply of status, so nothing dropped here is
//! lost on the server.

use kube::{Resource, ResourceExt};

use crate::api::{AcquisitionLink, GROUP, LINK_ID_ANNOTATION};

const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the cache keeps of any object: everything but `managedFields` and the last applied
/// configuration.
pub fn trim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// What the cache keeps of a link: see the module's documentation.
pub fn trim_link(link: &mut AcquisitionLink) {
    trim(link);
    link.metadata.labels = None;
    let Some(annotations) = link.metadata.annotations.as_mut() else {
        return;
    };
    annotations.retain(|key, _| is_own(key));
    if let Some(status) = link.status.as_mut()
        && status.link_id.is_some()
        && annotations.get(LINK_ID_ANNOTATION) == status.link_id.as_ref()
    {
        annotations.remove(LINK_ID_ANNOTATION);
        status.link_id_annotated = true;
    }
    if annotations.is_empty() {
        link.metadata.annotations = None;
    }
}

/// An annotation of this controller's group (`acquisition.wecom.dev/...`).
fn is_own(key: &str) -> bool {
    key.strip_prefix(GROUP)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// The link's `acquisition.wecom.dev/link-id` annotation, from the object as the API
/// server has it or as [`trim_link`] cached it.
pub fn link_id_annotation(link: &AcquisitionLink) -> Option<&str> {
    link.annotations()
        .get(LINK_ID_ANNOTATION)
        .map(String::as_str)
        .or_else(|| {
            link.status
                .as_ref()
                .filter(|status| status.link_id_annotated)
                .and_then(|status| status.link_id.as_deref())
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::{
        AcquisitionLinkSpec, AcquisitionLinkStatus, CREATE_PENDING_ANNOTATION, PAUSED_ANNOTATION,
        RECONCILE_REQUESTED_ANNOTATION,
    };

    fn link(annotations: &[(&str, &str)], status_id: Option<&str>) -> AcquisitionLink {
        let mut link = AcquisitionLink::new(
            "sales",
            AcquisitionLinkSpec::new("app", "Sales", vec!["zhangsan".into()]),
        );
        link.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        link.metadata.labels = Some(BTreeMap::from([(
            "app.kubernetes.io/instance".to_string(),
            "growth".to_string(),
        )]));
        link.status = status_id.map(|id| AcquisitionLinkStatus {
            link_id: Some(id.to_string()),
            ..AcquisitionLinkStatus::default()
        });
        link
    }

    const READS: [&str; 4] = [
        LINK_ID_ANNOTATION,
        CREATE_PENDING_ANNOTATION,
        PAUSED_ANNOTATION,
        RECONCILE_REQUESTED_ANNOTATION,
    ];

    #[test]
    fn a_link_at_rest_is_cached_without_labels_or_annotations() {
        let mut cached = link(
            &[
                (LINK_ID_ANNOTATION, "cawcde"),
                (LAST_APPLIED_ANNOTATION, "{\"apiVersion\":\"...\"}"),
                (
                    "argocd.argoproj.io/tracking-id",
                    "growth:acquisition.wecom.dev/...",
                ),
            ],
            Some("cawcde"),
        );
        let before = cached.clone();
        trim_link(&mut cached);
        assert_eq!(cached.metadata.annotations, None);
        assert_eq!(cached.metadata.labels, None);
        assert_eq!(link_id_annotation(&cached), Some("cawcde"));
        assert_eq!(link_id_annotation(&before), Some("cawcde"));
        // What the controller reads, and what it writes, are the same as before.
        assert_eq!(cached.spec, before.spec);
        let serialized = |l: &AcquisitionLink| serde_json::to_value(&l.status).ok();
        assert_eq!(serialized(&cached), serialized(&before));
    }

    #[test]
    fn the_annotations_a_pass_reads_stay() {
        let all: Vec<(&str, &str)> = READS.iter().map(|k| (*k, "v")).collect();
        // The link id differs from status's: both stay visible.
        let mut cached = link(&all, Some("other"));
        trim_link(&mut cached);
        for key in READS {
            assert_eq!(
                cached.annotations().get(key).map(String::as_str),
                Some("v"),
                "{key}"
            );
        }
        assert_eq!(link_id_annotation(&cached), Some("v"));
        assert_eq!(
            cached.status.as_ref().map(|s| s.link_id_annotated),
            Some(false)
        );
    }

    #[test]
    fn a_link_without_the_annotation_is_not_said_to_have_it() {
        // Status holds an id the annotation lacks (an annotation removed by hand): a pass
        // must still see it missing, to write it again.
        let mut cached = link(&[("note", "x")], Some("cawcde"));
        trim_link(&mut cached);
        assert_eq!(link_id_annotation(&cached), None);
        let mut without_status = link(&[(LINK_ID_ANNOTATION, "cawcde")], None);
        trim_link(&mut without_status);
        assert_eq!(link_id_annotation(&without_status), Some("cawcde"));
    }

    #[test]
    fn only_this_controllers_group_counts_as_its_own() {
        assert!(is_own(LINK_ID_ANNOTATION));
        assert!(!is_own("acquisition.wecom.dev.example.com/x"));
        assert!(!is_own("example.com/acquisition.wecom.dev"));
    }
}
