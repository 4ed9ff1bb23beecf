//! Runs the chart's ArgoCD health check (`argocd/health.lua`) the way ArgoCD does - Lua 5.1,
//! the object as the global `obj`, only the base, table, string and math libraries - and
//! reads the health fixtures of `tests/fixtures/argocd/`, shared by `tests/argocd_health.rs`
//! (the table over the folder) and `tests/argocd_fixtures.rs` (the real controller's output).
//!
//! Fixtures are named `{kind}-{state}-{case}.json`, where state is the health ArgoCD must
//! show: `healthy`, `progressing`, `degraded` or `suspended`.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;

use mlua::{Lua, LuaOptions, LuaSerdeExt, StdLib, Table};

pub const CHART: &str = "charts/wecom-acquisition-controller";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures_dir() -> PathBuf {
    root().join("tests/fixtures/argocd")
}

pub fn health_script() -> String {
    fs::read_to_string(root().join(CHART).join("argocd/health.lua")).unwrap()
}

/// What ArgoCD shows for an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub status: String,
    pub message: String,
}

/// Runs health.lua on `object` (an AcquisitionLink or WeComApp as JSON).
pub fn health_of(object: &serde_json::Value) -> Health {
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

/// The fixture `{name}.json`.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = fixtures_dir().join(format!("{name}.json"));
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The names (without `.json`) of the fixtures in the folder, sorted.
pub fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().and_then(|e| e.to_str()) == Some("json"))
        .map(|path| path.file_stem().unwrap().to_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// The ArgoCD health a fixture's name promises.
pub fn expected_state(name: &str) -> &'static str {
    match name.split('-').nth(1) {
        Some("healthy") => "Healthy",
        Some("progressing") => "Progressing",
        Some("degraded") => "Degraded",
        Some("suspended") => "Suspended",
        other => panic!("{name}: unknown state {other:?} in the fixture name"),
    }
}
