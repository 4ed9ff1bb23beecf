//! Fault hooks for tests: failed writes, outages, slow responses, dropped watches and
//! compacted history, switched on and off while the emulator runs.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::resources::ResourceType;
use super::store::Store;

#[derive(Debug, Default)]
struct FaultState {
    /// (kind or plural, lower-case; writes left to fail; HTTP status).
    failing_writes: Vec<(String, u32, u16)>,
    outage: Option<(Instant, u16)>,
    delay: Duration,
    /// Lists (not watches, not single objects) of this plural wait this long first.
    list_delay: Option<(String, Duration)>,
}

pub(crate) struct Faults {
    state: Mutex<FaultState>,
    /// Requests served, by method (`WATCH` for watches) and status code.
    requests: Mutex<std::collections::BTreeMap<(String, u16), u64>>,
    watch_drops: watch::Sender<u64>,
    store: Arc<Mutex<Store>>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Faults {
    pub fn new(store: Arc<Mutex<Store>>) -> Self {
        Self {
            state: Mutex::default(),
            requests: Mutex::default(),
            watch_drops: watch::channel(0).0,
            store,
        }
    }

    /// Counts one request served.
    pub fn count_request(&self, method: &str, status: u16) {
        *lock(&self.requests)
            .entry((method.to_string(), status))
            .or_default() += 1;
    }

    /// Consumes one injected failure for a write to this type, if any is pending.
    pub fn take_write_failure(&self, rt: &ResourceType) -> Option<u16> {
        let mut state = lock(&self.state);
        let kind = rt.kind.to_lowercase();
        let entry = state
            .failing_writes
            .iter_mut()
            .find(|(target, left, _)| *left > 0 && (*target == kind || *target == rt.plural))?;
        entry.1 -= 1;
        Some(entry.2)
    }

    /// The status every request gets during an outage.
    pub fn outage(&self) -> Option<u16> {
        let mut state = lock(&self.state);
        match state.outage {
            Some((until, status)) if Instant::now() < until => Some(status),
            Some(_) => {
                state.outage = None;
                None
            }
            None => None,
        }
    }

    pub fn delay(&self) -> Duration {
        lock(&self.state).delay
    }

    /// How long a list of `plural` waits before it is answered.
    pub fn list_delay(&self, plural: &str) -> Duration {
        match &lock(&self.state).list_delay {
            Some((held, delay)) if held == plural => *delay,
            _ => Duration::ZERO,
        }
    }

    /// Fires whenever `drop_watches` is called.
    pub fn watch_drops(&self) -> watch::Receiver<u64> {
        self.watch_drops.subscribe()
    }
}

/// Switches faults on a running emulator. Cheap to clone; every clone controls the same
/// emulator.
#[derive(Clone)]
pub struct FaultControl {
    pub(crate) inner: Arc<Faults>,
}

impl std::fmt::Debug for FaultControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultControl").finish_non_exhaustive()
    }
}

impl FaultControl {
    /// Requests served so far, by method (`WATCH` for a watch) and status code, e.g.
    /// `("PATCH", 422)`: what a benchmark reports of the load a controller puts on the API.
    pub fn requests(&self) -> std::collections::BTreeMap<(String, u16), u64> {
        lock(&self.inner.requests).clone()
    }

    /// The next `n` writes (create, update, patch, delete, and their `/status` forms) to
    /// resources of this kind (`AcquisitionLink`) or plural (`acquisitionlinks`) fail:
    /// `409` as a stale-resourceVersion Conflict, `500` as an InternalError, any other
    /// code as that HTTP status.
    pub fn fail_next_writes(&self, kind_or_plural: &str, n: u32, status: u16) {
        let target = kind_or_plural.to_lowercase();
        let mut state = lock(&self.inner.state);
        state.failing_writes.retain(|(t, _, _)| *t != target);
        state.failing_writes.push((target, n, status));
    }

    /// Every request (watches included, open watch streams excepted) answers `status`
    /// for `duration` from now.
    pub fn fail_all_requests_for(&self, duration: Duration, status: u16) {
        lock(&self.inner.state).outage = Some((Instant::now() + duration, status));
    }

    /// Every response waits this long first; `Duration::ZERO` turns the delay off.
    pub fn delay_responses(&self, delay: Duration) {
        lock(&self.inner.state).delay = delay;
    }

    /// Lists of `plural` (`acquisitionlinks`) are answered `delay` late, as a list of many
    /// objects is: a client's cache of that kind fills after everything else it reads.
    pub fn delay_lists(&self, plural: &str, delay: Duration) {
        lock(&self.inner.state).list_delay = Some((plural.to_lowercase(), delay));
    }

    /// Aborts every open watch connection now, as a network cut or an apiserver restart
    /// would. Clients see a broken stream and must re-watch.
    pub fn drop_watches(&self) {
        self.inner.watch_drops.send_modify(|epoch| *epoch += 1);
    }

    /// Discards the change history, as an etcd compaction does: watches resumed and
    /// list pages continued from any older resourceVersion get 410 Expired.
    pub fn compact_history(&self) {
        lock(&self.inner.store).compact();
    }

    /// Turns every fault off.
    pub fn clear(&self) {
        *lock(&self.inner.state) = FaultState::default();
    }
}
