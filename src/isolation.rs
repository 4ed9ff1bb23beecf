//! Keeps a failure where it happened: a panic is caught at the boundary of the task it
//! happened in (one reconcile pass, one callback event, one callback request) and counted,
//! and a long-running part of the process that ends on its own is reported to `/healthz`,
//! so that Kubernetes restarts the pod instead of leaving it half alive.

use std::{
    any::Any,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
};

use futures::FutureExt;

/// The `task` label of `wecom_acq_panics_total`: where a panic was caught.
pub mod task {
    pub const LINK_RECONCILE: &str = "link_reconcile";
    pub const APP_RECONCILE: &str = "app_reconcile";
    pub const CALLBACK_WORKER: &str = "callback_worker";
    pub const CALLBACK_REQUEST: &str = "callback_request";
}

/// Longest panic message kept for a log line.
const MESSAGE_LIMIT: usize = 300;

/// The text of a panic payload (what `panic!` and a failed `unwrap` carry), shortened.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    text.chars().take(MESSAGE_LIMIT).collect()
}

/// Runs `future` to its end, turning a panic inside it into `Err(message)`.
///
/// `AssertUnwindSafe` is sound here because whoever catches the panic drops what the
/// future was working on (one pass, one event, one request) and starts afresh from the
/// Kubernetes caches and WeCom; shared state behind a `Mutex` that a panic poisons is read
/// with `.lock().ok()` throughout, so a poisoned lock is skipped, never unwrapped.
pub async fn catch<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(&*payload))
}

/// [`catch`] for a synchronous step.
pub fn catch_sync<T>(step: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(step)).map_err(|payload| panic_message(&*payload))
}

/// Which long-running parts of the process have stopped although nobody asked them to.
/// `/healthz` answers 503 as soon as one has, so that the liveness probe restarts the pod.
#[derive(Clone, Default)]
pub struct Liveness {
    stopped: Arc<Mutex<Vec<&'static str>>>,
}

impl Liveness {
    /// Records that `part` ended on its own (logged once per part).
    pub fn report_stopped(&self, part: &'static str) {
        let Ok(mut stopped) = self.stopped.lock() else {
            return;
        };
        if !stopped.contains(&part) {
            tracing::error!(
                part,
                "{part} stopped while the controller is not shutting down; /healthz now fails so that Kubernetes restarts the pod"
            );
            stopped.push(part);
        }
    }

    /// The parts that stopped on their own, in the order they did; empty while alive.
    pub fn stopped(&self) -> Vec<&'static str> {
        self.stopped.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn is_alive(&self) -> bool {
        self.stopped().is_empty()
    }

    /// Runs `part` (a controller loop, a worker) to its end; when it ends before
    /// `shutting_down()` says the process is stopping, reports it stopped.
    pub async fn supervise<F: Future>(
        self,
        name: &'static str,
        part: F,
        shutting_down: impl Fn() -> bool,
    ) -> F::Output {
        let output = part.await;
        if !shutting_down() {
            self.report_stopped(name);
        }
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_its_message_and_other_payloads_a_placeholder() {
        let caught = catch(async { panic!("boom {}", 7) }).await;
        assert_eq!(caught, Err("boom 7".to_string()));
        let caught = catch(async { std::panic::panic_any(42_u8) }).await;
        assert_eq!(caught, Err("a panic without a message".to_string()));
        assert_eq!(catch(async { 5 }).await, Ok(5));
        let long = "x".repeat(1000);
        let caught = catch_sync(|| panic!("{long}"));
        assert_eq!(caught.map_err(|m| m.len()), Err(MESSAGE_LIMIT));
    }

    #[tokio::test]
    async fn a_part_that_ends_before_shutdown_is_reported_once() {
        let liveness = Liveness::default();
        liveness
            .clone()
            .supervise("worker", async {}, || true)
            .await;
        assert!(liveness.is_alive(), "ended during shutdown: still alive");
        liveness
            .clone()
            .supervise("worker", async {}, || false)
            .await;
        liveness
            .clone()
            .supervise("worker", async {}, || false)
            .await;
        assert_eq!(liveness.stopped(), vec!["worker"]);
    }
}
