//! Leader election over a coordination.k8s.io Lease, as client-go's leaderelection does
//! for kube-controller-manager and kube-scheduler: servers sharing one etcd run their
//! controllers (or scheduler) only while they hold the Lease, so two never act on the same
//! objects. A holder renews every RETRY; another server takes over once the record has
//! not moved for LEASE_DURATION on *its own* clock (never by comparing timestamps written
//! by another machine). A holder that cannot renew within RENEW_DEADLINE stops its work
//! before anyone else may start, and tries to acquire again. On shutdown the Lease is
//! released so a peer takes over at once.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{PostParams, ResourceExt};
use kube::Api;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(2);
const NAMESPACE: &str = "kube-system";

/// Who holds a Lease and what it last said, as this server observed it.
struct Observed {
    holder: String,
    renew: Option<MicroTime>,
    at: Instant,
}

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    observed: Option<Observed>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    pub fn new(client: kube::Client, name: &str, identity: &str) -> Elector {
        Elector {
            api: Api::namespaced(client, NAMESPACE),
            name: name.into(),
            identity: identity.into(),
            observed: None,
        }
    }

    /// One attempt to acquire or renew; true when this server holds the Lease now.
    async fn try_acquire_or_renew(&mut self) -> bool {
        let lease = match self.api.get_opt(&self.name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(lease = %self.name, error = %e, "reading the leader lease failed");
                return false;
            }
        };
        let t = now();
        let Some(mut lease) = lease else {
            let new = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(NAMESPACE.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                    acquire_time: Some(t.clone()),
                    renew_time: Some(t),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return self.api.create(&PostParams::default(), &new).await.is_ok();
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.holder != holder || o.renew != spec.renew_time);
        if changed {
            self.observed = Some(Observed {
                holder: holder.clone(),
                renew: spec.renew_time.clone(),
                at: Instant::now(),
            });
        }
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(LEASE_DURATION);
        let mine = holder == self.identity;
        let expired = holder.is_empty()
            || self
                .observed
                .as_ref()
                .is_some_and(|o| o.at.elapsed() > duration);
        if !mine && !expired {
            return false;
        }
        let mut next = spec.clone();
        if !mine {
            next.holder_identity = Some(self.identity.clone());
            next.acquire_time = Some(t.clone());
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        next.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        next.renew_time = Some(t);
        lease.spec = Some(next);
        // The resourceVersion we read is the precondition: of two servers taking over at
        // once, one wins and the other gets 409.
        let name = lease.name_any();
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                let s = l.spec.unwrap_or_default();
                self.observed = Some(Observed {
                    holder: s.holder_identity.unwrap_or_default(),
                    renew: s.renew_time,
                    at: Instant::now(),
                });
                true
            }
            Err(_) => false,
        }
    }

    /// Gives the Lease up (only if still ours) so a peer need not wait for it to expire.
    async fn release(&mut self) {
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
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        let name = lease.name_any();
        let _ = self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await;
    }
}

/// Runs `work` whenever this server leads `lease_name`, until `stop` turns true. `work`
/// gets a stop signal of its own, fired when leadership is lost (or on shutdown), and must
/// return soon after.
pub async fn run_while_leading<F, Fut>(
    client: kube::Client,
    lease_name: &str,
    identity: &str,
    mut stop: watch::Receiver<bool>,
    work: F,
) where
    F: Fn(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut elector = Elector::new(client, lease_name, identity);
    loop {
        // Acquire.
        loop {
            if *stop.borrow() {
                return;
            }
            if elector.try_acquire_or_renew().await {
                break;
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
        tracing::info!(lease = %lease_name, %identity, "became leader");
        let (work_stop_tx, work_stop_rx) = watch::channel(false);
        let mut task = tokio::spawn(work(work_stop_rx));
        let mut finished = false;
        // Renew until shutdown or failure.
        let mut last_renew = Instant::now();
        let shutdown = loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break true,
                _ = &mut task => {
                    finished = true;
                    break false;
                }
                _ = tokio::time::sleep(RETRY) => {}
            }
            if elector.try_acquire_or_renew().await {
                last_renew = Instant::now();
            } else if last_renew.elapsed() > RENEW_DEADLINE {
                tracing::warn!(lease = %lease_name, "lost leadership: stopping until re-elected");
                break false;
            }
        };
        let _ = work_stop_tx.send(true);
        if !finished {
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut task).await;
        }
        if shutdown {
            elector.release().await;
            return;
        }
        if last_renew.elapsed() <= RENEW_DEADLINE {
            // The work ended by itself while we still lead: give the lease to a peer.
            elector.release().await;
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}
