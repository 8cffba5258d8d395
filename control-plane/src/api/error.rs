//! The one error type of the HTTP layer. Every error renders as
//! `application/problem+json` ([`outrider_api::Problem`]) with the right status.
//!
//! Converting an error into a response does not log: a server-side failure carries
//! its internal cause in a response extension ([`InternalCause`]), which the
//! [`log_internal_errors`] layer logs and removes, so clients only ever read
//! "store unavailable" or "internal error", never a database's text.

use crate::auth::AuthError;
use crate::store::StoreError;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use outrider_api::{FieldError, Problem, PROBLEM_JSON};
use outrider_policy::PolicyError;

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid document")]
    Invalid(Vec<FieldError>),
    #[error("the document changed since you read it (current revision: {current:?}); reload and retry")]
    Stale { current: Option<u64> },
    /// The request is fine but clashes with the current state (a rollout is running).
    #[error("{0}")]
    Conflict(String),
    /// The body could not be read: too large (413), or the connection failed.
    #[error("{0}")]
    Body(String, StatusCode),
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    /// The body's content type is not one this route takes (a form, or not JSON).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Too many failed authentications from this client; retry after the delay.
    #[error("too many failed authentications from this address; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    /// A feature this request needs is not configured (no secrets key); the detail
    /// says which setting gives it.
    #[error("{0}")]
    NotConfigured(String),
    /// The store cannot be reached; the cause is for the server's log only.
    #[error("store unavailable")]
    Unavailable(String),
    /// Anything else that is the server's fault; the cause is for the log only.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// For a cause that is the server's fault and tells the client nothing.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }

    fn status_and_title(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "Not Found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad Request"),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid document"),
            ApiError::Stale { .. } => (StatusCode::PRECONDITION_FAILED, "Stale write"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            ApiError::Body(_, s) => (*s, "Unacceptable body"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type"),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"),
            ApiError::NotConfigured(_) => (StatusCode::SERVICE_UNAVAILABLE, "Not configured"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Store unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::PreconditionFailed { current } => ApiError::Stale { current },
            StoreError::AlreadyExists => ApiError::Conflict("it exists already".into()),
            StoreError::TooLarge(m) => ApiError::Body(m, StatusCode::PAYLOAD_TOO_LARGE),
            e @ StoreError::SecretsKeyMissing => ApiError::NotConfigured(e.to_string()),
            StoreError::Refused(m) => ApiError::Conflict(m),
            ref e if e.is_unavailable() => ApiError::Unavailable(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthorized => ApiError::Unauthorized,
            AuthError::Forbidden(m) => ApiError::Forbidden(m),
            AuthError::Store(e) => e.into(),
        }
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Malformed(m) => ApiError::BadRequest(format!("malformed JSON: {m}")),
            PolicyError::Invalid(errs) => ApiError::Invalid(errs.into_iter().map(FieldError::from).collect()),
            PolicyError::UnknownKind(k) => ApiError::NotFound(format!(
                "unknown policy kind {k:?}: expected routing, rate-limit, logging or authorization"
            )),
        }
    }
}

/// A server-side error's cause, riding on its response to [`log_internal_errors`].
#[derive(Debug, Clone)]
pub struct InternalCause(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, title) = self.status_and_title();
        let mut problem = Problem::new(status.as_u16(), title, self.to_string());
        let mut cause = None;
        let mut retry_after = None;
        match self {
            ApiError::Invalid(errs) => {
                problem.detail = errs
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                problem.errors = Some(errs);
            }
            ApiError::Stale { current } => problem.current_revision = current,
            ApiError::Unavailable(c) | ApiError::Internal(c) => cause = Some(c),
            ApiError::TooManyRequests { retry_after_secs } => retry_after = Some(retry_after_secs),
            _ => {}
        }
        let mut resp = (status, Json(problem)).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(c) = cause {
            resp.extensions_mut().insert(InternalCause(c));
        }
        resp
    }
}

/// The layer that logs server-side errors with their cause (and strips the cause, so
/// nothing further out can send it).
pub async fn log_internal_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut resp = next.run(req).await;
    if let Some(InternalCause(cause)) = resp.extensions_mut().remove::<InternalCause>() {
        tracing::error!(%method, path, status = resp.status().as_u16(), error = %cause, "request failed");
    }
    resp
}

/// Every error is problem+json, including those no handler wrote: axum's own 404
/// and 405 (the `Allow` header kept), rejections raised before a handler runs, and
/// the dashboard's. A short plain-text body becomes the problem's detail.
pub async fn every_error_is_a_problem(resp: Response) -> Response {
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = std::str::from_utf8(&text).unwrap_or("").trim();
    let title = status.canonical_reason().unwrap_or("Error");
    let detail = match (text.is_empty(), status) {
        (false, _) => text.to_owned(),
        (true, StatusCode::NOT_FOUND) => "no such resource".to_owned(),
        (true, StatusCode::METHOD_NOT_ALLOWED) => "this resource does not take that method (see Allow)".to_owned(),
        (true, _) => title.to_owned(),
    };
    let body = serde_json::to_vec(&Problem::new(status.as_u16(), title, detail)).unwrap_or_default();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}
