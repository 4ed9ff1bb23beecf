//! Which AcquisitionLink holds a WeCom link id, for the callback events that name one.

use crate::reconcile::cache;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use super::super::endpoint::InboundEvent;
use crate::api::AcquisitionLink;

/// Which AcquisitionLink holds a WeCom link id: by `status.linkId`, the
/// `acquisition.wecom.dev/link-id` annotation (status lost) or `spec.linkId` (adopted).
/// Rebuilt from the controller's store when older than a few seconds, or on a miss.
#[derive(Default)]
pub struct LinkIndex {
    /// namespace -> link id -> holder (nested, so a lookup borrows instead of allocating)
    by_id: HashMap<String, HashMap<String, LinkHolder>>,
    built_at: Option<Instant>,
}

struct LinkHolder {
    link: ObjectRef<AcquisitionLink>,
    app: String,
}

const INDEX_MAX_AGE: Duration = Duration::from_secs(5);
const INDEX_MIN_AGE_FOR_MISS: Duration = Duration::from_millis(200);

impl LinkIndex {
    pub fn rebuild(&mut self, links: &[Arc<AcquisitionLink>]) {
        self.by_id.clear();
        for link in links {
            let namespace = link.namespace().unwrap_or_default();
            let ids = [
                link.status.as_ref().and_then(|s| s.link_id.clone()),
                cache::link_id_annotation(link).map(str::to_string),
                link.spec.link_id.clone(),
            ];
            for id in ids.into_iter().flatten().filter(|id| !id.is_empty()) {
                self.by_id.entry(namespace.clone()).or_default().insert(
                    id,
                    LinkHolder {
                        link: ObjectRef::from_obj(&**link),
                        app: link.spec.app_ref.name.clone(),
                    },
                );
            }
        }
        self.built_at = Some(Instant::now());
    }

    /// The AcquisitionLink in `namespace`, using `app`, that holds `link_id`.
    pub fn find(
        &mut self,
        store: &Store<AcquisitionLink>,
        namespace: &str,
        app: &str,
        link_id: &str,
    ) -> Option<&ObjectRef<AcquisitionLink>> {
        let age = self.built_at.map(|at| at.elapsed());
        if age.is_none_or(|age| age >= INDEX_MAX_AGE)
            || (self.lookup(namespace, app, link_id).is_none()
                && self
                    .built_at
                    .is_some_and(|at| at.elapsed() >= INDEX_MIN_AGE_FOR_MISS))
        {
            self.rebuild(&store.state());
        }
        self.lookup(namespace, app, link_id)
    }

    /// The AcquisitionLink an event names (by its link id), and that id.
    pub fn find_for<'a>(
        &mut self,
        store: &Store<AcquisitionLink>,
        inbound: &'a InboundEvent,
    ) -> Option<(ObjectRef<AcquisitionLink>, &'a str)> {
        let link_id = inbound.event.link_id.as_deref()?;
        let found = self.find(store, &inbound.namespace, &inbound.app, link_id)?;
        Some((found.clone(), link_id))
    }

    /// The AcquisitionLink holding `link_id`, from the index as last built.
    pub fn lookup(
        &self,
        namespace: &str,
        app: &str,
        link_id: &str,
    ) -> Option<&ObjectRef<AcquisitionLink>> {
        self.by_id
            .get(namespace)?
            .get(link_id)
            .filter(|holder| holder.app == app)
            .map(|holder| &holder.link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AcquisitionLinkSpec, AcquisitionLinkStatus, LINK_ID_ANNOTATION};

    fn link(
        name: &str,
        app: &str,
        status_id: Option<&str>,
        annotation_id: Option<&str>,
    ) -> Arc<AcquisitionLink> {
        let mut link = AcquisitionLink::new(
            name,
            AcquisitionLinkSpec::new(app, name, vec!["zhangsan".into()]),
        );
        link.metadata.namespace = Some("ns".into());
        link.status = status_id.map(|id| AcquisitionLinkStatus {
            link_id: Some(id.into()),
            ..Default::default()
        });
        if let Some(id) = annotation_id {
            link.annotations_mut()
                .insert(LINK_ID_ANNOTATION.into(), id.into());
        }
        Arc::new(link)
    }

    #[test]
    fn index_finds_links_by_status_or_annotation_within_namespace_and_app() {
        let mut index = LinkIndex::default();
        index.rebuild(&[
            link("a", "app", Some("L1"), Some("L1")),
            link("b", "app", None, Some("L2")),
            link("c", "other", Some("L3"), None),
        ]);
        assert_eq!(
            index.lookup("ns", "app", "L1").map(|r| r.name.clone()),
            Some("a".into())
        );
        assert_eq!(
            index.lookup("ns", "app", "L2").map(|r| r.name.clone()),
            Some("b".into())
        );
        // Another app's link, another namespace, an unknown id: not ours.
        assert_eq!(index.lookup("ns", "app", "L3"), None);
        assert_eq!(index.lookup("other-ns", "app", "L1"), None);
        assert_eq!(index.lookup("ns", "app", "L9"), None);
    }
}
