//! The HTTP face of the emulator: routes Kubernetes API paths (discovery, resources,
//! subresources, `/watch/` paths) to the store, applies the fault hooks, and streams
//! watches as newline-delimited `{"type","object"}` JSON.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use super::faults::{Faults, lock};
use super::patch::PatchKind;
use super::resources::{self, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{ListQuery, Store, WatchFilter, WriteScope};

/// The apiserver's request body limit.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Watches without timeoutSeconds last as long as the apiserver's minimum request
/// timeout.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<Mutex<Store>>,
    pub faults: Arc<Faults>,
    pub addr: SocketAddr,
    pub bookmark_interval: Duration,
    pub shutdown: watch::Receiver<bool>,
}

pub(crate) fn router(state: AppState) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(error: &ApiError) -> Response {
    let code = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &error.to_status())
}

async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let delay = state.faults.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let watching = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    if method == axum::http::Method::GET
        && !watching
        && let Some(plural) = path.rsplit('/').next()
    {
        let delay = state.faults.list_delay(plural);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    let response = match state.faults.outage() {
        Some(status) => error_response(&ApiError::injected(status, "", "", "")),
        None => match route(&state, request).await {
            Ok(response) => response,
            Err(error) => error_response(&error),
        },
    };
    let shown = if method == axum::http::Method::GET && watching {
        "WATCH"
    } else {
        method.as_str()
    };
    state
        .faults
        .count_request(shown, response.status().as_u16());
    tracing::debug!(%method, %path, %query, status = response.status().as_u16(), "kubesim request");
    response
}

/// A request path under `/api/v1` or `/apis/{group}/{version}`.
struct ResourcePath {
    group: String,
    version: String,
    watch: bool,
    segments: Vec<String>,
}

async fn route(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let segments: Vec<String> = request
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get_only = |body: Value| -> Result<Response, ApiError> {
        if request.method() == Method::GET {
            Ok(json_response(StatusCode::OK, &body))
        } else {
            Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource: {}",
                request.method()
            )))
        }
    };
    let (group, version, rest) = match seg.as_slice() {
        ["version"] => return get_only(resources::version_info()),
        ["healthz" | "readyz" | "livez"] => {
            return Ok((StatusCode::OK, "ok").into_response());
        }
        ["api"] => return get_only(resources::core_versions(&state.addr.to_string())),
        ["apis"] => return get_only(resources::group_list(lock(&state.store).types())),
        ["apis", group] => {
            let doc = resources::group(lock(&state.store).types(), group);
            return doc.map_or_else(|| Err(ApiError::no_route()), get_only);
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route()),
    };
    if rest.is_empty() {
        let doc = resources::resource_list(lock(&state.store).types(), group, version);
        return doc.map_or_else(|| Err(ApiError::no_route()), get_only);
    }
    let (watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let path = ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        watch,
        segments: rest.iter().map(|s| s.to_string()).collect(),
    };
    serve_resource(state, path, request).await
}

/// The resource, namespace, name and subresource a path names.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn resolve(store: &Store, path: &ResourcePath) -> Result<Target, ApiError> {
    let s = &path.segments;
    let find = |plural: &str| store.find_type(&path.group, &path.version, plural);
    if s.len() >= 3 && s[0] == "namespaces" && find(&s[2]).is_some_and(|t| t.namespaced) {
        if s.len() > 5 {
            return Err(ApiError::no_route());
        }
        let rt = find(&s[2]).ok_or_else(ApiError::no_route)?;
        return Ok(Target {
            rt,
            namespace: Some(s[1].clone()),
            name: s.get(3).cloned(),
            subresource: s.get(4).cloned(),
        });
    }
    if s.is_empty() || s.len() > 3 {
        return Err(ApiError::no_route());
    }
    let rt = find(&s[0]).ok_or_else(ApiError::no_route)?;
    if rt.namespaced && s.len() > 1 {
        return Err(ApiError::no_route());
    }
    Ok(Target {
        rt,
        namespace: None,
        name: s.get(1).cloned(),
        subresource: s.get(2).cloned(),
    })
}

fn parse_query(request: &Request) -> HashMap<String, String> {
    url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn is_true(value: Option<&String>) -> bool {
    matches!(value.map(String::as_str), Some("true" | "1"))
}

fn selectors(
    rt: &ResourceType,
    query: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?;
    let fields = FieldSelector::parse(
        query.get("fieldSelector").map_or("", String::as_str),
        rt.selectable_fields,
    )?;
    Ok((labels, fields))
}

async fn read_body(request: Request) -> Result<(String, Bytes), ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let body = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body failed: {e}")))?;
    Ok((content_type, body))
}

/// A POST or PUT body: JSON, or YAML when the Content-Type says so.
fn decode_object(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/json" | "" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON body: {e}"))),
        "application/yaml" => crate::yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML body: {e}"))),
        other => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format ({other}) - accepted media types include: application/json, application/yaml"
        ))),
    }
}

async fn serve_resource(
    state: &AppState,
    path: ResourcePath,
    request: Request,
) -> Result<Response, ApiError> {
    let target = resolve(&lock(&state.store), &path)?;
    let Target {
        rt,
        namespace,
        name,
        subresource,
    } = target;
    let status = match subresource.as_deref() {
        None => false,
        Some("status") if rt.status_subresource => true,
        Some(_) => return Err(ApiError::no_route()),
    };
    let query = parse_query(&request);
    let user_agent = request
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let scope = WriteScope {
        status,
        manager: match query.get("fieldManager").filter(|m| !m.is_empty()) {
            Some(manager) => manager.clone(),
            None => super::managed::manager_from_user_agent(user_agent),
        },
        force: is_true(query.get("force")),
    };
    if query.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the kubesim emulator; run this request against a real apiserver",
        ));
    }
    let ns = namespace.clone().unwrap_or_default();
    let method = request.method().clone();
    let is_watch = path.watch || is_true(query.get("watch"));
    if method != Method::GET
        && let Some(status) = state.faults.take_write_failure(&rt)
    {
        return Err(ApiError::injected(
            status,
            &rt.group,
            &rt.plural,
            name.as_deref().unwrap_or_default(),
        ));
    }
    match (method, name) {
        (Method::GET, name) if is_watch => {
            let (labels, mut fields) = selectors(&rt, &query)?;
            if let Some(name) = name {
                fields = FieldSelector::parse(&format!("metadata.name={name}"), &[])?;
            }
            let filter = WatchFilter {
                resource: rt,
                namespace,
                labels,
                fields,
            };
            start_watch(state, filter, &query)
        }
        (Method::GET, Some(name)) => {
            let object = lock(&state.store).get(&rt, &ns, &name)?;
            Ok(json_response(StatusCode::OK, &object))
        }
        (Method::GET, None) => {
            let (labels, fields) = selectors(&rt, &query)?;
            let limit = match query.get("limit") {
                Some(l) => Some(l.parse::<usize>().map_err(|_| {
                    ApiError::bad_request(format!("invalid limit {l:?}: not a number"))
                })?),
                None => None,
            };
            let list_query = ListQuery {
                resource_version: query.get("resourceVersion").cloned(),
                resource_version_match: query.get("resourceVersionMatch").cloned(),
                limit,
                continue_token: query.get("continue").cloned().filter(|c| !c.is_empty()),
            };
            let filter = WatchFilter {
                resource: rt,
                namespace,
                labels,
                fields,
            };
            let list = lock(&state.store).list(&filter, &list_query)?;
            Ok(json_response(StatusCode::OK, &list))
        }
        (Method::POST, None) if !scope.status => {
            let (content_type, body) = read_body(request).await?;
            let object = decode_object(&content_type, &body)?;
            let created =
                lock(&state.store).create_with(&rt, namespace.as_deref(), object, &scope, None)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Method::PUT, Some(name)) => {
            let (content_type, body) = read_body(request).await?;
            let object = decode_object(&content_type, &body)?;
            let updated = lock(&state.store).replace(&rt, &ns, &name, object, scope)?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        (Method::PATCH, Some(name)) => {
            let (content_type, body) = read_body(request).await?;
            let kind = PatchKind::from_content_type(&content_type).ok_or_else(|| {
                ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type})"
                ))
            })?;
            let field_manager = query.get("fieldManager").map(String::as_str);
            let mut store = lock(&state.store);
            let existed = store.get(&rt, &ns, &name).is_ok();
            let patched = store.patch(&rt, &ns, &name, kind, &body, scope, field_manager)?;
            let code = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok(json_response(code, &patched))
        }
        (Method::DELETE, Some(name)) if !scope.status => {
            let (_, body) = read_body(request).await?;
            let mut options: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&body).map_err(|e| {
                    ApiError::bad_request(format!("error decoding DeleteOptions: {e}"))
                })?
            };
            if options
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
            {
                return Err(ApiError::bad_request(
                    "dryRun is not supported by the kubesim emulator; run this request against a real apiserver",
                ));
            }
            if !options.is_object() {
                options = json!({});
            }
            let result = lock(&state.store).delete(&rt, &ns, &name, &options)?;
            Ok(json_response(StatusCode::OK, &result))
        }
        (Method::DELETE, None) => {
            let (labels, fields) = selectors(&rt, &query)?;
            let filter = WatchFilter {
                resource: rt,
                namespace,
                labels,
                fields,
            };
            let result = lock(&state.store).delete_collection(&filter)?;
            Ok(json_response(StatusCode::OK, &result))
        }
        (method, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {method}"
        ))),
    }
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(rt: &ResourceType, rv: u64, initial_events_end: bool) -> Value {
    let mut object = json!({
        "kind": rt.kind,
        "apiVersion": rt.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
    });
    if initial_events_end {
        object["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    object
}

type Chunk = Result<Bytes, std::io::Error>;

fn start_watch(
    state: &AppState,
    filter: WatchFilter,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let bookmarks = is_true(query.get("allowWatchBookmarks"));
    let send_initial = query.get("sendInitialEvents").map(|v| v == "true");
    let mut resource_version = query.get("resourceVersion").cloned();
    if send_initial == Some(true) {
        let match_rule = query.get("resourceVersionMatch").map_or("", String::as_str);
        if match_rule != "NotOlderThan" || !bookmarks {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                vec![super::status::FieldError::forbidden(
                    "sendInitialEvents",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan and allowWatchBookmarks",
                )],
            ));
        }
        // The current state is at least as fresh as any resourceVersion the client knows.
        resource_version = Some(String::new());
    }
    if let Some(rv) = resource_version.as_deref()
        && !rv.is_empty()
        && rv.parse::<u64>().is_err()
    {
        return Err(ApiError::bad_request(format!(
            "invalid resourceVersion {rv:?}: not a number"
        )));
    }
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let started = lock(&state.store).watch(&filter, resource_version.as_deref(), send_initial);
    let (tx, rx) = mpsc::channel::<Chunk>(256);
    let mut drops = state.faults.watch_drops();
    drops.mark_unchanged();
    let mut shutdown = state.shutdown.clone();
    let bookmark_interval = state.bookmark_interval;
    tokio::spawn(async move {
        let start = match started {
            Ok(start) => start,
            Err(error) => {
                // A watch that cannot start still answers 200 and reports the failure as
                // its only event, as the apiserver's watch cache does.
                let _ = tx.send(Ok(watch_line("ERROR", &error.to_status()))).await;
                return;
            }
        };
        for (kind, object) in &start.initial {
            if tx.send(Ok(watch_line(kind, object))).await.is_err() {
                return;
            }
        }
        let mut last_rv = start.from_rv;
        if send_initial == Some(true) {
            let marker = bookmark(&filter.resource, last_rv, true);
            if tx.send(Ok(watch_line("BOOKMARK", &marker))).await.is_err() {
                return;
            }
        }
        let mut changes = start.changes;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(bookmark_interval);
        ticker.reset();
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(change) => {
                        if change.rv <= last_rv {
                            continue;
                        }
                        last_rv = change.rv;
                        if let Some((kind, object)) = filter.event_for(&change)
                            && tx.send(Ok(watch_line(kind, &object))).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher too slow for the feed is closed, as the apiserver does;
                    // the client resumes from its last resourceVersion.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    // Deliver what is already committed first, so the bookmark never
                    // claims a resourceVersion whose events this watch has not sent.
                    while let Ok(change) = changes.try_recv() {
                        if change.rv <= last_rv {
                            continue;
                        }
                        last_rv = change.rv;
                        if let Some((kind, object)) = filter.event_for(&change)
                            && tx.send(Ok(watch_line(kind, &object))).await.is_err()
                        {
                            return;
                        }
                    }
                    let mark = bookmark(&filter.resource, last_rv, false);
                    if tx.send(Ok(watch_line("BOOKMARK", &mark))).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = drops.changed() => {
                    let _ = tx
                        .send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "kubesim dropped the watch")))
                        .await;
                    return;
                }
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}
