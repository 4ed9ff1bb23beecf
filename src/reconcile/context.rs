//! What every reconcile pass shares: the Kubernetes client, the per-app WeCom clients,
//! the event recorder, metrics, caches of both kinds, and the cadences.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::{
    Api, Resource, ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use super::{notice::Notice, recorder::Note};
use crate::{
    api::{AcquisitionLink, SecretKeyRef, WeComApp, WeComSuite},
    defaults,
    metrics::Metrics,
    wecom::{
        AllowedApiHosts,
        client::{ClientConfig, Secret, WeComClient},
        retry::RetryPolicy,
        scheduler::{BlockObserver, CorpLimits, CorpScheduler},
        suite::{SuiteClient, SuiteConfig, SuiteCorpTokens, TicketSource},
    },
};

use crate::defaults::{REQUEST_TIMEOUT, REQUESTS_PER_MINUTE, WECOM_API_BASE_URL};

/// How often slow-changing facts are refreshed.
#[derive(Debug, Clone)]
pub struct Cadence {
    /// Observe each link (A2) at least this often; callbacks make it faster.
    pub resync: Duration,
    /// Recount customers (A6).
    pub customers: Duration,
    /// Refresh statistics (A7).
    pub statistics: Duration,
    /// Refresh the quota (A8), once per app.
    pub quota: Duration,
    /// After an interrupted create found nothing, wait this long before creating again
    /// (A1 may lag behind A3). Counted from the latest moment the interrupted A3 could have
    /// been answered: the marker's time plus [`REQUEST_TIMEOUT`].
    pub create_grace: Duration,
    /// Statistics window in days (at most 30).
    pub statistics_days: u32,
}

impl Default for Cadence {
    fn default() -> Self {
        Cadence {
            resync: defaults::RESYNC_INTERVAL.value,
            customers: defaults::CUSTOMERS_INTERVAL.value,
            statistics: defaults::STATISTICS_INTERVAL.value,
            quota: defaults::QUOTA_INTERVAL.value,
            create_grace: defaults::CREATE_GRACE,
            statistics_days: defaults::STATISTICS_DAYS,
        }
    }
}

/// Why an app's WeCom client could not be built. Messages say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("WeComApp {namespace}/{name} not found: create it or fix spec.appRef")]
    NotFound { namespace: String, name: String },
    #[error("Secret {namespace}/{name} (referenced by WeComApp {app}) not found")]
    SecretNotFound {
        namespace: String,
        name: String,
        app: String,
    },
    #[error("Secret {namespace}/{name} has no key {key:?} (referenced by WeComApp {app})")]
    SecretKeyMissing {
        namespace: String,
        name: String,
        key: String,
        app: String,
    },
    #[error("WeComApp {namespace}/{name}: {message}")]
    Invalid {
        namespace: String,
        name: String,
        message: String,
    },
    #[error(
        "WeComApp {namespace}/{name}: spec.apiBaseUrl names host {host}, which the controller \
         may not call (allowed: {allowed}); use WeCom's host, or add the host to the \
         controller's --allowed-api-hosts (env ALLOWED_API_HOSTS, chart value allowedApiHosts)"
    )]
    ApiHostNotAllowed {
        namespace: String,
        name: String,
        host: String,
        allowed: String,
    },
    #[error(
        "WeComApp {namespace}/{name}: corp {corp_id} cancelled its authorisation of suite \
         {suite} (cancel_auth at {at}); no WeCom call is made for this app or its links \
         until the corp authorises the suite again"
    )]
    AuthorizationCancelled {
        namespace: String,
        name: String,
        corp_id: String,
        suite: String,
        at: String,
    },
    #[error("WeComApp {namespace}/{name}: WeComSuite {namespace}/{suite}: {message}")]
    Suite {
        namespace: String,
        name: String,
        suite: String,
        message: String,
    },
    #[error("reading Secret {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

struct CachedSuite {
    fingerprint: u64,
    client: Arc<SuiteClient>,
}

struct CachedClient {
    fingerprint: u64,
    client: WeComClient,
    checked_at: Instant,
    generation: Option<i64>,
}

/// One WeCom client per WeComApp, rebuilt only when its configuration or secret changes, so
/// that the token cache is shared by every link of the app; and one traffic scheduler per
/// corp, shared by the clients of every app of the corp.
pub struct AppClients {
    kube: kube::Client,
    metrics: Arc<Metrics>,
    clients: Mutex<HashMap<(String, String), CachedClient>>,
    /// One client (and suite token) per WeComSuite, shared by its corps' apps.
    suites: Mutex<HashMap<(String, String), CachedSuite>>,
    /// Per corpId. Never dropped: a scheduler holds a few counters, and forgetting one
    /// would forget what the corp has sent this hour.
    schedulers: Mutex<HashMap<String, Arc<CorpScheduler>>>,
    limits: CorpLimits,
    /// Told (with the corpId) when WeCom's rate limit closes one of the corp's APIs.
    block_notices: Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
    /// How long a secret read stays trusted before it is read again.
    secret_ttl: Duration,
    /// The hosts an app's apiBaseUrl may name; checked before anything else, so no client
    /// (and no request, not even the Secret read) exists for any other.
    allowed_hosts: AllowedApiHosts,
}

impl AppClients {
    pub fn new(kube: kube::Client, metrics: Arc<Metrics>, allowed_hosts: AllowedApiHosts) -> Self {
        AppClients {
            kube,
            metrics,
            clients: Mutex::new(HashMap::new()),
            suites: Mutex::new(HashMap::new()),
            schedulers: Mutex::new(HashMap::new()),
            limits: CorpLimits::default(),
            block_notices: Mutex::new(None),
            secret_ttl: Duration::from_secs(60),
            allowed_hosts,
        }
    }

    /// Limits per corp and API other than WeCom's published ones (tests, benchmarks against
    /// a simulator with lower limits). Only for schedulers not made yet.
    pub fn with_corp_limits(mut self, limits: CorpLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Where the corpId goes when WeCom's rate limit closes one of the corp's APIs.
    pub fn notify_blocks(&self, to: tokio::sync::mpsc::UnboundedSender<String>) {
        if let Ok(mut notices) = self.block_notices.lock() {
            *notices = Some(to);
        }
    }

    /// The scheduler of `corp_id`, made on first use.
    pub fn scheduler(&self, corp_id: &str) -> Arc<CorpScheduler> {
        let mut schedulers = self
            .schedulers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        schedulers
            .entry(corp_id.to_string())
            .or_insert_with(|| {
                let notices = self.block_notices.lock().ok().and_then(|n| n.clone());
                let observer = BlockFanout {
                    metrics: self.metrics.clone(),
                    notices,
                };
                Arc::new(CorpScheduler::new(
                    corp_id,
                    self.limits,
                    Some(Arc::new(observer)),
                ))
            })
            .clone()
    }

    /// The scheduler of `corp_id` if one was made.
    pub fn existing_scheduler(&self, corp_id: &str) -> Option<Arc<CorpScheduler>> {
        self.schedulers.lock().ok()?.get(corp_id).cloned()
    }

    /// The base URL of `app`'s WeCom API, if its host is allowed.
    pub fn base_url_of(&self, app: &WeComApp) -> Result<String, AppError> {
        let base_url = app
            .spec
            .api_base_url
            .clone()
            .unwrap_or_else(|| WECOM_API_BASE_URL.to_string());
        self.allowed_hosts
            .check(&base_url)
            .map_err(|refused| AppError::ApiHostNotAllowed {
                namespace: app.namespace().unwrap_or_default(),
                name: app.name_any(),
                host: refused.host,
                allowed: self.allowed_hosts.to_string(),
            })?;
        Ok(base_url)
    }

    /// Reads one key of a Secret in `namespace`.
    pub async fn read_secret(
        &self,
        namespace: &str,
        reference: &SecretKeyRef,
        app: &str,
    ) -> Result<String, AppError> {
        let api: Api<KubeSecret> = Api::namespaced(self.kube.clone(), namespace);
        let secret = api
            .get_opt(&reference.name)
            .await
            .map_err(|source| AppError::Kube {
                namespace: namespace.into(),
                name: reference.name.clone(),
                source,
            })?
            .ok_or_else(|| AppError::SecretNotFound {
                namespace: namespace.into(),
                name: reference.name.clone(),
                app: app.into(),
            })?;
        let from_data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&reference.key))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string());
        let from_string = secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(&reference.key))
            .map(|s| s.trim().to_string());
        from_data
            .or(from_string)
            .ok_or_else(|| AppError::SecretKeyMissing {
                namespace: namespace.into(),
                name: reference.name.clone(),
                key: reference.key.clone(),
                app: app.into(),
            })
    }

    /// The client of `app`, built or reused: reused while the app's generation is the same
    /// and the Secret was read within the TTL, or, after reading the Secret again, while
    /// nothing the client is made of (corp, URL, budget, secret, suite) changed.
    pub async fn client_for(&self, app: &WeComApp) -> Result<WeComClient, AppError> {
        let base_url = self.base_url_of(app)?;
        let namespace = app.namespace().unwrap_or_default();
        let name = app.name_any();
        let key = (namespace.clone(), name.clone());
        if let Ok(clients) = self.clients.lock()
            && let Some(cached) = clients.get(&key)
            && cached.generation == app.metadata.generation
            && cached.checked_at.elapsed() < self.secret_ttl
        {
            return Ok(cached.client.clone());
        }
        let secret = self.app_secret(app).await?;
        let rpm = app.spec.requests_per_minute.unwrap_or(REQUESTS_PER_MINUTE);
        let suite = match &app.spec.suite {
            Some(suite) => Some(self.suite_client(&namespace, &name, &suite.name).await?),
            None => None,
        };
        let fingerprint = {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            let suite = suite.as_ref().map(|s| Arc::as_ptr(s) as usize);
            (&app.spec.corp_id, &base_url, rpm, &secret, suite).hash(&mut hasher);
            hasher.finish()
        };
        let invalid = |message: String| AppError::Invalid {
            namespace: namespace.clone(),
            name: name.clone(),
            message,
        };
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| invalid("internal: client cache poisoned".into()))?;
        if let Some(cached) = clients.get_mut(&key)
            && cached.fingerprint == fingerprint
        {
            cached.checked_at = Instant::now();
            cached.generation = app.metadata.generation;
            return Ok(cached.client.clone());
        }
        let token_source = suite.map(|suite| {
            Arc::new(SuiteCorpTokens(suite)) as Arc<dyn crate::wecom::CorpTokenSource>
        });
        let config = ClientConfig {
            base_url,
            corp_id: app.spec.corp_id.clone(),
            secret: Secret::new(secret),
            requests_per_minute: rpm,
            retry: RetryPolicy::default(),
            request_timeout: REQUEST_TIMEOUT,
            observer: Some(self.metrics.clone()),
            scheduler: Some(self.scheduler(&app.spec.corp_id)),
            app_key: format!("{namespace}/{name}"),
            limits: self.limits,
        };
        let client = WeComClient::with_token_source(config, token_source)
            .map_err(|e| invalid(e.to_string()))?;
        let cached = CachedClient {
            fingerprint,
            client: client.clone(),
            checked_at: Instant::now(),
            generation: app.metadata.generation,
        };
        clients.insert(key, cached);
        Ok(client)
    }

    /// The app's secret from its Secret: missing (or the suite authorisation cancelled) or
    /// empty is an error that says which.
    async fn app_secret(&self, app: &WeComApp) -> Result<String, AppError> {
        let namespace = app.namespace().unwrap_or_default();
        let name = app.name_any();
        let secret = match self
            .read_secret(&namespace, &app.spec.secret_ref, &name)
            .await
        {
            Err(AppError::SecretKeyMissing { .. }) => {
                return Err(self.cancelled_or_missing(app).await);
            }
            other => other?,
        };
        if secret.is_empty() {
            return Err(AppError::Invalid {
                namespace,
                name,
                message: format!(
                    "the app secret in Secret {} key {} is empty",
                    app.spec.secret_ref.name, app.spec.secret_ref.key
                ),
            });
        }
        Ok(secret)
    }

    /// Why an app's Secret has no secret: a corp that cancelled its authorisation of a
    /// suite (the controller wrote when), or the key is just missing.
    async fn cancelled_or_missing(&self, app: &WeComApp) -> AppError {
        let namespace = app.namespace().unwrap_or_default();
        let name = app.name_any();
        let reference = SecretKeyRef {
            name: app.spec.secret_ref.name.clone(),
            key: crate::api::AUTH_CANCELLED_KEY.into(),
        };
        match self.read_secret(&namespace, &reference, &name).await {
            Ok(at) => AppError::AuthorizationCancelled {
                namespace,
                name,
                corp_id: app.spec.corp_id.clone(),
                suite: app
                    .spec
                    .suite
                    .as_ref()
                    .map(|s| s.name.clone())
                    .or_else(|| app.labels().get(crate::api::SUITE_LABEL).cloned())
                    .unwrap_or_default(),
                at,
            },
            Err(_) => AppError::SecretKeyMissing {
                namespace,
                name: app.spec.secret_ref.name.clone(),
                key: app.spec.secret_ref.key.clone(),
                app: name,
            },
        }
    }

    /// The client of WeComSuite `namespace/suite`, built or reused (its suite token is
    /// shared by every corp's app). `app` names the asking app in errors.
    pub async fn suite_client(
        &self,
        namespace: &str,
        app: &str,
        suite: &str,
    ) -> Result<Arc<SuiteClient>, AppError> {
        let failed = |message: String| AppError::Suite {
            namespace: namespace.into(),
            name: app.into(),
            suite: suite.into(),
            message,
        };
        let suites: Api<WeComSuite> = Api::namespaced(self.kube.clone(), namespace);
        let found = suites
            .get_opt(suite)
            .await
            .map_err(|e| failed(format!("cannot be read: {e}")))?
            .ok_or_else(|| failed("not found: create it or fix spec.suite.name".into()))?;
        let base_url = found
            .spec
            .api_base_url
            .clone()
            .unwrap_or_else(|| WECOM_API_BASE_URL.to_string());
        self.allowed_hosts.check(&base_url).map_err(|refused| {
            failed(format!(
                "spec.apiBaseUrl names host {}, which the controller may not call (allowed: {})",
                refused.host, self.allowed_hosts
            ))
        })?;
        let secret = self
            .read_secret(namespace, &found.spec.secret_ref, suite)
            .await?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&found.spec.suite_id, &base_url, &secret).hash(&mut hasher);
        let fingerprint = hasher.finish();
        let key = (namespace.to_string(), suite.to_string());
        let mut cache = self
            .suites
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cached) = cache.get(&key)
            && cached.fingerprint == fingerprint
        {
            return Ok(cached.client.clone());
        }
        let client = self
            .new_suite_client(namespace, suite, &found, base_url, secret)
            .map_err(failed)?;
        cache.insert(
            key,
            CachedSuite {
                fingerprint,
                client: client.clone(),
            },
        );
        Ok(client)
    }

    fn new_suite_client(
        &self,
        namespace: &str,
        suite: &str,
        found: &WeComSuite,
        base_url: String,
        secret: String,
    ) -> Result<Arc<SuiteClient>, String> {
        let tickets = Arc::new(KubeTicket {
            kube: self.kube.clone(),
            namespace: namespace.to_string(),
            name: crate::api::ticket_secret_name(suite),
        });
        let config = SuiteConfig {
            base_url,
            suite_id: found.spec.suite_id.clone(),
            suite_secret: Secret::new(secret),
            request_timeout: REQUEST_TIMEOUT,
        };
        SuiteClient::new(config, tickets).map(Arc::new)
    }

    /// Drops the client of app `namespace/name` (its token too): the next use reads the
    /// Secret again. Called when a corp cancels or re-authorises a suite.
    pub fn forget(&self, namespace: &str, name: &str) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    /// The client last built for `app`, however old: what the deletion of a link uses when
    /// the app's Secret is already gone (a namespace being deleted removes Secrets too).
    pub fn held(&self, app: &WeComApp) -> Option<WeComClient> {
        let key = (app.namespace().unwrap_or_default(), app.name_any());
        let clients = self.clients.lock().ok()?;
        clients.get(&key).map(|cached| cached.client.clone())
    }

    /// Drops the clients (their token and request budget) of apps that are no longer in
    /// `apps`: a deleted WeComApp is not reconciled again, so its client would otherwise
    /// stay cached until the process ends. Returns how many were dropped. An app missing
    /// from the store only for a moment just gets a fresh client on its next use.
    pub fn retain_apps(&self, apps: &Store<WeComApp>) -> usize {
        let Ok(mut clients) = self.clients.lock() else {
            return 0;
        };
        let before = clients.len();
        clients.retain(|(namespace, name), _| {
            apps.get(&ObjectRef::new(name).within(namespace)).is_some()
        });
        before - clients.len()
    }
}

/// The latest suite_ticket, read by name from the suite's ticket Secret when the suite
/// token is refreshed (so a restart or a new leader finds it).
struct KubeTicket {
    kube: kube::Client,
    namespace: String,
    name: String,
}

impl TicketSource for KubeTicket {
    fn latest(&self) -> futures::future::BoxFuture<'_, Result<Option<Secret>, String>> {
        Box::pin(async move {
            let api: Api<KubeSecret> = Api::namespaced(self.kube.clone(), &self.namespace);
            let secret = api
                .get_opt(&self.name)
                .await
                .map_err(|e| format!("reading Secret {}/{}: {e}", self.namespace, self.name))?;
            Ok(secret
                .and_then(|s| s.data)
                .and_then(|mut data| data.remove(crate::api::SUITE_TICKET_KEY))
                .map(|bytes| Secret::new(String::from_utf8_lossy(&bytes.0).trim().to_string()))
                .filter(|ticket| !ticket.expose().is_empty()))
        })
    }
}

/// Counts blocks in the metrics and passes the corpId on (the WeComApps of the corp get a
/// pass that reports `Throttled`).
struct BlockFanout {
    metrics: Arc<Metrics>,
    notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl BlockObserver for BlockFanout {
    fn on_blocked(&self, corp_id: &str, api: crate::wecom::Api, errcode: i64, for_: Duration) {
        self.metrics.on_blocked(corp_id, api, errcode, for_);
        if let Some(notices) = &self.notices {
            let _ = notices.send(corp_id.to_string());
        }
    }
}

/// Everything a reconcile pass needs.
pub struct Context {
    pub kube: kube::Client,
    pub apps: AppClients,
    pub recorder: super::recorder::Recorder,
    pub metrics: Arc<Metrics>,
    pub cadence: Cadence,
    pub app_store: Store<WeComApp>,
    pub link_store: Store<AcquisitionLink>,
    /// When each link's customers and statistics were last refreshed (in memory: a restart
    /// refreshes once).
    pub slow_facts: Mutex<HashMap<String, SlowFacts>>,
    /// When each app's quota was last asked, and whether a callback asked for it sooner.
    pub quota_checks: Mutex<HashMap<String, Instant>>,
    /// Consecutive failed passes per link that could not be recorded in status (the
    /// Kubernetes API itself failing), so the back-off still grows during an outage.
    pub pass_failures: Mutex<HashMap<String, u32>>,
    /// Consecutive app-level failures per app (see [`super::app::app_level_reason`]): the
    /// app's checks back off from the resync interval while they last.
    pub app_failures: Mutex<HashMap<String, u32>>,
    /// Deleted apps waiting for their links, with how many links the last look found.
    pub app_deletions: Mutex<HashMap<String, usize>>,
    /// Which long-running parts stopped on their own (`/healthz` reads it).
    pub liveness: crate::isolation::Liveness,
    /// When each link is next due for a poll.
    pub polls: super::traffic::PollTimes,
    /// Links whose next pass a callback asked for.
    pub urgent: super::traffic::Urgent,
    /// The newest resourceVersion the watch delivered per link UID.
    pub seen_versions: Arc<super::traffic::SeenVersions>,
    /// One pass at a time per object, across the controller and the urgent lane.
    pub pass_locks: super::traffic::PassLocks,
    /// Objects whose last pass failed, and until when the same cause waits.
    pub held_off: super::traffic::HeldOff,
    /// Link ids this process deleted in WeCom lately.
    pub deleted_links: super::traffic::DeletedLinks,
    /// Each app's share of the reconcile slots.
    pub slots: Arc<super::traffic::PassSlots>,
    /// One shared A1 listing per app.
    pub sweeps: super::traffic::Sweeps,
    /// Each app's effective poll interval.
    pub poll_intervals: super::traffic::PollIntervals,
    /// When this process started its controllers (Unix milliseconds).
    pub started_ms: u64,
    /// Starts a link pass (the app pass asks for one when its sweep finds the link gone).
    pub link_trigger: tokio::sync::mpsc::Sender<ObjectRef<AcquisitionLink>>,
}

#[derive(Debug, Clone, Default)]
pub struct SlowFacts {
    pub link_id: String,
    /// When customers (A6) are next due, Unix milliseconds.
    pub customers_due: Option<u64>,
    /// When statistics (A7) are next due, Unix milliseconds.
    pub statistics_due: Option<u64>,
    /// The last A6 failed (its Warning Event is out; the next success clears it).
    pub customers_failing: bool,
    /// The last A7 failed.
    pub statistics_failing: bool,
    /// Who the last full A6 count saw ([`customer_key`] of each customer), so a
    /// customer callback that arrives after the count that already included it is not
    /// counted twice. None until the first full count (a link just created): no
    /// allocation per link for an empty set.
    pub counted: Option<std::sync::Arc<std::collections::HashSet<u64>>>,
}

impl Context {
    pub fn app(&self, namespace: &str, name: &str) -> Option<Arc<WeComApp>> {
        self.app_store.get(&ObjectRef::new(name).within(namespace))
    }

    /// Publishes a Kubernetes Event about `obj`: the one place Events leave the
    /// controller. A failure to publish is logged, never fatal (a terminating namespace
    /// refuses Events; status and the log say what the Event would have).
    pub async fn publish<K>(&self, obj: &K, notice: &Notice)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Note {
            type_: notice.type_,
            reason: &notice.reason,
            action: notice.action,
            note: &notice.message,
        };
        if let Err(err) = self.recorder.publish(&obj.object_ref(&()), &event).await {
            tracing::warn!(%err, reason = %notice.reason, "could not publish event");
        }
    }

    /// Drops what this process holds about a link that is gone from the API server (its
    /// watch reported the deletion): without it, every link ever deleted stayed in these
    /// maps until the process restarted.
    pub fn forget_link(&self, key: &str, uid: Option<&str>) {
        self.forget_link_reports(key);
        self.urgent.take(key);
        self.held_off.release(key);
        if let Ok(mut failures) = self.pass_failures.lock() {
            failures.remove(key);
        }
        if let Some(uid) = uid {
            self.seen_versions.forget(uid);
        }
    }

    /// Drops what the process reports about link `key` (`namespace/name`): its Ready state
    /// and business series, its poll time and slow facts. A deletion's cleanup does this
    /// first; [`Self::forget_link`] also drops what the passes keep.
    pub fn forget_link_reports(&self, key: &str) {
        self.metrics.set_link_ready(key, None);
        if let Some((namespace, name)) = key.split_once('/') {
            self.metrics.forget_link(namespace, name);
        }
        self.polls.forget(key);
        if let Ok(mut facts) = self.slow_facts.lock() {
            facts.remove(key);
        }
    }

    /// The interval at which the links of app `namespace/name` are polled.
    pub fn poll_interval(&self, app_key: &str) -> Duration {
        self.poll_intervals
            .get(app_key)
            .unwrap_or(self.cadence.resync)
            .max(self.cadence.resync)
    }

    /// Forces the next quota check of an app (a quota callback arrived).
    pub fn expire_quota_check(&self, namespace: &str, name: &str) {
        if let Ok(mut checks) = self.quota_checks.lock() {
            checks.remove(&format!("{namespace}/{name}"));
        }
    }
}

/// Waits until `store` holds what the API server held when its watch started.
///
/// kube's `Store::wait_until_ready` wakes only the last of several waiters (one oneshot
/// receiver behind a lock, each poll replacing the waker), so a second waiter may sleep for
/// ever. Polling it again every 100 ms registers each waiter anew and sees the value once it
/// is there. A store whose writer is gone is taken as filled: nothing more will come.
pub async fn filled<K>(store: &kube::runtime::reflector::Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await {
            Ok(_) => return,
            Err(_elapsed) => continue,
        }
    }
}

/// A compact identity of one customer of a link: the external contact and the member it
/// added (one external_userid can appear once per member).
pub fn customer_key(external_userid: &str, userid: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (external_userid, userid).hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};

    fn app(namespace: &str, name: &str) -> WeComApp {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "acquisition.wecom.dev/v1alpha1",
            "kind": "WeComApp",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "corpId": "ww1",
                "secretRef": {"name": "s", "key": "secret"},
            },
        }))
        .expect("a valid WeComApp")
    }

    /// App clients over a Kubernetes client that reaches nothing (a closed port): any
    /// Secret read fails.
    fn offline_clients() -> AppClients {
        let kube = kube::Client::try_from(kube::Config::new(
            "http://127.0.0.1:1".parse().expect("a URL"),
        ))
        .expect("a client (nothing is sent)");
        AppClients::new(kube, Metrics::new(), AllowedApiHosts::default())
    }

    #[tokio::test]
    async fn clients_of_apps_gone_from_the_store_are_dropped() {
        let clients = offline_clients();
        let (store, mut writer) = reflector::store::<WeComApp>();
        writer.apply_watcher_event(&watcher::Event::Apply(app("ns", "kept")));
        let cached = || CachedClient {
            fingerprint: 0,
            client: WeComClient::new(ClientConfig::new("ww1", "secret")).expect("a client"),
            checked_at: Instant::now(),
            generation: None,
        };
        {
            let mut map = clients.clients.lock().expect("not poisoned");
            map.insert(("ns".into(), "kept".into()), cached());
            map.insert(("ns".into(), "deleted".into()), cached());
            map.insert(("other".into(), "kept".into()), cached());
        }
        assert_eq!(clients.retain_apps(&store), 2);
        let left: Vec<_> = clients
            .clients
            .lock()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect();
        assert_eq!(left, vec![("ns".to_string(), "kept".to_string())]);
        assert_eq!(clients.retain_apps(&store), 0);
    }

    #[tokio::test]
    async fn an_app_naming_a_host_not_allowed_gets_no_client() {
        // Only WeCom's host is allowed. A Secret read would fail with a Kube error instead.
        let clients = offline_clients();
        let mut hostile = app("ns", "hostile");
        hostile.spec.api_base_url = Some("http://10.0.0.7:8080/x".into());
        let error = clients.client_for(&hostile).await.expect_err("refused");
        assert!(
            matches!(&error, AppError::ApiHostNotAllowed { host, .. } if host == "10.0.0.7:8080"),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("10.0.0.7:8080")
                && message.contains("--allowed-api-hosts")
                && message.contains("qyapi.weixin.qq.com"),
            "{message}"
        );
    }
}
