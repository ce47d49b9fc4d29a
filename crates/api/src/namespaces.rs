//! Namespace lifecycle: the built-in namespaces at start-up, and the finalizer that empties a
//! terminating namespace (every namespaced resource, custom ones included) before the
//! namespace itself goes. Level-triggered: a watch wakes it, a periodic resync catches
//! anything missed, and a restart simply picks up where it was.
//!
//! This lives in the API crate rather than with the controllers because it must enumerate
//! every served resource, including CRDs, from the registry; it writes only through the
//! same handler functions clients use.

use crate::error::ApiResult;
use crate::filter::Filter;
use crate::handlers::read::list_page_all;
use crate::handlers::{create_object, delete_object, update_object, WriteCtx};
use crate::request::FieldValidation;
use crate::server::Shared;
use crate::storage;
use corral_store::WatchMessage;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

pub const BUILTIN: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

pub fn system_ctx() -> WriteCtx {
    WriteCtx {
        dry_run: false,
        field_validation: FieldValidation::Ignore,
        field_manager: "corral-apiserver".into(),
        apply: false,
    }
}

/// Create the namespaces every cluster has, the `kubernetes` Service and the cluster DNS
/// Service.
pub async fn bootstrap(st: &Shared) -> ApiResult<()> {
    let ns_res = st
        .registry
        .lookup("", "v1", "namespaces")
        .expect("built in");
    for name in BUILTIN {
        if storage::get(&st.store, &ns_res, None, name)
            .await?
            .is_none()
        {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            match create_object(st, &ns_res, None, obj, &system_ctx()).await {
                Ok(_) => {}
                Err(e) if e.code() == 409 => {}
                Err(e) => return Err(e),
            }
        }
    }
    let svc_res = st.registry.lookup("", "v1", "services").expect("built in");
    if storage::get(&st.store, &svc_res, Some("default"), "kubernetes")
        .await?
        .is_none()
    {
        let ip = st.config.ranges.first();
        crate::alloc::release(
            &st.store,
            format!("/registry/ranges/serviceips/{ip}").as_bytes(),
        )
        .await;
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": st.config.advertise.port()}]}
        });
        match create_object(st, &svc_res, Some("default"), svc, &system_ctx()).await {
            Ok(_) => {}
            Err(e) if e.code() == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let class_res = st
        .registry
        .lookup("networking.k8s.io", "v1", "ingressclasses")
        .expect("built in");
    if storage::get(&st.store, &class_res, None, "corral")
        .await?
        .is_none()
    {
        // The nodes' proxies serve Ingresses of this class; it is the default, as k3s makes
        // Traefik's, so Ingresses that name no class work too.
        let class = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "corral", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
            "spec": {"controller": "corral.dev/ingress"}
        });
        match create_object(st, &class_res, None, class, &system_ctx()).await {
            Ok(_) => {}
            Err(e) if e.code() == 409 => {}
            Err(e) => return Err(e),
        }
    }
    if let Err(e) = bootstrap_cluster_dns(st).await {
        // A cluster without its DNS Service is still a cluster: say so and carry on.
        tracing::warn!(error = %e, "creating the kube-system/kube-dns Service failed");
    }
    // The API server's own endpoints, rewritten at each start so they follow a changed
    // address or port (kube-apiserver's endpoint reconciler does the same).
    let ip = st.config.advertise.ip().to_string();
    let port = st.config.advertise.port();
    let ep = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]
    });
    ensure(st, "", "v1", "endpoints", ep, &["subsets"]).await?;
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": if st.config.advertise.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
    });
    ensure(
        st,
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        slice,
        &["addressType", "endpoints", "ports"],
    )
    .await?;
    Ok(())
}

/// Creates `obj` (in `default`), or updates the `fields` of the stored one when they differ.
async fn ensure(
    st: &Shared,
    group: &str,
    version: &str,
    resource: &str,
    obj: Value,
    fields: &[&str],
) -> ApiResult<()> {
    let res = st
        .registry
        .lookup(group, version, resource)
        .expect("built in");
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let ns = Some("default");
    match storage::get(&st.store, &res, ns, &name).await? {
        None => match create_object(st, &res, ns, obj, &system_ctx()).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == 409 => Ok(()),
            Err(e) => Err(e),
        },
        Some((current, _)) if fields.iter().all(|f| current[f] == obj[f]) => Ok(()),
        Some(_) => update_object(st, &res, ns, &name, None, &system_ctx(), |current| {
            let mut n = current.clone();
            for f in fields {
                n[*f] = obj[*f].clone();
            }
            Ok(n)
        })
        .await
        .map(drop),
    }
}

/// The `kube-dns` Service, as k3s ships it but without a selector: every node's proxy
/// answers its address itself. Made once; a deleted one comes back at the next start.
async fn bootstrap_cluster_dns(st: &Shared) -> ApiResult<()> {
    let svc_res = st.registry.lookup("", "v1", "services").expect("built in");
    if storage::get(&st.store, &svc_res, Some("kube-system"), "kube-dns")
        .await?
        .is_none()
    {
        let ip = st.config.ranges.cluster_dns();
        match crate::alloc::ip_owner(&st.store, ip).await? {
            // A store from before the address was reserved may have given it away.
            Some(owner) if owner != crate::alloc::CLUSTER_DNS_OWNER => {
                tracing::warn!(%ip, %owner, "the cluster DNS address is held by another Service; not creating kube-system/kube-dns");
                return Ok(());
            }
            // Claimed by a kube-dns whose write never happened.
            Some(_) => {
                crate::alloc::release(
                    &st.store,
                    format!("/registry/ranges/serviceips/{ip}").as_bytes(),
                )
                .await
            }
            None => {}
        }
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {
                "k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}
        });
        match create_object(st, &svc_res, Some("kube-system"), svc, &system_ctx()).await {
            Ok(_) => {}
            Err(e) if e.code() == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Empty one terminating namespace a step; true when it is gone.
async fn finalize(st: &Shared, ns: &Value) -> ApiResult<bool> {
    let name = ns["metadata"]["name"].as_str().unwrap_or("").to_string();
    let mut remaining = 0usize;
    let mut seen = BTreeSet::new();
    let everything = Filter::from_query(
        &st.registry
            .lookup("", "v1", "namespaces")
            .expect("built in"),
        None,
        None,
    )?;
    for res in st.registry.all().into_iter().filter(|r| r.namespaced) {
        // Versions of one resource share a key space: visit it once.
        if !seen.insert((res.storage_group.clone(), res.storage_resource.clone())) {
            continue;
        }
        let page = list_page_all(st, &res, Some(&name), &everything).await?;
        for obj in page.items {
            remaining += 1;
            if !obj["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            let oname = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            let view = crate::handlers::write_view_background();
            match delete_object(st, &res, Some(&name), &oname, &view).await {
                Ok(_) => {}
                Err(e) if e.code() == 404 => {}
                Err(e) => {
                    tracing::warn!(namespace = %name, object = %oname, error = %e, "namespace cleanup delete failed")
                }
            }
        }
    }
    if remaining > 0 {
        return Ok(false);
    }
    let ns_res = st
        .registry
        .lookup("", "v1", "namespaces")
        .expect("built in");
    let mut ctx = system_ctx();
    ctx.field_manager = "namespace-controller".into();
    let r = update_object(
        st,
        &ns_res,
        None,
        &name,
        Some("finalize"),
        &ctx,
        |current| {
            let mut n = current.clone();
            let fins: Vec<Value> = n["spec"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f != "kubernetes")
                .collect();
            n["spec"]["finalizers"] = json!(fins);
            Ok(n)
        },
    )
    .await;
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.code() == 404 => Ok(true),
        Err(e) => Err(e),
    }
}

/// The namespace finalizer loop, until `stop` fires.
pub async fn run_finalizer(st: Shared, mut stop: tokio::sync::watch::Receiver<bool>) {
    let ns_res = st
        .registry
        .lookup("", "v1", "namespaces")
        .expect("built in");
    let prefix = storage::prefix(&ns_res, None);
    let end = storage::prefix_end(&prefix);
    let everything = Filter::from_query(&ns_res, None, None).expect("empty filter");
    let mut watch = st
        .store
        .watch(&prefix, &end, st.store.current_revision())
        .ok();
    loop {
        let mut pending = false;
        match list_page_all(&st, &ns_res, None, &everything).await {
            Ok(page) => {
                for ns in page
                    .items
                    .iter()
                    .filter(|n| !n["metadata"]["deletionTimestamp"].is_null())
                {
                    match finalize(&st, ns).await {
                        Ok(done) => pending |= !done,
                        Err(e) => {
                            pending = true;
                            tracing::warn!(loop_name = "namespace-finalizer", error = %e, "finalize failed");
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(loop_name = "namespace-finalizer", error = %e, "list failed"),
        }
        // Wake on a namespace change, or soon when work is pending, or on a slow resync.
        let wait = if pending {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(30)
        };
        let woke = async {
            match watch.as_mut() {
                Some(w) => loop {
                    match w.next().await {
                        Some(Ok(WatchMessage::Event(_))) => break,
                        Some(Ok(_)) => continue,
                        _ => {
                            tokio::time::sleep(wait).await;
                            break;
                        }
                    }
                },
                None => tokio::time::sleep(wait).await,
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = woke => {}
        }
        if watch.is_none() {
            watch = st
                .store
                .watch(&prefix, &end, st.store.current_revision())
                .ok();
        }
    }
}
