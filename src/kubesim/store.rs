//! The emulator's state and the apiserver semantics on top of it: one global
//! resourceVersion counter, a bounded change history (what watches resume from and what
//! list snapshots roll back through), optimistic concurrency, generation, the status
//! subresource, deletionTimestamp with finalizers, and the namespace and CRD cleanup the
//! real control plane does in the background.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::managed;
use super::patch::{self, PatchKind};
use super::resources::{self, GenerationRule, ResourceType, View};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, FieldError};
use super::validation;

/// Namespaces every cluster starts with.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];
/// Namespaces the apiserver refuses to delete.
const UNDELETABLE_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];
const NAMESPACE_FINALIZER: &str = "kubernetes";
const CRD_CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";
const CHANGE_FEED_CAPACITY: usize = 4096;

/// How long a change stays in the history (see [`Store::commit`]'s note).
const HISTORY_WINDOW: std::time::Duration = std::time::Duration::from_secs(75);

/// What happened to one object at one resourceVersion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed write, in stored form, with the object as it was before.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    /// When the change was committed (the history keeps a window of time).
    pub at: std::time::Instant,
    pub storage: String,
    pub kind: ChangeKind,
    pub object: Value,
    pub prev: Option<Value>,
}

/// `list` query parameters.
#[derive(Debug, Default)]
pub(crate) struct ListQuery {
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

/// Which changes one watch (or list) sees, and how it presents them.
#[derive(Debug, Clone)]
pub(crate) struct WatchFilter {
    pub resource: ResourceType,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, stored: &Value) -> bool {
        let in_namespace = self
            .namespace
            .as_deref()
            .is_none_or(|ns| namespace_of(stored) == ns);
        in_namespace && self.labels.matches(stored) && self.fields.matches(stored)
    }

    /// The event this watch sends for a change: an object that starts matching the
    /// selectors arrives as ADDED, one that stops matching as DELETED.
    pub fn event_for(&self, change: &Change) -> Option<(&'static str, Value)> {
        if change.storage != self.resource.storage {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.prev.as_ref().is_some_and(|p| self.matches(p));
        let kind = match change.kind {
            ChangeKind::Added if now => "ADDED",
            ChangeKind::Modified if now && before => "MODIFIED",
            ChangeKind::Modified if now => "ADDED",
            ChangeKind::Modified if before => "DELETED",
            ChangeKind::Deleted if now || before => "DELETED",
            _ => return None,
        };
        Some((kind, self.resource.present(&change.object)))
    }
}

/// Where a new watch starts: the events it sends first, then the live feed.
pub(crate) struct WatchStart {
    pub initial: Vec<(&'static str, Value)>,
    pub from_rv: u64,
    pub changes: broadcast::Receiver<Arc<Change>>,
}

/// Options of a write beyond its body.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteScope {
    /// The write goes to the `/status` subresource.
    pub status: bool,
    /// The field manager recorded in managedFields (`fieldManager`, else from the
    /// User-Agent; empty: `unknown`).
    pub manager: String,
    /// Server-side apply with `force=true`: take fields other managers own.
    pub force: bool,
}

impl WriteScope {
    fn writer(&self, apply_config: Option<&Value>) -> managed::Writer {
        managed::Writer {
            manager: if self.manager.is_empty() {
                "unknown".into()
            } else {
                self.manager.clone()
            },
            operation: match apply_config {
                None => managed::Operation::Update,
                Some(config) => managed::Operation::Apply {
                    config: config.clone(),
                    force: self.force,
                },
            },
            status: self.status,
        }
    }
}

pub(crate) struct Store {
    rv: u64,
    /// storage bucket -> "namespace/name" (or "name") -> stored object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    history: VecDeque<Arc<Change>>,
    /// History holds every change with rv > compacted_rv.
    compacted_rv: u64,
    history_limit: usize,
    types: Vec<ResourceType>,
    feed: broadcast::Sender<Arc<Change>>,
}

fn meta(object: &Value) -> &Value {
    &object["metadata"]
}

fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object["metadata"][field].as_str().unwrap_or_default()
}

/// Sets one metadata field, creating `metadata` when missing.
fn set_meta(object: &mut Value, key: &str, value: Value) {
    if let Some(root) = object.as_object_mut() {
        let meta = root.entry("metadata").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(key.into(), value);
        }
    }
}

fn remove_meta(object: &mut Value, key: &str) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove(key);
    }
}

fn namespace_of(object: &Value) -> &str {
    meta_str(object, "namespace")
}

fn finalizers(object: &Value) -> Vec<String> {
    meta(object)["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn is_deleting(object: &Value) -> bool {
    !meta_str(object, "deletionTimestamp").is_empty()
}

/// Sets deletionTimestamp on an object whose finalizers hold its deletion. Like the
/// apiserver's markAsDeleting, this bumps a tracked generation.
fn mark_deleting(object: &Value) -> Value {
    let mut marked = object.clone();
    if let Some(generation) = meta(object)["generation"].as_i64().filter(|g| *g > 0) {
        set_meta(&mut marked, "generation", (generation + 1).into());
    }
    set_meta(&mut marked, "deletionTimestamp", now_rfc3339().into());
    set_meta(&mut marked, "deletionGracePeriodSeconds", 0.into());
    marked
}

fn path_of(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let prefix: String = prefix.chars().take(58).collect();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// Keeps the ObjectMeta fields the apiserver round-trips and drops empty ones, as
/// decoding into the typed ObjectMeta does. managedFields are kept here; writes replace
/// what a client sent with the server's own (see `managed`).
fn normalize_metadata(object: &mut Value) {
    const KEPT: &[&str] = &[
        "name",
        "generateName",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    ];
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    meta.retain(|k, v| {
        KEPT.contains(&k.as_str())
            && match v {
                Value::Null => false,
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !o.is_empty(),
                _ => true,
            }
    });
}

/// Continue tokens carry the snapshot's resourceVersion and the last key returned.
fn encode_continue(rv: u64, last_path: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last_path}\u{0}")});
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, String), ApiError> {
    let invalid = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| invalid())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| invalid())?;
    let rv = v["rv"].as_u64().ok_or_else(invalid)?;
    let start = v["start"].as_str().ok_or_else(invalid)?;
    Ok((rv, start.trim_end_matches('\u{0}').to_string()))
}

fn parse_rv(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(format!("invalid resourceVersion {text:?}: not a number"))
    })
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (feed, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        let mut store = Self {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted_rv: 0,
            history_limit: history_limit.max(1),
            types: resources::builtin_types(),
            feed,
        };
        for name in INITIAL_NAMESPACES {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            if let Some(rt) = store.find_type("", "v1", "namespaces")
                && let Err(e) = store.create(&rt, None, ns)
            {
                tracing::error!(namespace = name, error = %e.message, "kubesim could not create an initial namespace");
            }
        }
        store
    }

    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    #[cfg(test)]
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// Forgets every change so far: resuming a watch or continuing a list from an older
    /// resourceVersion now answers 410 Expired, as after an etcd compaction.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_rv = self.rv;
    }

    fn bucket(&self, storage: &str) -> Option<&BTreeMap<String, Value>> {
        self.objects.get(storage)
    }

    fn stored(&self, rt: &ResourceType, namespace: &str, name: &str) -> Option<&Value> {
        self.bucket(&rt.storage)?.get(&path_of(namespace, name))
    }

    fn not_found(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::not_found(&rt.group, &rt.plural, name)
    }

    fn commit(
        &mut self,
        storage: &str,
        kind: ChangeKind,
        mut object: Value,
        prev: Option<Value>,
    ) -> Value {
        self.rv += 1;
        set_meta(
            &mut object,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        let path = path_of(namespace_of(&object), meta_str(&object, "name"));
        let bucket = self.objects.entry(storage.to_string()).or_default();
        if kind == ChangeKind::Deleted {
            bucket.remove(&path);
        } else {
            bucket.insert(path, object.clone());
        }
        let change = Arc::new(Change {
            rv: self.rv,
            at: std::time::Instant::now(),
            storage: storage.to_string(),
            kind,
            object: object.clone(),
            prev,
        });
        self.history.push_back(change.clone());
        // The apiserver's watch cache keeps the changes of the last 75 s (its dynamic size,
        // up to 102,400 events), and etcd the last 5 minutes for list continuations: at
        // 700 writes a second a resumed watch or a paged list of 10,000 objects still gets
        // what it asks for. A window of a fixed 1,000 changes answered 410 within 1.5 s,
        // and every client relisted everything.
        while self.history.len() > self.history_limit
            || self
                .history
                .front()
                .is_some_and(|c| c.at.elapsed() > HISTORY_WINDOW)
        {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        // No receiver is not an error: nobody is watching.
        let _ = self.feed.send(change);
        object
    }

    /// The objects of one bucket as they were at `rv`, rolled back through the history:
    /// borrowed, so each page of a paged list of 10,000 objects costs a map of references,
    /// not a copy of every object (which held the store's lock for seconds).
    fn snapshot(
        &self,
        storage: &str,
        rv: u64,
    ) -> Result<BTreeMap<std::borrow::Cow<'_, str>, &Value>, ApiError> {
        let mut objects: BTreeMap<std::borrow::Cow<'_, str>, &Value> = self
            .bucket(storage)
            .map(|bucket| {
                bucket
                    .iter()
                    .map(|(path, object)| (std::borrow::Cow::Borrowed(path.as_str()), object))
                    .collect()
            })
            .unwrap_or_default();
        if rv >= self.rv {
            return Ok(objects);
        }
        if rv < self.compacted_rv {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.compacted_rv
            )));
        }
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            if change.storage != storage {
                continue;
            }
            let path = path_of(
                namespace_of(&change.object),
                meta_str(&change.object, "name"),
            );
            match &change.prev {
                Some(prev) => {
                    objects.insert(std::borrow::Cow::Owned(path), prev);
                }
                None => {
                    objects.remove(path.as_str());
                }
            }
        }
        Ok(objects)
    }

    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.stored(rt, namespace, name)
            .map(|o| rt.present(o))
            .ok_or_else(|| Self::not_found(rt, name))
    }

    pub fn list(&self, filter: &WatchFilter, query: &ListQuery) -> Result<Value, ApiError> {
        let rt = &filter.resource;
        let (at, start) = match &query.continue_token {
            Some(token) => {
                if query
                    .resource_version
                    .as_deref()
                    .is_some_and(|v| !v.is_empty())
                {
                    return Err(ApiError::bad_request(
                        "specifying resource version is not allowed when using continue",
                    ));
                }
                let (rv, start) = decode_continue(token)?;
                if rv < self.compacted_rv {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some(start))
            }
            None => {
                let exact = match query.resource_version_match.as_deref() {
                    None | Some("") | Some("NotOlderThan") => false,
                    Some("Exact") => true,
                    Some(other) => {
                        return Err(ApiError::bad_request(format!(
                            "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                        )));
                    }
                };
                match query.resource_version.as_deref() {
                    None | Some("")
                        if query
                            .resource_version_match
                            .as_deref()
                            .is_some_and(|m| !m.is_empty()) =>
                    {
                        return Err(ApiError::bad_request(
                            "resourceVersionMatch is forbidden unless resourceVersion is provided",
                        ));
                    }
                    None | Some("") => (self.rv, None),
                    Some("0") if exact => {
                        return Err(ApiError::bad_request(
                            "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                        ));
                    }
                    Some(text) => {
                        let rv = parse_rv(text)?;
                        if rv > self.rv {
                            return Err(ApiError::too_large_resource_version(rv, self.rv));
                        }
                        (if exact { rv } else { self.rv }, None)
                    }
                }
            }
        };
        let objects = self.snapshot(&rt.storage, at)?;
        let mut matching = objects
            .iter()
            .filter(|(path, _)| start.as_ref().is_none_or(|s| path.as_ref() > s.as_str()))
            .filter(|(_, o)| filter.matches(o));
        let mut items = Vec::new();
        let mut last_path = start.clone().unwrap_or_default();
        let limit = query.limit.filter(|l| *l > 0);
        for (path, object) in matching.by_ref() {
            if limit.is_some_and(|l| items.len() >= l) {
                break;
            }
            let mut item = rt.present(object);
            if !rt.custom
                && let Some(map) = item.as_object_mut()
            {
                map.remove("apiVersion");
                map.remove("kind");
            }
            items.push(item);
            last_path = path.to_string();
        }
        let remaining = objects
            .iter()
            .filter(|(path, _)| path.as_ref() > last_path.as_str())
            .filter(|(_, o)| filter.matches(o))
            .count();
        let mut metadata = json!({"resourceVersion": at.to_string()});
        if limit.is_some() && remaining > 0 {
            metadata["continue"] = encode_continue(at, &last_path).into();
            if filter.labels.is_empty() && filter.fields.is_empty() {
                metadata["remainingItemCount"] = remaining.into();
            }
        }
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    /// Starts a watch. `resource_version` "" and "0" begin with ADDED for every current
    /// object; a number N replays the retained changes after N (410 if they are gone).
    pub fn watch(
        &self,
        filter: &WatchFilter,
        resource_version: Option<&str>,
        send_initial_events: Option<bool>,
    ) -> Result<WatchStart, ApiError> {
        let changes = self.feed.subscribe();
        let initial = match resource_version.unwrap_or_default() {
            "" | "0" if send_initial_events != Some(false) => self
                .bucket(&filter.resource.storage)
                .into_iter()
                .flat_map(|b| b.values())
                .filter(|o| filter.matches(o))
                .map(|o| ("ADDED", filter.resource.present(o)))
                .collect(),
            "" | "0" => Vec::new(),
            text => {
                let rv = parse_rv(text)?;
                if rv > self.rv {
                    return Err(ApiError::too_large_resource_version(rv, self.rv));
                }
                if rv < self.compacted_rv {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {rv} ({})",
                        self.compacted_rv
                    )));
                }
                self.history
                    .iter()
                    .filter(|c| c.rv > rv)
                    .filter_map(|c| filter.event_for(c))
                    .collect()
            }
        };
        Ok(WatchStart {
            initial,
            from_rv: self.rv,
            changes,
        })
    }

    /// Decodes a request body's object for this type, checking apiVersion and kind.
    fn ingest_body(rt: &ResourceType, body: Value) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(format!(
                "the body of the request is not a {} object",
                rt.kind
            )));
        }
        let api_version = body["apiVersion"].as_str().unwrap_or_default();
        if !api_version.is_empty() && api_version != rt.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
        let kind = body["kind"].as_str().unwrap_or_default();
        if !kind.is_empty() && kind != rt.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                rt.kind
            )));
        }
        let mut served = body;
        served["apiVersion"] = rt.api_version().into();
        served["kind"] = rt.kind.clone().into();
        Ok(served)
    }

    /// Checks that hold for every create and update of a type.
    fn validate(rt: &ResourceType, stored: &Value) -> Result<(), ApiError> {
        let mut errors = validation::object_meta(meta(stored), rt.name_rule);
        if rt.view == View::EventsV1 {
            errors.extend(validation::events_v1(&rt.present(stored)));
        }
        if rt.group == "apiextensions.k8s.io" {
            errors.extend(validate_crd(stored));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(
                &rt.group,
                &rt.kind,
                meta_str(stored, "name"),
                errors,
            ))
        }
    }

    pub fn create(
        &mut self,
        rt: &ResourceType,
        path_namespace: Option<&str>,
        body: Value,
    ) -> Result<Value, ApiError> {
        self.create_with(rt, path_namespace, body, &WriteScope::default(), None)
    }

    /// POST (or an apply that creates, with its configuration), recorded in managedFields
    /// for `scope`'s manager.
    pub fn create_with(
        &mut self,
        rt: &ResourceType,
        path_namespace: Option<&str>,
        body: Value,
        scope: &WriteScope,
        apply_config: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let served = Self::ingest_body(rt, body)?;
        let mut object = rt.ingest(&served);
        let body_ns = meta_str(&object, "namespace").to_string();
        let namespace = if rt.namespaced {
            let ns = path_namespace.unwrap_or_default();
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            ns.to_string()
        } else {
            String::new()
        };
        if !meta_str(&object, "resourceVersion").is_empty() {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if namespace.is_empty() {
            remove_meta(&mut object, "namespace");
        } else {
            set_meta(&mut object, "namespace", namespace.clone().into());
        }
        let name = match meta_str(&object, "name") {
            "" => {
                let prefix = meta_str(&object, "generateName");
                if prefix.is_empty() {
                    return Err(ApiError::invalid(
                        &rt.group,
                        &rt.kind,
                        "",
                        vec![FieldError::required(
                            "metadata.name",
                            "name or generateName is required",
                        )],
                    ));
                }
                generated_name(prefix)
            }
            name => name.to_string(),
        };
        set_meta(&mut object, "name", name.clone().into());
        set_meta(&mut object, "uid", new_uid().into());
        set_meta(&mut object, "creationTimestamp", now_rfc3339().into());
        for server_owned in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            remove_meta(&mut object, server_owned);
        }
        if rt.generation != GenerationRule::Untracked {
            set_meta(&mut object, "generation", 1.into());
        } else {
            remove_meta(&mut object, "generation");
        }
        normalize_metadata(&mut object);
        if rt.status_subresource && rt.custom {
            remove_key(&mut object, "status");
        }
        self.prepare_builtin_create(rt, &mut object)?;
        Self::validate(rt, &object)?;
        if rt.namespaced {
            match self
                .objects
                .get("namespaces")
                .and_then(|b| b.get(&namespace))
            {
                None => return Err(ApiError::not_found("", "namespaces", &namespace)),
                Some(ns) if is_deleting(ns) => {
                    return Err(ApiError::forbidden(format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                        super::status::qualified(&rt.group, &rt.plural)
                    )));
                }
                Some(_) => {}
            }
        }
        if self.stored(rt, &namespace, &name).is_some() {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        managed::record(
            None,
            &mut object,
            &scope.writer(apply_config),
            rt,
            &now_rfc3339(),
        )?;
        let created = self.commit(&rt.storage.clone(), ChangeKind::Added, object, None);
        if rt.group == "apiextensions.k8s.io" {
            self.establish_crd(&created);
            return Ok(rt.present(self.stored(rt, "", &name).unwrap_or(&created)));
        }
        Ok(rt.present(&created))
    }

    /// Defaults and conversions the built-in kinds' create strategies apply.
    fn prepare_builtin_create(
        &self,
        rt: &ResourceType,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") => {
                object["spec"] = json!({"finalizers": [NAMESPACE_FINALIZER]});
                object["status"] = json!({"phase": "Active"});
            }
            ("", "secrets") => prepare_secret(object)?,
            ("apiextensions.k8s.io", _) => remove_key(object, "status"),
            _ => {}
        }
        Ok(())
    }

    /// What the CRD controllers do right after a create: accept the names, mark the CRD
    /// Established, and start serving its resource.
    fn establish_crd(&mut self, crd: &Value) {
        let mut established = crd.clone();
        let storage_version = crd["spec"]["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["storage"].as_bool() == Some(true)))
            .and_then(|v| v["name"].as_str())
            .unwrap_or_default()
            .to_string();
        let now = now_rfc3339();
        established["status"] = json!({
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now,
                 "reason": "NoConflicts", "message": "no conflicts found"},
                {"type": "Established", "status": "True", "lastTransitionTime": now,
                 "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
            ],
            "acceptedNames": crd["spec"]["names"].clone(),
            "storedVersions": [storage_version],
        });
        let stored = self.commit(
            "customresourcedefinitions.apiextensions.k8s.io",
            ChangeKind::Modified,
            established,
            Some(crd.clone()),
        );
        self.serve_crd(&stored);
    }

    fn serve_crd(&mut self, crd: &Value) {
        let served = resources::types_from_crd(crd);
        if let Some(first) = served.first() {
            let storage = first.storage.clone();
            self.types.retain(|t| t.storage != storage);
        }
        self.types.extend(served);
    }

    /// PUT: replace the object (or only its status, for `/status`).
    pub fn replace(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        body: Value,
        scope: WriteScope,
    ) -> Result<Value, ApiError> {
        let served = Self::ingest_body(rt, body)?;
        let candidate = rt.ingest(&served);
        let old = self
            .stored(rt, namespace, name)
            .cloned()
            .ok_or_else(|| Self::not_found(rt, name))?;
        self.write_existing(rt, old, candidate, scope, true, None)
    }

    /// PATCH in any of the four formats; apply may create the object.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        scope: WriteScope,
        field_manager: Option<&str>,
    ) -> Result<Value, ApiError> {
        if kind == PatchKind::Strategic && rt.custom {
            return Err(ApiError::unsupported_media_type(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        let old = self.stored(rt, namespace, name).cloned();
        if kind == PatchKind::Apply {
            return self.server_side_apply(rt, namespace, name, body, scope, field_manager, old);
        }
        let old = old.ok_or_else(|| Self::not_found(rt, name))?;
        let mut served = rt.present(&old);
        if kind == PatchKind::Json {
            patch::json_patch(&mut served, body)?;
        } else {
            let patch_doc: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            if !patch_doc.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            if kind == PatchKind::Merge {
                patch::merge_patch(&mut served, &patch_doc);
            } else {
                patch::strategic_merge_patch(&mut served, &patch_doc);
            }
        }
        let candidate = rt.ingest(&served);
        self.write_existing(rt, old, candidate, scope, false, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn server_side_apply(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        body: &[u8],
        scope: WriteScope,
        field_manager: Option<&str>,
        old: Option<Value>,
    ) -> Result<Value, ApiError> {
        field_manager.filter(|m| !m.is_empty()).ok_or_else(|| {
            ApiError::invalid(
                "meta.k8s.io",
                "PatchOptions",
                "",
                vec![FieldError::required(
                    "fieldManager",
                    "is required for apply patch",
                )],
            )
        })?;
        // An apply configuration is YAML, and JSON is YAML: clients send JSON mostly, read
        // with the faster parser first.
        let applied: Value = match serde_json::from_slice(body) {
            Ok(json) => json,
            Err(_) => crate::yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        };
        if applied["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
            || applied["kind"].as_str().unwrap_or_default().is_empty()
        {
            return Err(ApiError::bad_request(
                "apiVersion and kind must be set in an apply configuration",
            ));
        }
        let mut applied = Self::ingest_body(rt, applied)?;
        if meta_str(&applied, "name").is_empty() {
            set_meta(&mut applied, "name", name.into());
        }
        let applied_name = meta_str(&applied, "name");
        if applied_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({applied_name}) does not match the name on the URL ({name})"
            )));
        }
        let config = rt.ingest(&applied);
        let writer = scope.writer(Some(&config));
        // The apiserver refuses a configuration whose keyed lists cannot merge before
        // anything else.
        let claimed = managed::applied_fields(&config, rt, &writer)?;
        match old {
            None if scope.status => Err(Self::not_found(rt, name)),
            None => {
                let mut fresh = applied.clone();
                remove_key(&mut fresh, "status");
                self.create_with(
                    rt,
                    Some(namespace).filter(|n| !n.is_empty()),
                    fresh,
                    &scope,
                    Some(&config),
                )
            }
            Some(old) => {
                let mut served = rt.present(&old);
                patch::apply(&mut served, &applied, &rt.shape);
                if meta_str(&applied, "resourceVersion").is_empty() {
                    set_meta(
                        &mut served,
                        "resourceVersion",
                        meta(&old)["resourceVersion"].clone(),
                    );
                }
                let mut candidate = rt.ingest(&served);
                managed::prune(&mut candidate, &old, &writer, &claimed, rt);
                self.write_existing(rt, old, candidate, scope, false, Some(&config))
            }
        }
    }

    /// The update path every write to an existing object goes through.
    fn write_existing(
        &mut self,
        rt: &ResourceType,
        old: Value,
        candidate: Value,
        scope: WriteScope,
        is_put: bool,
        apply_config: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let name = meta_str(&old, "name").to_string();
        let namespace = namespace_of(&old).to_string();
        let cand_name = meta_str(&candidate, "name");
        if !cand_name.is_empty() && cand_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({cand_name}) does not match the name on the URL ({name})"
            )));
        }
        let cand_ns = namespace_of(&candidate);
        if !cand_ns.is_empty() && cand_ns != namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let old_rv = meta_str(&old, "resourceVersion").to_string();
        let cand_rv = meta_str(&candidate, "resourceVersion");
        if cand_rv.is_empty() {
            if is_put && !rt.unconditional_update {
                return Err(ApiError::invalid(
                    &rt.group,
                    &rt.kind,
                    &name,
                    vec![FieldError::invalid(
                        "metadata.resourceVersion",
                        "0x0",
                        "must be specified for an update",
                    )],
                ));
            }
        } else if cand_rv != old_rv {
            return Err(ApiError::stale_resource_version(
                &rt.group, &rt.plural, &name,
            ));
        }

        if !scope.status {
            let mut immutable = Vec::new();
            let cand_uid = meta_str(&candidate, "uid");
            if !cand_uid.is_empty() && cand_uid != meta_str(&old, "uid") {
                immutable.push(FieldError::invalid(
                    "metadata.uid",
                    cand_uid,
                    "field is immutable",
                ));
            }
            let cand_deletion = meta_str(&candidate, "deletionTimestamp");
            if !cand_deletion.is_empty() && !is_deleting(&old) {
                immutable.push(FieldError::invalid(
                    "metadata.deletionTimestamp",
                    cand_deletion,
                    "field is immutable; may only be changed via deletion",
                ));
            }
            if !immutable.is_empty() {
                return Err(ApiError::invalid(&rt.group, &rt.kind, &name, immutable));
            }
        }
        let mut new = if scope.status {
            let mut new = old.clone();
            match candidate.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => remove_key(&mut new, "status"),
            }
            new
        } else {
            let mut new = candidate;
            if rt.status_subresource {
                match old.get("status") {
                    Some(status) => new["status"] = status.clone(),
                    None => remove_key(&mut new, "status"),
                }
            }
            new
        };
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        for kept in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match meta(&old).get(kept) {
                Some(v) => set_meta(&mut new, kept, v.clone()),
                None => remove_meta(&mut new, kept),
            }
        }
        normalize_metadata(&mut new);
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") => new["spec"] = old["spec"].clone(),
            ("", "secrets") => prepare_secret(&mut new)?,
            _ => {}
        }

        if is_deleting(&old) {
            let before = finalizers(&old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    &rt.group,
                    &rt.kind,
                    &name,
                    vec![FieldError::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        Self::validate(rt, &new)?;

        let spec_changed = match rt.generation {
            GenerationRule::Untracked => false,
            GenerationRule::Spec => old.get("spec") != new.get("spec"),
            GenerationRule::AllButMetadataAndStatus => {
                let strip = |o: &Value| {
                    let mut o = o.clone();
                    for k in ["metadata", "status", "apiVersion", "kind"] {
                        remove_key(&mut o, k);
                    }
                    o
                };
                strip(&old) != strip(&new)
            }
        };
        if spec_changed {
            let generation = meta(&old)["generation"].as_i64().unwrap_or(0) + 1;
            set_meta(&mut new, "generation", generation.into());
        }

        // managedFields are the server's: what a client sent back is not kept.
        match meta(&old).get("managedFields") {
            Some(fields) => set_meta(&mut new, "managedFields", fields.clone()),
            None => remove_meta(&mut new, "managedFields"),
        }
        managed::record(
            Some(&old),
            &mut new,
            &scope.writer(apply_config),
            rt,
            &now_rfc3339(),
        )?;
        if new == old {
            // A write that changes nothing, not even who owns what, is not a change: same
            // resourceVersion, no event.
            return Ok(rt.present(&old));
        }
        let storage = rt.storage.clone();
        let result = if is_deleting(&new) && finalizers(&new).is_empty() {
            // The apiserver deletes the stored object instead of writing the update: the
            // DELETED event and the response carry the object as it was stored.
            self.commit(&storage, ChangeKind::Deleted, old.clone(), Some(old))
        } else {
            self.commit(&storage, ChangeKind::Modified, new, Some(old))
        };
        if rt.group == "apiextensions.k8s.io"
            && !is_deleting(&result)
            && result.get("status").is_some()
        {
            self.serve_crd(&result);
        }
        self.reap();
        Ok(rt.present(&result))
    }

    /// DELETE one object. Objects with finalizers only get a deletionTimestamp.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        options: &Value,
    ) -> Result<Value, ApiError> {
        let old = self
            .stored(rt, namespace, name)
            .cloned()
            .ok_or_else(|| Self::not_found(rt, name))?;
        let preconditions = &options["preconditions"];
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(expected) = preconditions[field].as_str() {
                let actual = meta_str(&old, field);
                if expected != actual {
                    return Err(ApiError::conflict(
                        &rt.group,
                        &rt.plural,
                        name,
                        &format!(
                            "Precondition failed: {label} in precondition: {expected}, {label} in object meta: {actual}"
                        ),
                    ));
                }
            }
        }
        let is_namespace = rt.group.is_empty() && rt.plural == "namespaces";
        if is_namespace && UNDELETABLE_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        if is_deleting(&old) {
            return Ok(rt.present(&old));
        }
        let storage = rt.storage.clone();
        let mut marked = mark_deleting(&old);
        if is_namespace {
            marked["status"]["phase"] = "Terminating".into();
        } else if rt.group == "apiextensions.k8s.io" {
            let mut f = finalizers(&marked);
            f.push(CRD_CLEANUP_FINALIZER.into());
            set_meta(&mut marked, "finalizers", json!(f));
        } else if finalizers(&old).is_empty() {
            let uid = meta_str(&old, "uid").to_string();
            self.commit(&storage, ChangeKind::Deleted, old.clone(), Some(old));
            return Ok(json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": uid},
            }));
        }
        let result = self.commit(&storage, ChangeKind::Modified, marked, Some(old));
        self.reap();
        let current = self.stored(rt, namespace, name).cloned().unwrap_or(result);
        Ok(rt.present(&current))
    }

    /// DELETE on a collection: deletes every matching object, returns them as a list.
    pub fn delete_collection(&mut self, filter: &WatchFilter) -> Result<Value, ApiError> {
        let rt = filter.resource.clone();
        let targets: Vec<(String, String)> = self
            .bucket(&rt.storage)
            .into_iter()
            .flat_map(|b| b.values())
            .filter(|o| filter.matches(o))
            .map(|o| (namespace_of(o).to_string(), meta_str(o, "name").to_string()))
            .collect();
        let mut items = Vec::new();
        for (ns, name) in targets {
            let before = self.stored(&rt, &ns, &name).cloned();
            self.delete(&rt, &ns, &name, &Value::Null)?;
            let after = self.stored(&rt, &ns, &name).cloned().or(before);
            if let Some(o) = after {
                items.push(rt.present(&o));
            }
        }
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        }))
    }

    /// Deletion of one stored object from a cleanup pass: a deletionTimestamp when it has
    /// finalizers, removal otherwise.
    fn cascade_delete(&mut self, storage: &str, path: &str) {
        let Some(old) = self.objects.get(storage).and_then(|b| b.get(path)).cloned() else {
            return;
        };
        if is_deleting(&old) {
            return;
        }
        if finalizers(&old).is_empty() {
            self.commit(storage, ChangeKind::Deleted, old.clone(), Some(old));
        } else {
            let marked = mark_deleting(&old);
            self.commit(storage, ChangeKind::Modified, marked, Some(old));
        }
    }

    /// The namespace controller and the CRD finalizer, run to completion after each
    /// write: a terminating namespace or CRD has its content deleted (respecting the
    /// content's finalizers) and goes away once it is empty.
    fn reap(&mut self) {
        loop {
            let mut progressed = false;
            let terminating_namespaces: Vec<Value> = self
                .objects
                .get("namespaces")
                .into_iter()
                .flat_map(|b| b.values())
                .filter(|ns| is_deleting(ns))
                .cloned()
                .collect();
            for ns in terminating_namespaces {
                let name = meta_str(&ns, "name").to_string();
                let prefix = format!("{name}/");
                let content: Vec<(String, String)> = self
                    .objects
                    .iter()
                    .flat_map(|(storage, b)| {
                        b.keys()
                            .filter(|p| p.starts_with(&prefix))
                            .map(move |p| (storage.clone(), p.clone()))
                    })
                    .collect();
                if content.is_empty() {
                    let mut done = ns.clone();
                    let spec_finalizers = done["spec"]["finalizers"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if spec_finalizers.iter().any(|f| f == NAMESPACE_FINALIZER) {
                        done["spec"]["finalizers"] = json!([]);
                    }
                    let kind = if finalizers(&done).is_empty() {
                        ChangeKind::Deleted
                    } else {
                        ChangeKind::Modified
                    };
                    if kind == ChangeKind::Deleted || done != ns {
                        self.commit("namespaces", kind, done, Some(ns));
                        progressed = true;
                    }
                } else {
                    // The namespace controller promises no order: neither may tests.
                    let mut content = content;
                    rand::seq::SliceRandom::shuffle(
                        content.as_mut_slice(),
                        &mut rand::thread_rng(),
                    );
                    for (storage, path) in content {
                        let before = self.rv;
                        self.cascade_delete(&storage, &path);
                        progressed |= self.rv != before;
                    }
                }
            }
            let crd_storage = "customresourcedefinitions.apiextensions.k8s.io";
            let terminating_crds: Vec<Value> = self
                .objects
                .get(crd_storage)
                .into_iter()
                .flat_map(|b| b.values())
                .filter(|c| {
                    is_deleting(c) && finalizers(c).iter().any(|f| f == CRD_CLEANUP_FINALIZER)
                })
                .cloned()
                .collect();
            for crd in terminating_crds {
                let group = crd["spec"]["group"].as_str().unwrap_or_default();
                let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default();
                let storage = super::status::qualified(group, plural);
                self.types.retain(|t| t.storage != storage);
                let content: Vec<String> = self
                    .objects
                    .get(&storage)
                    .map(|b| b.keys().cloned().collect())
                    .unwrap_or_default();
                if content.is_empty() {
                    let mut done = crd.clone();
                    let rest: Vec<String> = finalizers(&crd)
                        .into_iter()
                        .filter(|f| f != CRD_CLEANUP_FINALIZER)
                        .collect();
                    set_meta(&mut done, "finalizers", json!(rest));
                    normalize_metadata(&mut done);
                    let kind = if rest.is_empty() {
                        ChangeKind::Deleted
                    } else {
                        ChangeKind::Modified
                    };
                    self.commit(crd_storage, kind, done, Some(crd));
                    progressed = true;
                } else {
                    for path in content {
                        let before = self.rv;
                        self.cascade_delete(&storage, &path);
                        progressed |= self.rv != before;
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }
}

fn remove_key(object: &mut Value, key: &str) {
    if let Some(map) = object.as_object_mut() {
        map.remove(key);
    }
}

/// Secret strategy: `stringData` is folded into `data` (base64), data must be base64,
/// `type` defaults to Opaque.
fn prepare_secret(secret: &mut Value) -> Result<(), ApiError> {
    let engine = base64::engine::general_purpose::STANDARD;
    if let Some(Value::Object(string_data)) =
        secret.as_object_mut().and_then(|m| m.remove("stringData"))
    {
        if !secret["data"].is_object() {
            secret["data"] = json!({});
        }
        for (key, value) in string_data {
            let text = value.as_str().unwrap_or_default();
            secret["data"][key] = engine.encode(text).into();
        }
    }
    if let Some(data) = secret["data"].as_object() {
        for (key, value) in data {
            let ok = value.as_str().is_some_and(|v| engine.decode(v).is_ok());
            if !ok {
                return Err(ApiError::bad_request(format!(
                    "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data[{key:?}]"
                )));
            }
        }
    }
    if secret["type"].as_str().unwrap_or_default().is_empty() {
        secret["type"] = "Opaque".into();
    }
    Ok(())
}

fn validate_crd(crd: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = &crd["spec"];
    let text = |p: &str| spec.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let (group, plural, kind) = (text("/group"), text("/names/plural"), text("/names/kind"));
    if group.is_empty() {
        errors.push(FieldError::required("spec.group", ""));
    }
    if plural.is_empty() {
        errors.push(FieldError::required("spec.names.plural", ""));
    }
    if kind.is_empty() {
        errors.push(FieldError::required("spec.names.kind", ""));
    }
    let name = meta_str(crd, "name");
    if name != format!("{plural}.{group}") {
        errors.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let scope = text("/scope");
    if scope != "Namespaced" && scope != "Cluster" {
        errors.push(FieldError::unsupported(
            "spec.scope",
            scope,
            &["Cluster", "Namespaced"],
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let storage = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .count();
    if storage != 1 {
        errors.push(FieldError::invalid(
            "spec.versions",
            &storage.to_string(),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, version) in versions.iter().enumerate() {
        if let Some(schema) = version.pointer("/schema/openAPIV3Schema") {
            let at = format!("spec.versions[{i}].schema.openAPIV3Schema");
            for (field, detail) in super::schema::list_map_key_errors(schema, &at) {
                errors.push(FieldError::required(&field, detail));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_crd() -> (Store, ResourceType) {
        let mut store = Store::new(100);
        let crd_type = store
            .find_type("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .unwrap();
        let crd = json!({"metadata": {"name": "things.g.dev"}, "spec": {"group": "g.dev",
            "scope": "Namespaced", "names": {"plural": "things", "kind": "Thing"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}});
        store.create(&crd_type, None, crd).unwrap();
        let rt = store.find_type("g.dev", "v1", "things").unwrap();
        (store, rt)
    }

    fn thing(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"x": 1}, "status": {"s": 1}})
    }

    #[test]
    fn create_sets_server_fields_and_drops_status() {
        let (mut store, rt) = store_with_crd();
        let created = store.create(&rt, Some("default"), thing("a")).unwrap();
        assert_eq!(created["metadata"]["generation"], 1);
        assert_eq!(created["metadata"]["uid"].as_str().unwrap().len(), 36);
        assert!(created.get("status").is_none());
        assert_eq!(
            store
                .create(&rt, Some("default"), thing("a"))
                .unwrap_err()
                .reason,
            "AlreadyExists"
        );
        assert_eq!(
            store
                .create(&rt, Some("nope"), thing("b"))
                .unwrap_err()
                .code,
            404
        );
    }

    #[test]
    fn list_snapshot_rolls_back_and_expires_after_compaction() {
        let (mut store, rt) = store_with_crd();
        store.create(&rt, Some("default"), thing("a")).unwrap();
        let at = store.current_rv();
        store.create(&rt, Some("default"), thing("b")).unwrap();
        let filter = WatchFilter {
            resource: rt.clone(),
            namespace: None,
            labels: LabelSelector::default(),
            fields: FieldSelector::default(),
        };
        let exact = ListQuery {
            resource_version: Some(at.to_string()),
            resource_version_match: Some("Exact".into()),
            ..Default::default()
        };
        assert_eq!(
            store.list(&filter, &exact).unwrap()["items"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        store.compact();
        assert_eq!(store.list(&filter, &exact).unwrap_err().code, 410);
    }

    #[test]
    fn updates_cannot_change_uid_or_set_deletion_timestamp() {
        let (mut store, rt) = store_with_crd();
        store.create(&rt, Some("default"), thing("a")).unwrap();
        for patch in [
            br#"{"metadata":{"uid":"00000000-0000-4000-8000-000000000000"}}"#.as_slice(),
            br#"{"metadata":{"deletionTimestamp":"2024-01-01T00:00:00Z"}}"#.as_slice(),
        ] {
            let err = store
                .patch(
                    &rt,
                    "default",
                    "a",
                    PatchKind::Merge,
                    patch,
                    WriteScope::default(),
                    None,
                )
                .unwrap_err();
            assert_eq!(err.code, 422, "{}", err.message);
        }
    }

    #[test]
    fn namespace_deletion_waits_for_content_finalizers() {
        let (mut store, rt) = store_with_crd();
        let ns_type = store.find_type("", "v1", "namespaces").unwrap();
        store
            .create(&ns_type, None, json!({"metadata": {"name": "team"}}))
            .unwrap();
        let mut held = thing("held");
        held["metadata"]["finalizers"] = json!(["example.com/hold"]);
        store.create(&rt, Some("team"), held).unwrap();
        store.delete(&ns_type, "", "team", &Value::Null).unwrap();
        assert!(
            store.get(&ns_type, "", "team").is_ok(),
            "namespace waits for its content"
        );
        let held = store.get(&rt, "team", "held").unwrap();
        assert!(is_deleting(&held));
        store
            .patch(
                &rt,
                "team",
                "held",
                PatchKind::Merge,
                br#"{"metadata":{"finalizers":null}}"#,
                WriteScope::default(),
                None,
            )
            .unwrap();
        assert_eq!(store.get(&ns_type, "", "team").unwrap_err().code, 404);
    }
}
