//! Leader election on a coordination.k8s.io/v1 Lease, for running more than one replica:
//! only the holder reconciles. A replica that loses the lease exits so that Kubernetes
//! restarts it as a follower (the usual controller-runtime behaviour).

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

const LEASE_SECONDS: i32 = 15;
const RETRY: Duration = Duration::from_secs(2);

fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("wecom-acq-{}", std::process::id()))
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
