//! The HTTP/1.1 server of both ports of `wecom-acq run` (callbacks; probes and metrics),
//! with the limits that keep a port up under abuse, and the rate-bounded log of what it
//! refuses.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Default for how long a connection may go without delivering a whole request head
/// (`serve_http1`); hyper's own default once it has a timer.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default cap on the connections one port serves at once (`--callback-max-connections`).
pub use crate::defaults::CALLBACK_MAX_CONNECTIONS as DEFAULT_MAX_CONNECTIONS;
/// The answer to a connection over the cap: written at once, then the connection closes.
const OVER_CAPACITY_ANSWER: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\nretry-after: 1\r\n\r\n";
/// How long writing that answer may take; a peer that does not read is dropped.
const OVER_CAPACITY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What one port allows a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A connection that does not deliver a whole request head within this is closed.
    pub header_read_timeout: Duration,
    /// Connections served at once; one more is answered 503 and closed at once.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Default interval of [`LogThrottle`]: one line per reason per this.
pub const DEFAULT_REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// At most one log line per reason per interval, so that a flood of bad requests cannot
/// flood the log; the next line of a reason says how many of its lines were left out.
pub struct LogThrottle {
    interval: Duration,
    /// reason -> (when its last line was written, lines suppressed since)
    reasons: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogThrottle {
    pub fn new(interval: Duration) -> Self {
        LogThrottle {
            interval,
            reasons: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(lines of this reason suppressed since its last line)` when a line may be
    /// written now, `None` when it is to be left out.
    pub fn admit(&self, reason: &'static str) -> Option<u64> {
        self.admit_at(reason, Instant::now())
    }

    fn admit_at(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut reasons = self.reasons.lock().ok()?;
        match reasons.get_mut(reason) {
            Some((last, suppressed)) if now.saturating_duration_since(*last) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                reasons.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

/// Serves `handler` over HTTP/1.1 on `listener` until `shutdown` completes, then lets the
/// requests in flight finish.
///
/// Both ports of `wecom-acq run` use it: WeCom calls back over HTTP/1.1, and the probes and
/// Prometheus do too. It is hyper's HTTP/1.1 server rather than `axum::serve`, for one thing
/// `axum::serve` lacks: a connection that does not deliver a whole request head within
/// `header_read_timeout` (a slowloris client, or a keep-alive connection left idle that
/// long) is closed instead of being held open for ever. Each connection gets `TCP_NODELAY`:
/// an answer is one small write that must leave at once. At most `limits.max_connections`
/// are served at once: one more is answered 503 at once and closed (WeCom retries), so a
/// flood of connections costs the process a bounded number of tasks and sockets.
pub async fn serve_http1<H, F, B>(
    listener: TcpListener,
    handler: H,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = http::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::{TokioIo, TokioTimer};

    // Both ports log through here: name the one a line is about.
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let refusals = Arc::new(LogThrottle::new(DEFAULT_REFUSAL_LOG_INTERVAL));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) if is_connection_error(&err) => continue,
                Err(err) => {
                    // Out of file descriptors and the like: give the process a moment.
                    tracing::warn!(port, error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let refusals = refusals.clone();
            tokio::spawn(async move {
                if let Some(suppressed) = refusals.admit("over_capacity") {
                    tracing::warn!(
                        port,
                        max_connections = limits.max_connections,
                        suppressed,
                        "connection refused with 503: the port serves its maximum of connections at once (--callback-max-connections)"
                    );
                }
                let mut stream = stream;
                let _ = tokio::time::timeout(OVER_CAPACITY_WRITE_TIMEOUT, async {
                    stream.write_all(OVER_CAPACITY_ANSWER).await?;
                    stream.shutdown().await
                })
                .await;
            });
            continue;
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(port, error = %err, "cannot set TCP_NODELAY on a connection");
        }
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |request| {
            let answer = handler(request);
            async move { Ok::<_, std::convert::Infallible>(answer.await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(port, error = %err, "a connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Errors of one incoming connection (the peer gave up), not of the listener.
fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_interval_and_the_next_counts_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.admit_at("bad_signature", t0), Some(0));
        for _ in 0..299 {
            assert_eq!(throttle.admit_at("bad_signature", t0), None);
        }
        // Another reason has its own line.
        assert_eq!(throttle.admit_at("too_large", t0), Some(0));
        assert_eq!(
            throttle.admit_at("bad_signature", t0 + Duration::from_secs(9)),
            None
        );
        assert_eq!(
            throttle.admit_at("bad_signature", t0 + Duration::from_secs(10)),
            Some(300)
        );
        assert_eq!(
            throttle.admit_at("bad_signature", t0 + Duration::from_secs(20)),
            Some(0)
        );
    }
}
