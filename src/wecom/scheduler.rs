//! The WeCom traffic scheduler of one corp: every request of every app of the corp passes
//! through it, and it decides when each may be sent.
//!
//! WeCom counts calls per corp and per API (10,000 in any minute and 150,000 in any hour; a
//! minute overrun blocks the API for 60 s, an hourly one for an hour), so the budget is
//! shared by the WeComApps of one corp and accounted per API in sliding windows, besides the
//! per-app cap the user sets (`requestsPerMinute`, all APIs of the app together). Bursts
//! within a window are allowed: 10,000 calls may leave in the first second of a minute.
//!
//! Requests carry a [`Priority`]. A request of a higher class never waits behind one of a
//! lower class, only behind requests already sent:
//! - [`Priority::Now`] (what a person or WeCom asked for) waits in a priority queue until
//!   the budget has room;
//! - [`Priority::Create`] waits when room comes within [`CREATE_PATIENCE`], else is
//!   deferred;
//! - [`Priority::Poll`] and [`Priority::SlowFact`] are sent only when there is room now and
//!   no higher-class work is pending on the same budget; otherwise they are deferred.
//!
//! Classes below [`Priority::Now`] may fill a minute window only up to all but one
//! [`NOW_RESERVE`]th of it, so what a person waits for is sent at once even while a
//! minute's worth of creates has just left (without it, an edit waited for the window to
//! slide: up to 60 s).
//!
//! A deferred request gets the time to come back ([`Deferral::retry_after`]): the caller
//! (a reconcile pass) returns and is requeued for that time instead of holding a slot of the
//! controller while it waits. Deferral times are handed out at the budget's pace, lower
//! classes after the backlog of higher ones, so N deferred passes come back spread over the
//! time the budget needs for them, not in one wave.
//!
//! 45009 (frequency limit) and 45033 (concurrency limit) open a breaker for that API of the
//! corp: no request to it leaves until WeCom's window has passed (60 s after a minute
//! overrun, an hour after an hourly one, [`CONCURRENCY_BLOCK`] after 45033); they are
//! deferred to the breaker's end instead of being retried into a longer block.
//!
//! The clock is tokio's, so tests pause and advance it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::error::{Api, codes};

/// WeCom's published limit of calls per corp and API in any minute.
pub const WECOM_PER_MINUTE: u32 = 10_000;
/// WeCom's published limit of calls per corp and API in any hour.
pub const WECOM_PER_HOUR: u32 = 150_000;
/// One part in this many of each minute window (an API's of the corp, an app's cap) is
/// kept for [`Priority::Now`]: what a person is waiting for finds room even when creates or
/// polls have filled the rest.
pub const NOW_RESERVE: u32 = 20;
/// How long a [`Priority::Create`] request waits for room before it is deferred instead.
pub const CREATE_PATIENCE: Duration = Duration::from_secs(2);
/// How long an API stays closed after 45033 (WeCom documents no window for it).
pub const CONCURRENCY_BLOCK: Duration = Duration::from_secs(5);
/// One minute block: WeCom lifts it after 60 s.
pub const MINUTE_BLOCK: Duration = Duration::from_secs(60);
/// One hour block.
pub const HOUR_BLOCK: Duration = Duration::from_secs(3600);

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
/// Bucket widths of the sliding windows: a window counts one bucket more than its span,
/// so it is stricter than WeCom's by at most one bucket, never looser.
const MINUTE_BUCKET: Duration = Duration::from_millis(100);
const HOUR_BUCKET: Duration = Duration::from_secs(10);

/// The class of a request, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// What a person or WeCom asked for now: spec changes, deletions, reconcile requests,
    /// passes a callback triggered, and access tokens (everything else needs one).
    Now = 0,
    /// Creating links and recovering interrupted creates.
    Create = 1,
    /// Drift polling (A2 on resync) and the A1 sweeps that find deleted links.
    Poll = 2,
    /// Slow facts: customers (A6), statistics (A7), quota (A8).
    SlowFact = 3,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Now,
        Priority::Create,
        Priority::Poll,
        Priority::SlowFact,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Priority::Now => "now",
            Priority::Create => "create",
            Priority::Poll => "poll",
            Priority::SlowFact => "slow_fact",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

tokio::task_local! {
    static CLASS: Priority;
}

/// Runs `future` with every WeCom request in it (that does not say otherwise) in `class`.
pub async fn with_priority<F: std::future::Future>(class: Priority, future: F) -> F::Output {
    CLASS.scope(class, future).await
}

/// The class of the requests of the current task: what [`with_priority`] set, else
/// [`Priority::Now`]: a command-line tool or the callback worker waits for its turn.
pub fn current_priority() -> Priority {
    CLASS.try_with(|class| *class).unwrap_or(Priority::Now)
}

/// Limits per corp and per API, and how long WeCom's blocks last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorpLimits {
    pub per_minute: u32,
    pub per_hour: u32,
    /// How long an API stays closed after a 45009 (an hour block: [`HOUR_BLOCK`]).
    pub minute_block: Duration,
}

impl Default for CorpLimits {
    fn default() -> Self {
        Self {
            per_minute: WECOM_PER_MINUTE,
            per_hour: WECOM_PER_HOUR,
            minute_block: MINUTE_BLOCK,
        }
    }
}

/// Why a request was not sent now, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deferral {
    pub retry_after: Duration,
    pub blocked: bool,
}

/// An app's place in its corp's scheduler (its own cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppSlot(usize);

/// Told when a breaker opens (for metrics, conditions and Events).
pub trait BlockObserver: Send + Sync {
    fn on_blocked(&self, corp_id: &str, api: Api, errcode: i64, for_: Duration);
}

/// A count of events in a sliding window, in buckets (sparse: only non-empty buckets).
#[derive(Debug)]
struct Window {
    bucket: Duration,
    /// Buckets counted besides the current one.
    span_buckets: u64,
    limit: u32,
    /// (bucket index, count), oldest first.
    buckets: VecDeque<(u64, u32)>,
    total: u32,
}

impl Window {
    fn new(span: Duration, bucket: Duration, limit: u32) -> Self {
        Self {
            bucket,
            span_buckets: (span.as_nanos() / bucket.as_nanos()) as u64,
            limit: limit.max(1),
            buckets: VecDeque::new(),
            total: 0,
        }
    }

    fn index(&self, origin: Instant, at: Instant) -> u64 {
        (at.saturating_duration_since(origin).as_nanos() / self.bucket.as_nanos()) as u64
    }

    fn expire(&mut self, current: u64) {
        while let Some(&(index, count)) = self.buckets.front() {
            if index + self.span_buckets >= current {
                break;
            }
            self.total -= count;
            self.buckets.pop_front();
        }
    }

    /// What `class` may fill of the window: all of it for [`Priority::Now`], the rest
    /// leaves [`NOW_RESERVE`] of it free. A minute of creates that filled an app's whole cap
    /// (all APIs together) made an edit's A2 and A4 wait up to 60 s for the window to slide.
    fn limit_for(&self, class: Priority) -> u32 {
        match class {
            Priority::Now => self.limit,
            _ => self.limit - (self.limit / NOW_RESERVE).min(self.limit - 1),
        }
    }

    fn has_room_for(&mut self, origin: Instant, now: Instant, class: Priority) -> bool {
        self.expire(self.index(origin, now));
        self.total < self.limit_for(class)
    }

    fn record(&mut self, origin: Instant, now: Instant) {
        let current = self.index(origin, now);
        self.expire(current);
        match self.buckets.back_mut() {
            Some((index, count)) if *index == current => *count += 1,
            _ => self.buckets.push_back((current, 1)),
        }
        self.total += 1;
    }

    /// When the window has room for one more of `class` (now when it has).
    fn free_at(&mut self, origin: Instant, now: Instant, class: Priority) -> Instant {
        self.expire(self.index(origin, now));
        let limit = self.limit_for(class);
        let mut total = self.total;
        for &(index, count) in &self.buckets {
            if total < limit {
                break;
            }
            total -= count;
            if total < limit {
                let nanos = (index + self.span_buckets + 1) as u128 * self.bucket.as_nanos();
                return origin + Duration::from_nanos(nanos.min(u64::MAX as u128) as u64);
            }
        }
        now
    }

    /// The time between two requests at the window's steady pace.
    fn spacing(&self) -> Duration {
        (self.bucket * (self.span_buckets as u32).max(1)) / self.limit
    }

    fn set_limit(&mut self, limit: u32) {
        self.limit = limit.max(1);
    }
}

/// Deferral bookkeeping of one budget (an API of the corp, or an app): per class, the time
/// up to which deferred requests have been given back slots.
#[derive(Debug, Default)]
struct Horizons([Option<Instant>; 4]);

impl Horizons {
    /// Higher-class work given a later time than `now` is still to come.
    fn higher_pending(&self, class: Priority, now: Instant) -> bool {
        self.0[..class.index()].iter().flatten().any(|h| *h > now)
    }

    /// The time a deferred request of `class` comes back: after the window frees, and
    /// after the deferred requests of its own and higher classes.
    fn defer(&mut self, class: Priority, free_at: Instant, spacing: Duration) -> Instant {
        let until = self.0[..=class.index()]
            .iter()
            .flatten()
            .fold(free_at, |latest, h| latest.max(*h));
        self.0[class.index()] = Some(until + spacing);
        until
    }
}

#[derive(Debug)]
struct ApiBudget {
    minute: Window,
    hour: Window,
    horizons: Horizons,
    blocked_until: Option<Instant>,
}

#[derive(Debug)]
struct AppBudget {
    key: String,
    minute: Window,
    horizons: Horizons,
}

/// What stops a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Resource {
    Api(usize),
    App(usize),
}

struct Waiter {
    app: usize,
    api: usize,
    grant: oneshot::Sender<Result<(), Deferral>>,
}

struct State {
    origin: Instant,
    apis: Vec<ApiBudget>,
    apps: Vec<AppBudget>,
    waiters: BTreeMap<(Priority, u64), Waiter>,
    seq: u64,
}

/// The scheduler of one corp. Shared (`Arc`) by the clients of every app of the corp.
pub struct CorpScheduler {
    corp_id: String,
    limits: CorpLimits,
    /// Waits for an open breaker to close instead of deferring (a command-line tool has
    /// no requeue to come back with).
    patient: bool,
    state: Mutex<State>,
    observer: Option<Arc<dyn BlockObserver>>,
}

impl std::fmt::Debug for CorpScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorpScheduler")
            .field("corp_id", &self.corp_id)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn api_index(api: Api) -> usize {
    Api::ALL.iter().position(|a| *a == api).unwrap_or(0)
}

impl CorpScheduler {
    pub fn new(
        corp_id: impl Into<String>,
        limits: CorpLimits,
        observer: Option<Arc<dyn BlockObserver>>,
    ) -> Self {
        let apis = Api::ALL
            .iter()
            .map(|_| ApiBudget {
                minute: Window::new(MINUTE, MINUTE_BUCKET, limits.per_minute),
                hour: Window::new(HOUR, HOUR_BUCKET, limits.per_hour),
                horizons: Horizons::default(),
                blocked_until: None,
            })
            .collect();
        Self {
            corp_id: corp_id.into(),
            limits,
            patient: false,
            state: Mutex::new(State {
                origin: Instant::now(),
                apis,
                apps: Vec::new(),
                waiters: BTreeMap::new(),
                seq: 0,
            }),
            observer,
        }
    }

    /// A scheduler whose requests wait out WeCom's blocks (see [`Self::acquire`]): for
    /// command-line tools.
    pub fn patient(corp_id: impl Into<String>, limits: CorpLimits) -> Self {
        Self {
            patient: true,
            ..Self::new(corp_id, limits, None)
        }
    }

    pub fn corp_id(&self) -> &str {
        &self.corp_id
    }

    pub fn limits(&self) -> CorpLimits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Never held across an await; a poisoned lock only means a panic mid-update of
        // counters that are still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The slot of app `key` (its namespace/name), with its cap of `requests_per_minute`
    /// over all APIs; the cap is updated when it changed.
    pub fn app(&self, key: &str, requests_per_minute: u32) -> AppSlot {
        let mut state = self.lock();
        if let Some(index) = state.apps.iter().position(|a| a.key == key) {
            state.apps[index].minute.set_limit(requests_per_minute);
            return AppSlot(index);
        }
        state.apps.push(AppBudget {
            key: key.to_string(),
            minute: Window::new(MINUTE, MINUTE_BUCKET, requests_per_minute),
            horizons: Horizons::default(),
        });
        AppSlot(state.apps.len() - 1)
    }

    /// Waits for room to send one `api` request of `app` in `class`, or says when to come
    /// back (see the module docs for who waits and who is deferred). A patient scheduler
    /// waits out an open breaker instead.
    pub async fn acquire(&self, app: AppSlot, api: Api, class: Priority) -> Result<(), Deferral> {
        loop {
            match self.acquire_once(app, api, class).await {
                Err(deferral) if deferral.blocked && self.patient => {
                    tokio::time::sleep(deferral.retry_after).await;
                }
                other => return other,
            }
        }
    }

    async fn acquire_once(&self, app: AppSlot, api: Api, class: Priority) -> Result<(), Deferral> {
        let api = api_index(api);
        let now = Instant::now();
        let (key, mut grant, patience) = {
            let mut state = self.lock();
            if let Some(deferral) = state.blocked(api, now) {
                return Err(deferral);
            }
            if state.may_send_now(app.0, api, class, now) {
                state.record(app.0, api, now);
                return Ok(());
            }
            let patience = match class {
                Priority::Now => None,
                Priority::Create => Some(CREATE_PATIENCE),
                Priority::Poll | Priority::SlowFact => Some(Duration::ZERO),
            };
            if let Some(patience) = patience {
                let free_at = state.free_at(app.0, api, class, now);
                if free_at.saturating_duration_since(now) > patience
                    || state.higher_pending(app.0, api, class, now)
                {
                    return Err(state.defer(app.0, api, class, now));
                }
            }
            let (tx, rx) = oneshot::channel();
            state.seq += 1;
            let key = (class, state.seq);
            state.waiters.insert(
                key,
                Waiter {
                    app: app.0,
                    api,
                    grant: tx,
                },
            );
            (key, rx, patience.map(|p| now + p))
        };
        let mut leave = WaiterGuard {
            scheduler: self,
            key: Some(key),
        };
        loop {
            let wake = {
                let mut state = self.lock();
                state.dispatch(Instant::now())
            };
            if let Ok(result) = grant.try_recv() {
                leave.key = None;
                return result;
            }
            let wake = match (wake, patience) {
                (Some(wake), Some(limit)) => Some(wake.min(limit)),
                (wake, limit) => wake.or(limit),
            };
            let timer = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                result = &mut grant => {
                    leave.key = None;
                    return result.unwrap_or(Err(Deferral { retry_after: Duration::from_secs(1), blocked: false }));
                }
                _ = timer => {
                    if let Some(limit) = patience && Instant::now() >= limit {
                        let mut state = self.lock();
                        if state.waiters.remove(&key).is_some() {
                            leave.key = None;
                            return Err(state.defer(app.0, api, class, Instant::now()));
                        }
                    }
                }
            }
        }
    }

    /// Whether a request of `app` to `api` in `class` would be sent now or after a short
    /// wait ([`CREATE_PATIENCE`] at most), without counting it; else when to come back
    /// (that time is reserved as for a deferred request). A create asks before it writes
    /// its create-pending marker, so a marker is rarely written for an A3 that then cannot
    /// leave.
    pub fn would_admit(&self, app: AppSlot, api: Api, class: Priority) -> Result<(), Deferral> {
        let api = api_index(api);
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(deferral) = state.blocked(api, now) {
            return Err(deferral);
        }
        if state.may_send_now(app.0, api, class, now) {
            return Ok(());
        }
        let soon = state
            .free_at(app.0, api, class, now)
            .saturating_duration_since(now)
            <= CREATE_PATIENCE;
        if class == Priority::Now || (soon && !state.higher_pending(app.0, api, class, now)) {
            return Ok(());
        }
        Err(state.defer(app.0, api, class, now))
    }

    /// Takes WeCom's answer to a request into account: 45009 and 45033 open the breaker
    /// of `api`. A 45009 when this corp sent close to its hourly limit is taken for the
    /// hourly block.
    pub fn on_answer(&self, api: Api, errcode: i64) {
        let now = Instant::now();
        let index = api_index(api);
        let block = {
            let mut state = self.lock();
            let origin = state.origin;
            let budget = &mut state.apis[index];
            let block = match errcode {
                codes::FREQUENCY_LIMIT => {
                    budget.hour.expire(budget.hour.index(origin, now));
                    if u64::from(budget.hour.total) * 10 >= u64::from(budget.hour.limit) * 9 {
                        HOUR_BLOCK
                    } else {
                        self.limits.minute_block
                    }
                }
                codes::CONCURRENCY_LIMIT => CONCURRENCY_BLOCK,
                _ => return,
            };
            let until = now + block;
            if budget.blocked_until.is_some_and(|b| b >= until) {
                return;
            }
            budget.blocked_until = Some(until);
            // Everyone waiting for this API learns it now, not when the breaker closes.
            state.dispatch(now);
            block
        };
        tracing::warn!(
            corp_id = %self.corp_id,
            api = api.name(),
            errcode,
            block_secs = block.as_secs(),
            "WeCom refused for its rate limit; no call to this API until its window has passed"
        );
        if let Some(observer) = &self.observer {
            observer.on_blocked(&self.corp_id, api, errcode, block);
        }
    }

    /// The APIs whose breaker is open, with how long it stays open.
    pub fn blocked(&self) -> Vec<(Api, Duration)> {
        let now = Instant::now();
        let state = self.lock();
        Api::ALL
            .iter()
            .zip(&state.apis)
            .filter_map(|(api, budget)| {
                let until = budget.blocked_until.filter(|u| *u > now)?;
                Some((*api, until - now))
            })
            .collect()
    }

    /// Requests of `api` counted in the current minute window (for tests and figures).
    pub fn sent_in_last_minute(&self, api: Api) -> u32 {
        let now = Instant::now();
        let mut state = self.lock();
        let origin = state.origin;
        let window = &mut state.apis[api_index(api)].minute;
        window.expire(window.index(origin, now));
        window.total
    }
}

/// Removes a waiter that is dropped (its pass cancelled, a deadline passed) from the queue.
struct WaiterGuard<'a> {
    scheduler: &'a CorpScheduler,
    key: Option<(Priority, u64)>,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut state = self.scheduler.lock();
            state.waiters.remove(&key);
        }
    }
}

impl State {
    fn blocked(&mut self, api: usize, now: Instant) -> Option<Deferral> {
        let budget = &mut self.apis[api];
        match budget.blocked_until {
            Some(until) if until > now => Some(Deferral {
                retry_after: until - now,
                blocked: true,
            }),
            Some(_) => {
                budget.blocked_until = None;
                None
            }
            None => None,
        }
    }

    /// What stops a request of `app` to `api` now, if anything (the windows only).
    fn stopped_by(
        &mut self,
        app: usize,
        api: usize,
        class: Priority,
        now: Instant,
    ) -> Option<Resource> {
        let origin = self.origin;
        let budget = &mut self.apis[api];
        if !budget.minute.has_room_for(origin, now, class)
            || !budget.hour.has_room_for(origin, now, Priority::Now)
        {
            return Some(Resource::Api(api));
        }
        let app_full = self
            .apps
            .get_mut(app)
            .is_some_and(|a| !a.minute.has_room_for(origin, now, class));
        app_full.then_some(Resource::App(app))
    }

    fn higher_pending(&self, app: usize, api: usize, class: Priority, now: Instant) -> bool {
        self.apis[api].horizons.higher_pending(class, now)
            || self
                .apps
                .get(app)
                .is_some_and(|a| a.horizons.higher_pending(class, now))
    }

    /// Room now, nobody of the same or a higher class queued for the same budgets, and no
    /// higher-class deferred work still to come on them.
    fn may_send_now(&mut self, app: usize, api: usize, class: Priority, now: Instant) -> bool {
        let queued_ahead = self
            .waiters
            .range(..(class, u64::MAX))
            .any(|(_, w)| w.api == api || w.app == app);
        !queued_ahead
            && !self.higher_pending(app, api, class, now)
            && self.stopped_by(app, api, class, now).is_none()
    }

    fn record(&mut self, app: usize, api: usize, now: Instant) {
        let origin = self.origin;
        let budget = &mut self.apis[api];
        budget.minute.record(origin, now);
        budget.hour.record(origin, now);
        if let Some(app_budget) = self.apps.get_mut(app) {
            app_budget.minute.record(origin, now);
        }
    }

    fn resource_free_at(&mut self, resource: Resource, class: Priority, now: Instant) -> Instant {
        let origin = self.origin;
        match resource {
            Resource::Api(api) => {
                let budget = &mut self.apis[api];
                budget
                    .minute
                    .free_at(origin, now, class)
                    .max(budget.hour.free_at(origin, now, Priority::Now))
            }
            Resource::App(app) => self
                .apps
                .get_mut(app)
                .map_or(now, |a| a.minute.free_at(origin, now, class)),
        }
    }

    /// When a request of `app` to `api` in `class` finds room in every window.
    fn free_at(&mut self, app: usize, api: usize, class: Priority, now: Instant) -> Instant {
        self.resource_free_at(Resource::Api(api), class, now)
            .max(self.resource_free_at(Resource::App(app), class, now))
    }

    /// The deferral of a request: the time it gets back, at the pace of the budget that is
    /// the tighter one for it.
    fn defer(&mut self, app: usize, api: usize, class: Priority, now: Instant) -> Deferral {
        let free_at = self.free_at(app, api, class, now);
        let api_spacing = self.apis[api].minute.spacing();
        let app_spacing = self
            .apps
            .get(app)
            .map_or(Duration::ZERO, |a| a.minute.spacing());
        let until = if app_spacing > api_spacing {
            let app_until = match self.apps.get_mut(app) {
                Some(a) => a.horizons.defer(class, free_at, app_spacing),
                None => free_at,
            };
            app_until.max(
                self.apis[api]
                    .horizons
                    .defer(class, free_at, Duration::ZERO),
            )
        } else {
            let api_until = self.apis[api].horizons.defer(class, free_at, api_spacing);
            match self.apps.get_mut(app) {
                Some(a) => api_until.max(a.horizons.defer(class, free_at, Duration::ZERO)),
                None => api_until,
            }
        };
        Deferral {
            retry_after: until
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
            blocked: false,
        }
    }

    /// Grants queued requests in priority order while there is room; a request that cannot
    /// go holds back every lower one on the same budget. Returns when room comes next for
    /// the first request still waiting.
    fn dispatch(&mut self, now: Instant) -> Option<Instant> {
        let mut held: Vec<Resource> = Vec::new();
        let mut granted: Vec<((Priority, u64), Result<(), Deferral>)> = Vec::new();
        let mut wake: Option<Instant> = None;
        let keys: Vec<((Priority, u64), usize, usize)> = self
            .waiters
            .iter()
            .map(|(k, w)| (*k, w.app, w.api))
            .collect();
        for (key, app, api) in keys {
            if held.contains(&Resource::Api(api)) || held.contains(&Resource::App(app)) {
                continue;
            }
            if let Some(deferral) = self.blocked(api, now) {
                granted.push((key, Err(deferral)));
                continue;
            }
            match self.stopped_by(app, api, key.0, now) {
                None => {
                    self.record(app, api, now);
                    granted.push((key, Ok(())));
                }
                Some(resource) => {
                    let at = self.resource_free_at(resource, key.0, now);
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                    held.push(resource);
                }
            }
        }
        for (key, result) in granted {
            if let Some(waiter) = self.waiters.remove(&key) {
                let _ = waiter.grant.send(result);
            }
        }
        wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(per_minute: u32) -> Arc<CorpScheduler> {
        Arc::new(CorpScheduler::new(
            "ww1",
            CorpLimits {
                per_minute,
                ..CorpLimits::default()
            },
            None,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_fills_the_minute_then_waits_for_the_window() {
        let corp = scheduler(100);
        let app = corp.app("ns/a", 10_000);
        let start = Instant::now();
        for _ in 0..100 {
            corp.acquire(app, Api::CreateLink, Priority::Now)
                .await
                .unwrap();
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "a burst within the window");
        corp.acquire(app, Api::CreateLink, Priority::Now)
            .await
            .unwrap();
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(60) && waited <= Duration::from_millis(60_200),
            "{waited:?}"
        );
        // Another API has its own window.
        let before = Instant::now();
        corp.acquire(app, Api::GetLink, Priority::Now)
            .await
            .unwrap();
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn no_sixty_second_window_ever_holds_more_than_the_limit() {
        let corp = scheduler(50);
        let app = corp.app("ns/a", 10_000);
        let mut sent = Vec::new();
        let start = Instant::now();
        for i in 0..400u64 {
            // Arrivals at uneven times.
            tokio::time::advance(Duration::from_millis((i * 37) % 450)).await;
            corp.acquire(app, Api::GetLink, Priority::Now)
                .await
                .unwrap();
            sent.push(start.elapsed());
        }
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(60))
                .count();
            assert!(in_window <= 50, "{in_window} calls in the 60 s from {t:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_app_cap_applies_over_all_apis_and_apps_of_a_corp_share_the_corp_limit() {
        let corp = scheduler(30);
        let a = corp.app("ns/a", 20);
        let b = corp.app("ns/b", 1000);
        for api in [Api::GetLink, Api::Customer] {
            for _ in 0..10 {
                corp.acquire(a, api, Priority::Now).await.unwrap();
            }
        }
        // App a used its 20; b still has room in A2's corp window (30 - 10 = 20), of which
        // polls may take all but the one kept for Now.
        let deferred = corp.acquire(a, Api::Statistic, Priority::Poll).await;
        assert!(deferred.is_err(), "a is at its own cap");
        for _ in 0..19 {
            corp.acquire(b, Api::GetLink, Priority::Poll).await.unwrap();
        }
        let corp_full = corp.acquire(b, Api::GetLink, Priority::Poll).await;
        assert!(
            corp_full.is_err(),
            "the corp's A2 window holds 30, 29 for polls"
        );
        let start = Instant::now();
        corp.acquire(b, Api::GetLink, Priority::Now).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO, "the last one is Now's");
        assert!(corp.acquire(b, Api::Customer, Priority::Poll).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_edit_overtakes_a_thousand_queued_polls() {
        let corp = scheduler(100);
        let app = corp.app("ns/a", 10_000);
        // Polls may fill the window but the 5 kept for Now.
        for _ in 0..95 {
            corp.acquire(app, Api::GetLink, Priority::Poll)
                .await
                .unwrap();
        }
        // The budget is spent: 1,000 polls are deferred, each to a later time.
        let mut comebacks = Vec::new();
        for _ in 0..1000 {
            let deferral = corp
                .acquire(app, Api::GetLink, Priority::Poll)
                .await
                .unwrap_err();
            comebacks.push(deferral.retry_after);
        }
        assert!(comebacks.windows(2).all(|w| w[0] <= w[1]));
        assert!(
            comebacks[999] >= Duration::from_secs(9 * 60),
            "1,000 polls at 100/min come back over 10 minutes: {:?}",
            comebacks[999]
        );
        // An edit waits neither for the polls nor for the window: it takes the reserve.
        let start = Instant::now();
        let edit = corp.acquire(app, Api::GetLink, Priority::Now).await;
        assert!(edit.is_ok());
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The first poll that comes back finds the edit's work done and gets its turn.
        assert!(comebacks[0] >= start.elapsed());
    }

    /// The scale benchmark's case: an app whose cap equals WeCom's limit sent a minute's
    /// worth of creates in its first seconds; an edit's A2 and A4 (other APIs, the same
    /// app cap) waited for the window to slide, up to a minute.
    #[tokio::test(start_paused = true)]
    async fn creates_that_fill_the_app_cap_leave_room_for_an_edit() {
        let corp = scheduler(10_000);
        let app = corp.app("ns/a", 200);
        let mut sent = 0;
        while corp
            .acquire(app, Api::CreateLink, Priority::Create)
            .await
            .is_ok()
        {
            sent += 1;
        }
        assert_eq!(sent, 190, "creates take all but the twentieth kept for Now");
        let start = Instant::now();
        for api in [Api::GetLink, Api::UpdateLink] {
            corp.acquire(app, api, Priority::Now).await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_edit_is_granted_before_a_create_queued_earlier() {
        let corp = scheduler(2);
        let app = corp.app("ns/a", 10_000);
        corp.acquire(app, Api::UpdateLink, Priority::Now)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(59_500)).await;
        corp.acquire(app, Api::UpdateLink, Priority::Now)
            .await
            .unwrap();
        // Room comes back within the create's patience, so it queues; the edit queues after.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for class in [Priority::Create, Priority::Now] {
            let (corp, order) = (corp.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let result = corp.acquire(app, Api::UpdateLink, class).await;
                order.lock().unwrap().push((class, result.is_ok()));
            }));
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(
            order,
            vec![(Priority::Now, true), (Priority::Create, false)],
            "the edit takes the one free place; the create is deferred after its patience"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_frequency_limit_opens_the_breaker_for_that_api_only() {
        let corp = scheduler(10_000);
        let app = corp.app("ns/a", 10_000);
        corp.on_answer(Api::GetLink, codes::FREQUENCY_LIMIT);
        for class in Priority::ALL {
            let deferral = corp.acquire(app, Api::GetLink, class).await.unwrap_err();
            assert!(deferral.blocked);
            assert_eq!(deferral.retry_after, MINUTE_BLOCK);
        }
        assert_eq!(corp.blocked(), vec![(Api::GetLink, MINUTE_BLOCK)]);
        assert!(
            corp.acquire(app, Api::Customer, Priority::Poll)
                .await
                .is_ok()
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(
            corp.acquire(app, Api::GetLink, Priority::Now)
                .await
                .is_err()
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(corp.acquire(app, Api::GetLink, Priority::Now).await.is_ok());
        assert!(corp.blocked().is_empty());
        // 45033 closes the API for a few seconds; other errcodes do nothing.
        corp.on_answer(Api::GetLink, codes::CONCURRENCY_LIMIT);
        assert_eq!(corp.blocked(), vec![(Api::GetLink, CONCURRENCY_BLOCK)]);
        corp.on_answer(Api::Customer, codes::SYSTEM_BUSY);
        assert_eq!(corp.blocked().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_patient_scheduler_waits_out_the_block() {
        let corp = CorpScheduler::patient("ww1", CorpLimits::default());
        let app = corp.app("", 600);
        corp.on_answer(Api::Customer, codes::FREQUENCY_LIMIT);
        let start = Instant::now();
        assert!(
            corp.acquire(app, Api::Customer, Priority::Now)
                .await
                .is_ok()
        );
        assert_eq!(start.elapsed(), MINUTE_BLOCK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_frequency_limit_near_the_hourly_limit_blocks_for_the_hour() {
        let corp = Arc::new(CorpScheduler::new(
            "ww1",
            CorpLimits {
                per_minute: 1000,
                per_hour: 100,
                ..CorpLimits::default()
            },
            None,
        ));
        let app = corp.app("ns/a", 10_000);
        for _ in 0..95 {
            corp.acquire(app, Api::GetLink, Priority::Now)
                .await
                .unwrap();
        }
        corp.on_answer(Api::GetLink, codes::FREQUENCY_LIMIT);
        assert_eq!(corp.blocked(), vec![(Api::GetLink, HOUR_BLOCK)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_edit_learns_of_a_breaker_at_once() {
        let corp = scheduler(1);
        let app = corp.app("ns/a", 10_000);
        corp.acquire(app, Api::GetLink, Priority::Now)
            .await
            .unwrap();
        let waiting = tokio::spawn({
            let corp = corp.clone();
            async move { corp.acquire(app, Api::GetLink, Priority::Now).await }
        });
        tokio::task::yield_now().await;
        corp.on_answer(Api::GetLink, codes::FREQUENCY_LIMIT);
        let result = waiting.await.unwrap();
        assert_eq!(
            result,
            Err(Deferral {
                retry_after: MINUTE_BLOCK,
                blocked: true
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lower_classes_wait_for_the_deferred_backlog_of_higher_ones() {
        let corp = scheduler(10);
        let app = corp.app("ns/a", 10_000);
        for _ in 0..10 {
            corp.acquire(app, Api::GetLink, Priority::Poll)
                .await
                .unwrap();
        }
        let create = corp
            .acquire(app, Api::GetLink, Priority::Create)
            .await
            .unwrap_err();
        let poll = corp
            .acquire(app, Api::GetLink, Priority::Poll)
            .await
            .unwrap_err();
        assert!(poll.retry_after > create.retry_after);
        // When the window frees, a poll does not take the room the create was promised.
        tokio::time::advance(create.retry_after - Duration::from_millis(1)).await;
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            corp.acquire(app, Api::GetLink, Priority::Poll)
                .await
                .is_err()
        );
        assert!(
            corp.acquire(app, Api::GetLink, Priority::Create)
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_leaves_the_queue() {
        let corp = scheduler(1);
        let app = corp.app("ns/a", 10_000);
        corp.acquire(app, Api::GetLink, Priority::Now)
            .await
            .unwrap();
        let gave_up = tokio::time::timeout(
            Duration::from_secs(1),
            corp.acquire(app, Api::GetLink, Priority::Now),
        )
        .await;
        assert!(gave_up.is_err());
        assert!(corp.lock().waiters.is_empty());
    }
}
