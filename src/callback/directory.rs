//! Callback credentials of every WeComApp, from the app and its Secrets, cached so that a
//! callback never waits on the Kubernetes API.
//!
//! A refresher task walks the controller's WeComApp store every second: an app it has not
//! loaded, or whose generation changed, is loaded at once; every app's Secrets are read
//! again every `secret_recheck` (30-60 s), so a rotated Token or EncodingAESKey is picked up
//! without a restart. Only the first callback of an app the refresher has not seen yet (a
//! fresh WeComApp, typically the URL verification right after it was created) reads the
//! Secrets itself, bounded by `load_timeout`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use tokio::sync::watch;

use super::endpoint::{AppCallback, AppDirectory, Lookup};
use crate::api::WeComApp;
use crate::reconcile::context::{AppError, Context};
use crate::wecom::crypto::CallbackCrypto;

/// Timings of the credential cache.
#[derive(Debug, Clone)]
pub struct DirectorySettings {
    /// How often the app store is walked for new and changed apps.
    pub scan_interval: Duration,
    /// How often each app's Secrets are read again.
    pub secret_recheck: Duration,
    /// Longest a request waits for the first load of an app's credentials.
    pub load_timeout: Duration,
}

impl Default for DirectorySettings {
    fn default() -> Self {
        DirectorySettings {
            scan_interval: Duration::from_secs(1),
            secret_recheck: Duration::from_secs(45),
            load_timeout: Duration::from_secs(2),
        }
    }
}

type AppKey = (String, String);

struct Entry {
    generation: Option<i64>,
    loaded_at: Instant,
    /// `None`: the app has no callback settings, or they are unusable (see `problem`).
    callback: Option<Arc<AppCallback>>,
    /// Keyed hash of the credentials, to tell a rotation from a re-read.
    fingerprint: u64,
    /// What makes the callback settings unusable, for the operator (no secret in it).
    problem: Option<String>,
}

/// Unusable settings are read again this often, so a fix (a Secret created after the app)
/// is picked up quickly; the problem is logged once per change.
const UNUSABLE_RECHECK: Duration = Duration::from_secs(5);

/// The Kubernetes API did not answer while loading credentials; try again. (Unusable
/// settings are not an error: they load as an entry without credentials.) Holds no secret.
#[derive(Debug)]
struct LoadError(String);

/// The Kubernetes-backed [`AppDirectory`].
#[derive(Clone)]
pub struct KubeAppDirectory {
    inner: Arc<Inner>,
}

struct Inner {
    context: Arc<Context>,
    settings: DirectorySettings,
    /// namespace -> app -> entry (nested, so a lookup borrows instead of allocating)
    entries: RwLock<HashMap<String, HashMap<String, Entry>>>,
    /// One first-time load at a time (several requests for a new app read once).
    loading: tokio::sync::Mutex<()>,
    fingerprint_seed: std::collections::hash_map::RandomState,
}

impl KubeAppDirectory {
    pub fn new(context: Arc<Context>, settings: DirectorySettings) -> Self {
        KubeAppDirectory {
            inner: Arc::new(Inner {
                context,
                settings,
                entries: RwLock::new(HashMap::new()),
                loading: tokio::sync::Mutex::new(()),
                fingerprint_seed: Default::default(),
            }),
        }
    }

    /// Refreshes the cache until `stop` turns true.
    pub fn spawn_refresher(&self, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(inner.settings.scan_interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut stopped = std::pin::pin!(until_stopped(stop));
            loop {
                tokio::select! {
                    _ = every.tick() => inner.refresh().await,
                    _ = &mut stopped => return,
                }
            }
        })
    }

    /// Loads every app the store holds now (for tests and start-up).
    pub async fn refresh_now(&self) {
        self.inner.refresh().await;
    }
}

async fn until_stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl AppDirectory for KubeAppDirectory {
    async fn lookup(&self, namespace: &str, app: &str) -> Lookup {
        match self.inner.cached(namespace, app) {
            Some(found) => found,
            None => {
                let key = (namespace.to_string(), app.to_string());
                self.inner.load_first(key).await
            }
        }
    }
}

impl Inner {
    fn cached(&self, namespace: &str, app: &str) -> Option<Lookup> {
        let entries = self.entries.read().ok()?;
        let entry = entries.get(namespace)?.get(app)?;
        Some(match &entry.callback {
            Some(callback) => Lookup::Found(callback.clone()),
            None => Lookup::Unknown,
        })
    }

    /// A callback for an app the refresher has not loaded yet.
    async fn load_first(&self, key: AppKey) -> Lookup {
        // Only apps the controller knows are loaded: a made-up path costs no API call.
        let Some(app) = self.context.app(&key.0, &key.1) else {
            return Lookup::Unknown;
        };
        if app.spec.callback.is_none() {
            return Lookup::Unknown;
        }
        let load = async {
            let _one_at_a_time = self.loading.lock().await;
            if let Some(found) = self.cached(&key.0, &key.1) {
                return found;
            }
            match self.load(&app).await {
                Ok(entry) => {
                    if let Some(problem) = &entry.problem {
                        unusable(&key.0, &key.1, problem);
                    }
                    let found = match &entry.callback {
                        Some(callback) => Lookup::Found(callback.clone()),
                        None => Lookup::Unknown,
                    };
                    if let Ok(mut entries) = self.entries.write() {
                        entries
                            .entry(key.0.clone())
                            .or_default()
                            .insert(key.1.clone(), entry);
                    }
                    found
                }
                Err(_) => Lookup::Unavailable,
            }
        };
        tokio::time::timeout(self.settings.load_timeout, load)
            .await
            .unwrap_or(Lookup::Unavailable)
    }

    /// One pass over the store: load new and changed apps, re-read old Secrets, forget
    /// deleted apps.
    async fn refresh(&self) {
        let apps = self.context.app_store.state();
        let mut due = Vec::new();
        {
            let Ok(entries) = self.entries.read() else {
                return;
            };
            for app in &apps {
                let key = (app.namespace().unwrap_or_default(), app.name_any());
                let stale = match entries.get(&key.0).and_then(|apps| apps.get(&key.1)) {
                    None => true,
                    Some(entry) => {
                        let recheck = if entry.problem.is_some() {
                            UNUSABLE_RECHECK.min(self.settings.secret_recheck)
                        } else {
                            self.settings.secret_recheck
                        };
                        entry.generation != app.metadata.generation
                            || (app.spec.callback.is_some() && entry.loaded_at.elapsed() >= recheck)
                    }
                };
                if stale {
                    due.push((key, app.clone()));
                }
            }
        }
        for (key, app) in due {
            let loaded = tokio::time::timeout(self.settings.load_timeout * 5, self.load(&app))
                .await
                .unwrap_or_else(|_| {
                    Err(LoadError(
                        "the Kubernetes API did not answer in time".into(),
                    ))
                });
            let Ok(mut entries) = self.entries.write() else {
                return;
            };
            match loaded {
                Ok(entry) => {
                    let previous = entries.get(&key.0).and_then(|apps| apps.get(&key.1));
                    let changed = previous.is_none_or(|p| p.fingerprint != entry.fingerprint);
                    if changed && entry.callback.is_some() {
                        tracing::info!(namespace = %key.0, app = %key.1, "callback credentials loaded");
                    }
                    if let Some(problem) = &entry.problem
                        && previous.is_none_or(|p| p.problem.as_ref() != Some(problem))
                    {
                        unusable(&key.0, &key.1, problem);
                    }
                    // Keep the same Arc when nothing changed.
                    let entry = match previous {
                        Some(p) if !changed => Entry {
                            callback: p.callback.clone(),
                            ..entry
                        },
                        _ => entry,
                    };
                    entries.entry(key.0).or_default().insert(key.1, entry);
                }
                Err(LoadError(why)) => {
                    // Keep serving what was loaded before; try again on the next pass.
                    tracing::warn!(namespace = %key.0, app = %key.1, %why, "could not re-read callback credentials; keeping the cached ones");
                }
            }
        }
        if let Ok(mut entries) = self.entries.write() {
            let present: std::collections::HashSet<AppKey> = apps
                .iter()
                .map(|a| (a.namespace().unwrap_or_default(), a.name_any()))
                .collect();
            for (namespace, apps) in entries.iter_mut() {
                apps.retain(|name, _| present.contains(&(namespace.clone(), name.clone())));
            }
            entries.retain(|_, apps| !apps.is_empty());
        }
    }

    /// Reads an app's callback Secrets and builds its crypto. Unusable settings are an
    /// entry without credentials (answered 404), logged with what to fix.
    async fn load(&self, app: &WeComApp) -> Result<Entry, LoadError> {
        let namespace = app.namespace().unwrap_or_default();
        let name = app.name_any();
        let entry = |callback: Option<Arc<AppCallback>>, fingerprint, problem| Entry {
            generation: app.metadata.generation,
            loaded_at: Instant::now(),
            callback,
            fingerprint,
            problem,
        };
        let Some(spec) = &app.spec.callback else {
            return Ok(entry(None, 0, None));
        };
        let read = |reference| self.context.apps.read_secret(&namespace, reference, &name);
        let secrets = async {
            Ok::<_, AppError>((read(&spec.token_ref).await?, read(&spec.aes_key_ref).await?))
        };
        let (token, aes_key) = match secrets.await {
            Ok(secrets) => secrets,
            Err(AppError::Kube { source, .. }) => {
                return Err(LoadError(format!(
                    "reading the callback Secrets of WeComApp {namespace}/{name}: {source}"
                )));
            }
            Err(err) => return Ok(entry(None, 0, Some(err.to_string()))),
        };
        let receive_id = spec
            .receive_id
            .clone()
            .unwrap_or_else(|| app.spec.corp_id.clone());
        let fingerprint = self
            .fingerprint_seed
            .hash_one((&token, &aes_key, &receive_id));
        match CallbackCrypto::new(&token, &aes_key, &receive_id) {
            Ok(crypto) => Ok(entry(
                Some(Arc::new(AppCallback {
                    crypto,
                    corp_id: app.spec.corp_id.clone(),
                    third_party: spec.receive_id.is_some(),
                })),
                fingerprint,
                None,
            )),
            Err(err) => Ok(entry(
                None,
                fingerprint,
                Some(format!(
                    "Secret {}/{} or {}/{}: {err}",
                    spec.token_ref.name,
                    spec.token_ref.key,
                    spec.aes_key_ref.name,
                    spec.aes_key_ref.key
                )),
            )),
        }
    }
}

fn unusable(namespace: &str, name: &str, why: &str) {
    tracing::warn!(
        namespace,
        app = name,
        "callbacks for WeComApp {namespace}/{name} are answered 404 until its callback settings are fixed: {why}"
    );
}
