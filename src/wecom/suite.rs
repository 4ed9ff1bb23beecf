//! A third-party suite (第三方应用, or a 代开发 template) on the WeCom side: its
//! `suite_access_token` from the suite secret and the latest `suite_ticket`
//! (`get_suite_token`), the permanent code of a corp that authorised it
//! (`v2/get_permanent_code`), and that corp's access token (`get_corp_token`).
//!
//! The suite token is cached and single-flight like an app's token ([`TokenCache`]): one
//! `get_suite_token` per 7200 s whatever the number of authorised corps. The ticket is
//! read from its [`TicketSource`] only when the suite token is refreshed. A suite token
//! WeCom refuses (40082, 42009) is dropped and asked again once. No secret, ticket,
//! permanent code or token enters an error or a log line.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::answer::{self, Answer};
use super::client::{CorpTokenSource, Secret};
use super::error::{Api, WeComError, codes};
use super::redact;
use super::token::{AccessToken, TokenCache};
use super::types::TokenResponse;

/// Where the latest suite_ticket is kept (a Secret in the controller, memory in tests).
pub trait TicketSource: Send + Sync {
    /// The latest ticket received, `None` before the first push. An `Err` says why it
    /// cannot be read now (never the ticket itself).
    fn latest(&self) -> BoxFuture<'_, Result<Option<Secret>, String>>;
}

/// The suite's identity and where WeCom is.
#[derive(Clone)]
pub struct SuiteConfig {
    pub base_url: String,
    pub suite_id: String,
    pub suite_secret: Secret,
    pub request_timeout: Duration,
}

/// What `v2/get_permanent_code` gives for an AuthCode.
#[derive(Clone)]
pub struct Authorisation {
    pub corp_id: String,
    pub corp_name: String,
    pub permanent_code: Secret,
}

impl std::fmt::Debug for Authorisation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorisation")
            .field("corp_id", &self.corp_id)
            .field("corp_name", &self.corp_name)
            .field("permanent_code", &"<redacted>")
            .finish()
    }
}

#[derive(Serialize)]
struct SuiteTokenRequest<'a> {
    suite_id: &'a str,
    suite_secret: &'a str,
    suite_ticket: &'a str,
}

#[derive(Deserialize, Default)]
struct SuiteTokenResponse {
    #[serde(default)]
    suite_access_token: String,
    #[serde(default)]
    expires_in: u64,
}
impl Answer for SuiteTokenResponse {}

#[derive(Serialize)]
struct PermanentCodeRequest<'a> {
    auth_code: &'a str,
}

#[derive(Deserialize, Default)]
struct AuthCorpInfo {
    #[serde(default)]
    corpid: String,
    #[serde(default)]
    corp_name: String,
}

#[derive(Deserialize, Default)]
struct PermanentCodeResponse {
    #[serde(default)]
    permanent_code: String,
    #[serde(default)]
    auth_corp_info: AuthCorpInfo,
}
impl Answer for PermanentCodeResponse {}

#[derive(Serialize)]
struct CorpTokenRequest<'a> {
    auth_corpid: &'a str,
    permanent_code: &'a str,
}

/// The client of one suite. Shared (in an `Arc`) by the clients of every corp it serves.
pub struct SuiteClient {
    http: reqwest::Client,
    base_url: String,
    suite_id: String,
    suite_secret: Secret,
    tickets: Arc<dyn TicketSource>,
    tokens: TokenCache,
}

impl std::fmt::Debug for SuiteClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuiteClient")
            .field("base_url", &self.base_url)
            .field("suite_id", &self.suite_id)
            .finish_non_exhaustive()
    }
}

impl SuiteClient {
    pub fn new(config: SuiteConfig, tickets: Arc<dyn TicketSource>) -> Result<Self, String> {
        if config.suite_id.trim().is_empty() {
            return Err("the suite id is empty".into());
        }
        if config.suite_secret.expose().is_empty() {
            return Err(format!(
                "the suite secret of suite {} is empty",
                config.suite_id
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wecom-acq/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("could not build the HTTP client: {}", e.without_url()))?;
        Ok(SuiteClient {
            http,
            base_url: config.base_url.trim().trim_end_matches('/').to_string(),
            suite_id: config.suite_id,
            suite_secret: config.suite_secret,
            tickets,
            tokens: TokenCache::default(),
        })
    }

    pub fn suite_id(&self) -> &str {
        &self.suite_id
    }

    /// Drops the cached suite token (a new ticket arrived after a refusal).
    pub fn invalidate_token(&self) {
        self.tokens.invalidate();
    }

    /// The cached suite token, or one from get_suite_token with the latest ticket.
    async fn suite_token(&self) -> Result<AccessToken, WeComError> {
        self.tokens
            .get_or_refresh(|| async {
                let ticket = match self.tickets.latest().await {
                    Ok(Some(ticket)) => ticket,
                    Ok(None) => {
                        return Err(WeComError::NoSuiteTicket {
                            api: Api::GetSuiteToken,
                            suite_id: self.suite_id.clone(),
                        });
                    }
                    Err(why) => {
                        return Err(WeComError::Transport {
                            api: Api::GetSuiteToken,
                            message: format!("the suite ticket cannot be read: {why}"),
                        });
                    }
                };
                let request = SuiteTokenRequest {
                    suite_id: &self.suite_id,
                    suite_secret: self.suite_secret.expose(),
                    suite_ticket: ticket.expose(),
                };
                let answer: SuiteTokenResponse = self
                    .post(Api::GetSuiteToken, None, &request, &[ticket.expose()])
                    .await?;
                tracing::debug!(suite_id = %self.suite_id, "WeCom suite access token refresh");
                Ok(TokenResponse {
                    access_token: answer.suite_access_token,
                    expires_in: answer.expires_in,
                })
            })
            .await
    }

    /// A call that needs the suite token, asked once more with a fresh token when WeCom
    /// refuses the token (40082, 42009).
    async fn with_suite_token<B, R>(
        &self,
        api: Api,
        body: &B,
        hidden: &[&str],
    ) -> Result<R, WeComError>
    where
        B: Serialize + Sync,
        R: Answer,
    {
        let token = self.suite_token().await?;
        match self.post(api, Some(&token), body, hidden).await {
            Err(error)
                if matches!(
                    error.errcode(),
                    Some(codes::INVALID_SUITE_TOKEN | codes::SUITE_TOKEN_EXPIRED)
                ) =>
            {
                self.tokens.invalidate_if_current(&token);
                let fresh = self.suite_token().await?;
                self.post(api, Some(&fresh), body, hidden).await
            }
            other => other,
        }
    }

    /// `v2/get_permanent_code`: the AuthCode of a `create_auth` (valid 10 minutes, once)
    /// for the corp's permanent code.
    pub async fn permanent_code(&self, auth_code: &Secret) -> Result<Authorisation, WeComError> {
        let request = PermanentCodeRequest {
            auth_code: auth_code.expose(),
        };
        let answer: PermanentCodeResponse = self
            .with_suite_token(Api::GetPermanentCode, &request, &[auth_code.expose()])
            .await?;
        if answer.permanent_code.is_empty() || answer.auth_corp_info.corpid.is_empty() {
            return Err(WeComError::Decode {
                api: Api::GetPermanentCode,
                path: "permanent_code".into(),
                message: "the answer has no permanent_code or auth_corp_info.corpid".into(),
            });
        }
        Ok(Authorisation {
            corp_id: answer.auth_corp_info.corpid,
            corp_name: answer.auth_corp_info.corp_name,
            permanent_code: Secret::new(answer.permanent_code),
        })
    }

    /// `get_corp_token`: the access token of an authorised corp.
    pub async fn corp_token(
        &self,
        corp_id: &str,
        permanent_code: &Secret,
    ) -> Result<TokenResponse, WeComError> {
        let request = CorpTokenRequest {
            auth_corpid: corp_id,
            permanent_code: permanent_code.expose(),
        };
        let answer: TokenResponse = self
            .with_suite_token(Api::GetCorpToken, &request, &[permanent_code.expose()])
            .await?;
        tracing::debug!(suite_id = %self.suite_id, corp_id, "WeCom corp token from the suite");
        Ok(answer)
    }

    /// One POST with a JSON body; `hidden` are credentials in the body, scrubbed from
    /// whatever the server says back.
    async fn post<B, R>(
        &self,
        api: Api,
        token: Option<&AccessToken>,
        body: &B,
        hidden: &[&str],
    ) -> Result<R, WeComError>
    where
        B: Serialize,
        R: Answer,
    {
        let url = format!("{}{}", self.base_url, api.path());
        let mut request = self.http.post(url).json(body);
        if let Some(token) = token {
            request = request.query(&[("suite_access_token", token.expose())]);
        }
        let scrub = |text: &str| {
            let mut text = redact::scrub(text);
            text = redact::scrub_value(&text, self.suite_secret.expose());
            for value in hidden {
                text = redact::scrub_value(&text, value);
            }
            if let Some(token) = token {
                text = redact::scrub_value(&text, token.expose());
            }
            text
        };
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                WeComError::Timeout { api }
            } else {
                WeComError::Transport {
                    api,
                    message: scrub(&e.without_url().to_string()),
                }
            }
        })?;
        let status = response.status();
        let content_type = answer::response_content_type(&response);
        if status != reqwest::StatusCode::OK {
            return Err(WeComError::Http {
                api,
                status: status.as_u16(),
                content_type: scrub(&content_type),
            });
        }
        let mut response = response;
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > answer::MAX_ANSWER_BYTES {
                        return Err(WeComError::TooLarge {
                            api,
                            limit: answer::MAX_ANSWER_BYTES,
                        });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(WeComError::Transport {
                        api,
                        message: scrub(&e.without_url().to_string()),
                    });
                }
            }
        }
        answer::decode(api, status.as_u16(), &content_type, &bytes)
            .map_err(|error| error.scrub_server_text(scrub))
    }
}

/// The tokens of one authorised corp come from its suite.
pub struct SuiteCorpTokens(pub Arc<SuiteClient>);

impl CorpTokenSource for SuiteCorpTokens {
    fn corp_token<'a>(
        &'a self,
        corp_id: &'a str,
        permanent_code: &'a Secret,
    ) -> BoxFuture<'a, Result<TokenResponse, WeComError>> {
        Box::pin(self.0.corp_token(corp_id, permanent_code))
    }
}

/// A ticket held in memory (tests, and the command-line tools given a ticket).
#[derive(Default)]
pub struct MemoryTicket(std::sync::Mutex<Option<Secret>>);

impl MemoryTicket {
    pub fn set(&self, ticket: Secret) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ticket);
    }
}

impl TicketSource for MemoryTicket {
    fn latest(&self) -> BoxFuture<'_, Result<Option<Secret>, String>> {
        let ticket = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Box::pin(async move { Ok(ticket) })
    }
}
