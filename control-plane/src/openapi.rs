//! The OpenAPI 3.1 document of the REST API (`GET /api/v1/openapi.json`), generated
//! by utoipa from the `#[utoipa::path]` attributes on the handlers themselves, so
//! a handler and its description change together. A test checks that every route of
//! the routers is in the document and every documented operation is routed.

use crate::api::{self, ApiError, AppState};
use crate::auth;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Outrider control plane",
        description = "Policies, config documents, sidecars, history and live events of an Outrider mesh \
                       (DESIGN §5). Errors are application/problem+json. Bearer tokens: viewers read, \
                       editors change policy, admins also manage tokens."
    ),
    paths(
        api::list_services,
        api::get_service,
        api::get_policy,
        api::put_policy,
        api::delete_policy,
        api::get_config,
        api::put_config,
        api::delete_config,
        api::list_sidecars,
        api::list_revisions,
        api::get_revision,
        api::revert,
        api::events,
        api::healthz,
        api::readyz,
        api::metrics,
        crate::canary::start,
        crate::canary::get,
        crate::canary::abort,
        auth::list_tokens,
        auth::create_token,
        auth::revoke_token,
        openapi_json,
    ),
    modifiers(&BearerToken),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI document of this API", content_type = "application/json")))]
pub(crate) async fn openapi_json(_: axum::extract::State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(ApiDoc::openapi()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, Timing};
    use crate::metrics::Metrics;
    use crate::store::Store;
    use axum::body::Body;
    use axum::http::{Method, Request};
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use tower::ServiceExt;

    /// (METHOD, path) of every `.route(...)` in the routers' source.
    fn routed() -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (src, nested) in [(include_str!("api.rs"), true), (include_str!("auth.rs"), true)] {
            let mut rest = src;
            while let Some(i) = rest.find(".route(") {
                rest = &rest[i + 7..];
                let mut depth = 1;
                let end = rest
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(rest.len(), |(j, _)| j);
                let call = &rest[..end];
                let Some(path) = call.split('"').nth(1) else { continue };
                let top_level = matches!(path, "/healthz" | "/readyz" | "/metrics");
                let full = if nested && !top_level {
                    format!("/api/v1{path}")
                } else {
                    path.to_owned()
                };
                for m in ["get", "put", "post", "delete"] {
                    let called = call
                        .match_indices(&format!("{m}("))
                        .any(|(k, _)| k == 0 || matches!(call.as_bytes()[k - 1], b' ' | b'\n' | b'.' | b',' | b'('));
                    if called {
                        out.insert((m.to_uppercase(), full.clone()));
                    }
                }
            }
        }
        out
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in item.as_object().unwrap().keys() {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented_and_every_documented_operation_is_a_route() {
        let routed = routed();
        let documented = documented();
        assert!(routed.len() >= 19, "the source scan found too little: {routed:?}");
        let missing: Vec<_> = routed.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the OpenAPI document: {missing:?}"
        );
        let extra: Vec<_> = documented.difference(&routed).collect();
        assert!(extra.is_empty(), "documented but not routed: {extra:?}");
    }

    #[tokio::test]
    async fn every_documented_operation_reaches_a_handler() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        let hub = Hub::new(store.clone(), Timing::default(), Arc::new(Metrics::new()));
        // Writes push to the hub, which builds nothing before it has loaded.
        hub.load().await;
        let app = api::router(AppState {
            hub,
            store,
            api_token: None,
        });
        for (method, path) in documented() {
            let uri = path
                .replace("{service}", "web")
                .replace("{kind}", "routing")
                .replace("{name}", "app.yaml")
                .replace("{n}", "1");
            let req = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).unwrap())
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_ne!(resp.status(), 405, "{method} {uri}");
            if uri.ends_with("/events") {
                continue; // a stream that never ends
            }
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
            let body = String::from_utf8_lossy(&body);
            assert!(!body.contains("no such API endpoint"), "{method} {uri}: {body}");
        }
    }
}
