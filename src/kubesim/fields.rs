//! Field paths and field sets as server-side apply tracks them (structured-merge-diff's
//! `fieldpath`): a path is a list of steps spelled as in `FieldsV1` (`f:name` for a field,
//! `k:{"type":"Ready"}` for an item of a list keyed by `type`, `v:"x"` for a value of a
//! set, `i:3` for an item of a list that has no usable key), and a set holds the paths a
//! manager owns. What counts as an item, and how lists are keyed, comes from the type's
//! [`Shape`].

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::schema::{ListType, Shape};

/// One step: `f:...`, `k:...`, `v:...` or `i:...`.
pub(crate) type Step = String;
/// The steps from the object's root.
pub(crate) type FieldPath = Vec<Step>;
/// Owned paths; a path with owned descendants may itself be a member (FieldsV1's `.`).
pub(crate) type FieldSet = BTreeSet<FieldPath>;

/// The `k:` step of a list-map item: its key fields, sorted, as compact JSON.
fn key_step(item: &Value, keys: &[String]) -> Result<Step, String> {
    let Some(object) = item.as_object() else {
        return Err("an item of a list keyed by fields is not an object".into());
    };
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    let mut parts = Vec::with_capacity(sorted.len());
    for key in sorted {
        let value = object.get(key).filter(|v| !v.is_null()).ok_or_else(|| {
            format!("associative list with keys has an element that omits key field {key:?}")
        })?;
        parts.push(format!(
            "{}:{}",
            Value::String(key.clone()),
            serde_json::to_string(value).unwrap_or_default()
        ));
    }
    Ok(format!("k:{{{}}}", parts.join(",")))
}

/// The step naming item `i` of a list shaped `shape`.
fn step_of(item: &Value, i: usize, shape: &Shape) -> Result<Step, String> {
    match &shape.list {
        ListType::Map(keys) => key_step(item, keys),
        ListType::Set => Ok(format!(
            "v:{}",
            serde_json::to_string(item).unwrap_or_default()
        )),
        ListType::Atomic => Ok(format!("i:{i}")),
    }
}

/// The steps naming each item of `list` (of a list shaped `shape`), strictly: an item
/// without its keys, or two items with the same key, is an error naming the list, as the
/// apiserver refuses such an applied configuration.
pub(crate) fn item_steps(
    list: &[Value],
    shape: &Shape,
    at: &FieldPath,
) -> Result<Vec<Step>, String> {
    let mut steps = Vec::with_capacity(list.len());
    let mut seen = BTreeSet::new();
    for (i, item) in list.iter().enumerate() {
        let step =
            step_of(item, i, shape).map_err(|e| format!("{}: element {i}: {e}", dotted(at)))?;
        if !seen.insert(step.clone()) {
            return Err(format!(
                "{}: duplicate entries for key {}",
                dotted(at),
                shown(&step)
            ));
        }
        steps.push(step);
    }
    Ok(steps)
}

/// The steps of a stored list, leniently: an item that cannot be named by its key (a
/// merge patch may have stored one) is named by its index, so it never matches.
fn stored_steps(list: &[Value], shape: &Shape) -> Vec<Step> {
    let mut seen = BTreeSet::new();
    list.iter()
        .enumerate()
        .map(|(i, item)| match step_of(item, i, shape) {
            Ok(step) if seen.insert(step.clone()) => step,
            _ => format!("i:{i}"),
        })
        .collect()
}

/// A list's items by step (stored form, lenient).
pub(crate) fn items_by_step<'a>(list: &'a [Value], shape: &Shape) -> Vec<(Step, &'a Value)> {
    stored_steps(list, shape).into_iter().zip(list).collect()
}

/// Whether a list of this shape merges item by item.
pub(crate) fn granular_list(shape: &Shape) -> bool {
    shape.list != ListType::Atomic
}

/// Whether an object of this shape merges field by field.
pub(crate) fn granular_object(value: &Value, shape: &Shape) -> bool {
    !shape.atomic && value.as_object().is_some_and(|m| !m.is_empty())
}

/// The set an applied configuration claims: its leaves and the items of granular lists
/// (as members), as the apiserver records for `Apply`. Nulls, empty objects and empty
/// granular lists claim nothing (structured-merge-diff's `ToFieldSet`).
pub(crate) fn apply_set(config: &Value, shape: &Shape) -> Result<FieldSet, String> {
    fn walk(
        value: &Value,
        shape: &Shape,
        path: &mut FieldPath,
        out: &mut FieldSet,
    ) -> Result<(), String> {
        match value {
            Value::Null => {}
            Value::Object(map) if !shape.atomic => {
                for (key, child) in map {
                    path.push(format!("f:{key}"));
                    walk(child, shape.field(key), path, out)?;
                    path.pop();
                }
            }
            Value::Array(list) if granular_list(shape) => {
                let steps = item_steps(list, shape, path)?;
                for (step, item) in steps.into_iter().zip(list) {
                    path.push(step);
                    out.insert(path.clone());
                    if shape.list != ListType::Set {
                        walk(item, shape.item(), path, out)?;
                    }
                    path.pop();
                }
            }
            _ if !path.is_empty() => {
                out.insert(path.clone());
            }
            _ => {}
        }
        Ok(())
    }
    let mut out = FieldSet::new();
    walk(config, shape, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// What changed between two versions of an object. `added` and `removed` hold whole
/// subtrees (objects and list items as members too), `modified` the leaves whose value
/// changed.
#[derive(Debug, Default)]
pub(crate) struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

/// Every path of `value` under `path`, the node itself included.
fn subtree(value: &Value, shape: &Shape, path: &mut FieldPath, out: &mut FieldSet) {
    if !path.is_empty() {
        out.insert(path.clone());
    }
    match value {
        Value::Object(map) if granular_object(value, shape) => {
            for (key, child) in map {
                path.push(format!("f:{key}"));
                subtree(child, shape.field(key), path, out);
                path.pop();
            }
        }
        Value::Array(list) if granular_list(shape) => {
            for (step, item) in items_by_step(list, shape) {
                path.push(step);
                subtree(item, shape.item(), path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

pub(crate) fn compare(old: &Value, new: &Value, shape: &Shape) -> Comparison {
    fn walk(old: &Value, new: &Value, shape: &Shape, path: &mut FieldPath, out: &mut Comparison) {
        match (old, new) {
            (Value::Object(a), Value::Object(b))
                if granular_object(old, shape) || granular_object(new, shape) =>
            {
                for (key, before) in a {
                    path.push(format!("f:{key}"));
                    match b.get(key) {
                        Some(after) => walk(before, after, shape.field(key), path, out),
                        None => subtree(before, shape.field(key), path, &mut out.removed),
                    }
                    path.pop();
                }
                for (key, after) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                    path.push(format!("f:{key}"));
                    subtree(after, shape.field(key), path, &mut out.added);
                    path.pop();
                }
            }
            (Value::Array(a), Value::Array(b)) if granular_list(shape) => {
                let before: BTreeMap<Step, &Value> = items_by_step(a, shape).into_iter().collect();
                let after: BTreeMap<Step, &Value> = items_by_step(b, shape).into_iter().collect();
                for (step, item) in &before {
                    path.push(step.clone());
                    match after.get(step) {
                        Some(new_item) => walk(item, new_item, shape.item(), path, out),
                        None => subtree(item, shape.item(), path, &mut out.removed),
                    }
                    path.pop();
                }
                for (step, item) in after.iter().filter(|(s, _)| !before.contains_key(*s)) {
                    path.push(step.clone());
                    subtree(item, shape.item(), path, &mut out.added);
                    path.pop();
                }
            }
            _ if old == new => {}
            _ if path.is_empty() => {}
            _ => {
                // A leaf changed, or a value changed kind (object to scalar): the node is
                // modified, what hung below it before is gone and what hangs now is new.
                let mut gone = FieldSet::new();
                subtree(old, shape, path, &mut gone);
                let mut new_paths = FieldSet::new();
                subtree(new, shape, path, &mut new_paths);
                gone.remove(path.as_slice());
                new_paths.remove(path.as_slice());
                out.removed.extend(gone.difference(&new_paths).cloned());
                out.added.extend(new_paths);
                out.modified.insert(path.clone());
            }
        }
    }
    let mut out = Comparison::default();
    walk(old, new, shape, &mut Vec::new(), &mut out);
    out
}

/// `set` plus every named field (a struct member, not a map key or list item) on the way
/// to its paths, as structured-merge-diff's `EnsureNamedFieldsAreMembers`: owning
/// `.spec.a.b` counts as owning `.spec` and `.spec.a`, so pruning never removes an object
/// another manager still has fields in.
pub(crate) fn with_named_ancestors(set: &FieldSet, shape: &Shape) -> FieldSet {
    let mut out = set.clone();
    for path in set {
        let mut node = shape;
        for (depth, step) in path.iter().enumerate() {
            if depth + 1 == path.len() {
                break;
            }
            match step.strip_prefix("f:") {
                Some(key) => {
                    if node.is_named(key) {
                        out.insert(path[..=depth].to_vec());
                    }
                    node = node.field(key);
                }
                None => node = node.item(),
            }
        }
    }
    out
}

/// Where the item named `step` stands in `list`.
fn position(list: &Value, step: &str, shape: &Shape) -> Option<usize> {
    let list = list.as_array()?;
    items_by_step(list, shape)
        .iter()
        .position(|(s, _)| s == step)
}

/// Removes the node at `path` from `value` (nothing if it is not there).
pub(crate) fn remove_path(value: &mut Value, path: &[Step], shape: &Shape) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = value;
    let mut node_shape = shape;
    for step in parents {
        let (next, next_shape) = match step.strip_prefix("f:") {
            Some(key) => (node.get_mut(key), node_shape.field(key)),
            None => match position(node, step, node_shape) {
                Some(i) => (node.get_mut(i), node_shape.item()),
                None => return,
            },
        };
        let Some(next) = next else {
            return;
        };
        node = next;
        node_shape = next_shape;
    }
    match last.strip_prefix("f:") {
        Some(key) => {
            if let Some(map) = node.as_object_mut() {
                map.remove(key);
            }
        }
        None => {
            if let (Some(i), Some(list)) = (position(node, last, node_shape), node.as_array_mut()) {
                list.remove(i);
            }
        }
    }
}

/// `.spec.a`, `.status.conditions[type="Ready"].status`, `.metadata.finalizers[="x"]`:
/// a path as the apiserver prints it in conflict messages.
pub(crate) fn dotted(path: &[Step]) -> String {
    path.iter()
        .map(
            |step| match step.split_at(step.find(':').map_or(0, |i| i + 1)) {
                ("f:", key) => format!(".{key}"),
                ("k:", keys) => {
                    match serde_json::from_str::<serde_json::Map<String, Value>>(keys) {
                        Ok(map) => format!(
                            "[{}]",
                            map.iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                        Err(_) => format!("[{keys}]"),
                    }
                }
                ("v:", value) => format!("[={value}]"),
                ("i:", index) => format!("[{index}]"),
                _ => format!(".{step}"),
            },
        )
        .collect()
}

fn shown(step: &str) -> String {
    dotted(&[step.to_string()])
}

/// FieldsV1: `{"f:spec": {"f:x": {}}}`, with `".": {}` on members that have owned
/// descendants.
pub(crate) fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = serde_json::Map::new();
    for path in set {
        let mut node = &mut root;
        for step in path {
            let child = node
                .entry(step.clone())
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            let Value::Object(next) = child else {
                break;
            };
            node = next;
        }
    }
    // Members with children get their `.`.
    fn mark(node: &mut serde_json::Map<String, Value>, path: &mut FieldPath, set: &FieldSet) {
        for (step, child) in node.iter_mut() {
            let Value::Object(child) = child else {
                continue;
            };
            path.push(step.clone());
            if !child.is_empty() {
                if set.contains(path.as_slice()) {
                    child.insert(".".into(), Value::Object(serde_json::Map::new()));
                }
                mark(child, path, set);
            }
            path.pop();
        }
    }
    mark(&mut root, &mut Vec::new(), set);
    Value::Object(root)
}

/// The paths of a FieldsV1 value: nodes marked `.` and childless nodes.
pub(crate) fn from_fields_v1(fields: &Value) -> FieldSet {
    fn walk(node: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Some(map) = node.as_object() else {
            return;
        };
        let children: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| *k != ".").collect();
        if !path.is_empty() && (children.is_empty() || map.contains_key(".")) {
            out.insert(path.clone());
        }
        for (step, child) in children {
            path.push(step.clone());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(fields, &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conditions_shape() -> Shape {
        Shape::of_kind(Some(&json!({"properties": {"status": {"properties": {
            "conditions": {"type": "array", "x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"],
                           "items": {"type": "object"}}}}}})))
    }

    fn path(steps: &[&str]) -> FieldPath {
        steps.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn apply_sets_name_list_items_by_key_and_set_values_by_value() {
        let config = json!({"metadata": {"finalizers": ["x"]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let set = apply_set(&config, &conditions_shape()).unwrap();
        let ready = r#"k:{"type":"Ready"}"#;
        assert!(set.contains(&path(&["f:metadata", "f:finalizers", r#"v:"x""#])));
        assert!(set.contains(&path(&["f:status", "f:conditions", ready])));
        assert!(set.contains(&path(&["f:status", "f:conditions", ready, "f:status"])));
        assert_eq!(
            to_fields_v1(&set)["f:status"]["f:conditions"][ready],
            json!({".": {}, "f:status": {}, "f:type": {}})
        );
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
    }

    #[test]
    fn applied_lists_need_keys_and_no_duplicates() {
        let shape = conditions_shape();
        let missing = json!({"status": {"conditions": [{"status": "True"}]}});
        let err = apply_set(&missing, &shape).unwrap_err();
        assert!(
            err.contains(".status.conditions: element 0") && err.contains("\"type\""),
            "{err}"
        );
        let twice = json!({"status": {"conditions": [{"type": "A"}, {"type": "A"}]}});
        let err = apply_set(&twice, &shape).unwrap_err();
        assert!(
            err.contains(r#"duplicate entries for key [type="A"]"#),
            "{err}"
        );
    }

    #[test]
    fn compare_sees_items_by_key() {
        let shape = conditions_shape();
        let old = json!({"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]}});
        let new = json!({"status": {"conditions": [{"type": "B", "status": "False"}, {"type": "C", "status": "True"}]}});
        let c = compare(&old, &new, &shape);
        let item = |t: &str| format!(r#"k:{{"type":"{t}"}}"#);
        assert!(
            c.removed
                .contains(&path(&["f:status", "f:conditions", &item("A")]))
        );
        assert!(
            c.added
                .contains(&path(&["f:status", "f:conditions", &item("C"), "f:status"]))
        );
        assert_eq!(
            c.modified,
            [path(&["f:status", "f:conditions", &item("B"), "f:status"])].into()
        );
    }

    #[test]
    fn remove_path_takes_out_one_item() {
        let shape = conditions_shape();
        let mut obj = json!({"metadata": {"finalizers": ["a", "b"]},
            "status": {"conditions": [{"type": "A"}, {"type": "B"}]}});
        remove_path(
            &mut obj,
            &path(&["f:metadata", "f:finalizers", r#"v:"a""#]),
            &shape,
        );
        remove_path(
            &mut obj,
            &path(&["f:status", "f:conditions", r#"k:{"type":"B"}"#]),
            &shape,
        );
        assert_eq!(
            obj,
            json!({"metadata": {"finalizers": ["b"]},
            "status": {"conditions": [{"type": "A"}]}})
        );
        assert_eq!(
            dotted(&path(&[
                "f:status",
                "f:conditions",
                r#"k:{"type":"B"}"#,
                "f:status"
            ])),
            r#".status.conditions[type="B"].status"#
        );
    }
}
