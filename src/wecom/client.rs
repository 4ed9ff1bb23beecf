//! The typed WeCom client of one app: gettoken and the customer-acquisition APIs A1-A8,
//! with the app's token cache, request budget and retry policy shared by every clone.
//!
//! Every request passes its corp's [`CorpScheduler`] (the corp's per-API limits and the
//! app's own cap, in the priority class of the calling task), carries the cached token
//! ([`TokenCache`]), and is classified on `errcode` only. A request the scheduler defers
//! is not sent and comes back as [`WeComError::Deferred`]. Retryable errors back off per
//! [`RetryPolicy`]; 40014/42001 drop the token, refresh it and repeat the call once.
//!
//! Create (A3) is the one call that is not idempotent: repeating it may make a second
//! link. It is retried only when WeCom certainly did not act on it (an errcode answer, a
//! 429, or a connection that was never made); after a timeout, a broken connection or a 5xx
//! the error is returned as it is, and the controller's crash-safe create (marker, then
//! A1 + A2 to find and adopt the link) decides. Every other call may be repeated safely.
//!
//! No secret or token leaves this module: request URLs never enter an error or a log line
//! (reqwest errors are stripped of their URL and scrubbed), and [`Secret`] and the token
//! print as `<redacted>`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, Stream, TryStreamExt};
use serde::Serialize;
use tokio::time::Instant;
use tracing::Instrument;

use super::answer::{self, Answer, PageGuard, PageLimits};
use super::error::{Api, ErrorClass, WeComError};
use super::redact;
use super::retry::{AttemptFailure, RetryPolicy, with_retries};
use super::scheduler::{self, AppSlot, CorpLimits, CorpScheduler, Priority};
use super::token::{AccessToken, TokenCache};
use super::types::{
    ApiStatus, CreateLinkRequest, CreateLinkResponse, Customer, CustomerRequest, CustomerResponse,
    GetLinkResponse, LinkIdRequest, LinkInfo, ListLinkRequest, ListLinkResponse, QuotaResponse,
    RemoteLink, StatisticRequest, StatisticResponse, TokenResponse, UpdateLinkRequest,
};

use crate::defaults::{REQUEST_TIMEOUT, REQUESTS_PER_MINUTE, WECOM_API_BASE_URL};
/// A1 page size: WeCom's maximum.
pub const LIST_LINK_PAGE_LIMIT: u32 = 100;
/// A6 page size: WeCom's maximum.
pub const CUSTOMER_PAGE_LIMIT: u32 = 1000;
/// The most A1 pages read: 50,000 links, far more than one app's links a cluster manages.
pub const LIST_LINK_MAX_PAGES: u32 = 500;
/// The most A6 pages read: 1,000,000 customers through one link, beyond any quota bought.
pub const CUSTOMER_MAX_PAGES: u32 = 1000;
/// Connecting never takes longer than this, whatever the request timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The app secret. Debug and Display print `<redacted>`; `expose()` is for gettoken only.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Told about every HTTP request (retries and gettoken included), for metrics.
pub trait CallObserver: Send + Sync {
    /// `outcome` is `"0"` on success, else [`WeComError::metric_label`] (the errcode, or
    /// `http_500`, `timeout`, `transport`, `decode`, `too_large`, `not_json`; a listing's
    /// `pagination` error is not a request's). `elapsed` excludes the budget wait.
    fn on_call(&self, api: Api, outcome: &str, elapsed: Duration);
    /// After each gettoken attempt.
    fn on_token_refresh(&self, ok: bool);
    /// A request the corp's scheduler did not send now (`blocked`: WeCom's rate-limit
    /// breaker is open).
    fn on_deferred(&self, _api: Api, _blocked: bool) {}
}

/// Where a client's access token comes from when it is not gettoken: a third-party suite
/// asks `get_corp_token` with the corp's permanent code (the client's secret).
pub trait CorpTokenSource: Send + Sync {
    fn corp_token<'a>(
        &'a self,
        corp_id: &'a str,
        permanent_code: &'a Secret,
    ) -> futures::future::BoxFuture<'a, Result<TokenResponse, WeComError>>;
}

/// Everything one app's client needs.
#[derive(Clone)]
pub struct ClientConfig {
    /// Scheme, host and optional path prefix; the simulator's URL in tests.
    pub base_url: String,
    pub corp_id: String,
    pub secret: Secret,
    /// The app's own cap over all its requests, gettoken and retries included.
    pub requests_per_minute: u32,
    /// The scheduler of the app's corp, shared with the corp's other apps; `None` gives
    /// the client a scheduler of its own with WeCom's published limits.
    pub scheduler: Option<Arc<CorpScheduler>>,
    /// Who the app is within its corp's scheduler (its cap is counted under this key).
    pub app_key: String,
    /// The limits of the scheduler made when `scheduler` is `None`: WeCom's by default
    /// (tests against a simulator shorten the blocks).
    pub limits: CorpLimits,
    pub retry: RetryPolicy,
    /// The limit of one HTTP request, connection and body included.
    pub request_timeout: Duration,
    pub observer: Option<Arc<dyn CallObserver>>,
}

impl ClientConfig {
    /// A configuration with every default: WeCom's public endpoint, 600 requests per
    /// minute, the default retry policy and a 10 s request timeout.
    pub fn new(corp_id: impl Into<String>, secret: impl Into<Secret>) -> Self {
        Self {
            base_url: WECOM_API_BASE_URL.to_string(),
            corp_id: corp_id.into(),
            secret: secret.into(),
            requests_per_minute: REQUESTS_PER_MINUTE,
            retry: RetryPolicy::default(),
            request_timeout: REQUEST_TIMEOUT,
            observer: None,
            scheduler: None,
            app_key: String::new(),
            limits: CorpLimits::default(),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("corp_id", &self.corp_id)
            .field("secret", &self.secret)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("retry", &self.retry)
            .field("request_timeout", &self.request_timeout)
            .field("observer", &self.observer.as_ref().map(|_| "<observer>"))
            .field("scheduler", &self.scheduler)
            .field("app_key", &self.app_key)
            .finish()
    }
}

/// A configuration the client cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientConfigError {
    #[error(
        "WeCom base URL {url:?} is not an http(s) URL: {reason}; use e.g. {WECOM_API_BASE_URL}"
    )]
    BaseUrl { url: String, reason: String },
    #[error("WeCom corpId is empty: set spec.corpId of the WeComApp")]
    EmptyCorpId,
    #[error("WeCom app secret for corp {corp_id} is empty: check the WeComApp's secretRef")]
    EmptySecret { corp_id: String },
    #[error("WeCom retry policy needs max_attempts of at least 1")]
    NoAttempts,
    #[error("WeCom request timeout must be longer than zero")]
    NoTimeout,
    #[error("could not build the HTTP client: {0}")]
    HttpClient(String),
}

/// The client of one WeCom app. Clones share the token cache and the request budget.
#[derive(Clone)]
pub struct WeComClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Without a trailing slash; API paths start with one.
    base_url: String,
    /// `host:port`, the only part of the URL errors name.
    host: String,
    corp_id: String,
    secret: Secret,
    retry: RetryPolicy,
    observer: Option<Arc<dyn CallObserver>>,
    scheduler: Arc<CorpScheduler>,
    app: AppSlot,
    tokens: TokenCache,
    /// `Some` for an app of a third-party suite: tokens come from get_corp_token.
    token_source: Option<Arc<dyn CorpTokenSource>>,
}

impl fmt::Debug for WeComClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeComClient")
            .field("base_url", &self.inner.base_url)
            .field("corp_id", &self.inner.corp_id)
            .finish_non_exhaustive()
    }
}

/// One HTTP request's failure, and whether WeCom may have acted on the request.
struct SendFailure {
    error: WeComError,
    /// True when the request may have reached WeCom without a definite answer (timeout
    /// after connecting, broken connection, 5xx): repeating a create could duplicate it.
    outcome_unknown: bool,
}

impl SendFailure {
    fn answered(error: WeComError) -> Self {
        Self {
            error,
            outcome_unknown: false,
        }
    }
}

impl WeComClient {
    pub fn new(config: ClientConfig) -> Result<Self, ClientConfigError> {
        Self::with_token_source(config, None)
    }

    /// A client whose tokens come from `source` (a suite's get_corp_token, with
    /// `config.secret` as the permanent code) instead of gettoken.
    pub fn with_token_source(
        config: ClientConfig,
        token_source: Option<Arc<dyn CorpTokenSource>>,
    ) -> Result<Self, ClientConfigError> {
        let base =
            url::Url::parse(config.base_url.trim()).map_err(|e| ClientConfigError::BaseUrl {
                url: redact::scrub(&config.base_url),
                reason: e.to_string(),
            })?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(ClientConfigError::BaseUrl {
                url: redact::scrub(&config.base_url),
                reason: "it needs an http or https scheme and a host".into(),
            });
        }
        if config.corp_id.trim().is_empty() {
            return Err(ClientConfigError::EmptyCorpId);
        }
        if config.secret.expose().is_empty() {
            return Err(ClientConfigError::EmptySecret {
                corp_id: config.corp_id,
            });
        }
        if config.retry.max_attempts == 0 {
            return Err(ClientConfigError::NoAttempts);
        }
        if config.request_timeout.is_zero() {
            return Err(ClientConfigError::NoTimeout);
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(MAX_CONNECT_TIMEOUT))
            // WeCom does not redirect; following one would carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wecom-acq/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientConfigError::HttpClient(e.without_url().to_string()))?;
        let host = match base.port_or_known_default() {
            Some(port) => format!("{}:{port}", base.host_str().unwrap_or_default()),
            None => base.host_str().unwrap_or_default().to_string(),
        };
        // A client of its own (a command-line tool) waits out WeCom's blocks.
        let scheduler = config.scheduler.unwrap_or_else(|| {
            Arc::new(CorpScheduler::patient(
                config.corp_id.clone(),
                config.limits,
            ))
        });
        let app = scheduler.app(&config.app_key, config.requests_per_minute);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url: base.as_str().trim_end_matches('/').to_string(),
                host,
                corp_id: config.corp_id,
                secret: config.secret,
                retry: config.retry,
                observer: config.observer,
                scheduler,
                app,
                tokens: TokenCache::default(),
                token_source,
            }),
        })
    }

    pub fn corp_id(&self) -> &str {
        &self.inner.corp_id
    }

    /// The scheduler of the app's corp.
    pub fn scheduler(&self) -> &Arc<CorpScheduler> {
        &self.inner.scheduler
    }

    /// Whether a request to `api` in the current task's class would leave now or soon
    /// (see [`CorpScheduler::would_admit`]); else the deferral.
    pub fn would_admit(&self, api: Api) -> Result<(), WeComError> {
        self.inner
            .scheduler
            .would_admit(self.inner.app, api, scheduler::current_priority())
            .map_err(|deferral| WeComError::deferred(api, deferral))
    }

    /// A1: one page of the app's link ids. WeCom accepts `limit` up to 100.
    pub async fn list_links_page(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<ListLinkResponse, WeComError> {
        let request = ListLinkRequest {
            limit: Some(limit),
            cursor: cursor.map(str::to_string),
        };
        self.call(Api::ListLink, Some(&request)).await
    }

    /// A1, every page at 100 ids each.
    pub fn list_links(&self) -> impl Stream<Item = Result<String, WeComError>> + Send + '_ {
        let limits = PageLimits {
            per_page: LIST_LINK_PAGE_LIMIT,
            max_pages: LIST_LINK_MAX_PAGES,
        };
        paginate(Api::ListLink, limits, move |cursor| async move {
            let page = self
                .list_links_page(cursor.as_deref(), LIST_LINK_PAGE_LIMIT)
                .await?;
            Ok((page.link_id_list, page.next_cursor))
        })
    }

    /// A2: one link, normalised (WeCom's defaults applied).
    pub async fn get_link(&self, link_id: &str) -> Result<RemoteLink, WeComError> {
        let request = LinkIdRequest {
            link_id: link_id.to_string(),
        };
        let answer: GetLinkResponse = self.call(Api::GetLink, Some(&request)).await?;
        Ok(answer.into_remote(link_id))
    }

    /// A3. Not retried once the request may have reached WeCom (see the module docs): a
    /// [`WeComError::Timeout`], [`WeComError::Transport`] or 5xx [`WeComError::Http`] from
    /// here means the link may or may not exist. A success without a link_id is a
    /// [`WeComError::Decode`] at `link.link_id`.
    pub async fn create_link(&self, request: &CreateLinkRequest) -> Result<LinkInfo, WeComError> {
        let answer: CreateLinkResponse = self.call(Api::CreateLink, Some(request)).await?;
        Ok(answer.link)
    }

    /// A3, sent only while the request budget has room before `deadline`: past it the
    /// answer is [`WeComError::NotSent`] and nothing reached WeCom. The controller's
    /// crash-safe create needs to know when an interrupted A3 can have reached WeCom at the
    /// latest (its create-pending marker's time plus the send window and the timeout).
    pub async fn create_link_sent_by(
        &self,
        request: &CreateLinkRequest,
        deadline: Instant,
    ) -> Result<LinkInfo, WeComError> {
        let span = tracing::debug_span!("wecom_call", api = Api::CreateLink.name());
        let answer: CreateLinkResponse =
            with_retries(&self.inner.retry, Api::CreateLink, |attempt| {
                self.attempt_with_token(Api::CreateLink, Some(request), attempt, Some(deadline))
            })
            .instrument(span)
            .await?;
        Ok(answer.link)
    }

    /// A4. The range sent replaces the whole range (G1).
    pub async fn update_link(&self, request: &UpdateLinkRequest) -> Result<(), WeComError> {
        let _: ApiStatus = self.call(Api::UpdateLink, Some(request)).await?;
        Ok(())
    }

    /// A5. WeCom sends no delete_link callback for it.
    pub async fn delete_link(&self, link_id: &str) -> Result<(), WeComError> {
        let request = LinkIdRequest {
            link_id: link_id.to_string(),
        };
        let _: ApiStatus = self.call(Api::DeleteLink, Some(&request)).await?;
        Ok(())
    }

    /// A6, every page at 1000 customers each.
    pub fn customers(
        &self,
        link_id: &str,
    ) -> impl Stream<Item = Result<Customer, WeComError>> + Send + '_ {
        let link_id = link_id.to_string();
        let limits = PageLimits {
            per_page: CUSTOMER_PAGE_LIMIT,
            max_pages: CUSTOMER_MAX_PAGES,
        };
        paginate(Api::Customer, limits, move |cursor| {
            let request = CustomerRequest {
                link_id: link_id.clone(),
                limit: Some(CUSTOMER_PAGE_LIMIT),
                cursor,
            };
            async move {
                let page: CustomerResponse = self.call(Api::Customer, Some(&request)).await?;
                Ok((page.customer_list, page.next_cursor))
            }
        })
    }

    /// A7: clicks and new customers over a closed window of unix seconds, day granularity,
    /// at most 30 days apart and within the last 180 days (WeCom refuses others, 40058).
    pub async fn statistic(
        &self,
        link_id: &str,
        start_time: i64,
        end_time: i64,
    ) -> Result<StatisticResponse, WeComError> {
        let request = StatisticRequest {
            link_id: link_id.to_string(),
            start_time,
            end_time,
        };
        self.call(Api::Statistic, Some(&request)).await
    }

    /// A8: the app's quota (a GET).
    pub async fn quota(&self) -> Result<QuotaResponse, WeComError> {
        self.call::<(), QuotaResponse>(Api::Quota, None).await
    }

    /// Drops the cached token; the next call fetches a new one.
    pub async fn invalidate_token(&self) {
        self.inner.tokens.invalidate();
    }

    /// One API call with the token, the budget and the retry policy.
    async fn call<B, R>(&self, api: Api, body: Option<&B>) -> Result<R, WeComError>
    where
        B: Serialize + Sync,
        R: Answer,
    {
        let span = tracing::debug_span!("wecom_call", api = api.name());
        with_retries(&self.inner.retry, api, |attempt| {
            self.attempt_with_token(api, body, attempt, None)
        })
        .instrument(span)
        .await
    }

    /// One attempt: the call with the current token, and once more with a fresh token
    /// when WeCom refused the token (40014, 42001).
    async fn attempt_with_token<B, R>(
        &self,
        api: Api,
        body: Option<&B>,
        attempt: u32,
        deadline: Option<Instant>,
    ) -> Result<R, AttemptFailure>
    where
        B: Serialize + Sync,
        R: Answer,
    {
        // The token fetch ran its own retries: repeating it here would multiply them.
        let token = self.token().await.map_err(AttemptFailure::final_)?;
        let failure = match self.send(api, Some(&token), body, attempt, deadline).await {
            Ok(answer) => return Ok(answer),
            Err(failure) => failure,
        };
        if failure.error.class() != ErrorClass::TokenInvalid {
            return Err(self.attempt_failure(api, failure));
        }
        self.inner.tokens.invalidate_if_current(&token);
        let fresh = self.token().await.map_err(AttemptFailure::final_)?;
        self.send(api, Some(&fresh), body, attempt, deadline)
            .await
            .map_err(|failure| self.attempt_failure(api, failure))
    }

    fn attempt_failure(&self, api: Api, failure: SendFailure) -> AttemptFailure {
        // A create that may have reached WeCom must not be sent again (module docs), and a
        // request whose deadline passed would only miss it again.
        let never_again = matches!(
            failure.error,
            WeComError::NotSent { .. } | WeComError::Deferred { .. }
        ) || (api == Api::CreateLink && failure.outcome_unknown);
        let may_retry = !never_again;
        AttemptFailure {
            error: failure.error,
            may_retry,
        }
    }

    /// The cached token, or one from gettoken (single-flight, retried per the policy;
    /// 40001 is terminal and never retried).
    async fn token(&self) -> Result<AccessToken, WeComError> {
        self.inner
            .tokens
            .get_or_refresh(|| async {
                if let Some(source) = &self.inner.token_source {
                    let result = source
                        .corp_token(&self.inner.corp_id, &self.inner.secret)
                        .await;
                    if let Some(observer) = &self.inner.observer {
                        observer.on_token_refresh(result.is_ok());
                    }
                    return result;
                }
                let result = with_retries(&self.inner.retry, Api::GetToken, |attempt| async move {
                    self.send::<(), TokenResponse>(Api::GetToken, None, None, attempt, None)
                        .await
                        .map_err(|f| AttemptFailure::retryable_if_class_says(f.error))
                })
                .await;
                if let Some(observer) = &self.inner.observer {
                    observer.on_token_refresh(result.is_ok());
                }
                tracing::debug!(
                    corp_id = %self.inner.corp_id,
                    ok = result.is_ok(),
                    "WeCom access token refresh"
                );
                result
            })
            .await
    }

    /// One HTTP request: waits for the budget, sends, and decodes the answer.
    async fn send<B, R>(
        &self,
        api: Api,
        token: Option<&AccessToken>,
        body: Option<&B>,
        attempt: u32,
        deadline: Option<Instant>,
    ) -> Result<R, SendFailure>
    where
        B: Serialize,
        R: Answer,
    {
        // Everything else needs a token: gettoken never waits behind other work.
        let class = match api {
            Api::GetToken => Priority::Now,
            _ => scheduler::current_priority(),
        };
        let admitted = self.inner.scheduler.acquire(self.inner.app, api, class);
        let admitted = match deadline {
            None => admitted.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, admitted).await {
                Ok(admitted) => admitted,
                Err(_) => return Err(SendFailure::answered(WeComError::NotSent { api })),
            },
        };
        if let Err(deferral) = admitted {
            if let Some(observer) = &self.inner.observer {
                observer.on_deferred(api, deferral.blocked);
            }
            return Err(SendFailure::answered(WeComError::deferred(api, deferral)));
        }
        let started = Instant::now();
        let result = self.exchange(api, token, body).await;
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(_) => "0".to_string(),
            Err(failure) => failure.error.metric_label(),
        };
        tracing::debug!(
            api = api.name(),
            attempt,
            outcome = %outcome,
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "WeCom request"
        );
        if let Some(observer) = &self.inner.observer {
            observer.on_call(api, &outcome, elapsed);
        }
        if let Err(failure) = &result
            && let Some(errcode) = failure.error.errcode()
        {
            self.inner.scheduler.on_answer(api, errcode);
        }
        result
    }

    async fn exchange<B, R>(
        &self,
        api: Api,
        token: Option<&AccessToken>,
        body: Option<&B>,
    ) -> Result<R, SendFailure>
    where
        B: Serialize,
        R: Answer,
    {
        let url = format!("{}{}", self.inner.base_url, api.path());
        let request = if api.is_get() {
            self.inner.http.get(url)
        } else {
            let request = self.inner.http.post(url);
            match body {
                Some(body) => request.json(body),
                None => request.json(&serde_json::json!({})),
            }
        };
        let request = match (api, token) {
            (Api::GetToken, _) => request.query(&[
                ("corpid", self.inner.corp_id.as_str()),
                ("corpsecret", self.inner.secret.expose()),
            ]),
            (_, Some(token)) => request.query(&[("access_token", token.expose())]),
            (_, None) => request,
        };

        let response = request
            .send()
            .await
            .map_err(|e| self.transport_failure(api, token, e))?;
        let status = response.status();
        let content_type = answer::response_content_type(&response);
        if status != reqwest::StatusCode::OK {
            // A 5xx may come from a gateway after WeCom acted; a 429 or 4xx did not act.
            return Err(SendFailure {
                error: WeComError::Http {
                    api,
                    status: status.as_u16(),
                    content_type: self.scrub(&content_type, token),
                },
                outcome_unknown: status.is_server_error(),
            });
        }
        let body = self.read_capped(api, token, response).await?;
        answer::decode(api, status.as_u16(), &content_type, &body)
            .map_err(|error| SendFailure::answered(self.scrub_error(error, token)))
    }

    /// The body, read chunk by chunk up to [`answer::MAX_ANSWER_BYTES`]: a larger answer
    /// is refused without being buffered.
    async fn read_capped(
        &self,
        api: Api,
        token: Option<&AccessToken>,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, SendFailure> {
        let too_large = || {
            SendFailure::answered(WeComError::TooLarge {
                api,
                limit: answer::MAX_ANSWER_BYTES,
            })
        };
        if response
            .content_length()
            .is_some_and(|length| length > answer::MAX_ANSWER_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_failure(api, token, e))?
        {
            if body.len() + chunk.len() > answer::MAX_ANSWER_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// `error` with the secret and the token removed from every text the server chose
    /// (an errmsg, a quoted wrong value, a content type).
    fn scrub_error(&self, error: WeComError, token: Option<&AccessToken>) -> WeComError {
        error.scrub_server_text(|text| self.scrub(text, token))
    }

    fn transport_failure(
        &self,
        api: Api,
        token: Option<&AccessToken>,
        error: reqwest::Error,
    ) -> SendFailure {
        // A connection that was never made cannot have delivered the request.
        let outcome_unknown = !error.is_connect();
        let error = if error.is_timeout() {
            WeComError::Timeout { api }
        } else {
            WeComError::Transport {
                api,
                message: self.scrub(
                    &format!(
                        "{} (host {}; check the base URL and the network)",
                        error_chain(error),
                        self.inner.host
                    ),
                    token,
                ),
            }
        };
        SendFailure {
            error,
            outcome_unknown,
        }
    }

    /// Removes credential query parameters and the known secret and token from text that
    /// goes into an error.
    fn scrub(&self, text: &str, token: Option<&AccessToken>) -> String {
        let scrubbed = redact::scrub(text);
        let scrubbed = redact::scrub_value(&scrubbed, self.inner.secret.expose());
        match token {
            Some(token) => redact::scrub_value(&scrubbed, token.expose()),
            None => scrubbed,
        }
    }
}

/// A reqwest error and its causes as one line, without the URL (it carries credentials).
fn error_chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Where a listing goes next.
enum Page {
    First,
    After(String),
    Done,
}

/// Turns a page fetcher (cursor in; items and next cursor out) into a stream of items
/// that follows the cursors until WeCom sends an empty one, within `limits` (see
/// [`PageGuard`]).
fn paginate<'a, T, F, Fut>(
    api: Api,
    limits: PageLimits,
    fetch: F,
) -> impl Stream<Item = Result<T, WeComError>> + Send + 'a
where
    T: Send + 'a,
    F: FnMut(Option<String>) -> Fut + Send + 'a,
    Fut: Future<Output = Result<(Vec<T>, String), WeComError>> + Send + 'a,
{
    let guard = PageGuard::new(api, limits);
    stream::try_unfold(
        (Page::First, fetch, guard),
        move |(page, mut fetch, mut guard)| async move {
            let cursor = match page {
                Page::Done => return Ok(None),
                Page::First => None,
                Page::After(cursor) => Some(cursor),
            };
            let (items, next_cursor) = fetch(cursor).await?;
            let next = match guard.after_page(items.len(), &next_cursor)? {
                Some(cursor) => Page::After(cursor),
                None => Page::Done,
            };
            let items = stream::iter(items.into_iter().map(Ok::<T, WeComError>));
            Ok(Some((items, (next, fetch, guard))))
        },
    )
    .try_flatten()
}
