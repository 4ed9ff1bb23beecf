//! The merge shape of a resource type, as server-side apply sees it: for each field, whether
//! a list is `atomic` (replaced whole), a `set` of scalars, or a `map` keyed by some of
//! its items' fields, and whether an object is a struct (named fields) or a map. Read from
//! a CRD's `openAPIV3Schema` (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`,
//! `x-kubernetes-map-type`) plus what every kind's ObjectMeta declares
//! (`metadata.finalizers` a set, `metadata.ownerReferences` a map keyed by `uid`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::Value;

/// How a list merges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum ListType {
    /// Replaced whole, owned whole: the default for CRD lists without a list type.
    #[default]
    Atomic,
    /// Scalars merged as a set; each value owned on its own (`v:"x"`).
    Set,
    /// Items keyed by these fields; each item owned on its own (`k:{"type":"Ready"}`).
    Map(Vec<String>),
}

/// The shape of one value. Unknown parts (no schema, `x-kubernetes-preserve-unknown-fields`)
/// are the default: objects of named fields, atomic lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Shape {
    /// `properties`: named fields.
    fields: BTreeMap<String, Shape>,
    /// `additionalProperties`: an object whose keys are data, not names (labels).
    values: Option<Box<Shape>>,
    /// `items` of an array.
    items: Option<Box<Shape>>,
    pub list: ListType,
    /// `x-kubernetes-map-type: atomic`: the object is replaced and owned whole.
    pub atomic: bool,
}

static UNKNOWN: LazyLock<Shape> = LazyLock::new(Shape::default);

impl Shape {
    /// The shape of the value under `key` of an object of this shape.
    pub fn field(&self, key: &str) -> &Shape {
        self.fields
            .get(key)
            .or(self.values.as_deref())
            .unwrap_or(&UNKNOWN)
    }

    /// Whether `key` is a named field (a struct member) rather than a map key.
    pub fn is_named(&self, key: &str) -> bool {
        self.fields.contains_key(key) || self.values.is_none()
    }

    /// The shape of a list's items.
    pub fn item(&self) -> &Shape {
        self.items.as_deref().unwrap_or(&UNKNOWN)
    }

    /// The shape an OpenAPI v3 schema (structural, as a CRD holds it) describes.
    pub fn from_openapi(schema: &Value) -> Shape {
        let properties = schema["properties"].as_object();
        let fields = properties
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), Shape::from_openapi(v)))
            .collect();
        let values = match &schema["additionalProperties"] {
            Value::Object(_) => Some(Box::new(Shape::from_openapi(
                &schema["additionalProperties"],
            ))),
            Value::Bool(true) => Some(Box::default()),
            _ => None,
        };
        let items = schema["items"]
            .is_object()
            .then(|| Box::new(Shape::from_openapi(&schema["items"])));
        let list = match schema["x-kubernetes-list-type"].as_str() {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(
                schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect(),
            ),
            _ => ListType::Atomic,
        };
        Shape {
            fields,
            values,
            items,
            list,
            atomic: schema["x-kubernetes-map-type"].as_str() == Some("atomic"),
        }
    }

    /// The shape of a whole object of a kind whose schema (if any) is `schema`: the
    /// schema's shape with ObjectMeta's list and map types in `metadata`.
    pub fn of_kind(schema: Option<&Value>) -> Shape {
        let mut root = schema.map(Shape::from_openapi).unwrap_or_default();
        root.fields.insert("metadata".into(), object_meta());
        root
    }
}

/// The list-map keys a structural schema leaves optional, as the apiserver refuses them
/// in a CRD: (field path under `at`, what is wrong). A key must be required, or have a
/// default, in the item schema; a `map` list must name its keys.
pub(crate) fn list_map_key_errors(schema: &Value, at: &str) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    if schema["x-kubernetes-list-type"].as_str() == Some("map") {
        let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if keys.is_empty() {
            errors.push((
                format!("{at}.x-kubernetes-list-map-keys"),
                "must not be empty if x-kubernetes-list-type is map".to_string(),
            ));
        }
        let items = &schema["items"];
        let required: Vec<&str> = items["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for key in keys {
            if !required.contains(&key) && items["properties"][key].get("default").is_none() {
                errors.push((
                    format!("{at}.items.properties[{key}].default"),
                    "this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property".to_string(),
                ));
            }
        }
    }
    for (name, child) in schema["properties"].as_object().into_iter().flatten() {
        errors.extend(list_map_key_errors(
            child,
            &format!("{at}.properties[{name}]"),
        ));
    }
    for nested in ["items", "additionalProperties"] {
        if schema[nested].is_object() {
            errors.extend(list_map_key_errors(
                &schema[nested],
                &format!("{at}.{nested}"),
            ));
        }
    }
    errors
}

/// ObjectMeta as the apiserver's schema declares it, where it matters for apply.
fn object_meta() -> Shape {
    let string_map = || Shape {
        values: Some(Box::default()),
        ..Shape::default()
    };
    let list = |list: ListType| Shape {
        list,
        ..Shape::default()
    };
    Shape {
        fields: [
            ("labels".to_string(), string_map()),
            ("annotations".to_string(), string_map()),
            ("finalizers".to_string(), list(ListType::Set)),
            (
                "ownerReferences".to_string(),
                list(ListType::Map(vec!["uid".into()])),
            ),
        ]
        .into(),
        ..Shape::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn list_types_come_from_the_schema_and_object_meta() {
        let schema = json!({"type": "object", "properties": {
            "status": {"type": "object", "properties": {
                "conditions": {"type": "array", "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["type"],
                    "items": {"type": "object", "properties": {"type": {"type": "string"}}}},
                "ids": {"type": "array", "x-kubernetes-list-type": "set",
                    "items": {"type": "string"}},
                "plain": {"type": "array", "items": {"type": "string"}},
                "sel": {"type": "object", "x-kubernetes-map-type": "atomic"}}}}});
        let shape = Shape::of_kind(Some(&schema));
        let status = shape.field("status");
        assert_eq!(
            status.field("conditions").list,
            ListType::Map(vec!["type".into()])
        );
        assert_eq!(status.field("ids").list, ListType::Set);
        assert_eq!(status.field("plain").list, ListType::Atomic);
        assert!(status.field("sel").atomic);
        assert_eq!(status.field("unknown").list, ListType::Atomic);
        let meta = shape.field("metadata");
        assert_eq!(meta.field("finalizers").list, ListType::Set);
        assert_eq!(
            meta.field("ownerReferences").list,
            ListType::Map(vec!["uid".into()])
        );
        assert!(!meta.field("labels").is_named("app"));
        assert!(meta.is_named("labels") && status.is_named("ids"));
    }

    #[test]
    fn list_map_keys_must_be_required_or_defaulted() {
        let list = |required: Value| {
            json!({"properties": {"status": {"properties": {
            "conditions": {"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {"type": "object", "required": required,
                          "properties": {"type": {"type": "string"}}}}}}}})
        };
        assert!(list_map_key_errors(&list(json!(["type"])), "s").is_empty());
        let errors = list_map_key_errors(&list(json!([])), "s");
        assert_eq!(
            errors[0].0,
            "s.properties[status].properties[conditions].items.properties[type].default"
        );
    }
}
