//! The one way tests wait: poll a check every [`POLL`] until it holds or a deadline
//! passes, then fail naming what was awaited and the last thing seen. Never a fixed sleep.

use std::future::Future;
use std::time::Duration;

/// How long a wait lasts before the test fails, unless the test says otherwise.
pub const WAIT: Duration = Duration::from_secs(30);
/// How often a wait polls.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `check` every [`POLL`] until it returns `Ok`, or panics after `timeout` with what
/// it was waiting for and the last observation (`Err` carries it).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last seen: {last}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_for`] within [`WAIT`], for a check that yields its value or nothing yet.
pub async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for(what, WAIT, || {
        let checked = check();
        async move { checked.await.ok_or_else(|| "not yet".to_string()) }
    })
    .await
}
