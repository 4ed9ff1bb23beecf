//! The admission rules of the GENERATED CRDs, checked without an apiserver: every CEL rule
//! (`x-kubernetes-validations`, collected by walking the openAPIV3Schema) is evaluated with
//! kube-cel against an object it must accept and one it must refuse, transition rules with
//! an old object too; the plain OpenAPI limits (maxLength, maxItems, enum, ...) are checked
//! as the values the schema declares.

use kube::CustomResourceExt;
use kube_cel::{ErrorKind, ScopeContext, Validator, WarningKind, analyze_rule, compile_schema};
use serde_json::{Value, json};
use wecom_acq::api::{
    API_BASE_URL_PATTERN, AcquisitionLink, CHANNEL_MAX_BYTES, CHANNELS_MAX_ITEMS,
    LINK_NAME_MAX_CHARS, PRIORITY_USER_LIST_MAX_ITEMS, REQUESTS_PER_MINUTE_MAX, USER_ID_MAX_LEN,
    USER_LIST_MAX_ITEMS, WeComApp,
};

// ---------------------------------------------------------------------------------------
// The generated schema and its rules
// ---------------------------------------------------------------------------------------

fn schema_of<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("generated CRD has an openAPIV3Schema");
    serde_json::to_value(schema).unwrap()
}

/// One `x-kubernetes-validations` entry and where it sits (`spec.range`, `spec.channels`).
#[derive(Debug)]
struct CelRule {
    path: String,
    entry: Value,
}

impl CelRule {
    fn rule(&self) -> &str {
        self.entry["rule"].as_str().unwrap()
    }
}

fn collect_rules(schema: &Value, path: &str, out: &mut Vec<CelRule>) {
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for entry in rules {
            out.push(CelRule {
                path: path.to_string(),
                entry: entry.clone(),
            });
        }
    }
    let join = |name: &str| {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            collect_rules(sub, &join(name), out);
        }
    }
    if let Some(items) = schema.get("items") {
        collect_rules(items, &format!("{path}[*]"), out);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        collect_rules(values, &format!("{path}{{*}}"), out);
    }
}

fn rules_of(schema: &Value) -> Vec<CelRule> {
    let mut out = Vec::new();
    collect_rules(schema, "", &mut out);
    out
}

/// The sub-schema at a dotted property path; `[*]` steps into array items.
fn at<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut node = schema;
    for step in path.split('.') {
        let (name, into_items) = match step.strip_suffix("[*]") {
            Some(name) => (name, true),
            None => (step, false),
        };
        node = &node["properties"][name];
        assert!(node.is_object(), "schema has no property {path}");
        if into_items {
            node = &node["items"];
        }
    }
    node
}

// ---------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------

/// The CEL failures of `object` (and `old`, for an update) against the AcquisitionLink
/// CRD, as (field path, rule). Any failure that is not a plain `false` (a rule that does
/// not compile or cannot be evaluated) fails the test instead.
fn link_failures(object: &Value, old: Option<&Value>) -> Vec<(String, String)> {
    failures(&schema_of::<AcquisitionLink>(), object, old)
}

fn failures(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<(String, String)> {
    match Validator::new().validate(schema, object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| {
                assert_eq!(
                    e.kind,
                    ErrorKind::ValidationFailure,
                    "rule `{}` at {} did not evaluate: {}",
                    e.rule,
                    e.field_path,
                    e.message
                );
                (e.field_path.clone(), e.rule.clone())
            })
            .collect(),
    }
}

/// Asserts that exactly one rule refused the object, the one at `path`.
fn assert_refused_by(failures: Vec<(String, String)>, path: &str) {
    assert_eq!(
        failures.len(),
        1,
        "expected one failure at {path}, got {failures:?}"
    );
    assert_eq!(failures[0].0, path, "failure {failures:?}");
}

fn valid_link() -> Value {
    json!({
        "apiVersion": "acquisition.wecom.dev/v1alpha1",
        "kind": "AcquisitionLink",
        "metadata": { "name": "sales", "namespace": "shop" },
        "spec": {
            "appRef": { "name": "wecom" },
            "linkName": "Sales team",
            "range": { "userList": ["zhangsan", "lisi"] }
        }
    })
}

fn link_with(spec_patch: Value) -> Value {
    let mut link = valid_link();
    for (k, v) in spec_patch.as_object().unwrap() {
        link["spec"][k] = v.clone();
    }
    link
}

// ---------------------------------------------------------------------------------------
// Inventory: every rule in the CRD is one this file tests, and is valid for v1.25+
// ---------------------------------------------------------------------------------------

#[test]
fn link_crd_declares_exactly_the_tested_rules() {
    let mut found: Vec<(String, String)> = rules_of(&schema_of::<AcquisitionLink>())
        .iter()
        .map(|r| (r.path.clone(), r.rule().to_string()))
        .collect();
    found.sort();
    let expected = vec![
        (
            "spec".to_string(),
            "!has(oldSelf.linkId) || (has(self.linkId) && self.linkId == oldSelf.linkId)"
                .to_string(),
        ),
        (
            "spec".to_string(),
            "!has(self.managementPolicy) || self.managementPolicy != 'Observe' || has(self.linkId)"
                .to_string(),
        ),
        (
            "spec.channels".to_string(),
            format!("self.all(c, bytes(c).size() <= {CHANNEL_MAX_BYTES})"),
        ),
        (
            "spec.priorityOption".to_string(),
            "self.priorityType != 2 || (has(self.priorityUserList) && size(self.priorityUserList) > 0)"
                .to_string(),
        ),
        (
            "spec.range".to_string(),
            "(has(self.userList) && size(self.userList) > 0) || (has(self.departmentList) && size(self.departmentList) > 0)"
                .to_string(),
        ),
    ];
    assert_eq!(
        found, expected,
        "the CRD's CEL rules changed: add a passing and a failing case for each new rule"
    );
}

#[test]
fn app_crd_has_no_cel_rules_only_openapi_limits() {
    let rules = rules_of(&schema_of::<WeComApp>());
    assert!(rules.is_empty(), "untested WeComApp rules: {rules:?}");
}

/// Functions and operators of standard CEL, all available in the apiserver's CRD rules
/// since Kubernetes v1.25 (no Kubernetes extension library needed).
const CEL_V1_25_FUNCTIONS: &[&str] = &[
    "!_",
    "_&&_",
    "_||_",
    "_==_",
    "_!=_",
    "_<_",
    "_<=_",
    "_>_",
    "_>=_",
    "@not_strictly_false",
    "has",
    "size",
    "all",
    "bytes",
    "matches",
    "startsWith",
];

#[test]
fn every_rule_compiles_and_stays_within_kubernetes_1_25() {
    for schema in [schema_of::<AcquisitionLink>(), schema_of::<WeComApp>()] {
        let compiled = compile_schema(&schema);
        assert!(
            !compiled.has_errors(),
            "CEL rules do not compile: {:?}",
            compiled.compilation_errors()
        );
        for rule in rules_of(&schema) {
            // `reason`, `fieldPath` (v1.28), `messageExpression` (v1.27) and
            // `optionalOldSelf` (v1.29) would be refused or dropped by older apiservers.
            let mut keys: Vec<&str> = rule
                .entry
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort();
            assert_eq!(
                keys,
                ["message", "rule"],
                "rule at {}: {:?}",
                rule.path,
                rule.entry
            );
            assert!(
                !rule.entry["message"].as_str().unwrap().is_empty(),
                "rule at {} needs a message that tells the user what to fix",
                rule.path
            );

            let program = kube_cel::cel::Program::compile(rule.rule()).unwrap();
            for function in program.references().functions() {
                assert!(
                    CEL_V1_25_FUNCTIONS.contains(&function),
                    "rule at {} uses `{function}`, not known to be in Kubernetes v1.25 CEL",
                    rule.path
                );
            }
            // CRD rules see only `self` and `oldSelf`; `c` is the comprehension variable
            // of `all` (kube-cel's own scope check mistakes it for a free variable).
            for variable in program.references().variables() {
                assert!(
                    ["self", "oldSelf", "c"].contains(&variable),
                    "rule at {} uses `{variable}`, which CRD validation rules cannot see",
                    rule.path
                );
            }
            let warnings = analyze_rule(rule.rule(), &compiled, ScopeContext::CrdValidation);
            let too_costly: Vec<_> = warnings
                .iter()
                .filter(|w| w.kind == WarningKind::CostExceeded)
                .collect();
            assert!(
                too_costly.is_empty(),
                "rule at {}: {too_costly:?}",
                rule.path
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// spec.range: at least one of userList / departmentList
// ---------------------------------------------------------------------------------------

#[test]
fn range_with_users_passes() {
    assert_eq!(link_failures(&valid_link(), None), vec![]);
}

#[test]
fn range_with_only_departments_passes() {
    let link = link_with(json!({ "range": { "departmentList": [7] } }));
    assert_eq!(link_failures(&link, None), vec![]);
}

#[test]
fn empty_range_is_refused() {
    let link = link_with(json!({ "range": {} }));
    assert_refused_by(link_failures(&link, None), "spec.range");
}

#[test]
fn range_of_empty_lists_is_refused() {
    let link = link_with(json!({ "range": { "userList": [], "departmentList": [] } }));
    assert_refused_by(link_failures(&link, None), "spec.range");
}

// ---------------------------------------------------------------------------------------
// spec.priorityOption: type 2 needs priorityUserList
// ---------------------------------------------------------------------------------------

#[test]
fn priority_type_1_without_list_passes() {
    let link = link_with(json!({ "priorityOption": { "priorityType": 1 } }));
    assert_eq!(link_failures(&link, None), vec![]);
}

#[test]
fn priority_type_2_with_list_passes() {
    let link = link_with(json!({
        "priorityOption": { "priorityType": 2, "priorityUserList": ["zhangsan"] }
    }));
    assert_eq!(link_failures(&link, None), vec![]);
}

#[test]
fn priority_type_2_without_list_is_refused() {
    let link = link_with(json!({ "priorityOption": { "priorityType": 2 } }));
    assert_refused_by(link_failures(&link, None), "spec.priorityOption");
}

#[test]
fn priority_type_2_with_empty_list_is_refused() {
    let link = link_with(json!({
        "priorityOption": { "priorityType": 2, "priorityUserList": [] }
    }));
    assert_refused_by(link_failures(&link, None), "spec.priorityOption");
}

// ---------------------------------------------------------------------------------------
// spec.channels: each at most 64 BYTES (maxLength alone counts characters)
// ---------------------------------------------------------------------------------------

#[test]
fn channels_of_64_bytes_pass() {
    let ascii = "a".repeat(64);
    let chinese = "渠".repeat(21); // 63 bytes
    assert_eq!(chinese.len(), 63);
    let link = link_with(json!({ "channels": [ascii, chinese, "wechat-moments"] }));
    assert_eq!(link_failures(&link, None), vec![]);
}

#[test]
fn channel_over_64_bytes_is_refused_even_under_64_characters() {
    let chinese = "渠".repeat(22); // 22 characters, 66 bytes: maxLength lets it through
    assert_eq!(chinese.len(), 66);
    let link = link_with(json!({ "channels": ["ok", chinese] }));
    assert_refused_by(link_failures(&link, None), "spec.channels");

    let ascii = "a".repeat(65);
    let link = link_with(json!({ "channels": [ascii] }));
    assert_refused_by(link_failures(&link, None), "spec.channels");
}

// ---------------------------------------------------------------------------------------
// spec.managementPolicy: Observe needs spec.linkId
// ---------------------------------------------------------------------------------------

#[test]
fn observe_with_link_id_passes() {
    let link = link_with(json!({ "managementPolicy": "Observe", "linkId": "cawcde1234" }));
    assert_eq!(link_failures(&link, None), vec![]);
    let link = link_with(json!({ "managementPolicy": "Manage" }));
    assert_eq!(link_failures(&link, None), vec![]);
}

#[test]
fn observe_without_link_id_is_refused() {
    let link = link_with(json!({ "managementPolicy": "Observe" }));
    assert_refused_by(link_failures(&link, None), "spec");
}

// ---------------------------------------------------------------------------------------
// spec.linkId: immutable once set (transition rule on spec)
// ---------------------------------------------------------------------------------------

#[test]
fn link_id_rule_is_skipped_on_create() {
    let link = link_with(json!({ "linkId": "cawcde1234" }));
    assert_eq!(link_failures(&link, None), vec![]);
}

#[test]
fn unchanged_link_id_passes_an_update() {
    let old = link_with(json!({ "linkId": "cawcde1234" }));
    let new = link_with(json!({ "linkId": "cawcde1234", "linkName": "Renamed" }));
    assert_eq!(link_failures(&new, Some(&old)), vec![]);
}

#[test]
fn link_id_may_be_set_later_to_adopt() {
    let old = valid_link();
    let new = link_with(json!({ "linkId": "cawcde1234" }));
    assert_eq!(link_failures(&new, Some(&old)), vec![]);
}

#[test]
fn update_without_link_id_passes() {
    let old = valid_link();
    let new = link_with(json!({ "linkName": "Renamed" }));
    assert_eq!(link_failures(&new, Some(&old)), vec![]);
}

#[test]
fn changed_link_id_is_refused() {
    let old = link_with(json!({ "linkId": "cawcde1234" }));
    let new = link_with(json!({ "linkId": "cawother999" }));
    assert_refused_by(link_failures(&new, Some(&old)), "spec");
}

#[test]
fn removed_link_id_is_refused() {
    let old = link_with(json!({ "linkId": "cawcde1234" }));
    let new = valid_link();
    assert_refused_by(link_failures(&new, Some(&old)), "spec");
}

#[test]
fn link_id_message_says_to_create_a_new_object() {
    let rules = rules_of(&schema_of::<AcquisitionLink>());
    let rule = rules.iter().find(|r| r.path == "spec").unwrap();
    let message = rule.entry["message"].as_str().unwrap();
    assert!(message.contains("immutable"), "{message}");
    assert!(
        message.contains("create a new AcquisitionLink"),
        "{message}"
    );
}

#[test]
fn every_failure_of_an_invalid_object_is_reported() {
    // Several broken rules at once: each is reported, none hides another.
    let new = link_with(json!({
        "range": {},
        "priorityOption": { "priorityType": 2 },
        "channels": ["渠".repeat(30)],
        "linkId": "other"
    }));
    let old = link_with(json!({ "linkId": "cawcde1234" }));
    let mut paths: Vec<String> = link_failures(&new, Some(&old))
        .into_iter()
        .map(|f| f.0)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        ["spec", "spec.channels", "spec.priorityOption", "spec.range"]
    );
}

// ---------------------------------------------------------------------------------------
// Plain OpenAPI limits (enforced by every apiserver version, v1.21 included)
// ---------------------------------------------------------------------------------------

#[test]
fn link_name_is_1_to_30_characters() {
    let s = schema_of::<AcquisitionLink>();
    let name = at(&s, "spec.linkName");
    assert_eq!(name["minLength"], 1);
    assert_eq!(name["maxLength"], LINK_NAME_MAX_CHARS);
    assert_eq!(LINK_NAME_MAX_CHARS, 30);
    assert!(
        s["properties"]["spec"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("linkName"))
    );
}

#[test]
fn app_ref_name_is_required_and_non_empty() {
    let s = schema_of::<AcquisitionLink>();
    assert_eq!(at(&s, "spec.appRef.name")["minLength"], 1);
    assert_eq!(at(&s, "spec.appRef")["required"], json!(["name"]));
    assert!(
        s["properties"]["spec"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("appRef"))
    );
}

#[test]
fn user_list_is_a_set_of_at_most_500_userids() {
    let s = schema_of::<AcquisitionLink>();
    let users = at(&s, "spec.range.userList");
    assert_eq!(users["maxItems"], USER_LIST_MAX_ITEMS);
    assert_eq!(USER_LIST_MAX_ITEMS, 500);
    assert_eq!(users["x-kubernetes-list-type"], "set");
    assert_eq!(users["items"]["minLength"], 1);
    assert_eq!(users["items"]["maxLength"], USER_ID_MAX_LEN);
}

#[test]
fn department_list_is_a_set_of_positive_ids() {
    let s = schema_of::<AcquisitionLink>();
    let departments = at(&s, "spec.range.departmentList");
    assert_eq!(departments["x-kubernetes-list-type"], "set");
    assert_eq!(departments["items"]["type"], "integer");
    assert_eq!(departments["items"]["minimum"].as_f64(), Some(1.0));
}

#[test]
fn priority_type_is_1_or_2_and_its_list_at_most_1000() {
    let s = schema_of::<AcquisitionLink>();
    let priority_type = at(&s, "spec.priorityOption.priorityType");
    assert_eq!(priority_type["minimum"].as_f64(), Some(1.0));
    assert_eq!(priority_type["maximum"].as_f64(), Some(2.0));
    let list = at(&s, "spec.priorityOption.priorityUserList");
    assert_eq!(list["maxItems"], PRIORITY_USER_LIST_MAX_ITEMS);
    assert_eq!(PRIORITY_USER_LIST_MAX_ITEMS, 1000);
    assert_eq!(list["x-kubernetes-list-type"], "set");
}

#[test]
fn channels_are_a_bounded_set_of_non_empty_strings() {
    let s = schema_of::<AcquisitionLink>();
    let channels = at(&s, "spec.channels");
    assert_eq!(channels["x-kubernetes-list-type"], "set");
    // Bounds keep the CEL rule's estimated cost low enough for the apiserver to accept it.
    assert_eq!(channels["maxItems"], CHANNELS_MAX_ITEMS);
    assert_eq!(channels["items"]["minLength"], 1);
    // A string of at most 64 bytes has at most 64 characters: a coarse bound, the CEL rule
    // does the byte count.
    assert_eq!(channels["items"]["maxLength"], CHANNEL_MAX_BYTES);
}

#[test]
fn link_id_when_set_is_non_empty() {
    let s = schema_of::<AcquisitionLink>();
    assert_eq!(at(&s, "spec.linkId")["minLength"], 1);
}

#[test]
fn policies_are_enums_with_defaults() {
    let s = schema_of::<AcquisitionLink>();
    let deletion = at(&s, "spec.deletionPolicy");
    assert_eq!(deletion["enum"], json!(["Delete", "Orphan"]));
    assert_eq!(deletion["default"], "Delete");
    let remote = at(&s, "spec.onRemoteDelete");
    assert_eq!(remote["enum"], json!(["Recreate", "Orphan"]));
    assert_eq!(remote["default"], "Recreate");
    assert_eq!(at(&s, "spec.skipVerify")["default"], true);
}

#[test]
fn app_references_and_ids_are_non_empty() {
    let s = schema_of::<WeComApp>();
    assert_eq!(at(&s, "spec.corpId")["minLength"], 1);
    for reference in [
        "spec.secretRef",
        "spec.callback.tokenRef",
        "spec.callback.aesKeyRef",
    ] {
        for field in ["name", "key"] {
            let path = format!("{reference}.{field}");
            assert_eq!(at(&s, &path)["minLength"], 1, "{path}");
        }
        assert_eq!(
            at(&s, reference)["required"],
            json!(["key", "name"]),
            "{reference}"
        );
    }
    assert_eq!(at(&s, "spec.callback.receiveId")["minLength"], 1);
}

#[test]
fn requests_per_minute_is_1_to_10000() {
    let s = schema_of::<WeComApp>();
    let rpm = at(&s, "spec.requestsPerMinute");
    assert_eq!(rpm["minimum"].as_f64(), Some(1.0));
    assert_eq!(
        rpm["maximum"].as_f64(),
        Some(f64::from(REQUESTS_PER_MINUTE_MAX))
    );
    assert_eq!(REQUESTS_PER_MINUTE_MAX, 10_000);
}

#[test]
fn api_base_url_pattern_accepts_http_and_https_only() {
    let s = schema_of::<WeComApp>();
    let pattern = at(&s, "spec.apiBaseUrl")["pattern"].as_str().unwrap();
    assert_eq!(pattern, API_BASE_URL_PATTERN);
    // Evaluate the pattern with CEL's RE2-style `matches`, as the apiserver's Go regexp
    // would: a tiny schema whose only rule is the pattern.
    let probe = json!({
        "type": "string",
        "x-kubernetes-validations": [{ "rule": format!("self.matches('{pattern}')") }]
    });
    for ok in [
        "http://127.0.0.1:8900",
        "https://qyapi.weixin.qq.com",
        "http://wecom-sim.wecom-system.svc:8900/",
    ] {
        assert_eq!(failures(&probe, &json!(ok), None), vec![], "{ok}");
    }
    for bad in [
        "ftp://qyapi.weixin.qq.com",
        "qyapi.weixin.qq.com",
        "https://",
        "HTTP://x",
        " http://x",
    ] {
        assert_eq!(failures(&probe, &json!(bad), None).len(), 1, "{bad}");
    }
}
