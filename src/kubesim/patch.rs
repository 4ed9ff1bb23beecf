//! The four PATCH bodies the apiserver accepts, applied to a JSON object: JSON merge patch
//! (RFC 7386), JSON patch (RFC 6902, `test` included), a strategic merge patch reduced to
//! what matters on the kinds served here, and server-side apply as a field-manager-aware
//! merge (its conflicts come from `managed`).

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::fields;
use super::schema::Shape;
use super::status::ApiError;

/// The `Content-Type` of a PATCH request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902, all or nothing. `test` follows the apiserver's JSON-patch library: a
/// missing member whose parent exists reads as `null`, so testing it for `null` passes.
pub(crate) fn json_patch(target: &mut Value, body: &[u8]) -> Result<(), ApiError> {
    let ops: Vec<json_patch::PatchOperation> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    let mut work = target.clone();
    for op in &ops {
        if let json_patch::PatchOperation::Test(test) = op {
            let path = test.path.as_str();
            let found = match work.pointer(path) {
                Some(v) => v.clone(),
                None => {
                    let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                    if work.pointer(parent).is_none() {
                        return Err(ApiError::unprocessable(format!(
                            "test operation does not apply: is missing path: {path}"
                        )));
                    }
                    Value::Null
                }
            };
            if found != test.value {
                return Err(ApiError::unprocessable(format!(
                    "testing value {path} failed: test failed"
                )));
            }
            continue;
        }
        json_patch::patch(&mut work, std::slice::from_ref(op)).map_err(|e| {
            ApiError::unprocessable(format!("the JSON patch could not be applied: {e}"))
        })?;
    }
    *target = work;
    Ok(())
}

/// A strategic merge patch for the built-in kinds served here: a merge patch, except
/// that `metadata.finalizers` merges as a set (its patch strategy is `merge`) and
/// `$deleteFromPrimitiveList/finalizers` removes entries. Other `$` directives are dropped.
pub(crate) fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let mut patch = patch.clone();
    let mut keep: Vec<Value> = target
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let meta_patch = patch.get_mut("metadata").and_then(Value::as_object_mut);
    let mut touched = false;
    if let Some(meta) = meta_patch {
        if let Some(Value::Array(added)) = meta.remove("finalizers") {
            touched = true;
            for f in added {
                if !keep.contains(&f) {
                    keep.push(f);
                }
            }
        }
        if let Some(Value::Array(removed)) = meta.remove("$deleteFromPrimitiveList/finalizers") {
            touched = true;
            keep.retain(|f| !removed.contains(f));
        }
    }
    strip_directives(&mut patch);
    json_patch::merge(target, &patch);
    if touched && let Some(meta) = target.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("finalizers".into(), Value::Array(keep));
    }
}

fn strip_directives(value: &mut Value) {
    if let Some(map) = value.as_object_mut() {
        map.retain(|k, _| !k.starts_with('$'));
        for v in map.values_mut() {
            strip_directives(v);
        }
    }
}

/// Server-side apply's merge of an applied configuration into the live object, per the
/// type's shape: objects merge field by field, `set` lists are united, `map` lists merge
/// item by item on their keys (the live order kept, new items where the configuration
/// puts them), `atomic` lists and scalars are replaced; a null removes the field. What the
/// manager stopped applying is pruned afterwards (`managed::prune`); the configuration's
/// keyed lists have been checked by then (`managed::applied_fields`).
pub(crate) fn apply(live: &mut Value, applied: &Value, shape: &Shape) {
    if !shape.atomic
        && let (Some(live_map), Some(applied_map)) = (live.as_object_mut(), applied.as_object())
    {
        for (key, value) in applied_map {
            if value.is_null() {
                live_map.remove(key);
                continue;
            }
            match live_map.get_mut(key) {
                Some(existing) => apply(existing, value, shape.field(key)),
                None => {
                    live_map.insert(key.clone(), value.clone());
                }
            }
        }
        return;
    }
    if fields::granular_list(shape)
        && let (Some(live_list), Some(applied_list)) = (live.as_array(), applied.as_array())
    {
        *live = Value::Array(merge_lists(live_list, applied_list, shape));
        return;
    }
    *live = applied.clone();
}

/// structured-merge-diff's list merge: walk both lists; an item in both is merged where
/// they meet, an item in one only is kept where it stands, and a live item the
/// configuration places later waits for it.
fn merge_lists(live: &[Value], applied: &[Value], shape: &Shape) -> Vec<Value> {
    let live = fields::items_by_step(live, shape);
    let applied = fields::items_by_step(applied, shape);
    let live_by: HashMap<&str, &Value> = live.iter().map(|(s, v)| (s.as_str(), *v)).collect();
    let applied_steps: HashSet<&str> = applied.iter().map(|(s, _)| s.as_str()).collect();
    let merged = |step: &str, config: &Value| match live_by.get(step) {
        Some(current) => {
            let mut item = (*current).clone();
            apply(&mut item, config, shape.item());
            item
        }
        None => config.clone(),
    };
    let mut out = Vec::with_capacity(live.len() + applied.len());
    let (mut i, mut j) = (0, 0);
    while i < live.len() || j < applied.len() {
        match (live.get(i), applied.get(j)) {
            (Some((l, _)), Some((a, config))) if l == a => {
                out.push(merged(a, config));
                i += 1;
                j += 1;
            }
            (Some((l, item)), _) if !applied_steps.contains(l.as_str()) => {
                out.push((*item).clone());
                i += 1;
            }
            (Some(_), Some((a, config))) if !live_by.contains_key(a.as_str()) => {
                out.push((*config).clone());
                j += 1;
            }
            (Some(_), _) => i += 1,
            (None, Some((a, config))) => {
                out.push(merged(a, config));
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_test_treats_missing_member_as_null_like_the_apiserver() {
        let mut obj = json!({"metadata": {"name": "a"}});
        let add_first = br#"[{"op":"test","path":"/metadata/finalizers","value":null},
            {"op":"add","path":"/metadata/finalizers","value":["f"]}]"#;
        json_patch(&mut obj, add_first).unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["f"]));
        let err = json_patch(&mut obj, add_first).unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            obj["metadata"]["finalizers"],
            json!(["f"]),
            "failed patch changes nothing"
        );
        let missing_parent = br#"[{"op":"test","path":"/spec/x","value":null}]"#;
        assert_eq!(json_patch(&mut obj, missing_parent).unwrap_err().code, 422);
        assert_eq!(json_patch(&mut obj, b"{").unwrap_err().code, 400);
    }

    #[test]
    fn strategic_merge_unions_finalizers() {
        let mut obj = json!({"metadata": {"finalizers": ["a"]}, "data": {"k": "1"}});
        strategic_merge_patch(
            &mut obj,
            &json!({"metadata": {"finalizers": ["b", "a"]}, "data": {"j": "2"}}),
        );
        assert_eq!(obj["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(obj["data"], json!({"k": "1", "j": "2"}));
        strategic_merge_patch(
            &mut obj,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(obj["metadata"]["finalizers"], json!(["b"]));
    }

    fn conditions() -> Shape {
        Shape::of_kind(Some(&json!({"properties": {"status": {"properties": {
            "conditions": {"type": "array", "x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"],
                           "items": {"type": "object"}},
            "plain": {"type": "array"}}}}})))
    }

    #[test]
    fn apply_merges_lists_by_their_type() {
        let shape = conditions();
        let mut live = json!({"metadata": {"finalizers": ["a", "b"]},
            "status": {"conditions": [{"type": "A", "status": "True", "reason": "r"},
                                      {"type": "B", "status": "True"}],
                       "plain": [1, 2]}});
        let applied = json!({"metadata": {"finalizers": ["c", "a"]},
            "status": {"conditions": [{"type": "C", "status": "True"},
                                      {"type": "A", "status": "False"}],
                       "plain": [3]}});
        apply(&mut live, &applied, &shape);
        assert_eq!(live["metadata"]["finalizers"], json!(["c", "a", "b"]));
        assert_eq!(
            live["status"]["conditions"],
            json!([{"type": "C", "status": "True"},
                   {"type": "A", "status": "False", "reason": "r"},
                   {"type": "B", "status": "True"}])
        );
        assert_eq!(live["status"]["plain"], json!([3]), "atomic: replaced");
    }
}
