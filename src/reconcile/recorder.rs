//! Publishes Kubernetes Events (events.k8s.io/v1) about the controller's objects.
//!
//! kube's `Recorder` keeps every Event it published for six minutes, whole, and walks all
//! of them on each publish to drop the old ones: a controller creating 10,000 links holds
//! 10,000 Events and spends a quadratic walk under one lock. This one remembers an Event
//! as a hash of what it says and its name, prunes at most every ten seconds, and does the
//! same on the wire: the first Event is created, a repeat within six minutes becomes a
//! series on it (`series.count`, `series.lastObservedTime`). The note is part of what an
//! Event says, so two Events with different notes are two Events.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::events::EventType,
};
use serde_json::json;
use tokio::time::Instant;

/// How long a repeat counts into the series of the first Event (kube's and client-go's).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// How often the remembered Events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Published {
    name: String,
    count: i32,
    last: Instant,
}

#[derive(Debug)]
struct Memory {
    pruned: Instant,
    published: HashMap<u64, Published>,
}

/// One Event, as the reconcilers describe it.
pub struct Note<'a> {
    pub type_: EventType,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: &'a str,
}

pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    memory: Mutex<Memory>,
}

impl Recorder {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Recorder {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            memory: Mutex::new(Memory {
                pruned: Instant::now(),
                published: HashMap::new(),
            }),
        }
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The series an Event would join: its name and the count it would have.
    fn repeat_of(&self, key: u64, now: Instant) -> Option<(String, i32)> {
        let mut memory = self.memory();
        if now.duration_since(memory.pruned) >= PRUNE_EVERY {
            memory
                .published
                .retain(|_, p| now.duration_since(p.last) < SERIES_WINDOW);
            memory.pruned = now;
        }
        memory
            .published
            .get(&key)
            .filter(|p| now.duration_since(p.last) < SERIES_WINDOW)
            .map(|p| (p.name.clone(), p.count + 1))
    }

    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        event: &Note<'_>,
    ) -> Result<(), kube::Error> {
        let key = event_key(regarding, event);
        let now = Instant::now();
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        if let Some((name, count)) = self.repeat_of(key, now) {
            let series = json!({ "series": {
                "count": count,
                "lastObservedTime": MicroTime(Timestamp::now()),
            }});
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => {
                    self.remember(key, name, count, now);
                    return Ok(());
                }
                // Gone (its TTL, or someone deleted it): a new Event.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => return Err(err),
            }
        }
        let created = events
            .create(&PostParams::default(), &self.new_event(regarding, event))
            .await?;
        self.remember(key, created.metadata.name.unwrap_or_default(), 1, now);
        Ok(())
    }

    fn remember(&self, key: u64, name: String, count: i32, last: Instant) {
        self.memory()
            .published
            .insert(key, Published { name, count, last });
    }

    fn new_event(&self, regarding: &ObjectReference, event: &Note<'_>) -> Event {
        let now = Timestamp::now();
        let base = regarding.name.as_deref().unwrap_or(&self.controller);
        Event {
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!("{base}.{:x}", now.as_nanosecond())),
                ..Default::default()
            },
            action: Some(event.action.to_string()),
            reason: Some(event.reason.to_string()),
            note: Some(event.note.to_string()),
            type_: Some(type_name(event.type_).to_string()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.memory().published.len()
    }
}

fn type_name(type_: EventType) -> &'static str {
    match type_ {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

fn event_key(regarding: &ObjectReference, event: &Note<'_>) -> u64 {
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    (
        &regarding.uid,
        &regarding.namespace,
        &regarding.name,
        &regarding.kind,
    )
        .hash(&mut hash);
    (
        type_name(event.type_),
        event.reason,
        event.action,
        event.note,
    )
        .hash(&mut hash);
    hash.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ListParams;

    #[tokio::test]
    async fn a_repeat_becomes_a_series_and_another_note_another_event() {
        let sim = crate::kubesim::KubeSim::new()
            .spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let recorder = Recorder::new(sim.client().await, "test-controller", None);
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            name: Some("cm".into()),
            namespace: Some("default".into()),
            uid: Some("u-1".into()),
            ..Default::default()
        };
        let note = |note| Note {
            type_: EventType::Warning,
            reason: "Failed",
            action: "Reconcile",
            note,
        };
        recorder.publish(&regarding, &note("one")).await.unwrap();
        recorder.publish(&regarding, &note("one")).await.unwrap();
        recorder.publish(&regarding, &note("one")).await.unwrap();
        recorder.publish(&regarding, &note("two")).await.unwrap();
        let events: Api<Event> = Api::namespaced(sim.client().await, "default");
        let mut listed = events.list(&ListParams::default()).await.unwrap().items;
        listed.sort_by_key(|e| e.note.clone());
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!(listed[0].note.as_deref(), Some("one"));
        assert_eq!(listed[0].series.as_ref().map(|s| s.count), Some(3));
        assert_eq!(listed[1].note.as_deref(), Some("two"));
        assert!(listed[1].series.is_none());
        assert_eq!(listed[0].type_.as_deref(), Some("Warning"));
        assert_eq!(
            listed[0].reporting_controller.as_deref(),
            Some("test-controller")
        );
        assert_eq!(recorder.remembered(), 2);
    }
}
