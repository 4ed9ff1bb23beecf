//! Callback endpoint benchmarks (issue 4); run with `cargo bench --bench callback_http`.
//!
//! 1. In process, one core: verify + decrypt + parse of a sealed `delete_link` (what every
//!    POST costs beyond HTTP), and the same with the `Encrypt` extraction of the body.
//! 2. Over loopback HTTP/1.1 with keep-alive: the endpoint on a current-thread runtime (one
//!    core) with its event consumer on the same thread; a load generator on another thread
//!    (hyper client keep-alive connections, 32 or 64 in flight, pre-sealed distinct
//!    `add_external_contact` events, so none is answered from the replay memory). Reported:
//!    accepted events/s, 503s, p50/p99/max answer latency. Three consumers:
//!    - `worker, Kubernetes 2 ms`: shaped like the real worker: counters inline, customer
//!      bumps tallied per link and written by a separate task every 2 s, each write taking
//!      the simulated API latency;
//!    - `worker, Kubernetes 1 s`: the same with a very slow API;
//!    - `naive, Kubernetes 1 s per event`: a consumer that waits on the API for every
//!      event; the queue fills and the endpoint answers 503 at once (WeCom retries), to show
//!      the answer still does not wait.
//!
//!    A calibration run first: the same server answering 200 without the endpoint, the
//!    ceiling the transport (kernel TCP, hyper, axum) leaves on this machine.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{mpsc, oneshot};
use wecom_acq::callback::worker::CustomerTally;
use wecom_acq::callback::{AppCallback, EndpointSettings, InboundEvent, StaticDirectory, router};
use wecom_acq::metrics::{ConversionLabels, Metrics};
use wecom_acq::wecom::crypto::{CallbackCrypto, extract_encrypt, post_body};
use wecom_acq::wecom::event::{
    CallbackEvent, ChangeType, Envelope, EventFamily, parse_event, render_event,
};

const TOKEN: &str = "QDG6eK";
const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const CORP: &str = "ww1234567890abcdef";
const PATH: &str = "/callback/bench/wecom";
const QUEUE: usize = 10_000;
const LINKS: usize = 100;

fn crypto() -> CallbackCrypto {
    CallbackCrypto::new(TOKEN, AES_KEY, CORP).expect("the benchmark's callback settings are valid")
}

fn event(change_type: ChangeType, i: usize) -> CallbackEvent {
    CallbackEvent {
        envelope: Envelope::SelfBuilt,
        corp_id: CORP.to_string(),
        suite_id: None,
        family: if change_type == ChangeType::AddExternalContact {
            EventFamily::ChangeExternalContact
        } else {
            EventFamily::CustomerAcquisition
        },
        change_type,
        created_at: 1_700_000_000,
        link_id: Some(format!("cawbench{:010}", i % LINKS)),
        state: Some(format!("chan-{}", i % 4)),
        user_id: Some("zhangsan".to_string()),
        external_user_id: Some(format!("wmbench{i:024}")),
        expire_time: None,
        expire_quota_num: None,
        welcome_code: None,
        chat_key: None,
    }
}

/// Runs `one` for about 2 s on this thread and prints the rate.
fn measure(name: &str, mut one: impl FnMut()) {
    const BATCH: u64 = 1_000;
    for _ in 0..BATCH {
        one();
    }
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        for _ in 0..BATCH {
            one();
        }
        done += BATCH;
    }
    let elapsed = start.elapsed();
    println!(
        "{name}: {:.0} events/s, {:.0} ns/event",
        done as f64 / elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / done as f64
    );
}

fn in_process() {
    let crypto = crypto();
    let xml = render_event(&CallbackEvent {
        state: None,
        user_id: None,
        external_user_id: None,
        ..event(ChangeType::DeleteLink, 7)
    });
    let sealed = crypto.seal(&xml, "1700000000", "1372623149");
    let body = post_body(CORP, "1000002", &sealed.encrypt);
    println!(
        "delete_link: {} bytes of XML, {} bytes of ciphertext, {} bytes of body",
        xml.len(),
        sealed.encrypt.len(),
        body.len()
    );
    measure(
        "in process: verify+decrypt+parse_event (delete_link)",
        || {
            let plain = crypto
                .decrypt_message(
                    black_box(&sealed.msg_signature),
                    black_box(&sealed.timestamp),
                    black_box(&sealed.nonce),
                    black_box(&sealed.encrypt),
                )
                .expect("the sealed event verifies");
            black_box(parse_event(&plain).expect("the sealed event parses"));
        },
    );
    measure(
        "in process: extract_encrypt+verify+decrypt+parse_event (whole POST body)",
        || {
            let encrypt = extract_encrypt(black_box(&body)).expect("the body has Encrypt");
            let plain = crypto
                .decrypt_message(
                    &sealed.msg_signature,
                    &sealed.timestamp,
                    &sealed.nonce,
                    &encrypt,
                )
                .expect("the sealed event verifies");
            black_box(parse_event(&plain).expect("the sealed event parses"));
        },
    );
}

/// One pre-sealed POST.
struct Prepared {
    path_and_query: String,
    body: Bytes,
}

fn prepare(count: usize) -> Vec<Prepared> {
    let crypto = crypto();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_string();
    (0..count)
        .map(|i| {
            let xml = render_event(&event(ChangeType::AddExternalContact, i));
            let sealed = crypto.seal(&xml, &timestamp, &format!("{}", 1_000_000_000 + i));
            Prepared {
                path_and_query: format!(
                    "{PATH}?msg_signature={}&timestamp={}&nonce={}",
                    sealed.msg_signature, sealed.timestamp, sealed.nonce
                ),
                body: Bytes::from(post_body(CORP, "1000002", &sealed.encrypt)),
            }
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Consumer {
    /// No endpoint at all: the same route answers 200 at once. The transport's ceiling on
    /// this machine, for calibration.
    NoEndpoint,
    /// Counters inline, coalesced per-link writes every 2 s, each write `api` long.
    Worker { api: Duration },
    /// Waits `api` for every event.
    Naive { api: Duration },
}

/// The endpoint and its consumer on one current-thread runtime, on its own thread.
fn start_server(
    consumer: Consumer,
) -> (SocketAddr, oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound address");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        runtime.block_on(async move {
            listener
                .set_nonblocking(true)
                .expect("non-blocking listener");
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let metrics = Metrics::new();
            let directory = StaticDirectory::new().with_app(
                "bench",
                "wecom",
                AppCallback {
                    crypto: crypto(),
                    corp_id: CORP.to_string(),
                    third_party: false,
                },
            );
            let (tx, rx) = mpsc::channel::<InboundEvent>(QUEUE);
            let consuming = tokio::spawn(consume(consumer, rx, metrics.clone()));
            let app = match consumer {
                Consumer::NoEndpoint => axum::Router::new().route(
                    PATH,
                    axum::routing::post(|_body: Bytes| async { http::StatusCode::OK }),
                ),
                _ => router(directory, tx, &metrics, EndpointSettings::default()),
            };
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await;
            consuming.abort();
        });
    });
    (addr, stop_tx, thread)
}

async fn consume(consumer: Consumer, mut rx: mpsc::Receiver<InboundEvent>, metrics: Arc<Metrics>) {
    match consumer {
        Consumer::NoEndpoint => while rx.recv().await.is_some() {},
        Consumer::Naive { api } => {
            while rx.recv().await.is_some() {
                tokio::time::sleep(api).await;
            }
        }
        Consumer::Worker { api } => {
            let mut tally = CustomerTally::default();
            let mut flush = tokio::time::interval(Duration::from_secs(2));
            let mut writing: Option<tokio::task::JoinHandle<()>> = None;
            loop {
                tokio::select! {
                    inbound = rx.recv() => {
                        let Some(inbound) = inbound else { return };
                        let event = &inbound.event;
                        let channel = event.state.clone().unwrap_or_default();
                        let link_id = event.link_id.clone().unwrap_or_default();
                        metrics.conversions.get_or_create(&ConversionLabels {
                            namespace: inbound.namespace.clone(),
                            app: inbound.app.clone(),
                            link_id: link_id.clone(),
                            channel: channel.clone(),
                            change_type: event.change_type.as_str().to_string(),
                        }).inc();
                        tally.add(ObjectRef::new(&link_id).within(&inbound.namespace), &link_id, wecom_acq::reconcile::context::customer_key(event.external_user_id.as_deref().unwrap_or_default(), event.user_id.as_deref().unwrap_or_default()), &channel);
                    }
                    _ = flush.tick() => {
                        if writing.as_ref().is_none_or(|w| w.is_finished()) && !tally.is_empty() {
                            let batch = tally.take();
                            writing = Some(tokio::spawn(async move {
                                futures::stream::iter(batch)
                                    .for_each_concurrent(8, |_| tokio::time::sleep(api))
                                    .await;
                            }));
                        }
                    }
                }
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    accepted: u64,
    unavailable: u64,
    other: u64,
    latencies_us: Vec<u32>,
}

/// Sends every prepared request once over `connections` keep-alive connections from a
/// current-thread runtime on this thread.
fn load(addr: SocketAddr, requests: Arc<Vec<Prepared>>, connections: usize) -> (Tally, Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async move {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (next, requests) = (next.clone(), requests.clone());
            tasks.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let _ = stream.set_nodelay(true);
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .expect("HTTP/1.1 handshake");
                tokio::spawn(connection);
                let mut tally = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(prepared) = requests.get(i) else {
                        break;
                    };
                    let request = http::Request::post(prepared.path_and_query.as_str())
                        .header(http::header::HOST, "bench")
                        .header(http::header::CONTENT_TYPE, "text/xml")
                        .body(Full::new(prepared.body.clone()))
                        .expect("a valid request");
                    let sent = Instant::now();
                    let response = sender.send_request(request).await.expect("an answer");
                    let status = response.status();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .expect("a body")
                        .to_bytes();
                    tally
                        .latencies_us
                        .push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    match status.as_u16() {
                        200 if body.is_empty() => tally.accepted += 1,
                        503 => tally.unavailable += 1,
                        _ => tally.other += 1,
                    }
                }
                tally
            }));
        }
        let mut total = Tally::default();
        for task in tasks {
            let part = task.await.expect("a load task");
            total.accepted += part.accepted;
            total.unavailable += part.unavailable;
            total.other += part.other;
            total.latencies_us.extend(part.latencies_us);
        }
        (total, started.elapsed())
    })
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn http_run(name: &str, consumer: Consumer, requests: Arc<Vec<Prepared>>, connections: usize) {
    let (addr, stop, server) = start_server(consumer);
    let (mut tally, elapsed) = load(addr, requests, connections);
    let _ = stop.send(());
    let _ = server.join();
    tally.latencies_us.sort_unstable();
    let seconds = elapsed.as_secs_f64();
    println!(
        "HTTP {name}, {connections} connections: {:.0} accepted events/s ({} accepted, {} answered 503, {} other, {:.0} answers/s), latency p50 {} us, p99 {} us, max {} us",
        tally.accepted as f64 / seconds,
        tally.accepted,
        tally.unavailable,
        tally.other,
        (tally.accepted + tally.unavailable + tally.other) as f64 / seconds,
        percentile(&tally.latencies_us, 0.50),
        percentile(&tally.latencies_us, 0.99),
        tally.latencies_us.last().copied().unwrap_or(0),
    );
}

fn main() {
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "cores: {}, load average: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load_average
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    in_process();

    // CALLBACK_BENCH_EVENTS shrinks the run for a quick smoke test of an unoptimised build.
    let count: usize = std::env::var("CALLBACK_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let started = Instant::now();
    let requests = Arc::new(prepare(count));
    println!(
        "sealed {count} distinct add_external_contact callbacks in {} ms",
        started.elapsed().as_millis()
    );
    // Each run has its own server, so its replay memory has seen none of them. In a closed
    // loop the latency grows with the connections in flight (Little's law), so the
    // fast-API run is repeated with twice as many.
    http_run(
        "calibration: no endpoint, 200 at once",
        Consumer::NoEndpoint,
        requests.clone(),
        32,
    );
    let fast = Consumer::Worker {
        api: Duration::from_millis(2),
    };
    let slow = Consumer::Worker {
        api: Duration::from_secs(1),
    };
    http_run("worker, Kubernetes 2 ms", fast, requests.clone(), 32);
    http_run("worker, Kubernetes 1 s", slow, requests.clone(), 32);
    http_run("worker, Kubernetes 2 ms", fast, requests.clone(), 64);
    let fewer = Arc::new(prepare(count / 4));
    http_run(
        "naive, Kubernetes 1 s per event",
        Consumer::Naive {
            api: Duration::from_secs(1),
        },
        fewer,
        32,
    );
}
