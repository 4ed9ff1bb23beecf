//! Runs the chart's ArgoCD health check (`argocd/health.lua`) under Lua 5.1, as ArgoCD
//! does, against every fixture in `tests/fixtures/argocd/` (captured from the real
//! controller by `tests/argocd_fixtures.rs`), plus the few inputs no controller state
//! produces, and checks that the argocd-cm snippets carry the script verbatim.
//!
//! Fixtures are named `{kind}-{state}-{case}.json`, where state is the health ArgoCD must
//! show.

mod argocd_lua;

use std::fs;

use argocd_lua::{CHART, expected_state, fixture, fixture_names, health_of, health_script, root};
use mlua::Lua;

const HEALTH_KEYS: [&str; 2] = [
    "resource.customizations.health.acquisition.wecom.dev_AcquisitionLink",
    "resource.customizations.health.acquisition.wecom.dev_WeComApp",
];

/// Every fixture shows the state in its name; both kinds and all four states are there.
#[test]
fn every_fixture_shows_the_state_in_its_name() {
    let names = fixture_names();
    for name in &names {
        let health = health_of(&fixture(name));
        assert_eq!(health.status, expected_state(name), "{name}: {health:?}");
    }
    for kind in ["link", "app"] {
        for state in ["healthy", "progressing", "degraded"] {
            assert!(
                names
                    .iter()
                    .any(|n| n.starts_with(&format!("{kind}-{state}-"))),
                "no {kind}-{state}-* fixture in {names:?}"
            );
        }
    }
    assert!(names.iter().any(|n| n.starts_with("link-suspended-")));
    assert!(names.len() >= 30, "only {} fixtures", names.len());
}

#[track_caller]
fn assert_message(name: &str, message_contains: &str) {
    let health = health_of(&fixture(name));
    assert!(
        health.message.contains(message_contains),
        "{name}: message {:?} lacks {message_contains:?}",
        health.message
    );
}

/// The message says why, in the controller's words.
#[test]
fn messages_carry_the_controllers_reason() {
    assert_message(
        "link-healthy-created",
        "Available: link cawcd00000000000001",
    );
    assert_message(
        "link-degraded-invalid-spec",
        "InvalidSpec: WeCom create_link",
    );
    assert_message("link-degraded-create-incomplete", "cawcd00000000000002");
    assert_message("link-progressing-retryable-create", "RetryableError");
    assert_message(
        "app-degraded-quota-exhausted",
        "QuotaExhausted: the acquisition quota is used up",
    );
    assert_message(
        "app-degraded-secret-not-found",
        "SecretNotFound: Secret default/sales-app-secret",
    );
}

/// Deletion wins over every other state: ArgoCD shows it until the object is gone.
#[test]
fn deletion_is_progressing_whatever_the_conditions_say() {
    for name in [
        "link-degraded-invalid-spec",
        "link-suspended-paused-in-sync",
        "link-healthy-created",
    ] {
        let mut link = fixture(name);
        link["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z".into();
        assert_eq!(health_of(&link).status, "Progressing", "{name}");
    }
}

/// Only "true" pauses, as in the controller.
#[test]
fn paused_annotation_other_than_true_does_not_suspend() {
    let mut link = fixture("link-healthy-created");
    link["metadata"]["annotations"]["acquisition.wecom.dev/paused"] = "false".into();
    assert_eq!(health_of(&link).status, "Healthy");
}

/// An object written without any observedGeneration (not this controller) is not
/// trusted to describe its spec.
#[test]
fn ready_condition_without_observed_generation_anywhere_is_progressing() {
    let mut link = fixture("link-healthy-created");
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

/// A terminal reason describes the generation it was written for: once the spec changed
/// it no longer degrades the object.
#[test]
fn terminal_reason_of_an_older_generation_does_not_degrade() {
    let mut link = fixture("link-degraded-invalid-spec");
    link["metadata"]["generation"] = 2.into();
    link["status"]["observedGeneration"] = 2.into();
    assert_eq!(health_of(&link).status, "Progressing");
}

/// The argocd-cm snippets must carry the tested script, not a stale copy.
#[test]
fn argocd_cm_snippets_embed_health_lua_verbatim() {
    let script = health_script();
    let values: serde_json::Value = wecom_acq::yaml::from_str(
        &fs::read_to_string(root().join(CHART).join("argocd/argocd-cm-values.yaml")).unwrap(),
    )
    .unwrap();
    let configmap: serde_json::Value = wecom_acq::yaml::from_str(
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

/// The app-level reasons the controller retries on its own back-off still need someone to
/// act in WeCom or at apiBaseUrl: a WeComApp with any of them is Degraded.
#[test]
fn app_refused_by_wecom_for_any_app_level_reason_is_degraded() {
    for reason in [
        "PermissionDenied",
        "IpNotAllowed",
        "CredentialsInvalid",
        "BadAnswer",
    ] {
        let mut app = fixture("app-degraded-permission-denied");
        for condition in app["status"]["conditions"].as_array_mut().unwrap() {
            if condition["type"] == "Ready" {
                condition["reason"] = reason.into();
            }
        }
        assert_eq!(health_of(&app).status, "Degraded", "{reason}");
    }
}
