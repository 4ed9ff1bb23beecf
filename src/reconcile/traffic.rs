//! The in-memory bookkeeping that keeps a controller's WeCom traffic within its budget:
//! when each link is next due for polling, which links a person or WeCom is waiting for,
//! the newest version the watch has shown of each link, each app's share of the
//! reconcile slots, and one shared A1 listing per app.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::TryStreamExt;
use tokio::time::Instant;

use crate::wecom::{WeComError, client::WeComClient};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps: a panic elsewhere while holding the lock leaves them usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The newest resourceVersion known per object UID where it is newer than the cached
/// object's: delivered by the watch while the cache relists, or returned by a write of this
/// controller. The reflector's store is updated before the watch's event goes on, except
/// while it relists (it keeps the old objects until the listing is complete), and a write's
/// own event comes after the write returns: a pass whose cached object is older than the
/// newest known reads the object again instead of acting on an old generation or on its own
/// half-written state. Once the cache holds a version, an entry no newer than it is
/// dropped ([`Self::settle`]): at rest the map is empty, not one entry per link.
///
/// resourceVersions are opaque to clients, but every API server in use (etcd's
/// revisions, and kubesim) gives integers that grow with each write; when both versions
/// are integers the larger one wins, otherwise the last one noted.
#[derive(Debug, Default)]
pub struct SeenVersions(Mutex<HashMap<String, String>>);

/// True when `a` is known to be newer than `b`, or, when they cannot be ordered, differs.
fn newer(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a > b,
        _ => a != b,
    }
}

/// What [`SeenVersions`] holds for an object whose deletion this controller completed.
const GONE: &str = "";

impl SeenVersions {
    /// [`Self::note`] of an object's own UID and version.
    pub fn note_from<K: kube::Resource>(&self, object: &K) {
        let meta = object.meta();
        if let (Some(uid), Some(version)) = (meta.uid.as_deref(), meta.resource_version.as_deref())
        {
            self.note(uid, version);
        }
    }

    /// The cache now holds `object`: what is known of it beyond that stays, the rest goes.
    pub fn settle_with<K: kube::Resource>(&self, object: &K) {
        let meta = object.meta();
        if let (Some(uid), Some(version)) = (meta.uid.as_deref(), meta.resource_version.as_deref())
        {
            self.settle(uid, version);
        }
    }

    /// The cache holds `cached_version` of the object: an entry that is not newer (and not
    /// a burial) says nothing the cache does not, and is removed.
    pub fn settle(&self, uid: &str, cached_version: &str) {
        let mut seen = lock(&self.0);
        if seen
            .get(uid)
            .is_some_and(|known| known != GONE && !newer(known, cached_version))
        {
            seen.remove(uid);
        }
    }

    /// How many objects have a version newer than the cache's, or a burial, noted.
    pub fn len(&self) -> usize {
        lock(&self.0).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn note(&self, uid: &str, resource_version: &str) {
        let mut seen = lock(&self.0);
        match seen.get_mut(uid) {
            Some(known) => {
                // Gone stays gone until a read from the API server says otherwise.
                if known != GONE && newer(resource_version, known) {
                    resource_version.clone_into(known);
                }
            }
            None => {
                seen.insert(uid.to_string(), resource_version.to_string());
            }
        }
    }

    /// True when a newer version than `resource_version` is known, or the object is gone.
    pub fn differs(&self, uid: &str, resource_version: &str) -> bool {
        lock(&self.0)
            .get(uid)
            .is_some_and(|seen| seen == GONE || newer(seen, resource_version))
    }

    /// This controller removed its finalizer from the object being deleted: a pass queued
    /// meanwhile reads it again (and finds it gone) instead of cleaning up twice.
    pub fn bury(&self, uid: &str) {
        lock(&self.0).insert(uid.to_string(), GONE.to_string());
    }

    pub fn forget(&self, uid: &str) {
        lock(&self.0).remove(uid);
    }
}

/// Objects whose next pass someone is waiting for (a callback reported their link gone):
/// that pass runs in the highest priority class.
#[derive(Debug, Default)]
pub struct Urgent(Mutex<HashSet<String>>);

impl Urgent {
    pub fn mark(&self, key: &str) {
        lock(&self.0).insert(key.to_string());
    }

    /// Whether `key` was marked, clearing the mark.
    pub fn take(&self, key: &str) -> bool {
        lock(&self.0).remove(key)
    }

    /// Whether `key` is marked, leaving the mark for the pass.
    pub fn is_marked(&self, key: &str) -> bool {
        lock(&self.0).contains(key)
    }
}

/// When each link's next poll is due (Unix milliseconds), per `namespace/name`.
#[derive(Debug, Default)]
pub struct PollTimes(Mutex<HashMap<String, u64>>);

impl PollTimes {
    pub fn get(&self, key: &str) -> Option<u64> {
        lock(&self.0).get(key).copied()
    }

    pub fn set(&self, key: &str, due_ms: u64) {
        lock(&self.0).insert(key.to_string(), due_ms);
    }

    pub fn forget(&self, key: &str) {
        lock(&self.0).remove(key);
    }
}

/// The controller's reconcile slots shared fairly between apps: one app's passes may hold
/// at most `total / apps` of them (at least one), so an app whose API hangs cannot take
/// every slot while the others wait.
#[derive(Debug)]
pub struct PassSlots {
    total: usize,
    in_flight: Mutex<HashMap<String, usize>>,
}

impl PassSlots {
    pub fn new(total: usize) -> Self {
        Self {
            total: total.max(1),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for a pass of `app` when the app is within its share of `apps` apps; the slot
    /// is given back when the guard drops.
    pub fn enter(self: &Arc<Self>, app: &str, apps: usize) -> Option<SlotGuard> {
        let share = (self.total / apps.max(1)).max(1);
        let mut in_flight = lock(&self.in_flight);
        let held = in_flight.entry(app.to_string()).or_default();
        if *held >= share {
            return None;
        }
        *held += 1;
        Some(SlotGuard {
            slots: self.clone(),
            app: app.to_string(),
        })
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

/// Objects whose last pass failed, with what had caused it and until when the next may
/// not try again: a pass for the same cause (the urgent lane's and the controller's for
/// one edit, or the lane's again on the failure's own status write) waits out the
/// back-off instead of asking WeCom again at once. A new cause (another edit, a requested
/// pass) runs at once.
#[derive(Debug, Default)]
pub struct HeldOff(Mutex<HashMap<String, (u64, Instant)>>);

impl HeldOff {
    /// How long a pass for `cause` of `key` must still wait.
    pub fn remaining(&self, key: &str, cause: u64) -> Option<Duration> {
        let held = lock(&self.0);
        let (held_cause, until) = held.get(key)?;
        (*held_cause == cause)
            .then(|| until.saturating_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    pub fn hold(&self, key: &str, cause: u64, delay: Duration) {
        lock(&self.0).insert(key.to_string(), (cause, Instant::now() + delay));
    }

    pub fn release(&self, key: &str) {
        lock(&self.0).remove(key);
    }
}

/// Link ids this process deleted in WeCom (A5) in the last ten minutes: a second cleanup
/// pass of one deletion (a finalizer removal that raced, a queued pass on an old copy)
/// sends no second A5, and so no A1 listing to check a "not found" either. WeCom never
/// reuses a link id.
#[derive(Debug, Default)]
pub struct DeletedLinks(Mutex<HashMap<String, Instant>>);

const DELETED_KEPT: Duration = Duration::from_secs(600);

impl DeletedLinks {
    pub fn contains(&self, link_id: &str) -> bool {
        lock(&self.0)
            .get(link_id)
            .is_some_and(|at| at.elapsed() < DELETED_KEPT)
    }

    pub fn insert(&self, link_id: &str) {
        let mut deleted = lock(&self.0);
        deleted.retain(|_, at| at.elapsed() < DELETED_KEPT);
        deleted.insert(link_id.to_string(), Instant::now());
    }
}

/// One pass at a time per object. kube's controller runs one pass per object, but passes
/// a person is waiting for also run on the urgent lane beside it (see
/// `controller::urgent_lane`); the two take this lock, so they never act on one object at
/// once. An entry lives only while someone holds or waits for it.
#[derive(Debug, Default)]
pub struct PassLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl PassLocks {
    pub async fn hold(&self, key: &str) -> PassLock<'_> {
        let entry = lock(&self.0).entry(key.to_string()).or_default().clone();
        let guard = entry.lock_owned().await;
        PassLock {
            locks: self,
            key: key.to_string(),
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

pub struct PassLock<'a> {
    locks: &'a PassLocks,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for PassLock<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = lock(&self.locks.0);
        // Only the map holds it: nobody waits (a waiter clones the entry under this lock).
        if map
            .get(&self.key)
            .is_some_and(|e| Arc::strong_count(e) == 1)
        {
            map.remove(&self.key);
        }
    }
}

pub struct SlotGuard {
    slots: Arc<PassSlots>,
    app: String,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.slots.in_flight);
        if let Some(held) = in_flight.get_mut(&self.app) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                in_flight.remove(&self.app);
            }
        }
    }
}

/// One A1 listing per app, shared: every link that needs to know whether its id still
/// exists uses the newest listing taken after the moment it cares about, and at most one
/// listing per app runs at a time (the others wait for it instead of paging A1 themselves).
#[derive(Default)]
pub struct Sweeps(Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Listing>>>>>);

#[derive(Clone)]
pub struct Listing {
    pub taken_at: Instant,
    pub ids: Arc<HashSet<String>>,
}

impl Sweeps {
    /// The ids A1 lists for `app`, from a listing that started after `fresher_than`.
    pub async fn listing(
        &self,
        app: &str,
        client: &WeComClient,
        fresher_than: Instant,
    ) -> Result<Listing, WeComError> {
        let slot = lock(&self.0).entry(app.to_string()).or_default().clone();
        let mut held = slot.lock().await;
        if let Some(listing) = held.as_ref().filter(|l| l.taken_at >= fresher_than) {
            return Ok(listing.clone());
        }
        let taken_at = Instant::now();
        let ids: HashSet<String> = client.list_links().try_collect().await?;
        let listing = Listing {
            taken_at,
            ids: Arc::new(ids),
        };
        *held = Some(listing.clone());
        Ok(listing)
    }

    /// The last listing of `app`, however old.
    pub fn last(&self, app: &str) -> Option<Listing> {
        let slot = lock(&self.0).get(app).cloned()?;
        let held = slot.try_lock().ok()?;
        held.clone()
    }

    /// Drops the listings of apps for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.0).retain(|app, _| keep(app));
    }
}

/// Each app's effective poll interval, as the app reconciler last computed it.
#[derive(Debug, Default)]
pub struct PollIntervals(Mutex<HashMap<String, Duration>>);

impl PollIntervals {
    pub fn get(&self, app: &str) -> Option<Duration> {
        lock(&self.0).get(app).copied()
    }

    pub fn set(&self, app: &str, interval: Duration) {
        lock(&self.0).insert(app.to_string(), interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_gets_its_share_of_the_slots_and_gives_them_back() {
        let slots = Arc::new(PassSlots::new(8));
        let held: Vec<_> = (0..4).filter_map(|_| slots.enter("ns/slow", 2)).collect();
        assert_eq!(held.len(), 4);
        assert!(
            slots.enter("ns/slow", 2).is_none(),
            "half of 8 with two apps"
        );
        assert!(slots.enter("ns/other", 2).is_some());
        drop(held);
        assert!(slots.enter("ns/slow", 2).is_some());
        // A lone app has them all; never less than one.
        let all: Vec<_> = (0..8).filter_map(|_| slots.enter("ns/a", 1)).collect();
        assert_eq!(all.len(), 8);
        assert!(slots.enter("ns/b", 100).is_some());
    }

    #[test]
    fn a_deleted_link_is_remembered() {
        let deleted = DeletedLinks::default();
        assert!(!deleted.contains("a"));
        deleted.insert("a");
        assert!(deleted.contains("a") && !deleted.contains("b"));
    }

    #[test]
    fn a_failed_cause_waits_and_a_new_cause_does_not() {
        let held = HeldOff::default();
        held.hold("ns/a", 7, Duration::from_secs(60));
        assert!(
            held.remaining("ns/a", 7)
                .is_some_and(|d| d > Duration::from_secs(59))
        );
        assert_eq!(held.remaining("ns/a", 8), None, "another edit runs at once");
        assert_eq!(held.remaining("ns/b", 7), None);
        held.release("ns/a");
        assert_eq!(held.remaining("ns/a", 7), None);
        held.hold("ns/a", 7, Duration::ZERO);
        assert_eq!(held.remaining("ns/a", 7), None, "the back-off has passed");
    }

    #[tokio::test]
    async fn one_pass_at_a_time_per_object_and_no_entry_left_behind() {
        let locks = Arc::new(PassLocks::default());
        let first = locks.hold("ns/a").await;
        let other = locks.hold("ns/b").await;
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _second = locks.hold("ns/a").await;
            }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the second pass waits for the first"
        );
        drop(first);
        waiting.await.unwrap();
        drop(other);
        assert_eq!(locks.len(), 0);
    }

    #[test]
    fn a_cached_version_other_than_the_newest_seen_is_stale() {
        let seen = SeenVersions::default();
        seen.note("u", "41");
        seen.note("u", "40");
        assert!(
            seen.differs("u", "40"),
            "an older event noted late does not win"
        );
        assert!(!seen.differs("u", "41"));
        assert!(
            !seen.differs("u", "42"),
            "the cache is newer than anything noted"
        );
        assert!(!seen.differs("v", "1"), "never seen: trust the cache");
        seen.note("w", "a1");
        assert!(
            seen.differs("w", "a0"),
            "versions that are not numbers: any other is stale"
        );
        seen.bury("u");
        seen.note("u", "43");
        assert!(seen.differs("u", "43"), "a buried object is read again");
        seen.forget("u");
        assert!(!seen.differs("u", "43"));
    }

    #[test]
    fn a_version_the_cache_holds_is_forgotten() {
        let seen = SeenVersions::default();
        // A write returned 7; the watch has shown 6 so far.
        seen.note("u", "7");
        seen.settle("u", "6");
        assert!(seen.differs("u", "6"), "the write is newer than the cache");
        // The watch brings 7 (or anything newer): nothing is left to know.
        seen.settle("u", "7");
        assert!(seen.is_empty());
        assert!(!seen.differs("u", "7"));
        seen.note("w", "a1");
        seen.settle("w", "a0");
        assert!(
            seen.differs("w", "a0"),
            "opaque versions: another one is kept"
        );
        seen.settle("w", "a1");
        assert!(seen.is_empty());
        seen.bury("x");
        seen.settle("x", "9");
        assert!(seen.differs("x", "9"), "a burial stays until a read");
        assert_eq!(seen.len(), 1);
    }
}
