//! The resource types the emulator serves: the built-in kinds a controller touches, and
//! whatever an established CustomResourceDefinition declares; plus the discovery
//! documents (`/api`, `/apis`, `APIResourceList`) that describe them.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::schema::Shape;
use super::validation::NameRule;

/// How `metadata.generation` moves on writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GenerationRule {
    /// The kind has no generation (Secrets, Events, Leases, Namespaces).
    Untracked,
    /// Bumps when `.spec` changes (CustomResourceDefinitions).
    Spec,
    /// Bumps on any change outside `metadata` and `status` (custom resources).
    AllButMetadataAndStatus,
}

/// How objects of a type are shown to clients, relative to how they are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// Stored as served.
    Native,
    /// events.k8s.io/v1: core/v1 Events renamed field by field.
    EventsV1,
}

/// One served `group/version/plural`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status_subresource: bool,
    pub generation: GenerationRule,
    /// PUT without `metadata.resourceVersion` is allowed (false for CRs and CRDs).
    pub unconditional_update: bool,
    /// A custom resource: strategic merge patch is refused with 415.
    pub custom: bool,
    pub name_rule: NameRule,
    /// Field paths allowed in `fieldSelector` besides metadata.name/namespace.
    pub selectable_fields: &'static [&'static str],
    /// Storage bucket shared by every version and view of the resource.
    pub storage: String,
    pub view: View,
    /// List and map types for server-side apply and managedFields.
    pub shape: Arc<Shape>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: Vec::new(),
            categories: Vec::new(),
            status_subresource: false,
            generation: GenerationRule::Untracked,
            unconditional_update: true,
            custom: false,
            name_rule: NameRule::Subdomain,
            selectable_fields: &[],
            storage: super::status::qualified(group, plural),
            view: View::Native,
            shape: Arc::new(Shape::of_kind(None)),
        }
    }

    /// Presents a stored object as this type serves it: its apiVersion and kind, and
    /// the events.k8s.io field names for that view.
    pub fn present(&self, stored: &Value) -> Value {
        let mut object = match self.view {
            View::Native => stored.clone(),
            View::EventsV1 => rename_fields(stored, CORE_TO_EVENTS_V1),
        };
        if let Some(map) = object.as_object_mut() {
            map.insert("apiVersion".into(), Value::String(self.api_version()));
            map.insert("kind".into(), Value::String(self.kind.clone()));
        }
        object
    }

    /// Turns an object in this type's served form into its stored form.
    pub fn ingest(&self, served: &Value) -> Value {
        match self.view {
            View::Native => served.clone(),
            View::EventsV1 => {
                let mut core = rename_fields(served, EVENTS_V1_TO_CORE);
                if let Some(map) = core.as_object_mut() {
                    map.insert("apiVersion".into(), "v1".into());
                    map.insert("kind".into(), "Event".into());
                }
                core
            }
        }
    }

    /// The `APIResource` entries for discovery: the resource and its status subresource.
    fn discovery_entries(&self) -> Vec<Value> {
        let mut verbs = vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        if self.plural == "namespaces" {
            verbs.retain(|v| *v != "deletecollection");
        }
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut entries = vec![main];
        if self.status_subresource {
            entries.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        entries
    }
}

/// core/v1 Event field -> events.k8s.io/v1 Event field.
const CORE_TO_EVENTS_V1: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

const EVENTS_V1_TO_CORE: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename_fields(object: &Value, renames: &[(&str, &str)]) -> Value {
    let Some(map) = object.as_object() else {
        return object.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        let key = renames
            .iter()
            .find(|(from, _)| from == key)
            .map_or(key.as_str(), |(_, to)| to);
        out.insert(key.to_string(), value.clone());
    }
    Value::Object(out)
}

const CORE_EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// The built-in types, before any CRD is created.
pub(crate) fn builtin_types() -> Vec<ResourceType> {
    let mut namespaces = ResourceType::builtin("", "v1", "namespaces", "Namespace", false);
    namespaces.short_names = vec!["ns".into()];
    namespaces.status_subresource = true;
    namespaces.name_rule = NameRule::Label;
    namespaces.selectable_fields = &["status.phase"];

    let mut secrets = ResourceType::builtin("", "v1", "secrets", "Secret", true);
    secrets.selectable_fields = &["type"];

    let mut core_events = ResourceType::builtin("", "v1", "events", "Event", true);
    core_events.short_names = vec!["ev".into()];
    core_events.selectable_fields = CORE_EVENT_FIELDS;

    let mut events_v1 = ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true);
    events_v1.short_names = vec!["ev".into()];
    events_v1.storage = core_events.storage.clone();
    events_v1.view = View::EventsV1;
    events_v1.selectable_fields = CORE_EVENT_FIELDS;

    let leases = ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true);

    // Stored as given (no scheduling, no kubelet): the controller labels its own Pod.
    let mut pods = ResourceType::builtin("", "v1", "pods", "Pod", true);
    pods.short_names = vec!["po".into()];
    pods.status_subresource = true;

    let mut crds = ResourceType::builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
    );
    crds.short_names = vec!["crd".into(), "crds".into()];
    crds.categories = vec!["api-extensions".into()];
    crds.status_subresource = true;
    crds.generation = GenerationRule::Spec;
    crds.unconditional_update = false;

    vec![
        namespaces,
        secrets,
        core_events,
        events_v1,
        leases,
        pods,
        crds,
    ]
}

/// The types a CustomResourceDefinition serves: one per served version.
pub(crate) fn types_from_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let group = text(&spec["group"]);
    let plural = text(&spec["names"]["plural"]);
    let kind = text(&spec["names"]["kind"]);
    let singular = match text(&spec["names"]["singular"]) {
        s if s.is_empty() => kind.to_lowercase(),
        s => s,
    };
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    versions
        .iter()
        .filter(|v| v["served"].as_bool().unwrap_or(false))
        .map(|v| ResourceType {
            group: group.clone(),
            version: text(&v["name"]),
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced,
            short_names: strings(&spec["names"]["shortNames"]),
            categories: strings(&spec["names"]["categories"]),
            status_subresource: v.pointer("/subresources/status").is_some(),
            generation: GenerationRule::AllButMetadataAndStatus,
            unconditional_update: false,
            custom: true,
            name_rule: NameRule::Subdomain,
            selectable_fields: &[],
            storage: super::status::qualified(&group, &plural),
            view: View::Native,
            shape: Arc::new(Shape::of_kind(v.pointer("/schema/openAPIV3Schema"))),
        })
        .collect()
}

/// `/version`.
pub(crate) fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-kubesim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "n/a",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// `/api`: the core group's versions.
pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// The named groups in first-seen order, each with its versions.
fn groups(types: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) => {
                if !versions.contains(&t.version) {
                    versions.push(t.version.clone());
                }
            }
            None => out.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    out
}

fn api_group(name: &str, versions: &[String]) -> Value {
    let entries: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": entries,
        "preferredVersion": entries.first().cloned().unwrap_or(Value::Null),
    })
}

/// `/apis`.
pub(crate) fn group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = groups(types)
        .iter()
        .map(|(name, versions)| api_group(name, versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`, if the group is served.
pub(crate) fn group(types: &[ResourceType], name: &str) -> Option<Value> {
    groups(types)
        .into_iter()
        .find(|(g, _)| g == name)
        .map(|(g, versions)| {
            let mut doc = api_group(&g, &versions);
            doc["kind"] = "APIGroup".into();
            doc["apiVersion"] = "v1".into();
            doc
        })
}

/// `/api/v1` or `/apis/{group}/{version}`, if served.
pub(crate) fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ResourceType> = types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let resources: Vec<Value> = served.iter().flat_map(|t| t.discovery_entries()).collect();
    let group_version = served[0].api_version();
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_v1_view_round_trips_to_core_storage() {
        let types = builtin_types();
        let v1 = types.iter().find(|t| t.group == "events.k8s.io").unwrap();
        let served = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e"}, "note": "hello", "regarding": {"name": "x"},
            "reportingController": "c", "reason": "Created"});
        let stored = v1.ingest(&served);
        assert_eq!(stored["message"], "hello");
        assert_eq!(stored["involvedObject"]["name"], "x");
        assert_eq!(stored["reportingComponent"], "c");
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(v1.present(&stored), served);
    }

    #[test]
    fn crd_serves_each_served_version_with_its_status_subresource() {
        let crd = json!({"spec": {"group": "g.dev", "scope": "Namespaced",
            "names": {"plural": "things", "kind": "Thing", "shortNames": ["th"]},
            "versions": [
                {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                {"name": "v0", "served": false, "storage": false}]}});
        let types = types_from_crd(&crd);
        assert_eq!(types.len(), 1);
        assert!(types[0].status_subresource && types[0].namespaced && types[0].custom);
        assert_eq!(types[0].storage, "things.g.dev");
        let list = resource_list(&types, "g.dev", "v1").unwrap();
        assert_eq!(list["resources"][1]["name"], "things/status");
    }
}
