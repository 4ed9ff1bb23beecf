//! `metadata.managedFields` as the apiserver keeps it: which field manager last set which
//! fields, per operation (`Update` for create, update and the three patch kinds, `Apply`
//! for server-side apply) and subresource, in the `FieldsV1` form. Server-side apply
//! conflicts (409) come from here: applying a value another manager owns, without `force`.
//!
//! Simplified where no client of this project can tell: lists are atomic (owned whole,
//! no `x-kubernetes-list-type: map` keys), and a write that changes no value records no
//! new co-owner.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::status::ApiError;

/// One field: the keys from the object's root.
type FieldPath = Vec<String>;

/// Metadata the server sets, which no manager owns.
const SERVER_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// What a write records: who wrote and how.
#[derive(Debug, Clone, Default)]
pub(crate) enum Operation {
    /// Create, update, or a JSON, merge or strategic merge patch.
    #[default]
    Update,
    /// Server-side apply of `config` (the applied object, in stored form).
    Apply { config: Value, force: bool },
}

/// The manager entry a write belongs to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Writer {
    pub manager: String,
    pub operation: Operation,
    /// The write goes to the `/status` subresource.
    pub status: bool,
}

impl Writer {
    fn operation_name(&self) -> &'static str {
        match self.operation {
            Operation::Update => "Update",
            Operation::Apply { .. } => "Apply",
        }
    }

    fn owns_entry(&self, entry: &Entry) -> bool {
        entry.manager == self.manager
            && entry.operation == self.operation_name()
            && entry.status == self.status
    }
}

/// The manager name of a request without `fieldManager`: the User-Agent up to its first
/// `/`, as the apiserver derives it.
pub(crate) fn manager_from_user_agent(user_agent: Option<&str>) -> String {
    match user_agent.map(|ua| ua.split('/').next().unwrap_or_default().trim()) {
        Some(name) if !name.is_empty() => name.chars().take(128).collect(),
        _ => "unknown".into(),
    }
}

/// The leaf fields of `object` a manager can own, with their values. Lists and empty
/// objects are leaves.
fn leaves(object: &Value) -> BTreeMap<FieldPath, Value> {
    fn walk(value: &Value, path: &mut FieldPath, out: &mut BTreeMap<FieldPath, Value>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    let top = path.is_empty() && (key == "apiVersion" || key == "kind");
                    let server = path.len() == 1
                        && path[0] == "metadata"
                        && SERVER_METADATA.contains(&key.as_str());
                    if top || server {
                        continue;
                    }
                    path.push(key.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ if !path.is_empty() => {
                out.insert(path.clone(), value.clone());
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk(object, &mut Vec::new(), &mut out);
    out
}

/// `{"f:spec": {"f:x": {}}}` for the paths.
fn fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for key in path {
            let child = node
                .entry(format!("f:{key}"))
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = child else {
                break;
            };
            node = next;
        }
    }
    Value::Object(root)
}

/// The leaf paths of a `FieldsV1` value (`.` markers and unknown key forms are skipped).
fn paths_of(fields: &Value) -> BTreeSet<FieldPath> {
    fn walk(node: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let Some(map) = node.as_object() else {
            return;
        };
        let children: Vec<(&String, &Value)> =
            map.iter().filter(|(k, _)| k.starts_with("f:")).collect();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (key, child) in children {
            path.push(key[2..].to_string());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(fields, &mut Vec::new(), &mut out);
    out
}

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    status: bool,
    api_version: String,
    time: String,
    fields: BTreeSet<FieldPath>,
}

fn entries_of(object: &Value) -> Vec<Entry> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or_default().to_string(),
            status: e["subresource"] == "status",
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            fields: paths_of(&e["fieldsV1"]),
        })
        .collect()
}

fn render(entries: &[Entry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut entry = json!({
                    "manager": e.manager,
                    "operation": e.operation,
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1(&e.fields),
                });
                if e.status {
                    entry["subresource"] = "status".into();
                }
                entry
            })
            .collect(),
    )
}

fn dotted(path: &FieldPath) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

/// Sets `new`'s managedFields after `writer` turned `old` (`None`: a create) into `new`,
/// or refuses an apply that would change fields other managers own (409 Conflict).
pub(crate) fn record(
    old: Option<&Value>,
    new: &mut Value,
    writer: &Writer,
    group: &str,
    kind: &str,
    now: &str,
) -> Result<(), ApiError> {
    let before = old.map(leaves).unwrap_or_default();
    let after = leaves(new);
    let mut entries = old.map(entries_of).unwrap_or_default();
    let changed: BTreeSet<FieldPath> = after
        .iter()
        .filter(|(path, value)| before.get(*path) != Some(*value))
        .map(|(path, _)| path.clone())
        .collect();
    let removed: BTreeSet<FieldPath> = before
        .keys()
        .filter(|path| !after.contains_key(*path))
        .cloned()
        .collect();
    let owned_now: BTreeSet<FieldPath> = match &writer.operation {
        Operation::Update => changed.clone(),
        Operation::Apply { config, force } => {
            let applied = leaves(config);
            if !force {
                let conflicts: Vec<String> = applied
                    .iter()
                    .filter(|(path, value)| before.get(*path).is_some_and(|live| live != *value))
                    .flat_map(|(path, _)| {
                        entries
                            .iter()
                            .filter(|e| !writer.owns_entry(e) && e.fields.contains(path))
                            .map(move |e| {
                                format!("conflict with \"{}\": {}", e.manager, dotted(path))
                            })
                    })
                    .collect();
                if !conflicts.is_empty() {
                    return Err(ApiError::apply_conflict(group, kind, &conflicts));
                }
            }
            applied.into_keys().collect()
        }
    };
    for entry in entries.iter_mut() {
        entry.fields.retain(|p| !removed.contains(p));
        if !writer.owns_entry(entry) {
            entry.fields.retain(|p| !changed.contains(p));
        }
    }
    let api_version = new["apiVersion"].as_str().unwrap_or_default().to_string();
    match entries.iter_mut().find(|e| writer.owns_entry(e)) {
        Some(entry) => {
            match writer.operation {
                Operation::Update => entry.fields.extend(owned_now),
                Operation::Apply { .. } => entry.fields = owned_now,
            }
            entry.time = now.to_string();
            entry.api_version = api_version;
        }
        None => entries.push(Entry {
            manager: writer.manager.clone(),
            operation: writer.operation_name().into(),
            status: writer.status,
            api_version,
            time: now.to_string(),
            fields: owned_now,
        }),
    }
    entries.retain(|e| !e.fields.is_empty());
    new["metadata"]["managedFields"] = render(&entries);
    Ok(())
}

/// `new` without managedFields equals `old` without them: a write that changes nothing.
pub(crate) fn same_content(old: &Value, new: &Value) -> bool {
    let strip = |o: &Value| {
        let mut o = o.clone();
        if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        o
    };
    strip(old) == strip(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(manager: &str, operation: Operation) -> Writer {
        Writer {
            manager: manager.into(),
            operation,
            status: false,
        }
    }

    fn lease(holder: &str) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "l", "uid": "u", "resourceVersion": "1"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
    }

    #[test]
    fn create_owns_every_field_but_the_servers() {
        let mut object = lease("a");
        record(
            None,
            &mut object,
            &writer("kubectl", Operation::Update),
            "coordination.k8s.io",
            "leases",
            "t",
        )
        .unwrap();
        let entries = object["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["manager"], "kubectl");
        assert_eq!(entries[0]["operation"], "Update");
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:spec": {"f:holderIdentity": {}, "f:leaseDurationSeconds": {}}})
        );
    }

    #[test]
    fn an_update_takes_the_fields_it_changes() {
        let mut old = lease("a");
        record(
            None,
            &mut old,
            &writer("first", Operation::Update),
            "g",
            "k",
            "t",
        )
        .unwrap();
        let mut new = old.clone();
        new["spec"]["holderIdentity"] = "b".into();
        record(
            Some(&old),
            &mut new,
            &writer("second", Operation::Update),
            "g",
            "k",
            "t",
        )
        .unwrap();
        let entries = entries_of(&new);
        let first = entries.iter().find(|e| e.manager == "first").unwrap();
        let second = entries.iter().find(|e| e.manager == "second").unwrap();
        assert!(
            !first
                .fields
                .contains(&vec!["spec".to_string(), "holderIdentity".to_string()])
        );
        assert!(first.fields.contains(&vec![
            "spec".to_string(),
            "leaseDurationSeconds".to_string()
        ]));
        assert_eq!(second.fields.len(), 1);
    }

    #[test]
    fn apply_conflicts_with_another_managers_value_unless_forced() {
        let config = |holder: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": holder}});
        let mut old = lease("a");
        let apply =
            |m: &str, c: Value, force: bool| writer(m, Operation::Apply { config: c, force });
        record(
            None,
            &mut old,
            &apply("a", config("a"), false),
            "g",
            "leases",
            "t",
        )
        .unwrap();
        let mut new = lease("b");
        new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        let err = record(
            Some(&old),
            &mut new.clone(),
            &apply("b", config("b"), false),
            "g",
            "leases",
            "t",
        )
        .unwrap_err();
        assert_eq!(err.code, 409);
        assert!(
            err.message
                .contains("conflict with \"a\": .spec.holderIdentity"),
            "{}",
            err.message
        );
        // The same value is shared ownership, not a conflict.
        let mut same = old.clone();
        record(
            Some(&old),
            &mut same,
            &apply("b", config("a"), false),
            "g",
            "leases",
            "t",
        )
        .unwrap();
        // Forced, the field moves to the new manager.
        record(
            Some(&old),
            &mut new,
            &apply("b", config("b"), true),
            "g",
            "leases",
            "t",
        )
        .unwrap();
        let entries = entries_of(&new);
        assert!(entries.iter().all(|e| e.manager == "b"), "{entries:?}");
    }

    #[test]
    fn fields_v1_round_trips() {
        let paths: BTreeSet<FieldPath> = [
            vec!["spec".to_string(), "a".to_string()],
            vec!["spec".to_string(), "b".to_string(), "c".to_string()],
            vec![
                "metadata".to_string(),
                "labels".to_string(),
                "x/y".to_string(),
            ],
        ]
        .into();
        assert_eq!(paths_of(&fields_v1(&paths)), paths);
    }

    #[test]
    fn manager_names_come_from_the_user_agent() {
        assert_eq!(
            manager_from_user_agent(Some("kubectl/v1.30.0 (linux/amd64)")),
            "kubectl"
        );
        assert_eq!(manager_from_user_agent(None), "unknown");
        assert_eq!(manager_from_user_agent(Some("")), "unknown");
    }
}
