//! `GET /services/{service}/secrets`, `GET PUT DELETE /services/{service}/secrets/{name}`:
//! secrets go in as a raw body (up to 64 KiB) and only their metadata comes out.
//!
//! Nothing here logs, and no error carries the body: a value reaches the store's
//! sealing and nothing else.

use super::error::{ApiError, ApiResult};
use super::extract::{check_config_name, check_service, check_stored_config_name, Actor, Body, IfMatch, Path, Query};
use super::format::{etag, rfc3339, Written};
use super::sidecars::dry_run_report;
use super::state::AppState;
use crate::store::{SecretMeta as Stored, StoreError};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use outrider_api::{
    ConfigSize, Problem, SecretDeleteResponse, SecretDeleted, SecretMeta, SecretPutResponse, WriteQuery,
};
use outrider_policy::limits::SECRET_MAX_BYTES;

fn meta(s: &Stored) -> SecretMeta {
    SecretMeta {
        service: s.service.clone(),
        name: s.name.clone(),
        size: s.size,
        revision: s.revision,
        updated_at: rfc3339(s.updated_at_ms),
    }
}

fn not_found(service: &str, name: &str) -> ApiError {
    ApiError::NotFound(format!("service {service:?} has no secret {name:?}"))
}

#[utoipa::path(get, path = "/services/{service}/secrets", tag = "secrets",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses(
        (status = 200, description = "the service's secrets by name: name, size, revision and time, never values (empty for a service without any)", body = Vec<SecretMeta>),
        (status = 422, description = "not a valid service name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn list(State(state): State<AppState>, Path(service): Path<String>) -> ApiResult<Json<Vec<SecretMeta>>> {
    check_service(&service)?;
    let secrets = state.store.list_secrets(&service).await?;
    Ok(Json(secrets.iter().map(meta).collect()))
}

#[utoipa::path(get, path = "/services/{service}/secrets/{name}", tag = "secrets",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("name" = String, Path, description = "secret name: letters, digits, '.', '_' and '-' (a file name, no path)", pattern = "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,255}$")),
    responses(
        (status = 200, description = "the secret's metadata (never its value); ETag", body = SecretMeta,
            headers(("ETag" = String, description = "the revision, quoted"))),
        (status = 404, description = "no such secret", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "not a valid service or secret name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn get(State(state): State<AppState>, Path((service, name)): Path<(String, String)>) -> ApiResult<Response> {
    check_service(&service)?;
    check_stored_config_name(&name)?;
    let s = state
        .store
        .get_secret(&service, &name)
        .await?
        .ok_or_else(|| not_found(&service, &name))?;
    Ok(([(header::ETAG, etag(s.revision))], Json(meta(&s))).into_response())
}

#[utoipa::path(put, path = "/services/{service}/secrets/{name}", tag = "secrets",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("name" = String, Path, description = "secret name: letters, digits, '.', '_' and '-' (a file name, no path)", pattern = "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,200}$"),
        WriteQuery,
        ("If-Match" = Option<String>, Header, description = "the ETag read; 412 if the secret changed since"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: create only; 412 if the secret exists")),
    request_body(content = Option<String>, description = "the value (up to 64 KiB, empty allowed), any content type but a form's; never shown again", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "stored: the metadata (ETag), or the dry-run report", body = SecretPutResponse),
        (status = 412, description = "stale If-Match, or If-None-Match: * and the secret exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "value over 64 KiB, or the service has 64 other secrets", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "not a valid service or secret name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable, or no secrets key configured (OUTRIDER_SECRETS_KEY_FILE)", body = Problem, content_type = "application/problem+json")))]
pub async fn put(
    State(state): State<AppState>,
    Path((service, name)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    Actor(actor): Actor,
    IfMatch(precondition): IfMatch,
    Body(value): Body,
) -> ApiResult<Written<SecretMeta>> {
    check_service(&service)?;
    check_config_name(&name)?;
    if value.len() > SECRET_MAX_BYTES {
        return Err(ApiError::Body(
            format!(
                "the value is {} bytes; a secret may have at most {SECRET_MAX_BYTES}",
                value.len()
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ));
    }
    if !state.store.has_secrets_key() {
        return Err(StoreError::SecretsKeyMissing.into());
    }
    if q.dry_run {
        let current = state.store.get_secret(&service, &name).await?;
        precondition.check(current.as_ref().map(|c| c.revision))?;
        state.store.check_secret_room(&service, &name).await?;
        let document = ConfigSize {
            name,
            size: value.len() as u64,
        };
        // Every write of a secret is a new revision of its service's snapshot (the
        // value is not compared: that would mean opening the stored one).
        let report = dry_run_report(
            &state,
            Some(&service),
            true,
            serde_json::to_value(document).map_err(ApiError::internal)?,
        )
        .await?;
        return Ok(Written::DryRun(report));
    }
    let stored = state
        .store
        .put_secret(&service, &name, &value, precondition, &actor)
        .await?;
    state.after_write().await;
    Ok(Written::Stored {
        revision: stored.revision,
        body: meta(&stored),
    })
}

#[utoipa::path(delete, path = "/services/{service}/secrets/{name}", tag = "secrets",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("name" = String, Path, description = "secret name: letters, digits, '.', '_' and '-' (a file name, no path)", pattern = "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,255}$"),
        WriteQuery,
        ("If-Match" = Option<String>, Header, description = "the ETag read; 412 if the secret changed since")),
    responses(
        (status = 200, description = "deleted (the revision of the deletion), or the dry-run report", body = SecretDeleteResponse),
        (status = 404, description = "no such secret", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "not a valid service or secret name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(state): State<AppState>,
    Path((service, name)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    Actor(actor): Actor,
    IfMatch(precondition): IfMatch,
) -> ApiResult<Json<SecretDeleteResponse>> {
    check_service(&service)?;
    check_stored_config_name(&name)?;
    if q.dry_run {
        let current = state
            .store
            .get_secret(&service, &name)
            .await?
            .ok_or_else(|| not_found(&service, &name))?;
        precondition.check(Some(current.revision))?;
        let report = dry_run_report(&state, Some(&service), true, serde_json::Value::Null).await?;
        return Ok(Json(SecretDeleteResponse::DryRun(report)));
    }
    let revision = match state.store.delete_secret(&service, &name, precondition, &actor).await {
        Err(StoreError::NotFound) => return Err(not_found(&service, &name)),
        r => r?,
    };
    state.after_write().await;
    Ok(Json(SecretDeleteResponse::Deleted(SecretDeleted {
        service,
        name,
        revision,
        deleted: true,
    })))
}
