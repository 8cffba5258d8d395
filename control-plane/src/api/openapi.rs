//! The OpenAPI 3.1 document of the REST API (`GET /api/v1/openapi.json`). Its paths
//! come from the router itself (`utoipa-axum` registers each handler and its
//! `#[utoipa::path]` together); this module adds the title, the bearer scheme and
//! the `400` every `/api/v1` operation can answer (`extract::exact_query`).

use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

/// What the document says before the routes add their paths.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Outrider control plane",
        description = "Policies, config documents, sidecars, history and live events of an Outrider mesh \
                       (see docs/reference.md). Errors are application/problem+json. Bearer tokens: viewers \
                       read, editors change policy, admins also manage tokens."
    ),
    modifiers(&BearerToken),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Query parameters are exact on every `/api/v1` operation, so each can answer `400`
/// for an unknown or malformed one: documented here once for the operations whose
/// own description does not list a `400` already.
pub fn document_query_refusals(doc: &mut Document) {
    let refusal = ResponseBuilder::new()
        .description("unknown or malformed query parameter")
        .content(
            outrider_api::PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build();
    let api = doc
        .paths
        .paths
        .iter_mut()
        .filter(|(path, _)| path.starts_with(outrider_api::API_PREFIX));
    for (_, item) in api {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            op.responses
                .responses
                .entry("400".to_owned())
                .or_insert_with(|| refusal.clone().into());
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses(
        (status = 200, description = "the OpenAPI document of this API", body = Object, content_type = "application/json"),
        (status = 401, description = "no valid bearer token", body = outrider_api::Problem, content_type = "application/problem+json")))]
pub async fn openapi_json(Extension(doc): Extension<DocumentJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}

/// The document, serialized once when the router is built (it cannot change after).
#[derive(Clone)]
pub struct DocumentJson(pub Bytes);

impl DocumentJson {
    pub fn new(doc: &Document) -> Self {
        // A document of plain strings and maps always serializes.
        DocumentJson(Bytes::from(serde_json::to_vec(doc).unwrap_or_default()))
    }
}

/// Adds the answers the HTTP port's defences give on every operation they guard,
/// so the document stays truthful without each handler repeating them: 403 (a
/// `Host` a loopback listener does not answer, or a write from a foreign `Origin`),
/// 408 where a body is read (it must arrive in time), 415 on writes (a form type, or not JSON where JSON is taken), and 429 (too many
/// failed authentications) wherever a token is checked.
pub fn with_guard_responses(mut doc: Document) -> Document {
    use utoipa::openapi::{RefOr, Response};
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            (false, &mut item.get),
            (true, &mut item.put),
            (true, &mut item.post),
            (true, &mut item.delete),
            (true, &mut item.patch),
        ];
        for (write, op) in ops {
            let Some(op) = op.as_mut() else { continue };
            let responses = &mut op.responses.responses;
            // Every guarded operation already answers 401 as a problem; the others
            // reuse its shape.
            let Some(RefOr::T(problem)) = responses.get("401").cloned() else {
                continue;
            };
            let like = |description: &str| -> RefOr<Response> {
                let mut r: Response = problem.clone();
                r.description = description.to_owned();
                RefOr::T(r)
            };
            responses.insert(
                "429".into(),
                like("too many failed authentications from this address; Retry-After says when to retry"),
            );
            let forbidden = if write {
                "the token's role does not allow this, the write's Origin is not the control plane's own \
                 (nor in --allowed-origins), or the Host is not one a loopback listener answers"
            } else {
                "the token's role does not allow this, or the Host is not one a loopback listener answers"
            };
            responses.insert("403".into(), like(forbidden));
            if op.request_body.is_some() {
                responses.insert(
                    "408".into(),
                    like("the body did not arrive within 30 s of the request head"),
                );
            }
            if write {
                let unsupported = if path.ends_with("/config/{name}") || path.ends_with("/secrets/{name}") {
                    "a form content type (application/x-www-form-urlencoded, multipart/form-data)"
                } else {
                    "the body is not application/json (form and text types included)"
                };
                responses.insert("415".into(), like(unsupported));
            }
        }
    }
    doc
}
