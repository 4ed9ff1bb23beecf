//! The HTTP side of the callback endpoint: `GET` (URL verification) and `POST` (events) on
//! `/callback/{namespace}/{app}`, with every safety check of issue 4, independent of
//! Kubernetes. Where an app's credentials come from ([`AppDirectory`]) and where accepted
//! events go ([`EventSink`]) are abstract, so tests and benchmarks run it alone.
//!
//! A POST goes through, in this order: the path (404 for anything but
//! `/callback/{namespace}/{app}`, 405 for other methods than GET and POST), app lookup (404
//! that reveals nothing), body limit (413; the body is read only for a known app), the
//! `Encrypt` element (400), the signature in constant time (403), the timestamp window
//! (403), the (signature, nonce) replay check (200, not processed again), decryption and
//! the receive id (400/403), event parsing (400; an authentic message that is no event is
//! answered 200 and ignored), the decrypted-content replay check (200), then a non-blocking
//! hand-off to a bounded queue (503 when full, so WeCom retries and nothing is lost
//! silently). Nothing before the hand-off touches the Kubernetes API or WeCom, so the
//! answer comes at once whatever they are doing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::replay::{ReplayGuard, ReplayKey};
use crate::isolation;
use crate::metrics::{CallbackLabels, Metrics, TaskLabels};
use crate::wecom::crypto::{CallbackCrypto, CryptoError, extract_encrypt_borrowed};
use crate::wecom::event::{CallbackEvent, Envelope, EventError, parse_event};
use crate::wecom::unix_now;

/// What the endpoint answers: a status and a small body held in memory.
pub type Response = http::Response<Full<Bytes>>;

/// Largest body accepted: WeCom's callbacks are well under 2 KiB.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Default window for the `timestamp` of a callback (`--callback-max-skew`).
pub const DEFAULT_MAX_SKEW: Duration = crate::defaults::CALLBACK_MAX_SKEW.value;
/// Default for how long a request body may take to arrive (`--callback-body-timeout`).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = crate::defaults::CALLBACK_BODY_TIMEOUT.value;
/// Most keys one replay generation holds (about 50 MB for both generations at most).
pub const DEFAULT_REPLAY_CAPACITY: usize = 1_000_000;

/// How the endpoint checks what it receives.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    /// Refuse a callback whose `timestamp` is further than this from the local clock.
    /// `None` turns the check off; only for replaying published test vectors.
    pub max_skew: Option<Duration>,
    /// Body limit in bytes (413 above it).
    pub body_limit: usize,
    /// Replay memory bound (keys per generation).
    pub replay_capacity: usize,
    /// The whole body must arrive within this once the request head is in (408 after):
    /// a client that sends a head and then trickles or stalls the body is cut off.
    pub body_read_timeout: Duration,
    /// Refusals are logged at most once per reason per this (with the count left out).
    pub refusal_log_interval: Duration,
}

impl Default for EndpointSettings {
    fn default() -> Self {
        EndpointSettings {
            max_skew: Some(DEFAULT_MAX_SKEW),
            body_limit: BODY_LIMIT,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            refusal_log_interval: crate::http_server::DEFAULT_REFUSAL_LOG_INTERVAL,
        }
    }
}

impl EndpointSettings {
    /// How long accepted callbacks are remembered: a request stamped `t` is accepted from
    /// `t - skew` to `t + skew`, so a copy can come up to twice the skew after the first.
    fn replay_period(&self) -> Duration {
        self.max_skew.unwrap_or(DEFAULT_MAX_SKEW) * 2
    }
}

/// One app's callback credentials and how to answer it.
#[derive(Debug)]
pub struct AppCallback {
    pub crypto: CallbackCrypto,
    /// The corp the app belongs to: third-party events about another corp are not ours.
    pub corp_id: String,
    /// Third-party instruction callbacks (receive id = suite id) are answered `success`;
    /// self-built apps get an empty body.
    pub third_party: bool,
}

impl AppCallback {
    /// What WeCom expects back once an event is taken.
    fn answer(&self) -> Response {
        if self.third_party {
            text(StatusCode::OK, "success")
        } else {
            empty(StatusCode::OK)
        }
    }
}

/// What [`AppDirectory::lookup`] found.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<AppCallback>),
    /// No such app, or it has no usable callback settings: 404.
    Unknown,
    /// The credentials cannot be read right now: 503, WeCom retries.
    Unavailable,
}

/// Where the endpoint finds an app's callback credentials. A lookup of a known app must
/// not wait on anything (the Kubernetes implementation answers from its cache).
pub trait AppDirectory: Send + Sync + 'static {
    fn lookup(&self, namespace: &str, app: &str) -> impl Future<Output = Lookup> + Send;
}

/// A fixed set of apps: for tests, benchmarks and the demo.
#[derive(Debug, Default, Clone)]
pub struct StaticDirectory {
    /// namespace -> app -> credentials (nested, so a lookup borrows instead of allocating)
    apps: HashMap<String, HashMap<String, Arc<AppCallback>>>,
}

impl StaticDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_app(mut self, namespace: &str, app: &str, callback: AppCallback) -> Self {
        self.apps
            .entry(namespace.to_string())
            .or_default()
            .insert(app.to_string(), Arc::new(callback));
        self
    }
}

impl AppDirectory for StaticDirectory {
    fn lookup(&self, namespace: &str, app: &str) -> impl Future<Output = Lookup> + Send {
        let found = self
            .apps
            .get(namespace)
            .and_then(|apps| apps.get(app))
            .cloned();
        std::future::ready(match found {
            Some(callback) => Lookup::Found(callback),
            None => Lookup::Unknown,
        })
    }
}

/// A verified, decrypted, parsed and de-duplicated event, on its way to the worker.
#[derive(Debug, Clone)]
pub struct InboundEvent {
    pub namespace: String,
    pub app: String,
    pub event: CallbackEvent,
    pub received_at: Instant,
}

/// Where accepted events go. `offer` never waits: it gives the event back when there is no
/// room, and the endpoint answers 503.
pub trait EventSink: Send + Sync + 'static {
    fn offer(&self, event: InboundEvent) -> Result<(), Box<InboundEvent>>;
}

impl EventSink for mpsc::Sender<InboundEvent> {
    fn offer(&self, event: InboundEvent) -> Result<(), Box<InboundEvent>> {
        self.try_send(event)
            .map_err(|err| Box::new(err.into_inner()))
    }
}

/// How a request ended: the `result` label of `wecom_acq_callbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An event queued for the worker.
    Accepted,
    /// A replay or redelivery, answered 200 and not processed again.
    Duplicate,
    /// A URL verification answered.
    Verified,
    /// A third-party event about another corp than the app's: answered 200, ignored.
    ForeignCorp,
    /// An authentic message that is not an event (no Event/InfoType or ChangeType, e.g. a
    /// text message): answered 200 so WeCom does not retry it, ignored.
    NotAnEvent,
    BadRequest,
    TooLarge,
    /// The body did not arrive whole within the body read timeout.
    BodyTimeout,
    UnknownApp,
    Unavailable,
    BadSignature,
    Stale,
    BadCiphertext,
    WrongReceiver,
    BadXml,
    BadEvent,
    QueueFull,
}

impl Outcome {
    pub const ALL: [Outcome; 17] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::Verified,
        Outcome::ForeignCorp,
        Outcome::NotAnEvent,
        Outcome::BadRequest,
        Outcome::TooLarge,
        Outcome::BodyTimeout,
        Outcome::UnknownApp,
        Outcome::Unavailable,
        Outcome::BadSignature,
        Outcome::Stale,
        Outcome::BadCiphertext,
        Outcome::WrongReceiver,
        Outcome::BadXml,
        Outcome::BadEvent,
        Outcome::QueueFull,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Verified => "verified",
            Outcome::ForeignCorp => "foreign_corp",
            Outcome::NotAnEvent => "not_an_event",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::UnknownApp => "unknown_app",
            Outcome::Unavailable => "unavailable",
            Outcome::BadSignature => "bad_signature",
            Outcome::Stale => "stale",
            Outcome::BadCiphertext => "bad_ciphertext",
            Outcome::WrongReceiver => "wrong_receiver",
            Outcome::BadXml => "bad_xml",
            Outcome::BadEvent => "bad_event",
            Outcome::QueueFull => "queue_full",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Outcome::Accepted
            | Outcome::Duplicate
            | Outcome::Verified
            | Outcome::ForeignCorp
            | Outcome::NotAnEvent => StatusCode::OK,
            Outcome::BadRequest | Outcome::BadCiphertext | Outcome::BadXml | Outcome::BadEvent => {
                StatusCode::BAD_REQUEST
            }
            Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Outcome::UnknownApp => StatusCode::NOT_FOUND,
            Outcome::BadSignature | Outcome::Stale | Outcome::WrongReceiver => {
                StatusCode::FORBIDDEN
            }
            Outcome::Unavailable | Outcome::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Counters resolved once, so the hot path does not hash label sets.
struct OutcomeCounters(Vec<Counter>);

impl OutcomeCounters {
    fn new(metrics: &Metrics) -> Self {
        OutcomeCounters(
            Outcome::ALL
                .iter()
                .map(|outcome| {
                    metrics
                        .callbacks
                        .get_or_create(&CallbackLabels {
                            result: outcome.label().to_string(),
                        })
                        .clone()
                })
                .collect(),
        )
    }

    fn inc(&self, outcome: Outcome) {
        if let Some(counter) = Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .and_then(|i| self.0.get(i))
        {
            counter.inc();
        }
    }
}

struct Endpoint<D, S> {
    directory: D,
    sink: S,
    settings: EndpointSettings,
    replays: ReplayGuard,
    counters: OutcomeCounters,
    /// `wecom_acq_panics_total{task="callback_request"}`.
    panics: Counter,
    log: crate::http_server::LogThrottle,
}

/// The callback endpoint over any app directory and event sink: one HTTP handler for
/// every request of the callback port ([`super::serve_endpoint`] serves it). Unknown paths
/// are an empty 404, the same answer as an unknown app; other methods than GET and POST a
/// 405. Cloning is cheap (one shared state).
///
/// A plain handler rather than an axum `Router`: the port has one route, parsed by hand
/// ([`callback_path`]), and the router's per-request machinery (boxed handler futures,
/// request extensions, body type conversions) held the endpoint to about 30,500 events/s on
/// one core, against 35,000-42,000 without it (`cargo bench --bench callback_http`).
pub struct CallbackEndpoint<D, S>(Arc<Endpoint<D, S>>);

impl<D, S> Clone for CallbackEndpoint<D, S> {
    fn clone(&self) -> Self {
        CallbackEndpoint(self.0.clone())
    }
}

impl<D: AppDirectory, S: EventSink> CallbackEndpoint<D, S> {
    pub fn new(directory: D, sink: S, metrics: &Metrics, settings: EndpointSettings) -> Self {
        CallbackEndpoint(Arc::new(Endpoint {
            directory,
            sink,
            replays: ReplayGuard::new(settings.replay_period(), settings.replay_capacity),
            counters: OutcomeCounters::new(metrics),
            panics: metrics
                .panics
                .get_or_create(&TaskLabels {
                    task: isolation::task::CALLBACK_REQUEST.into(),
                })
                .clone(),
            log: crate::http_server::LogThrottle::new(settings.refusal_log_interval),
            settings,
        }))
    }

    /// Answers one request: the callback path by method, anything else an empty 404. A
    /// panic while answering (a bug) stays with this request: counted, logged, answered 500
    /// (WeCom retries), and the port goes on serving.
    pub async fn handle<B>(&self, request: Request<B>) -> Response
    where
        B: Body<Data = Bytes>,
    {
        match isolation::catch(self.answer(request)).await {
            Ok(response) => response,
            Err(panic) => {
                self.0.panics.inc();
                tracing::error!(panic = %panic, "answering a callback request panicked (a bug); answered 500");
                empty(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    async fn answer<B>(&self, request: Request<B>) -> Response
    where
        B: Body<Data = Bytes>,
    {
        let (parts, body) = request.into_parts();
        let Some((namespace, app)) = callback_path(parts.uri.path()) else {
            return empty(StatusCode::NOT_FOUND);
        };
        let query = SignedQuery::parse(parts.uri.query().unwrap_or_default());
        let endpoint = &self.0;
        match parts.method {
            Method::GET => endpoint.verify_url(&namespace, &app, query).await,
            Method::POST => endpoint.receive_event(&namespace, &app, query, body).await,
            _ => {
                let mut response = empty(StatusCode::METHOD_NOT_ALLOWED);
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET,POST"));
                response
            }
        }
    }
}

fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Full::default());
    *response.status_mut() = status;
    response
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The signature query WeCom adds, values URL-decoded. A `+` stays a `+`: the values are
/// hex, digits and base64, and base64 uses `+` (WeCom sends it as `%2B`, a raw one is
/// still meant as `+`).
#[derive(Default)]
struct SignedQuery<'a> {
    msg_signature: Option<Cow<'a, str>>,
    timestamp: Option<Cow<'a, str>>,
    nonce: Option<Cow<'a, str>>,
    echostr: Option<Cow<'a, str>>,
}

impl<'a> SignedQuery<'a> {
    fn parse(raw: &'a str) -> Self {
        let mut query = SignedQuery::default();
        for pair in raw.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "msg_signature" => &mut query.msg_signature,
                "timestamp" => &mut query.timestamp,
                "nonce" => &mut query.nonce,
                "echostr" => &mut query.echostr,
                _ => continue,
            };
            *slot = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .ok();
        }
        query
    }
}

/// What was wrong with a refused request, for the log line (never a secret: crypto and
/// event errors carry none).
enum Refusal {
    Message(&'static str),
    Crypto(CryptoError),
    Event(EventError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Message(message) => f.write_str(message),
            Refusal::Crypto(err) => err.fmt(f),
            Refusal::Event(err) => err.fmt(f),
        }
    }
}

fn crypto_outcome(err: &CryptoError) -> Outcome {
    match err {
        CryptoError::SignatureMismatch => Outcome::BadSignature,
        CryptoError::ReceiveIdMismatch { .. } => Outcome::WrongReceiver,
        CryptoError::MalformedXml(_) | CryptoError::MissingEncrypt => Outcome::BadXml,
        _ => Outcome::BadCiphertext,
    }
}

/// A path segment as it may appear in a log line: short and printable.
fn loggable(segment: &str) -> String {
    segment
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl<D: AppDirectory, S: EventSink> Endpoint<D, S> {
    /// Counts the outcome, logs a refusal (throttled, without secrets) and answers.
    fn refuse(&self, outcome: Outcome, namespace: &str, app: &str, why: Refusal) -> Response {
        self.counters.inc(outcome);
        if outcome == Outcome::UnknownApp {
            tracing::debug!(
                namespace = %loggable(namespace),
                app = %loggable(app),
                "callback for an unknown app or one without callback settings"
            );
        } else if let Some(suppressed) = self.log.admit(outcome.label()) {
            tracing::warn!(
                namespace = %loggable(namespace),
                app = %loggable(app),
                result = outcome.label(),
                status = outcome.status().as_u16(),
                suppressed,
                "callback refused: {why}"
            );
        }
        empty(outcome.status())
    }

    async fn find(&self, namespace: &str, app: &str) -> Result<Arc<AppCallback>, Response> {
        match self.directory.lookup(namespace, app).await {
            Lookup::Found(callback) => Ok(callback),
            Lookup::Unknown => Err(self.refuse(
                Outcome::UnknownApp,
                namespace,
                app,
                Refusal::Message("unknown app"),
            )),
            Lookup::Unavailable => Err(self.refuse(
                Outcome::Unavailable,
                namespace,
                app,
                Refusal::Message(
                    "the app's callback credentials cannot be read right now; WeCom will retry",
                ),
            )),
        }
    }

    /// The signature over `content` (in constant time), then the timestamp window.
    fn authentic(
        &self,
        callback: &AppCallback,
        signature: &str,
        timestamp: &str,
        nonce: &str,
        content: &str,
    ) -> Result<(), (Outcome, Refusal)> {
        callback
            .crypto
            .verify_signature(signature, timestamp, nonce, content)
            .map_err(|err| (crypto_outcome(&err), Refusal::Crypto(err)))?;
        self.fresh(timestamp)
            .map_err(|(outcome, why)| (outcome, Refusal::Message(why)))
    }

    /// The timestamp check, after the signature has proven the timestamp is WeCom's.
    fn fresh(&self, timestamp: &str) -> Result<(), (Outcome, &'static str)> {
        let stamped: i64 = timestamp
            .parse()
            .map_err(|_| (Outcome::BadRequest, "timestamp is not a number"))?;
        match self.settings.max_skew {
            Some(skew) if stamped.abs_diff(unix_now()) > skew.as_secs() => Err((
                Outcome::Stale,
                "timestamp is outside the accepted window (--callback-max-skew): a replay, or this host's clock is off",
            )),
            _ => Ok(()),
        }
    }
}

/// `/callback/{namespace}/{app}`, each segment percent-decoded; `None` for any other path.
/// Parsed by hand rather than by a routing pattern and the `Path` extractor: the one route
/// of this server is the hot path, and this way it allocates nothing.
fn callback_path(path: &str) -> Option<(Cow<'_, str>, Cow<'_, str>)> {
    let (namespace, app) = path.strip_prefix("/callback/")?.split_once('/')?;
    if namespace.is_empty() || app.is_empty() || app.contains('/') {
        return None;
    }
    let decode = |segment| {
        percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .ok()
    };
    Some((decode(namespace)?, decode(app)?))
}

/// Why a body was not read whole.
enum BodyError {
    TooLarge,
    Unreadable,
    TimedOut,
}

/// The whole body, refused as soon as it is known to exceed `limit` (from `Content-Length`
/// or while reading). A body that comes in one piece, as a callback does, is kept without a
/// copy.
async fn read_body<B: Body<Data = Bytes>>(body: B, limit: usize) -> Result<Bytes, BodyError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    // The body while it is one piece; `joined` once a second piece came.
    let mut single: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    while let Some(frame) = body.as_mut().frame().await {
        let Ok(data) = frame.map_err(|_| BodyError::Unreadable)?.into_data() else {
            // Trailers: not part of the content.
            continue;
        };
        let so_far = single.as_ref().map_or(0, Bytes::len) + joined.len();
        if so_far + data.len() > limit {
            return Err(BodyError::TooLarge);
        }
        if single.is_none() && joined.is_empty() {
            single = Some(data);
        } else {
            if let Some(first) = single.take() {
                joined.extend_from_slice(&first);
            }
            joined.extend_from_slice(&data);
        }
    }
    Ok(single.unwrap_or_else(|| joined.freeze()))
}

impl<D: AppDirectory, S: EventSink> Endpoint<D, S> {
    async fn verify_url(&self, namespace: &str, app: &str, query: SignedQuery<'_>) -> Response {
        let callback = match self.find(namespace, app).await {
            Ok(callback) => callback,
            Err(response) => return response,
        };
        let refuse = |outcome, why| self.refuse(outcome, namespace, app, why);
        let (Some(signature), Some(timestamp), Some(nonce), Some(echostr)) = (
            query.msg_signature,
            query.timestamp,
            query.nonce,
            query.echostr,
        ) else {
            return refuse(
                Outcome::BadRequest,
                Refusal::Message(
                    "URL verification needs msg_signature, timestamp, nonce and echostr",
                ),
            );
        };
        if let Err((outcome, why)) =
            self.authentic(&callback, &signature, &timestamp, &nonce, &echostr)
        {
            return refuse(outcome, why);
        }
        match callback.crypto.decrypt(&echostr) {
            Ok(plain) => {
                self.counters.inc(Outcome::Verified);
                tracing::info!(namespace = %namespace, app = %app, "callback URL verified");
                text(StatusCode::OK, plain)
            }
            Err(err) => refuse(crypto_outcome(&err), Refusal::Crypto(err)),
        }
    }

    async fn receive_event(
        &self,
        namespace: &str,
        app: &str,
        query: SignedQuery<'_>,
        body: impl Body<Data = Bytes>,
    ) -> Response {
        let callback = match self.find(namespace, app).await {
            Ok(callback) => callback,
            Err(response) => return response,
        };
        let refuse = |outcome, why| self.refuse(outcome, namespace, app, why);
        // Read only for a known app, and never more than the limit.
        let reading = read_body(body, self.settings.body_limit);
        let read = tokio::time::timeout(self.settings.body_read_timeout, reading)
            .await
            .unwrap_or(Err(BodyError::TimedOut));
        let body = match read {
            Ok(body) => body,
            Err(BodyError::TimedOut) => {
                return refuse(
                    Outcome::BodyTimeout,
                    Refusal::Message(
                        "the body did not arrive within the body read timeout (--callback-body-timeout)",
                    ),
                );
            }
            Err(BodyError::TooLarge) => {
                return refuse(
                    Outcome::TooLarge,
                    Refusal::Message("the body is larger than the limit (64 KiB by default)"),
                );
            }
            Err(BodyError::Unreadable) => {
                return refuse(
                    Outcome::BadRequest,
                    Refusal::Message("the body could not be read"),
                );
            }
        };
        let (Some(signature), Some(timestamp), Some(nonce)) =
            (query.msg_signature, query.timestamp, query.nonce)
        else {
            return refuse(
                Outcome::BadRequest,
                Refusal::Message("an event needs msg_signature, timestamp and nonce"),
            );
        };
        let Ok(body) = std::str::from_utf8(&body) else {
            return refuse(
                Outcome::BadXml,
                Refusal::Message("the body is not UTF-8 text"),
            );
        };
        let encrypt = match extract_encrypt_borrowed(body) {
            Ok(encrypt) => encrypt,
            Err(err) => return refuse(crypto_outcome(&err), Refusal::Crypto(err)),
        };
        // Nothing about the content is looked at before the signature is known to be WeCom's.
        if let Err((outcome, why)) =
            self.authentic(&callback, &signature, &timestamp, &nonce, &encrypt)
        {
            return refuse(outcome, why);
        }
        let app_id = [namespace.as_bytes(), app.as_bytes()];
        let delivery_key =
            self.replays
                .key(&[app_id[0], app_id[1], signature.as_bytes(), nonce.as_bytes()]);
        if self.replays.contains(delivery_key) {
            self.counters.inc(Outcome::Duplicate);
            return callback.answer();
        }
        let plain = match callback.crypto.decrypt(&encrypt) {
            Ok(plain) => plain,
            Err(err) => return refuse(crypto_outcome(&err), Refusal::Crypto(err)),
        };
        let event = match parse_event(&plain) {
            Ok(event) => event,
            Err(EventError::MissingField(field)) => {
                tracing::debug!(namespace = %namespace, app = %app, field, "authentic callback message that is not an event; ignored");
                self.counters.inc(Outcome::NotAnEvent);
                return callback.answer();
            }
            Err(err) => return refuse(Outcome::BadEvent, Refusal::Event(err)),
        };
        if event.envelope == Envelope::ThirdParty && event.corp_id != callback.corp_id {
            // Authentic, but about another corp that authorised the same suite.
            self.counters.inc(Outcome::ForeignCorp);
            return callback.answer();
        }
        let content_key = self.replays.key(&[app_id[0], app_id[1], plain.as_bytes()]);
        let keys: [ReplayKey; 2] = [delivery_key, content_key];
        if !self.replays.insert_all_new(&keys) {
            self.counters.inc(Outcome::Duplicate);
            return callback.answer();
        }
        let inbound = InboundEvent {
            namespace: namespace.to_string(),
            app: app.to_string(),
            event,
            received_at: Instant::now(),
        };
        match self.sink.offer(inbound) {
            Ok(()) => {
                self.counters.inc(Outcome::Accepted);
                callback.answer()
            }
            Err(_) => {
                // Not taken: WeCom's retry must be processed, so forget that it was seen.
                self.replays.forget(&keys);
                refuse(
                    Outcome::QueueFull,
                    Refusal::Message("the event queue is full; WeCom will retry"),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded_and_plus_stays_plus() {
        let query =
            SignedQuery::parse("msg_signature=ab&timestamp=1&nonce=2&echostr=a%2Bb%3D%3D+c&x");
        assert_eq!(query.msg_signature.as_deref(), Some("ab"));
        assert_eq!(query.echostr.as_deref(), Some("a+b==+c"));
        assert!(SignedQuery::parse("echostr=%FF").echostr.is_none());
        assert!(SignedQuery::parse("").nonce.is_none());
    }

    /// A body sent in `pieces`, optionally ending with trailers or a read error.
    fn body_of(
        pieces: &[&'static str],
        end: Option<Result<http::HeaderMap, ()>>,
    ) -> impl Body<Data = Bytes> {
        let mut frames: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> = pieces
            .iter()
            .map(|piece| {
                Ok(hyper::body::Frame::data(Bytes::from_static(
                    piece.as_bytes(),
                )))
            })
            .collect();
        match end {
            Some(Ok(trailers)) => frames.push(Ok(hyper::body::Frame::trailers(trailers))),
            Some(Err(())) => frames.push(Err(std::io::Error::other("connection reset"))),
            None => {}
        }
        http_body_util::StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn bodies_are_joined_in_order_and_limited_however_they_arrive() {
        let whole = read_body(body_of(&["<xml>", "<Encrypt>", "</xml>"], None), 64).await;
        assert_eq!(whole.ok().as_deref(), Some(&b"<xml><Encrypt></xml>"[..]));
        let one = read_body(body_of(&["<xml/>"], Some(Ok(http::HeaderMap::new()))), 6).await;
        assert_eq!(one.ok().as_deref(), Some(&b"<xml/>"[..]));
        let nothing = read_body(body_of(&[], None), 0).await;
        assert_eq!(nothing.ok().as_deref(), Some(&b""[..]));
        // Exactly at the limit is fine, one byte over is not, in one piece or several.
        assert!(read_body(body_of(&["12345", "678"], None), 8).await.is_ok());
        assert!(matches!(
            read_body(body_of(&["12345", "6789"], None), 8).await,
            Err(BodyError::TooLarge)
        ));
        assert!(matches!(
            read_body(Full::new(Bytes::from_static(b"123456789")), 8).await,
            Err(BodyError::TooLarge)
        ));
        assert!(matches!(
            read_body(body_of(&["<xml>"], Some(Err(()))), 64).await,
            Err(BodyError::Unreadable)
        ));
    }

    #[test]
    fn every_outcome_has_its_own_label_and_refusals_are_4xx_or_503() {
        let labels: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels.len(), Outcome::ALL.len());
        for outcome in Outcome::ALL {
            let status = outcome.status();
            assert!(
                status == StatusCode::OK
                    || status.is_client_error()
                    || status == StatusCode::SERVICE_UNAVAILABLE
            );
        }
    }
}
