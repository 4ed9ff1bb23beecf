//! The provider side of a third-party suite, for the simulated corp: a suite configured
//! with `PUT /_sim/suite`, its `suite_ticket` pushed every 10 minutes of the simulator's
//! clock (valid 30 minutes), `create_auth` (an AuthCode valid 10 minutes, once) and
//! `cancel_auth` pushed when the admin API authorises or cancels, and the three service
//! APIs: `get_suite_token`, `v2/get_permanent_code`, `get_corp_token`.
//!
//! Callbacks go to the suite's callback URL in the third-party envelope, encrypted and
//! signed with the suite's Token and EncodingAESKey and the suite id as receive id, and
//! are delivered like the corp's callbacks ([`super::push`]). Error codes: unknown suite
//! id 40083, wrong suite secret 40080, unknown or stale ticket 40085, unknown suite token
//! 40082, expired suite token 42009, unknown, used or expired AuthCode 40078, permanent
//! code not (or no longer) valid 40084.

use std::collections::HashMap;

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::push::{Delivery, nonce, signed_url};
use super::state::ApiFailure;
use crate::wecom::crypto::{CallbackCrypto, post_body};
use crate::wecom::error::codes;
use crate::wecom::suite_event::{SuiteEvent, SuiteInfo, render_suite_event};

/// WeCom pushes a new ticket this often.
pub const TICKET_EVERY_SECS: i64 = 600;
/// A ticket is accepted this long after it was pushed.
pub const TICKET_VALID_SECS: i64 = 1800;
/// An AuthCode is valid this long, once.
pub const AUTH_CODE_VALID_SECS: i64 = 600;

/// Body of `PUT /_sim/suite`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteSpec {
    pub suite_id: String,
    pub suite_secret: String,
    /// The callback Token of the suite.
    pub token: String,
    /// The EncodingAESKey of the suite (43 characters).
    pub encoding_aes_key: String,
    /// The suite's instruction callback URL (指令回调URL).
    pub callback_url: String,
}

struct AuthCode {
    expires_at: i64,
    used: bool,
}

/// A ready callback and its InfoType, for the delivery task.
pub(crate) type SuiteDelivery = (Delivery, &'static str);

/// One configured suite and what it issued.
pub struct SuiteProvider {
    suite_id: String,
    suite_secret: String,
    callback_url: String,
    crypto: CallbackCrypto,
    /// Tickets pushed, with when; older than [`TICKET_VALID_SECS`] are forgotten.
    tickets: Vec<(String, i64)>,
    next_ticket_at: i64,
    /// suite_access_token -> expiry.
    suite_tokens: HashMap<String, i64>,
    auth_codes: HashMap<String, AuthCode>,
    /// The simulated corp's permanent code while it is authorised.
    permanent_code: Option<String>,
    token_ttl: i64,
    outlet: Option<mpsc::UnboundedSender<SuiteDelivery>>,
}

fn random_text(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect()
}

impl SuiteProvider {
    pub(crate) fn new(
        spec: SuiteSpec,
        token_ttl: i64,
        outlet: Option<mpsc::UnboundedSender<SuiteDelivery>>,
        now: i64,
    ) -> anyhow::Result<SuiteProvider> {
        anyhow::ensure!(!spec.suite_id.is_empty(), "suite_id is empty");
        anyhow::ensure!(!spec.suite_secret.is_empty(), "suite_secret is empty");
        let crypto = CallbackCrypto::new(&spec.token, &spec.encoding_aes_key, &spec.suite_id)
            .context("token or encoding_aes_key is not usable")?;
        signed_url(&spec.callback_url, "", "", "")?;
        Ok(SuiteProvider {
            suite_id: spec.suite_id,
            suite_secret: spec.suite_secret,
            callback_url: spec.callback_url,
            crypto,
            tickets: Vec::new(),
            next_ticket_at: now,
            suite_tokens: HashMap::new(),
            auth_codes: HashMap::new(),
            permanent_code: None,
            token_ttl: token_ttl.max(1),
            outlet,
        })
    }

    pub fn suite_id(&self) -> &str {
        &self.suite_id
    }

    /// Pushes a ticket when one is due on the simulator's clock.
    pub(crate) fn tick(&mut self, now: i64) {
        if now >= self.next_ticket_at {
            self.push_ticket(now);
        }
    }

    /// Pushes a new ticket now (the admin console's "refresh ticket").
    pub(crate) fn push_ticket(&mut self, now: i64) {
        let ticket = random_text(64);
        self.tickets.retain(|(_, at)| now - at < TICKET_VALID_SECS);
        self.tickets.push((ticket.clone(), now));
        self.next_ticket_at = now + TICKET_EVERY_SECS;
        self.send(SuiteInfo::SuiteTicket { ticket }, now);
    }

    /// The corp authorises the suite: a new AuthCode in a `create_auth` push.
    pub(crate) fn authorise(&mut self, now: i64) -> Value {
        self.auth_codes.retain(|_, c| c.expires_at > now - 86_400);
        let auth_code = random_text(96);
        self.auth_codes.insert(
            auth_code.clone(),
            AuthCode {
                expires_at: now + AUTH_CODE_VALID_SECS,
                used: false,
            },
        );
        self.send(
            SuiteInfo::CreateAuth {
                auth_code: auth_code.clone(),
            },
            now,
        );
        json!({ "auth_code": auth_code, "expires_in": AUTH_CODE_VALID_SECS })
    }

    /// The corp cancels: its permanent code is void, and a `cancel_auth` is pushed. The
    /// caller revokes the corp tokens the suite obtained.
    pub(crate) fn cancel(&mut self, corp_id: &str, now: i64) -> bool {
        let was = self.permanent_code.take().is_some();
        self.send(
            SuiteInfo::CancelAuth {
                auth_corp_id: corp_id.to_string(),
            },
            now,
        );
        was
    }

    /// Whether `secret` is the permanent code of a custom-developed template (suite id
    /// `dk...`): that code is the app's secret for gettoken.
    pub(crate) fn is_custom_app_secret(&self, secret: &str) -> bool {
        self.suite_id.starts_with("dk") && self.permanent_code.as_deref() == Some(secret)
    }

    pub(crate) fn authorised(&self) -> bool {
        self.permanent_code.is_some()
    }

    fn send(&self, info: SuiteInfo, now: i64) {
        let label = match &info {
            SuiteInfo::SuiteTicket { .. } => "suite_ticket",
            SuiteInfo::CreateAuth { .. } => "create_auth",
            SuiteInfo::CancelAuth { .. } => "cancel_auth",
            SuiteInfo::ChangeAuth { .. } => "change_auth",
            SuiteInfo::ResetPermanentCode { .. } => "reset_permanent_code",
            SuiteInfo::Other { .. } => "other",
        };
        let Some(outlet) = &self.outlet else {
            return;
        };
        let xml = render_suite_event(&SuiteEvent {
            suite_id: self.suite_id.clone(),
            info,
            timestamp: now,
        });
        let sealed = self
            .crypto
            .seal(&xml, &super::unix_now().to_string(), &nonce());
        match signed_url(
            &self.callback_url,
            &sealed.msg_signature,
            &sealed.timestamp,
            &sealed.nonce,
        ) {
            Ok(url) => {
                let body = post_body(&self.suite_id, "", &sealed.encrypt);
                let _ = outlet.send((Delivery { url, body }, label));
            }
            Err(err) => tracing::warn!(error = %err, "sim could not address a suite callback"),
        }
    }

    fn check_suite_token(&self, token: Option<&str>, now: i64) -> Result<(), ApiFailure> {
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
            ApiFailure::new(
                codes::MISSING_ACCESS_TOKEN,
                "the suite_access_token query parameter is required",
            )
        })?;
        match self.suite_tokens.get(token) {
            None => Err(ApiFailure::new(
                codes::INVALID_SUITE_TOKEN,
                "invalid suite_access_token; call get_suite_token",
            )),
            Some(expires_at) if *expires_at <= now => Err(ApiFailure::new(
                codes::SUITE_TOKEN_EXPIRED,
                "suite_access_token expired; call get_suite_token",
            )),
            Some(_) => Ok(()),
        }
    }

    /// `POST /cgi-bin/service/get_suite_token`.
    pub(crate) fn get_suite_token(&mut self, body: &Value, now: i64) -> Result<Value, ApiFailure> {
        let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or("");
        let (suite_id, secret, ticket) = (
            field("suite_id"),
            field("suite_secret"),
            field("suite_ticket"),
        );
        if suite_id.is_empty() || secret.is_empty() || ticket.is_empty() {
            return Err(ApiFailure::new(
                codes::INVALID_PARAMETER,
                "suite_id, suite_secret and suite_ticket are required",
            ));
        }
        if suite_id != self.suite_id {
            return Err(ApiFailure::new(codes::INVALID_SUITE_ID, "invalid suite_id"));
        }
        if secret != self.suite_secret {
            return Err(ApiFailure::new(
                codes::INVALID_SUITE_SECRET,
                "invalid suite_secret",
            ));
        }
        let fresh = self
            .tickets
            .iter()
            .any(|(t, at)| t == ticket && now - at < TICKET_VALID_SECS);
        if !fresh {
            return Err(ApiFailure::new(
                codes::INVALID_SUITE_TICKET,
                "invalid suite_ticket: unknown, or older than 30 minutes",
            ));
        }
        self.suite_tokens
            .retain(|_, expires| *expires > now - 86_400);
        let token = random_text(64);
        self.suite_tokens
            .insert(token.clone(), now + self.token_ttl);
        Ok(json!({ "suite_access_token": token, "expires_in": self.token_ttl }))
    }

    /// `POST /cgi-bin/service/v2/get_permanent_code`.
    pub(crate) fn get_permanent_code(
        &mut self,
        suite_token: Option<&str>,
        body: &Value,
        corp_id: &str,
        now: i64,
    ) -> Result<Value, ApiFailure> {
        self.check_suite_token(suite_token, now)?;
        let code = body.get("auth_code").and_then(Value::as_str).unwrap_or("");
        let valid = match self.auth_codes.get_mut(code) {
            Some(c) if !c.used && c.expires_at > now => {
                c.used = true;
                true
            }
            _ => false,
        };
        if !valid {
            return Err(ApiFailure::new(
                codes::INVALID_AUTH_CODE,
                "invalid auth_code: unknown, used already, or older than 10 minutes",
            ));
        }
        let permanent_code = random_text(43);
        self.permanent_code = Some(permanent_code.clone());
        Ok(json!({
            "permanent_code": permanent_code,
            "auth_corp_info": { "corpid": corp_id, "corp_name": "Sim Corp" },
            "auth_user_info": { "userid": "zhangsan" },
        }))
    }

    /// `POST /cgi-bin/service/get_corp_token`: checks the permanent code; the caller
    /// issues the corp's token.
    pub(crate) fn check_corp_token_request(
        &self,
        suite_token: Option<&str>,
        body: &Value,
        corp_id: &str,
        now: i64,
    ) -> Result<(), ApiFailure> {
        self.check_suite_token(suite_token, now)?;
        let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or("");
        if field("auth_corpid") != corp_id {
            return Err(ApiFailure::new(
                codes::INVALID_CORPID,
                "auth_corpid is not a corp that authorised this suite",
            ));
        }
        match &self.permanent_code {
            Some(code) if code == field("permanent_code") => Ok(()),
            _ => Err(ApiFailure::new(
                codes::INVALID_PERMANENT_CODE,
                "invalid permanent_code",
            )),
        }
    }
}

/// Delivers suite callbacks in order, until the channel closes.
pub(crate) fn spawn_suite_pusher() -> anyhow::Result<(
    mpsc::UnboundedSender<SuiteDelivery>,
    tokio::task::JoinHandle<()>,
)> {
    let client = reqwest::Client::builder()
        .timeout(super::push::DELIVERY_TIMEOUT)
        .build()
        .context("building the simulator's suite callback HTTP client")?;
    let (tx, mut rx) = mpsc::unbounded_channel::<SuiteDelivery>();
    let handle = tokio::spawn(async move {
        while let Some((delivery, label)) = rx.recv().await {
            super::push::deliver(&client, &delivery, label).await;
        }
    });
    Ok((tx, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn provider() -> SuiteProvider {
        let spec = SuiteSpec {
            suite_id: "wwsuite".into(),
            suite_secret: "suite-secret".into(),
            token: "Token1".into(),
            encoding_aes_key: "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR".into(),
            callback_url: "http://127.0.0.1:9/suite/ns/s".into(),
        };
        let mut suite = SuiteProvider::new(spec, 7200, None, NOW).unwrap();
        suite.tick(NOW);
        suite
    }

    fn ticket_request(suite: &SuiteProvider, ticket: &str) -> Value {
        json!({"suite_id": suite.suite_id, "suite_secret": "suite-secret", "suite_ticket": ticket})
    }

    fn errcode(result: Result<Value, ApiFailure>) -> i64 {
        result.map(|_| 0).unwrap_or_else(|f| f.errcode)
    }

    #[test]
    fn tickets_come_every_ten_minutes_and_last_thirty() {
        let mut suite = provider();
        let first = suite.tickets[0].0.clone();
        suite.tick(NOW + TICKET_EVERY_SECS - 1);
        assert_eq!(suite.tickets.len(), 1, "not due yet");
        suite.tick(NOW + TICKET_EVERY_SECS);
        assert_eq!(suite.tickets.len(), 2);
        let request = ticket_request(&suite, &first);
        assert_eq!(
            errcode(suite.get_suite_token(&request, NOW + TICKET_VALID_SECS - 1)),
            0
        );
        assert_eq!(
            errcode(suite.get_suite_token(&request, NOW + TICKET_VALID_SECS)),
            codes::INVALID_SUITE_TICKET
        );
        let mut wrong = request.clone();
        wrong["suite_secret"] = json!("nope");
        assert_eq!(
            errcode(suite.get_suite_token(&wrong, NOW)),
            codes::INVALID_SUITE_SECRET
        );
    }

    #[test]
    fn an_auth_code_works_once_within_ten_minutes_and_cancel_voids_the_code() {
        let mut suite = provider();
        let ticket = suite.tickets[0].0.clone();
        let token = suite
            .get_suite_token(&ticket_request(&suite, &ticket), NOW)
            .unwrap()["suite_access_token"]
            .as_str()
            .unwrap()
            .to_string();
        let code = suite.authorise(NOW)["auth_code"]
            .as_str()
            .unwrap()
            .to_string();
        let late = suite.authorise(NOW)["auth_code"]
            .as_str()
            .unwrap()
            .to_string();
        let body = json!({"auth_code": code});
        let granted = suite
            .get_permanent_code(Some(&token), &body, "wwcorp", NOW + 1)
            .unwrap();
        assert_eq!(granted["auth_corp_info"]["corpid"], "wwcorp");
        assert_eq!(
            errcode(suite.get_permanent_code(Some(&token), &body, "wwcorp", NOW + 2)),
            codes::INVALID_AUTH_CODE,
            "used already"
        );
        assert_eq!(
            errcode(suite.get_permanent_code(
                Some(&token),
                &json!({"auth_code": late}),
                "wwcorp",
                NOW + AUTH_CODE_VALID_SECS
            )),
            codes::INVALID_AUTH_CODE,
            "expired"
        );
        let corp = json!({"auth_corpid": "wwcorp", "permanent_code": granted["permanent_code"]});
        assert!(
            suite
                .check_corp_token_request(Some(&token), &corp, "wwcorp", NOW + 3)
                .is_ok()
        );
        assert!(suite.cancel("wwcorp", NOW + 4));
        assert_eq!(
            suite
                .check_corp_token_request(Some(&token), &corp, "wwcorp", NOW + 5)
                .unwrap_err()
                .errcode,
            codes::INVALID_PERMANENT_CODE
        );
        assert_eq!(
            suite
                .check_corp_token_request(Some(&token), &corp, "wwcorp", NOW + 7200)
                .unwrap_err()
                .errcode,
            codes::SUITE_TOKEN_EXPIRED
        );
    }
}
