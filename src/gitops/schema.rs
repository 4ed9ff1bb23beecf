//! The OpenAPI limits of a generated CRD (`type`, `required`, `enum`, `minLength`/`maxLength`
//! in characters, `minItems`/`maxItems`, `minimum`/`maximum`, `pattern`, set-typed lists,
//! unknown fields), checked against a document read from a file, so `plan` refuses what
//! `kubectl apply` would be refused. The CEL rules are repeated by
//! [`crate::reconcile::plan::validate`], not evaluated here.
//!
//! The schema is the one `wecom-acq crd` prints, so the checks move with the CRD types.

use serde_json::Value;

/// One violated limit, with the field path as kubectl prints it (`spec.range.userList[2]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    pub path: String,
    pub message: String,
}

/// The `openAPIV3Schema` of the first version of a CRD, as JSON.
pub fn open_api_schema(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

/// Every violation of `schema` by `value`. `metadata` is not checked here (its schema is
/// only `type: object`); unknown fields are violations, as with kubectl's strict field
/// validation.
pub fn check(schema: &Value, value: &Value) -> Vec<SchemaViolation> {
    let mut out = Vec::new();
    walk(schema, value, "", &mut out);
    out
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn walk(schema: &Value, value: &Value, path: &str, out: &mut Vec<SchemaViolation>) {
    let mut fail = |message: String| {
        out.push(SchemaViolation {
            path: if path.is_empty() {
                "(document)".into()
            } else {
                path.to_string()
            },
            message,
        })
    };
    if value.is_null() {
        // `nullable: true` fields and absent optional fields read the same way.
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            fail("must not be null".into());
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let fits = actual == expected || (expected == "number" && actual == "integer");
        if !fits {
            fail(format!("must be of type {expected}, not {actual}"));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed.iter().map(Value::to_string).collect();
        fail(format!(
            "unsupported value {value}: must be one of {}",
            names.join(", ")
        ));
    }
    match value {
        Value::String(text) => {
            let chars = text.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && chars > max
            {
                fail(format!("must be at most {max} characters, it has {chars}"));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && chars < min
            {
                fail(format!("must be at least {min} characters, it has {chars}"));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(pattern) {
                    Ok(re) if !re.is_match(text) => {
                        fail(format!("{text:?} does not match the pattern {pattern:?}"))
                    }
                    Ok(_) => {}
                    Err(_) => fail(format!("the CRD's pattern {pattern:?} cannot be compiled")),
                }
            }
        }
        Value::Number(number) => {
            let n = number.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                fail(format!("must be at least {min}, it is {number}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && n > max
            {
                fail(format!("must be at most {max}, it is {number}"));
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && len > max
            {
                fail(format!("must have at most {max} items, it has {len}"));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && len < min
            {
                fail(format!("must have at least {min} items, it has {len}"));
            }
            if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set") {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        out.push(SchemaViolation {
                            path: format!("{path}[{i}]"),
                            message: format!("duplicate value {item}: the list is a set"),
                        });
                    }
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !fields.contains_key(name) {
                        out.push(SchemaViolation {
                            path: child(path, name),
                            message: "is required".into(),
                        });
                    }
                }
            }
            let free = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let extra = schema.get("additionalProperties").filter(|v| v.is_object());
            for (name, field) in fields {
                // The apiserver adds these to every CRD's root schema itself.
                if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str()) {
                    continue;
                }
                let field_path = child(path, name);
                match properties.and_then(|p| p.get(name)) {
                    Some(field_schema) => walk(field_schema, field, &field_path, out),
                    None => match extra {
                        Some(values) => walk(values, field, &field_path, out),
                        None if free || properties.is_none() => {}
                        None => {
                            let mut known: Vec<&str> = properties
                                .map(|p| p.keys().map(String::as_str).collect())
                                .unwrap_or_default();
                            known.sort_unstable();
                            out.push(SchemaViolation {
                                path: field_path,
                                message: format!(
                                    "unknown field (known here: {})",
                                    known.join(", ")
                                ),
                            });
                        }
                    },
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AcquisitionLink;
    use kube::CustomResourceExt;
    use serde_json::json;

    fn link(spec: Value) -> Value {
        json!({"apiVersion": "acquisition.wecom.dev/v1alpha1", "kind": "AcquisitionLink",
               "metadata": {"name": "x"}, "spec": spec})
    }

    fn paths(spec: Value) -> Vec<String> {
        let schema = open_api_schema(&AcquisitionLink::crd());
        check(&schema, &link(spec))
            .into_iter()
            .map(|v| format!("{}: {}", v.path, v.message))
            .collect()
    }

    #[test]
    fn a_valid_link_passes() {
        let found = paths(json!({"appRef": {"name": "app"}, "linkName": "销售咨询",
            "range": {"userList": ["a"], "departmentList": [1]}, "deletionPolicy": "Orphan"}));
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn limits_are_reported_with_their_field_path() {
        let found = paths(
            json!({"appRef": {"name": "app"}, "linkName": "一".repeat(31),
            "range": {"userList": ["a", "a"], "departmentList": [0]},
            "deletionPolicy": "Keep", "skipVerify": "yes", "colour": 1}),
        );
        let joined = found.join("\n");
        for expected in [
            "spec.linkName: must be at most 30 characters, it has 31",
            "spec.range.userList[1]: duplicate value",
            "spec.range.departmentList[0]: must be at least 1",
            "spec.deletionPolicy: unsupported value \"Keep\"",
            "spec.skipVerify: must be of type boolean, not string",
            "spec.colour: unknown field",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in\n{joined}"
            );
        }
    }

    #[test]
    fn missing_required_fields_are_named() {
        let found = paths(json!({"linkName": "x"}));
        assert!(
            found.contains(&"spec.appRef: is required".to_string()),
            "{found:?}"
        );
        assert!(
            found.contains(&"spec.range: is required".to_string()),
            "{found:?}"
        );
    }

    #[test]
    fn pattern_is_enforced_on_the_app() {
        let schema = open_api_schema(&crate::api::WeComApp::crd());
        let app = json!({"apiVersion": "acquisition.wecom.dev/v1alpha1", "kind": "WeComApp",
            "metadata": {"name": "a"}, "spec": {"corpId": "ww1",
            "secretRef": {"name": "s", "key": "k"}, "apiBaseUrl": "ftp://x", "requestsPerMinute": 0}});
        let found: Vec<String> = check(&schema, &app).into_iter().map(|v| v.path).collect();
        assert_eq!(found, vec!["spec.apiBaseUrl", "spec.requestsPerMinute"]);
    }
}
