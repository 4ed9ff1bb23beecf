//! A WeCom simulator: a real HTTP server that answers gettoken and the customer-acquisition
//! APIs A1-A8 the way WeCom does, so the controller can be tried without a WeCom account and
//! every test and benchmark has a realistic peer. Run it with `wecom-acq simulate`, or
//! in-process with [`spawn`].
//!
//! # What it models
//!
//! - **Wire format**: HTTP 200 with `errcode`/`errmsg` in a JSON body, errmsg shaped like
//!   WeCom's (`"invalid parameter, hint: [...], more info at ..."`), never echoing a secret
//!   or a token. A body that is not a JSON object answers 47001 (WeCom's "data format
//!   error"); a JSON object with wrongly typed or missing fields answers 40058.
//! - **Tokens**: `GET /cgi-bin/gettoken?corpid=&corpsecret=`; wrong corpid 40013, wrong
//!   secret 40001, missing parameters 41002/41004. Within its lifetime gettoken returns the
//!   same token (with the remaining `expires_in`), as WeCom does. On A1-A8: no token 41001,
//!   unknown token 40014, expired token (simulator clock, default TTL 7200 s) 42001.
//! - **Methods**: A8 and gettoken are GET, A1-A7 POST; the wrong one answers 40058.
//! - **Validation** (WECOM-NOTES "Limits"): `link_name` 1..=30 characters (not bytes);
//!   range not empty; `user_list` at most 500; at most 500 people after expanding
//!   departments with their sub-departments and de-duplicating against `user_list`, else
//!   40058; unknown user or department 60011; `priority_type` 1 or 2, type 2 needs
//!   `priority_userid_list` (at most 1000, known users). A4 replaces the whole range when
//!   `range` is sent and leaves absent fields alone. An unknown `link_id` on A2, A4, A5, A6
//!   or A7 answers 40058 with hint `invalid link_id ...` (WeCom documents no code for this;
//!   clients must not rely on it, see WECOM-NOTES).
//! - **Pagination**: A1 `limit` 1..=100 (default 100), A6 1..=1000 (default 1000), else
//!   40058; opaque cursors that name a position in creation order, so links created or
//!   deleted between pages neither repeat nor hide a surviving link; an empty
//!   `next_cursor` ends the list.
//! - **Statistics (A7)**: times are rounded to China-time (UTC+8) days and the interval is
//!   closed; end before start, more than 30 days between the two days, or a start more
//!   than 180 days before the simulator's clock answer 40058. Each customer added through
//!   a link counts as a new customer and as a click (they opened the link to add);
//!   `POST /_sim/links/{id}/clicks` adds visitors who did not add.
//! - **Quota (A8)**: `total` is the cumulative quota used, `balance` the sum of unexpired
//!   batches, `quota_list` the unexpired batches. Each new customer consumes 1 from the
//!   batch that expires first; no customer can be added while the balance is 0.
//! - **Frequency limits** (per API, as WeCom limits per corp and API; this simulator is
//!   one corp): with `--rate-limit-per-minute N`, the N+1st call to one API within a
//!   sliding minute answers 45009 and blocks that API for 60 s (every call answers 45009
//!   until then); with `--rate-limit-per-hour M`, the M+1st call within a sliding hour
//!   answers 45009 and blocks that API for one hour. Refused calls still count in
//!   `/_sim/calls` but not toward a limit, so a caller that backs off recovers once the
//!   block has passed; other APIs are unaffected. Both are off by default; WeCom's
//!   published limits are 10,000 per minute and 150,000 per hour. The windows run on the
//!   simulator's clock (real time plus every `POST /_sim/clock` advance), so a test lifts an
//!   hour block by advancing the clock 3600 s instead of waiting. Calls are counted in
//!   buckets (100 ms, 1 s), enforcing a limit to within one bucket ([`rate`]).
//! - **Callbacks** (with `--callback-url`): a console delete (`delete_link`), a customer
//!   added (`change_external_contact`/`add_external_contact` with LinkId, State, UserID,
//!   ExternalUserID), quota thresholds (`balance_low` below 20, `balance_exhausted` at 0,
//!   `balance_increased` from 0, `quota_expire_soon` with ExpireTime and ExpireQuotaNum
//!   when the clock crosses 14/7/3/2/1 days before a batch with quota left expires), signed
//!   and encrypted (WXBizMsgCrypt) in the self-built envelope, or the third-party one with
//!   `--third-party-suite-id`. Posted from a background task in order, 5 s timeout, up to 3
//!   retries. API calls (A3/A4/A5) produce no callback, as in WeCom. The URL's `timestamp`
//!   is real time (receivers check freshness); `CreateTime` is the simulator's clock.
//! - **Faults**: injected errcodes, latency or raw answers (any status, content type and
//!   body) per API (or `*`) for N calls, and expiring every issued token.
//!
//! # Built-in defaults
//!
//! - corp id `wwsimcorp`, secret `sim-secret` (a documented demo value), token TTL 7200 s.
//! - Org chart (replace with `PUT /_sim/org`):
//!   - department 1 "Sim Corp" (root): `zhangsan`, `lisi`, `wangwu`;
//!   - department 2 "sales" (under 1): `zhaoliu`, `sunqi`, `zhouba`, `wujiu`;
//!   - department 4 "sales-east" (under 2): `zhengshi`, `lisi` (so department 2 covers 6
//!     people);
//!   - department 3 "call-center" (under 1): 480 generated users `u0001`..`u0480`.
//!
//!   Department 1 covers all 488 people, so every built-in range fits the 500-people limit
//!   (the examples use department 1). To see the limit refused with 40058, load a bigger
//!   corp, e.g. `PUT /_sim/org` with a department of 600 users, or `--org-file`.
//! - Quota: one batch of 1000 expiring at midnight (China time) one year after start.
//!
//! # Admin API (`/_sim/`, JSON bodies; not part of WeCom)
//!
//! | Call | Body | Effect |
//! |---|---|---|
//! | `PUT /_sim/org` | `{"departments":[{"id":2,"parent_id":1,"users":["u1"]}],"users":["extra"]}` | replaces the org chart (top-level users join department 1) |
//! | `PUT /_sim/quota` | `{"batches":[{"balance":100,"expire_date":1767196800}]}` | replaces the quota batches |
//! | `POST /_sim/links/{id}/customers` | `{"count":3,"state":"chan-a"}` | adds customers (all or none: 409 when the balance is short) |
//! | `POST /_sim/links/{id}/clicks` | `{"count":7}` | adds today's clicks |
//! | `DELETE /_sim/links/{id}` | | deletes as the admin console does (pushes `delete_link`) |
//! | `PATCH /_sim/links/{id}` | `{"link_name":"x","range":{...},"skip_verify":false}` | edits as the admin console does (drift, no callback) |
//! | `POST /_sim/faults` | `{"api":"create_link","errcode":-1,"times":2}` or `{"api":"*","latency_ms":300,"times":10}` | injects faults (`times` omitted: until cleared) |
//! | `POST /_sim/faults` | `{"api":"gettoken","raw":{"status":200,"contentType":"text/html","body":"<html>...</html>"},"times":1}` | answers with exactly that status, content type (none if omitted) and body instead of WeCom's answer: a hostile or broken server. Every `{{n}}` in `body` becomes the fault's answer number (`{"errcode":0,"link_id_list":["l{{n}}"],"next_cursor":"c{{n}}"}` never ends a listing); `"padTo":8388608` pads the body with spaces to that many bytes (at most 64 MiB) |
//! | `DELETE /_sim/faults` | | clears faults |
//! | `POST /_sim/tokens/expire` | | every issued token answers 42001 |
//! | `POST /_sim/clock` | `{"advance_secs":86400}` | moves the simulator's clock forward (token expiry, statistics, quota, and the frequency-limit windows and blocks) |
//! | `GET /_sim/calls`, `DELETE /_sim/calls` | | calls per API (`gettoken`, `list_link`, `get`, `create_link`, `update_link`, `delete_link`, `customer`, `statistic`, `customer_acquisition_quota`) plus `total`; reset |
//! | `GET /_sim/state` | | links, customers, statistics, quota, org, faults, calls |
//! | `PUT /_sim/suite` | `{"suite_id":"wwsuite","suite_secret":"s","token":"T","encoding_aes_key":"<43>","callback_url":"http://..."}` | configures a third-party suite ([`suite`]) and pushes its first `suite_ticket` (then one every 10 minutes of the simulator's clock) |
//! | `POST /_sim/suite/ticket` | | pushes a new `suite_ticket` now |
//! | `POST /_sim/suite/auth` | | the corp authorises the suite: pushes `create_auth` with a new AuthCode (answered too) |
//! | `DELETE /_sim/suite/auth` | | the corp cancels: pushes `cancel_auth`; its permanent code and suite-issued tokens stop working |
//!
//! `wecom-acq simulate --org-file org.json` starts with an org chart in the `PUT /_sim/org`
//! shape instead of the built-in one.
//!
//! Bad admin input answers 400 `{"error": "..."}`; an unknown link 404.
//!
//! # Not modelled
//!
//! Credential types (48002 for the 客户联系 secret), trusted IPs (60020), business-category
//! limits on `priority_option`, per-IP limits, `mark_source` effects,
//! `link_unavailable`, `open_profile`, `friend_request` and `customer_start_chat` events,
//! chat status changes, customers leaving, and balance events caused by a batch expiring.

pub mod admin;
pub mod api;
pub mod cli;
pub mod cursor;
pub mod events;
pub mod org;
pub mod push;
pub mod quota;
pub mod rate;
pub mod state;
pub mod suite;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{Method, StatusCode, Uri};
use axum::routing::{any, delete, get, post, put};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use crate::wecom::types::QuotaBatch;
use events::SimEvent;
pub use org::{Department, OrgChart, OrgSpec};
use state::{SimState, StateSettings};

use crate::wecom::error::Api;

/// Default corp id of `wecom-acq simulate`.
pub const DEFAULT_CORP_ID: &str = "wwsimcorp";
/// Default app secret of `wecom-acq simulate` (a documented demo value, not a credential).
pub const DEFAULT_SECRET: &str = "sim-secret";
/// WeCom's token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(7200);

/// How the simulator is set up.
#[derive(Clone)]
pub struct SimConfig {
    pub corp_id: String,
    pub secret: String,
    pub token_ttl: Duration,
    /// Calls per API per minute before 45009 (and a 60 s block); `None` for no limit.
    pub rate_limit_per_minute: Option<u32>,
    /// Calls per API per hour before 45009 (and a one-hour block); `None` for no limit.
    pub rate_limit_per_hour: Option<u32>,
    /// Where to push callbacks; `None` pushes nothing.
    pub callback: Option<SimCallback>,
    pub org: OrgChart,
    pub quota: Vec<QuotaBatch>,
}

/// The callback receiver the simulator pushes events to.
#[derive(Clone)]
pub struct SimCallback {
    pub url: String,
    /// The callback Token (letters and digits, at most 32).
    pub token: String,
    /// The EncodingAESKey (43 characters).
    pub aes_key: String,
    /// `Some` selects the third-party envelope (`SuiteId`, `AuthCorpId`, `InfoType`) and
    /// uses the suite id as receive id; `None` is the self-built envelope with the corp id.
    pub third_party_suite_id: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            corp_id: DEFAULT_CORP_ID.into(),
            secret: DEFAULT_SECRET.into(),
            token_ttl: DEFAULT_TOKEN_TTL,
            rate_limit_per_minute: None,
            rate_limit_per_hour: None,
            callback: None,
            org: OrgChart::builtin(),
            quota: quota::QuotaLedger::builtin_batches(unix_now()),
        }
    }
}

impl std::fmt::Debug for SimConfig {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("corp_id", &self.corp_id)
            .field("secret", &"<redacted>")
            .field("token_ttl", &self.token_ttl)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("rate_limit_per_hour", &self.rate_limit_per_hour)
            .field("callback", &self.callback)
            .field("org_users", &self.org.user_count())
            .field("quota", &self.quota)
            .finish()
    }
}

impl std::fmt::Debug for SimCallback {
    // Token and EncodingAESKey are credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCallback")
            .field("url", &crate::wecom::redact::scrub(&self.url))
            .field("token", &"<redacted>")
            .field("aes_key", &"<redacted>")
            .field("third_party_suite_id", &self.third_party_suite_id)
            .finish()
    }
}

pub(crate) use crate::wecom::unix_now;

/// What every handler shares: the state and the way to the callback pusher.
pub(crate) struct Shared {
    state: Mutex<SimState>,
    events: Option<mpsc::UnboundedSender<SimEvent>>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic under the lock cannot leave the state half-changed in a way that matters
        // more than stopping the simulator would, so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands events to the pusher; without a callback URL they are dropped.
    pub(crate) fn push(&self, events: Vec<SimEvent>) {
        if let Some(tx) = &self.events {
            for e in events {
                // A closed channel means the simulator is shutting down.
                let _ = tx.send(e);
            }
        }
    }
}

/// A running simulator.
pub struct SimHandle {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    pusher: Option<JoinHandle<()>>,
    ticker: Option<JoinHandle<()>>,
    suite_pusher: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// The address it listens on (the real port when spawned on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`: the API base URL to give a client (`apiBaseUrl` of a WeComApp).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits (at most 5 s) for open requests to finish. Callbacks not yet
    /// delivered are dropped.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        for task in [
            self.pusher.take(),
            self.ticker.take(),
            self.suite_pusher.take(),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
    }
}

/// Binds `addr` (port 0 picks a free port) and serves the simulator in a background task.
pub async fn spawn(config: SimConfig, addr: SocketAddr) -> anyhow::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the WeCom simulator to {addr}"))?;
    let local = listener
        .local_addr()
        .context("reading the simulator's bound address")?;
    let now = unix_now();
    let settings = StateSettings {
        corp_id: config.corp_id.clone(),
        secret: config.secret.clone(),
        token_ttl: config.token_ttl,
        rate_limit_per_minute: config.rate_limit_per_minute,
        rate_limit_per_hour: config.rate_limit_per_hour,
    };
    let (events, pusher) = match config.callback.clone() {
        Some(cb) => {
            let (tx, handle) = push::spawn_pusher(cb, config.corp_id.clone())?;
            (Some(tx), Some(handle))
        }
        None => (None, None),
    };
    let (suite_outlet, suite_pusher) = suite::spawn_suite_pusher()?;
    let mut state = SimState::new(settings, config.org, config.quota, now);
    state.set_suite_outlet(suite_outlet);
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        events,
    });
    // Also the suite's clock: a ticket every 10 minutes once a suite is configured.
    let ticker = Some(spawn_ticker(Arc::downgrade(&shared)));
    let app = router(shared);
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.await;
        });
        if let Err(err) = serve.await {
            tracing::error!(error = %err, "WeCom simulator stopped serving");
        }
    });
    Ok(SimHandle {
        addr: local,
        shutdown: Some(tx),
        server,
        pusher,
        ticker,
        suite_pusher: Some(suite_pusher),
    })
}

/// Once a minute, lets the quota notice real time passing while nobody calls (so
/// `quota_expire_soon` is pushed on an idle simulator too). Ends with the server.
fn spawn_ticker(shared: std::sync::Weak<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let events = {
                let mut state = shared.lock();
                state.observe_clock();
                state.take_events()
            };
            shared.push(events);
        }
    })
}

fn router(shared: Arc<Shared>) -> Router {
    let mut app = Router::new();
    for api in Api::ALL {
        app = app.route(
            api.path(),
            any(
                move |State(shared): State<Arc<Shared>>,
                      method: Method,
                      RawQuery(query): RawQuery,
                      body: Bytes| async move {
                    api::handle(shared, api, method, query, body).await
                },
            ),
        );
    }
    app.route("/_sim/org", put(admin::put_org))
        .route("/_sim/quota", put(admin::put_quota))
        .route(
            "/_sim/links/{link_id}/customers",
            post(admin::post_customers),
        )
        .route("/_sim/links/{link_id}/clicks", post(admin::post_clicks))
        .route(
            "/_sim/links/{link_id}",
            delete(admin::delete_link).patch(admin::patch_link),
        )
        .route(
            "/_sim/faults",
            post(admin::post_fault).delete(admin::delete_faults),
        )
        .route("/_sim/tokens/expire", post(admin::expire_tokens))
        .route("/_sim/clock", post(admin::post_clock))
        .route(
            "/_sim/calls",
            get(admin::get_calls).delete(admin::delete_calls),
        )
        .route("/_sim/state", get(admin::get_state))
        .route("/_sim/suite", put(admin::put_suite))
        .route("/_sim/suite/ticket", post(admin::post_suite_ticket))
        .route(
            "/_sim/suite/auth",
            post(admin::post_suite_auth).delete(admin::delete_suite_auth),
        )
        .fallback(not_found)
        .with_state(shared)
}

async fn not_found(method: Method, uri: Uri) -> (StatusCode, axum::Json<serde_json::Value>) {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({
            "error": format!(
                "the WeCom simulator does not serve {method} {}; it serves gettoken, A1-A8 and /_sim/",
                uri.path()
            )
        })),
    )
}
