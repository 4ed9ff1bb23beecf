//! `metadata.managedFields` as the apiserver keeps it: which field manager last set which
//! fields, per operation (`Update` for create, update and the three patch kinds, `Apply`
//! for server-side apply) and subresource, in the `FieldsV1` form, with list items named
//! as the type's schema keys them (`k:{"type":"Ready"}`, `v:"x"`; see `fields`).
//! Server-side apply's conflicts (409: changing a value another manager owns, without
//! `force`) and its pruning (removing what a manager stopped applying, unless another
//! manager owns it) come from here.
//!
//! Simplified where no client of this project can tell: entry times move only when the
//! object or the manager's fields change; a pruned object or list item goes whole (the
//! apiserver keeps descendants nobody owned).

use serde_json::{Value, json};

use super::fields::{self, FieldPath, FieldSet};
use super::resources::ResourceType;
use super::status::ApiError;

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

/// Fields the server sets, which no manager owns: `apiVersion`, `kind`, `metadata` itself
/// and its server-set members.
fn server_field(path: &FieldPath) -> bool {
    match path.first().map(String::as_str) {
        Some("f:apiVersion" | "f:kind") => true,
        Some("f:metadata") => path.get(1).is_none_or(|step| {
            step.strip_prefix("f:")
                .is_some_and(|key| SERVER_METADATA.contains(&key))
        }),
        _ => false,
    }
}

/// The part of `set` a writer can own: no server fields, and on a type with a status
/// subresource, only status through `/status` and nothing of status through the main
/// resource (the apiserver resets the other part).
fn ownable(set: FieldSet, rt: &ResourceType, writer: &Writer) -> FieldSet {
    set.into_iter()
        .filter(|path| !server_field(path))
        .filter(|path| {
            !rt.status_subresource || path.first().is_some_and(|s| s == "f:status") == writer.status
        })
        .collect()
}

/// What an applied configuration claims, or the apiserver's refusal of a configuration
/// whose keyed lists cannot be merged (an item without its key, a key twice).
pub(crate) fn applied_fields(
    config: &Value,
    rt: &ResourceType,
    writer: &Writer,
) -> Result<FieldSet, ApiError> {
    let set = fields::apply_set(config, &rt.shape).map_err(|e| {
        ApiError::internal(format!(
            "failed to create typed patch object ({}, Kind={}): {e}",
            rt.api_version(),
            rt.kind
        ))
    })?;
    Ok(ownable(set, rt, writer))
}

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    status: bool,
    api_version: String,
    time: String,
    fields: FieldSet,
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
            fields: fields::from_fields_v1(&e["fieldsV1"]),
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
                    "fieldsV1": fields::to_fields_v1(&e.fields),
                });
                if e.status {
                    entry["subresource"] = "status".into();
                }
                entry
            })
            .collect(),
    )
}

/// Server-side apply's pruning: removes from `merged` what `writer` applied last time
/// (its entry in `old`) and no longer applies (`applied`), unless another manager owns
/// it, or something below it.
pub(crate) fn prune(
    merged: &mut Value,
    old: &Value,
    writer: &Writer,
    applied: &FieldSet,
    rt: &ResourceType,
) {
    let entries = entries_of(old);
    let Some(last) = entries.iter().find(|e| writer.owns_entry(e)) else {
        return;
    };
    let shape = &rt.shape;
    let mut kept = fields::with_named_ancestors(applied, shape);
    for other in entries.iter().filter(|e| !writer.owns_entry(e)) {
        kept.extend(fields::with_named_ancestors(&other.fields, shape));
    }
    let mut removed: Vec<&FieldPath> = Vec::new();
    let last = fields::with_named_ancestors(&last.fields, shape);
    // Sorted, so a parent comes before its descendants and takes them along.
    for path in last.difference(&kept) {
        if server_field(path) || removed.iter().any(|r| path.starts_with(r)) {
            continue;
        }
        fields::remove_path(merged, path, shape);
        removed.push(path);
    }
}

/// Sets `new`'s managedFields after `writer` turned `old` (`None`: a create) into `new`,
/// or refuses an apply that would change fields other managers own (409 Conflict).
pub(crate) fn record(
    old: Option<&Value>,
    new: &mut Value,
    writer: &Writer,
    rt: &ResourceType,
    now: &str,
) -> Result<(), ApiError> {
    let shape = &rt.shape;
    let empty = Value::Object(Default::default());
    let compared = fields::compare(old.unwrap_or(&empty), new, shape);
    let mut changed: FieldSet = compared
        .modified
        .union(&compared.added)
        .filter(|path| !server_field(path))
        .cloned()
        .collect();
    if !rt.custom {
        // A built-in kind's top-level structs (spec, status) exist, empty, before any
        // write: nobody owns them as such.
        changed.retain(|path| {
            !(path.len() == 1
                && new
                    .get(path[0].trim_start_matches("f:"))
                    .is_some_and(Value::is_object))
        });
    }
    let mut entries = old.map(entries_of).unwrap_or_default();
    let owned_now = match &writer.operation {
        Operation::Update => changed.clone(),
        Operation::Apply { config, force } => {
            let applied = applied_fields(config, rt, writer)?;
            if !force {
                let conflicts: Vec<String> = entries
                    .iter()
                    .filter(|e| !writer.owns_entry(e))
                    .flat_map(|e| {
                        let using = if e.operation == "Update" {
                            format!(" using {}", e.api_version)
                        } else {
                            String::new()
                        };
                        e.fields.intersection(&changed).map(move |path| {
                            format!(
                                "conflict with \"{}\"{using}: {}",
                                e.manager,
                                fields::dotted(path)
                            )
                        })
                    })
                    .collect();
                if !conflicts.is_empty() {
                    return Err(ApiError::apply_conflict(&rt.group, &rt.plural, &conflicts));
                }
            }
            applied
        }
    };
    for entry in entries.iter_mut().filter(|e| !writer.owns_entry(e)) {
        entry.fields.retain(|p| !changed.contains(p));
    }
    let api_version = new["apiVersion"].as_str().unwrap_or_default().to_string();
    match entries.iter_mut().find(|e| writer.owns_entry(e)) {
        Some(entry) => {
            let before = entry.fields.clone();
            match writer.operation {
                Operation::Update => entry.fields.extend(owned_now),
                Operation::Apply { .. } => entry.fields = owned_now,
            }
            if !changed.is_empty() || entry.fields != before {
                entry.time = now.to_string();
                entry.api_version = api_version;
            }
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
    for entry in entries.iter_mut() {
        entry.fields.retain(|p| !compared.removed.contains(p));
    }
    entries.retain(|e| !e.fields.is_empty());
    if entries.is_empty() {
        if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
    } else {
        new["metadata"]["managedFields"] = render(&entries);
    }
    Ok(())
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

    fn leases() -> ResourceType {
        super::super::resources::builtin_types()
            .into_iter()
            .find(|t| t.plural == "leases")
            .unwrap()
    }

    fn lease(holder: &str) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "l", "uid": "u", "resourceVersion": "1"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
    }

    fn paths(entry: &Entry) -> Vec<String> {
        entry.fields.iter().map(|p| fields::dotted(p)).collect()
    }

    #[test]
    fn create_owns_every_field_but_the_servers() {
        let mut object = lease("a");
        record(
            None,
            &mut object,
            &writer("kubectl", Operation::Update),
            &leases(),
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
            &leases(),
            "t",
        )
        .unwrap();
        let mut new = old.clone();
        new["spec"]["holderIdentity"] = "b".into();
        record(
            Some(&old),
            &mut new,
            &writer("second", Operation::Update),
            &leases(),
            "t",
        )
        .unwrap();
        let entries = entries_of(&new);
        let first = entries.iter().find(|e| e.manager == "first").unwrap();
        let second = entries.iter().find(|e| e.manager == "second").unwrap();
        assert_eq!(paths(first), [".spec.leaseDurationSeconds"]);
        assert_eq!(paths(second), [".spec.holderIdentity"]);
    }

    #[test]
    fn apply_conflicts_with_another_managers_value_unless_forced() {
        let config = |holder: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": holder}});
        let rt = leases();
        let mut old = lease("a");
        let apply =
            |m: &str, c: Value, force: bool| writer(m, Operation::Apply { config: c, force });
        record(None, &mut old, &apply("a", config("a"), false), &rt, "t").unwrap();
        let mut new = lease("b");
        new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        let err = record(
            Some(&old),
            &mut new.clone(),
            &apply("b", config("b"), false),
            &rt,
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
            &rt,
            "t",
        )
        .unwrap();
        assert_eq!(entries_of(&same).len(), 2);
        // Forced, the field moves to the new manager.
        record(
            Some(&old),
            &mut new,
            &apply("b", config("b"), true),
            &rt,
            "t",
        )
        .unwrap();
        let entries = entries_of(&new);
        assert!(entries.iter().all(|e| e.manager == "b"), "{entries:?}");
    }

    #[test]
    fn an_update_manager_is_named_with_its_api_version_in_a_conflict() {
        let rt = leases();
        let mut old = lease("a");
        record(None, &mut old, &writer("kcm", Operation::Update), &rt, "t").unwrap();
        let mut new = lease("b");
        new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        let config = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                            "spec": {"holderIdentity": "b"}});
        let err = record(
            Some(&old),
            &mut new,
            &writer(
                "me",
                Operation::Apply {
                    config,
                    force: false,
                },
            ),
            &rt,
            "t",
        )
        .unwrap_err();
        assert!(
            err.message.contains(
                "conflict with \"kcm\" using coordination.k8s.io/v1: .spec.holderIdentity"
            ),
            "{}",
            err.message
        );
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
