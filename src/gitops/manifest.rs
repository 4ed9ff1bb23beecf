//! Reading manifests for `plan` and `apply`: files and directories (recursively, `*.yaml`
//! and `*.yml`, in sorted order), multi-document YAML, and each document checked the way
//! the apiserver would check it (the CRD's OpenAPI limits, then the CEL rules as repeated by
//! [`crate::reconcile::plan::validate`]). Every problem names the file, the document and
//! the field.
//!
//! Secret values are decoded here and kept only as [`Secret`], which never prints: no
//! message of this module quotes a Secret's data.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::schema::{self, SchemaViolation};
use crate::api::{AcquisitionLink, WeComApp, WeComSuite};
use crate::reconcile::plan;
use crate::wecom::client::Secret;

/// `apiVersion` of both custom resources.
pub const API_VERSION: &str = "acquisition.wecom.dev/v1alpha1";

/// Where a document came from: the file and its 1-based index among the file's documents.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    pub file: String,
    /// `None` when the problem is with the file as a whole.
    pub document: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.document {
            Some(n) => write!(f, "{}, document {n}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// `Kind namespace/name`, as the messages name an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// An object read from a file, with where it came from.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub origin: Origin,
    pub key: ObjectKey,
    pub object: T,
}

/// The keys of one Secret, decoded (`stringData` wins over `data`, as on the apiserver).
#[derive(Debug, Clone, Default)]
pub struct SecretValues {
    pub values: BTreeMap<String, Secret>,
}

/// One problem with the input, printed as `FILE, document N (Kind ns/name), field F: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub origin: Origin,
    pub object: Option<ObjectKey>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Everything read from the files, keyed by namespace and name.
#[derive(Debug, Default)]
pub struct Manifests {
    pub secrets: BTreeMap<(String, String), Loaded<SecretValues>>,
    pub apps: BTreeMap<(String, String), Loaded<WeComApp>>,
    /// The suites the suite-backed apps name.
    pub suites: BTreeMap<(String, String), Loaded<WeComSuite>>,
    /// In file order.
    pub links: Vec<Loaded<AcquisitionLink>>,
    /// Documents of other kinds: `(where, kind)`.
    pub skipped: Vec<(Origin, String)>,
}

/// The YAML files named by `paths`: files as given, directories walked recursively for
/// `*.yaml` and `*.yml`, each directory's files in sorted order.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Box<ManifestError>> {
    let mut files = Vec::new();
    for path in paths {
        let metadata = std::fs::metadata(path).map_err(|e| file_error(path, e))?;
        if metadata.is_dir() {
            let before = files.len();
            walk_dir(path, &mut files)?;
            if files.len() == before {
                return Err(Box::new(ManifestError {
                    origin: origin_of(path, None),
                    object: None,
                    field: None,
                    message: "the directory holds no *.yaml or *.yml file".into(),
                }));
            }
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn walk_dir(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), Box<ManifestError>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| file_error(dir, e))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(dir, e))?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            walk_dir(&entry, files)?;
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml")
        {
            files.push(entry);
        }
    }
    Ok(())
}

fn origin_of(path: &Path, document: Option<usize>) -> Origin {
    Origin {
        file: path.display().to_string(),
        document,
    }
}

fn file_error(path: &Path, e: std::io::Error) -> Box<ManifestError> {
    Box::new(ManifestError {
        origin: origin_of(path, None),
        object: None,
        field: None,
        message: format!("cannot be read: {e}"),
    })
}

/// Reads and checks every document of `paths`. Documents without a namespace get
/// `default_namespace`. Any problem makes the whole read fail, with every problem found.
pub fn load(paths: &[PathBuf], default_namespace: &str) -> Result<Manifests, Vec<ManifestError>> {
    let files = collect_files(paths).map_err(|e| vec![*e])?;
    let mut manifests = Manifests::default();
    let mut errors = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => parse_into(
                &file.display().to_string(),
                &text,
                default_namespace,
                &mut manifests,
                &mut errors,
            ),
            Err(e) => errors.push(*file_error(file, e)),
        }
    }
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

/// Parses the documents of one file (named `file` in messages) into `manifests`, adding
/// every problem to `errors`.
pub fn parse_into(
    file: &str,
    text: &str,
    default_namespace: &str,
    manifests: &mut Manifests,
    errors: &mut Vec<ManifestError>,
) {
    // Empty documents (a trailing `---`, or only comments) are not read, but counted.
    for document in crate::yaml::documents(text) {
        let origin = Origin {
            file: file.to_string(),
            document: Some(document.number),
        };
        match document.value {
            Ok(json) => add_document(origin, json, default_namespace, manifests, errors),
            // The message carries the line and column.
            Err(e) => errors.push(ManifestError {
                origin,
                object: None,
                field: None,
                message: format!("invalid YAML: {e}"),
            }),
        }
    }
}

fn add_document(
    origin: Origin,
    json: Value,
    default_namespace: &str,
    manifests: &mut Manifests,
    errors: &mut Vec<ManifestError>,
) {
    let error = |object: Option<ObjectKey>, field: Option<&str>, message: String| ManifestError {
        origin: origin.clone(),
        object,
        field: field.map(str::to_string),
        message,
    };
    let Value::Object(fields) = &json else {
        errors.push(error(
            None,
            None,
            "is not a Kubernetes object (a YAML mapping with apiVersion, kind and metadata)".into(),
        ));
        return;
    };
    let Some(kind) = fields
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        errors.push(error(None, Some("kind"), "is required".into()));
        return;
    };
    let api_version = fields
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = json
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let namespace = json
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(default_namespace)
        .to_string();
    let key = ObjectKey {
        kind: kind.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let expected_version = match kind.as_str() {
        "Secret" => "v1",
        "WeComApp" | "AcquisitionLink" | "WeComSuite" => API_VERSION,
        _ => {
            manifests.skipped.push((origin, kind));
            return;
        }
    };
    if api_version != expected_version {
        errors.push(error(
            Some(key),
            Some("apiVersion"),
            format!("must be {expected_version:?} for kind {kind}, not {api_version:?}"),
        ));
        return;
    }
    if let Err(message) = check_name(&name, 253) {
        errors.push(error(Some(key), Some("metadata.name"), message));
        return;
    }
    if let Err(message) = check_name(&namespace, 63) {
        errors.push(error(Some(key), Some("metadata.namespace"), message));
        return;
    }
    let map_key = (namespace.clone(), name.clone());
    let duplicate_of = match kind.as_str() {
        "Secret" => manifests.secrets.get(&map_key).map(|l| l.origin.clone()),
        "WeComApp" => manifests.apps.get(&map_key).map(|l| l.origin.clone()),
        "WeComSuite" => manifests.suites.get(&map_key).map(|l| l.origin.clone()),
        _ => manifests
            .links
            .iter()
            .find(|l| l.key == key)
            .map(|l| l.origin.clone()),
    };
    if let Some(first) = duplicate_of {
        errors.push(error(
            Some(key),
            None,
            format!("the same object is also defined in {first}: keep one"),
        ));
        return;
    }
    match kind.as_str() {
        "Secret" => match secret_values(&json) {
            Ok(object) => {
                manifests.secrets.insert(
                    map_key,
                    Loaded {
                        origin,
                        key,
                        object,
                    },
                );
            }
            Err((field, message)) => errors.push(error(Some(key), Some(&field), message)),
        },
        "WeComSuite" => {
            if let Some(object) = checked::<WeComSuite>(json, &namespace, &key, &error, errors) {
                let loaded = Loaded {
                    origin,
                    key,
                    object,
                };
                manifests.suites.insert(map_key, loaded);
            }
        }
        "WeComApp" => {
            if let Some(object) = checked::<WeComApp>(json, &namespace, &key, &error, errors) {
                let loaded = Loaded {
                    origin,
                    key,
                    object,
                };
                manifests.apps.insert(map_key, loaded);
            }
        }
        _ => {
            let schema = schema::open_api_schema(&AcquisitionLink::crd());
            let (link, mut problems) = typed::<AcquisitionLink>(&schema, json, &namespace);
            if let Some(link) = link {
                // The CEL rules, as `validate` repeats them. They overlap with the schema
                // (linkName length): each field is named once.
                if let Err(message) = plan::validate(&link.spec) {
                    let (field, message) = split_field(&message);
                    if !problems.iter().any(|(f, _)| *f == field) {
                        problems.push((field, message));
                    }
                }
                if problems.is_empty() {
                    manifests.links.push(Loaded {
                        origin,
                        key,
                        object: link,
                    });
                    return;
                }
            }
            errors.extend(
                problems
                    .into_iter()
                    .map(|(field, message)| error(Some(key.clone()), Some(&field), message)),
            );
        }
    }
}

/// The schema check, then the typed read (with the field path of a serde error): the
/// object when it could be read, and every problem found.
/// Builds the error of one field of one object of the file being read.
type ErrorAt<'a> = dyn Fn(Option<ObjectKey>, Option<&str>, String) -> ManifestError + 'a;

/// `json` as a `K` when its CRD's schema accepts it; else the problems join `errors`.
fn checked<K: DeserializeOwned + kube::ResourceExt + CustomResourceExt>(
    json: Value,
    namespace: &str,
    key: &ObjectKey,
    error: &ErrorAt<'_>,
    errors: &mut Vec<ManifestError>,
) -> Option<K> {
    let schema = schema::open_api_schema(&K::crd());
    match typed::<K>(&schema, json, namespace) {
        (Some(object), problems) if problems.is_empty() => Some(object),
        (_, problems) => {
            errors.extend(
                problems
                    .into_iter()
                    .map(|(field, message)| error(Some(key.clone()), Some(&field), message)),
            );
            None
        }
    }
}

fn typed<T: DeserializeOwned + kube::ResourceExt>(
    schema: &Value,
    json: Value,
    namespace: &str,
) -> (Option<T>, Vec<(String, String)>) {
    let mut problems: Vec<(String, String)> = schema::check(schema, &json)
        .into_iter()
        .map(|v: SchemaViolation| (v.path, v.message))
        .collect();
    match serde_path_to_error::deserialize::<_, T>(json) {
        Ok(mut object) => {
            object.meta_mut().namespace = Some(namespace.to_string());
            (Some(object), problems)
        }
        Err(e) => {
            // A schema violation usually explains a failed read better than serde does.
            if problems.is_empty() {
                problems.push((e.path().to_string(), e.into_inner().to_string()));
            }
            (None, problems)
        }
    }
}

/// `validate` messages start with the field path (`spec.range needs ...`).
fn split_field(message: &str) -> (String, String) {
    match message.split_once(' ') {
        Some((field, rest)) if field.starts_with("spec.") => (field.to_string(), rest.to_string()),
        _ => ("spec".to_string(), message.to_string()),
    }
}

/// A DNS-1123 subdomain (names) or label (namespaces, `max` 63).
pub(crate) fn check_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required".into());
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edges_ok =
        |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() > max
        || !name.chars().all(allowed)
        || (max == 63 && name.contains('.'))
        || !edges_ok(name.chars().next())
        || !edges_ok(name.chars().last())
    {
        return Err(format!(
            "{name:?} is not a valid name: at most {max} lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// The keys of a Secret document. Messages name keys, never values.
fn secret_values(json: &Value) -> Result<SecretValues, (String, String)> {
    let mut values = BTreeMap::new();
    if let Some(data) = json.get("data").filter(|d| !d.is_null()) {
        let Value::Object(data) = data else {
            return Err(("data".into(), "must be a map of key to base64 text".into()));
        };
        for (key, value) in data {
            let field = format!("data.{key}");
            let Some(encoded) = value.as_str() else {
                return Err((field, "must be base64 text".into()));
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| {
                    (
                        field.clone(),
                        "is not valid base64 (use stringData for plain text)".to_string(),
                    )
                })?;
            let text = String::from_utf8(bytes)
                .map_err(|_| (field.clone(), "does not decode to UTF-8 text".to_string()))?;
            values.insert(key.clone(), Secret::new(text.trim().to_string()));
        }
    }
    if let Some(data) = json.get("stringData").filter(|d| !d.is_null()) {
        let Value::Object(data) = data else {
            return Err(("stringData".into(), "must be a map of key to text".into()));
        };
        for (key, value) in data {
            let Some(text) = value.as_str() else {
                return Err((format!("stringData.{key}"), "must be text".into()));
            };
            values.insert(key.clone(), Secret::new(text.trim().to_string()));
        }
    }
    Ok(SecretValues { values })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Manifests, Vec<ManifestError>) {
        let mut manifests = Manifests::default();
        let mut errors = Vec::new();
        parse_into("f.yaml", text, "default", &mut manifests, &mut errors);
        (manifests, errors)
    }

    const LINK: &str = "apiVersion: acquisition.wecom.dev/v1alpha1
kind: AcquisitionLink
metadata: {name: sales}
spec:
  appRef: {name: wecom}
  linkName: Sales
  range: {userList: [zhangsan]}
";

    #[test]
    fn reads_every_kind_and_skips_others() {
        let text = format!(
            "{LINK}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: team}}\n\
             data: {{corp-secret: c2VjcmV0}}\nstringData: {{token: abc}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n---\n"
        );
        let (m, errors) = parse(&text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(m.links.len(), 1);
        assert_eq!(
            m.links[0].object.metadata.namespace.as_deref(),
            Some("default")
        );
        let secret = &m.secrets[&("team".to_string(), "s".to_string())].object;
        assert_eq!(secret.values["corp-secret"].expose(), "secret");
        assert_eq!(secret.values["token"].expose(), "abc");
        assert_eq!(m.skipped.len(), 1);
        assert_eq!(m.skipped[0].0.document, Some(3));
    }

    #[test]
    fn invalid_documents_name_file_document_and_field() {
        let text = format!(
            "{LINK}---\n{}---\n{}",
            LINK.replace("sales", "long")
                .replace("Sales", &"x".repeat(31)),
            LINK.replace("sales", "empty")
                .replace("{userList: [zhangsan]}", "{}")
        );
        let (_, errors) = parse(&text);
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:#?}");
        assert!(shown[0].starts_with("f.yaml, document 2 (AcquisitionLink default/long), field spec.linkName: must be at most 30 characters"), "{}", shown[0]);
        assert!(shown[1].starts_with("f.yaml, document 3 (AcquisitionLink default/empty), field spec.range: needs at least one"), "{}", shown[1]);
    }

    #[test]
    fn serde_errors_carry_the_path() {
        let (_, errors) =
            parse(&LINK.replace("{name: sales}", "{name: sales, labels: {tier: [1]}}"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field.as_deref(), Some("metadata.labels.tier"));
    }

    #[test]
    fn yaml_syntax_errors_give_the_line() {
        let (_, errors) = parse(&format!("{LINK}---\nkind: [unclosed\n"));
        assert_eq!(errors.len(), 1);
        let shown = errors[0].to_string();
        assert!(
            shown.starts_with("f.yaml, document 2: invalid YAML: "),
            "{shown}"
        );
        assert!(shown.contains(" at line 9, column "), "{shown}");
    }

    #[test]
    fn secret_errors_never_quote_the_value() {
        let (_, errors) = parse(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: 'not*base64-topsecret'}\n",
        );
        let shown = errors[0].to_string();
        assert!(shown.contains("field data.k"), "{shown}");
        assert!(!shown.contains("topsecret"), "{shown}");
    }

    #[test]
    fn duplicates_and_bad_names_are_refused() {
        let (_, errors) = parse(&format!(
            "{LINK}---\n{LINK}---\n{}",
            LINK.replace("sales", "Sales_1")
        ));
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            shown[0].contains("also defined in f.yaml, document 1"),
            "{shown:?}"
        );
        assert!(shown[1].contains("field metadata.name"), "{shown:?}");
    }
}
