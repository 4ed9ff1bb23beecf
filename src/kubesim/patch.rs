//! The four PATCH bodies the apiserver accepts, applied to a JSON object: JSON merge patch
//! (RFC 7386), JSON patch (RFC 6902, `test` included), a strategic merge patch reduced to
//! what matters on the kinds served here, and server-side apply as a field-manager-aware
//! merge (its conflicts come from `managed`).

use serde_json::{Map, Value};

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

/// Server-side apply, simplified: fields this manager applied last time and omits now
/// are removed, then the applied configuration is merged in (maps recursively, lists
/// and scalars replaced whole). Conflicts with other managers' fields are checked
/// afterwards against managedFields (`managed::record`), which refuses the whole write.
pub(crate) fn apply(live: &mut Value, applied: &Value, previously_applied: Option<&Value>) {
    if let Some(previous) = previously_applied {
        remove_dropped(live, previous, applied);
    }
    merge_applied(live, applied);
}

fn remove_dropped(live: &mut Value, previous: &Value, applied: &Value) {
    let (Some(live), Some(previous)) = (live.as_object_mut(), previous.as_object()) else {
        return;
    };
    let empty = Map::new();
    let applied = applied.as_object().unwrap_or(&empty);
    for (key, old) in previous {
        match applied.get(key) {
            None => {
                live.remove(key);
            }
            Some(new) if old.is_object() && new.is_object() => {
                if let Some(child) = live.get_mut(key) {
                    remove_dropped(child, old, new);
                }
            }
            Some(_) => {}
        }
    }
}

fn merge_applied(live: &mut Value, applied: &Value) {
    match (live.as_object_mut(), applied.as_object()) {
        (Some(live), Some(applied)) => {
            for (key, value) in applied {
                if value.is_null() {
                    live.remove(key);
                    continue;
                }
                match live.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge_applied(existing, value)
                    }
                    _ => {
                        live.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        _ => *live = applied.clone(),
    }
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

    #[test]
    fn apply_removes_fields_the_manager_stopped_applying() {
        let mut live = json!({"spec": {"a": 1, "b": 2, "other": 3}});
        let first = json!({"spec": {"a": 1, "b": 2}});
        let second = json!({"spec": {"a": 5}});
        apply(&mut live, &second, Some(&first));
        assert_eq!(live, json!({"spec": {"a": 5, "other": 3}}));
    }
}
