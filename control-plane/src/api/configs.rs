//! `GET PUT DELETE /services/{service}/config/{name}`: config documents, stored as
//! given with their content type (up to 1 MiB each).

use super::error::{ApiError, ApiResult};
use super::extract::{check_config_name, check_service, check_stored_config_name, Actor, Body, IfMatch, Path, Query};
use super::format::{etag, rfc3339, Written};
use super::sidecars::dry_run_report;
use super::state::AppState;
use crate::store::{StoreError, StoredConfig};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use outrider_api::{
    ConfigDeleteResponse, ConfigDeleted, ConfigMeta, ConfigPutResponse, ConfigSize, FieldError, Problem, WriteQuery,
};

/// A stored config document's metadata as the API shows it.
pub fn config_meta(c: &StoredConfig) -> ConfigMeta {
    ConfigMeta {
        service: c.service.clone(),
        name: c.name.clone(),
        content_type: c.content_type.clone(),
        size: c.content.len() as u64,
        revision: c.revision,
        updated_at: rfc3339(c.updated_at_ms),
    }
}

#[utoipa::path(get, path = "/services/{service}/config/{name}", tag = "config",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("name" = String, Path, description = "config document name: letters, digits, '.', '_' and '-' (a file name, no path)", pattern = "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,255}$")),
    responses(
        // `*/*` and any value: the document in the type it was stored with, whatever
        // that is (clients that parse YAML or JSON see a structure, not a string).
        (status = 200, description = "the document as stored, in its own content type; ETag. Always `X-Content-Type-Options: nosniff` and `Content-Security-Policy: sandbox`; a type a browser renders as a page (HTML, XHTML, SVG, XML) also `Content-Disposition: attachment`", content_type = "*/*", body = serde_json::Value,
            headers(("ETag" = String, description = "the revision, quoted"), ("Content-Security-Policy" = String, description = "sandbox"))),
        (status = 404, description = "no such document", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "not a valid service or document name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn get(State(state): State<AppState>, Path((service, name)): Path<(String, String)>) -> ApiResult<Response> {
    check_service(&service)?;
    check_stored_config_name(&name)?;
    let c = state
        .store
        .get_config(&service, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("service {service:?} has no config document {name:?}")))?;
    let ct = HeaderValue::from_str(&c.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut resp = (
        [(header::CONTENT_TYPE, ct), (header::ETAG, etag(c.revision))],
        c.content,
    )
        .into_response();
    inert(resp.headers_mut(), &c.content_type);
    Ok(resp)
}

/// A config document is whatever its author stored, served from the dashboard's
/// origin: it must never run there. `sandbox` gives a document opened in a tab no
/// origin and no scripts, `nosniff` stops a browser guessing a type, and a type a
/// browser would render as a page is a download instead.
fn inert(headers: &mut HeaderMap, content_type: &str) {
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let active = matches!(
        media.as_str(),
        "text/html" | "application/xhtml+xml" | "image/svg+xml" | "text/xml" | "application/xml" | "text/xsl"
    );
    if active {
        headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    }
}

#[utoipa::path(put, path = "/services/{service}/config/{name}", tag = "config",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("name" = String, Path, description = "config document name: letters, digits, '.', '_' and '-' (a file name, no path)", pattern = "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,200}$"),
        WriteQuery,
        ("If-Match" = Option<String>, Header, description = "the ETag read; 412 if the document changed since")),
    // Bytes, not the array of integers a `Vec<u8>` would be described as; optional
    // because an empty document is a document.
    request_body(content = Option<String>, description = "the document (up to 1 MiB, empty allowed), any content type; served back with it", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "stored (ETag), or the dry-run report", body = ConfigPutResponse),
        (status = 400, description = "malformed query", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over 1 MiB, or the service's documents together over 4 MiB or 256 documents", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "not a valid service or document name, or a content type over 255 bytes", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn put(
    State(state): State<AppState>,
    Path((service, name)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    Actor(actor): Actor,
    IfMatch(precondition): IfMatch,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Written<ConfigMeta>> {
    check_service(&service)?;
    check_config_name(&name)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    if content_type.len() > outrider_policy::limits::CONTENT_TYPE_MAX_BYTES {
        return Err(ApiError::Invalid(vec![FieldError {
            field: "content-type".into(),
            message: format!(
                "must be at most {} bytes long",
                outrider_policy::limits::CONTENT_TYPE_MAX_BYTES
            ),
        }]));
    }
    if q.dry_run {
        let current = state.store.get_config(&service, &name).await?;
        // A dry run answers what the write would: a stale If-Match is a 412 here too,
        // and so is a service past its size budget a 413.
        precondition.check(current.as_ref().map(|c| c.revision))?;
        state.store.check_config_room(&service, &name, body.len()).await?;
        let changed = current.is_none_or(|c| c.content != body.as_ref() || c.content_type != content_type);
        let document = ConfigSize {
            name,
            size: body.len() as u64,
        };
        return Ok(Written::DryRun(
            dry_run_report(
                &state,
                Some(&service),
                changed,
                serde_json::to_value(document).map_err(ApiError::internal)?,
            )
            .await?,
        ));
    }
    let stored = state
        .store
        .put_config(&service, &name, &content_type, &body, precondition, &actor)
        .await?;
    state.after_write().await;
    Ok(Written::Stored {
        revision: stored.revision,
        body: config_meta(&stored),
    })
}

#[utoipa::path(delete, path = "/services/{service}/config/{name}", tag = "config",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("name" = String, Path, description = "config document name: letters, digits, '.', '_' and '-' (a file name, no path)", pattern = "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,255}$"),
        WriteQuery,
        ("If-Match" = Option<String>, Header, description = "the ETag read; 412 if the document changed since")),
    responses(
        (status = 200, description = "deleted (the revision of the deletion), or the dry-run report", body = ConfigDeleteResponse),
        (status = 404, description = "no such document", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "not a valid service or document name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(state): State<AppState>,
    Path((service, name)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    Actor(actor): Actor,
    IfMatch(precondition): IfMatch,
) -> ApiResult<Json<ConfigDeleteResponse>> {
    check_service(&service)?;
    check_stored_config_name(&name)?;
    if q.dry_run {
        let Some(current) = state.store.get_config(&service, &name).await? else {
            return Err(ApiError::NotFound(format!(
                "service {service:?} has no config document {name:?}"
            )));
        };
        precondition.check(Some(current.revision))?;
        return Ok(Json(ConfigDeleteResponse::DryRun(
            dry_run_report(&state, Some(&service), true, serde_json::Value::Null).await?,
        )));
    }
    let revision = match state.store.delete_config(&service, &name, precondition, &actor).await {
        Err(StoreError::NotFound) => {
            return Err(ApiError::NotFound(format!(
                "service {service:?} has no config document {name:?}"
            )))
        }
        r => r?,
    };
    state.after_write().await;
    Ok(Json(ConfigDeleteResponse::Deleted(ConfigDeleted {
        service,
        name,
        revision,
        deleted: true,
    })))
}
