//! `GET POST /join-tokens`, `DELETE /join-tokens/{name}`: per-service join tokens,
//! for admins. A join token lets a sidecar register as its service and nothing else
//! (`crate::join`).

use super::error::{ApiError, ApiResult};
use super::extract::{check_service, JsonBody, Path};
use super::format::rfc3339;
use super::state::AppState;
use crate::auth::{hash_token, validate_token_name};
use crate::store::{JoinTokenInfo as Row, StoreError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use outrider_api::{CreatedJoinToken, FieldError, JoinTokenInfo, JoinTokenRevoked, NewJoinToken, Problem};

fn info(t: &Row) -> JoinTokenInfo {
    JoinTokenInfo {
        name: t.name.clone(),
        service: t.service.clone(),
        created_at: rfc3339(t.created_at_ms),
        revoked_at: t.revoked_at_ms.map(rfc3339),
    }
}

#[utoipa::path(get, path = "/join-tokens", tag = "join-tokens",
    responses(
        (status = 200, description = "every join token: name, service, created, revoked (never secrets)", body = Vec<JoinTokenInfo>),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<JoinTokenInfo>>> {
    Ok(Json(state.store.list_join_tokens().await?.iter().map(info).collect()))
}

/// Creates a join token; the answer is the only time the secret is shown.
#[utoipa::path(post, path = "/join-tokens", tag = "join-tokens",
    request_body(content = NewJoinToken, content_type = "application/json"),
    responses(
        (status = 201, description = "created; `token` is shown this once", body = CreatedJoinToken),
        (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "bad service or name, or the name is taken; `errors` names each field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewJoinToken>,
) -> ApiResult<(StatusCode, Json<CreatedJoinToken>)> {
    check_service(&body.service)?;
    let name = body.name.unwrap_or_else(|| crate::join::default_name(&body.service));
    if let Err(m) = validate_token_name(&name) {
        return Err(ApiError::Invalid(vec![FieldError {
            field: "name".into(),
            message: m,
        }]));
    }
    let token = crate::join::generate();
    let row = match state
        .store
        .create_join_token(&name, &body.service, &hash_token(&token))
        .await
    {
        Err(StoreError::AlreadyExists) => {
            return Err(ApiError::Invalid(vec![FieldError {
                field: "name".into(),
                message: "a join token with this name exists (revoked names stay taken)".into(),
            }]))
        }
        r => r?,
    };
    Ok((
        StatusCode::CREATED,
        Json(CreatedJoinToken {
            service: row.service,
            name: row.name,
            created_at: rfc3339(row.created_at_ms),
            token,
        }),
    ))
}

#[utoipa::path(delete, path = "/join-tokens/{name}", tag = "join-tokens",
    params(("name" = String, Path, description = "join token name")),
    responses(
        (status = 200, description = "revoked: no new registration with it (open streams stay)", body = JoinTokenRevoked),
        (status = 404, description = "no live join token of that name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn revoke(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<JoinTokenRevoked>> {
    match state.store.revoke_join_token(&name).await {
        Err(StoreError::NotFound) => Err(ApiError::NotFound(format!("no live join token named {name:?}"))),
        r => {
            r?;
            Ok(Json(JoinTokenRevoked { name, revoked: true }))
        }
    }
}
