//! The HTTP face of gettoken and A1-A8: WeCom's wire format (HTTP 200, `errcode`/`errmsg`
//! in a JSON body) around [`super::state::SimState::call`].

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::Shared;
use super::state::{ApiFailure, CallQuery, RawReply};
use crate::wecom::error::Api;

/// Parses the query string WeCom reads; unknown or malformed pairs are ignored.
pub(crate) fn parse_query(raw: Option<&str>) -> CallQuery {
    let mut q = CallQuery::default();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "access_token" => q.access_token = Some(v.into_owned()),
            "suite_access_token" => q.suite_access_token = Some(v.into_owned()),
            "corpid" => q.corpid = Some(v.into_owned()),
            "corpsecret" => q.corpsecret = Some(v.into_owned()),
            _ => {}
        }
    }
    q
}

/// Serves one WeCom call: count it, apply faults and the frequency limit, then the API.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    api: Api,
    method: Method,
    raw_query: Option<String>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let admission = shared.lock().admit(api, started);
    if let Some(latency) = admission.latency {
        // Injected latency (POST /_sim/faults): the product's fault injection.
        tokio::time::sleep(latency).await;
    }
    if let Some(raw) = admission.raw {
        tracing::debug!(
            api = api.name(),
            status = raw.status,
            "sim WeCom call: raw fault"
        );
        return raw_response(raw);
    }
    let result = match admission.refusal {
        Some(refusal) => Err(refusal),
        None => {
            let query = parse_query(raw_query.as_deref());
            let mut state = shared.lock();
            let result = state.call(api, method == Method::GET, &query, &body);
            let events = state.take_events();
            drop(state);
            shared.push(events);
            result
        }
    };
    let (errcode, answer) = render(result);
    tracing::debug!(
        method = %method,
        api = api.name(),
        errcode,
        ms = started.elapsed().as_millis() as u64,
        "sim WeCom call"
    );
    Json(answer).into_response()
}

/// Raw answers longer than this are streamed in chunks of this size, without a
/// Content-Length, so a client cannot refuse them from the header alone.
const RAW_CHUNK_BYTES: usize = 64 * 1024;

/// A raw fault's answer as it was asked for (status and content type were checked when
/// the fault was added).
fn raw_response(raw: RawReply) -> Response {
    let status = StatusCode::from_u16(raw.status).unwrap_or(StatusCode::OK);
    let body = if raw.body.len() > RAW_CHUNK_BYTES {
        let body = axum::body::Bytes::from(raw.body);
        let chunks: Vec<Result<axum::body::Bytes, std::io::Error>> = (0..body.len())
            .step_by(RAW_CHUNK_BYTES)
            .map(|start| Ok(body.slice(start..(start + RAW_CHUNK_BYTES).min(body.len()))))
            .collect();
        axum::body::Body::from_stream(futures::stream::iter(chunks))
    } else {
        axum::body::Body::from(raw.body)
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    if let Some(value) = raw
        .content_type
        .and_then(|t| header::HeaderValue::from_str(&t).ok())
    {
        headers.insert(header::CONTENT_TYPE, value);
    }
    response
}

fn render(result: Result<Value, ApiFailure>) -> (i64, Value) {
    match result {
        Ok(mut value) => {
            if let Value::Object(map) = &mut value {
                map.insert("errcode".into(), 0.into());
                map.insert("errmsg".into(), "ok".into());
            }
            (0, value)
        }
        Err(f) => (
            f.errcode,
            serde_json::json!({ "errcode": f.errcode, "errmsg": f.errmsg() }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_decodes_and_ignores_extras() {
        let q = parse_query(Some("corpid=ww%20x&corpsecret=a%2Bb&debug=1&access_token"));
        assert_eq!(q.corpid.as_deref(), Some("ww x"));
        assert_eq!(q.corpsecret.as_deref(), Some("a+b"));
        assert_eq!(q.access_token.as_deref(), Some(""));
    }
}
