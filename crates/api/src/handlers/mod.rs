//! Generic resource handlers: one implementation of get/list/watch/create/update/patch/
//! delete/deletecollection and the status, scale and binding subresources serves every
//! built-in kind and every custom resource.

pub mod read;
mod subresources;
mod write;

use crate::error::{ApiError, ApiResult};
use crate::registry::Resource;
use crate::request::{Query, Target};
use crate::server::Shared;
use crate::watch;
use axum::body::Body;
use axum::http::{Method, Request};
use axum::response::Response;

pub use write::{create_object, delete_object, update_object, DeleteView, WriteCtx};

/// Delete options for a plain background delete (what cleanup loops use).
pub fn write_view_background() -> DeleteView {
    DeleteView {
        propagation: Some("Background".into()),
        uid: None,
        resource_version: None,
        grace: None,
        dry_run: false,
    }
}

pub async fn resource(
    st: &Shared,
    res: &Resource,
    t: &Target,
    q: Query,
    req: Request<Body>,
) -> ApiResult<Response> {
    let ns = t.namespace.as_deref();
    let method = req.method().clone();
    match (&method, t.name.as_deref(), t.subresource.as_deref()) {
        (&Method::GET, None, None) => {
            if q.flag("watch") {
                watch::serve(st, res, ns, &q, req.headers()).await
            } else {
                read::list(st, res, ns, &q, req.headers()).await
            }
        }
        (&Method::GET, Some(name), None) => read::get(st, res, ns, name, &q, req.headers()).await,
        (&Method::GET, Some(name), Some("status")) if res.status => {
            read::get(st, res, ns, name, &q, req.headers()).await
        }
        (_, Some(name), Some("scale")) if res.scale.is_some() => {
            subresources::scale(st, res, ns, name, &q, req).await
        }
        (&Method::POST, Some(name), Some("binding"))
            if res.plural == "pods" && res.group.is_empty() =>
        {
            subresources::binding(st, res, ns, name, &q, req).await
        }
        (&Method::GET, Some(name), Some("log")) if res.plural == "pods" && res.group.is_empty() => {
            subresources::log(st, res, ns, name, &q, req.uri().query()).await
        }
        (
            &Method::GET | &Method::POST,
            Some(name),
            Some(sub @ ("exec" | "attach" | "portforward")),
        ) if res.plural == "pods" && res.group.is_empty() => {
            subresources::stream(st, res, ns, name, sub, &q, req).await
        }
        (&Method::POST, None, None) => {
            if res.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource (post {})",
                    res.plural
                )));
            }
            write::create(st, res, ns, &q, req).await
        }
        (&Method::PUT, Some(name), sub @ (None | Some("status") | Some("finalize"))) => {
            if sub == Some("status") && !res.status {
                return Err(ApiError::path_not_found());
            }
            if sub == Some("finalize") && res.plural != "namespaces" {
                return Err(ApiError::path_not_found());
            }
            write::update(st, res, ns, name, sub, &q, req).await
        }
        (&Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
            if sub == Some("status") && !res.status {
                return Err(ApiError::path_not_found());
            }
            write::patch(st, res, ns, name, sub, &q, req).await
        }
        (&Method::DELETE, Some(name), None) => write::delete(st, res, ns, name, &q, req).await,
        (&Method::DELETE, None, None) => {
            if res.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource (delete {})",
                    res.plural
                )));
            }
            write::delete_collection(st, res, ns, &q, req).await
        }
        (_, _, Some(_)) => Err(ApiError::path_not_found()),
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} {})",
            method.as_str().to_lowercase(),
            res.plural
        ))),
    }
}
