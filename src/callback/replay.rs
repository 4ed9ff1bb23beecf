//! Remembers which callbacks were already taken, so a replay (the same signature and nonce)
//! or a redelivery (WeCom's retries, the same decrypted event) is answered without being
//! processed twice.
//!
//! Keys are 128-bit keyed hashes (two foldhash hashers with independent random seeds chosen
//! at start), so memory stays small and an accidental collision is out of reach. foldhash
//! is not a cryptographic hash, and need not be: only what carries WeCom's signature is
//! hashed (the endpoint checks the signature first), so nobody without the app's Token can
//! choose the inputs to aim a collision. It is several times faster than SipHash on the
//! decrypted message, which every event hashes. Entries live in two generations
//! that rotate every `period`: an entry is remembered for at least `period` and at most
//! twice that. Each generation holds at most `capacity` keys; when a flood fills it, it
//! rotates early (memory wins over memory of the oldest entries, which the timestamp window
//! refuses anyway once they are old enough).

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use foldhash::SharedSeed;
use foldhash::quality::SeedableRandomState;

/// A remembered callback: a hash of its app and of what identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayKey(u128);

impl std::hash::Hash for ReplayKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a keyed hash: its low half is as good a bucket index as any.
        state.write_u64(self.0 as u64);
    }
}

/// The sets hash [`ReplayKey`]s, which are keyed hashes already: hashing them again would
/// only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (by `ReplayKey`); fold anything else in all the same.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type KeySet = HashSet<ReplayKey, BuildHasherDefault<PassThrough>>;

/// Shards of one generation; a power of two.
const SHARDS: usize = 64;

/// One generation's keys, split over [`SHARDS`] sets by the high half of the key. A set
/// that outgrows its table rehashes all of it at once, in the request that inserted the
/// key: split, each rehash moves a 64th of the keys. Filling one generation to its default
/// million keys, the slowest insert took 0.6 ms split and 29 ms whole (`cargo bench --bench
/// callback_http`), and every callback queued behind it waits that long.
struct KeyTable {
    shards: Vec<KeySet>,
    len: usize,
}

impl Default for KeyTable {
    fn default() -> Self {
        KeyTable {
            shards: (0..SHARDS).map(|_| KeySet::default()).collect(),
            len: 0,
        }
    }
}

impl KeyTable {
    fn index(key: &ReplayKey) -> usize {
        // The low half picks the bucket inside a shard; the high half picks the shard.
        ((key.0 >> 64) as usize) & (SHARDS - 1)
    }

    fn contains(&self, key: &ReplayKey) -> bool {
        self.shards
            .get(Self::index(key))
            .is_some_and(|shard| shard.contains(key))
    }

    fn insert(&mut self, key: ReplayKey) {
        if let Some(shard) = self.shards.get_mut(Self::index(&key))
            && shard.insert(key)
        {
            self.len += 1;
        }
    }

    fn remove(&mut self, key: &ReplayKey) {
        if let Some(shard) = self.shards.get_mut(Self::index(key))
            && shard.remove(key)
        {
            self.len -= 1;
        }
    }

    fn len(&self) -> usize {
        self.len
    }
}

fn random_state() -> SeedableRandomState {
    SeedableRandomState::with_seed(rand::random(), SharedSeed::global_random())
}

/// The set of callbacks seen within the window.
pub struct ReplayGuard {
    seeds: (SeedableRandomState, SeedableRandomState),
    period: Duration,
    capacity: usize,
    generations: Mutex<Generations>,
}

struct Generations {
    current: KeyTable,
    previous: KeyTable,
    started: Instant,
}

impl ReplayGuard {
    /// Remembers keys for at least `period`, at most `capacity` keys per generation.
    pub fn new(period: Duration, capacity: usize) -> Self {
        ReplayGuard {
            seeds: (random_state(), random_state()),
            period,
            capacity: capacity.max(1),
            generations: Mutex::new(Generations {
                current: KeyTable::default(),
                previous: KeyTable::default(),
                started: Instant::now(),
            }),
        }
    }

    /// The key of `parts` (each part length-prefixed, so `("ab", "c")` and `("a", "bc")`
    /// differ).
    pub fn key(&self, parts: &[&[u8]]) -> ReplayKey {
        let mut high = self.seeds.0.build_hasher();
        let mut low = self.seeds.1.build_hasher();
        for part in parts {
            for hasher in [&mut high, &mut low] {
                hasher.write_usize(part.len());
                hasher.write(part);
            }
        }
        ReplayKey((u128::from(high.finish()) << 64) | u128::from(low.finish()))
    }

    pub fn contains(&self, key: ReplayKey) -> bool {
        self.contains_at(key, Instant::now())
    }

    fn contains_at(&self, key: ReplayKey, now: Instant) -> bool {
        let mut generations = self.lock();
        self.rotate_if_due(&mut generations, now);
        generations.current.contains(&key) || generations.previous.contains(&key)
    }

    /// Records every key unless one of them is already known: `true` when they were all new
    /// (the callback is to be processed), `false` for a replay. Atomic, so of two identical
    /// callbacks racing, exactly one is processed.
    pub fn insert_all_new(&self, keys: &[ReplayKey]) -> bool {
        self.insert_all_new_at(keys, Instant::now())
    }

    fn insert_all_new_at(&self, keys: &[ReplayKey], now: Instant) -> bool {
        let mut generations = self.lock();
        self.rotate_if_due(&mut generations, now);
        let known = keys
            .iter()
            .any(|k| generations.current.contains(k) || generations.previous.contains(k));
        if known {
            // Remember the other keys too: a later copy may match on those only.
            for key in keys {
                if !generations.previous.contains(key) {
                    generations.current.insert(*key);
                }
            }
            return false;
        }
        if generations.current.len() + keys.len() > self.capacity {
            Self::rotate(&mut generations, now);
        }
        for key in keys {
            generations.current.insert(*key);
        }
        true
    }

    /// Forgets keys (the callback could not be queued: its retry must be processed).
    pub fn forget(&self, keys: &[ReplayKey]) {
        let mut generations = self.lock();
        for key in keys {
            generations.current.remove(key);
            generations.previous.remove(key);
        }
    }

    /// Keys currently remembered (both generations).
    pub fn len(&self) -> usize {
        let generations = self.lock();
        generations.current.len() + generations.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The sets stay consistent even if a holder panicked: keep serving.
        self.generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn rotate_if_due(&self, generations: &mut Generations, now: Instant) {
        let age = now.saturating_duration_since(generations.started);
        if age >= self.period * 2 {
            generations.previous = KeyTable::default();
            generations.current = KeyTable::default();
            generations.started = now;
        } else if age >= self.period {
            Self::rotate(generations, now);
        }
    }

    fn rotate(generations: &mut Generations, now: Instant) {
        generations.previous = std::mem::take(&mut generations.current);
        generations.started = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_taken_once_and_forgetting_it_lets_it_in_again() {
        let guard = ReplayGuard::new(Duration::from_secs(300), 100);
        let a = guard.key(&[b"app", b"sig", b"nonce"]);
        let b = guard.key(&[b"app", b"content"]);
        assert!(guard.insert_all_new(&[a, b]));
        assert!(!guard.insert_all_new(&[a]));
        assert!(!guard.insert_all_new(&[guard.key(&[b"app", b"sig2", b"n2"]), b]));
        guard.forget(&[a, b]);
        assert!(guard.insert_all_new(&[a, b]));
    }

    #[test]
    fn length_prefixes_keep_parts_apart() {
        let guard = ReplayGuard::new(Duration::from_secs(300), 100);
        assert_ne!(guard.key(&[b"ab", b"c"]), guard.key(&[b"a", b"bc"]));
        assert_eq!(guard.key(&[b"ab", b"c"]), guard.key(&[b"ab", b"c"]));
    }

    #[test]
    fn keys_outlive_one_period_and_are_gone_after_two() {
        let period = Duration::from_secs(300);
        let guard = ReplayGuard::new(period, 100);
        let start = guard.lock().started;
        let key = guard.key(&[b"k"]);
        assert!(guard.insert_all_new_at(&[key], start + Duration::from_secs(299)));
        // The rotation at 300 s moves it to the previous generation: still remembered.
        assert!(guard.contains_at(key, start + Duration::from_secs(301)));
        assert!(guard.contains_at(key, start + Duration::from_secs(599)));
        // The next rotation drops it.
        assert!(!guard.contains_at(key, start + Duration::from_secs(601)));
        // A long silence clears both generations at once.
        assert!(guard.insert_all_new_at(&[key], start + Duration::from_secs(700)));
        assert!(!guard.contains_at(key, start + Duration::from_secs(1301)));
    }

    #[test]
    fn capacity_bounds_memory() {
        let guard = ReplayGuard::new(Duration::from_secs(300), 10);
        for i in 0u32..1000 {
            assert!(guard.insert_all_new(&[guard.key(&[&i.to_be_bytes()])]));
        }
        assert!(guard.len() <= 20, "{}", guard.len());
        // The newest keys are still remembered.
        assert!(guard.contains(guard.key(&[&999u32.to_be_bytes()])));
    }

    #[test]
    fn the_count_follows_inserts_repeats_and_forgets_across_shards() {
        let guard = ReplayGuard::new(Duration::from_secs(300), 100_000);
        let keys: Vec<_> = (0u32..1000)
            .map(|i| guard.key(&[&i.to_be_bytes()]))
            .collect();
        let used: HashSet<usize> = keys.iter().map(KeyTable::index).collect();
        assert_eq!(used.len(), SHARDS, "the keys spread over every shard");
        assert!(guard.insert_all_new(&keys));
        assert_eq!(guard.len(), 1000);
        // A replay of one key and a new one: refused, the new key remembered all the same.
        let fresh = guard.key(&[b"fresh"]);
        assert!(!guard.insert_all_new(&[keys[0], fresh]));
        assert_eq!(guard.len(), 1001);
        guard.forget(&keys[..500]);
        guard.forget(&keys[..500]);
        assert_eq!(guard.len(), 501);
        assert!(keys[..500].iter().all(|k| !guard.contains(*k)));
        assert!(keys[500..].iter().all(|k| guard.contains(*k)));
    }
}
