//! Runs the chart's ArgoCD health check (`argocd/health.lua`) the way ArgoCD does - Lua
//! 5.1, the object as the global `obj`, only the base, table, string and math libraries -
//! against one AcquisitionLink or WeComApp fixture per state, and checks that the argocd-cm
//! snippets carry the script verbatim.
//!
//! Fixtures live in `tests/fixtures/argocd/` and are named `{kind}-{state}-{case}.json`,
//! where state is the health ArgoCD must show.

use std::fs;
use std::path::{Path, PathBuf};

use mlua::{Lua, LuaOptions, LuaSerdeExt, StdLib, Table};

const CHART: &str = "charts/wecom-acquisition-controller";
const HEALTH_KEYS: [&str; 2] = [
    "resource.customizations.health.acquisition.wecom.dev_AcquisitionLink",
    "resource.customizations.health.acquisition.wecom.dev_WeComApp",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn health_script() -> String {
    fs::read_to_string(root().join(CHART).join("argocd/health.lua")).unwrap()
}

/// What ArgoCD shows for the object: `(status, message)`.
#[derive(Debug)]
struct Health {
    status: String,
    message: String,
}

fn health_of(object: &serde_json::Value) -> Health {
    // ArgoCD's gopher-lua sandbox: no io, os, package or debug libraries.
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH,
        LuaOptions::new(),
    )
    .unwrap();
    // Kubernetes objects carry no nulls; plain tables, as ArgoCD builds them.
    let options = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false)
        .set_array_metatable(false);
    let obj = lua.to_value_with(object, options).unwrap();
    lua.globals().set("obj", obj).unwrap();
    let hs: Table = lua
        .load(health_script())
        .set_name("health.lua")
        .eval()
        .unwrap();
    Health {
        status: hs.get("status").unwrap(),
        message: hs.get("message").unwrap(),
    }
}

fn fixture(name: &str) -> serde_json::Value {
    let path = root()
        .join("tests/fixtures/argocd")
        .join(format!("{name}.json"));
    serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap()
}

#[track_caller]
fn assert_health(name: &str, status: &str, message_contains: &str) {
    let health = health_of(&fixture(name));
    assert_eq!(health.status, status, "{name}: {health:?}");
    assert!(
        health.message.contains(message_contains),
        "{name}: message {:?} lacks {message_contains:?}",
        health.message
    );
}

#[test]
fn ready_link_at_current_generation_is_healthy() {
    assert_health("link-healthy", "Healthy", "Available");
}

#[test]
fn ready_link_with_a_retrying_refresh_stays_healthy() {
    assert_health("link-healthy-retrying", "Healthy", "matches the spec");
}

#[test]
fn link_without_status_is_progressing() {
    assert_health(
        "link-progressing-no-status",
        "Progressing",
        "Waiting for the controller",
    );
}

#[test]
fn link_being_created_is_progressing() {
    assert_health("link-progressing-creating", "Progressing", "Creating");
}

#[test]
fn ready_link_with_unobserved_generation_is_progressing() {
    assert_health(
        "link-progressing-new-generation",
        "Progressing",
        "observe generation 4",
    );
}

#[test]
fn terminal_reason_of_an_older_generation_is_progressing() {
    // The user fixed the spec (generation 5); InvalidSpec describes generation 4.
    assert_health(
        "link-progressing-stale-invalid-spec",
        "Progressing",
        "observe generation 5",
    );
}

#[test]
fn retryable_error_is_progressing() {
    assert_health(
        "link-progressing-retryable",
        "Progressing",
        "RetryableError",
    );
}

#[test]
fn remote_delete_with_recreate_is_progressing() {
    assert_health(
        "link-progressing-remote-deleted-recreate",
        "Progressing",
        "recreating",
    );
}

#[test]
fn link_being_deleted_is_progressing() {
    assert_health("link-progressing-deleting", "Progressing", "Deleting");
}

#[test]
fn invalid_spec_is_degraded() {
    assert_health("link-degraded-invalid-spec", "Degraded", "InvalidSpec");
}

#[test]
fn permission_denied_is_degraded() {
    assert_health(
        "link-degraded-permission-denied",
        "Degraded",
        "PermissionDenied",
    );
}

#[test]
fn remote_delete_with_orphan_is_degraded() {
    assert_health(
        "link-degraded-remote-deleted-orphan",
        "Degraded",
        "RemoteDeleted",
    );
}

#[test]
fn incomplete_create_is_degraded() {
    assert_health(
        "link-degraded-create-incomplete",
        "Degraded",
        "CreateIncomplete",
    );
}

#[test]
fn exhausted_quota_is_degraded() {
    assert_health(
        "link-degraded-quota-exhausted",
        "Degraded",
        "QuotaExhausted",
    );
}

#[test]
fn terminal_reason_on_synced_degrades_an_unready_link() {
    assert_health(
        "link-degraded-not-ready-synced-terminal",
        "Degraded",
        "PermissionDenied",
    );
}

#[test]
fn paused_annotation_suspends_the_link() {
    assert_health(
        "link-suspended-paused",
        "Suspended",
        "acquisition.wecom.dev/paused",
    );
}

#[test]
fn paused_reason_suspends_the_link() {
    assert_health("link-suspended-paused-reason", "Suspended", "Paused");
}

#[test]
fn ready_app_is_healthy() {
    assert_health("app-healthy", "Healthy", "Credentials accepted");
}

#[test]
fn app_without_status_is_progressing() {
    assert_health(
        "app-progressing-no-status",
        "Progressing",
        "Waiting for the controller",
    );
}

#[test]
fn app_with_unobserved_generation_is_progressing() {
    assert_health(
        "app-progressing-new-generation",
        "Progressing",
        "observe generation 2",
    );
}

#[test]
fn app_with_refused_secret_is_degraded() {
    assert_health(
        "app-degraded-permission-denied",
        "Degraded",
        "PermissionDenied",
    );
}

#[test]
fn app_without_quota_is_degraded_though_ready() {
    assert_health("app-degraded-quota-exhausted", "Degraded", "QuotaExhausted");
}

#[test]
fn paused_link_being_deleted_is_progressing() {
    let mut link = fixture("link-suspended-paused");
    link["metadata"]["deletionTimestamp"] = "2025-06-01T09:00:00Z".into();
    assert_eq!(health_of(&link).status, "Progressing");
}

#[test]
fn ready_condition_without_observed_generation_anywhere_is_progressing() {
    let mut link = fixture("link-healthy");
    let status = link["status"].as_object_mut().unwrap();
    status.remove("observedGeneration");
    for condition in status["conditions"].as_array_mut().unwrap() {
        condition
            .as_object_mut()
            .unwrap()
            .remove("observedGeneration");
    }
    assert_eq!(health_of(&link).status, "Progressing");
}

/// Real controller output can be dropped into the folder: its name says what ArgoCD must
/// show, and every file is checked.
#[test]
fn every_fixture_shows_the_state_in_its_name() {
    let dir = root().join("tests/fixtures/argocd");
    let mut checked = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let expected = expected_state(&path);
        let health = health_of(&fixture(&name));
        assert_eq!(health.status, expected, "{name}: {health:?}");
        checked += 1;
    }
    // Both kinds, every state.
    assert!(
        checked >= 22,
        "only {checked} fixtures in {}",
        dir.display()
    );
}

fn expected_state(path: &Path) -> &'static str {
    let name = path.file_stem().unwrap().to_str().unwrap();
    let state = name.split('-').nth(1).unwrap();
    match state {
        "healthy" => "Healthy",
        "progressing" => "Progressing",
        "degraded" => "Degraded",
        "suspended" => "Suspended",
        other => panic!("{name}: unknown state {other:?} in the fixture name"),
    }
}

/// The argocd-cm snippets must carry the tested script, not a stale copy.
#[test]
fn argocd_cm_snippets_embed_health_lua_verbatim() {
    let script = health_script();
    let values: serde_yaml::Value = serde_yaml::from_str(
        &fs::read_to_string(root().join(CHART).join("argocd/argocd-cm-values.yaml")).unwrap(),
    )
    .unwrap();
    let configmap: serde_yaml::Value = serde_yaml::from_str(
        &fs::read_to_string(root().join(CHART).join("argocd/argocd-cm.yaml")).unwrap(),
    )
    .unwrap();
    for key in HEALTH_KEYS {
        assert_eq!(
            values["configs"]["cm"][key].as_str(),
            Some(script.as_str()),
            "argocd-cm-values.yaml configs.cm.{key}"
        );
        assert_eq!(
            configmap["data"][key].as_str(),
            Some(script.as_str()),
            "argocd-cm.yaml data.{key}"
        );
    }
    assert_eq!(configmap["metadata"]["name"].as_str(), Some("argocd-cm"));
}

#[test]
fn health_script_is_valid_lua_5_1() {
    // The vendored interpreter is Lua 5.1, as in ArgoCD; 5.2+ syntax (goto, //) fails here.
    let lua = Lua::new();
    let version: String = lua.globals().get("_VERSION").unwrap();
    assert_eq!(version, "Lua 5.1");
    lua.load(health_script()).into_function().unwrap();
}
