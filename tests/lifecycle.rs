//! Lifecycle integrity of WeCom links when Kubernetes removes things in bulk: a WeComApp
//! outlives the links that use it, so deleting a namespace (or an app with its links)
//! deletes every `Delete` link in WeCom, keeps every `Orphan` one, and nothing hangs.

mod support;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use support::{Env, link_spec, quiet_cadence, wait_until};
use wecom_acq::api::{APP_IN_USE_FINALIZER, AcquisitionLink, DeletionPolicy, WeComApp};

/// One namespace of a team: its Secret, its app `app`, and links.
struct Team {
    client: kube::Client,
    namespace: String,
}

impl Team {
    async fn create(env: &Env, namespace: &str) -> Team {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(namespace.into());
        Api::<Namespace>::all(env.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the namespace");
        let team = Team {
            client: env.client.clone(),
            namespace: namespace.into(),
        };
        team.create_secret().await;
        team.apps()
            .create(&PostParams::default(), &env.app_object("app", "app-secret"))
            .await
            .expect("create the WeComApp");
        team
    }

    /// Secret `app-secret` with the simulator's app secret.
    async fn create_secret(&self) {
        let mut secret = Secret::default();
        secret.metadata.name = Some("app-secret".into());
        secret.string_data = Some(
            [(
                support::SECRET_KEY.to_string(),
                wecom_acq::sim::DEFAULT_SECRET.to_string(),
            )]
            .into(),
        );
        self.secrets()
            .create(&PostParams::default(), &secret)
            .await
            .expect("create the app Secret");
    }

    fn apps(&self) -> Api<WeComApp> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn links(&self) -> Api<AcquisitionLink> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn add_link(&self, name: &str, policy: DeletionPolicy) {
        let mut spec = link_spec("app", name, &["zhangsan"]);
        spec.deletion_policy = policy;
        self.links()
            .create(&PostParams::default(), &AcquisitionLink::new(name, spec))
            .await
            .expect("create AcquisitionLink");
    }

    /// Waits until every link has its WeCom link id; returns name -> id.
    async fn link_ids(&self) -> Vec<(String, String)> {
        let links = self.links();
        wait_until(
            &format!("every link of {} created", self.namespace),
            || async {
                let list = links.list(&Default::default()).await.ok()?;
                let ids: Option<Vec<(String, String)>> = list
                    .items
                    .iter()
                    .map(|l| Some((l.name_any(), l.status.as_ref()?.link_id.clone()?)))
                    .collect();
                ids.filter(|ids| !ids.is_empty())
            },
        )
        .await
    }

    async fn app_finalized(&self) -> WeComApp {
        let apps = self.apps();
        wait_until("the app carries its in-use finalizer", || async {
            let app = apps.get("app").await.ok()?;
            app.finalizers()
                .iter()
                .any(|f| f == APP_IN_USE_FINALIZER)
                .then_some(app)
        })
        .await
    }
}

async fn wait_namespace_gone(env: &Env, namespace: &str) {
    let namespaces = Api::<Namespace>::all(env.client.clone());
    wait_until(&format!("namespace {namespace} to be gone"), || async {
        matches!(namespaces.get_opt(namespace).await, Ok(None)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn deleting_a_namespace_deletes_every_delete_link_and_keeps_every_orphan_link() {
    let env = Env::start(quiet_cadence()).await;
    // kubesim deletes a namespace's content in a new random order each time, as the real
    // namespace controller promises no order: three trials.
    for trial in 0..3 {
        let namespace = format!("team-{trial}");
        let team = Team::create(&env, &namespace).await;
        for i in 0..8 {
            team.add_link(&format!("delete-{i}"), DeletionPolicy::Delete)
                .await;
        }
        for i in 0..2 {
            team.add_link(&format!("orphan-{i}"), DeletionPolicy::Orphan)
                .await;
        }
        let ids = team.link_ids().await;
        assert_eq!(ids.len(), 10);
        team.app_finalized().await;

        Api::<Namespace>::all(env.client.clone())
            .delete(&namespace, &DeleteParams::default())
            .await
            .expect("delete the namespace");
        wait_namespace_gone(&env, &namespace).await;

        for (name, id) in &ids {
            let alive = env.sim_link(id).await.is_some();
            if name.starts_with("orphan") {
                assert!(alive, "trial {trial}: Orphan link {name} ({id}) is kept");
            } else {
                assert!(!alive, "trial {trial}: Delete link {name} ({id}) leaked");
            }
        }
    }
    assert_eq!(env.sim_call_count("delete_link").await, 24);
}

#[tokio::test]
async fn an_app_with_links_stays_until_its_last_link_is_deleted_in_wecom() {
    let env = Env::start(quiet_cadence()).await;
    let team = Team::create(&env, "team").await;
    team.add_link("first", DeletionPolicy::Delete).await;
    team.add_link("second", DeletionPolicy::Delete).await;
    let ids = team.link_ids().await;
    team.app_finalized().await;

    team.apps()
        .delete("app", &DeleteParams::default())
        .await
        .expect("delete the app");
    let apps = team.apps();
    let waiting = wait_until("the app to say what its deletion waits for", || async {
        let events =
            Api::<k8s_openapi::api::events::v1::Event>::namespaced(env.client.clone(), "team")
                .list(&Default::default())
                .await
                .ok()?;
        events
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("WaitingForLinks"))
    })
    .await;
    assert!(
        waiting
            .note
            .unwrap_or_default()
            .contains("2 AcquisitionLink(s) using this app (first, second)")
    );
    let app = apps.get("app").await.expect("the app is still there");
    assert!(app.metadata.deletion_timestamp.is_some());

    team.links()
        .delete("first", &DeleteParams::default())
        .await
        .expect("delete a link");
    let links = team.links();
    wait_until("the first link to be gone", || async {
        matches!(links.get_opt("first").await, Ok(None)).then_some(())
    })
    .await;
    assert!(
        apps.get_opt("app").await.expect("read the app").is_some(),
        "one link still uses the app"
    );
    team.links()
        .delete("second", &DeleteParams::default())
        .await
        .expect("delete the last link");
    wait_until("the app to go once its last link is gone", || async {
        matches!(apps.get_opt("app").await, Ok(None)).then_some(())
    })
    .await;
    for (_, id) in &ids {
        assert!(
            env.sim_link(id).await.is_none(),
            "link {id} deleted in WeCom"
        );
    }
}

#[tokio::test]
async fn a_link_is_deleted_with_the_credentials_held_after_its_secret_is_gone() {
    let env = Env::start(quiet_cadence()).await;
    let team = Team::create(&env, "team").await;
    team.add_link("doomed", DeletionPolicy::Delete).await;
    let ids = team.link_ids().await;
    team.app_finalized().await;

    team.secrets()
        .delete("app-secret", &DeleteParams::default())
        .await
        .expect("delete the Secret");
    // Deleting the app bumps its generation, so the controller reads the Secret again and
    // finds it gone: only the client it already holds can delete the link.
    team.apps()
        .delete("app", &DeleteParams::default())
        .await
        .expect("delete the app");
    team.links()
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete the link");
    let apps = team.apps();
    wait_until("the app to go with its link", || async {
        matches!(apps.get_opt("app").await, Ok(None)).then_some(())
    })
    .await;
    assert!(env.sim_link(&ids[0].1).await.is_none(), "deleted in WeCom");
}

#[tokio::test]
async fn without_credentials_a_deletion_waits_and_says_what_to_do() {
    let mut env = Env::start(quiet_cadence()).await;
    let team = Team::create(&env, "team").await;
    team.add_link("stuck", DeletionPolicy::Delete).await;
    let ids = team.link_ids().await;
    team.app_finalized().await;

    // A new controller process holds no credentials; the Secret is gone.
    env.stop_controller().await;
    team.secrets()
        .delete("app-secret", &DeleteParams::default())
        .await
        .expect("delete the Secret");
    env.start_controller(quiet_cadence()).await;
    team.links()
        .delete("stuck", &DeleteParams::default())
        .await
        .expect("delete the link");
    let links = team.links();
    let stuck = wait_until("the link to say why its deletion waits", || async {
        let link = links.get("stuck").await.ok()?;
        let ready = support::link_condition(&link, "Ready")?;
        ready.2.contains("restore the Secret").then_some(ready)
    })
    .await;
    assert_eq!(stuck.0, "False");
    assert!(
        stuck
            .2
            .contains("remove finalizer acquisition.wecom.dev/link")
    );
    assert!(!stuck.2.contains(wecom_acq::sim::DEFAULT_SECRET));
    assert!(
        env.sim_link(&ids[0].1).await.is_some(),
        "nothing deleted yet"
    );

    // Restoring the Secret lets the deletion finish.
    team.create_secret().await;
    wait_until("the link to be deleted once the Secret is back", || async {
        matches!(links.get_opt("stuck").await, Ok(None)).then_some(())
    })
    .await;
    assert!(env.sim_link(&ids[0].1).await.is_none(), "deleted in WeCom");
}
