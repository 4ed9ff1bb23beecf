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
use super::events::SimEvent;

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
struct Delivery {
    url: String,
    body: String,
}

/// Encrypts and signs events for one receiver.
struct Sealer {
    callback: SimCallback,
    corp_id: String,
}

impl Sealer {
    fn new(callback: SimCallback, corp_id: String) -> anyhow::Result<Sealer> {
        Ok(Sealer { callback, corp_id })
    }

    fn seal(&self, _event: &SimEvent) -> anyhow::Result<Delivery> {
        // Placeholder until wecom::crypto lands: the URL is built, the body cannot be yet.
        let url = signed_url(
            &self.callback.url,
            "",
            &super::unix_now().to_string(),
            &nonce(),
        )?;
        let _ = (&self.corp_id, AGENT_ID, url);
        anyhow::bail!("callback crypto is not wired yet")
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
                Ok(delivery) => deliver(&client, &delivery, &event).await,
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

async fn deliver(client: &reqwest::Client, delivery: &Delivery, event: &SimEvent) {
    let change = event.change.change_type();
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
fn nonce() -> String {
    rand::thread_rng()
        .gen_range(100_000_000u64..10_000_000_000)
        .to_string()
}

/// `url` with the signature query appended (keeping any query it already has).
fn signed_url(
    base: &str,
    msg_signature: &str,
    timestamp: &str,
    nonce: &str,
) -> anyhow::Result<String> {
    let mut url = url::Url::parse(base).with_context(|| "the callback URL is not a valid URL")?;
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
