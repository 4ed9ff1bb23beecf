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

const RETRY: Duration = Duration::from_secs(2);

/// How the lease is held. The holder gives up when a renewal has not succeeded within
/// `renew_deadline` of the last one that did (counted from when that request was sent,
/// which is the renewTime others see), and `renew_deadline` is shorter than `lease`: so it
/// has stopped before any other replica may take the lease over.
///
/// Hand-written rather than `kube-lease-manager` (0.13, kube 5), because that crate has no
/// renew deadline: when its renewals fail, `watch()` logs the errors and retries with
/// back-off while its channel keeps saying `true`, so a partitioned leader goes on leading
/// after another replica took the lease over (two leaders writing to WeCom). The test
/// `kube_lease_manager_keeps_leading_after_its_lease_was_taken` (tests/leader.rs) shows it
/// under one partition for both. The crate also renews with a strategic merge patch without
/// a precondition; here every take and renewal is a replace with the resourceVersion read,
/// so the apiserver's optimistic concurrency alone decides between two replicas.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    /// `leaseDurationSeconds`: how long others wait after the last renewal.
    pub lease: Duration,
    /// A renewal is attempted this often.
    pub renew_every: Duration,
    /// After a failed renewal, retried this often until the deadline.
    pub retry: Duration,
    /// Give up when no renewal succeeded for this long (less than `lease`).
    pub renew_deadline: Duration,
}

impl Default for LeaseTiming {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry; renewed every 5 s.
    fn default() -> Self {
        LeaseTiming {
            lease: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry: RETRY,
            renew_deadline: Duration::from_secs(10),
        }
    }
}

impl LeaseTiming {
    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

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

fn expired(spec: &LeaseSpec, now: Timestamp, timing: &LeaseTiming) -> bool {
    let duration = i64::from(
        spec.lease_duration_seconds
            .unwrap_or_else(|| timing.lease_seconds()),
    );
    spec.renew_time
        .as_ref()
        .is_none_or(|t| t.0.as_second() + duration < now.as_second())
}

/// Tries once to take or renew the lease; true when this process holds it afterwards.
async fn try_hold(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    timing: &LeaseTiming,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(timing.lease_seconds()),
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
            if !mine && !expired(&current, now, timing) {
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

/// Blocks until this process holds the lease, then keeps renewing it in the background;
/// the process exits when the lease is lost or cannot be renewed in time.
pub async fn acquire(client: Client, namespace: &str, name: &str) -> anyhow::Result<Leadership> {
    acquire_with(client, namespace, name, identity(), LeaseTiming::default(), |lost| {
        tracing::error!(%lost, "leadership ended; exiting so that Kubernetes restarts this replica as a follower");
        std::process::exit(1);
    })
    .await
}

/// [`acquire`] with the identity, timing and what to do once leadership ends (tests).
pub async fn acquire_with(
    client: Client,
    namespace: &str,
    name: &str,
    me: String,
    timing: LeaseTiming,
    on_lost: impl FnOnce(LeadershipLost) + Send + 'static,
) -> anyhow::Result<Leadership> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    tracing::info!(lease = name, namespace, identity = %me, "waiting for leadership");
    let held_since = loop {
        let sent = std::time::Instant::now();
        match try_hold(&api, name, &me, &timing).await {
            Ok(true) => break sent,
            Ok(false) => {}
            Err(err) => tracing::warn!(%err, "leader election: lease request failed"),
        }
        tokio::time::sleep(timing.retry).await;
    };
    tracing::info!(identity = %me, "became leader");
    let renewal = tokio::spawn({
        let (api, name, me) = (api.clone(), name.to_string(), me.clone());
        async move { on_lost(keep_renewing(&api, &name, &me, &timing, held_since).await) }
    });
    Ok(Leadership {
        api,
        name: name.to_string(),
        identity: me,
        renewal,
    })
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeadershipLost {
    #[error("another replica holds the lease")]
    TakenOver,
    #[error(
        "no renewal succeeded within the renew deadline of {0:?} (the lease lasts longer, so no other replica has taken over yet)"
    )]
    RenewDeadline(Duration),
}

/// Renews the lease until it is lost; never returns while this process leads. Every
/// attempt is bounded by what is left of the renew deadline.
async fn keep_renewing(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    timing: &LeaseTiming,
    mut renewed: std::time::Instant,
) -> LeadershipLost {
    let mut wait = timing.renew_every;
    loop {
        tokio::time::sleep(wait.min(timing.renew_deadline.saturating_sub(renewed.elapsed()))).await;
        let left = timing.renew_deadline.saturating_sub(renewed.elapsed());
        if left.is_zero() {
            return LeadershipLost::RenewDeadline(timing.renew_deadline);
        }
        let sent = std::time::Instant::now();
        match tokio::time::timeout(left, try_hold(api, name, me, timing)).await {
            Ok(Ok(true)) => {
                renewed = sent;
                wait = timing.renew_every;
            }
            Ok(Ok(false)) => return LeadershipLost::TakenOver,
            Ok(Err(err)) => {
                tracing::warn!(%err, "leader election: renewal failed; retrying until the renew deadline");
                wait = timing.retry;
            }
            Err(_) => return LeadershipLost::RenewDeadline(timing.renew_deadline),
        }
    }
}
