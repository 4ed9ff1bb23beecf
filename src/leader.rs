//! Leader election on a coordination.k8s.io/v1 Lease, for running more than one replica:
//! only the holder reconciles. A replica that loses the lease exits so that Kubernetes
//! restarts it as a follower (the usual controller-runtime behaviour).
//!
//! Only the holder serves WeCom callbacks too, so it labels its own Pod with
//! [`CALLBACK_LEADER_LABEL`] once its callback port listens, and the chart's callback
//! Service selects on that label: WeCom's callbacks reach the one replica that can take
//! them, never a standby's closed port. A replica removes the label from its Pod when it
//! starts (a restart after losing the lease keeps the Pod and its labels) and when it shuts
//! down.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    api::core::v1::Pod,
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};

const LEASE_SECONDS: i32 = 15;
const RETRY: Duration = Duration::from_secs(2);

fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("wecom-acq-{}", std::process::id()))
}

/// The label on the Pod of the replica that holds the Lease and serves callbacks.
pub const CALLBACK_LEADER_LABEL: &str = "acquisition.wecom.dev/callback-leader";

/// This replica's own Pod (`POD_NAME`, else `HOSTNAME`, in `POD_NAMESPACE`, else the
/// Lease's namespace), whose [`CALLBACK_LEADER_LABEL`] routes callbacks to it.
pub struct OwnPod {
    api: Api<Pod>,
    name: String,
}

impl OwnPod {
    pub fn new(client: Client, lease_namespace: &str) -> OwnPod {
        let namespace =
            std::env::var("POD_NAMESPACE").unwrap_or_else(|_| lease_namespace.to_string());
        OwnPod {
            api: Api::namespaced(client, &namespace),
            name: identity(),
        }
    }

    /// Sets (`leading`) or removes the label. Removing it from a Pod that does not exist
    /// (the controller runs outside a cluster) is done already.
    pub async fn mark(&self, leading: bool) -> Result<(), kube::Error> {
        let value = if leading {
            serde_json::Value::from("true")
        } else {
            serde_json::Value::Null
        };
        let patch = serde_json::json!({"metadata": {"labels": {CALLBACK_LEADER_LABEL: value}}});
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 && !leading => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Labels the Pod, retrying until it works (the first failure is logged as a warning):
    /// callbacks reach this replica only once it is labelled.
    pub async fn mark_leading(&self) {
        let mut warned = false;
        loop {
            match self.mark(true).await {
                Ok(()) => {
                    tracing::info!(pod = %self.name, label = CALLBACK_LEADER_LABEL, "labelled this pod: the callback Service routes to it");
                    return;
                }
                Err(err) if !warned => {
                    warned = true;
                    tracing::warn!(pod = %self.name, %err, "cannot label this pod as the callback leader (RBAC: patch pods in its namespace); callbacks do not reach it until it can; retrying");
                }
                Err(err) => {
                    tracing::debug!(pod = %self.name, %err, "labelling this pod failed again")
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Removes the label, waiting at most `limit` (startup and shutdown must not hang on
    /// an unreachable API).
    pub async fn unmark(&self, limit: Duration) {
        match tokio::time::timeout(limit, self.mark(false)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(pod = %self.name, %err, "cannot remove the callback leader label from this pod")
            }
            Err(_) => {
                tracing::warn!(pod = %self.name, "removing the callback leader label from this pod timed out")
            }
        }
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    spec.renew_time
        .as_ref()
        .is_none_or(|t| t.0.as_second() + duration < now.as_second())
}

/// Tries once to take or renew the lease; true when this process holds it afterwards.
async fn try_hold(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                spec: Some(spec(0, None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let current = lease.spec.clone().unwrap_or_default();
            let mine = current.holder_identity.as_deref() == Some(me);
            if !mine && !expired(&current, now) {
                return Ok(false);
            }
            let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!mine);
            let acquired = if mine {
                current.acquire_time.clone()
            } else {
                None
            };
            lease.spec = Some(spec(transitions, acquired));
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// The held lease: renewed in the background until [`Leadership::release`].
pub struct Leadership {
    api: Api<Lease>,
    name: String,
    identity: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Stops renewing and hands the lease back at once, so a standby takes over in
    /// seconds instead of waiting for the lease to expire (a graceful shutdown).
    pub async fn release(self) {
        self.renewal.abort();
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(identity = %self.identity, "released the lease"),
            Err(err) => tracing::warn!(%err, "could not release the lease; it expires by itself"),
        }
    }
}

/// Blocks until this process holds the lease, then keeps renewing it in the background.
pub async fn acquire(client: Client, namespace: &str, name: &str) -> anyhow::Result<Leadership> {
    let lease_name = name.to_string();
    let lease_name_for_release = name.to_string();
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let me = identity();
    tracing::info!(lease = name, namespace, identity = %me, "waiting for leadership");
    loop {
        match try_hold(&api, name, &me).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(err) => tracing::warn!(%err, "leader election: lease request failed"),
        }
        tokio::time::sleep(RETRY).await;
    }
    tracing::info!(identity = %me, "became leader");
    let renewal_api = api.clone();
    let renewal_identity = me.clone();
    let renewal = tokio::spawn(async move {
        let (api, me) = (renewal_api, renewal_identity);
        let mut last_renewal = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs((LEASE_SECONDS / 3) as u64)).await;
            match try_hold(&api, &lease_name, &me).await {
                Ok(true) => last_renewal = std::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("leadership lost to another replica; exiting");
                    std::process::exit(1);
                }
                Err(err) => {
                    tracing::warn!(%err, "leader election: renewal failed");
                    if last_renewal.elapsed() > Duration::from_secs(LEASE_SECONDS as u64) {
                        tracing::error!("could not renew the lease in time; exiting");
                        std::process::exit(1);
                    }
                }
            }
        }
    });
    Ok(Leadership {
        api,
        name: lease_name_for_release,
        identity: me,
        renewal,
    })
}
