//! The channel that asks the controllers for a pass now, besides an object's own changes:
//! the callback worker and the controller's own relays send object references into it.

use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

use crate::api::{AcquisitionLink, WeComApp};

/// Handles other parts of the process use to steer the controllers (the callback endpoint).
#[derive(Clone)]
pub struct Triggers {
    pub links: mpsc::Sender<ObjectRef<AcquisitionLink>>,
    pub apps: mpsc::Sender<ObjectRef<WeComApp>>,
}

/// Asks the controller to reconcile `target` now, without waiting.
pub fn trigger<K>(sender: &mpsc::Sender<ObjectRef<K>>, target: ObjectRef<K>)
where
    K: kube::Resource + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    match sender.try_send(target) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(target)) => {
            let sender = sender.clone();
            tokio::spawn(async move {
                let _ = sender.send(target).await;
            });
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            tracing::debug!("controller stopped; reconcile request dropped");
        }
    }
}
