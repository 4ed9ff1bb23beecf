//! The HTTP/1.1 server of both ports of `wecom-acq run` (callbacks; probes and metrics).

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

/// Default for how long a connection may go without delivering a whole request head
/// (`serve_http1`); hyper's own default once it has a timer.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `handler` over HTTP/1.1 on `listener` until `shutdown` completes, then lets the
/// requests in flight finish.
///
/// Both ports of `wecom-acq run` use it: WeCom calls back over HTTP/1.1, and the probes and
/// Prometheus do too. It is hyper's HTTP/1.1 server rather than `axum::serve`, for one thing
/// `axum::serve` lacks: a connection that does not deliver a whole request head within
/// `header_read_timeout` (a slowloris client, or a keep-alive connection left idle that
/// long) is closed instead of being held open for ever. Each connection gets `TCP_NODELAY`:
/// an answer is one small write that must leave at once.
pub async fn serve_http1<H, F, B>(
    listener: TcpListener,
    handler: H,
    header_read_timeout: Duration,
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
            .header_read_timeout(header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(port, error = %err, "a connection ended with an error");
            }
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
