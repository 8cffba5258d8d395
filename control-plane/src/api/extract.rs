//! Inputs handlers take again and again, as extractors whose rejections are
//! [`ApiError`]s (so even a bad query string answers problem+json): the body within
//! its size limit, a JSON body with 400/422, path and query parameters, `If-Match`,
//! and the actor of a change. Also the layer that authenticates every request.

use super::error::{ApiError, ApiResult};
use super::state::AppState;
use crate::auth::{AuthError, Principal};
use crate::store::Precondition;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use outrider_api::FieldError;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use utoipa::openapi::path::ParameterIn;

/// Largest policy or config document accepted (see `docs/reference.md`).
pub const MAX_BODY: usize = outrider_policy::limits::DOCUMENT_MAX_BYTES;

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the body is larger than {MAX_BODY} bytes")
        } else {
            r.body_text()
        };
        ApiError::Body(detail, status)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        match r {
            // A path that matched a route but not its parameters' types (`/revisions/x`).
            PathRejection::FailedToDeserializePathParams(e) => ApiError::BadRequest(e.body_text()),
            // Only a handler routed without its path parameters gets here: our bug.
            other => ApiError::internal(other.body_text()),
        }
    }
}

/// How long a body may take to arrive once its head has: the listener's head
/// timeout ends with the head, so a client trickling a body would otherwise hold
/// its connection as long as it likes.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The raw body, at most [`MAX_BODY`] bytes (413 beyond), within [`BODY_TIMEOUT`]
/// (408 beyond).
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(req, state)).await {
            Ok(bytes) => Ok(Body(bytes?)),
            Err(_) => Err(ApiError::Body(
                format!("the body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
                StatusCode::REQUEST_TIMEOUT,
            )),
        }
    }
}

/// A JSON body of type `T`: 400 if it is not JSON at all, 422 naming the field
/// (`steps[0]`) if it is JSON of the wrong shape.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Body(bytes) = Body::from_request(req, state).await?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
        serde_path_to_error::deserialize(value).map(JsonBody).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            ApiError::Invalid(vec![FieldError {
                field,
                message: e.into_inner().to_string(),
            }])
        })
    }
}

/// Path parameters; a malformed one is a 400 problem.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(t) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(t))
    }
}

/// Query parameters; a malformed one is a 400 problem.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(t) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(t))
    }
}

/// `If-Match` and `If-None-Match` → what the write expects.
///
/// `If-Match` is a list: the write goes ahead when the current revision is any of
/// its tags, and `*` when the document exists at all; a tag that names no revision
/// matches nothing. `If-None-Match: *` makes a write create-only. Both at once ask
/// for a document that exists and does not, so nothing can match (412).
pub struct IfMatch(pub Precondition);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(IfMatch(precondition(&parts.headers)))
    }
}

/// Reads the precondition headers of a write (see [`IfMatch`]).
pub fn precondition(headers: &axum::http::HeaderMap) -> Precondition {
    let header_text = |name| -> Option<String> {
        let values: Vec<&str> = headers.get_all(name).iter().map(|v| v.to_str().unwrap_or("")).collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    let create_only = header_text(header::IF_NONE_MATCH).is_some_and(|v| v.split(',').any(|t| t.trim() == "*"));
    let Some(if_match) = header_text(header::IF_MATCH) else {
        return if create_only {
            Precondition::Absent
        } else {
            Precondition::None
        };
    };
    if create_only {
        return Precondition::AnyOf(Vec::new());
    }
    let tags: Vec<&str> = if_match.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    if tags.contains(&"*") {
        return Precondition::Exists;
    }
    Precondition::AnyOf(
        tags.iter()
            .filter_map(|t| t.strip_prefix("W/").unwrap_or(t).trim_matches('"').parse().ok())
            .collect(),
    )
}

/// Who makes a change, for the history: the authenticated token's name.
pub struct Actor(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let name = parts
            .extensions
            .get::<Principal>()
            .map_or_else(|| crate::auth::ANONYMOUS.to_owned(), |p| p.name.clone());
        Ok(Actor(name))
    }
}

/// Every `/api/v1` request passes here: who is it (401), may they (403); see `auth`.
/// The principal rides on the request for [`Actor`]. A client address that keeps
/// failing gets 429 with `Retry-After` instead of 401 (see `auth::AuthThrottle`);
/// its valid tokens still work, because the token is always checked first.
pub async fn authenticate(Extension(state): Extension<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let path = path.strip_prefix(outrider_api::API_PREFIX).unwrap_or(path);
    match crate::auth::authorize(
        &state.store,
        state.api_token.as_deref(),
        req.method(),
        path,
        req.headers(),
    )
    .await
    {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(AuthError::Unauthorized) => {
            state.hub.metrics.api_auth_failures.inc();
            let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
            match client.and_then(|ip| state.throttle.failed(ip).map(|wait| (ip, wait))) {
                Some((ip, wait)) => {
                    state.hub.metrics.api_auth_throttled.inc();
                    tracing::warn!(client = %ip, "repeated failed authentication; answering 429");
                    ApiError::TooManyRequests {
                        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                    }
                    .into_response()
                }
                None => ApiError::Unauthorized.into_response(),
            }
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A service name from the path: 422 naming `service` when it cannot be one.
pub fn check_service(service: &str) -> ApiResult<()> {
    outrider_policy::validate_service_name(service).map_err(|m| {
        ApiError::Invalid(vec![FieldError {
            field: "service".into(),
            message: m,
        }])
    })
}

/// A config document name from the path of a write: 422 naming `name` when it cannot
/// be one (the write limit: room for what the sidecar builds from it).
pub fn check_config_name(name: &str) -> ApiResult<()> {
    outrider_policy::validate_config_name(name).map_err(name_error)
}

/// A config document name from the path of a read or delete: any name a document may
/// have been stored under, including those longer than today's write limit, so they
/// can still be read and removed.
pub fn check_stored_config_name(name: &str) -> ApiResult<()> {
    outrider_policy::validate_config_file_name(name).map_err(name_error)
}

fn name_error(message: String) -> ApiError {
    ApiError::Invalid(vec![FieldError {
        field: "name".into(),
        message,
    }])
}

/// The query parameters each operation takes, read from the OpenAPI document, so the
/// router, the document and this check cannot disagree.
#[derive(Clone, Default)]
pub struct QueryParams(Arc<HashMap<(String, String), Vec<String>>>);

impl QueryParams {
    pub fn from_doc(doc: &utoipa::openapi::OpenApi) -> Self {
        let mut map = HashMap::new();
        for (path, item) in &doc.paths.paths {
            let ops = [
                ("GET", &item.get),
                ("PUT", &item.put),
                ("POST", &item.post),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
                ("HEAD", &item.head),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let names = op
                    .parameters
                    .iter()
                    .flatten()
                    .filter(|p| p.parameter_in == ParameterIn::Query)
                    .map(|p| p.name.clone())
                    .collect();
                map.insert((method.to_owned(), path.clone()), names);
            }
        }
        Self(Arc::new(map))
    }
}

/// Query parameters are exact: one an operation does not take is a 400 naming it, so a
/// misspelt `?dryrun=true` can never turn into a real write.
pub async fn exact_query(req: Request, next: Next) -> Response {
    let Some(query) = req.uri().query().filter(|q| !q.is_empty()) else {
        return next.run(req).await;
    };
    let (Some(matched), Some(params)) = (
        req.extensions().get::<MatchedPath>(),
        req.extensions().get::<QueryParams>(),
    ) else {
        return next.run(req).await;
    };
    // HEAD is answered by the GET handler.
    let method = if req.method() == Method::HEAD {
        "GET"
    } else {
        req.method().as_str()
    };
    // A method the path does not serve is the router's to refuse (405), whatever its
    // query says.
    let Some(allowed) = params.0.get(&(method.to_owned(), matched.as_str().to_owned())) else {
        return next.run(req).await;
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if !allowed.iter().any(|a| a == key) {
            let takes = if allowed.is_empty() {
                "this operation takes no query parameters".to_owned()
            } else {
                format!("this operation takes {}", allowed.join(", "))
            };
            return ApiError::BadRequest(format!("unknown query parameter {key:?}: {takes}")).into_response();
        }
    }
    next.run(req).await
}
