//! The access-token cache of one WeCom app: fetched lazily, refreshed before it expires,
//! and single-flight, so a wave of callers that all find the token stale (or revoked)
//! causes exactly one gettoken.
//!
//! WeCom blocks the caller's IP for an hour after repeated gettoken failures with a bad
//! secret (40001), so a failure is shared by every caller that waited for it, and a 40001
//! is remembered for [`BAD_SECRET_HOLD`] instead of being asked again.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::answer::MAX_EXPIRES_IN;
use super::error::{WeComError, codes};
use super::types::TokenResponse;

/// The longest margin before expiry at which the token is refreshed.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// WeCom's documented token lifetime, assumed when an answer does not say.
const DEFAULT_EXPIRES_IN: u64 = 7200;
/// How long a refused secret (40001) is answered from memory instead of asking WeCom.
pub const BAD_SECRET_HOLD: Duration = Duration::from_secs(60);

/// An access token. Debug never shows it; `expose()` is for the query string only.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(Arc<str>);

impl AccessToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

struct CachedToken {
    token: AccessToken,
    /// After this instant the token is treated as stale and fetched again.
    refresh_at: Instant,
}

#[derive(Default)]
struct RefreshState {
    /// The error of the most recent refresh, handed to callers that waited for it.
    last_failure: Option<WeComError>,
    /// A refused secret, answered from memory until the instant.
    bad_secret: Option<(Instant, WeComError)>,
}

/// The token of one app. Shared by every clone of a client.
#[derive(Default)]
pub struct TokenCache {
    current: Mutex<Option<CachedToken>>,
    /// Held while one caller fetches; the others wait on it, then re-check `current`.
    refresh: tokio::sync::Mutex<RefreshState>,
    /// Refreshes finished (successful or not), to tell a waiter whether one completed
    /// while it waited.
    refreshes: AtomicU64,
}

/// How long before expiry a token of `expires_in` seconds is refreshed: 10% of its life,
/// at most five minutes (so a short-lived simulator token is still used for 90% of it).
pub fn refresh_margin(expires_in: u64) -> Duration {
    (Duration::from_secs(expires_in) / 10).min(MAX_REFRESH_MARGIN)
}

/// How long a token of `expires_in` seconds is used before it is refreshed. 0 (not said)
/// is WeCom's documented 7200 s; more than [`MAX_EXPIRES_IN`] is capped there (the client
/// refuses such an answer; this keeps the cache safe whoever calls it).
pub fn token_life(expires_in: u64) -> Duration {
    let expires_in = match expires_in {
        0 => DEFAULT_EXPIRES_IN,
        n => n.min(MAX_EXPIRES_IN),
    };
    Duration::from_secs(expires_in) - refresh_margin(expires_in)
}

impl TokenCache {
    /// The cached token if it is still fresh.
    pub fn fresh(&self) -> Option<AccessToken> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .filter(|cached| Instant::now() < cached.refresh_at)
            .map(|cached| cached.token.clone())
    }

    /// The fresh token, or a new one from `fetch` (gettoken). However many callers arrive
    /// together, `fetch` runs once; the others get its token or its error.
    pub async fn get_or_refresh<F, Fut>(&self, fetch: F) -> Result<AccessToken, WeComError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<TokenResponse, WeComError>>,
    {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let seen = self.refreshes.load(Ordering::Acquire);
        let mut state = self.refresh.lock().await;
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        if self.refreshes.load(Ordering::Acquire) != seen
            && let Some(error) = &state.last_failure
        {
            return Err(error.clone());
        }
        if let Some((until, error)) = &state.bad_secret
            && Instant::now() < *until
        {
            return Err(error.clone());
        }

        let result = fetch().await;
        self.refreshes.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(answer) => {
                state.last_failure = None;
                state.bad_secret = None;
                let life = token_life(answer.expires_in);
                let now = Instant::now();
                let token = AccessToken(Arc::from(answer.access_token));
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(CachedToken {
                    token: token.clone(),
                    // `life` is at most a day, so this cannot overflow; if it ever did, the
                    // token would just be refreshed on the next call.
                    refresh_at: now.checked_add(life).unwrap_or(now),
                });
                Ok(token)
            }
            Err(error) => {
                if error.errcode() == Some(codes::INVALID_CREDENTIAL) {
                    state.bad_secret = Some((Instant::now() + BAD_SECRET_HOLD, error.clone()));
                }
                state.last_failure = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Drops `failed` after WeCom refused it (40014, 42001). A token refreshed meanwhile by
    /// another caller is kept, so a wave of refusals leads to one refresh, not one each.
    pub fn invalidate_if_current(&self, failed: &AccessToken) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current
            .as_ref()
            .is_some_and(|cached| &cached.token == failed)
        {
            *current = None;
        }
    }

    /// Drops the token whatever it is; the next call fetches a new one.
    pub fn invalidate(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wecom::Api;
    use std::sync::atomic::AtomicU32;

    fn answer(token: &str, expires_in: u64) -> TokenResponse {
        TokenResponse {
            access_token: token.into(),
            expires_in,
        }
    }

    #[test]
    fn margin_is_a_tenth_capped_at_five_minutes() {
        assert_eq!(refresh_margin(7200), Duration::from_secs(300));
        assert_eq!(refresh_margin(60), Duration::from_secs(6));
        assert_eq!(refresh_margin(0), Duration::ZERO);
    }

    #[test]
    fn any_expires_in_gives_a_bounded_life() {
        assert_eq!(token_life(7200), Duration::from_secs(6900));
        assert_eq!(token_life(0), Duration::from_secs(6900));
        assert_eq!(token_life(u64::MAX), Duration::from_secs(86_100));
        assert_eq!(token_life(1), Duration::from_millis(900));
    }

    #[tokio::test(start_paused = true)]
    async fn an_overflowing_expires_in_does_not_panic_the_cache() {
        let cache = TokenCache::default();
        let token = cache
            .get_or_refresh(|| async { Ok(answer("long", u64::MAX)) })
            .await
            .unwrap();
        assert_eq!(token.expose(), "long");
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert_eq!(
            cache.fresh(),
            None,
            "refreshed within a day whatever was said"
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let token = AccessToken(Arc::from("TOKEN-VALUE-1"));
        assert!(!format!("{token:?}").contains("TOKEN-VALUE-1"));
    }

    #[tokio::test(start_paused = true)]
    async fn fetched_lazily_reused_and_refreshed_before_expiry() {
        let cache = TokenCache::default();
        let fetches = AtomicU32::new(0);
        let fetch = || async {
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            Ok(answer(&format!("t{n}"), 7200))
        };
        assert_eq!(cache.fresh(), None);
        let first = cache.get_or_refresh(fetch).await.unwrap();
        assert_eq!(first.expose(), "t0");
        // 6899 s later (before expiry minus five minutes) the cached token is reused.
        tokio::time::advance(Duration::from_secs(6899)).await;
        let again = cache.get_or_refresh(fetch).await.unwrap();
        assert_eq!(again.expose(), "t0");
        // Inside the last five minutes it is refreshed, though WeCom would still take it.
        tokio::time::advance(Duration::from_secs(2)).await;
        let refreshed = cache.get_or_refresh(fetch).await.unwrap();
        assert_eq!(refreshed.expose(), "t1");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_cause_one_fetch() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let cache = Arc::clone(&cache);
                let fetches = Arc::clone(&fetches);
                tokio::spawn(async move {
                    cache
                        .get_or_refresh(|| async {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            // Slow gettoken: everyone else piles up behind it.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Ok(answer("shared", 7200))
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().expose(), "shared");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_is_shared_by_its_waiters() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let cache = Arc::clone(&cache);
                let fetches = Arc::clone(&fetches);
                tokio::spawn(async move {
                    cache
                        .get_or_refresh(|| async {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Err(WeComError::Timeout { api: Api::GetToken })
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(
                task.await.unwrap().unwrap_err(),
                WeComError::Timeout { api: Api::GetToken }
            );
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // A later caller (not a waiter of that refresh) tries again.
        let token = cache
            .get_or_refresh(|| async { Ok(answer("late", 7200)) })
            .await
            .unwrap();
        assert_eq!(token.expose(), "late");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_secret_is_not_asked_again_for_a_while() {
        let cache = TokenCache::default();
        let fetches = AtomicU32::new(0);
        let refused = WeComError::Api {
            api: Api::GetToken,
            errcode: codes::INVALID_CREDENTIAL,
            errmsg: "invalid credential".into(),
        };
        let fetch = || async {
            fetches.fetch_add(1, Ordering::SeqCst);
            Err(refused.clone())
        };
        for _ in 0..5 {
            assert_eq!(cache.get_or_refresh(fetch).await.unwrap_err(), refused);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        tokio::time::advance(BAD_SECRET_HOLD).await;
        assert_eq!(cache.get_or_refresh(fetch).await.unwrap_err(), refused);
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_token_that_failed_is_dropped() {
        let cache = TokenCache::default();
        let old = cache
            .get_or_refresh(|| async { Ok(answer("old", 7200)) })
            .await
            .unwrap();
        cache.invalidate_if_current(&old);
        let new = cache
            .get_or_refresh(|| async { Ok(answer("new", 7200)) })
            .await
            .unwrap();
        // A slow caller reporting the old token's failure must not drop the new one.
        cache.invalidate_if_current(&old);
        assert_eq!(cache.fresh(), Some(new));
        cache.invalidate();
        assert_eq!(cache.fresh(), None);
    }
}
