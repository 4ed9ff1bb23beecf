//! The WeCom client against a real HTTP peer over loopback.
//!
//! `sim_*` tests run against the project's WeCom simulator (`wecom_acq::sim`), the
//! realistic peer: every API, token expiry, injected faults, WeCom's validation and
//! pagination. `stub` is a small scripted WeCom (gettoken, A1-A8, token revocation, an
//! errcode script per API and a call counter) for the focused tests that need exact control
//! over each answer: hangs, 5xx, foreign bodies, echoed credentials, a closed port.

mod log_capture;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use log_capture::Captured;
use serde_json::{Value, json};
use wecom_acq::wecom::suite::{MemoryTicket, SuiteClient, SuiteConfig};
use wecom_acq::wecom::types::{CreateLinkRequest, LinkRange, UpdateLinkRequest};
use wecom_acq::wecom::{
    Api, CallObserver, ClientConfig, ClientConfigError, RetryPolicy, Secret, WeComClient,
    WeComError,
};

const CORP_ID: &str = "wwcorp0001";
const SECRET: &str = "S3cr3t-app-secret-0001";

mod stub {
    use super::*;
    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};

    /// One scripted answer, served instead of the normal one.
    #[derive(Debug, Clone)]
    pub enum Reply {
        Errcode(i64),
        /// An errcode whose errmsg echoes the token and the secret, as a careless server
        /// might.
        ErrcodeEchoingCredentials(i64),
        Status(u16),
        Garbage,
        /// Never answers: the client's timeout fires.
        Hang,
        Json(Value),
    }

    #[derive(Default)]
    pub struct Stub {
        pub secret: String,
        /// Prefix of issued tokens; the n-th token is `{prefix}{n}`.
        pub token_prefix: String,
        issued: AtomicU32,
        valid_token: Mutex<Option<String>>,
        expired_token: Mutex<Option<String>>,
        script: Mutex<HashMap<String, VecDeque<Reply>>>,
        calls: Mutex<HashMap<String, u32>>,
        bodies: Mutex<HashMap<String, Value>>,
        pub links: Mutex<Vec<String>>,
        pub customers: AtomicU32,
        server: Mutex<
            Option<(
                tokio::sync::oneshot::Sender<()>,
                tokio::task::JoinHandle<()>,
            )>,
        >,
    }

    impl Stub {
        pub fn new(secret: &str) -> Arc<Self> {
            Arc::new(Self {
                secret: secret.into(),
                token_prefix: "tok-".into(),
                ..Self::default()
            })
        }

        pub fn with_token_prefix(secret: &str, prefix: &str) -> Arc<Self> {
            Arc::new(Self {
                secret: secret.into(),
                token_prefix: prefix.into(),
                ..Self::default()
            })
        }

        /// Serves on a free loopback port; returns the base URL.
        pub async fn serve(self: &Arc<Self>) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let app = Router::new().fallback(handle).with_state(Arc::clone(self));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
            *self.server.lock().unwrap() = Some((stop, server));
            format!("http://{addr}")
        }

        /// Stops listening and closes idle connections: later requests are refused.
        pub async fn shut_down(&self) {
            let server = self.server.lock().unwrap().take();
            if let Some((stop, server)) = server {
                let _ = stop.send(());
                server.await.unwrap();
            }
        }

        pub fn script(&self, api: Api, replies: impl IntoIterator<Item = Reply>) {
            self.script
                .lock()
                .unwrap()
                .entry(api.name().to_string())
                .or_default()
                .extend(replies);
        }

        pub fn calls(&self, api: Api) -> u32 {
            self.calls
                .lock()
                .unwrap()
                .get(api.name())
                .copied()
                .unwrap_or(0)
        }

        pub fn total_calls(&self) -> u32 {
            self.calls.lock().unwrap().values().sum()
        }

        pub fn body(&self, api: Api) -> Value {
            self.bodies
                .lock()
                .unwrap()
                .get(api.name())
                .cloned()
                .unwrap_or(Value::Null)
        }

        /// Revokes the current token, as WeCom may do before its expiry (42001 then).
        pub fn expire_token(&self) {
            let old = self.valid_token.lock().unwrap().take();
            *self.expired_token.lock().unwrap() = old;
        }

        pub fn current_token(&self) -> Option<String> {
            self.valid_token.lock().unwrap().clone()
        }
    }

    fn wecom(status: i64, mut body: Value) -> Response {
        body["errcode"] = json!(status);
        body["errmsg"] = json!(if status == 0 { "ok" } else { "error" });
        axum::Json(body).into_response()
    }

    /// A suite's service APIs: get_suite_token with the stub's secret gives
    /// `{prefix}suite`; everything else is refused with an errmsg that echoes every
    /// credential of the request (the client must scrub them).
    fn suite_service(
        stub: &Stub,
        api: Api,
        query: &HashMap<String, String>,
        body: &Value,
    ) -> Response {
        if api == Api::GetSuiteToken && body["suite_secret"] == json!(stub.secret) {
            let token = format!("{}suite", stub.token_prefix);
            return wecom(0, json!({"suite_access_token": token, "expires_in": 7200}));
        }
        let echoed = format!("invalid request {body} from url ?{query:?}");
        axum::Json(json!({"errcode": 40084, "errmsg": echoed})).into_response()
    }

    async fn handle(
        State(stub): State<Arc<Stub>>,
        method: Method,
        uri: Uri,
        body: Bytes,
    ) -> Response {
        let name = uri
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let query: HashMap<String, String> =
            url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        *stub.calls.lock().unwrap().entry(name.clone()).or_default() += 1;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        stub.bodies
            .lock()
            .unwrap()
            .insert(name.clone(), body.clone());
        let Some(api) = Api::from_name(&name) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        if (method == Method::GET) != api.is_get() {
            return wecom(40058, json!({}));
        }
        let token = stub.current_token();
        let service = matches!(
            api,
            Api::GetSuiteToken | Api::GetPermanentCode | Api::GetCorpToken
        );
        if service {
            return suite_service(&stub, api, &query, &body);
        }
        if api != Api::GetToken {
            let given = query.get("access_token");
            match given {
                None => return wecom(41001, json!({})),
                Some(t) if Some(t) == token.as_ref() => {}
                Some(t) if Some(t) == stub.expired_token.lock().unwrap().as_ref() => {
                    return wecom(42001, json!({}));
                }
                Some(_) => return wecom(40014, json!({})),
            }
        }
        let scripted = stub
            .script
            .lock()
            .unwrap()
            .get_mut(&name)
            .and_then(VecDeque::pop_front);
        match scripted {
            Some(Reply::Errcode(code)) => return wecom(code, json!({})),
            Some(Reply::ErrcodeEchoingCredentials(code)) => {
                let echoed = format!(
                    "invalid, token {} secret {} from url ?access_token={}",
                    token.clone().unwrap_or_default(),
                    stub.secret,
                    token.clone().unwrap_or_default()
                );
                return axum::Json(json!({"errcode": code, "errmsg": echoed})).into_response();
            }
            Some(Reply::Status(status)) => {
                return StatusCode::from_u16(status).unwrap().into_response();
            }
            Some(Reply::Garbage) => return "<html>gateway says hi</html>".into_response(),
            Some(Reply::Hang) => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            Some(Reply::Json(value)) => return axum::Json(value).into_response(),
            None => {}
        }
        match api {
            Api::GetSuiteToken | Api::GetPermanentCode | Api::GetCorpToken => {
                suite_service(&stub, api, &query, &body)
            }
            Api::GetToken => {
                if query.get("corpsecret") != Some(&stub.secret) {
                    return wecom(40001, json!({}));
                }
                let n = stub.issued.fetch_add(1, Ordering::SeqCst) + 1;
                let token = format!("{}{n}", stub.token_prefix);
                *stub.valid_token.lock().unwrap() = Some(token.clone());
                wecom(0, json!({"access_token": token, "expires_in": 7200}))
            }
            Api::ListLink => {
                let links = stub.links.lock().unwrap().clone();
                page(&body, &links, "link_id_list", 100, |id| json!(id))
            }
            Api::GetLink => {
                let id = body["link_id"].as_str().unwrap_or_default();
                wecom(
                    0,
                    json!({
                        "link": {"link_id": id, "link_name": format!("name of {id}"),
                                 "url": format!("https://work.weixin.qq.com/ca/{id}"),
                                 "create_time": 1_700_000_000, "skip_verify": false},
                        "range": {"user_list": ["zhangsan"], "department_list": [2]},
                        "priority_option": {"priority_type": 2, "priority_userid_list": ["lisi"]},
                        "some_future_field": {"x": 1}
                    }),
                )
            }
            Api::CreateLink => wecom(
                0,
                json!({"link": {"link_id": "cawnew1", "link_name": body["link_name"],
                                 "url": "https://work.weixin.qq.com/ca/cawnew1",
                                 "create_time": 1_700_000_001}}),
            ),
            Api::UpdateLink | Api::DeleteLink => wecom(0, json!({})),
            Api::Customer => {
                let count = stub.customers.load(Ordering::SeqCst);
                let all: Vec<String> = (0..count).map(|i| format!("wm{i:05}")).collect();
                page(
                    &body,
                    &all,
                    "customer_list",
                    1000,
                    |id| json!({"external_userid": id, "userid": "zhangsan", "chat_status": 1, "state": "chan-a"}),
                )
            }
            Api::Statistic => wecom(
                0,
                json!({"click_link_customer_cnt": 7, "new_customer_cnt": 3}),
            ),
            Api::Quota => wecom(
                0,
                json!({"total": 10, "balance": 990,
                       "quota_list": [{"expire_date": 1_767_196_800, "balance": 990}]}),
            ),
        }
    }

    /// A page of `items` after the opaque cursor `c{index}`.
    fn page(
        body: &Value,
        items: &[String],
        field: &str,
        max: u64,
        render: impl Fn(&str) -> Value,
    ) -> Response {
        let limit = body["limit"].as_u64().unwrap_or(max);
        if limit == 0 || limit > max {
            return wecom(40058, json!({}));
        }
        let start: usize = body["cursor"]
            .as_str()
            .and_then(|c| c.strip_prefix('c'))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let end = (start + limit as usize).min(items.len());
        let list: Vec<Value> = items[start.min(end)..end]
            .iter()
            .map(|i| render(i))
            .collect();
        let next = if end < items.len() {
            format!("c{end}")
        } else {
            String::new()
        };
        wecom(0, json!({ field: list, "next_cursor": next }))
    }
}

use stub::{Reply, Stub};

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(10),
    }
}

/// WeCom's one-minute block after a 45009, shortened for the tests.
const TEST_BLOCK: Duration = Duration::from_secs(2);

fn test_limits() -> wecom_acq::wecom::scheduler::CorpLimits {
    wecom_acq::wecom::scheduler::CorpLimits {
        minute_block: TEST_BLOCK,
        ..Default::default()
    }
}

fn config(base_url: &str) -> ClientConfig {
    ClientConfig {
        base_url: base_url.to_string(),
        requests_per_minute: 60_000,
        retry: fast_retry(),
        request_timeout: Duration::from_secs(5),
        limits: test_limits(),
        ..ClientConfig::new(CORP_ID, SECRET)
    }
}

async fn stub_and_client() -> (Arc<Stub>, WeComClient) {
    let stub = Stub::new(SECRET);
    let base = stub.serve().await;
    let client = WeComClient::new(config(&base)).unwrap();
    (stub, client)
}

fn api_error(error: &WeComError) -> Option<i64> {
    error.errcode()
}

#[tokio::test]
async fn every_api_speaks_the_wire_format() {
    let (stub, client) = stub_and_client().await;
    stub.links
        .lock()
        .unwrap()
        .extend(["caw1".to_string(), "caw2".to_string()]);
    stub.customers.store(2, Ordering::SeqCst);

    let page = client.list_links_page(None, 100).await.unwrap();
    assert_eq!(page.link_id_list, vec!["caw1", "caw2"]);
    assert_eq!(page.next_cursor, "");
    assert_eq!(stub.body(Api::ListLink), json!({"limit": 100}));

    let link = client.get_link("caw1").await.unwrap();
    assert_eq!(link.link_id, "caw1");
    assert_eq!(link.url, "https://work.weixin.qq.com/ca/caw1");
    assert!(!link.skip_verify);
    assert!(link.mark_source, "WeCom's default applies");
    assert_eq!(link.range.department_list, vec![2]);
    assert_eq!(
        link.priority_option.unwrap().priority_userid_list,
        vec!["lisi"]
    );
    assert_eq!(stub.body(Api::GetLink), json!({"link_id": "caw1"}));

    let created = client
        .create_link(&CreateLinkRequest {
            link_name: "spring".into(),
            range: LinkRange {
                user_list: vec!["zhangsan".into()],
                department_list: vec![],
            },
            skip_verify: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(created.link_id, "cawnew1");
    assert_eq!(created.link_name, "spring");
    assert_eq!(
        stub.body(Api::CreateLink),
        json!({"link_name": "spring", "range": {"user_list": ["zhangsan"], "department_list": []}, "skip_verify": true})
    );

    client
        .update_link(&UpdateLinkRequest {
            link_id: "caw1".into(),
            range: Some(LinkRange {
                user_list: vec![],
                department_list: vec![3],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        stub.body(Api::UpdateLink)["range"],
        json!({"user_list": [], "department_list": [3]})
    );

    client.delete_link("caw2").await.unwrap();
    assert_eq!(stub.body(Api::DeleteLink), json!({"link_id": "caw2"}));

    let customers: Vec<_> = client.customers("caw1").try_collect().await.unwrap();
    assert_eq!(customers.len(), 2);
    assert_eq!(customers[0].userid, "zhangsan");
    assert_eq!(customers[0].state, "chan-a");
    assert_eq!(
        stub.body(Api::Customer),
        json!({"link_id": "caw1", "limit": 1000})
    );

    let stats = client
        .statistic("caw1", 1_700_000_000, 1_700_086_400)
        .await
        .unwrap();
    assert_eq!(
        (stats.click_link_customer_cnt, stats.new_customer_cnt),
        (7, 3)
    );
    assert_eq!(
        stub.body(Api::Statistic),
        json!({"link_id": "caw1", "start_time": 1_700_000_000i64, "end_time": 1_700_086_400i64})
    );

    // A8 is a GET: the stub answers 40058 to a POST, so success proves the method.
    let quota = client.quota().await.unwrap();
    assert_eq!((quota.total, quota.balance), (10, 990));
    assert_eq!(quota.quota_list[0].expire_date, 1_767_196_800);

    assert_eq!(stub.calls(Api::GetToken), 1, "one token serves every call");
}

#[tokio::test]
async fn pagination_follows_cursors_across_pages() {
    let (stub, client) = stub_and_client().await;
    let ids: Vec<String> = (0..250).map(|i| format!("caw{i:04}")).collect();
    stub.links.lock().unwrap().extend(ids.clone());
    stub.customers.store(2500, Ordering::SeqCst);

    let listed: Vec<String> = client.list_links().try_collect().await.unwrap();
    assert_eq!(listed, ids);
    assert_eq!(stub.calls(Api::ListLink), 3, "100 + 100 + 50");

    let customers: Vec<_> = client.customers("caw0001").try_collect().await.unwrap();
    assert_eq!(customers.len(), 2500);
    assert_eq!(customers[2499].external_userid, "wm02499");
    assert_eq!(stub.calls(Api::Customer), 3, "1000 + 1000 + 500");
}

#[tokio::test]
async fn a_cursor_that_does_not_advance_ends_the_listing_with_an_error() {
    let (stub, client) = stub_and_client().await;
    let stuck = json!({"errcode": 0, "errmsg": "ok", "link_id_list": ["a"], "next_cursor": "same"});
    stub.script(Api::ListLink, vec![Reply::Json(stuck); 3]);
    let result: Result<Vec<String>, _> = client.list_links().try_collect().await;
    assert!(matches!(
        result,
        Err(WeComError::Pagination {
            api: Api::ListLink,
            ..
        })
    ));
    assert_eq!(stub.calls(Api::ListLink), 2);
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_once_and_the_call_repeated() {
    let (stub, client) = stub_and_client().await;
    client.get_link("caw1").await.unwrap();
    stub.expire_token();
    client.get_link("caw1").await.unwrap();
    assert_eq!(stub.calls(Api::GetToken), 2);
    assert_eq!(stub.calls(Api::GetLink), 3, "ok, 42001, ok");
}

#[tokio::test]
async fn a_token_refused_twice_is_returned_not_retried_forever() {
    let (stub, client) = stub_and_client().await;
    client.get_link("caw1").await.unwrap();
    stub.script(Api::GetLink, [Reply::Errcode(40014), Reply::Errcode(40014)]);
    let error = client.get_link("caw1").await.unwrap_err();
    assert_eq!(api_error(&error), Some(40014));
    assert_eq!(stub.calls(Api::GetLink), 3);
    assert_eq!(stub.calls(Api::GetToken), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_callers_after_expiry_cause_one_gettoken() {
    let (stub, client) = stub_and_client().await;
    client.quota().await.unwrap();
    stub.expire_token();
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.quota().await })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    assert_eq!(
        stub.calls(Api::GetToken),
        2,
        "the first token, then one refresh"
    );
}

#[tokio::test]
async fn system_busy_is_retried_until_it_succeeds() {
    let (stub, client) = stub_and_client().await;
    stub.script(Api::GetLink, [Reply::Errcode(-1), Reply::Errcode(-1)]);
    client.get_link("caw1").await.unwrap();
    assert_eq!(stub.calls(Api::GetLink), 3);
}

#[tokio::test]
async fn frequency_limit_is_honoured_by_backing_off() {
    let (stub, client) = stub_and_client().await;
    client.quota().await.unwrap();
    stub.script(Api::Quota, [Reply::Errcode(45009)]);
    let started = Instant::now();
    client.quota().await.unwrap();
    // The fast policy's caps are 10-50 ms; after a 45009 the API stays closed for WeCom's
    // block (shortened here) and the call waits it out with no request meanwhile.
    assert!(started.elapsed() >= TEST_BLOCK, "{:?}", started.elapsed());
    assert_eq!(stub.calls(Api::Quota), 3);
}

#[tokio::test]
async fn terminal_errors_are_not_retried() {
    let (stub, client) = stub_and_client().await;
    for code in [40058, 48002, 60011, 301002, 99999] {
        stub.script(Api::UpdateLink, [Reply::Errcode(code)]);
        let before = stub.calls(Api::UpdateLink);
        let error = client
            .update_link(&UpdateLinkRequest {
                link_id: "caw1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(api_error(&error), Some(code));
        assert!(matches!(
            error,
            WeComError::Api {
                api: Api::UpdateLink,
                ..
            }
        ));
        assert_eq!(stub.calls(Api::UpdateLink), before + 1, "errcode {code}");
    }
}

#[tokio::test]
async fn retries_end_after_max_attempts() {
    let (stub, client) = stub_and_client().await;
    stub.script(Api::Statistic, vec![Reply::Errcode(-1); 10]);
    let error = client.statistic("caw1", 0, 0).await.unwrap_err();
    match &error {
        WeComError::RetriesExhausted {
            api,
            attempts,
            last,
        } => {
            assert_eq!((*api, *attempts), (Api::Statistic, 4));
            assert_eq!(last.errcode(), Some(-1));
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert!(error.is_retryable());
    assert_eq!(stub.calls(Api::Statistic), 4);
}

#[tokio::test]
async fn a_refused_secret_is_never_retried_and_says_what_to_check() {
    let stub = Stub::new("the-real-secret");
    let base = stub.serve().await;
    let client = WeComClient::new(config(&base)).unwrap();
    let error = client.get_link("caw1").await.unwrap_err();
    assert!(matches!(
        error,
        WeComError::Api {
            api: Api::GetToken,
            errcode: 40001,
            ..
        }
    ));
    let text = error.to_string();
    assert!(
        text.contains("secretRef") && text.contains("corpId"),
        "{text}"
    );
    // A second call in the same minute does not ask WeCom again (IP block after repeats).
    assert!(client.quota().await.is_err());
    assert_eq!(stub.calls(Api::GetToken), 1);
    assert_eq!(stub.calls(Api::GetLink), 0);
}

#[tokio::test]
async fn gettoken_itself_is_retried_when_wecom_is_busy() {
    let (stub, client) = stub_and_client().await;
    stub.script(Api::GetToken, [Reply::Errcode(-1), Reply::Status(502)]);
    client.quota().await.unwrap();
    assert_eq!(stub.calls(Api::GetToken), 3);
}

#[tokio::test]
async fn create_is_not_repeated_when_it_may_have_reached_wecom() {
    let stub = Stub::new(SECRET);
    let base = stub.serve().await;
    let client = WeComClient::new(ClientConfig {
        request_timeout: Duration::from_secs(1),
        ..config(&base)
    })
    .unwrap();
    let request = CreateLinkRequest {
        link_name: "once".into(),
        range: LinkRange {
            user_list: vec!["zhangsan".into()],
            department_list: vec![],
        },
        ..Default::default()
    };

    stub.script(Api::CreateLink, [Reply::Hang]);
    let error = client.create_link(&request).await.unwrap_err();
    assert_eq!(
        error,
        WeComError::Timeout {
            api: Api::CreateLink
        }
    );
    assert_eq!(stub.calls(Api::CreateLink), 1);

    stub.script(Api::CreateLink, [Reply::Status(502)]);
    let error = client.create_link(&request).await.unwrap_err();
    assert_eq!(
        error,
        WeComError::Http {
            api: Api::CreateLink,
            status: 502,
            content_type: "no content type".into(),
        }
    );
    assert_eq!(stub.calls(Api::CreateLink), 2);

    // An errcode answer means WeCom refused it: repeating is safe.
    stub.script(Api::CreateLink, [Reply::Errcode(-1)]);
    assert_eq!(
        client.create_link(&request).await.unwrap().link_id,
        "cawnew1"
    );
    assert_eq!(stub.calls(Api::CreateLink), 4);

    // The idempotent calls are retried after the same failures.
    stub.script(Api::GetLink, [Reply::Hang, Reply::Status(502)]);
    client.get_link("caw1").await.unwrap();
    assert_eq!(stub.calls(Api::GetLink), 3);
}

#[tokio::test]
async fn create_is_retried_when_the_connection_was_never_made() {
    // With the token cached and nothing listening any more, no request can reach WeCom:
    // repeating the create is safe, and the client does until the policy gives up.
    let (stub, client) = stub_and_client().await;
    client.quota().await.unwrap();
    stub.shut_down().await;
    let error = client
        .create_link(&CreateLinkRequest::default())
        .await
        .unwrap_err();
    match error {
        WeComError::RetriesExhausted {
            api: Api::CreateLink,
            attempts: 4,
            last,
        } => assert!(matches!(*last, WeComError::Transport { .. }), "{last:?}"),
        other => panic!("expected the create to be retried, got {other:?}"),
    }
}

#[tokio::test]
async fn http_errors_and_foreign_bodies_are_typed() {
    let (stub, client) = stub_and_client().await;
    stub.script(Api::GetLink, [Reply::Status(404)]);
    assert_eq!(
        client.get_link("caw1").await.unwrap_err(),
        WeComError::Http {
            api: Api::GetLink,
            status: 404,
            content_type: "no content type".into(),
        }
    );
    assert_eq!(stub.calls(Api::GetLink), 1, "a 404 is terminal");

    stub.script(Api::GetLink, [Reply::Garbage]);
    let error = client.get_link("caw1").await.unwrap_err();
    assert!(
        matches!(
            error,
            WeComError::NotJson {
                api: Api::GetLink,
                status: 200,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(stub.calls(Api::GetLink), 2, "a foreign body is terminal");
}

#[tokio::test]
async fn bad_configuration_is_refused_with_a_clear_error() {
    let bad_url = WeComClient::new(ClientConfig {
        base_url: "qyapi.weixin.qq.com".into(),
        ..ClientConfig::new(CORP_ID, SECRET)
    })
    .unwrap_err();
    assert!(
        matches!(bad_url, ClientConfigError::BaseUrl { .. }),
        "{bad_url}"
    );
    let no_secret = WeComClient::new(ClientConfig::new(CORP_ID, "")).unwrap_err();
    assert!(no_secret.to_string().contains("secretRef"), "{no_secret}");
    assert_eq!(
        WeComClient::new(ClientConfig::new("", SECRET)).unwrap_err(),
        ClientConfigError::EmptyCorpId
    );
    let defaults = ClientConfig::new(CORP_ID, SECRET);
    assert_eq!(defaults.base_url, "https://qyapi.weixin.qq.com");
    assert_eq!(defaults.requests_per_minute, 600);
    assert_eq!(defaults.request_timeout, Duration::from_secs(10));
    assert_eq!(defaults.retry, RetryPolicy::default());
}

#[derive(Default)]
struct CountingObserver {
    calls: Mutex<Vec<(Api, String)>>,
    refreshes: Mutex<Vec<bool>>,
}

impl CallObserver for CountingObserver {
    fn on_call(&self, api: Api, outcome: &str, _elapsed: Duration) {
        self.calls.lock().unwrap().push((api, outcome.to_string()));
    }
    fn on_token_refresh(&self, ok: bool) {
        self.refreshes.lock().unwrap().push(ok);
    }
}

#[tokio::test]
async fn the_observer_sees_every_request_and_refresh() {
    let stub = Stub::new(SECRET);
    let base = stub.serve().await;
    let observer = Arc::new(CountingObserver::default());
    let client = WeComClient::new(ClientConfig {
        observer: Some(observer.clone()),
        ..config(&base)
    })
    .unwrap();
    stub.script(Api::GetLink, [Reply::Errcode(-1)]);
    client.get_link("caw1").await.unwrap();
    let calls = observer.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            (Api::GetToken, "0".to_string()),
            (Api::GetLink, "-1".to_string()),
            (Api::GetLink, "0".to_string())
        ]
    );
    assert_eq!(calls.len() as u32, stub.total_calls());
    assert_eq!(*observer.refreshes.lock().unwrap(), vec![true]);
}

#[tokio::test]
async fn the_app_cap_counts_gettoken_and_is_shared_by_clones() {
    use wecom_acq::wecom::scheduler::{Priority, with_priority};
    let stub = Stub::new(SECRET);
    let base = stub.serve().await;
    // 7 requests a minute, over all APIs of the app.
    let client = WeComClient::new(ClientConfig {
        requests_per_minute: 7,
        ..config(&base)
    })
    .unwrap();
    let other = client.clone();
    for _ in 0..3 {
        client.quota().await.unwrap();
        other.quota().await.unwrap();
    }
    // gettoken + 6 calls = 7 requests: the minute is used up. A poll is not sent, and
    // says when the budget has room again.
    assert_eq!(stub.total_calls(), 7);
    let err = with_priority(Priority::Poll, other.quota())
        .await
        .unwrap_err();
    let retry_after = err.retry_after().expect("deferred");
    assert!(
        retry_after > Duration::from_secs(55) && retry_after <= Duration::from_secs(61),
        "{err}: {retry_after:?}"
    );
    assert!(err.certainly_not_acted_on());
    assert_eq!(stub.total_calls(), 7, "nothing was sent");
}

// ----- redaction -----

/// A port nothing listens on (bound, then released).
async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn neither_secret_nor_token_appears_in_errors_or_logs() {
    const KNOWN_SECRET: &str = "KnownSecretValue-7f3a9c";
    const TOKEN_PREFIX: &str = "KnownAccessToken-51be0d-";
    let (captured, _default) = Captured::install(tracing::Level::TRACE);
    // reqwest and hyper log through `log`; route it into the same capture.
    let _ = tracing_log::LogTracer::init();

    let mut errors: Vec<WeComError> = Vec::new();

    // Connection refused on gettoken: the URL carries corpsecret.
    let refused = closed_port_url().await;
    let client = WeComClient::new(ClientConfig {
        secret: Secret::new(KNOWN_SECRET),
        ..config(&refused)
    })
    .unwrap();
    errors.push(client.quota().await.unwrap_err());

    // A stub that issues a known token, then fails in every way after it.
    let stub = Stub::with_token_prefix(KNOWN_SECRET, TOKEN_PREFIX);
    let base = stub.serve().await;
    let client = WeComClient::new(ClientConfig {
        secret: Secret::new(KNOWN_SECRET),
        request_timeout: Duration::from_secs(1),
        retry: RetryPolicy::never(),
        ..config(&base)
    })
    .unwrap();
    client.quota().await.unwrap();
    let token = stub.current_token().unwrap();
    assert!(token.starts_with(TOKEN_PREFIX));
    stub.script(Api::Quota, [Reply::Status(500)]);
    errors.push(client.quota().await.unwrap_err());
    stub.script(Api::Quota, [Reply::Garbage]);
    errors.push(client.quota().await.unwrap_err());
    stub.script(Api::Quota, [Reply::Hang]);
    errors.push(client.quota().await.unwrap_err());
    stub.script(Api::Quota, [Reply::ErrcodeEchoingCredentials(40058)]);
    errors.push(client.quota().await.unwrap_err());

    // A suite on the same stub: every refusal echoes the suite secret, the ticket, the
    // AuthCode, the permanent code and the suite token it was sent.
    const TICKET: &str = "KnownSuiteTicket-0c4d81";
    const AUTH_CODE: &str = "KnownAuthCode-93be27";
    const PERMANENT_CODE: &str = "KnownPermanentCode-2a7f55";
    const WRONG_SUITE_SECRET: &str = "KnownWrongSuiteSecret-6e01";
    let tickets = Arc::new(MemoryTicket::default());
    tickets.set(Secret::new(TICKET));
    let suite_config = SuiteConfig {
        base_url: base.clone(),
        suite_id: "wwsuite".into(),
        suite_secret: Secret::new(KNOWN_SECRET),
        request_timeout: Duration::from_secs(1),
    };
    let suite = SuiteClient::new(suite_config.clone(), tickets.clone()).unwrap();
    errors.push(
        suite
            .permanent_code(&Secret::new(AUTH_CODE))
            .await
            .unwrap_err(),
    );
    errors.push(
        suite
            .corp_token("wwcorp", &Secret::new(PERMANENT_CODE))
            .await
            .unwrap_err(),
    );
    let wrong = SuiteConfig {
        suite_secret: Secret::new(WRONG_SUITE_SECRET),
        ..suite_config
    };
    let wrong = SuiteClient::new(wrong, tickets).unwrap();
    errors.push(
        wrong
            .corp_token("wwcorp", &Secret::new(PERMANENT_CODE))
            .await
            .unwrap_err(),
    );

    // Connection refused with the token in the URL.
    stub.shut_down().await;
    errors.push(client.quota().await.unwrap_err());

    let kinds: Vec<String> = errors.iter().map(WeComError::metric_label).collect();
    assert_eq!(
        kinds,
        vec![
            "transport",
            "http_500",
            "not_json",
            "timeout",
            "40058",
            "40084",
            "40084",
            "40084",
            "transport"
        ]
    );
    for error in &errors {
        for text in [error.to_string(), format!("{error:?}")] {
            for secret in [
                KNOWN_SECRET,
                &token,
                TOKEN_PREFIX,
                TICKET,
                AUTH_CODE,
                PERMANENT_CODE,
                WRONG_SUITE_SECRET,
            ] {
                assert!(!text.contains(secret), "{secret} leaked in: {text}");
            }
        }
    }
    for transport in [&errors[0], &errors[8]] {
        let text = transport.to_string();
        assert!(text.contains("127.0.0.1"), "names the host: {text}");
    }

    let debug_config = format!("{:?}", config(&base));
    assert!(!debug_config.contains(SECRET), "{debug_config}");
    assert_eq!(Secret::new(KNOWN_SECRET).to_string(), "<redacted>");

    let logs = captured.text();
    assert!(logs.contains("WeCom request"), "the capture works: {logs}");
    for secret in [
        KNOWN_SECRET,
        TOKEN_PREFIX,
        TICKET,
        AUTH_CODE,
        PERMANENT_CODE,
        WRONG_SUITE_SECRET,
    ] {
        assert!(
            !logs.contains(secret),
            "{secret} leaked in the logs:\n{logs}"
        );
    }
}

// ----- against the WeCom simulator -----

mod sim {
    use super::*;
    use wecom_acq::sim::{self, SimConfig, SimHandle};

    /// The simulator on a free loopback port, a client for it, and a plain HTTP client
    /// for its admin API.
    pub struct World {
        pub sim: SimHandle,
        pub client: WeComClient,
        admin: reqwest::Client,
    }

    impl World {
        pub async fn start() -> Self {
            let sim = sim::spawn(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let client = WeComClient::new(ClientConfig {
                base_url: sim.base_url(),
                requests_per_minute: 60_000,
                retry: fast_retry(),
                request_timeout: Duration::from_secs(5),
                limits: super::test_limits(),
                ..ClientConfig::new(sim::DEFAULT_CORP_ID, sim::DEFAULT_SECRET)
            })
            .unwrap();
            Self {
                sim,
                client,
                admin: reqwest::Client::new(),
            }
        }

        pub async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
            let response = self
                .admin
                .request(method, format!("{}/_sim/{path}", self.sim.base_url()))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "/_sim/{path}: {response:?}");
            response.json().await.unwrap_or(Value::Null)
        }

        /// Calls the simulator saw for one API (its last path segment).
        pub async fn calls(&self, api: Api) -> u64 {
            let calls = self.admin(reqwest::Method::GET, "calls", Value::Null).await;
            calls[api.name()].as_u64().unwrap_or(0)
        }

        pub async fn reset_calls(&self) {
            self.admin(reqwest::Method::DELETE, "calls", Value::Null)
                .await;
        }

        pub async fn fault(&self, api: Api, errcode: i64, times: u32) {
            self.admin(
                reqwest::Method::POST,
                "faults",
                json!({"api": api.name(), "errcode": errcode, "times": times}),
            )
            .await;
        }

        pub async fn expire_tokens(&self) {
            self.admin(reqwest::Method::POST, "tokens/expire", Value::Null)
                .await;
        }

        pub async fn create(&self, name: &str) -> String {
            self.client
                .create_link(&link_request(name, &["zhangsan"], &[]))
                .await
                .unwrap()
                .link_id
        }
    }

    pub fn link_request(name: &str, users: &[&str], departments: &[u64]) -> CreateLinkRequest {
        CreateLinkRequest {
            link_name: name.into(),
            range: LinkRange {
                user_list: users.iter().map(|u| u.to_string()).collect(),
                department_list: departments.to_vec(),
            },
            ..Default::default()
        }
    }

    pub fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }
}

use sim::{World, link_request};

#[tokio::test]
async fn sim_every_api_happy_path() {
    let world = World::start().await;
    let client = &world.client;

    // A3
    let created = client
        .create_link(&link_request(
            "spring campaign",
            &["zhangsan", "lisi"],
            &[2],
        ))
        .await
        .unwrap();
    assert!(!created.link_id.is_empty());
    assert!(created.url.starts_with("http"), "{created:?}");
    // A2
    let link = client.get_link(&created.link_id).await.unwrap();
    assert_eq!(link.link_name, "spring campaign");
    assert_eq!(link.range.user_list, vec!["zhangsan", "lisi"]);
    assert_eq!(link.range.department_list, vec![2]);
    // A4 replaces the whole range.
    client
        .update_link(&UpdateLinkRequest {
            link_id: created.link_id.clone(),
            link_name: Some("autumn".into()),
            range: Some(LinkRange {
                user_list: vec!["wangwu".into()],
                department_list: vec![],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let link = client.get_link(&created.link_id).await.unwrap();
    assert_eq!(link.link_name, "autumn");
    assert_eq!(link.range.user_list, vec!["wangwu"]);
    assert!(link.range.department_list.is_empty());
    // A1
    let page = client.list_links_page(None, 100).await.unwrap();
    assert_eq!(page.link_id_list, vec![created.link_id.clone()]);
    // A6, with customers added as if through the link.
    world
        .admin(
            reqwest::Method::POST,
            &format!("links/{}/customers", created.link_id),
            json!({"count": 3, "state": "chan-a"}),
        )
        .await;
    let customers: Vec<_> = client
        .customers(&created.link_id)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(customers.len(), 3);
    assert!(customers.iter().all(|c| c.state == "chan-a"));
    // A7 over today.
    let now = sim::now();
    let stats = client
        .statistic(&created.link_id, now - 86_400, now)
        .await
        .unwrap();
    assert_eq!(stats.new_customer_cnt, 3);
    // A8: the three customers used quota.
    let quota = client.quota().await.unwrap();
    assert_eq!(quota.total, 3);
    assert!(quota.balance > 0 && !quota.quota_list.is_empty());
    // A5
    client.delete_link(&created.link_id).await.unwrap();
    let listed: Vec<String> = client.list_links().try_collect().await.unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    assert_eq!(world.calls(Api::GetToken).await, 1);
}

#[tokio::test]
async fn sim_token_expiry_mid_run_costs_exactly_one_gettoken() {
    let world = World::start().await;
    world.client.quota().await.unwrap();
    world.expire_tokens().await;
    world.client.quota().await.unwrap();
    assert_eq!(world.calls(Api::GetToken).await, 2);
    assert_eq!(world.calls(Api::Quota).await, 3, "ok, 42001, ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_fifty_concurrent_callers_after_expiry_cause_one_gettoken() {
    let world = World::start().await;
    world.client.quota().await.unwrap();
    world.expire_tokens().await;
    world.reset_calls().await;
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let client = world.client.clone();
            tokio::spawn(async move { client.quota().await })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    assert_eq!(world.calls(Api::GetToken).await, 1);
}

#[tokio::test]
async fn sim_system_busy_is_recovered_by_retry() {
    let world = World::start().await;
    world.fault(Api::CreateLink, -1, 2).await;
    world.create("busy at first").await;
    assert_eq!(world.calls(Api::CreateLink).await, 3);
    let listed: Vec<String> = world.client.list_links().try_collect().await.unwrap();
    assert_eq!(listed.len(), 1, "retries made exactly one link");
}

#[tokio::test]
async fn sim_frequency_limit_is_honoured_by_backing_off() {
    let world = World::start().await;
    world.client.quota().await.unwrap();
    world.fault(Api::Quota, 45009, 1).await;
    let started = Instant::now();
    world.client.quota().await.unwrap();
    assert!(started.elapsed() >= TEST_BLOCK, "{:?}", started.elapsed());
    assert_eq!(world.calls(Api::Quota).await, 3);
}

#[tokio::test]
async fn sim_terminal_40058_is_not_retried() {
    let world = World::start().await;
    let too_long = "x".repeat(31);
    let error = world
        .client
        .create_link(&link_request(&too_long, &["zhangsan"], &[]))
        .await
        .unwrap_err();
    assert_eq!(error.errcode(), Some(40058));
    assert!(!error.is_retryable());
    assert_eq!(world.calls(Api::CreateLink).await, 1);
}

#[tokio::test]
async fn sim_more_than_500_people_via_departments_is_refused() {
    let world = World::start().await;
    // Department 5 holds 300 people and its sub-department 6 another 250: 550 in all.
    let people = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:03}")).collect()
    };
    world
        .admin(
            reqwest::Method::PUT,
            "org",
            json!({"departments": [
                {"id": 5, "parent_id": 1, "users": people("floor-a-", 300)},
                {"id": 6, "parent_id": 5, "users": people("floor-b-", 250)}
            ], "users": ["zhangsan"]}),
        )
        .await;
    let error = world
        .client
        .create_link(&link_request("whole floor", &[], &[5]))
        .await
        .unwrap_err();
    assert_eq!(error.errcode(), Some(40058), "{error}");
    assert_eq!(
        world.calls(Api::CreateLink).await,
        1,
        "refusals are not retried"
    );
    // The sub-department alone (250) and a few more named users are fine.
    world
        .client
        .create_link(&link_request("half floor", &["zhangsan"], &[6]))
        .await
        .unwrap();
}

#[tokio::test]
async fn sim_statistics_over_31_days_are_refused() {
    let world = World::start().await;
    let link_id = world.create("stats").await;
    let end = sim::now();
    let ok = world
        .client
        .statistic(&link_id, end - 30 * 86_400, end)
        .await;
    assert!(ok.is_ok(), "30 days is allowed: {ok:?}");
    let error = world
        .client
        .statistic(&link_id, end - 31 * 86_400, end)
        .await
        .unwrap_err();
    assert_eq!(error.errcode(), Some(40058));
    assert_eq!(
        world.calls(Api::Statistic).await,
        2,
        "the refusal was not retried"
    );
}

#[tokio::test]
async fn sim_pagination_survives_inserts_between_pages() {
    let world = World::start().await;
    let mut original = Vec::new();
    for i in 0..250 {
        original.push(world.create(&format!("link {i}")).await);
    }
    let first = world.client.list_links_page(None, 100).await.unwrap();
    assert_eq!(first.link_id_list.len(), 100);
    let mut seen = first.link_id_list.clone();
    let mut cursor = first.next_cursor;
    let mut inserted = Vec::new();
    while !cursor.is_empty() {
        // Links made between pages must not make the listing repeat or skip old ones.
        for i in 0..3 {
            inserted.push(world.create(&format!("late {}-{i}", seen.len())).await);
        }
        let page = world
            .client
            .list_links_page(Some(&cursor), 100)
            .await
            .unwrap();
        seen.extend(page.link_id_list);
        cursor = page.next_cursor;
    }
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no link listed twice");
    for id in &original {
        assert!(unique.contains(id), "{id} was skipped");
    }
    // The stream walks every page of the final state.
    let all: Vec<String> = world.client.list_links().try_collect().await.unwrap();
    assert_eq!(all.len(), original.len() + inserted.len());
}

#[tokio::test]
async fn sim_customers_stream_over_several_pages() {
    let world = World::start().await;
    let link_id = world.create("popular").await;
    // The built-in quota (1000) is too small for three pages of customers.
    world
        .admin(
            reqwest::Method::PUT,
            "quota",
            json!({"batches": [{"balance": 5000, "expire_date": sim::now() + 365 * 86_400}]}),
        )
        .await;
    world
        .admin(
            reqwest::Method::POST,
            &format!("links/{link_id}/customers"),
            json!({"count": 2100, "state": "chan-b"}),
        )
        .await;
    world.reset_calls().await;
    let customers: Vec<_> = world
        .client
        .customers(&link_id)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(customers.len(), 2100);
    let unique: std::collections::HashSet<_> = customers
        .iter()
        .map(|c| c.external_userid.clone())
        .collect();
    assert_eq!(unique.len(), 2100);
    assert_eq!(world.calls(Api::Customer).await, 3);
}

/// A create that cannot leave within its deadline (the request budget is used up) is not
/// sent at all, and says so.
#[tokio::test]
async fn create_past_its_send_deadline_is_not_sent() {
    let sim = wecom_acq::sim::spawn(
        wecom_acq::sim::SimConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let mut config = wecom_acq::wecom::client::ClientConfig::new(
        wecom_acq::sim::DEFAULT_CORP_ID,
        wecom_acq::sim::DEFAULT_SECRET,
    );
    config.base_url = sim.base_url();
    // One request a minute: gettoken takes it, so A3 would wait about a minute.
    config.requests_per_minute = 1;
    let client = wecom_acq::wecom::client::WeComClient::new(config).unwrap();
    let request = wecom_acq::wecom::types::CreateLinkRequest {
        link_name: "Late".into(),
        range: wecom_acq::wecom::types::LinkRange {
            user_list: vec!["zhangsan".into()],
            department_list: vec![],
        },
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(200);
    let err = client
        .create_link_sent_by(&request, deadline)
        .await
        .unwrap_err();
    assert!(
        matches!(err, wecom_acq::wecom::WeComError::NotSent { .. }),
        "{err:?}"
    );
    assert!(err.certainly_not_acted_on());
    let calls: serde_json::Value = reqwest::get(format!("{}/_sim/calls", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls["create_link"].as_u64().unwrap_or(0), 0, "{calls}");
}
