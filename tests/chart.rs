//! The Helm chart's files that `cargo test` can check without Helm: its `crds/` are the
//! generated `crds/`, byte for byte, and every value in `values.yaml` is typed in
//! `values.schema.json` and documented in the chart README. Rendering, linting and schema
//! validation of the manifests are in `.ci/chart-check`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

const CHART: &str = "charts/wecom-acquisition-controller";
/// Values typed as whole Kubernetes objects: documented by their own key, not per field.
const KUBERNETES_TYPED: [&str; 3] = ["podSecurityContext", "securityContext", "resources"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let entries = fs::read_dir(dir).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; generate the CRDs with `cargo run -- crd --output-dir crds`",
            dir.display()
        )
    });
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        files.insert(name, fs::read(&path).unwrap());
    }
    files
}

#[test]
fn chart_crds_are_identical_to_the_generated_crds() {
    let generated = yaml_files(&root().join("crds"));
    let shipped = yaml_files(&root().join(CHART).join("crds"));
    assert!(!generated.is_empty(), "crds/ is empty");
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        shipped.keys().collect::<Vec<_>>(),
        "the chart's crds/ holds other files than crds/"
    );
    for (name, bytes) in &generated {
        assert!(
            shipped[name] == *bytes,
            "{CHART}/crds/{name} differs from crds/{name}: run `rm -r {CHART}/crds && cp -r crds {CHART}/crds`"
        );
    }
}

fn values() -> serde_json::Map<String, serde_json::Value> {
    let text = fs::read_to_string(root().join(CHART).join("values.yaml")).unwrap();
    wecom_acq::yaml::from_str(&text).unwrap()
}

/// Dotted keys of every leaf value (empty maps and lists are leaves).
fn leaf_keys(
    map: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    out: &mut Vec<String>,
) {
    for (key, value) in map {
        let key = format!("{prefix}{key}");
        match value {
            serde_json::Value::Object(inner)
                if !inner.is_empty() && !KUBERNETES_TYPED.contains(&key.as_str()) =>
            {
                leaf_keys(inner, &format!("{key}."), out)
            }
            _ => out.push(key),
        }
    }
}

#[test]
fn every_value_is_documented_in_the_readme() {
    let readme = fs::read_to_string(root().join(CHART).join("README.md")).unwrap();
    let mut keys = Vec::new();
    leaf_keys(&values(), "", &mut keys);
    assert!(keys.len() > 50, "only {} values found", keys.len());
    let missing: Vec<_> = keys
        .iter()
        .filter(|key| !readme.contains(&format!("| `{key}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "values without a row in the README's table: {missing:?}"
    );
}

#[test]
fn every_value_is_typed_in_the_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(root().join(CHART).join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let mut keys = Vec::new();
    leaf_keys(&values(), "", &mut keys);
    let untyped: Vec<_> = keys
        .iter()
        .filter(|key| {
            let mut node = &schema;
            for part in key.split('.') {
                node = &node["properties"][part];
            }
            node.get("type").is_none()
        })
        .collect();
    assert!(
        untyped.is_empty(),
        "values without a schema type: {untyped:?}"
    );
}

#[test]
fn schema_refuses_unknown_keys_at_the_top_and_in_the_main_objects() {
    let schema: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(root().join(CHART).join("values.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(schema["additionalProperties"], false, "top level");
    for (key, value) in values() {
        let key = key.as_str();
        if !value.is_object() || KUBERNETES_TYPED.contains(&key) || key == "affinity" {
            continue;
        }
        // Either a fixed set of keys, or a label-style map of strings.
        let extra = &schema["properties"][key]["additionalProperties"];
        assert!(
            *extra == false || *extra == serde_json::json!({ "type": "string" }),
            "{key} accepts unknown keys: additionalProperties is {extra}"
        );
    }
}

/// The openAPIV3Schema of each kind, from the chart's CRDs.
fn crd_schemas() -> BTreeMap<String, serde_json::Value> {
    let mut schemas = BTreeMap::new();
    for (name, bytes) in yaml_files(&root().join(CHART).join("crds")) {
        let crd: serde_json::Value = wecom_acq::yaml::from_slice(&bytes).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_owned();
        let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        assert!(schema.is_object(), "{name} has no openAPIV3Schema");
        schemas.insert(kind, schema);
    }
    schemas
}

/// The CEL half of admission (the structural half is in .ci/chart-check) for the resources
/// this chart's docs ship: the ArgoCD example folder and the health-check fixtures.
#[test]
fn argocd_examples_and_fixtures_pass_the_crds_cel_rules() {
    let schemas = crd_schemas();
    let mut objects: Vec<(String, serde_json::Value)> = Vec::new();
    let links = root().join("examples/argocd/links");
    for (name, bytes) in yaml_files(&links) {
        let text = String::from_utf8(bytes).unwrap();
        for value in wecom_acq::yaml::from_multiple::<serde_json::Value>(&text).unwrap() {
            objects.push((format!("examples/argocd/links/{name}"), value));
        }
    }
    for (name, bytes) in yaml_files(&root().join("tests/fixtures/argocd")) {
        let value = serde_json::from_slice(&bytes).unwrap();
        objects.push((format!("tests/fixtures/argocd/{name}"), value));
    }
    let mut checked = 0;
    for (file, object) in &objects {
        let kind = object["kind"].as_str().unwrap();
        let schema = &schemas[kind];
        if let Err(errors) = kube_cel::Validator::new().validate(schema, object, None) {
            let errors: Vec<_> = errors.iter().map(ToString::to_string).collect();
            panic!("{file}: {kind} refused by the CRD's CEL rules: {errors:?}");
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} objects checked");
}

/// The same rules do refuse a bad link, so the test above can fail.
#[test]
fn crds_cel_rules_refuse_a_link_without_members() {
    let schemas = crd_schemas();
    let mut link = serde_json::json!({
        "apiVersion": "acquisition.wecom.dev/v1alpha1",
        "kind": "AcquisitionLink",
        "metadata": {"name": "empty"},
        "spec": {"appRef": {"name": "wecom"}, "linkName": "x", "range": {}}
    });
    let validator = kube_cel::Validator::new();
    assert!(
        validator
            .validate(&schemas["AcquisitionLink"], &link, None)
            .is_err()
    );
    link["spec"]["range"]["userList"] = serde_json::json!(["zhangsan"]);
    assert!(
        validator
            .validate(&schemas["AcquisitionLink"], &link, None)
            .is_ok()
    );
}

/// The value at a dotted key of `values.yaml`.
fn value_at<'a>(
    values: &'a serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> &'a serde_json::Value {
    let mut parts = key.split('.');
    let first = parts.next().unwrap();
    let mut value = values
        .get(first)
        .unwrap_or_else(|| panic!("values.yaml has no {key}"));
    for part in parts {
        value = value
            .get(part)
            .unwrap_or_else(|| panic!("values.yaml has no {key}"));
    }
    value
}

/// The chart's defaults are the controller's (`src/defaults.rs`): a user who installs the
/// chart without values gets what `wecom-acq run --help` shows.
#[test]
fn chart_defaults_equal_the_controllers_defaults() {
    use wecom_acq::defaults;

    let values = values();
    let text = |key: &str| {
        value_at(&values, key)
            .as_str()
            .unwrap_or_else(|| panic!("{key} is not a string"))
            .to_string()
    };
    let number = |key: &str| {
        value_at(&values, key)
            .as_u64()
            .unwrap_or_else(|| panic!("{key} is not a number"))
    };
    let durations = [
        ("intervals.resync", defaults::RESYNC_INTERVAL),
        ("intervals.customers", defaults::CUSTOMERS_INTERVAL),
        ("intervals.statistics", defaults::STATISTICS_INTERVAL),
        ("intervals.quota", defaults::QUOTA_INTERVAL),
        ("callback.maxSkew", defaults::CALLBACK_MAX_SKEW),
        ("callback.bodyTimeout", defaults::CALLBACK_BODY_TIMEOUT),
    ];
    for (key, default) in durations {
        let chart = humantime::parse_duration(&text(key))
            .unwrap_or_else(|e| panic!("{key} is not a duration: {e}"));
        assert_eq!(
            chart, default.value,
            "{key} in values.yaml differs from src/defaults.rs ({})",
            default.text
        );
    }
    let port = |addr: &str| addr.parse::<std::net::SocketAddr>().unwrap().port();
    assert_eq!(
        number("metrics.port"),
        u64::from(port(defaults::METRICS_ADDR))
    );
    assert_eq!(
        number("callback.port"),
        u64::from(port(defaults::CALLBACK_ADDR))
    );
    assert_eq!(
        number("callback.maxConnections"),
        defaults::CALLBACK_MAX_CONNECTIONS as u64
    );
    assert_eq!(
        number("maxConcurrentReconciles"),
        defaults::MAX_CONCURRENT_RECONCILES as u64
    );
    assert_eq!(text("leaderElection.leaseName"), defaults::LEASE_NAME);
    assert_eq!(text("logLevel"), defaults::LOG_LEVEL);
    assert_eq!(
        value_at(&values, "allowedApiHosts"),
        &serde_json::json!([defaults::WECOM_API_HOST])
    );
    // The CRD's descriptions (doc comments, which cannot name a constant) say the
    // client's defaults too.
    let crd = fs::read_to_string(root().join("crds/wecomapps.acquisition.wecom.dev.yaml")).unwrap();
    for said in [
        format!("Defaults to {}", defaults::REQUESTS_PER_MINUTE),
        defaults::WECOM_API_BASE_URL.to_string(),
    ] {
        assert!(
            crd.contains(&said),
            "the WeComApp CRD does not say {said:?}"
        );
    }
}
