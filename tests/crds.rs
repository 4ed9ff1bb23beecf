//! The CRDs in `crds/` are exactly what the code generates, have the shape `kubectl` users
//! rely on (printer columns, short names, category, status subresource, descriptions), and
//! every example in `examples/` is an object the apiserver would accept.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube_cel::Validator;
use serde_json::{Value, json};
use wecom_acq::api::{
    AcquisitionLink, DeletionPolicy, RemoteDeletePolicy, WeComApp, WeComSuite, crd_files, crd_yaml,
    write_crd_files,
};

const REGENERATE: &str = "run `cargo run -- crd --output-dir crds` and commit the result";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

// ---------------------------------------------------------------------------------------
// crds/ is generated
// ---------------------------------------------------------------------------------------

#[test]
fn checked_in_crds_match_the_generated_ones() {
    let dir = repo_path("crds");
    let generated = crd_files().unwrap();
    for file in &generated {
        let path = dir.join(&file.file_name);
        let checked_in = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}; {REGENERATE}", path.display()));
        assert!(
            checked_in == file.yaml,
            "crds/{} differs from what src/api/ generates; {REGENERATE}",
            file.file_name
        );
    }
    let expected: BTreeSet<String> = generated.into_iter().map(|f| f.file_name).collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        present, expected,
        "crds/ holds files the code does not generate; remove them and {REGENERATE}"
    );
}

#[test]
fn crd_files_are_named_per_kind() {
    let names: Vec<String> = crd_files()
        .unwrap()
        .into_iter()
        .map(|f| f.file_name)
        .collect();
    assert_eq!(
        names,
        [
            "wecomapps.acquisition.wecom.dev.yaml",
            "acquisitionlinks.acquisition.wecom.dev.yaml",
            "wecomsuites.acquisition.wecom.dev.yaml"
        ]
    );
}

#[test]
fn crd_subcommand_prints_both_crds() {
    let out = Command::new(env!("CARGO_BIN_EXE_wecom-acq"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, crd_yaml().unwrap());
    let names: Vec<String> = wecom_acq::yaml::from_multiple::<CustomResourceDefinition>(&stdout)
        .unwrap()
        .into_iter()
        .map(|crd| crd.metadata.name.unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "wecomapps.acquisition.wecom.dev",
            "acquisitionlinks.acquisition.wecom.dev",
            "wecomsuites.acquisition.wecom.dev"
        ]
    );
}

#[test]
fn crd_subcommand_writes_one_file_per_kind() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("new-dir");
    let out = Command::new(env!("CARGO_BIN_EXE_wecom-acq"))
        .args(["crd", "--output-dir"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in crd_files().unwrap() {
        let written = std::fs::read_to_string(target.join(&file.file_name)).unwrap();
        assert_eq!(written, file.yaml, "{}", file.file_name);
        let crd: CustomResourceDefinition = wecom_acq::yaml::from_str(&written).unwrap();
        assert_eq!(
            format!("{}.yaml", crd.metadata.name.unwrap()),
            file.file_name
        );
    }
}

#[test]
fn crd_subcommand_reports_an_unwritable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wecom-acq"))
        .args(["crd", "--output-dir"])
        .arg(&blocker)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a-file"), "{stderr}");
    assert!(write_crd_files(&blocker).is_err());
}

// ---------------------------------------------------------------------------------------
// Structure of the CRDs
// ---------------------------------------------------------------------------------------

fn columns(crd: &CustomResourceDefinition) -> Vec<(String, String, String, i32)> {
    crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.type_.clone(),
                c.json_path.clone(),
                c.priority.unwrap_or(0),
            )
        })
        .collect()
}

fn col(name: &str, type_: &str, path: &str, priority: i32) -> (String, String, String, i32) {
    (name.into(), type_.into(), path.into(), priority)
}

#[test]
fn link_crd_has_the_printer_columns_names_and_subresource() {
    let crd = AcquisitionLink::crd();
    assert_eq!(crd.spec.group, "acquisition.wecom.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.versions.len(), 1);
    assert_eq!(crd.spec.versions[0].name, "v1alpha1");
    assert_eq!(crd.spec.names.short_names, Some(vec!["acql".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["wecom".to_string()]));
    let subresources = crd.spec.versions[0].subresources.as_ref().unwrap();
    assert!(subresources.status.is_some(), "status subresource missing");
    let ready = r#".status.conditions[?(@.type=="Ready")].status"#;
    assert_eq!(
        columns(&crd),
        [
            col("Link ID", "string", ".status.linkId", 0),
            col("Mode", "string", ".spec.managementPolicy", 0),
            col("Ready", "string", ready, 0),
            col("Customers", "integer", ".status.customers.total", 0),
            col("Quota", "integer", ".status.quota.balance", 0),
            col("URL", "string", ".status.url", 1),
            col("Age", "date", ".metadata.creationTimestamp", 0),
        ]
    );
}

#[test]
fn app_crd_has_the_printer_columns_names_and_subresource() {
    let crd = WeComApp::crd();
    assert_eq!(crd.spec.group, "acquisition.wecom.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.versions[0].name, "v1alpha1");
    assert_eq!(crd.spec.names.short_names, Some(vec!["wxapp".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["wecom".to_string()]));
    let subresources = crd.spec.versions[0].subresources.as_ref().unwrap();
    assert!(subresources.status.is_some(), "status subresource missing");
    let ready = r#".status.conditions[?(@.type=="Ready")].status"#;
    assert_eq!(
        columns(&crd),
        [
            col("Corp ID", "string", ".spec.corpId", 0),
            col("Ready", "string", ready, 0),
            col("Quota", "integer", ".status.quota.balance", 0),
            col("Age", "date", ".metadata.creationTimestamp", 0),
        ]
    );
}

fn schema_of<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    let schema = crd.spec.versions[0].schema.as_ref().unwrap();
    serde_json::to_value(schema.open_api_v3_schema.as_ref().unwrap()).unwrap()
}

/// Paths of properties without a description (what `kubectl explain` shows).
fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let sub_path = format!("{path}.{name}");
            let described = sub
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                out.push(sub_path.clone());
            }
            undocumented(sub, &sub_path, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(items, &format!("{path}[]"), out);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        undocumented(values, &format!("{path}{{}}"), out);
    }
}

#[test]
fn every_property_has_a_description() {
    for (kind, schema) in [
        ("AcquisitionLink", schema_of::<AcquisitionLink>()),
        ("WeComApp", schema_of::<WeComApp>()),
        ("WeComSuite", schema_of::<WeComSuite>()),
    ] {
        let root = schema["description"].as_str().unwrap_or_default();
        assert!(
            !root.is_empty() && !root.contains("Auto-generated"),
            "{kind}: {root}"
        );
        let mut missing = Vec::new();
        undocumented(&schema, kind, &mut missing);
        assert!(
            missing.is_empty(),
            "properties without a description: {missing:?}"
        );
    }
}

#[test]
fn description_check_finds_a_missing_description() {
    let schema = json!({"properties": {"spec": {"description": "d", "properties": {
        "documented": {"description": "yes", "type": "string"},
        "bare": {"type": "array", "items": {"properties": {"inner": {"type": "string"}}}}
    }}}});
    let mut missing = Vec::new();
    undocumented(&schema, "X", &mut missing);
    assert_eq!(missing, ["X.spec.bare", "X.spec.bare[].inner"]);
}

// ---------------------------------------------------------------------------------------
// The OpenAPI part of admission, for the examples: what the apiserver checks before CEL
// ---------------------------------------------------------------------------------------

/// Violations of the schema's structural limits (type, required, unknown fields, lengths,
/// item counts, bounds, enums, patterns, list-type set). A subset of the apiserver's
/// OpenAPI validation, enough to prove the examples are accepted as written (an unknown
/// field would be pruned silently by the apiserver: here it is an error).
fn schema_violations(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let mut fail = |what: String| out.push(format!("{path}: {what}"));
    if value.is_null() {
        if schema["nullable"] != true {
            fail("null is not allowed".into());
        }
        return;
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("boolean") => value.is_boolean(),
        Some("number") => value.is_number(),
        _ => true,
    };
    if !type_ok {
        fail(format!("not of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        fail(format!("{value} is not one of {allowed:?}"));
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|min| chars < min) {
            fail(format!("shorter than {}", schema["minLength"]));
        }
        if schema["maxLength"].as_u64().is_some_and(|max| chars > max) {
            fail(format!("longer than {} characters", schema["maxLength"]));
        }
        if let Some(pattern) = schema["pattern"].as_str() {
            let probe = json!({"x-kubernetes-validations": [
                {"rule": format!("self.matches('{pattern}')")}
            ]});
            if Validator::new().validate(&probe, value, None).is_err() {
                fail(format!("does not match {pattern}"));
            }
        }
    }
    if let Some(n) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| n < min) {
            fail(format!("below {}", schema["minimum"]));
        }
        if schema["maximum"].as_f64().is_some_and(|max| n > max) {
            fail(format!("above {}", schema["maximum"]));
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as u64;
        if schema["maxItems"].as_u64().is_some_and(|max| len > max) {
            fail(format!("more than {} items", schema["maxItems"]));
        }
        if schema["x-kubernetes-list-type"] == "set" {
            let unique: BTreeSet<String> = items.iter().map(Value::to_string).collect();
            if unique.len() != items.len() {
                fail("duplicate entries in a set".into());
            }
        }
        for (i, item) in items.iter().enumerate() {
            schema_violations(&schema["items"], item, &format!("{path}[{i}]"), out);
        }
    }
    if let Some(fields) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !fields.contains_key(name) {
                out.push(format!("{path}: missing required field {name}"));
            }
        }
        let props = schema["properties"].as_object();
        for (name, field) in fields {
            let field_path = format!("{path}.{name}");
            match props.and_then(|p| p.get(name)) {
                Some(sub) => schema_violations(sub, field, &field_path, out),
                None if schema["additionalProperties"].is_object() => {
                    schema_violations(&schema["additionalProperties"], field, &field_path, out)
                }
                // apiVersion, kind and metadata are checked by the apiserver itself.
                None if path.is_empty()
                    && ["apiVersion", "kind", "metadata"].contains(&name.as_str()) => {}
                None => out.push(format!("{field_path}: unknown field")),
            }
        }
    }
}

fn admission_errors(schema: &Value, object: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    schema_violations(schema, object, "", &mut errors);
    if let Err(cel) = Validator::new().validate(schema, object, None) {
        errors.extend(cel.iter().map(ToString::to_string));
    }
    errors
}

#[test]
fn admission_check_refuses_an_invalid_link() {
    let link = json!({
        "apiVersion": "acquisition.wecom.dev/v1alpha1",
        "kind": "AcquisitionLink",
        "metadata": {"name": "bad"},
        "spec": {
            "appRef": {"name": ""},
            "linkName": "x".repeat(31),
            "linkname": "typo",
            "range": {"userList": ["zhangsan", "zhangsan"], "departmentList": [0]},
            "channels": ["渠".repeat(22)],
            "priorityOption": {"priorityType": 3},
            "deletionPolicy": "Keep"
        }
    });
    let mut errors = admission_errors(&schema_of::<AcquisitionLink>(), &link);
    errors.sort();
    let expected = [
        ".spec.appRef.name: shorter than 1",
        ".spec.deletionPolicy: \"Keep\" is not one of [String(\"Delete\"), String(\"Orphan\")]",
        ".spec.linkName: longer than 30 characters",
        ".spec.linkname: unknown field",
        ".spec.priorityOption.priorityType: above 2.0",
        ".spec.range.departmentList[0]: below 1.0",
        ".spec.range.userList: duplicate entries in a set",
        "spec.channels: each channel must be at most 64 bytes in UTF-8 (a Chinese character takes 3)",
    ];
    assert_eq!(errors, expected);
}

#[test]
fn admission_check_refuses_an_invalid_app() {
    let app = json!({
        "apiVersion": "acquisition.wecom.dev/v1alpha1",
        "kind": "WeComApp",
        "metadata": {"name": "bad"},
        "spec": {
            "corpId": "",
            "secretRef": {"name": "wecom-app"},
            "apiBaseUrl": "qyapi.weixin.qq.com",
            "requestsPerMinute": 0
        }
    });
    let mut errors = admission_errors(&schema_of::<WeComApp>(), &app);
    errors.sort();
    let expected = [
        ".spec.apiBaseUrl: does not match ^https?://[^/?#]+",
        ".spec.corpId: shorter than 1",
        ".spec.requestsPerMinute: below 1.0",
        ".spec.secretRef: missing required field key",
    ];
    assert_eq!(errors, expected);
}

// ---------------------------------------------------------------------------------------
// examples/
// ---------------------------------------------------------------------------------------

fn examples() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            wecom_acq::yaml::from_multiple::<Value>(&text)
                .unwrap_or_else(|e| panic!("examples/{name}: {e}"))
                .into_iter()
                .map(|value| (name.clone(), value))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn of_kind(kind: &str) -> Vec<(String, Value)> {
    examples()
        .into_iter()
        .filter(|(_, v)| v["kind"] == kind)
        .collect()
}

#[test]
fn examples_hold_a_secret_an_app_and_two_links() {
    let mut found: Vec<(String, String)> = examples()
        .into_iter()
        .map(|(file, v)| (file, v["kind"].as_str().unwrap().to_string()))
        .collect();
    found.sort();
    let expected = [
        ("link-sales.yaml", "AcquisitionLink"),
        ("link-support.yaml", "AcquisitionLink"),
        ("secret.yaml", "Secret"),
        ("wecomapp.yaml", "WeComApp"),
    ]
    .map(|(f, k)| (f.to_string(), k.to_string()));
    assert_eq!(found, expected);
}

#[test]
fn example_links_deserialise_and_pass_admission() {
    let schema = schema_of::<AcquisitionLink>();
    let links = of_kind("AcquisitionLink");
    assert_eq!(links.len(), 2);
    for (file, value) in &links {
        assert_eq!(
            value["apiVersion"], "acquisition.wecom.dev/v1alpha1",
            "{file}"
        );
        let link: AcquisitionLink = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("examples/{file} is not an AcquisitionLink: {e}"));
        assert!(
            link.metadata.namespace.is_none(),
            "{file}: let `kubectl -n` choose"
        );
        assert_eq!(
            admission_errors(&schema, value),
            Vec::<String>::new(),
            "examples/{file}"
        );
    }
    let sales: AcquisitionLink = serde_json::from_value(links[0].1.clone()).unwrap();
    assert!(!sales.spec.range.user_list.is_empty() && !sales.spec.channels.is_empty());
    assert!(
        sales.spec.channels.iter().any(|c| !c.is_ascii()),
        "show a multi-byte channel"
    );
    let support: AcquisitionLink = serde_json::from_value(links[1].1.clone()).unwrap();
    assert!(!support.spec.range.department_list.is_empty());
    assert_eq!(support.spec.deletion_policy, DeletionPolicy::Orphan);
    assert_eq!(support.spec.on_remote_delete, RemoteDeletePolicy::Orphan);
}

#[test]
fn example_app_points_at_the_simulator_and_its_secret() {
    let schema = schema_of::<WeComApp>();
    let [(file, value)] = of_kind("WeComApp").try_into().unwrap();
    let app: WeComApp = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("examples/{file} is not a WeComApp: {e}"));
    assert_eq!(admission_errors(&schema, &value), Vec::<String>::new());
    assert_eq!(app.spec.corp_id, "wwsimcorp");
    assert_eq!(
        app.spec.api_base_url.as_deref(),
        Some("http://127.0.0.1:8900")
    );

    let [(_, secret)] = of_kind("Secret").try_into().unwrap();
    let secret: Secret = serde_json::from_value(secret).unwrap();
    let data = secret.string_data.unwrap();
    let callback = app.spec.callback.unwrap();
    for reference in [
        &app.spec.secret_ref,
        &callback.token_ref,
        &callback.aes_key_ref,
    ] {
        assert_eq!(
            Some(reference.name.as_str()),
            secret.metadata.name.as_deref()
        );
        assert!(
            data.contains_key(&reference.key),
            "Secret lacks key {}",
            reference.key
        );
    }
    assert_eq!(data[&app.spec.secret_ref.key], "sim-secret");
    let token = &data[&callback.token_ref.key];
    assert!(!token.is_empty() && token.len() <= 32);
    assert!(token.chars().all(|c| c.is_ascii_alphanumeric()), "{token}");
    let aes_key = &data[&callback.aes_key_ref.key];
    assert_eq!(aes_key.len(), 43);
    assert!(
        aes_key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
    );

    let [ref link, _] = of_kind("AcquisitionLink")[..] else {
        panic!("two example links expected");
    };
    let link_app = link.1["spec"]["appRef"]["name"].as_str();
    assert_eq!(
        link_app,
        app.metadata.name.as_deref(),
        "links refer to the example app"
    );
}
