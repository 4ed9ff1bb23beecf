//! Everything the simulator knows, and the rules of WeCom applied to it: tokens, links,
//! customers, daily statistics, quota, the org chart, call counters, faults and the
//! frequency limit. Plain data behind one mutex; no I/O, so the HTTP layer stays thin and
//! every rule can be unit-tested.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distributions::Alphanumeric;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cursor::{self, CursorKind};
use super::events::{SimChange, SimEvent};
use super::org::{OrgChart, OrgSpec, RangeError};
use super::quota::{QuotaLedger, QuotaSignal, china_day};
use super::rate::{Overrun, RateLimiter};
use crate::wecom::error::{Api, codes};
use crate::wecom::types::{
    CreateLinkRequest, CreateLinkResponse, Customer, CustomerRequest, CustomerResponse,
    GetLinkResponse, LinkIdRequest, LinkInfo, LinkRange, ListLinkRequest, ListLinkResponse,
    PriorityOption, QuotaBatch, StatisticRequest, StatisticResponse, TokenResponse,
    UpdateLinkRequest,
};

/// WeCom's "data format error", answered when a body is not a JSON object.
pub const DATA_FORMAT_ERROR: i64 = 47001;
/// Longest link name, in characters (not bytes).
pub const MAX_LINK_NAME_CHARS: usize = 30;
/// Most people a link may cover after expanding departments.
pub const MAX_RANGE_PEOPLE: usize = 500;
/// Most entries in `priority_userid_list`.
pub const MAX_PRIORITY_USERS: usize = 1000;
/// A1 page size bounds.
pub const MAX_LIST_LINK_LIMIT: u32 = 100;
/// A6 page size bounds.
pub const MAX_CUSTOMER_LIMIT: u32 = 1000;
/// A7: at most this many days between start and end (day-rounded).
pub const MAX_STATISTIC_SPAN_DAYS: i64 = 30;
/// A7: data is kept this many days.
pub const STATISTIC_HORIZON_DAYS: i64 = 180;
/// `customer_channel` is cut to this many bytes, as WeCom does.
pub const MAX_STATE_BYTES: usize = 64;
/// Most customers or clicks one admin call may add (keeps memory bounded).
pub const MAX_ADMIN_BATCH: u64 = 10_000;
/// Longest injected latency.
pub const MAX_FAULT_LATENCY_MS: u64 = 60_000;

/// A WeCom error answer: errcode plus a human hint (never a secret or a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub errcode: i64,
    pub hint: String,
}

impl ApiFailure {
    pub fn new(errcode: i64, hint: impl Into<String>) -> ApiFailure {
        ApiFailure {
            errcode,
            hint: hint.into(),
        }
    }

    fn invalid(hint: impl Into<String>) -> ApiFailure {
        ApiFailure::new(codes::INVALID_PARAMETER, hint)
    }

    /// The errmsg, shaped like WeCom's: `"<text>, hint: [<hint>], more info at <url>"`.
    pub fn errmsg(&self) -> String {
        format!(
            "{}, hint: [{}], more info at https://open.work.weixin.qq.com/devtool/query?e={}",
            base_errmsg(self.errcode),
            self.hint,
            self.errcode
        )
    }
}

/// WeCom's own errmsg text for the codes the simulator answers.
pub fn base_errmsg(errcode: i64) -> &'static str {
    match errcode {
        -1 => "system busy",
        6000 => "data version conflict",
        40001 => "invalid credential",
        40013 => "invalid corpid",
        40014 => "invalid access_token",
        40035 => "invalid parameter value",
        40058 => "invalid parameter",
        41001 => "access_token missing",
        41002 => "corpid missing",
        41004 => "corpsecret missing",
        42001 => "access_token expired",
        45009 => "api freq out of limit",
        45033 => "api concurrent out of limit",
        47001 => "data format error",
        48002 => "api forbidden",
        60011 => "no privilege to access/modify contact/party/agent",
        60020 => "not allow to access from your ip",
        84061 => "not exist external contact relationship",
        301002 => "invalid link_id",
        _ => "error injected by the simulator",
    }
}

/// An admin API refusal: HTTP status and a message saying what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminError {
    BadRequest(String),
    NotFound(String),
    Conflict(String),
}

/// The settings a state is built from (the immutable part of `SimConfig`).
#[derive(Clone)]
pub struct StateSettings {
    pub corp_id: String,
    pub secret: String,
    pub token_ttl: Duration,
    pub rate_limit_per_minute: Option<u32>,
    pub rate_limit_per_hour: Option<u32>,
}

#[derive(Debug, Clone)]
struct IssuedToken {
    expires_at: i64,
    /// Set by `POST /_sim/tokens/expire`: the token answers 42001 from then on.
    forced_expired: bool,
    /// Obtained by the suite with get_corp_token: void once the corp cancels.
    via_suite: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct DayStats {
    clicks: u64,
    new_customers: u64,
}

#[derive(Debug, Clone)]
struct LinkRecord {
    link_id: String,
    link_name: String,
    range: LinkRange,
    skip_verify: bool,
    mark_source: bool,
    priority_option: Option<PriorityOption>,
    create_time: i64,
    customers: Vec<Customer>,
    /// China-time day number -> counts.
    daily: BTreeMap<i64, DayStats>,
    /// Round-robin position over the link's members for the next customer.
    next_member: usize,
}

impl LinkRecord {
    fn url(&self) -> String {
        format!("https://work.weixin.qq.com/ca/{}", self.link_id)
    }

    fn info(&self) -> LinkInfo {
        LinkInfo {
            link_id: self.link_id.clone(),
            link_name: self.link_name.clone(),
            url: self.url(),
            create_time: self.create_time,
            skip_verify: Some(self.skip_verify),
            mark_source: Some(self.mark_source),
        }
    }
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// `None` matches every API (`"*"`).
    #[serde(serialize_with = "ser_fault_api")]
    pub api: Option<Api>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawFault>,
    /// Calls left; `None` until `DELETE /_sim/faults`.
    pub remaining: Option<u32>,
    /// Calls this fault answered so far (the `{{n}}` of a raw body).
    pub served: u64,
}

/// A raw answer of a fault: any status, content type and body, for testing clients against
/// a hostile or broken server (an HTML page from a proxy, wrong types, huge answers, a
/// cursor that never ends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFault {
    #[serde(default = "http_ok")]
    pub status: u16,
    /// `Content-Type` of the answer; none when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The body as sent; every `{{n}}` becomes the number of this fault's answer (1, 2...),
    /// so a listing can get a new cursor on every page.
    #[serde(default)]
    pub body: String,
    /// Pads the body with spaces to this many bytes (at most [`MAX_RAW_PAD_BYTES`]): an
    /// oversized answer that is still valid JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_to: Option<usize>,
}

fn http_ok() -> u16 {
    200
}

/// The largest padded raw answer.
pub const MAX_RAW_PAD_BYTES: usize = 64 * 1024 * 1024;

/// A raw answer about to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl RawFault {
    fn reply(&self, n: u64) -> RawReply {
        let mut body = self.body.replace("{{n}}", &n.to_string()).into_bytes();
        if let Some(pad_to) = self.pad_to {
            body.resize(pad_to.max(body.len()), b' ');
        }
        RawReply {
            status: self.status,
            content_type: self.content_type.clone(),
            body,
        }
    }
}

fn ser_fault_api<S: serde::Serializer>(api: &Option<Api>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(api.map(Api::name).unwrap_or("*"))
}

/// Body of `POST /_sim/faults`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub api: String,
    #[serde(default)]
    pub errcode: Option<i64>,
    #[serde(default)]
    pub latency_ms: Option<u64>,
    #[serde(default)]
    pub raw: Option<RawFault>,
    #[serde(default)]
    pub times: Option<u32>,
}

/// What the first phase of a call decided, before any latency is waited out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub latency: Option<Duration>,
    pub refusal: Option<ApiFailure>,
    /// Sent instead of any answer (a raw fault).
    pub raw: Option<RawReply>,
}

/// The query parameters WeCom reads.
#[derive(Debug, Clone, Default)]
pub struct CallQuery {
    pub access_token: Option<String>,
    pub suite_access_token: Option<String>,
    pub corpid: Option<String>,
    pub corpsecret: Option<String>,
}

/// The simulator's whole state.
pub struct SimState {
    settings: StateSettings,
    /// Seconds added to the real clock (`POST /_sim/clock`).
    clock_offset: i64,
    org: OrgChart,
    quota: QuotaLedger,
    links: BTreeMap<u64, LinkRecord>,
    link_seq_by_id: HashMap<String, u64>,
    next_link_seq: u64,
    next_customer_seq: u64,
    tokens: HashMap<String, IssuedToken>,
    current_token: Option<String>,
    calls: BTreeMap<Api, u64>,
    calls_total: u64,
    faults: Vec<Fault>,
    /// Frequency limits per API, on the rate clock (`rate_now`).
    limits: HashMap<Api, RateLimiter>,
    /// When the state was made: the rate clock's zero.
    started: Instant,
    /// Seconds `POST /_sim/clock` moved the clock forward: added to the rate clock too.
    advanced: Duration,
    outbox: Vec<SimEvent>,
    /// The third-party suite configured with `PUT /_sim/suite`.
    suite: Option<SuiteProvider>,
    /// Where the suite's callbacks go (set by [`super::spawn`]).
    suite_outlet: Option<tokio::sync::mpsc::UnboundedSender<SuiteDelivery>>,
}

use super::suite::{SuiteDelivery, SuiteProvider, SuiteSpec};
use crate::wecom::unix_now as real_unix_now;

fn random_alnum(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut_bytes(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Shortens user-supplied text before it goes into a hint.
fn shown(s: &str) -> String {
    let cut = cut_bytes(s, 64);
    if cut.len() < s.len() {
        format!("{cut}...")
    } else {
        cut
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiFailure> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiFailure::new(
                DATA_FORMAT_ERROR,
                format!("request body is not valid JSON: {e}"),
            )
        })?
    };
    if !value.is_object() {
        return Err(ApiFailure::new(
            DATA_FORMAT_ERROR,
            "request body must be a JSON object",
        ));
    }
    serde_json::from_value(value).map_err(|e| ApiFailure::invalid(e.to_string()))
}

impl SimState {
    pub fn new(
        settings: StateSettings,
        org: OrgChart,
        quota: Vec<QuotaBatch>,
        now: i64,
    ) -> SimState {
        SimState {
            settings,
            clock_offset: now - real_unix_now(),
            org,
            quota: QuotaLedger::new(quota, now),
            links: BTreeMap::new(),
            link_seq_by_id: HashMap::new(),
            next_link_seq: 1,
            next_customer_seq: 1,
            tokens: HashMap::new(),
            current_token: None,
            calls: BTreeMap::new(),
            calls_total: 0,
            faults: Vec::new(),
            limits: HashMap::new(),
            started: Instant::now(),
            advanced: Duration::ZERO,
            outbox: Vec::new(),
            suite: None,
            suite_outlet: None,
        }
    }

    /// Where the suite's callbacks are handed for delivery.
    pub(crate) fn set_suite_outlet(
        &mut self,
        outlet: tokio::sync::mpsc::UnboundedSender<SuiteDelivery>,
    ) {
        self.suite_outlet = Some(outlet);
    }

    /// The simulator's clock (unix seconds).
    pub fn now(&self) -> i64 {
        real_unix_now() + self.clock_offset
    }

    /// The clock the frequency limits run on: real time since the state was made, plus
    /// every `POST /_sim/clock` advance (so an hour block can be lifted without waiting).
    fn rate_now(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.started) + self.advanced
    }

    /// Reads the clock and lets the quota notice the time that passed.
    fn tick(&mut self) -> i64 {
        let now = self.now();
        let signals = self.quota.advance_to(now);
        self.emit_quota(signals, now);
        if let Some(suite) = &mut self.suite {
            suite.tick(now);
        }
        now
    }

    fn emit_quota(&mut self, signals: Vec<QuotaSignal>, now: i64) {
        for s in signals {
            let event = match s {
                QuotaSignal::BalanceLow => SimEvent::new(SimChange::BalanceLow, now),
                QuotaSignal::BalanceExhausted => SimEvent::new(SimChange::BalanceExhausted, now),
                QuotaSignal::BalanceIncreased => SimEvent::new(SimChange::BalanceIncreased, now),
                QuotaSignal::ExpireSoon {
                    expire_time,
                    expire_quota_num,
                } => SimEvent {
                    expire_time: Some(expire_time),
                    expire_quota_num: Some(expire_quota_num),
                    ..SimEvent::new(SimChange::QuotaExpireSoon, now)
                },
            };
            self.outbox.push(event);
        }
    }

    /// Lets the quota notice the time that passed without any request (the idle ticker).
    pub fn observe_clock(&mut self) {
        self.tick();
    }

    /// The callbacks produced since the last call.
    pub fn take_events(&mut self) -> Vec<SimEvent> {
        std::mem::take(&mut self.outbox)
    }

    // ---- phase 1 of every WeCom call: counting, faults, frequency limit ----

    /// Counts the call and decides injected latency and refusals (45009, injected errcode).
    pub fn admit(&mut self, api: Api, at: Instant) -> Admission {
        *self.calls.entry(api).or_default() += 1;
        self.calls_total += 1;

        let latency_idx = self
            .faults
            .iter()
            .position(|f| f.latency_ms.is_some() && f.api.is_none_or(|a| a == api));
        let errcode_idx = self.faults.iter().position(|f| {
            (f.errcode.is_some() || f.raw.is_some()) && f.api.is_none_or(|a| a == api)
        });
        let latency = latency_idx
            .and_then(|i| self.faults[i].latency_ms)
            .map(Duration::from_millis);

        let mut refusal = None;
        if self.settings.rate_limit_per_minute.is_some()
            || self.settings.rate_limit_per_hour.is_some()
        {
            let now = self.rate_now(at);
            let (per_minute, per_hour) = (
                self.settings.rate_limit_per_minute,
                self.settings.rate_limit_per_hour,
            );
            let limiter = self
                .limits
                .entry(api)
                .or_insert_with(|| RateLimiter::new(per_minute, per_hour));
            if let Err(over) = limiter.admit(now) {
                let limit = match over {
                    Overrun::Minute => per_minute,
                    Overrun::Hour => per_hour,
                }
                .unwrap_or_default();
                refusal = Some(ApiFailure::new(
                    codes::FREQUENCY_LIMIT,
                    format!(
                        "more than {limit} {} calls in {}; blocked for {}",
                        api.name(),
                        over.describe(),
                        over.describe()
                    ),
                ));
            }
        }
        let mut used = vec![];
        if let Some(i) = latency_idx {
            used.push(i);
        }
        let mut raw = None;
        if refusal.is_none()
            && let Some(i) = errcode_idx
        {
            let fault = &mut self.faults[i];
            fault.served += 1;
            match &fault.raw {
                Some(answer) => raw = Some(answer.reply(fault.served)),
                None => {
                    let code = fault.errcode.unwrap_or(-1);
                    refusal = Some(ApiFailure::new(code, "fault injected by POST /_sim/faults"));
                }
            }
            if !used.contains(&i) {
                used.push(i);
            }
        }
        for i in used {
            if let Some(n) = self.faults[i].remaining.as_mut() {
                *n = n.saturating_sub(1);
            }
        }
        self.faults.retain(|f| f.remaining != Some(0));
        Admission {
            latency,
            refusal,
            raw,
        }
    }

    // ---- phase 2: the API itself ----

    /// Runs one admitted WeCom call. `Ok` holds the answer's fields besides errcode/errmsg.
    pub fn call(
        &mut self,
        api: Api,
        is_get: bool,
        query: &CallQuery,
        body: &[u8],
    ) -> Result<Value, ApiFailure> {
        let now = self.tick();
        if api == Api::GetToken {
            return self.gettoken(is_get, query, now);
        }
        if matches!(
            api,
            Api::GetSuiteToken | Api::GetPermanentCode | Api::GetCorpToken
        ) {
            return self.service_call(api, is_get, query, body, now);
        }
        self.check_token(query.access_token.as_deref(), now)?;
        if is_get != api.is_get() {
            let want = if api.is_get() { "GET" } else { "POST" };
            return Err(ApiFailure::invalid(format!(
                "{} must be called with HTTP {want}",
                api.name()
            )));
        }
        let answer = match api {
            Api::GetToken => return self.gettoken(is_get, query, now),
            Api::GetSuiteToken | Api::GetPermanentCode | Api::GetCorpToken => {
                return self.service_call(api, is_get, query, body, now);
            }
            Api::ListLink => to_value(self.list_link(parse_body(body)?)?),
            Api::GetLink => to_value(self.get_link(parse_body(body)?)?),
            Api::CreateLink => to_value(self.create_link(parse_body(body)?, now)?),
            Api::UpdateLink => {
                self.update_link(parse_body(body)?)?;
                Value::Object(Default::default())
            }
            Api::DeleteLink => {
                let req: LinkIdRequest = parse_body(body)?;
                let seq = self.seq_of(&req.link_id)?;
                self.remove_link(seq);
                Value::Object(Default::default())
            }
            Api::Customer => to_value(self.customers(parse_body(body)?)?),
            Api::Statistic => to_value(self.statistic(parse_body(body)?, now)?),
            Api::Quota => to_value(self.quota.a8(now)),
        };
        Ok(answer)
    }

    fn gettoken(&mut self, is_get: bool, q: &CallQuery, now: i64) -> Result<Value, ApiFailure> {
        if !is_get {
            return Err(ApiFailure::invalid("gettoken must be called with HTTP GET"));
        }
        let corpid = q.corpid.as_deref().unwrap_or("");
        let secret = q.corpsecret.as_deref().unwrap_or("");
        if corpid.is_empty() {
            return Err(ApiFailure::new(41002, "corpid is required"));
        }
        if secret.is_empty() {
            return Err(ApiFailure::new(41004, "corpsecret is required"));
        }
        if corpid != self.settings.corp_id {
            return Err(ApiFailure::new(
                codes::INVALID_CORPID,
                "corpid is not the simulated corp's (see the simulator's startup banner)",
            ));
        }
        // A custom-developed app: its secret is the permanent code of the corp's
        // authorisation, and its tokens die with the authorisation.
        if self
            .suite
            .as_ref()
            .is_some_and(|suite| suite.is_custom_app_secret(secret))
        {
            return Ok(self.issue_token(now, true).1);
        }
        if secret != self.settings.secret {
            return Err(ApiFailure::new(
                codes::INVALID_CREDENTIAL,
                "corpsecret is wrong for this corp",
            ));
        }
        // Within its lifetime, gettoken answers the same token (as WeCom does).
        if let Some(current) = &self.current_token
            && let Some(t) = self.tokens.get(current)
            && !t.forced_expired
            && t.expires_at > now
        {
            return Ok(to_value(TokenResponse {
                access_token: current.clone(),
                expires_in: (t.expires_at - now) as u64,
            }));
        }
        let (token, answer) = self.issue_token(now, false);
        self.current_token = Some(token);
        Ok(answer)
    }

    /// The suite's service APIs (POST, JSON body, `suite_access_token` in the query).
    fn service_call(
        &mut self,
        api: Api,
        is_get: bool,
        query: &CallQuery,
        body: &[u8],
        now: i64,
    ) -> Result<Value, ApiFailure> {
        if is_get {
            return Err(ApiFailure::invalid(format!(
                "{} must be called with HTTP POST",
                api.name()
            )));
        }
        let corp_id = self.settings.corp_id.clone();
        let Some(suite) = &mut self.suite else {
            return Err(ApiFailure::new(
                codes::INVALID_SUITE_ID,
                "no suite is configured in the simulator (PUT /_sim/suite)",
            ));
        };
        let body: Value = parse_body(body)?;
        let token = query.suite_access_token.as_deref();
        match api {
            Api::GetSuiteToken => suite.get_suite_token(&body, now),
            Api::GetPermanentCode => suite.get_permanent_code(token, &body, &corp_id, now),
            _ => {
                suite.check_corp_token_request(token, &body, &corp_id, now)?;
                Ok(self.issue_token(now, true).1)
            }
        }
    }

    /// A new access token of the corp and gettoken's answer; `via_suite`: obtained
    /// through the suite's authorisation (void once it is cancelled).
    fn issue_token(&mut self, now: i64, via_suite: bool) -> (String, Value) {
        // WeCom forgets long-dead tokens (they then answer 40014); keeps the map small.
        self.tokens.retain(|_, t| t.expires_at > now - 86_400);
        let token = random_alnum(64);
        let ttl = self.settings.token_ttl.as_secs().max(1);
        self.tokens.insert(
            token.clone(),
            IssuedToken {
                expires_at: now + ttl as i64,
                forced_expired: false,
                via_suite,
            },
        );
        let answer = to_value(TokenResponse {
            access_token: token.clone(),
            expires_in: ttl,
        });
        (token, answer)
    }

    /// `PUT /_sim/suite`: configures the suite and pushes its first ticket.
    pub fn configure_suite(&mut self, spec: SuiteSpec) -> Result<Value, AdminError> {
        let now = self.now();
        let ttl = i64::try_from(self.settings.token_ttl.as_secs()).unwrap_or(7200);
        let mut suite = SuiteProvider::new(spec, ttl, self.suite_outlet.clone(), now)
            .map_err(|e| AdminError::BadRequest(format!("{e:#}")))?;
        suite.tick(now);
        let answer = serde_json::json!({ "suite_id": suite.suite_id() });
        self.suite = Some(suite);
        Ok(answer)
    }

    fn suite_mut(&mut self) -> Result<&mut SuiteProvider, AdminError> {
        self.suite
            .as_mut()
            .ok_or_else(|| AdminError::NotFound("no suite configured: PUT /_sim/suite".into()))
    }

    /// `POST /_sim/suite/ticket`: pushes a new suite_ticket now.
    pub fn push_suite_ticket(&mut self) -> Result<Value, AdminError> {
        let now = self.now();
        self.suite_mut()?.push_ticket(now);
        Ok(serde_json::json!({ "pushed": "suite_ticket" }))
    }

    /// `POST /_sim/suite/auth`: the simulated corp authorises the suite (`create_auth`).
    pub fn authorise_suite(&mut self) -> Result<Value, AdminError> {
        let now = self.now();
        Ok(self.suite_mut()?.authorise(now))
    }

    /// `DELETE /_sim/suite/auth`: the corp cancels (`cancel_auth`); the permanent code and
    /// every corp token the suite obtained stop working.
    pub fn cancel_suite_auth(&mut self) -> Result<Value, AdminError> {
        let now = self.now();
        let corp_id = self.settings.corp_id.clone();
        let was = self.suite_mut()?.cancel(&corp_id, now);
        self.tokens.retain(|_, t| !t.via_suite);
        Ok(serde_json::json!({ "cancelled": was }))
    }

    /// Whether the simulated corp has authorised the suite.
    pub fn suite_authorised(&self) -> bool {
        self.suite.as_ref().is_some_and(SuiteProvider::authorised)
    }

    fn check_token(&self, token: Option<&str>, now: i64) -> Result<(), ApiFailure> {
        let token = match token {
            Some(t) if !t.is_empty() => t,
            _ => {
                return Err(ApiFailure::new(
                    codes::MISSING_ACCESS_TOKEN,
                    "the access_token query parameter is required",
                ));
            }
        };
        match self.tokens.get(token) {
            None => Err(ApiFailure::new(
                codes::INVALID_ACCESS_TOKEN,
                "access_token is not one this corp issued; call gettoken",
            )),
            Some(t) if t.forced_expired || t.expires_at <= now => Err(ApiFailure::new(
                codes::ACCESS_TOKEN_EXPIRED,
                "access_token expired; call gettoken",
            )),
            Some(_) => Ok(()),
        }
    }

    fn seq_of(&self, link_id: &str) -> Result<u64, ApiFailure> {
        if link_id.is_empty() {
            return Err(ApiFailure::invalid("link_id is required"));
        }
        self.link_seq_by_id.get(link_id).copied().ok_or_else(|| {
            // WeCom does not document the code for an unknown link; see WECOM-NOTES.
            ApiFailure::invalid(format!("invalid link_id {}", shown(link_id)))
        })
    }

    fn list_link(&self, req: ListLinkRequest) -> Result<ListLinkResponse, ApiFailure> {
        let limit = req.limit.unwrap_or(MAX_LIST_LINK_LIMIT);
        if !(1..=MAX_LIST_LINK_LIMIT).contains(&limit) {
            return Err(ApiFailure::invalid(format!(
                "limit {limit} is out of range 1..={MAX_LIST_LINK_LIMIT}"
            )));
        }
        let after = match req.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => 0,
            Some(c) => cursor::decode(CursorKind::Links, 0, c)
                .ok_or_else(|| ApiFailure::invalid("invalid cursor"))?,
        };
        let mut page = self
            .links
            .range(after.saturating_add(1)..)
            .take(limit as usize + 1);
        let mut link_id_list = Vec::new();
        let mut last = after;
        for (seq, link) in page.by_ref().take(limit as usize) {
            link_id_list.push(link.link_id.clone());
            last = *seq;
        }
        let more = page.next().is_some();
        Ok(ListLinkResponse {
            link_id_list,
            next_cursor: if more {
                cursor::encode(CursorKind::Links, 0, last)
            } else {
                String::new()
            },
        })
    }

    fn get_link(&self, req: LinkIdRequest) -> Result<GetLinkResponse, ApiFailure> {
        let seq = self.seq_of(&req.link_id)?;
        let link = &self.links[&seq];
        Ok(GetLinkResponse {
            link: link.info(),
            range: link.range.clone(),
            priority_option: link.priority_option.clone(),
            skip_verify: None,
        })
    }

    fn create_link(
        &mut self,
        req: CreateLinkRequest,
        now: i64,
    ) -> Result<CreateLinkResponse, ApiFailure> {
        check_link_name(&req.link_name)?;
        let range = self.checked_range(&req.range)?;
        let priority_option = self.checked_priority(req.priority_option)?;
        let seq = self.next_link_seq;
        self.next_link_seq += 1;
        let link_id = loop {
            let id = format!("cawcd{:014x}", rand::thread_rng().r#gen::<u64>() >> 8);
            if !self.link_seq_by_id.contains_key(&id) {
                break id;
            }
        };
        let record = LinkRecord {
            link_id: link_id.clone(),
            link_name: req.link_name,
            range,
            skip_verify: req.skip_verify.unwrap_or(true),
            mark_source: req.mark_source.unwrap_or(true),
            priority_option,
            create_time: now,
            customers: Vec::new(),
            daily: BTreeMap::new(),
            next_member: 0,
        };
        let info = LinkInfo {
            skip_verify: None,
            mark_source: None,
            ..record.info()
        };
        self.links.insert(seq, record);
        self.link_seq_by_id.insert(link_id, seq);
        Ok(CreateLinkResponse { link: info })
    }

    fn update_link(&mut self, req: UpdateLinkRequest) -> Result<(), ApiFailure> {
        let seq = self.seq_of(&req.link_id)?;
        let edit = LinkEdit {
            link_name: req.link_name,
            range: req.range,
            skip_verify: req.skip_verify,
            priority_option: req.priority_option,
            mark_source: req.mark_source,
        };
        self.apply_edit(seq, edit)
    }

    /// Validates everything first, then changes the link: a refused edit changes nothing.
    fn apply_edit(&mut self, seq: u64, edit: LinkEdit) -> Result<(), ApiFailure> {
        if let Some(name) = &edit.link_name {
            check_link_name(name)?;
        }
        let range = edit
            .range
            .as_ref()
            .map(|r| self.checked_range(r))
            .transpose()?;
        let priority = match edit.priority_option {
            Some(p) => Some(self.checked_priority(Some(p))?),
            None => None,
        };
        let Some(link) = self.links.get_mut(&seq) else {
            return Err(ApiFailure::invalid("invalid link_id"));
        };
        if let Some(name) = edit.link_name {
            link.link_name = name;
        }
        if let Some(range) = range {
            // Full replacement (G1): nothing of the old range survives.
            link.range = range;
            link.next_member = 0;
        }
        if let Some(v) = edit.skip_verify {
            link.skip_verify = v;
        }
        if let Some(v) = edit.mark_source {
            link.mark_source = v;
        }
        if let Some(p) = priority {
            link.priority_option = p;
        }
        Ok(())
    }

    fn remove_link(&mut self, seq: u64) -> Option<LinkRecord> {
        let link = self.links.remove(&seq)?;
        self.link_seq_by_id.remove(&link.link_id);
        Some(link)
    }

    /// The range as stored (ids de-duplicated), after WeCom's checks.
    fn checked_range(&self, range: &LinkRange) -> Result<LinkRange, ApiFailure> {
        if range.is_empty() {
            return Err(ApiFailure::invalid(
                "range.user_list and range.department_list cannot both be empty",
            ));
        }
        let mut seen_users = HashSet::new();
        let mut seen_departments = HashSet::new();
        let stored = LinkRange {
            user_list: range
                .user_list
                .iter()
                .filter(|u| seen_users.insert(u.as_str()))
                .cloned()
                .collect(),
            department_list: range
                .department_list
                .iter()
                .copied()
                .filter(|d| seen_departments.insert(*d))
                .collect(),
        };
        if stored.user_list.len() > MAX_RANGE_PEOPLE {
            return Err(ApiFailure::invalid(format!(
                "range.user_list has {} users, at most {MAX_RANGE_PEOPLE}",
                stored.user_list.len()
            )));
        }
        let people = self.org.expand(&stored).map_err(range_failure)?;
        if people.len() > MAX_RANGE_PEOPLE {
            return Err(ApiFailure::invalid(format!(
                "range covers {} people after expanding departments, at most {MAX_RANGE_PEOPLE}",
                people.len()
            )));
        }
        Ok(stored)
    }

    fn checked_priority(
        &self,
        option: Option<PriorityOption>,
    ) -> Result<Option<PriorityOption>, ApiFailure> {
        let Some(mut p) = option else {
            return Ok(None);
        };
        match p.priority_type {
            1 => {}
            2 => {
                if p.priority_userid_list.is_empty() {
                    return Err(ApiFailure::invalid(
                        "priority_option.priority_type 2 requires priority_userid_list",
                    ));
                }
            }
            other => {
                return Err(ApiFailure::invalid(format!(
                    "priority_option.priority_type {other} is not 1 or 2"
                )));
            }
        }
        let mut seen = HashSet::new();
        let unique: Vec<String> = p
            .priority_userid_list
            .into_iter()
            .filter(|u| seen.insert(u.clone()))
            .collect();
        if unique.len() > MAX_PRIORITY_USERS {
            return Err(ApiFailure::invalid(format!(
                "priority_option.priority_userid_list has {} users, at most {MAX_PRIORITY_USERS}",
                unique.len()
            )));
        }
        if let Some(u) = unique.iter().find(|u| !self.org.has_user(u)) {
            return Err(range_failure(RangeError::UnknownUser(u.clone())));
        }
        p.priority_userid_list = unique;
        Ok(Some(p))
    }

    fn customers(&self, req: CustomerRequest) -> Result<CustomerResponse, ApiFailure> {
        let seq = self.seq_of(&req.link_id)?;
        let limit = req.limit.unwrap_or(MAX_CUSTOMER_LIMIT);
        if !(1..=MAX_CUSTOMER_LIMIT).contains(&limit) {
            return Err(ApiFailure::invalid(format!(
                "limit {limit} is out of range 1..={MAX_CUSTOMER_LIMIT}"
            )));
        }
        let start = match req.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => 0,
            Some(c) => cursor::decode(CursorKind::Customers, seq, c)
                .ok_or_else(|| ApiFailure::invalid("invalid cursor"))?,
        };
        let all = &self.links[&seq].customers;
        let start = (start as usize).min(all.len());
        let end = (start + limit as usize).min(all.len());
        Ok(CustomerResponse {
            customer_list: all[start..end].to_vec(),
            next_cursor: if end < all.len() {
                cursor::encode(CursorKind::Customers, seq, end as u64)
            } else {
                String::new()
            },
        })
    }

    fn statistic(&self, req: StatisticRequest, now: i64) -> Result<StatisticResponse, ApiFailure> {
        let seq = self.seq_of(&req.link_id)?;
        let (start, end) = (china_day(req.start_time), china_day(req.end_time));
        if req.start_time <= 0 || req.end_time <= 0 {
            return Err(ApiFailure::invalid("start_time and end_time are required"));
        }
        if end < start {
            return Err(ApiFailure::invalid("end_time is before start_time"));
        }
        if end - start > MAX_STATISTIC_SPAN_DAYS {
            return Err(ApiFailure::invalid(format!(
                "start_time and end_time are {} days apart, at most {MAX_STATISTIC_SPAN_DAYS}",
                end - start
            )));
        }
        if start < china_day(now) - STATISTIC_HORIZON_DAYS {
            return Err(ApiFailure::invalid(format!(
                "start_time is more than {STATISTIC_HORIZON_DAYS} days ago"
            )));
        }
        let mut answer = StatisticResponse::default();
        for day in self.links[&seq].daily.range(start..=end).map(|(_, d)| d) {
            answer.click_link_customer_cnt += day.clicks;
            answer.new_customer_cnt += day.new_customers;
        }
        Ok(answer)
    }

    // ---- the admin API ----

    fn admin_link(&self, link_id: &str) -> Result<u64, AdminError> {
        self.link_seq_by_id.get(link_id).copied().ok_or_else(|| {
            AdminError::NotFound(format!(
                "no link {} in the simulator (see GET /_sim/state)",
                shown(link_id)
            ))
        })
    }

    /// `PUT /_sim/org`. Existing links keep their ranges, even where ids are now unknown.
    pub fn set_org(&mut self, spec: OrgSpec) -> Result<Value, AdminError> {
        self.tick();
        let org = OrgChart::from_spec(spec).map_err(AdminError::BadRequest)?;
        self.org = org;
        Ok(serde_json::json!({
            "departments": self.org.departments().count(),
            "users": self.org.user_count(),
        }))
    }

    /// `PUT /_sim/quota`.
    pub fn set_quota(&mut self, batches: Vec<QuotaBatch>) -> Value {
        let now = self.tick();
        let signals = self.quota.replace(batches, now);
        self.emit_quota(signals, now);
        to_value(self.quota.a8(now))
    }

    /// `POST /_sim/links/{id}/customers`: adds `count` customers, all or none.
    pub fn add_customers(
        &mut self,
        link_id: &str,
        count: u64,
        state: &str,
    ) -> Result<Value, AdminError> {
        let now = self.tick();
        let seq = self.admin_link(link_id)?;
        if count == 0 || count > MAX_ADMIN_BATCH {
            return Err(AdminError::BadRequest(format!(
                "count {count} is out of range 1..={MAX_ADMIN_BATCH}"
            )));
        }
        let members = {
            let link = &self.links[&seq];
            self.org.current_members(&link.range)
        };
        if members.is_empty() {
            return Err(AdminError::Conflict(format!(
                "link {link_id} has no member in the current org chart to receive customers"
            )));
        }
        let balance = self.quota.balance(now);
        if balance < count {
            return Err(AdminError::Conflict(format!(
                "quota balance is {balance}, cannot add {count} customers; add quota with PUT /_sim/quota"
            )));
        }
        let state = cut_bytes(state, MAX_STATE_BYTES);
        let mut added = Vec::new();
        for _ in 0..count {
            let Some(signals) = self.quota.consume_one(now) else {
                break;
            };
            let seq_no = self.next_customer_seq;
            self.next_customer_seq += 1;
            let Some(link) = self.links.get_mut(&seq) else {
                break;
            };
            let userid = members[link.next_member % members.len()].clone();
            link.next_member = (link.next_member + 1) % members.len();
            let customer = Customer {
                external_userid: format!("wm{}{seq_no:06}", random_alnum(14)),
                userid: userid.clone(),
                chat_status: 0,
                state: state.clone(),
                // As WeCom's documentation has it: A6 does not say when.
                add_time: None,
            };
            link.customers.push(customer.clone());
            let day = link.daily.entry(china_day(now)).or_default();
            // A customer who added through the link also clicked it.
            day.new_customers += 1;
            day.clicks += 1;
            self.outbox.push(SimEvent {
                link_id: Some(link_id.to_string()),
                state: Some(state.clone()),
                user_id: Some(userid),
                external_user_id: Some(customer.external_userid.clone()),
                ..SimEvent::new(SimChange::AddExternalContact, now)
            });
            self.emit_quota(signals, now);
            added.push(customer);
        }
        Ok(serde_json::json!({
            "link_id": link_id,
            "added": added,
            "balance": self.quota.balance(now),
        }))
    }

    /// `POST /_sim/links/{id}/clicks`: visitors who opened the link (today, China time).
    pub fn add_clicks(&mut self, link_id: &str, count: u64) -> Result<Value, AdminError> {
        let now = self.tick();
        let seq = self.admin_link(link_id)?;
        if count == 0 || count > MAX_ADMIN_BATCH {
            return Err(AdminError::BadRequest(format!(
                "count {count} is out of range 1..={MAX_ADMIN_BATCH}"
            )));
        }
        let link = self
            .links
            .get_mut(&seq)
            .ok_or_else(|| AdminError::NotFound(link_id.to_string()))?;
        let day = link.daily.entry(china_day(now)).or_default();
        day.clicks += count;
        Ok(serde_json::json!({
            "link_id": link_id,
            "clicks_today": day.clicks,
            "new_customers_today": day.new_customers,
        }))
    }

    /// `DELETE /_sim/links/{id}`: a deletion in the admin console (pushes delete_link).
    pub fn console_delete(&mut self, link_id: &str) -> Result<Value, AdminError> {
        let now = self.tick();
        let seq = self.admin_link(link_id)?;
        self.remove_link(seq);
        self.outbox.push(SimEvent {
            link_id: Some(link_id.to_string()),
            ..SimEvent::new(SimChange::DeleteLink, now)
        });
        Ok(serde_json::json!({ "deleted": link_id }))
    }

    /// `PATCH /_sim/links/{id}`: an edit in the admin console (drift; no callback).
    pub fn console_edit(&mut self, link_id: &str, edit: LinkEdit) -> Result<Value, AdminError> {
        self.tick();
        let seq = self.admin_link(link_id)?;
        self.apply_edit(seq, edit)
            .map_err(|f| AdminError::BadRequest(format!("errcode {}: {}", f.errcode, f.hint)))?;
        Ok(self.links.get(&seq).map(link_dump).unwrap_or(Value::Null))
    }

    /// `POST /_sim/faults`.
    pub fn add_fault(&mut self, spec: FaultSpec) -> Result<Value, AdminError> {
        let api = match spec.api.as_str() {
            "*" => None,
            name => Some(Api::from_name(name).ok_or_else(|| {
                AdminError::BadRequest(format!(
                    "api {} is not one of *, {}",
                    shown(name),
                    Api::ALL.map(Api::name).join(", ")
                ))
            })?),
        };
        if spec.errcode.is_none() && spec.latency_ms.is_none() && spec.raw.is_none() {
            return Err(AdminError::BadRequest(
                "a fault needs errcode, latency_ms or raw".into(),
            ));
        }
        if spec.errcode.is_some() && spec.raw.is_some() {
            return Err(AdminError::BadRequest(
                "a fault answers with errcode or raw, not both".into(),
            ));
        }
        if let Some(raw) = &spec.raw {
            if !(100..=999).contains(&raw.status) {
                return Err(AdminError::BadRequest(format!(
                    "raw.status {} is not an HTTP status (100-999)",
                    raw.status
                )));
            }
            if raw
                .content_type
                .as_deref()
                .is_some_and(|t| http::HeaderValue::from_str(t).is_err())
            {
                return Err(AdminError::BadRequest(
                    "raw.contentType is not a valid header value".into(),
                ));
            }
            if raw.pad_to.is_some_and(|p| p > MAX_RAW_PAD_BYTES) {
                return Err(AdminError::BadRequest(format!(
                    "raw.padTo is at most {MAX_RAW_PAD_BYTES}"
                )));
            }
        }
        if spec.errcode == Some(0) {
            return Err(AdminError::BadRequest(
                "errcode 0 is success, not a fault".into(),
            ));
        }
        if spec.latency_ms.is_some_and(|l| l > MAX_FAULT_LATENCY_MS) {
            return Err(AdminError::BadRequest(format!(
                "latency_ms is at most {MAX_FAULT_LATENCY_MS}"
            )));
        }
        if spec.times == Some(0) {
            return Err(AdminError::BadRequest(
                "times must be at least 1 (omit it for a fault that lasts until DELETE /_sim/faults)"
                    .into(),
            ));
        }
        self.faults.push(Fault {
            api,
            errcode: spec.errcode,
            latency_ms: spec.latency_ms,
            raw: spec.raw,
            remaining: spec.times,
            served: 0,
        });
        Ok(serde_json::json!({ "faults": self.faults }))
    }

    /// `DELETE /_sim/faults`.
    pub fn clear_faults(&mut self) -> Value {
        let cleared = self.faults.len();
        self.faults.clear();
        serde_json::json!({ "cleared": cleared })
    }

    /// `POST /_sim/tokens/expire`: every token issued so far answers 42001.
    pub fn expire_tokens(&mut self) -> Value {
        let mut expired = 0;
        for t in self.tokens.values_mut() {
            if !t.forced_expired {
                t.forced_expired = true;
                expired += 1;
            }
        }
        serde_json::json!({ "expired": expired })
    }

    /// `POST /_sim/clock`: moves the simulator's clock forward.
    pub fn advance_clock(&mut self, secs: u64) -> Result<Value, AdminError> {
        let secs = i64::try_from(secs)
            .ok()
            .filter(|s| *s <= 100 * 365 * 86_400)
            .ok_or_else(|| AdminError::BadRequest("advance_secs is at most 100 years".into()))?;
        self.clock_offset += secs;
        self.advanced += Duration::from_secs(secs.unsigned_abs());
        let now = self.tick();
        Ok(serde_json::json!({ "now": now }))
    }

    /// `GET /_sim/calls`: calls per API (only those called) plus `total`.
    pub fn calls(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (api, n) in &self.calls {
            map.insert(api.name().to_string(), (*n).into());
        }
        map.insert("total".into(), self.calls_total.into());
        Value::Object(map)
    }

    /// `DELETE /_sim/calls`.
    pub fn reset_calls(&mut self) -> Value {
        self.calls.clear();
        self.calls_total = 0;
        self.calls()
    }

    /// `GET /_sim/state`: everything but credentials.
    pub fn dump(&mut self) -> Value {
        let now = self.tick();
        let links: Vec<Value> = self.links.values().map(link_dump).collect();
        let mut customers = serde_json::Map::new();
        let mut statistics = serde_json::Map::new();
        for link in self.links.values() {
            customers.insert(link.link_id.clone(), to_value(&link.customers));
            let days: Vec<Value> = link
                .daily
                .iter()
                .map(|(day, s)| {
                    serde_json::json!({
                        "date": day_label(*day),
                        "day_start": day * 86_400 - 8 * 3600,
                        "clicks": s.clicks,
                        "new_customers": s.new_customers,
                    })
                })
                .collect();
            statistics.insert(link.link_id.clone(), Value::Array(days));
        }
        let valid_tokens = self
            .tokens
            .values()
            .filter(|t| !t.forced_expired && t.expires_at > now)
            .count();
        serde_json::json!({
            "now": now,
            "corp_id": self.settings.corp_id,
            "links": links,
            "customers": customers,
            "statistics": statistics,
            "quota": to_value(self.quota.dump(now)),
            "org": to_value(self.org.to_spec()),
            "faults": to_value(&self.faults),
            "calls": self.calls(),
            "tokens": { "issued": self.tokens.len(), "valid": valid_tokens },
            "rate_limit_per_minute": self.settings.rate_limit_per_minute,
            "rate_limit_per_hour": self.settings.rate_limit_per_hour,
        })
    }
}

/// The fields an A4 call or a console edit may change; `None` leaves a field alone.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkEdit {
    #[serde(default)]
    pub link_name: Option<String>,
    #[serde(default)]
    pub range: Option<LinkRange>,
    #[serde(default)]
    pub skip_verify: Option<bool>,
    #[serde(default)]
    pub priority_option: Option<PriorityOption>,
    #[serde(default)]
    pub mark_source: Option<bool>,
}

fn check_link_name(name: &str) -> Result<(), ApiFailure> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_LINK_NAME_CHARS {
        return Err(ApiFailure::invalid(format!(
            "link_name has {chars} characters, must be 1..={MAX_LINK_NAME_CHARS}"
        )));
    }
    Ok(())
}

fn range_failure(e: RangeError) -> ApiFailure {
    match e {
        RangeError::UnknownUser(u) => ApiFailure::new(
            codes::OUTSIDE_VISIBLE_RANGE,
            format!("userid {} is not in the org chart", shown(&u)),
        ),
        RangeError::UnknownDepartment(d) => ApiFailure::new(
            codes::OUTSIDE_VISIBLE_RANGE,
            format!("department {d} is not in the org chart"),
        ),
    }
}

fn link_dump(link: &LinkRecord) -> Value {
    serde_json::json!({
        "link_id": link.link_id,
        "link_name": link.link_name,
        "url": link.url(),
        "range": link.range,
        "skip_verify": link.skip_verify,
        "mark_source": link.mark_source,
        "priority_option": link.priority_option,
        "create_time": link.create_time,
        "customer_count": link.customers.len(),
    })
}

fn day_label(day: i64) -> String {
    jiff::Timestamp::from_second(day * 86_400)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn to_value<T: Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SimState {
        SimState::new(
            StateSettings {
                corp_id: "ww".into(),
                secret: "s".into(),
                token_ttl: Duration::from_secs(7200),
                rate_limit_per_minute: Some(2),
                rate_limit_per_hour: Some(5),
            },
            OrgChart::builtin(),
            QuotaLedger::builtin_batches(1_700_000_000),
            1_700_000_000,
        )
    }

    #[test]
    fn link_name_counts_characters_not_bytes() {
        assert!(check_link_name(&"获".repeat(30)).is_ok());
        assert_eq!(
            check_link_name(&"获".repeat(31)).unwrap_err().errcode,
            40058
        );
        assert_eq!(check_link_name("").unwrap_err().errcode, 40058);
    }

    #[test]
    fn errmsg_is_shaped_like_wecom() {
        let f = ApiFailure::new(40058, "invalid link_id x");
        assert_eq!(
            f.errmsg(),
            "invalid parameter, hint: [invalid link_id x], more info at https://open.work.weixin.qq.com/devtool/query?e=40058"
        );
    }

    #[test]
    fn frequency_limit_uses_a_sliding_minute_per_api() {
        let mut s = state();
        let t0 = Instant::now();
        assert!(s.admit(Api::GetLink, t0).refusal.is_none());
        assert!(s.admit(Api::GetLink, t0).refusal.is_none());
        assert_eq!(
            s.admit(Api::GetLink, t0).refusal.map(|f| f.errcode),
            Some(45009)
        );
        assert!(s.admit(Api::ListLink, t0).refusal.is_none());
        let later = t0 + Duration::from_secs(60);
        assert!(s.admit(Api::GetLink, later).refusal.is_none());
        assert_eq!(s.calls()["get"], 4);
    }

    #[test]
    fn the_hourly_limit_blocks_an_api_for_an_hour_on_the_advanced_clock() {
        let mut s = state();
        let t0 = Instant::now();
        // Two calls a minute stay under the minute limit of 2; the sixth in the hour is over 5.
        for minute in 0..5u64 {
            s.advanced = Duration::from_secs(minute * 60);
            assert!(s.admit(Api::GetLink, t0).refusal.is_none(), "call {minute}");
        }
        s.advanced = Duration::from_secs(300);
        let refused = s.admit(Api::GetLink, t0).refusal.expect("over the hour");
        assert_eq!(refused.errcode, 45009);
        assert!(refused.hint.contains("in an hour"), "{}", refused.hint);
        assert!(s.admit(Api::ListLink, t0).refusal.is_none(), "per API");
        s.advance_clock(3599).unwrap();
        assert!(s.admit(Api::GetLink, t0).refusal.is_some(), "still blocked");
        s.advance_clock(1).unwrap();
        assert!(s.admit(Api::GetLink, t0).refusal.is_none(), "block lifted");
    }

    #[test]
    fn faults_match_by_api_and_run_out() {
        let mut s = state();
        s.add_fault(FaultSpec {
            api: "create_link".into(),
            errcode: Some(-1),
            latency_ms: None,
            raw: None,
            times: Some(1),
        })
        .unwrap();
        let t0 = Instant::now();
        assert!(s.admit(Api::GetLink, t0).refusal.is_none());
        assert_eq!(
            s.admit(Api::CreateLink, t0).refusal.map(|f| f.errcode),
            Some(-1)
        );
        assert!(s.admit(Api::CreateLink, t0).refusal.is_none());
        assert!(
            s.add_fault(FaultSpec {
                api: "nope".into(),
                errcode: Some(-1),
                latency_ms: None,
                raw: None,
                times: None,
            })
            .is_err()
        );
    }

    #[test]
    fn a_raw_fault_numbers_its_answers_and_pads_them() {
        let mut s = state();
        s.add_fault(FaultSpec {
            api: "list_link".into(),
            errcode: None,
            latency_ms: None,
            raw: Some(RawFault {
                status: 200,
                content_type: None,
                body: r#"{"next_cursor":"c{{n}}"}"#.into(),
                pad_to: Some(40),
            }),
            times: Some(2),
        })
        .unwrap();
        let t0 = Instant::now();
        let first = s.admit(Api::ListLink, t0).raw.expect("a raw answer");
        assert_eq!(first.body.len(), 40);
        assert!(first.body.starts_with(br#"{"next_cursor":"c1"}  "#));
        let second = s.admit(Api::ListLink, t0).raw.expect("a raw answer");
        assert!(second.body.starts_with(br#"{"next_cursor":"c2"}"#));
        assert_eq!(s.admit(Api::ListLink, t0).raw, None, "used up");
    }
}
