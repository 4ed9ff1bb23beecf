//! The kubesim API emulator driven by the real kube-rs client, watcher, events Recorder
//! and Controller: the Kubernetes semantics the controller depends on, and the fault
//! hooks the end-to-end tests use.

use std::future::Future;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Secret};
use k8s_openapi::api::events::v1::Event as EventsV1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use wecom_acq::api::{AcquisitionLink, AcquisitionLinkSpec, AcquisitionLinkStatus};
use wecom_acq::kubesim::{self, KubeSim, KubeSimHandle};

const WAIT: Duration = Duration::from_secs(10);

async fn start() -> (KubeSimHandle, Client) {
    start_with(KubeSim::new()).await
}

async fn start_with(builder: KubeSim) -> (KubeSimHandle, Client) {
    let sim = builder.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    sim.install_crds().await.unwrap();
    let client = sim.client().await;
    (sim, client)
}

fn link(name: &str, link_name: &str) -> AcquisitionLink {
    AcquisitionLink::new(
        name,
        AcquisitionLinkSpec::new("app", link_name, vec!["zhangsan".into()]),
    )
}

fn links(client: &Client) -> Api<AcquisitionLink> {
    Api::namespaced(client.clone(), "default")
}

fn api_error(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error Status, got {other:?}"),
    }
}

/// Polls `check` until it yields a value, failing after `WAIT`.
async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next item of a stream, failing after `WAIT`.
async fn next_within<S: futures::Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
}

fn ready_condition(generation: i64) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: "Synced".into(),
        message: "link matches spec".into(),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ),
        observed_generation: Some(generation),
    }
}

#[tokio::test]
async fn acquisition_link_crud_round_trip() {
    let (_sim, client) = start().await;
    let api = links(&client);
    let created = api
        .create(&PostParams::default(), &link("spring", "Spring sale"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.uid().unwrap().len(), 36);
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.namespace().as_deref(), Some("default"));

    let fetched = api.get("spring").await.unwrap();
    assert_eq!(fetched.spec.link_name, "Spring sale");
    assert_eq!(fetched.resource_version(), created.resource_version());

    let mut changed = fetched.clone();
    changed.spec.link_name = "Summer sale".into();
    let replaced = api
        .replace("spring", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(replaced.spec.link_name, "Summer sale");
    let rv = |o: &AcquisitionLink| o.resource_version().unwrap().parse::<u64>().unwrap();
    assert!(rv(&replaced) > rv(&fetched), "resourceVersion grows");

    let names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|l| l.name_any())
        .collect();
    assert_eq!(names, ["spring"]);

    let again = api
        .create(&PostParams::default(), &link("spring", "dup"))
        .await
        .unwrap_err();
    let again = api_error(again);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));

    api.delete("spring", &DeleteParams::default())
        .await
        .unwrap();
    let gone = api_error(api.get("spring").await.unwrap_err());
    assert_eq!((gone.code, gone.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        gone.message,
        "acquisitionlinks.acquisition.wecom.dev \"spring\" not found"
    );
}

#[tokio::test]
async fn update_with_stale_resource_version_gets_409_conflict() {
    let (_sim, client) = start().await;
    let api = links(&client);
    let first = api
        .create(&PostParams::default(), &link("a", "A"))
        .await
        .unwrap();
    let mut winner = first.clone();
    winner.spec.link_name = "winner".into();
    api.replace("a", &PostParams::default(), &winner)
        .await
        .unwrap();

    let mut loser = first.clone();
    loser.spec.link_name = "loser".into();
    let err = api_error(
        api.replace("a", &PostParams::default(), &loser)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(err.message.contains("the object has been modified"));
    assert_eq!(api.get("a").await.unwrap().spec.link_name, "winner");

    // A custom resource cannot be updated without a resourceVersion.
    let mut blind = first;
    blind.metadata.resource_version = None;
    let err = api_error(
        api.replace("a", &PostParams::default(), &blind)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
}

#[tokio::test]
async fn status_subresource_is_isolated_both_ways() {
    let (_sim, client) = start().await;
    let api = links(&client);
    let mut with_status = link("iso", "Iso");
    with_status.status = Some(AcquisitionLinkStatus {
        link_id: Some("set-on-create".into()),
        ..Default::default()
    });
    let created = api
        .create(&PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(created.status, None, "create ignores status");

    // A status write ignores spec changes.
    let status_patch = json!({
        "spec": {"linkName": "sneaky"},
        "status": {"linkId": "cawx123", "conditions": [ready_condition(1)]}
    });
    let after_status = api
        .patch_status("iso", &PatchParams::default(), &Patch::Merge(&status_patch))
        .await
        .unwrap();
    assert_eq!(after_status.spec.link_name, "Iso");
    assert_eq!(
        after_status.status.as_ref().unwrap().link_id.as_deref(),
        Some("cawx123")
    );

    // A main-resource write ignores status changes.
    let mut edited = after_status.clone();
    edited.spec.link_name = "Iso 2".into();
    edited.status.as_mut().unwrap().link_id = Some("overwritten".into());
    let after_spec = api
        .replace("iso", &PostParams::default(), &edited)
        .await
        .unwrap();
    assert_eq!(after_spec.spec.link_name, "Iso 2");
    assert_eq!(
        after_spec.status.unwrap().link_id.as_deref(),
        Some("cawx123")
    );

    // PUT to /status replaces status only.
    let mut put = api.get("iso").await.unwrap();
    put.spec.link_name = "ignored".into();
    put.status = Some(AcquisitionLinkStatus {
        link_id: Some("via-put".into()),
        ..Default::default()
    });
    let after_put = api
        .replace_status("iso", &PostParams::default(), &put)
        .await
        .unwrap();
    assert_eq!(after_put.spec.link_name, "Iso 2");
    assert_eq!(
        after_put.status.unwrap().link_id.as_deref(),
        Some("via-put")
    );
}

#[tokio::test]
async fn generation_bumps_on_spec_changes_only() {
    let (_sim, client) = start().await;
    let api = links(&client);
    api.create(&PostParams::default(), &link("gen", "Gen"))
        .await
        .unwrap();
    let generation = |o: &AcquisitionLink| o.metadata.generation.unwrap();

    let labelled = api
        .patch(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "growth"}}})),
        )
        .await
        .unwrap();
    assert_eq!(generation(&labelled), 1, "metadata changes keep generation");

    let with_status = api
        .patch_status(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"linkId": "x"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        generation(&with_status),
        1,
        "status changes keep generation"
    );

    let respec = api
        .patch(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"linkName": "Gen 2"}})),
        )
        .await
        .unwrap();
    assert_eq!(generation(&respec), 2);

    // Writing the same spec again is no change at all: same generation and version.
    let noop = api
        .patch(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"linkName": "Gen 2"}})),
        )
        .await
        .unwrap();
    assert_eq!(generation(&noop), 2);
    assert_eq!(noop.resource_version(), respec.resource_version());
}

#[tokio::test]
async fn finalizers_keep_a_deleted_object_until_the_last_one_goes() {
    let (_sim, client) = start().await;
    let api = links(&client);
    api.create(&PostParams::default(), &link("fin", "Fin"))
        .await
        .unwrap();
    // The kube-runtime finalizer helper's patch: test for no finalizers, then add one.
    let add: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["acquisition.wecom.dev/link"]}
    ]))
    .unwrap();
    let held = api
        .patch("fin", &PatchParams::default(), &Patch::Json::<()>(add))
        .await
        .unwrap();
    assert_eq!(held.finalizers(), ["acquisition.wecom.dev/link"]);

    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    while !matches!(
        next_within(&mut events, "the initial list").await.unwrap(),
        watcher::Event::InitDone
    ) {}
    let deleted = api.delete("fin", &DeleteParams::default()).await.unwrap();
    let deleting = deleted
        .left()
        .expect("an object with finalizers is returned");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let still_there = api.get("fin").await.unwrap();
    assert!(still_there.metadata.deletion_timestamp.is_some());
    assert_eq!(
        still_there.metadata.generation,
        Some(2),
        "marking for deletion bumps generation, as the apiserver's markAsDeleting does"
    );

    let no_new = api
        .patch(
            "fin",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["acquisition.wecom.dev/link", "other.dev/x"]}}),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(no_new).code, 422);

    // Removing the last finalizer deletes the object, and watchers see DELETED.
    let remove: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "acquisition.wecom.dev/link"},
        {"op": "remove", "path": "/metadata/finalizers/0"}
    ]))
    .unwrap();
    api.patch("fin", &PatchParams::default(), &Patch::Json::<()>(remove))
        .await
        .unwrap();
    assert_eq!(api_error(api.get("fin").await.unwrap_err()).code, 404);
    loop {
        match next_within(&mut events, "the DELETED event").await.unwrap() {
            watcher::Event::Delete(obj) => {
                assert_eq!(obj.name_any(), "fin");
                break;
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn merge_json_and_apply_patches() {
    let (_sim, client) = start().await;
    let api = links(&client);
    api.create(&PostParams::default(), &link("p", "P"))
        .await
        .unwrap();

    let merged = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"channels": ["poster"]}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.spec.channels, ["poster"]);

    let json_ok: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/linkName", "value": "P"},
        {"op": "replace", "path": "/spec/linkName", "value": "P2"}
    ]))
    .unwrap();
    let patched = api
        .patch("p", &PatchParams::default(), &Patch::Json::<()>(json_ok))
        .await
        .unwrap();
    assert_eq!(patched.spec.link_name, "P2");

    let json_fails: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/linkName", "value": "P"},
        {"op": "replace", "path": "/spec/linkName", "value": "never"}
    ]))
    .unwrap();
    let err = api_error(
        api.patch("p", &PatchParams::default(), &Patch::Json::<()>(json_fails))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert_eq!(api.get("p").await.unwrap().spec.link_name, "P2");

    // Strategic merge patch is refused on custom resources, as the apiserver does.
    let smp = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"linkName": "x"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(smp).code, 415);

    // Server-side apply creates, then updates, and drops what the manager stopped
    // applying.
    let apply = |labels: serde_json::Value| {
        json!({
            "apiVersion": "acquisition.wecom.dev/v1alpha1",
            "kind": "AcquisitionLink",
            "metadata": {"name": "applied", "labels": labels},
            "spec": {"appRef": {"name": "app"}, "linkName": "Applied",
                     "range": {"userList": ["lisi"]}}
        })
    };
    let params = PatchParams::apply("kubesim-test").force();
    let created = api
        .patch(
            "applied",
            &params,
            &Patch::Apply(apply(json!({"a": "1", "b": "2"}))),
        )
        .await
        .unwrap();
    assert_eq!(created.spec.range.user_list, ["lisi"]);
    assert_eq!(created.labels().len(), 2);
    let updated = api
        .patch("applied", &params, &Patch::Apply(apply(json!({"a": "1"}))))
        .await
        .unwrap();
    assert_eq!(
        updated.labels().keys().collect::<Vec<_>>(),
        ["a"],
        "label b is no longer applied"
    );
    let no_manager = api
        .patch(
            "applied",
            &PatchParams::default(),
            &Patch::Apply(apply(json!({}))),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(no_manager).code, 422);

    // Status through server-side apply, as the controller writes it.
    let status = json!({
        "apiVersion": "acquisition.wecom.dev/v1alpha1",
        "kind": "AcquisitionLink",
        "metadata": {"name": "applied"},
        "status": {"linkId": "cawx9", "conditions": [ready_condition(1)]}
    });
    let with_status = api
        .patch_status(
            "applied",
            &PatchParams::apply("wecom-acq"),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    assert_eq!(
        with_status.status.unwrap().link_id.as_deref(),
        Some("cawx9")
    );
}

#[tokio::test]
async fn label_selectors_and_pages_filter_lists() {
    let (_sim, client) = start().await;
    let api = links(&client);
    for (name, team) in [
        ("l1", "growth"),
        ("l2", "sales"),
        ("l3", "growth"),
        ("l4", "ops"),
    ] {
        let mut l = link(name, name);
        l.metadata.labels = Some([("team".to_string(), team.to_string())].into());
        api.create(&PostParams::default(), &l).await.unwrap();
    }
    let names = |list: kube::core::ObjectList<AcquisitionLink>| -> Vec<String> {
        list.items.iter().map(|l| l.name_any()).collect()
    };
    let growth = api
        .list(&ListParams::default().labels("team=growth"))
        .await
        .unwrap();
    assert_eq!(names(growth), ["l1", "l3"]);
    let not_growth = api
        .list(&ListParams::default().labels("team notin (growth),team"))
        .await
        .unwrap();
    assert_eq!(names(not_growth), ["l2", "l4"]);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=l4"))
        .await
        .unwrap();
    assert_eq!(names(by_name), ["l4"]);

    let first = api.list(&ListParams::default().limit(3)).await.unwrap();
    let token = first.metadata.continue_.clone().expect("a continue token");
    assert_eq!(first.metadata.remaining_item_count, Some(1));
    assert_eq!(names(first), ["l1", "l2", "l3"]);
    let rest = api
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(rest), ["l4"]);

    // Every namespace: the same objects through Api::all.
    let all: Api<AcquisitionLink> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        4
    );
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted() {
    let (_sim, client) = start().await;
    let api = links(&client);
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    assert!(matches!(
        next_within(&mut stream, "Init").await.unwrap(),
        watcher::Event::Init
    ));
    assert!(matches!(
        next_within(&mut stream, "InitDone").await.unwrap(),
        watcher::Event::InitDone
    ));

    api.create(&PostParams::default(), &link("w", "W"))
        .await
        .unwrap();
    match next_within(&mut stream, "ADDED").await.unwrap() {
        watcher::Event::Apply(o) => assert_eq!(o.spec.link_name, "W"),
        other => panic!("expected Apply, got {other:?}"),
    }
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"linkName": "W2"}})),
    )
    .await
    .unwrap();
    match next_within(&mut stream, "MODIFIED").await.unwrap() {
        watcher::Event::Apply(o) => assert_eq!(o.spec.link_name, "W2"),
        other => panic!("expected Apply, got {other:?}"),
    }
    api.delete("w", &DeleteParams::default()).await.unwrap();
    match next_within(&mut stream, "DELETED").await.unwrap() {
        watcher::Event::Delete(o) => assert_eq!(o.name_any(), "w"),
        other => panic!("expected Delete, got {other:?}"),
    }
}

/// Drains watcher events until `name` shows up as applied with `link_name`; returns
/// the errors seen on the way.
async fn wait_for_apply<S>(stream: &mut S, name: &str, link_name: &str) -> Vec<watcher::Error>
where
    S: futures::Stream<Item = Result<watcher::Event<AcquisitionLink>, watcher::Error>> + Unpin,
{
    let mut errors = Vec::new();
    loop {
        match next_within(stream, &format!("{name} with linkName {link_name}")).await {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))
                if o.name_any() == name && o.spec.link_name == link_name =>
            {
                return errors;
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
}

#[tokio::test]
async fn watcher_recovers_after_dropped_watches() {
    let (sim, client) = start().await;
    let api = links(&client);
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    api.create(&PostParams::default(), &link("d", "before"))
        .await
        .unwrap();
    wait_for_apply(&mut stream, "d", "before").await;

    sim.faults().drop_watches();
    api.patch(
        "d",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"linkName": "after"}})),
    )
    .await
    .unwrap();
    wait_for_apply(&mut stream, "d", "after").await;
}

#[tokio::test]
async fn watch_from_compacted_resource_version_gets_410_and_watcher_relists() {
    let (sim, client) = start().await;
    let api = links(&client);
    let created = api
        .create(&PostParams::default(), &link("c", "C"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &link("c2", "C2"))
        .await
        .unwrap();
    let old_rv = created.resource_version().unwrap();
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    let token = page.metadata.continue_.expect("two objects need two pages");

    // Other kinds move the global resourceVersion on; then history is compacted.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let mut secret = Secret::default();
    secret.metadata.name = Some("s".into());
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    sim.faults().compact_history();

    // A raw watch from the old version: 200, then one ERROR event with 410 Expired.
    let mut raw = api
        .watch(&WatchParams::default(), &old_rv)
        .await
        .unwrap()
        .boxed();
    match next_within(&mut raw, "the 410 ERROR event").await.unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }

    // The same for a list page continued from before the compaction.
    let expired = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap_err();
    assert_eq!(api_error(expired).code, 410);

    // A watcher whose watch is cut resumes from its old version, gets 410, relists,
    // and keeps delivering.
    let mut stream = watcher(api.clone(), watcher::Config::default().disable_bookmarks()).boxed();
    wait_for_apply(&mut stream, "c", "C").await;
    secrets
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"moved": "on"}}})),
        )
        .await
        .unwrap();
    sim.faults().compact_history();
    sim.faults().drop_watches();
    api.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"linkName": "C2"}})),
    )
    .await
    .unwrap();
    let errors = wait_for_apply(&mut stream, "c", "C2").await;
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, watcher::Error::WatchError(s) if s.code == 410)),
        "the resumed watch got 410 and the watcher relisted: {errors:?}"
    );
}

/// A paged list (kube's watcher lists 500 at a time) continued while thousands of writes
/// happen, as while 10,000 links converge: the apiserver keeps minutes of history for list
/// continuations and a watch cache of up to 102,400 changes, so the next page is served.
/// kubesim kept 1,000 changes and answered 410: every watcher of a large set relisted,
/// again and again.
#[tokio::test]
async fn a_paged_list_continues_through_thousands_of_writes() {
    let (_sim, client) = start().await;
    let api = links(&client);
    for name in ["p1", "p2"] {
        api.create(&PostParams::default(), &link(name, "P"))
            .await
            .unwrap();
    }
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    let token = page.metadata.continue_.expect("two objects need two pages");
    for i in 0..1500 {
        api.patch(
            "p2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"linkName": format!("P{i}")}})),
        )
        .await
        .unwrap();
    }
    let next = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    // The page as of the first one's snapshot: p2 before the patches.
    assert_eq!(next.items.len(), 1);
    assert_eq!(next.items[0].spec.link_name, "P");
}

#[tokio::test]
async fn bookmarks_arrive_only_when_asked_for() {
    let (_sim, client) =
        start_with(KubeSim::new().bookmark_interval(Duration::from_millis(50))).await;
    let api = links(&client);
    let created = api
        .create(&PostParams::default(), &link("b", "B"))
        .await
        .unwrap();
    let rv = created.resource_version().unwrap();
    let mut with = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next_within(&mut with, "a BOOKMARK").await.unwrap() {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a BOOKMARK, got {other:?}"),
    }

    // Without bookmarks the next event is the next change, not a bookmark.
    let mut without = api
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"linkName": "B2"}})),
    )
    .await
    .unwrap();
    assert!(matches!(
        next_within(&mut without, "MODIFIED").await.unwrap(),
        WatchEvent::Modified(_)
    ));
}

#[tokio::test]
async fn recorder_publishes_events_visible_in_both_event_apis() {
    let (_sim, client) = start().await;
    let api = links(&client);
    let obj = api
        .create(&PostParams::default(), &link("ev", "Ev"))
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "wecom-acq".into(),
            instance: Some("pod-1".into()),
        },
    );
    let event = Event {
        type_: EventType::Normal,
        reason: "Created".into(),
        note: Some("created WeCom link cawx1".into()),
        action: "Create".into(),
        secondary: None,
    };
    let reference = obj.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    // The same event again becomes a series (a merge patch of the first).
    recorder.publish(&event, &reference).await.unwrap();

    let v1: Api<EventsV1> = Api::namespaced(client.clone(), "default");
    let listed = v1.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(listed.len(), 1);
    let e = &listed[0];
    assert_eq!(e.reason.as_deref(), Some("Created"));
    assert_eq!(e.note.as_deref(), Some("created WeCom link cawx1"));
    assert_eq!(e.regarding.as_ref().unwrap().name.as_deref(), Some("ev"));
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));

    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let core_events = core
        .list(&ListParams::default().fields("involvedObject.name=ev"))
        .await
        .unwrap()
        .items;
    assert_eq!(core_events.len(), 1);
    assert_eq!(
        core_events[0].message.as_deref(),
        Some("created WeCom link cawx1")
    );
    assert_eq!(
        core_events[0].reporting_component.as_deref(),
        Some("wecom-acq")
    );

    // events.k8s.io/v1 validation: type must be Normal or Warning.
    let mut bad = e.clone();
    bad.metadata = Default::default();
    bad.metadata.name = Some("bad".into());
    bad.type_ = Some("Info".into());
    assert_eq!(
        api_error(v1.create(&PostParams::default(), &bad).await.unwrap_err()).code,
        422
    );
}

#[tokio::test]
async fn injected_write_failures_then_recovery() {
    let (sim, client) = start().await;
    let api = links(&client);
    sim.faults().fail_next_writes("AcquisitionLink", 1, 409);
    let conflict = api_error(
        api.create(&PostParams::default(), &link("f", "F"))
            .await
            .unwrap_err(),
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));

    sim.faults().fail_next_writes("acquisitionlinks", 2, 500);
    for _ in 0..2 {
        let err = api_error(
            api.create(&PostParams::default(), &link("f", "F"))
                .await
                .unwrap_err(),
        );
        assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
    }
    // Reads are not writes, and other kinds are unaffected.
    sim.faults().fail_next_writes("acquisitionlinks", 1, 500);
    api.list(&ListParams::default()).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let mut secret = Secret::default();
    secret.metadata.name = Some("unaffected".into());
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert_eq!(
        api_error(
            api.create(&PostParams::default(), &link("f", "F"))
                .await
                .unwrap_err()
        )
        .code,
        500
    );
    api.create(&PostParams::default(), &link("f", "F"))
        .await
        .unwrap();
}

#[tokio::test]
async fn outage_fails_every_request_until_it_ends() {
    let (sim, client) = start().await;
    let api = links(&client);
    sim.faults()
        .fail_all_requests_for(Duration::from_millis(300), 500);
    let err = api_error(api.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(err.code, 500);
    wait_until("the outage to end", || async {
        api.list(&ListParams::default()).await.ok()
    })
    .await;

    sim.faults().delay_responses(Duration::from_millis(100));
    let started = std::time::Instant::now();
    api.list(&ListParams::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));
    sim.faults().clear();
}

#[tokio::test]
async fn namespaces_scope_objects() {
    let (_sim, client) = start().await;
    let missing: Api<AcquisitionLink> = Api::namespaced(client.clone(), "nowhere");
    let err = api_error(
        missing
            .create(&PostParams::default(), &link("x", "X"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404);
    assert_eq!(err.message, "namespaces \"nowhere\" not found");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("team-a".into());
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let team: Api<AcquisitionLink> = Api::namespaced(client.clone(), "team-a");
    team.create(&PostParams::default(), &link("x", "X"))
        .await
        .unwrap();
    assert_eq!(
        api_error(links(&client).get("x").await.unwrap_err()).code,
        404,
        "the same name in another namespace is another object"
    );

    let bad_name = api_error(
        team.create(&PostParams::default(), &link("Not_A_Name", "X"))
            .await
            .unwrap_err(),
    );
    assert_eq!((bad_name.code, bad_name.reason.as_str()), (422, "Invalid"));

    // Deleting the namespace deletes its content, then the namespace.
    namespaces
        .delete("team-a", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("namespace team-a to go away", || async {
        namespaces
            .get_opt("team-a")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(team.get_opt("x").await.unwrap().is_none());
}

#[tokio::test]
async fn kubeconfig_points_a_client_at_the_emulator() {
    let sim = kubesim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = Client::try_from(config).unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    let namespaces: Api<Namespace> = Api::all(client);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert!(names.contains(&"default".to_string()) && names.contains(&"kube-system".to_string()));
    sim.shutdown().await;
}

#[tokio::test]
async fn discovery_lists_the_served_resources() {
    let (_sim, client) = start().await;
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let group = discovery
        .get("acquisition.wecom.dev")
        .expect("the CRD group is discoverable");
    let kinds: Vec<String> = group
        .recommended_resources()
        .iter()
        .map(|(r, _)| r.kind.clone())
        .collect();
    assert!(kinds.contains(&"AcquisitionLink".to_string()));
    assert!(kinds.contains(&"WeComApp".to_string()));
    for g in [
        "events.k8s.io",
        "coordination.k8s.io",
        "apiextensions.k8s.io",
    ] {
        assert!(discovery.has_group(g), "{g} is served");
    }
}

/// The shape of the real controller: kube-runtime's Controller with the finalizer
/// helper, writing status with server-side apply.
#[tokio::test]
async fn controller_with_finalizer_runs_against_the_emulator() {
    use kube::runtime::controller::{Action, Controller};
    use kube::runtime::finalizer::{Event as Finalizer, finalizer};
    use std::sync::Arc;

    #[derive(Debug, thiserror::Error)]
    #[error("reconcile failed: {0}")]
    struct ReconcileError(String);

    async fn reconcile(
        obj: Arc<AcquisitionLink>,
        api: Arc<Api<AcquisitionLink>>,
    ) -> Result<Action, ReconcileError> {
        finalizer(&api, "acquisition.wecom.dev/link", obj, |event| async {
            match event {
                Finalizer::Apply(link) => {
                    let status = json!({
                        "apiVersion": "acquisition.wecom.dev/v1alpha1",
                        "kind": "AcquisitionLink",
                        "metadata": {"name": link.name_any()},
                        "status": {"linkId": format!("id-{}", link.spec.link_name),
                                   "observedGeneration": link.metadata.generation}
                    });
                    api.patch_status(
                        &link.name_any(),
                        &PatchParams::apply("wecom-acq").force(),
                        &Patch::Apply(&status),
                    )
                    .await
                    .map_err(|e| ReconcileError(e.to_string()))?;
                    Ok(Action::await_change())
                }
                Finalizer::Cleanup(_) => Ok::<_, ReconcileError>(Action::await_change()),
            }
        })
        .await
        .map_err(|e| ReconcileError(e.to_string()))
    }

    let (_sim, client) = start().await;
    let api = links(&client);
    let shared = Arc::new(api.clone());
    let controller = tokio::spawn(
        Controller::new(api.clone(), watcher::Config::default())
            .run(
                reconcile,
                |_, _, _| Action::requeue(Duration::from_millis(50)),
                shared,
            )
            .for_each(|_| async {}),
    );

    api.create(&PostParams::default(), &link("ctl", "one"))
        .await
        .unwrap();
    wait_until("status.linkId from the controller", || async {
        let o = api.get("ctl").await.ok()?;
        (o.status.as_ref()?.link_id.as_deref() == Some("id-one")
            && o.finalizers() == ["acquisition.wecom.dev/link"])
        .then_some(())
    })
    .await;

    api.patch(
        "ctl",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"linkName": "two"}})),
    )
    .await
    .unwrap();
    wait_until("the controller to see generation 2", || async {
        let s = api.get("ctl").await.ok()?.status?;
        (s.link_id.as_deref() == Some("id-two") && s.observed_generation == Some(2)).then_some(())
    })
    .await;

    api.delete("ctl", &DeleteParams::default()).await.unwrap();
    wait_until(
        "the finalizer to be removed and the object gone",
        || async { api.get_opt("ctl").await.ok()?.is_none().then_some(()) },
    )
    .await;
    controller.abort();
}

#[tokio::test]
async fn stream_of_raw_watch_events_ends_at_timeout_seconds() {
    let (_sim, client) = start().await;
    let api = links(&client);
    let stream = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(WAIT, stream.try_collect::<Vec<_>>())
        .await
        .expect("the watch ends by itself")
        .unwrap();
    assert!(events.is_empty());
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_then_changes() {
    let (_sim, client) = start().await;
    let api = links(&client);
    api.create(&PostParams::default(), &link("s1", "S1"))
        .await
        .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    assert!(matches!(
        next_within(&mut stream, "Init").await.unwrap(),
        watcher::Event::Init
    ));
    match next_within(&mut stream, "InitApply").await.unwrap() {
        watcher::Event::InitApply(o) => assert_eq!(o.name_any(), "s1"),
        other => panic!("expected InitApply, got {other:?}"),
    }
    assert!(matches!(
        next_within(&mut stream, "InitDone").await.unwrap(),
        watcher::Event::InitDone
    ));
    api.create(&PostParams::default(), &link("s2", "S2"))
        .await
        .unwrap();
    wait_for_apply(&mut stream, "s2", "S2").await;
}

#[tokio::test]
async fn leases_and_secrets_follow_their_built_in_rules() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    let (sim, client) = start().await;
    // Installing the CRDs again leaves them as they are.
    sim.install_crds().await.unwrap();

    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("wecom-acq-leader".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("pod-a".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let first = leases.create(&PostParams::default(), &lease).await.unwrap();
    assert_eq!(first.metadata.generation, None, "leases have no generation");
    let mut taken = first.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("pod-b".into());
    leases
        .replace("wecom-acq-leader", &PostParams::default(), &taken)
        .await
        .unwrap();
    let mut stale = first;
    stale.spec.as_mut().unwrap().holder_identity = Some("pod-c".into());
    let err = api_error(
        leases
            .replace("wecom-acq-leader", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let mut secret = Secret::default();
    secret.metadata.name = Some("app-secret".into());
    secret.string_data = Some([("secret".to_string(), "s3cr3t".to_string())].into());
    let created = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert!(
        created.string_data.is_none(),
        "stringData is folded into data"
    );
    assert_eq!(created.data.unwrap()["secret"].0, b"s3cr3t");
    let typed = secrets
        .list(&ListParams::default().fields("type=Opaque"))
        .await
        .unwrap();
    assert_eq!(typed.items.len(), 1);
}

#[tokio::test]
async fn errors_and_discovery_on_the_wire() {
    let (sim, _client) = start().await;
    let http = reqwest::Client::new();
    let base = sim.base_url();

    let missing = http
        .get(format!(
            "{base}/apis/acquisition.wecom.dev/v1alpha1/namespaces/default/acquisitionlinks/nope"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let status: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["apiVersion"], "v1");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["code"], 404);
    assert_eq!(status["details"]["kind"], "acquisitionlinks");

    let unknown = http
        .get(format!("{base}/apis/nope.dev/v1/things"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let resources: serde_json::Value = http
        .get(format!("{base}/apis/acquisition.wecom.dev/v1alpha1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for expected in [
        "wecomapps",
        "wecomapps/status",
        "acquisitionlinks",
        "acquisitionlinks/status",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }

    let core: serde_json::Value = http
        .get(format!("{base}/api/v1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(core["groupVersion"], "v1");

    let wrong_verb = http
        .put(format!("{base}/api/v1/namespaces/default/secrets"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_verb.status(), 405);
}

#[tokio::test]
async fn managed_fields_record_who_wrote_what_and_apply_conflicts() {
    use k8s_openapi::api::coordination::v1::Lease;
    let (_sim, client) = start().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let apply = |holder: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
    };
    let as_manager = |m: &str| PatchParams::apply(m);
    let created = leases
        .patch("lock", &as_manager("pod-a"), &Patch::Apply(apply("pod-a")))
        .await
        .unwrap();
    let fields = created.metadata.managed_fields.clone().unwrap();
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].manager.as_deref(), Some("pod-a"));
    assert_eq!(fields[0].operation.as_deref(), Some("Apply"));
    assert_eq!(fields[0].fields_type.as_deref(), Some("FieldsV1"));
    let owned = &fields[0].fields_v1.as_ref().unwrap().0;
    assert!(owned["f:spec"].get("f:holderIdentity").is_some(), "{owned}");

    // Another manager applying a different holder conflicts, naming the owner and field.
    let err = api_error(
        leases
            .patch("lock", &as_manager("pod-b"), &Patch::Apply(apply("pod-b")))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(
        err.message
            .contains("conflict with \"pod-a\": .spec.holderIdentity"),
        "{}",
        err.message
    );
    assert_eq!(
        leases
            .get("lock")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("pod-a"),
        "a conflict changes nothing"
    );
    // Forced, the field moves to the new manager; the duration both applied alike stays
    // shared.
    let forced = leases
        .patch(
            "lock",
            &as_manager("pod-b").force(),
            &Patch::Apply(apply("pod-b")),
        )
        .await
        .unwrap();
    let entries = forced.metadata.managed_fields.unwrap();
    let owns = |manager: &str, field: &str| {
        entries
            .iter()
            .filter(|f| f.manager.as_deref() == Some(manager))
            .any(|f| {
                f.fields_v1.as_ref().unwrap().0["f:spec"]
                    .get(field)
                    .is_some()
            })
    };
    assert!(owns("pod-b", "f:holderIdentity") && !owns("pod-a", "f:holderIdentity"));
    assert!(owns("pod-a", "f:leaseDurationSeconds") && owns("pod-b", "f:leaseDurationSeconds"));

    // An update (merge patch) takes the fields it changes, under its fieldManager.
    let patched = leases
        .patch(
            "lock",
            &PatchParams {
                field_manager: Some("janitor".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"leaseDurationSeconds": 30}})),
        )
        .await
        .unwrap();
    let entries = patched.metadata.managed_fields.unwrap();
    let janitor = entries
        .iter()
        .find(|f| f.manager.as_deref() == Some("janitor"))
        .expect("an Update entry for janitor");
    assert_eq!(janitor.operation.as_deref(), Some("Update"));
    let owned = &janitor.fields_v1.as_ref().unwrap().0;
    assert!(owned["f:spec"].get("f:leaseDurationSeconds").is_some());
    assert!(owned["f:spec"].get("f:holderIdentity").is_none());
    // A status write of a custom resource is recorded against the status subresource.
    let links: Api<AcquisitionLink> = Api::namespaced(client, "default");
    links
        .create(&PostParams::default(), &link("l", "L"))
        .await
        .unwrap();
    let status = json!({"apiVersion": "acquisition.wecom.dev/v1alpha1", "kind": "AcquisitionLink",
                        "status": {"linkId": "x"}});
    let written = links
        .patch_status("l", &PatchParams::apply("writer"), &Patch::Apply(&status))
        .await
        .unwrap();
    let entry = written
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .find(|f| f.manager.as_deref() == Some("writer"))
        .expect("the status writer's entry");
    assert_eq!(entry.subresource.as_deref(), Some("status"));
}

fn condition(type_: &str, status: &str) -> serde_json::Value {
    json!({"type": type_, "status": status, "reason": "Test", "message": "m",
           "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

/// A status apply configuration for link `name` with these conditions.
fn status_config(name: &str, conditions: &[serde_json::Value]) -> serde_json::Value {
    json!({"apiVersion": "acquisition.wecom.dev/v1alpha1", "kind": "AcquisitionLink",
           "metadata": {"name": name}, "status": {"conditions": conditions}})
}

fn condition_statuses(link: &AcquisitionLink) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = link
        .status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| (c.type_.clone(), c.status.clone()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The FieldsV1 of `manager`'s entry (of `subresource` "" or "status").
fn fields_of(obj: &impl Resource, manager: &str) -> serde_json::Value {
    obj.meta()
        .managed_fields
        .iter()
        .flatten()
        .find(|e| e.manager.as_deref() == Some(manager))
        .and_then(|e| e.fields_v1.as_ref())
        .map(|f| f.0.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn status_apply_merges_conditions_by_type_between_field_managers() {
    let (_sim, client) = start().await;
    let api = links(&client);
    api.create(&PostParams::default(), &link("c", "C"))
        .await
        .unwrap();
    let as_manager = |m: &str| PatchParams::apply(m);
    api.patch_status(
        "c",
        &as_manager("reconciler"),
        &Patch::Apply(status_config(
            "c",
            &[condition("Ready", "True"), condition("Synced", "True")],
        )),
    )
    .await
    .unwrap();
    let both = api
        .patch_status(
            "c",
            &as_manager("callbacks"),
            &Patch::Apply(status_config("c", &[condition("QuotaLow", "True")])),
        )
        .await
        .unwrap();
    assert_eq!(
        condition_statuses(&both),
        pairs(&[("QuotaLow", "True"), ("Ready", "True"), ("Synced", "True")]),
        "each manager's conditions survive the other's apply"
    );
    let owned = fields_of(&both, "reconciler");
    let conditions = &owned["f:status"]["f:conditions"];
    assert!(
        conditions.get(r#"k:{"type":"Ready"}"#).is_some()
            && conditions.get(r#"k:{"type":"QuotaLow"}"#).is_none(),
        "{owned}"
    );
    assert_eq!(
        conditions[r#"k:{"type":"Ready"}"#]["."],
        json!({}),
        "the item itself is owned"
    );

    // The reconciler stops applying Synced: only Synced goes.
    let dropped = api
        .patch_status(
            "c",
            &as_manager("reconciler"),
            &Patch::Apply(status_config("c", &[condition("Ready", "True")])),
        )
        .await
        .unwrap();
    assert_eq!(
        condition_statuses(&dropped),
        pairs(&[("QuotaLow", "True"), ("Ready", "True")])
    );

    // Another manager setting the reconciler's condition to another value conflicts,
    // naming the item's field; force takes it.
    let err = api_error(
        api.patch_status(
            "c",
            &as_manager("callbacks"),
            &Patch::Apply(status_config(
                "c",
                &[condition("QuotaLow", "True"), condition("Ready", "False")],
            )),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 409, "{err:?}");
    assert!(
        err.message
            .contains(r#"conflict with "reconciler": .status.conditions[type="Ready"].status"#),
        "{}",
        err.message
    );
    assert_eq!(
        condition_statuses(&api.get("c").await.unwrap()),
        pairs(&[("QuotaLow", "True"), ("Ready", "True")]),
        "a conflict changes nothing"
    );
    let forced = api
        .patch_status(
            "c",
            &as_manager("callbacks").force(),
            &Patch::Apply(status_config(
                "c",
                &[condition("QuotaLow", "True"), condition("Ready", "False")],
            )),
        )
        .await
        .unwrap();
    assert_eq!(
        condition_statuses(&forced),
        pairs(&[("QuotaLow", "True"), ("Ready", "False")])
    );
    let reconciler = fields_of(&forced, "reconciler");
    let ready = &reconciler["f:status"]["f:conditions"][r#"k:{"type":"Ready"}"#];
    assert!(
        ready.get("f:status").is_none() && ready.get("f:reason").is_some(),
        "the forced field moved, the rest stays shared: {reconciler}"
    );

    // An applied condition without its key is refused, as the apiserver refuses it.
    let keyless = api
        .patch_status(
            "c",
            &as_manager("callbacks"),
            &Patch::Apply(status_config("c", &[json!({"status": "True"})])),
        )
        .await
        .unwrap_err();
    let keyless = api_error(keyless);
    assert!(
        keyless.message.contains("omits key field"),
        "{}",
        keyless.message
    );
}

#[tokio::test]
async fn applied_finalizers_and_owner_references_merge_between_managers() {
    let (_sim, client) = start().await;
    let api = links(&client);
    api.create(&PostParams::default(), &link("f", "F"))
        .await
        .unwrap();
    let meta_config = |finalizers: &[&str], owners: &[&str]| {
        let owners: Vec<serde_json::Value> = owners
            .iter()
            .map(|uid| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": uid, "uid": uid}))
            .collect();
        json!({"apiVersion": "acquisition.wecom.dev/v1alpha1", "kind": "AcquisitionLink",
               "metadata": {"name": "f", "finalizers": finalizers, "ownerReferences": owners}})
    };
    let apply = |manager: &str, finalizers: &[&str], owners: &[&str]| {
        let config = meta_config(finalizers, owners);
        let api = api.clone();
        let manager = manager.to_string();
        async move {
            api.patch("f", &PatchParams::apply(&manager), &Patch::Apply(config))
                .await
                .unwrap()
        }
    };
    apply("a", &["a.dev/x", "shared.dev/s"], &["uid-a"]).await;
    let both = apply("b", &["b.dev/y", "shared.dev/s"], &["uid-b"]).await;
    assert_eq!(
        both.finalizers(),
        ["a.dev/x", "b.dev/y", "shared.dev/s"],
        "a set: b's apply adds to a's"
    );
    let owners: Vec<&str> = both
        .owner_references()
        .iter()
        .map(|o| o.uid.as_str())
        .collect();
    assert_eq!(owners, ["uid-a", "uid-b"], "a map keyed by uid");
    assert!(
        fields_of(&both, "a")["f:metadata"]["f:finalizers"]
            .get(r#"v:"a.dev/x""#)
            .is_some()
    );
    assert!(
        fields_of(&both, "b")["f:metadata"]["f:ownerReferences"]
            .get(r#"k:{"uid":"uid-b"}"#)
            .is_some()
    );
    // A finalizer added by a JSON patch (an Update) is kept through applies.
    let add: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/finalizers/-", "value": "c.dev/z"}
    ]))
    .unwrap();
    api.patch("f", &PatchParams::default(), &Patch::Json::<()>(add))
        .await
        .unwrap();
    // a stops applying everything: only what a alone owned goes.
    let after = apply("a", &[], &[]).await;
    assert_eq!(after.finalizers(), ["b.dev/y", "shared.dev/s", "c.dev/z"]);
    let owners: Vec<&str> = after
        .owner_references()
        .iter()
        .map(|o| o.uid.as_str())
        .collect();
    assert_eq!(owners, ["uid-b"]);
    // b stops too: the finalizer nobody applies any more goes; the Update's stays.
    let last = apply("b", &[], &[]).await;
    assert_eq!(last.finalizers(), ["c.dev/z"]);
    assert!(last.owner_references().is_empty());
}

#[tokio::test]
async fn a_crd_whose_list_map_key_is_optional_is_refused() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let (_sim, client) = start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let crd = |required: serde_json::Value| -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "things.example.dev"},
            "spec": {"group": "example.dev", "scope": "Namespaced",
                "names": {"plural": "things", "singular": "thing", "kind": "Thing"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "status": {"type": "object", "properties": {"conditions": {
                            "type": "array", "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["type"],
                            "items": {"type": "object", "required": required,
                                "properties": {"type": {"type": "string"}}}}}}}}}}]}
        }))
        .unwrap()
    };
    let err = api_error(
        crds.create(&PostParams::default(), &crd(json!([])))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message.contains("items.properties[type].default")
            && err.message.contains("x-kubernetes-list-map-keys"),
        "{}",
        err.message
    );
    crds.create(&PostParams::default(), &crd(json!(["type"])))
        .await
        .unwrap();
}
