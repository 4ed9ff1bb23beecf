//! The callback endpoint over real HTTP on loopback, without Kubernetes: a fixed app
//! directory and a bounded queue whose receiver the test holds, so every test can prove
//! what reached the worker ("the sink saw nothing") besides what was answered.
//!
//! The published vectors (WECOM-NOTES) were signed in 2014 over their own timestamps and
//! cannot be re-signed, so the tests that replay them run an endpoint whose timestamp
//! window reaches back to 2014 (`vector_settings`). Freshness itself is tested with events
//! sealed now (`stale_or_future_timestamps_are_refused`), on the default 5-minute window.

mod log_capture;

use std::sync::Arc;
use std::time::Duration;

use log_capture::Captured;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use wecom_acq::callback::{
    AppCallback, AppDirectory, CallbackEndpoint, ConnectionLimits, EndpointSettings, InboundEvent,
    Lookup, StaticDirectory, serve_endpoint, serve_endpoint_with,
};
use wecom_acq::metrics::Metrics;
use wecom_acq::wecom::crypto::{CallbackCrypto, post_body};
use wecom_acq::wecom::event::{CallbackEvent, ChangeType, Envelope, EventFamily, render_event};
use wecom_acq::wecom::unix_now;

const CLASSIC_TOKEN: &str = "QDG6eK";
const CLASSIC_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const CLASSIC_RECEIVE_ID: &str = "wx5823bf96d3bd56c7";
const CLASSIC_ECHOSTR: &str =
    "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";
const CLASSIC_ENCRYPT: &str = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==";
const WECHATPY_TOKEN: &str = "123456";
const WECHATPY_KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
const WECHATPY_RECEIVE_ID: &str = "wx49f0ab532d5d035a";
const WECHATPY_ECHOSTR: &str =
    "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==";

/// Our own app's callback settings, for events sealed now.
const TOKEN: &str = "cbToken2024";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const CORP: &str = "ww1234567890abcdef";
const SUITE: &str = "wwsuite0000000001";

fn crypto(receive_id: &str) -> CallbackCrypto {
    CallbackCrypto::new(TOKEN, AES_KEY, receive_id).unwrap()
}

fn directory() -> StaticDirectory {
    StaticDirectory::new()
        .with_app(
            "default",
            "classic",
            AppCallback {
                crypto: CallbackCrypto::new(CLASSIC_TOKEN, CLASSIC_KEY, CLASSIC_RECEIVE_ID)
                    .unwrap(),
                corp_id: CLASSIC_RECEIVE_ID.into(),
                third_party: false,
            },
        )
        .with_app(
            "default",
            "wechatpy",
            AppCallback {
                crypto: CallbackCrypto::new(WECHATPY_TOKEN, WECHATPY_KEY, WECHATPY_RECEIVE_ID)
                    .unwrap(),
                corp_id: WECHATPY_RECEIVE_ID.into(),
                third_party: false,
            },
        )
        .with_app(
            "shop",
            "selfbuilt",
            AppCallback {
                crypto: crypto(CORP),
                corp_id: CORP.into(),
                third_party: false,
            },
        )
        .with_app(
            "shop",
            "thirdparty",
            AppCallback {
                crypto: crypto(SUITE),
                corp_id: CORP.into(),
                third_party: true,
            },
        )
}

/// An endpoint on loopback and the receiving end of its queue.
struct Endpoint {
    base: String,
    events: mpsc::Receiver<InboundEvent>,
    metrics: Arc<Metrics>,
    http: reqwest::Client,
}

impl Endpoint {
    async fn start(settings: EndpointSettings, queue: usize) -> Endpoint {
        Endpoint::start_with(directory(), settings, queue, ConnectionLimits::default()).await
    }

    /// An endpoint over `directory`, with `limits` on its connections.
    async fn start_with(
        directory: impl AppDirectory,
        settings: EndpointSettings,
        queue: usize,
        limits: ConnectionLimits,
    ) -> Endpoint {
        let (tx, events) = mpsc::channel(queue);
        let metrics = Metrics::new();
        let app = CallbackEndpoint::new(directory, tx, &metrics, settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_endpoint_with(
            listener,
            app,
            limits,
            std::future::pending(),
        ));
        Endpoint {
            base: format!("http://{addr}"),
            events,
            metrics,
            http: reqwest::Client::new(),
        }
    }

    async fn default() -> Endpoint {
        Endpoint::start(EndpointSettings::default(), 16).await
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> (StatusCode, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    async fn post(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, String) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .query(query)
            .header("content-type", "text/xml")
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    /// The endpoint's `host:port`.
    fn addr(&self) -> std::net::SocketAddr {
        let addr = self.base.trim_start_matches("http://");
        addr.parse().unwrap()
    }

    /// Posts a sealed callback as WeCom would.
    async fn deliver(&self, path: &str, sealed: &Sealed) -> (StatusCode, String) {
        self.post(path, &sealed.query(), sealed.body.clone()).await
    }

    /// Delivers `sealed`, expects it answered 200 and queued, and gives its link id.
    async fn deliver_and_take(&mut self, sealed: &Sealed) -> Option<String> {
        assert_eq!(self.deliver(SELF_BUILT, sealed).await.0, StatusCode::OK);
        self.taken().event.link_id
    }

    /// The event the worker got, failing if there is none.
    fn taken(&mut self) -> InboundEvent {
        self.events.try_recv().expect("an event reached the queue")
    }

    /// Proves the request changed nothing downstream.
    fn assert_nothing_queued(&mut self) {
        assert!(
            matches!(self.events.try_recv(), Err(TryRecvError::Empty)),
            "an event reached the queue"
        );
    }

    fn count(&self, result: &str) -> u64 {
        let needle = format!("wecom_acq_callbacks_total{{result=\"{result}\"}} ");
        self.metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(&needle))
            .map(|n| n.trim().parse().unwrap())
            .unwrap_or(0)
    }
}

/// A window wide enough for the 2014 vectors (see the module comment).
fn vector_settings() -> EndpointSettings {
    let since_2014 = (unix_now() - 1_409_659_589) as u64;
    EndpointSettings {
        max_skew: Some(Duration::from_secs(since_2014 + 86_400)),
        ..EndpointSettings::default()
    }
}

struct Sealed {
    signature: String,
    timestamp: String,
    nonce: String,
    body: String,
}

impl Sealed {
    /// [`Sealed::query`] as it goes after the `?` of a raw request line.
    fn query_string(&self) -> String {
        self.query()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    fn query(&self) -> [(&'static str, &str); 3] {
        [
            ("msg_signature", &self.signature),
            ("timestamp", &self.timestamp),
            ("nonce", &self.nonce),
        ]
    }
}

fn seal_with(crypto: &CallbackCrypto, xml: &str, timestamp: i64, nonce: &str) -> Sealed {
    let sealed = crypto.seal(xml, &timestamp.to_string(), nonce);
    Sealed {
        body: post_body(crypto.receive_id(), "1000002", &sealed.encrypt),
        signature: sealed.msg_signature,
        timestamp: sealed.timestamp,
        nonce: sealed.nonce,
    }
}

fn event(change_type: ChangeType, link_id: &str) -> CallbackEvent {
    CallbackEvent {
        envelope: Envelope::SelfBuilt,
        corp_id: CORP.into(),
        suite_id: None,
        family: EventFamily::CustomerAcquisition,
        change_type,
        created_at: 1_700_000_000,
        link_id: Some(link_id.into()),
        state: None,
        user_id: None,
        external_user_id: None,
        expire_time: None,
        expire_quota_num: None,
        welcome_code: None,
        chat_key: None,
    }
}

fn delete_link(link_id: &str) -> String {
    render_event(&event(ChangeType::DeleteLink, link_id))
}

const SELF_BUILT: &str = "/callback/shop/selfbuilt";

#[tokio::test]
async fn published_url_verification_vectors_answer_the_decrypted_echostr() {
    let mut endpoint = Endpoint::start(vector_settings(), 16).await;
    // reqwest URL-encodes the query, as WeCom does (`+` as %2B, `/` and `=` too).
    let (status, body) = endpoint
        .get(
            "/callback/default/classic",
            &[
                ("msg_signature", "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"),
                ("timestamp", "1409659589"),
                ("nonce", "263014780"),
                ("echostr", CLASSIC_ECHOSTR),
            ],
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "1616140317555161061")
    );
    let wechatpy = |nonce| {
        [
            ("msg_signature", "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96"),
            ("timestamp", "1411443780"),
            ("nonce", nonce),
            ("echostr", WECHATPY_ECHOSTR),
        ]
    };
    let (status, body) = endpoint
        .get("/callback/default/wechatpy", &wechatpy("437374425"))
        .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "5927782489442352469")
    );
    // The same with another nonce must fail, and says nothing in the body.
    let (status, body) = endpoint
        .get("/callback/default/wechatpy", &wechatpy("437374424"))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::FORBIDDEN, ""));
    assert_eq!(endpoint.count("verified"), 2);
    assert_eq!(endpoint.count("bad_signature"), 1);
    endpoint.assert_nothing_queued();
}

#[tokio::test]
async fn an_echostr_with_a_raw_plus_is_still_verified() {
    // A raw `+` in a query is a space to form decoders; here it stays the base64 `+`.
    let endpoint = Endpoint::start(vector_settings(), 16).await;
    let url = format!(
        "{}/callback/default/classic?msg_signature=5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3&timestamp=1409659589&nonce=263014780&echostr={CLASSIC_ECHOSTR}",
        endpoint.base
    );
    let resp = endpoint.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "1616140317555161061");
}

#[tokio::test]
async fn published_message_vector_is_verified_decrypted_and_ignored_as_no_event() {
    let mut endpoint = Endpoint::start(vector_settings(), 16).await;
    let query = [
        ("msg_signature", "477715d11cdb4164915debcba66cb864d751f3e6"),
        ("timestamp", "1409659813"),
        ("nonce", "1372623149"),
    ];
    let body = post_body(CLASSIC_RECEIVE_ID, "218", CLASSIC_ENCRYPT);
    let (status, answer) = endpoint
        .post("/callback/default/classic", &query, body.clone())
        .await;
    // A text message from `mycreate`: authentic, decrypted, but not an event to act on.
    assert_eq!((status, answer.as_str()), (StatusCode::OK, ""));
    assert_eq!(endpoint.count("not_an_event"), 1);
    endpoint.assert_nothing_queued();

    // The same body with one digit of the signature changed is refused before decryption.
    let mut wrong = query;
    wrong[0].1 = "477715d11cdb4164915debcba66cb864d751f3e7";
    let (status, _) = endpoint
        .post("/callback/default/classic", &wrong, body)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(endpoint.count("bad_signature"), 1);
    endpoint.assert_nothing_queued();
}

#[tokio::test]
async fn a_sealed_self_built_event_is_queued_and_answered_with_an_empty_body() {
    let mut endpoint = Endpoint::default().await;
    let sealed = seal_with(&crypto(CORP), &delete_link("cawcde1"), unix_now(), "1001");
    let (status, body) = endpoint.deliver(SELF_BUILT, &sealed).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    let taken = endpoint.taken();
    assert_eq!(
        (taken.namespace.as_str(), taken.app.as_str()),
        ("shop", "selfbuilt")
    );
    assert_eq!(taken.event.change_type, ChangeType::DeleteLink);
    assert_eq!(taken.event.link_id.as_deref(), Some("cawcde1"));
    assert_eq!(endpoint.count("accepted"), 1);
}

#[tokio::test]
async fn third_party_events_are_answered_success_and_other_corps_are_ignored() {
    let mut endpoint = Endpoint::default().await;
    let third_party = |corp: &str| {
        render_event(&CallbackEvent {
            envelope: Envelope::ThirdParty,
            corp_id: corp.into(),
            suite_id: Some(SUITE.into()),
            family: EventFamily::ChangeExternalContact,
            state: Some("chan-a".into()),
            ..event(ChangeType::AddExternalContact, "cawcde2")
        })
    };
    let sealed = seal_with(&crypto(SUITE), &third_party(CORP), unix_now(), "2001");
    let (status, body) = endpoint.deliver("/callback/shop/thirdparty", &sealed).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "success"));
    let taken = endpoint.taken();
    assert_eq!(taken.event.envelope, Envelope::ThirdParty);
    assert_eq!(taken.event.state.as_deref(), Some("chan-a"));

    // Authentic, but about another corp that authorised the same suite.
    let sealed = seal_with(
        &crypto(SUITE),
        &third_party("wwothercorp"),
        unix_now(),
        "2002",
    );
    let (status, body) = endpoint.deliver("/callback/shop/thirdparty", &sealed).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "success"));
    assert_eq!(endpoint.count("foreign_corp"), 1);
    endpoint.assert_nothing_queued();
}

#[tokio::test]
async fn a_forged_signature_is_refused_and_does_not_block_the_genuine_callback() {
    let mut endpoint = Endpoint::default().await;
    let genuine = seal_with(&crypto(CORP), &delete_link("cawcde3"), unix_now(), "3001");
    let forged = Sealed {
        signature: "0".repeat(40),
        ..seal_with(&crypto(CORP), &delete_link("cawcde3"), unix_now(), "3001")
    };
    let (status, body) = endpoint.deliver(SELF_BUILT, &forged).await;
    assert_eq!((status, body.as_str()), (StatusCode::FORBIDDEN, ""));
    // Signed with another Token: refused the same way.
    let other_token = CallbackCrypto::new("anotherToken", AES_KEY, CORP).unwrap();
    let (status, _) = endpoint
        .deliver(
            SELF_BUILT,
            &seal_with(&other_token, &delete_link("x"), unix_now(), "3002"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(endpoint.count("bad_signature"), 2);
    endpoint.assert_nothing_queued();
    // The forgery with the same nonce left no trace in the replay memory.
    let (status, _) = endpoint.deliver(SELF_BUILT, &genuine).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(endpoint.taken().event.link_id.as_deref(), Some("cawcde3"));
}

#[tokio::test]
async fn a_message_for_another_receive_id_is_refused() {
    let mut endpoint = Endpoint::default().await;
    // Right Token and key (so the signature is valid), addressed to another corp.
    let sealed = seal_with(
        &crypto("wwsomeoneelse"),
        &delete_link("cawcde4"),
        unix_now(),
        "4001",
    );
    let (status, body) = endpoint.deliver(SELF_BUILT, &sealed).await;
    assert_eq!((status, body.as_str()), (StatusCode::FORBIDDEN, ""));
    assert_eq!(endpoint.count("wrong_receiver"), 1);
    endpoint.assert_nothing_queued();
}

#[tokio::test]
async fn replays_and_redeliveries_are_answered_200_and_processed_once() {
    let mut endpoint = Endpoint::default().await;
    let xml = delete_link("cawcde5");
    let first = seal_with(&crypto(CORP), &xml, unix_now(), "5001");
    assert_eq!(endpoint.deliver(SELF_BUILT, &first).await.0, StatusCode::OK);
    // The same request again (a replay).
    assert_eq!(
        endpoint.deliver(SELF_BUILT, &first).await,
        (StatusCode::OK, String::new())
    );
    // The same event sealed again with a new nonce and timestamp (WeCom's retry).
    let resealed = seal_with(&crypto(CORP), &xml, unix_now() - 1, "5002");
    assert_eq!(
        endpoint.deliver(SELF_BUILT, &resealed).await.0,
        StatusCode::OK
    );
    assert_eq!(endpoint.taken().event.link_id.as_deref(), Some("cawcde5"));
    endpoint.assert_nothing_queued();
    assert_eq!(endpoint.count("accepted"), 1);
    assert_eq!(endpoint.count("duplicate"), 2);
    // A different event is still taken.
    let other = seal_with(&crypto(CORP), &delete_link("cawcde6"), unix_now(), "5003");
    assert_eq!(endpoint.deliver(SELF_BUILT, &other).await.0, StatusCode::OK);
    assert_eq!(endpoint.taken().event.link_id.as_deref(), Some("cawcde6"));
}

#[tokio::test]
async fn stale_or_future_timestamps_are_refused() {
    let mut endpoint = Endpoint::default().await;
    for (offset, nonce) in [(-301, "6001"), (301, "6002"), (-86_400 * 365, "6003")] {
        let sealed = seal_with(
            &crypto(CORP),
            &delete_link("cawcde7"),
            unix_now() + offset,
            nonce,
        );
        let (status, body) = endpoint.deliver(SELF_BUILT, &sealed).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::FORBIDDEN, ""),
            "offset {offset}"
        );
    }
    assert_eq!(endpoint.count("stale"), 3);
    endpoint.assert_nothing_queued();
    // Inside the window it is taken.
    let sealed = seal_with(
        &crypto(CORP),
        &delete_link("cawcde7"),
        unix_now() - 200,
        "6004",
    );
    assert_eq!(
        endpoint.deliver(SELF_BUILT, &sealed).await.0,
        StatusCode::OK
    );
    endpoint.taken();
    // A narrower window from the settings (--callback-max-skew) is honoured.
    let mut narrow = Endpoint::start(
        EndpointSettings {
            max_skew: Some(Duration::from_secs(60)),
            ..EndpointSettings::default()
        },
        16,
    )
    .await;
    let sealed = seal_with(
        &crypto(CORP),
        &delete_link("cawcde7"),
        unix_now() - 200,
        "6005",
    );
    assert_eq!(
        narrow.deliver(SELF_BUILT, &sealed).await.0,
        StatusCode::FORBIDDEN
    );
    narrow.assert_nothing_queued();
}

#[tokio::test]
async fn an_oversized_body_is_413_with_or_without_content_length() {
    let mut endpoint = Endpoint::default().await;
    let sealed = seal_with(&crypto(CORP), &delete_link("cawcde8"), unix_now(), "7001");
    let padding = " ".repeat(64 * 1024);
    let big = format!("{}{padding}", sealed.body);
    let (status, body) = endpoint
        .post(SELF_BUILT, &sealed.query(), big.clone())
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, ""));
    // Streamed (chunked, no Content-Length): cut off at the limit all the same.
    let query = sealed.query_string();
    let status = chunked_post(
        &endpoint.base,
        &format!("{SELF_BUILT}?{query}"),
        big.as_bytes(),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(endpoint.count("too_large"), 2);
    endpoint.assert_nothing_queued();
    // The genuine body (whose nonce the refused ones carried) is still taken.
    assert_eq!(
        endpoint.deliver(SELF_BUILT, &sealed).await.0,
        StatusCode::OK
    );
    endpoint.taken();
}

/// A POST with `Transfer-Encoding: chunked` (no Content-Length), over a raw connection:
/// the status code of the answer.
async fn chunked_post(base: &str, path_and_query: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(4096) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and close before the whole body is sent.
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let status_line = String::from_utf8_lossy(&answer);
    status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {status_line:?}"))
}

#[tokio::test]
async fn garbage_xml_ciphertext_and_events_are_400() {
    let mut endpoint = Endpoint::default().await;
    let now = unix_now();
    let ts = now.to_string();
    let signed = |encrypt: &str, nonce: &str| {
        let signature = crypto(CORP).signature(&ts, nonce, encrypt);
        (signature, nonce.to_string())
    };

    // Not XML at all, or XML without Encrypt.
    for (body, nonce) in [
        ("this is not xml", "8001"),
        ("<xml><ToUserName>x</ToUserName></xml>", "8002"),
    ] {
        let (status, answer) = endpoint
            .post(
                SELF_BUILT,
                &[("msg_signature", "0"), ("timestamp", &ts), ("nonce", nonce)],
                body,
            )
            .await;
        assert_eq!(
            (status, answer.as_str()),
            (StatusCode::BAD_REQUEST, ""),
            "{body}"
        );
    }
    assert_eq!(endpoint.count("bad_xml"), 2);

    // Correctly signed, but the ciphertext is not base64 / not a block multiple.
    for (encrypt, nonce) in [("not base64!", "8003"), ("QUJD", "8004")] {
        let (signature, nonce) = signed(encrypt, nonce);
        let body = post_body(CORP, "1", encrypt);
        let (status, _) = endpoint
            .post(
                SELF_BUILT,
                &[
                    ("msg_signature", &signature),
                    ("timestamp", &ts),
                    ("nonce", &nonce),
                ],
                body,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{encrypt}");
    }
    assert_eq!(endpoint.count("bad_ciphertext"), 2);

    // Authentic, but the decrypted event is broken XML or has a broken number.
    for (xml, nonce) in [
        ("<xml><ToUserName>ww1", "8005"),
        (
            "<xml><ToUserName>ww1</ToUserName><CreateTime>soon</CreateTime><Event>customer_acquisition</Event><ChangeType>delete_link</ChangeType></xml>",
            "8006",
        ),
    ] {
        let sealed = seal_with(&crypto(CORP), xml, now, nonce);
        assert_eq!(
            endpoint.deliver(SELF_BUILT, &sealed).await.0,
            StatusCode::BAD_REQUEST
        );
    }
    assert_eq!(endpoint.count("bad_event"), 2);

    // Missing signature query.
    let (status, _) = endpoint.post(SELF_BUILT, &[], "<xml/>").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = endpoint.get(SELF_BUILT, &[("echostr", "x")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    endpoint.assert_nothing_queued();
}

#[tokio::test]
async fn an_unknown_app_is_a_404_that_reveals_nothing() {
    let mut endpoint = Endpoint::default().await;
    let sealed = seal_with(&crypto(CORP), &delete_link("cawcde9"), unix_now(), "9001");
    let mut answers = Vec::new();
    for path in [
        "/callback/shop/nosuchapp",
        "/callback/nosuchns/selfbuilt",
        "/callback/shop",
        "/something/else",
    ] {
        let resp = endpoint
            .http
            .post(format!("{}{path}", endpoint.base))
            .query(&sealed.query())
            .body(sealed.body.clone())
            .send()
            .await
            .unwrap();
        let content_type = resp.headers().get("content-type").cloned();
        answers.push((resp.status(), content_type, resp.text().await.unwrap()));
    }
    for answer in &answers {
        assert_eq!(answer, &(StatusCode::NOT_FOUND, None, String::new()));
    }
    let (status, body) = endpoint
        .get("/callback/shop/nosuchapp", &[("echostr", "x")])
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::NOT_FOUND, ""));
    endpoint.assert_nothing_queued();
}

#[tokio::test]
async fn other_methods_are_405_and_paths_are_matched_exactly() {
    let mut endpoint = Endpoint::default().await;
    let sealed = seal_with(&crypto(CORP), &delete_link("cawcde10"), unix_now(), "9101");
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let resp = endpoint
            .http
            .request(method.clone(), format!("{}{SELF_BUILT}", endpoint.base))
            .query(&sealed.query())
            .body(sealed.body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(
            resp.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some("GET,POST")
        );
    }
    // A trailing slash, an extra segment or an empty one is not the callback path.
    for path in [
        "/callback/shop/selfbuilt/",
        "/callback/shop/selfbuilt/extra",
        "/callback//selfbuilt",
        "/callback/shop/",
        "/callbackshop/selfbuilt",
    ] {
        let (status, body) = endpoint.deliver(path, &sealed).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, ""),
            "{path}"
        );
    }
    endpoint.assert_nothing_queued();
    assert_eq!(endpoint.count("accepted"), 0);
    // Segments are percent-decoded: the same app, and the event is taken once.
    let (status, _) = endpoint
        .deliver("/callback/sh%6Fp/self%62uilt", &sealed)
        .await;
    assert_eq!(status, StatusCode::OK);
    let taken = endpoint.taken();
    assert_eq!(
        (taken.namespace.as_str(), taken.app.as_str()),
        ("shop", "selfbuilt")
    );
    let (status, _) = endpoint.deliver(SELF_BUILT, &sealed).await;
    assert_eq!(status, StatusCode::OK);
    endpoint.assert_nothing_queued();
    assert_eq!(
        (endpoint.count("accepted"), endpoint.count("duplicate")),
        (1, 1)
    );
}

#[tokio::test]
async fn a_trickled_request_head_is_cut_off_and_shutdown_waits_for_nothing_idle() {
    let (tx, mut events) = mpsc::channel(16);
    let metrics = Metrics::new();
    let app = CallbackEndpoint::new(directory(), tx, &metrics, EndpointSettings::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_endpoint(
        listener,
        app,
        Duration::from_millis(200),
        async move {
            let _ = stopped.await;
        },
    ));
    // Half a request head, then nothing: the server must hang up, not wait for ever.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /callback/shop/selfbuilt HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut answer)).await;
    assert!(
        closed.is_ok(),
        "a connection with half a request head was held open"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // A genuine callback on another connection is served all along.
    let sealed = seal_with(&crypto(CORP), &delete_link("cawcde11"), unix_now(), "9201");
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("http://{addr}{SELF_BUILT}"))
        .query(&sealed.query())
        .body(sealed.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        events.try_recv().unwrap().event.link_id.as_deref(),
        Some("cawcde11")
    );
    // Shutdown ends the server although the client keeps its idle connection open.
    stop.send(()).unwrap();
    let served = tokio::time::timeout(Duration::from_secs(20), server).await;
    assert!(matches!(served, Ok(Ok(Ok(())))), "{served:?}");
    drop(http);
}

#[tokio::test]
async fn a_full_queue_answers_503_and_the_retry_is_taken_later() {
    let mut endpoint = Endpoint::start(EndpointSettings::default(), 1).await;
    let first = seal_with(&crypto(CORP), &delete_link("L1"), unix_now(), "10001");
    let second = seal_with(&crypto(CORP), &delete_link("L2"), unix_now(), "10002");
    assert_eq!(endpoint.deliver(SELF_BUILT, &first).await.0, StatusCode::OK);
    let (status, body) = endpoint.deliver(SELF_BUILT, &second).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "")
    );
    assert_eq!(endpoint.count("queue_full"), 1);
    assert_eq!(endpoint.taken().event.link_id.as_deref(), Some("L1"));
    endpoint.assert_nothing_queued();
    // WeCom's retry of the refused callback is processed, not taken for a replay.
    assert_eq!(
        endpoint.deliver(SELF_BUILT, &second).await.0,
        StatusCode::OK
    );
    assert_eq!(endpoint.taken().event.link_id.as_deref(), Some("L2"));
}

#[tokio::test]
async fn refusals_are_logged_in_one_line_without_secrets() {
    // A current-thread runtime: the server's tasks log on this thread.
    let (captured, _guard) = Captured::install(tracing::Level::DEBUG);
    // Every refusal logged (no interval), so that the second round below logs too.
    let settings = EndpointSettings {
        refusal_log_interval: Duration::ZERO,
        ..EndpointSettings::default()
    };
    let mut endpoint = Endpoint::start(settings, 16).await;
    // tracing caches each log site's interest globally; a site first reached by a parallel
    // test (no subscriber there) while this one was being installed can keep "never". Once
    // the sites exist, rebuilding the cache settles it, so a second round is reliable.
    let mut round = 0;
    let (log, refusals) = loop {
        round += 1;
        captured.clear();
        let nonce = |n: u32| format!("{round}{n}");
        let forged = Sealed {
            signature: "f".repeat(40),
            ..seal_with(&crypto(CORP), &delete_link("x"), unix_now(), &nonce(1))
        };
        endpoint.deliver(SELF_BUILT, &forged).await;
        let wrong = seal_with(
            &crypto("wwsomeoneelse"),
            &delete_link("x"),
            unix_now(),
            &nonce(2),
        );
        endpoint.deliver(SELF_BUILT, &wrong).await;
        let stale = seal_with(
            &crypto(CORP),
            &delete_link("x"),
            unix_now() - 3600,
            &nonce(3),
        );
        endpoint.deliver(SELF_BUILT, &stale).await;
        endpoint.assert_nothing_queued();

        let log = captured.text();
        let refusals: Vec<String> = log
            .lines()
            .filter(|l| l.contains("callback refused"))
            .map(String::from)
            .collect();
        if refusals.len() == 3 || round == 2 {
            break (log, refusals);
        }
        tracing::callsite::rebuild_interest_cache();
    };
    assert_eq!(refusals.len(), 3, "{log}");
    for wanted in ["bad_signature", "wrong_receiver", "stale"] {
        assert!(
            refusals.iter().any(|l| l.contains(wanted)),
            "{wanted} missing: {log}"
        );
    }
    for secret in [TOKEN, AES_KEY, &AES_KEY[..20]] {
        assert!(!log.contains(secret), "a secret was logged: {log}");
    }
}

/// Reads what the server sends until it closes the connection (at most 20 s).
async fn answer_until_closed(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn a_stalled_body_is_cut_off_with_408_and_the_port_goes_on() {
    let settings = EndpointSettings {
        body_read_timeout: Duration::from_millis(300),
        ..EndpointSettings::default()
    };
    let mut endpoint = Endpoint::start(settings, 16).await;
    let sealed = seal_with(&crypto(CORP), &delete_link("stall1"), unix_now(), "30001");
    let query = sealed.query_string();
    let addr = endpoint.addr();
    // The whole head, then a fifth of the announced body, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {SELF_BUILT}?{query} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        sealed.body.len()
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled
        .write_all(&sealed.body.as_bytes()[..sealed.body.len() / 5])
        .await
        .unwrap();
    let answer = answer_until_closed(&mut stalled).await;
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 408")),
        "a stalled body was held open: {answer:?}"
    );
    assert_eq!(endpoint.count("body_timeout"), 1);
    endpoint.assert_nothing_queued();
    // The same callback, sent whole, is taken.
    assert_eq!(
        endpoint.deliver_and_take(&sealed).await.as_deref(),
        Some("stall1")
    );
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_and_callbacks_get_through_below_it() {
    let limits = ConnectionLimits {
        max_connections: 3,
        ..ConnectionLimits::default()
    };
    let mut endpoint =
        Endpoint::start_with(directory(), EndpointSettings::default(), 16, limits).await;
    let addr = endpoint.addr();
    let deliver = |nonce: &'static str, link: &'static str| async move {
        let sealed = seal_with(&crypto(CORP), &delete_link(link), unix_now(), nonce);
        // A fresh client each time: no pooled connection stays behind holding a slot.
        reqwest::Client::new()
            .post(format!("http://{addr}{SELF_BUILT}"))
            .query(&sealed.query())
            .body(sealed.body.clone())
            .send()
            .await
            .map(|r| r.status())
    };
    // Two connections that send nothing hold two of the three slots...
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // ...and a callback still gets through on the third.
    assert_eq!(deliver("40001", "cap1").await.ok(), Some(StatusCode::OK));
    assert_eq!(endpoint.taken().event.link_id.as_deref(), Some("cap1"));
    // Fill the slots: the callback's connection frees its slot once the server has seen it
    // close, so connect until one is refused; the ones accepted meanwhile hold a slot.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut first = [0u8; 12];
        match tokio::time::timeout(Duration::from_millis(500), probe.read_exact(&mut first)).await {
            // Refused: the cap is reached, unless the callback's connection was still
            // counted (then try again).
            Ok(Ok(_)) if &first == b"HTTP/1.1 503" && idle.len() == 3 => break,
            Ok(Ok(_)) if &first == b"HTTP/1.1 503" => {}
            Ok(other) => panic!("unexpected answer to an idle connection: {other:?} {first:?}"),
            // Accepted: it waits for a request head, holding a slot.
            Err(_) => idle.push(probe),
        }
        assert!(
            idle.len() <= 3,
            "more than three connections were served at once"
        );
        assert!(tokio::time::Instant::now() < deadline, "never refused");
    }
    // With every slot held, each further connection is answered 503 and closed at once.
    let mut refused = Vec::new();
    for _ in 0..5 {
        let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
        refused.push(answer_until_closed(&mut over).await);
    }
    for answer in &refused {
        assert!(
            answer
                .as_deref()
                .is_some_and(|a| a.starts_with("HTTP/1.1 503")),
            "over the cap: {refused:?}"
        );
    }
    // A slot freed is a slot for the next callback.
    drop(idle.pop());
    wait_for_ok(|| async { deliver("40002", "cap2").await.ok() == Some(StatusCode::OK) }).await;
    assert_eq!(endpoint.taken().event.link_id.as_deref(), Some("cap2"));
}

/// Polls `attempt` (every 50 ms, at most 20 s) until it says yes.
async fn wait_for_ok<F, Fut>(mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !attempt().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_hundred_garbage_requests_are_all_4xx_and_logged_boundedly() {
    let (captured, _guard) = Captured::install(tracing::Level::WARN);
    let mut endpoint = Endpoint::default().await;
    let sealed = seal_with(&crypto(CORP), &delete_link("after"), unix_now(), "50001");
    let addr = endpoint.addr();
    let mut statuses = Vec::new();
    for i in 0..300_usize {
        let nonce = format!("g{i}");
        let status = match i % 10 {
            // A forged signature over a well-formed body.
            0 => {
                let forged = [
                    ("msg_signature", "0".repeat(40)),
                    ("timestamp", unix_now().to_string()),
                    ("nonce", nonce),
                ];
                let resp = endpoint.http.post(format!("{}{SELF_BUILT}", endpoint.base));
                resp.query(&forged)
                    .body(sealed.body.clone())
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
            // Not XML at all.
            1 => endpoint
                .post(SELF_BUILT, &sealed.query(), vec![i as u8; 200])
                .await
                .0
                .as_u16(),
            // No signature query.
            2 => endpoint.post(SELF_BUILT, &[], "<xml/>").await.0.as_u16(),
            // Too large.
            3 => endpoint
                .post(SELF_BUILT, &sealed.query(), vec![b'x'; 70_000])
                .await
                .0
                .as_u16(),
            // Unknown apps and paths.
            4 => endpoint
                .post(&format!("/callback/x{i}/y"), &sealed.query(), "<xml/>")
                .await
                .0
                .as_u16(),
            5 => endpoint
                .get(&format!("/../etc/passwd{i}"), &[])
                .await
                .0
                .as_u16(),
            // Another method.
            6 => endpoint
                .http
                .delete(format!("{}{SELF_BUILT}", endpoint.base))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            // A well-formed envelope whose ciphertext is garbage, correctly signed for
            // nothing: refused at the signature.
            7 => {
                let body = format!(
                    "<xml><Encrypt><![CDATA[{}]]></Encrypt></xml>",
                    "A".repeat(i + 1)
                );
                endpoint
                    .post(SELF_BUILT, &sealed.query(), body)
                    .await
                    .0
                    .as_u16()
            }
            // Not HTTP.
            _ => {
                let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
                raw.write_all(format!("\x16\x03\x01 garbage {i}\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                let answer = answer_until_closed(&mut raw).await.unwrap_or_default();
                answer
                    .split(' ')
                    .nth(1)
                    .and_then(|code| code.parse().ok())
                    .unwrap_or(0)
            }
        };
        statuses.push(status);
    }
    let not_4xx: Vec<_> = statuses
        .iter()
        .enumerate()
        .filter(|(_, s)| !(400..500).contains(*s))
        .collect();
    assert!(not_4xx.is_empty(), "not a 4xx: {not_4xx:?}");
    endpoint.assert_nothing_queued();
    // The port still takes a genuine callback.
    assert_eq!(
        endpoint.deliver_and_take(&sealed).await.as_deref(),
        Some("after")
    );
    // At most one line per refusal reason in the interval, not one per request.
    let log = captured.text();
    let lines = log
        .lines()
        .filter(|l| l.contains("callback refused"))
        .count();
    assert!(lines <= 8, "{lines} refusal lines for 300 requests: {log}");
}

/// The test directory, except that looking up app `bomb` panics (a stand-in for a bug on
/// the request path).
struct PanickingDirectory(StaticDirectory);

impl AppDirectory for PanickingDirectory {
    async fn lookup(&self, namespace: &str, app: &str) -> Lookup {
        if app == "bomb" {
            panic!("injected panic in the lookup of {namespace}/{app}");
        }
        self.0.lookup(namespace, app).await
    }
}

#[tokio::test]
async fn a_panic_while_answering_is_a_500_for_that_request_only() {
    let mut endpoint = Endpoint::start_with(
        PanickingDirectory(directory()),
        EndpointSettings::default(),
        16,
        ConnectionLimits::default(),
    )
    .await;
    let sealed = seal_with(&crypto(CORP), &delete_link("p1"), unix_now(), "60001");
    for _ in 0..3 {
        let (status, _) = endpoint.deliver("/callback/shop/bomb", &sealed).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let counted = endpoint
        .metrics
        .panics
        .get_or_create(&wecom_acq::metrics::TaskLabels {
            task: wecom_acq::isolation::task::CALLBACK_REQUEST.into(),
        })
        .get();
    assert_eq!(counted, 3);
    assert_eq!(
        endpoint.deliver_and_take(&sealed).await.as_deref(),
        Some("p1")
    );
}
