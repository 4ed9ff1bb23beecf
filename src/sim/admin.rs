//! The simulator's admin API under `/_sim/` (not part of WeCom): what the admin console,
//! customers and time would do, plus fault injection and inspection. JSON in, JSON out;
//! bad input answers 400 with `{"error": "..."}`, an unknown link 404, a refusal 409.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Shared;
use super::org::OrgSpec;
use super::state::{AdminError, FaultSpec, LinkEdit, SimState};
use crate::wecom::types::QuotaBatch;

/// Body of `PUT /_sim/quota`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    pub batches: Vec<QuotaBatch>,
}

/// Body of `POST /_sim/links/{id}/customers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomersSpec {
    #[serde(default = "one")]
    pub count: u64,
    #[serde(default)]
    pub state: String,
}

/// Body of `POST /_sim/links/{id}/clicks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClicksSpec {
    #[serde(default = "one")]
    pub count: u64,
}

/// Body of `POST /_sim/clock`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSpec {
    pub advance_secs: u64,
}

fn one() -> u64 {
    1
}

fn body<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, AdminError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| AdminError::BadRequest(format!("invalid body for {what}: {e}")))
}

fn answer(result: Result<Value, AdminError>) -> (StatusCode, Value) {
    match result {
        Ok(v) => (StatusCode::OK, v),
        Err(AdminError::BadRequest(m)) => {
            (StatusCode::BAD_REQUEST, serde_json::json!({"error": m}))
        }
        Err(AdminError::NotFound(m)) => (StatusCode::NOT_FOUND, serde_json::json!({"error": m})),
        Err(AdminError::Conflict(m)) => (StatusCode::CONFLICT, serde_json::json!({"error": m})),
    }
}

/// Runs `op` on the state under the lock, pushes the events it made, logs one line.
fn run(
    shared: &Shared,
    method: Method,
    path: &str,
    op: impl FnOnce(&mut SimState) -> Result<Value, AdminError>,
) -> Response {
    let started = Instant::now();
    let mut state = shared.lock();
    let result = op(&mut state);
    let events = state.take_events();
    drop(state);
    shared.push(events);
    let (status, value) = answer(result);
    tracing::debug!(
        method = %method,
        path,
        status = status.as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "sim admin call"
    );
    (status, Json(value)).into_response()
}

pub(crate) async fn put_org(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    run(&shared, Method::PUT, "/_sim/org", |s| {
        s.set_org(body::<OrgSpec>(&bytes, "PUT /_sim/org")?)
    })
}

pub(crate) async fn put_quota(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    run(&shared, Method::PUT, "/_sim/quota", |s| {
        let spec = body::<QuotaSpec>(&bytes, "PUT /_sim/quota")?;
        Ok(s.set_quota(spec.batches))
    })
}

pub(crate) async fn post_customers(
    State(shared): State<Arc<Shared>>,
    Path(link_id): Path<String>,
    bytes: Bytes,
) -> Response {
    run(&shared, Method::POST, "/_sim/links/{id}/customers", |s| {
        let spec = body::<CustomersSpec>(&bytes, "POST /_sim/links/{id}/customers")?;
        s.add_customers(&link_id, spec.count, &spec.state)
    })
}

pub(crate) async fn post_clicks(
    State(shared): State<Arc<Shared>>,
    Path(link_id): Path<String>,
    bytes: Bytes,
) -> Response {
    run(&shared, Method::POST, "/_sim/links/{id}/clicks", |s| {
        let spec = body::<ClicksSpec>(&bytes, "POST /_sim/links/{id}/clicks")?;
        s.add_clicks(&link_id, spec.count)
    })
}

pub(crate) async fn delete_link(
    State(shared): State<Arc<Shared>>,
    Path(link_id): Path<String>,
) -> Response {
    run(&shared, Method::DELETE, "/_sim/links/{id}", |s| {
        s.console_delete(&link_id)
    })
}

pub(crate) async fn patch_link(
    State(shared): State<Arc<Shared>>,
    Path(link_id): Path<String>,
    bytes: Bytes,
) -> Response {
    run(&shared, Method::PATCH, "/_sim/links/{id}", |s| {
        let edit = body::<LinkEdit>(&bytes, "PATCH /_sim/links/{id}")?;
        s.console_edit(&link_id, edit)
    })
}

pub(crate) async fn post_fault(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    run(&shared, Method::POST, "/_sim/faults", |s| {
        s.add_fault(body::<FaultSpec>(&bytes, "POST /_sim/faults")?)
    })
}

pub(crate) async fn delete_faults(State(shared): State<Arc<Shared>>) -> Response {
    run(&shared, Method::DELETE, "/_sim/faults", |s| {
        Ok(s.clear_faults())
    })
}

pub(crate) async fn expire_tokens(State(shared): State<Arc<Shared>>) -> Response {
    run(&shared, Method::POST, "/_sim/tokens/expire", |s| {
        Ok(s.expire_tokens())
    })
}

pub(crate) async fn post_clock(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    run(&shared, Method::POST, "/_sim/clock", |s| {
        let spec = body::<ClockSpec>(&bytes, "POST /_sim/clock")?;
        s.advance_clock(spec.advance_secs)
    })
}

pub(crate) async fn get_calls(State(shared): State<Arc<Shared>>) -> Response {
    run(&shared, Method::GET, "/_sim/calls", |s| Ok(s.calls()))
}

pub(crate) async fn delete_calls(State(shared): State<Arc<Shared>>) -> Response {
    run(&shared, Method::DELETE, "/_sim/calls", |s| {
        Ok(s.reset_calls())
    })
}

pub(crate) async fn get_state(State(shared): State<Arc<Shared>>) -> Response {
    run(&shared, Method::GET, "/_sim/state", |s| Ok(s.dump()))
}

pub(crate) async fn put_suite(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    run(&shared, Method::PUT, "/_sim/suite", |s| {
        s.configure_suite(body::<super::suite::SuiteSpec>(&bytes, "PUT /_sim/suite")?)
    })
}

pub(crate) async fn post_suite_ticket(State(shared): State<Arc<Shared>>) -> Response {
    run(&shared, Method::POST, "/_sim/suite/ticket", |s| {
        s.push_suite_ticket()
    })
}

pub(crate) async fn post_suite_auth(State(shared): State<Arc<Shared>>) -> Response {
    run(&shared, Method::POST, "/_sim/suite/auth", |s| {
        s.authorise_suite()
    })
}

pub(crate) async fn delete_suite_auth(State(shared): State<Arc<Shared>>) -> Response {
    run(&shared, Method::DELETE, "/_sim/suite/auth", |s| {
        s.cancel_suite_auth()
    })
}
