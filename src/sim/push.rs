//! Pushes the simulator's events to the callback URL the way WeCom does: rendered in the
//! self-built (or third-party) envelope, encrypted and signed with WXBizMsgCrypt, POSTed
//! with a 5 s timeout and up to 3 retries. One background task delivers in order, so no
//! API or admin handler ever waits on the receiver.

use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::SimCallback;
use super::events::{SimChange, SimEvent};
use crate::wecom::crypto::{CallbackCrypto, post_body};
use crate::wecom::event::{CallbackEvent, ChangeType, Envelope, EventFamily, render_event};

/// WeCom drops the connection after this long.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits before each retry; WeCom retries 3 times.
pub const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
/// The AgentID the simulated app has in the POST body.
pub const AGENT_ID: &str = "1000002";

/// One event, ready to POST.
pub(crate) struct Delivery {
    pub(crate) url: String,
    pub(crate) body: String,
}

/// Encrypts and signs events for one receiver.
struct Sealer {
    crypto: CallbackCrypto,
    url: String,
    corp_id: String,
    /// `Some`: third-party envelope, and the suite id is the receive id.
    suite_id: Option<String>,
}

impl Sealer {
    fn new(callback: SimCallback, corp_id: String) -> anyhow::Result<Sealer> {
        let receive_id = callback
            .third_party_suite_id
            .clone()
            .unwrap_or_else(|| corp_id.clone());
        let crypto = CallbackCrypto::new(&callback.token, &callback.aes_key, &receive_id)
            .context("the simulator's callback settings are not usable")?;
        // Fail at startup, not at the first event.
        signed_url(&callback.url, "", "", "")?;
        Ok(Sealer {
            crypto,
            url: callback.url,
            corp_id,
            suite_id: callback.third_party_suite_id,
        })
    }

    /// The event as WeCom words it, in this receiver's envelope.
    fn callback_event(&self, event: &SimEvent) -> CallbackEvent {
        let change_type = match event.change {
            SimChange::DeleteLink => ChangeType::DeleteLink,
            SimChange::AddExternalContact => ChangeType::AddExternalContact,
            SimChange::BalanceLow => ChangeType::BalanceLow,
            SimChange::BalanceExhausted => ChangeType::BalanceExhausted,
            SimChange::BalanceIncreased => ChangeType::BalanceIncreased,
            SimChange::QuotaExpireSoon => ChangeType::QuotaExpireSoon,
        };
        let family = match event.change {
            SimChange::AddExternalContact => EventFamily::ChangeExternalContact,
            _ => EventFamily::CustomerAcquisition,
        };
        // WeCom hands a welcome code with each new contact (valid 20 s for a greeting).
        let welcome_code =
            (event.change == SimChange::AddExternalContact).then(|| format!("sim{}", nonce()));
        CallbackEvent {
            envelope: if self.suite_id.is_some() {
                Envelope::ThirdParty
            } else {
                Envelope::SelfBuilt
            },
            corp_id: self.corp_id.clone(),
            suite_id: self.suite_id.clone(),
            family,
            change_type,
            created_at: event.create_time,
            link_id: event.link_id.clone(),
            state: event.state.clone(),
            user_id: event.user_id.clone(),
            external_user_id: event.external_user_id.clone(),
            expire_time: event.expire_time,
            expire_quota_num: event.expire_quota_num,
            welcome_code,
            chat_key: None,
        }
    }

    /// Renders, encrypts and signs one event. The URL's timestamp is real time, since
    /// receivers check freshness against their own clock.
    fn seal(&self, event: &SimEvent) -> anyhow::Result<Delivery> {
        let xml = render_event(&self.callback_event(event));
        let sealed = self
            .crypto
            .seal(&xml, &super::unix_now().to_string(), &nonce());
        let url = signed_url(
            &self.url,
            &sealed.msg_signature,
            &sealed.timestamp,
            &sealed.nonce,
        )?;
        let body = post_body(self.crypto.receive_id(), AGENT_ID, &sealed.encrypt);
        Ok(Delivery { url, body })
    }
}

/// Starts the delivery task; events sent to the returned channel are pushed in order.
pub(crate) fn spawn_pusher(
    callback: SimCallback,
    corp_id: String,
) -> anyhow::Result<(mpsc::UnboundedSender<SimEvent>, JoinHandle<()>)> {
    let sealer = Sealer::new(callback, corp_id)?;
    let client = reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .build()
        .context("building the simulator's callback HTTP client")?;
    let (tx, mut rx) = mpsc::unbounded_channel::<SimEvent>();
    let handle = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            match sealer.seal(&event) {
                Ok(delivery) => deliver(&client, &delivery, event.change.change_type()).await,
                Err(err) => tracing::warn!(
                    change = event.change.change_type(),
                    error = %err,
                    "sim could not seal a callback; dropped"
                ),
            }
        }
    });
    Ok((tx, handle))
}

/// POSTs one sealed callback, retrying as WeCom does; `change` names it in log lines.
pub(crate) async fn deliver(client: &reqwest::Client, delivery: &Delivery, change: &str) {
    for attempt in 0..=RETRY_DELAYS.len() {
        if attempt > 0 {
            tokio::time::sleep(RETRY_DELAYS[attempt - 1]).await;
        }
        let result = client
            .post(&delivery.url)
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(delivery.body.clone())
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().is_success() => {
                tracing::debug!(change, attempt, "sim callback delivered");
                return;
            }
            Ok(resp) => tracing::debug!(
                change,
                attempt,
                status = resp.status().as_u16(),
                "sim callback refused"
            ),
            // reqwest errors carry the URL, whose query holds only the signature and nonce.
            Err(err) => tracing::debug!(change, attempt, error = %err, "sim callback failed"),
        }
    }
    tracing::warn!(
        change,
        "sim callback not delivered after {} retries",
        RETRY_DELAYS.len()
    );
}

/// A random numeric nonce, as WeCom sends.
pub(crate) fn nonce() -> String {
    rand::thread_rng()
        .gen_range(100_000_000u64..10_000_000_000)
        .to_string()
}

/// `url` with the signature query appended (keeping any query it already has).
pub(crate) fn signed_url(
    base: &str,
    msg_signature: &str,
    timestamp: &str,
    nonce: &str,
) -> anyhow::Result<String> {
    let mut url = url::Url::parse(base).context(
        "the callback URL is not a valid absolute URL (e.g. http://127.0.0.1:8080/callback/default/wecom)",
    )?;
    url.query_pairs_mut()
        .append_pair("msg_signature", msg_signature)
        .append_pair("timestamp", timestamp)
        .append_pair("nonce", nonce);
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_url_keeps_an_existing_query() {
        let u = signed_url("http://127.0.0.1:1/cb/ns/app?x=1", "ab", "12", "34").unwrap();
        assert_eq!(
            u,
            "http://127.0.0.1:1/cb/ns/app?x=1&msg_signature=ab&timestamp=12&nonce=34"
        );
        assert!(nonce().chars().all(|c| c.is_ascii_digit()));
    }
}
