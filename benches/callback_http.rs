//! Callback endpoint benchmarks (issue 4); run with `cargo bench --bench callback_http`.
//! `wrk` (Debian: `apt-get install wrk`) is used when installed; `CALLBACK_BENCH_ONLY`
//! (`in-process,handler,wrk,hyper,naive`) picks parts; `CALLBACK_BENCH_WRK_RUNS`
//! (`calibration,worker,endpoint`) picks wrk runs by name, for profiling one kind.
//!
//! 1. In process, one core: verify + decrypt + parse of a sealed `delete_link` (what every
//!    POST costs beyond HTTP), the same with the `Encrypt` extraction of the body, and the
//!    endpoint's whole request handler (path, query, body, checks, replay memory, hand-off) on
//!    distinct events, without sockets; the parts one by one; and the replay memory filled
//!    to a generation's default capacity (mean and slowest insert).
//! 2. Over loopback HTTP/1.1 with keep-alive, distinct pre-sealed `add_external_contact`
//!    events (none is answered from the replay memory): the endpoint and its event consumer
//!    on one current-thread runtime, on one thread pinned to CPU 0; the load generator
//!    pinned to CPU 1, so the server has exactly one core. Reported: accepted events/s
//!    (counted by the endpoint), 503s, answer latency, and how busy CPU 0 was (with the
//!    accepted events per busy second, the figure that does not depend on the load
//!    generator keeping up). Load generators:
//!    - `wrk` with `benches/wrk_post.lua` (one thread, 32 or 64 connections, 4 s), the
//!      figure of record;
//!    - an in-process hyper client (32 connections), where wrk is not installed.
//!
//!    Consumers:
//!    - `worker, Kubernetes 2 ms`: the real worker's per-event code (counters, link index,
//!      customer tally) inline, the tallied bumps written by a separate task every 2 s,
//!      each write taking the simulated API latency;
//!    - `worker, Kubernetes 1 s`: the same with a very slow API;
//!    - `endpoint, events dropped after the queue`: the endpoint alone;
//!    - `naive, Kubernetes 1 s per event`: a consumer that waits on the API for every
//!      event; the queue fills and the endpoint answers 503 at once (WeCom retries), to show
//!      the answer still does not wait.
//!
//!    A calibration run first: the same server answering 200 without the endpoint, the
//!    ceiling the transport (kernel TCP, hyper) leaves on this machine.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use wecom_acq::api::AcquisitionLink;
use wecom_acq::callback::replay::ReplayGuard;
use wecom_acq::callback::worker::{CustomerTally, EventMeter, LinkIndex};
use wecom_acq::callback::{
    AppCallback, CallbackEndpoint, ConnectionLimits, DEFAULT_HEADER_READ_TIMEOUT, EndpointSettings,
    InboundEvent, StaticDirectory, serve_endpoint, serve_http1,
};
use wecom_acq::metrics::Metrics;
use wecom_acq::metrics::bounded_channel;
use wecom_acq::wecom::crypto::{
    CallbackCrypto, extract_encrypt, extract_encrypt_borrowed, post_body,
};
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

/// The one app the benchmark's callbacks are for: `/callback/bench/wecom`.
fn directory() -> StaticDirectory {
    StaticDirectory::new().with_app(
        "bench",
        "wecom",
        AppCallback {
            crypto: crypto(),
            corp_id: CORP.to_string(),
            third_party: false,
        },
    )
}

fn link_id(i: usize) -> String {
    format!("cawbench{:010}", i % LINKS)
}

/// The AcquisitionLinks holding the benchmark's link ids, for the worker's link index.
fn bench_links() -> Vec<Arc<AcquisitionLink>> {
    (0..LINKS)
        .map(|i| {
            let link: AcquisitionLink = serde_json::from_value(serde_json::json!({
                "apiVersion": "acquisition.wecom.dev/v1alpha1",
                "kind": "AcquisitionLink",
                "metadata": {"name": format!("link-{i}"), "namespace": "bench"},
                "spec": {
                    "appRef": {"name": "wecom"},
                    "linkName": format!("bench {i}"),
                    "range": {"userList": ["zhangsan"]},
                },
                "status": {"linkId": link_id(i)},
            }))
            .expect("a valid AcquisitionLink");
            Arc::new(link)
        })
        .collect()
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
        link_id: Some(link_id(i)),
        state: Some(format!("chan-{}", i % 4)),
        user_id: Some("zhangsan".to_string()),
        external_user_id: Some(format!("wmbench{i:024}")),
        expire_time: None,
        expire_quota_num: None,
        welcome_code: None,
        chat_key: None,
    }
}

/// The server runs on this CPU alone, the load generator on the other.
const SERVER_CPU: usize = 0;
const LOAD_CPU: usize = 1;

/// Keeps the calling thread on `cpu`, so "the server on one core" is exactly that and the
/// scheduler does not move the server and its load generator onto the same core.
fn pin_to_cpu(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(err) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("could not pin to CPU {cpu} ({err}); running unpinned");
    }
}

/// Jiffies one CPU spent busy (user, nice, system, irq, softirq) and stolen by the
/// hypervisor so far, from `/proc/stat`.
#[derive(Debug, Clone, Copy)]
struct CpuTicks {
    busy: u64,
    steal: u64,
}

/// `USER_HZ`, the unit of `/proc/stat`: 100 on every Linux architecture this runs on.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

fn cpu_ticks(cpu: usize) -> Option<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name.as_str()))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    Some(CpuTicks {
        busy: field(0) + field(1) + field(2) + field(5) + field(6),
        steal: field(7),
    })
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
    // The parts, for where the time goes.
    let add = render_event(&event(ChangeType::AddExternalContact, 7));
    measure(
        "in process, part: parse_event (add_external_contact)",
        || {
            black_box(parse_event(black_box(&add)).expect("the event parses"));
        },
    );
    measure(
        "in process, part: Encrypt extraction of the POST body",
        || {
            black_box(extract_encrypt_borrowed(black_box(&body)).expect("the body has Encrypt"));
        },
    );
    measure("in process, part: signature check", || {
        let checked = crypto.verify_signature(
            &sealed.msg_signature,
            &sealed.timestamp,
            &sealed.nonce,
            black_box(&sealed.encrypt),
        );
        assert!(checked.is_ok(), "the sealed event verifies");
    });
    measure("in process, part: decryption", || {
        black_box(
            crypto
                .decrypt(black_box(&sealed.encrypt))
                .expect("the sealed event decrypts"),
        );
    });
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

/// The replay memory filled to one generation's default capacity, a key at a time: the
/// mean cost of a key, and the slowest single insert (a shard growing its table).
fn replay_memory() {
    let capacity = wecom_acq::callback::endpoint::DEFAULT_REPLAY_CAPACITY;
    let guard = ReplayGuard::new(Duration::from_secs(600), capacity);
    let keys: Vec<_> = (0..capacity as u64)
        .map(|i| guard.key(&[&i.to_le_bytes()]))
        .collect();
    let mut each_ns: Vec<u32> = Vec::with_capacity(keys.len());
    let started = Instant::now();
    for key in keys {
        let one = Instant::now();
        assert!(guard.insert_all_new(&[key]), "every key is new");
        each_ns.push(one.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
    }
    let elapsed = started.elapsed();
    each_ns.sort_unstable();
    let micros = |p: f64| f64::from(percentile(&each_ns, p)) / 1000.0;
    println!(
        "in process: replay memory filled with {capacity} keys: {:.0} ns per insert; single insert p99.9 {:.1} us, p99.99 {:.1} us, slowest {:.1} us",
        elapsed.as_nanos() as f64 / capacity as f64,
        micros(0.999),
        micros(0.9999),
        micros(1.0),
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

/// A sink that takes everything and keeps nothing: the cost of the endpoint alone.
struct Discard;

impl wecom_acq::callback::EventSink for Discard {
    fn offer(&self, event: InboundEvent) -> Result<(), Box<InboundEvent>> {
        drop(black_box(event));
        Ok(())
    }
}

/// The endpoint's request handler called in process (no sockets, no HTTP parsing) on distinct
/// pre-sealed events: what the endpoint itself costs per event, apart from the transport.
fn in_process_handler(requests: &[Prepared]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let metrics = Metrics::new();
    let endpoint =
        CallbackEndpoint::new(directory(), Discard, &metrics, EndpointSettings::default());
    let started = Instant::now();
    let accepted = runtime.block_on(async {
        let mut accepted = 0u64;
        for prepared in requests {
            let request = http::Request::post(prepared.path_and_query.as_str())
                .header(http::header::CONTENT_TYPE, "text/xml")
                .body(Full::new(prepared.body.clone()))
                .expect("a valid request");
            let response = endpoint.handle(request).await;
            accepted += u64::from(response.status() == http::StatusCode::OK);
        }
        accepted
    });
    let elapsed = started.elapsed();
    println!(
        "in process: request handler (path, query, body, signature, replay memory, decrypt, parse, hand-off) on {} distinct events: {:.0} events/s, {:.0} ns/event, {accepted} accepted",
        requests.len(),
        requests.len() as f64 / elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / requests.len().max(1) as f64,
    );
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
    /// Takes the events off the queue and drops them: the endpoint alone.
    Drain,
}

/// The endpoint and its consumer on one current-thread runtime, on its own thread.
fn start_server(
    consumer: Consumer,
    metrics: Arc<Metrics>,
) -> (SocketAddr, oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound address");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("bench-server".to_string())
        .spawn(move || {
            pin_to_cpu(SERVER_CPU);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            runtime.block_on(async move {
                listener
                    .set_nonblocking(true)
                    .expect("non-blocking listener");
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let (tx, rx) = mpsc::channel::<InboundEvent>(QUEUE);
                let consuming = tokio::spawn(consume(consumer, rx, metrics.clone()));
                let stopped = async move {
                    let _ = stop_rx.await;
                };
                let _ = match consumer {
                    // The same server reading the body and answering 200.
                    Consumer::NoEndpoint => {
                        let handler = |request: http::Request<hyper::body::Incoming>| async move {
                            let _ = request.into_body().collect().await;
                            http::Response::new(Full::<Bytes>::default())
                        };
                        serve_http1(listener, handler, ConnectionLimits::default(), stopped).await
                    }
                    _ => {
                        let endpoint = CallbackEndpoint::new(
                            directory(),
                            tx,
                            &metrics,
                            EndpointSettings::default(),
                        );
                        serve_endpoint(listener, endpoint, DEFAULT_HEADER_READ_TIMEOUT, stopped)
                            .await
                    }
                };
                consuming.abort();
            });
        })
        .expect("spawn the server thread");
    (addr, stop_tx, thread)
}

async fn consume(consumer: Consumer, mut rx: mpsc::Receiver<InboundEvent>, metrics: Arc<Metrics>) {
    match consumer {
        Consumer::NoEndpoint => while rx.recv().await.is_some() {},
        Consumer::Drain => {
            let mut batch = Vec::with_capacity(256);
            while rx.recv_many(&mut batch, 256).await > 0 {
                batch.clear();
            }
        }
        Consumer::Naive { api } => {
            while rx.recv().await.is_some() {
                tokio::time::sleep(api).await;
            }
        }
        Consumer::Worker { api } => {
            // The worker's own per-event pieces: counters, link index, customer tally.
            let mut meter = EventMeter::default();
            let mut index = LinkIndex::default();
            index.rebuild(&bench_links());
            let mut tally = CustomerTally::default();
            let mut flush = tokio::time::interval(Duration::from_secs(2));
            let mut writing: Option<tokio::task::JoinHandle<()>> = None;
            let mut batch = Vec::with_capacity(256);
            loop {
                tokio::select! {
                    received = rx.recv_many(&mut batch, 256) => {
                        if received == 0 {
                            return;
                        }
                        for inbound in batch.drain(..) {
                            meter.event(&metrics, &inbound);
                            let event = &inbound.event;
                            // The bench's links name no channels: every state counts as `other`.
                            let channel = bounded_channel(&[], event.state.as_deref().unwrap_or_default());
                            meter.conversion(&metrics, &inbound, channel);
                            let link_id = event.link_id.as_deref().unwrap_or_default();
                            if let Some(link) = index.lookup(&inbound.namespace, &inbound.app, link_id) {
                                tally.add_arrival(link, link_id, event, channel);
                            }
                        }
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
    pin_to_cpu(LOAD_CPU);
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
    let (addr, stop, server) = start_server(consumer, Metrics::new());
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

/// What `wrk --latency` printed that this benchmark reports.
#[derive(Debug, Default)]
struct WrkReport {
    requests: u64,
    seconds: f64,
    p50: String,
    p99: String,
    non_2xx: u64,
}

fn seconds_of(duration: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = duration.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = duration.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = duration.strip_suffix('m') {
        (n, 60.0)
    } else {
        (duration.strip_suffix('s')?, 1.0)
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

fn parse_wrk(output: &str) -> Option<WrkReport> {
    let mut report = WrkReport::default();
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => report.p50 = value.to_string(),
            ["99%", value] => report.p99 = value.to_string(),
            [count, "requests", "in", duration, ..] => {
                report.requests = count.parse().ok()?;
                report.seconds = seconds_of(duration.trim_end_matches(','))?;
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => report.non_2xx = count.parse().ok()?,
            _ => {}
        }
    }
    (report.requests > 0).then_some(report)
}

/// The requests as wrk sends them: each raw HTTP/1.1 request preceded by its length on a
/// line of its own, read once by `benches/wrk_post.lua`.
fn wrk_requests(requests: &[Prepared]) -> Vec<u8> {
    let mut out = Vec::with_capacity(requests.len() * 1_100);
    for prepared in requests {
        let mut raw = format!(
            "POST {} HTTP/1.1\r\nHost: bench\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
            prepared.path_and_query,
            prepared.body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&prepared.body);
        out.extend_from_slice(format!("{}\n", raw.len()).as_bytes());
        out.extend_from_slice(&raw);
    }
    out
}

/// The endpoint on `SERVER_CPU`, `wrk` (one thread, keep-alive) on `LOAD_CPU`, each alone on
/// its core. `wrk` sends the pre-sealed requests in order and wraps around after the last;
/// a wrapped request is a replay, answered 200 from the replay memory, so only the events the
/// endpoint counts as accepted are reported as accepted.
fn wrk_run(
    name: &str,
    consumer: Consumer,
    data: &std::path::Path,
    connections: usize,
    seconds: u64,
) -> Result<(), String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/wrk_post.lua");
    let metrics = Metrics::new();
    let (addr, stop, server) = start_server(consumer, metrics.clone());
    let before = cpu_ticks(SERVER_CPU);
    let output = std::process::Command::new("taskset")
        .args(["-c", &LOAD_CPU.to_string(), "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .args(["--latency", "-s", script])
        .arg(format!("http://{addr}/"))
        .arg("--")
        .arg(data)
        .output();
    let after = cpu_ticks(SERVER_CPU);
    let _ = stop.send(());
    let _ = server.join();
    let output = output.map_err(|e| format!("run taskset/wrk: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(report) = parse_wrk(&stdout).filter(|_| output.status.success()) else {
        return Err(format!(
            "wrk failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        ));
    };
    let counted = |result: &str| {
        metrics
            .callbacks
            .get_or_create(&wecom_acq::metrics::CallbackLabels {
                result: result.to_string(),
            })
            .get()
    };
    let accepted = counted("accepted");
    // The server's core, over wrk's whole life (its start-up reads the requests while the
    // server idles): busy seconds, and the part the hypervisor gave to someone else.
    let core = match (before, after) {
        (Some(before), Some(after)) => {
            let busy = (after.busy - before.busy) as f64 / CLOCK_TICKS_PER_SECOND;
            let steal = (after.steal - before.steal) as f64 / CLOCK_TICKS_PER_SECOND;
            format!(
                "; CPU {SERVER_CPU}: {busy:.2} s busy, {steal:.2} s stolen, {:.0} accepted events per busy second",
                accepted as f64 / busy.max(f64::MIN_POSITIVE)
            )
        }
        _ => String::new(),
    };
    println!(
        "HTTP (wrk) {name}, {connections} connections, {seconds} s: {:.0} accepted events/s ({accepted} accepted, {} duplicates, {} answered 503, {} non-2xx; {:.0} answers/s), latency p50 {}, p99 {}{core}",
        accepted as f64 / report.seconds,
        counted("duplicate"),
        counted("queue_full"),
        report.non_2xx,
        report.requests as f64 / report.seconds,
        report.p50,
        report.p99,
    );
    Ok(())
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
    // CALLBACK_BENCH_ONLY=in-process,handler,hyper,wrk,naive picks parts (all by default).
    let only = std::env::var("CALLBACK_BENCH_ONLY").unwrap_or_default();
    let wanted = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    if wanted("in-process") {
        in_process();
        replay_memory();
    }

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
    if wanted("handler") {
        in_process_handler(&requests);
    }
    let fast = Consumer::Worker {
        api: Duration::from_millis(2),
    };
    let slow = Consumer::Worker {
        api: Duration::from_secs(1),
    };
    // Each run has its own server, so its replay memory has seen none of them. In a closed
    // loop the latency grows with the connections in flight (Little's law), so the
    // fast-API run is repeated with twice as many.
    if wanted("wrk") {
        if std::process::Command::new("wrk")
            .arg("--version")
            .output()
            .is_err()
        {
            println!("HTTP (wrk): not measured, wrk is not installed (apt-get install wrk)");
        } else {
            let runs = [
                (
                    "calibration: no endpoint, 200 at once",
                    Consumer::NoEndpoint,
                    32,
                ),
                (
                    "endpoint, events dropped after the queue",
                    Consumer::Drain,
                    32,
                ),
                ("worker, Kubernetes 2 ms", fast, 32),
                ("worker, Kubernetes 1 s", slow, 32),
                ("worker, Kubernetes 2 ms", fast, 64),
                ("worker, Kubernetes 2 ms", fast, 32),
                ("worker, Kubernetes 1 s", slow, 32),
            ];
            let written = tempfile::NamedTempFile::new().and_then(|file| {
                std::fs::write(file.path(), wrk_requests(&requests)).map(|()| file)
            });
            match written {
                Ok(data) => {
                    // CALLBACK_BENCH_WRK_RUNS=calibration,worker keeps the runs whose name
                    // contains one of the words (for profiling one kind of run).
                    let picked = std::env::var("CALLBACK_BENCH_WRK_RUNS").unwrap_or_default();
                    let runs = runs.into_iter().filter(|(name, _, _)| {
                        picked.is_empty()
                            || picked.split(',').any(|word| name.contains(word.trim()))
                    });
                    for (name, consumer, connections) in runs {
                        if let Err(err) = wrk_run(name, consumer, data.path(), connections, 4) {
                            println!("HTTP (wrk) {name}: not measured: {err}");
                        }
                    }
                }
                Err(err) => println!("HTTP (wrk): not measured, cannot write the requests: {err}"),
            }
        }
    }
    if wanted("hyper") {
        http_run(
            "calibration: no endpoint, 200 at once",
            Consumer::NoEndpoint,
            requests.clone(),
            32,
        );
        http_run("worker, Kubernetes 2 ms", fast, requests.clone(), 32);
        http_run("worker, Kubernetes 1 s", slow, requests.clone(), 32);
    }
    if wanted("naive") {
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
}
