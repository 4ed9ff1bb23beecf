//! The instruction callback of a WeComSuite, `/suite/{namespace}/{suite}` on the callback
//! port, and what its events do.
//!
//! The endpoint checks as the app endpoint does (signature in constant time, timestamp
//! window, replays, the suite id as receive id), answers `success` at once (WeCom wants
//! a `create_auth` answered within 1 s) and queues the event; a full queue answers 503 so
//! WeCom retries. The suite's Token and EncodingAESKey are read from its Secret on the
//! first callback and kept for a minute.
//!
//! The worker, one event at a time:
//! - `suite_ticket`: written to the Secret `{suite}-suite-ticket` (key `suiteTicket`) by
//!   server-side apply; the suite token is asked with it when it is next refreshed.
//! - `create_auth` / `reset_permanent_code`: `v2/get_permanent_code`, the code written to
//!   the Secret `{suite}-{corp}` (key `permanentCode`), and the WeComApp `{suite}-{corp}`
//!   applied (corpId, secretRef, suite): a WeComApp of that name made by someone else is
//!   referenced as it is when its fields conflict. For a custom-developed template (suite
//!   id `dk...`) the app has no `suite`: the permanent code is its secret, with gettoken.
//! - `cancel_auth`: the corp's Secret keeps only `authCancelledAt` (the permanent code is
//!   void and deleted), the app's client is dropped, and the app and its links get a pass:
//!   the app says `Ready=False, AuthorizationCancelled` and no link writes.
//! - `change_auth`: the app gets a pass.
//!
//! Customer-acquisition events of an authorised corp (third-party envelope with
//! `AuthCorpId` and `ChangeType`) arrive on the same URL: they are handed to the app
//! event queue as the corp's WeComApp's own callbacks would be.
//!
//! Nothing here logs a ticket, an AuthCode, a permanent code or a token.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tokio::sync::mpsc;

use super::endpoint::{InboundEvent, Response};
use super::replay::ReplayGuard;
use crate::api::{
    AUTH_CANCELLED_KEY, AuthorisedCorp, PERMANENT_CODE_KEY, SUITE_LABEL, SUITE_TICKET_KEY,
    WeComSuite, authorised_app_name, ticket_secret_name,
};
use crate::reconcile::context::Context;
use crate::reconcile::triggers::Triggers;
use crate::wecom::crypto::{CallbackCrypto, extract_encrypt};
use crate::wecom::event::parse_event;
use crate::wecom::suite_event::{SuiteEvent, SuiteInfo, parse_suite_event};
use crate::wecom::{Secret, unix_now};

/// The field manager of what the suite worker writes.
pub const SUITE_FIELD_MANAGER: &str = "wecom-acq-suite";
/// Path prefix of suite callbacks.
pub const SUITE_PATH_PREFIX: &str = "/suite/";
const KEYS_TTL: Duration = Duration::from_secs(60);
const QUEUE_CAPACITY: usize = 1024;

/// One accepted suite callback.
pub struct SuiteInbound {
    pub namespace: String,
    pub suite: String,
    pub event: SuiteEvent,
}

struct SuiteKeys {
    crypto: CallbackCrypto,
    read_at: Instant,
}

/// The HTTP side of suite callbacks.
pub struct SuiteEndpoint {
    context: Arc<Context>,
    keys: Mutex<HashMap<(String, String), Arc<SuiteKeys>>>,
    replays: ReplayGuard,
    queue: mpsc::Sender<SuiteInbound>,
    /// Where customer-acquisition events of an authorised corp go (the app endpoint's
    /// queue); `None` drops them (polling stays the backup).
    app_events: Option<mpsc::Sender<InboundEvent>>,
    max_skew: Option<Duration>,
}

fn answer(status: StatusCode, body: &'static str) -> Response {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

fn suite_path(path: &str) -> Option<(String, String)> {
    let (namespace, suite) = path.strip_prefix(SUITE_PATH_PREFIX)?.split_once('/')?;
    if namespace.is_empty() || suite.is_empty() || suite.contains('/') {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    Some((decode(namespace)?, decode(suite)?))
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .ok()
                .map(|v| v.into_owned())
        })?
    })
}

impl SuiteEndpoint {
    /// The endpoint and the receiving end of its queue (for [`spawn_worker`]).
    pub fn new(
        context: Arc<Context>,
        app_events: Option<mpsc::Sender<InboundEvent>>,
        max_skew: Option<Duration>,
    ) -> (Arc<Self>, mpsc::Receiver<SuiteInbound>) {
        let (queue, events) = mpsc::channel(QUEUE_CAPACITY);
        let endpoint = SuiteEndpoint {
            context,
            keys: Mutex::new(HashMap::new()),
            replays: ReplayGuard::new(Duration::from_secs(600), 100_000),
            queue,
            app_events,
            max_skew,
        };
        (Arc::new(endpoint), events)
    }

    /// Whether `path` is a suite callback path.
    pub fn serves(path: &str) -> bool {
        path.starts_with(SUITE_PATH_PREFIX)
    }

    /// Answers one request on a suite path.
    pub async fn handle(&self, request: Request<hyper::body::Incoming>) -> Response {
        let (parts, body) = request.into_parts();
        let Some((namespace, suite)) = suite_path(parts.uri.path()) else {
            return answer(StatusCode::NOT_FOUND, "");
        };
        let query = parts.uri.query().unwrap_or_default();
        let (Some(signature), Some(timestamp), Some(nonce)) = (
            query_value(query, "msg_signature"),
            query_value(query, "timestamp"),
            query_value(query, "nonce"),
        ) else {
            return answer(StatusCode::BAD_REQUEST, "");
        };
        let Some(keys) = self.keys(&namespace, &suite).await else {
            return answer(StatusCode::NOT_FOUND, "");
        };
        if let Some(skew) = self.max_skew {
            let fresh = timestamp
                .parse::<i64>()
                .is_ok_and(|t| t.abs_diff(unix_now()) <= skew.as_secs());
            if !fresh {
                return self.refuse(&namespace, &suite, StatusCode::FORBIDDEN, "stale timestamp");
            }
        }
        let content = match parts.method {
            Method::GET => match query_value(query, "echostr") {
                Some(echostr) => echostr,
                None => return answer(StatusCode::BAD_REQUEST, ""),
            },
            Method::POST => {
                let read = tokio::time::timeout(
                    Duration::from_secs(10),
                    http_body_util::Limited::new(body, super::endpoint::BODY_LIMIT).collect(),
                )
                .await;
                let Ok(Ok(collected)) = read else {
                    return answer(StatusCode::BAD_REQUEST, "");
                };
                let bytes = collected.to_bytes();
                let Ok(text) = std::str::from_utf8(&bytes) else {
                    return answer(StatusCode::BAD_REQUEST, "");
                };
                match extract_encrypt(text) {
                    Ok(encrypt) => encrypt,
                    Err(_) => return answer(StatusCode::BAD_REQUEST, ""),
                }
            }
            _ => return answer(StatusCode::METHOD_NOT_ALLOWED, ""),
        };
        if keys
            .crypto
            .verify_signature(&signature, &timestamp, &nonce, &content)
            .is_err()
        {
            return self.refuse(&namespace, &suite, StatusCode::FORBIDDEN, "bad signature");
        }
        let plain = match keys.crypto.decrypt(&content) {
            Ok(plain) => plain,
            Err(err) => {
                tracing::warn!(%namespace, %suite, error = %err, "suite callback refused");
                return answer(StatusCode::FORBIDDEN, "");
            }
        };
        if parts.method == Method::GET {
            tracing::info!(%namespace, %suite, "suite callback URL verified");
            let mut response = Response::new(Full::new(Bytes::from(plain)));
            *response.status_mut() = StatusCode::OK;
            return response;
        }
        let key = self
            .replays
            .key(&[namespace.as_bytes(), suite.as_bytes(), plain.as_bytes()]);
        if !self.replays.insert_all_new(&[key]) {
            return answer(StatusCode::OK, "success");
        }
        let event = match parse_suite_event(&plain) {
            Ok(SuiteEvent {
                info: SuiteInfo::Other { .. },
                ..
            }) => return self.forward(namespace, &suite, &plain, key),
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(%namespace, %suite, error = %err, "suite callback is not a suite event");
                return answer(StatusCode::OK, "success");
            }
        };
        tracing::info!(%namespace, %suite, info_type = event.info.info_type(), "suite callback accepted");
        let inbound = SuiteInbound {
            namespace,
            suite,
            event,
        };
        match self.queue.try_send(inbound) {
            Ok(()) => answer(StatusCode::OK, "success"),
            Err(_) => {
                self.replays.forget(&[key]);
                answer(StatusCode::SERVICE_UNAVAILABLE, "")
            }
        }
    }

    /// A customer-acquisition event of an authorised corp: to the queue of the corp's app.
    fn forward(
        &self,
        namespace: String,
        suite: &str,
        plain: &str,
        key: super::replay::ReplayKey,
    ) -> Response {
        let (Some(queue), Ok(event)) = (&self.app_events, parse_event(plain)) else {
            return answer(StatusCode::OK, "success");
        };
        let inbound = InboundEvent {
            app: authorised_app_name(suite, &event.corp_id),
            namespace,
            event,
            received_at: Instant::now(),
        };
        match queue.try_send(inbound) {
            Ok(()) => answer(StatusCode::OK, "success"),
            Err(_) => {
                self.replays.forget(&[key]);
                answer(StatusCode::SERVICE_UNAVAILABLE, "")
            }
        }
    }

    fn refuse(&self, namespace: &str, suite: &str, status: StatusCode, why: &str) -> Response {
        tracing::warn!(%namespace, %suite, status = status.as_u16(), "suite callback refused: {why}");
        answer(status, "")
    }

    /// The suite's callback keys: cached for a minute, else read from its Secret.
    async fn keys(&self, namespace: &str, suite: &str) -> Option<Arc<SuiteKeys>> {
        let key = (namespace.to_string(), suite.to_string());
        if let Ok(keys) = self.keys.lock()
            && let Some(found) = keys.get(&key)
            && found.read_at.elapsed() < KEYS_TTL
        {
            return Some(found.clone());
        }
        let api: Api<WeComSuite> = Api::namespaced(self.context.kube.clone(), namespace);
        let found = api.get_opt(suite).await.ok().flatten()?;
        let apps = &self.context.apps;
        let token = apps
            .read_secret(namespace, &found.spec.callback.token_ref, suite)
            .await
            .ok()?;
        let aes_key = apps
            .read_secret(namespace, &found.spec.callback.aes_key_ref, suite)
            .await
            .ok()?;
        let crypto = match CallbackCrypto::new(&token, &aes_key, &found.spec.suite_id) {
            Ok(crypto) => crypto,
            Err(err) => {
                tracing::warn!(%namespace, %suite, error = %err, "the suite's callback Token or EncodingAESKey is not usable");
                return None;
            }
        };
        let keys = Arc::new(SuiteKeys {
            crypto,
            read_at: Instant::now(),
        });
        if let Ok(mut cache) = self.keys.lock() {
            cache.insert(key, keys.clone());
        }
        Some(keys)
    }
}

/// Handles queued suite events until the endpoint is gone.
pub fn spawn_worker(
    context: Arc<Context>,
    triggers: Triggers,
    mut events: mpsc::Receiver<SuiteInbound>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(inbound) = events.recv().await {
            let info_type = inbound.event.info.info_type().to_string();
            if let Err(message) = handle(&context, &triggers, inbound).await {
                tracing::warn!(info_type, "suite event not handled: {message}");
            }
        }
    })
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

async fn handle(ctx: &Context, triggers: &Triggers, inbound: SuiteInbound) -> Result<(), String> {
    let SuiteInbound {
        namespace,
        suite,
        event,
    } = inbound;
    let suites: Api<WeComSuite> = Api::namespaced(ctx.kube.clone(), &namespace);
    let found = suites
        .get_opt(&suite)
        .await
        .map_err(|e| format!("reading WeComSuite {namespace}/{suite}: {e}"))?
        .ok_or_else(|| format!("WeComSuite {namespace}/{suite} is gone"))?;
    if event.suite_id != found.spec.suite_id {
        return Err(format!(
            "WeComSuite {namespace}/{suite}: the event names another suite id"
        ));
    }
    match event.info {
        SuiteInfo::SuiteTicket { ticket } => {
            let name = ticket_secret_name(&suite);
            apply_secret(ctx, &namespace, &name, &suite, SUITE_TICKET_KEY, &ticket).await?;
            let status = json!({ "status": {
                "lastTicketTime": now_rfc3339(),
                "conditions": [ready_condition(&found, "TicketReceived",
                    "a suite_ticket was received and stored in its Secret")],
            }});
            patch_suite_status(&suites, &suite, &status).await;
            Ok(())
        }
        SuiteInfo::CreateAuth { auth_code } | SuiteInfo::ResetPermanentCode { auth_code } => {
            let client = ctx
                .apps
                .suite_client(&namespace, &suite, &suite)
                .await
                .map_err(|e| e.to_string())?;
            let auth = client
                .permanent_code(&Secret::new(auth_code))
                .await
                .map_err(|e| format!("WeComSuite {namespace}/{suite}: {}", e.summary()))?;
            let app = authorised_app_name(&suite, &auth.corp_id);
            apply_secret(
                ctx,
                &namespace,
                &app,
                &suite,
                PERMANENT_CODE_KEY,
                auth.permanent_code.expose(),
            )
            .await?;
            apply_app(ctx, &namespace, &app, &suite, &found, &auth.corp_id).await;
            ctx.apps.forget(&namespace, &app);
            record_corp(
                &suites,
                &found,
                AuthorisedCorp {
                    corp_id: auth.corp_id.clone(),
                    corp_name: Some(auth.corp_name.clone()).filter(|n| !n.is_empty()),
                    app: app.clone(),
                    state: "Authorised".into(),
                    since: Some(now_rfc3339()),
                },
            )
            .await;
            tracing::info!(%namespace, %suite, corp_id = %auth.corp_id, %app, "corp authorised the suite; permanent code stored");
            wake(ctx, triggers, &namespace, &app).await;
            Ok(())
        }
        SuiteInfo::CancelAuth { auth_corp_id } => {
            let app = authorised_app_name(&suite, &auth_corp_id);
            apply_secret(
                ctx,
                &namespace,
                &app,
                &suite,
                AUTH_CANCELLED_KEY,
                &unix_now().to_string(),
            )
            .await?;
            ctx.apps.forget(&namespace, &app);
            record_corp(
                &suites,
                &found,
                AuthorisedCorp {
                    corp_id: auth_corp_id.clone(),
                    corp_name: None,
                    app: app.clone(),
                    state: "Cancelled".into(),
                    since: Some(now_rfc3339()),
                },
            )
            .await;
            tracing::info!(%namespace, %suite, corp_id = %auth_corp_id, %app, "corp cancelled its authorisation; permanent code deleted");
            wake(ctx, triggers, &namespace, &app).await;
            Ok(())
        }
        SuiteInfo::ChangeAuth { auth_corp_id } => {
            let app = authorised_app_name(&suite, &auth_corp_id);
            wake(ctx, triggers, &namespace, &app).await;
            Ok(())
        }
        SuiteInfo::Other { .. } => Ok(()),
    }
}

fn ready_condition(suite: &WeComSuite, reason: &str, message: &str) -> serde_json::Value {
    json!({
        "type": "Ready",
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_rfc3339(),
        "observedGeneration": suite.metadata.generation,
    })
}

async fn patch_suite_status(suites: &Api<WeComSuite>, name: &str, status: &serde_json::Value) {
    if let Err(err) = suites
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
    {
        tracing::warn!(suite = name, error = %err, "could not write the WeComSuite's status");
    }
}

async fn record_corp(suites: &Api<WeComSuite>, suite: &WeComSuite, corp: AuthorisedCorp) {
    let mut corps: BTreeMap<String, AuthorisedCorp> = suite
        .status
        .as_ref()
        .map(|s| s.corps.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.corp_id.clone(), c))
        .collect();
    corps.insert(corp.corp_id.clone(), corp);
    let corps: Vec<_> = corps.into_values().collect();
    let name = suite.metadata.name.clone().unwrap_or_default();
    patch_suite_status(suites, &name, &json!({ "status": { "corps": corps } })).await;
}

/// Writes `key` (alone) into Secret `name` by server-side apply: a key this manager wrote
/// before and does not write now is removed (the permanent code on cancel_auth).
async fn apply_secret(
    ctx: &Context,
    namespace: &str,
    name: &str,
    suite: &str,
    key: &str,
    value: &str,
) -> Result<(), String> {
    let secret = KubeSecret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                SUITE_LABEL.to_string(),
                suite.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..KubeSecret::default()
    };
    let api: Api<KubeSecret> = Api::namespaced(ctx.kube.clone(), namespace);
    api.patch(
        name,
        &PatchParams::apply(SUITE_FIELD_MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("writing Secret {namespace}/{name}: {e}"))
}

/// Applies the WeComApp of an authorised corp. A WeComApp of that name someone else made
/// with other values is left as it is (referenced), with a warning.
async fn apply_app(
    ctx: &Context,
    namespace: &str,
    name: &str,
    suite: &str,
    found: &WeComSuite,
    corp_id: &str,
) {
    let mut spec = json!({
        "corpId": corp_id,
        "secretRef": { "name": name, "key": PERMANENT_CODE_KEY },
    });
    // A custom-developed (代开发) template's permanent code is the app's secret, used
    // with gettoken; a third-party suite's gives tokens through get_corp_token.
    if !is_custom_developed(&found.spec.suite_id) {
        spec["suite"] = json!({ "name": suite });
    }
    if let Some(url) = &found.spec.api_base_url {
        spec["apiBaseUrl"] = json!(url);
    }
    if let Some(rpm) = found.spec.requests_per_minute {
        spec["requestsPerMinute"] = json!(rpm);
    }
    let app = json!({
        "apiVersion": "acquisition.wecom.dev/v1alpha1",
        "kind": "WeComApp",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { SUITE_LABEL: suite },
        },
        "spec": spec,
    });
    let api: Api<crate::api::WeComApp> = Api::namespaced(ctx.kube.clone(), namespace);
    if let Err(err) = api
        .patch(
            name,
            &PatchParams::apply(SUITE_FIELD_MANAGER),
            &Patch::Apply(&app),
        )
        .await
    {
        tracing::warn!(%namespace, app = name, error = %err, "could not apply the WeComApp of an authorised corp; an existing one is used as it is");
    }
}

/// Custom-developed app templates have ids starting with `dk` (path/97162).
pub fn is_custom_developed(suite_id: &str) -> bool {
    suite_id.starts_with("dk")
}

/// Gives the app and its links a pass now.
async fn wake(ctx: &Context, triggers: &Triggers, namespace: &str, app: &str) {
    let _ = triggers
        .apps
        .send(ObjectRef::new(app).within(namespace))
        .await;
    for link in ctx.link_store.state() {
        if link.metadata.namespace.as_deref() == Some(namespace) && link.spec.app_ref.name == app {
            let _ = triggers
                .links
                .send(ObjectRef::from_obj(link.as_ref()))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_paths_are_namespace_and_name() {
        assert_eq!(
            suite_path("/suite/sp/acme"),
            Some(("sp".into(), "acme".into()))
        );
        assert_eq!(suite_path("/suite/sp/"), None);
        assert_eq!(suite_path("/suite/sp/a/b"), None);
        assert_eq!(suite_path("/callback/sp/a"), None);
    }
}
