//! The apiserver's built-in checks on object metadata (names, labels, annotations,
//! finalizers) and on the few built-in kinds the controller writes. Admission (webhooks,
//! CEL `x-kubernetes-validations`) and OpenAPI schema validation are not emulated.

use serde_json::Value;

use super::status::FieldError;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub(crate) fn dns_label(name: &str) -> Result<(), String> {
    if name.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    let ok = !name.is_empty()
        && name.chars().all(|c| is_lower_alnum(c) || c == '-')
        && name.starts_with(is_lower_alnum)
        && name.ends_with(is_lower_alnum);
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into())
    }
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub(crate) fn dns_subdomain(name: &str) -> Result<(), String> {
    if name.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    let ok = !name.is_empty()
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| is_lower_alnum(c) || c == '-')
                && part.starts_with(is_lower_alnum)
                && part.ends_with(is_lower_alnum)
        });
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into())
    }
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters.
fn name_part(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !name.is_empty()
        && name.len() <= QUALIFIED_NAME_MAX
        && name
            .chars()
            .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        && name.starts_with(alnum)
        && name.ends_with(alnum)
}

/// A label key, annotation key or finalizer: `[prefix/]name`, prefix a DNS subdomain.
pub(crate) fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        dns_subdomain(prefix).map_err(|why| format!("prefix part {why}"))?;
    }
    if name_part(name) {
        Ok(())
    } else {
        Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, at most 63 characters".into())
    }
}

/// A label value: empty, or a name part of at most 63 characters.
pub(crate) fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= LABEL_VALUE_MAX && name_part(value)) {
        Ok(())
    } else {
        Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, at most 63 characters".into())
    }
}

/// How a kind's `metadata.name` is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    Subdomain,
    Label,
}

/// Checks the metadata every kind shares; returns every violation, not just the first.
pub(crate) fn object_meta(meta: &Value, rule: NameRule) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    let checked = match rule {
        NameRule::Subdomain => dns_subdomain(name),
        NameRule::Label => dns_label(name),
    };
    if let Err(why) = checked {
        errors.push(FieldError::invalid("metadata.name", name, why));
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (key, value) in labels {
            if let Err(why) = qualified_name(key) {
                errors.push(FieldError::invalid("metadata.labels", key, why));
            }
            match value.as_str() {
                Some(v) => {
                    if let Err(why) = label_value(v) {
                        errors.push(FieldError::invalid("metadata.labels", v, why));
                    }
                }
                None => errors.push(FieldError::invalid(
                    "metadata.labels",
                    &value.to_string(),
                    "label values must be strings",
                )),
            }
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (key, value) in annotations {
            if let Err(why) = qualified_name(&key.to_lowercase()) {
                errors.push(FieldError::invalid("metadata.annotations", key, why));
            }
            total += key.len() + value.as_str().map_or(0, str::len);
        }
        if total > ANNOTATIONS_MAX_BYTES {
            errors.push(FieldError::too_long(
                "metadata.annotations",
                ANNOTATIONS_MAX_BYTES,
            ));
        }
    }
    if let Some(finalizers) = meta.get("finalizers").and_then(Value::as_array) {
        for (i, f) in finalizers.iter().enumerate() {
            let f = f.as_str().unwrap_or_default();
            if let Err(why) = qualified_name(f) {
                errors.push(FieldError::invalid(
                    &format!("metadata.finalizers[{i}]"),
                    f,
                    why,
                ));
            }
        }
    }
    errors
}

const EVENT_NOTE_MAX: usize = 1024;
const EVENT_FIELD_MAX: usize = 128;

/// events.k8s.io/v1 Event rules (given in its own field names) that a create or update
/// through that API must satisfy.
pub(crate) fn events_v1(event: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let text = |field: &str| event.get(field).and_then(Value::as_str).unwrap_or_default();
    if text("eventTime").is_empty() {
        errors.push(FieldError::required("eventTime", ""));
    }
    for field in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        let value = text(field);
        if value.is_empty() {
            errors.push(FieldError::required(field, ""));
        } else if value.len() > EVENT_FIELD_MAX {
            errors.push(FieldError::too_long(field, EVENT_FIELD_MAX));
        }
    }
    let kind = text("type");
    if kind != "Normal" && kind != "Warning" {
        errors.push(FieldError::unsupported(
            "type",
            kind,
            &["Normal", "Warning"],
        ));
    }
    if text("note").len() > EVENT_NOTE_MAX {
        errors.push(FieldError::too_long("note", EVENT_NOTE_MAX));
    }
    let namespace = event
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let regarding_ns = event
        .pointer("/regarding/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !regarding_ns.is_empty() && regarding_ns != namespace {
        errors.push(FieldError::invalid(
            "regarding.namespace",
            regarding_ns,
            "does not match event.namespace",
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_rfc1123() {
        assert!(dns_subdomain("web-1.example").is_ok());
        for bad in ["", "Web", "-a", "a-", "a..b", "a_b", &"a".repeat(254)] {
            assert!(dns_subdomain(bad).is_err(), "{bad}");
        }
        assert!(dns_label("team-a").is_ok());
        assert!(dns_label("a.b").is_err());
    }

    #[test]
    fn metadata_reports_every_bad_field() {
        let meta = json!({"name": "Bad_Name", "labels": {"ok": "x", "bad key": "v"},
            "finalizers": ["acquisition.wecom.dev/link", "no good"]});
        let fields: Vec<String> = object_meta(&meta, NameRule::Subdomain)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["metadata.name", "metadata.labels", "metadata.finalizers[1]"]
        );
    }
}
