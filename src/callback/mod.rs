//! The WeCom callback endpoint (`/callback/{namespace}/{app}`).

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::watch;

use crate::{controller::Triggers, reconcile::context::Context};

/// Binds the callback endpoint and serves it until `stop` turns true.
pub async fn serve(
    addr: SocketAddr,
    context: Arc<Context>,
    triggers: Triggers,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let _ = (context, triggers);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --callback-addr {addr}: {e}"))?;
    let mut stop = stop;
    Ok(tokio::spawn(async move {
        let router = axum::Router::new();
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    }))
}
