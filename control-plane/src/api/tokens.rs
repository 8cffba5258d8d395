//! `GET POST /tokens`, `DELETE /tokens/{name}`: the REST API's bearer tokens, for
//! admins (see `auth` for how a request's role is decided).

use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, Path};
use super::format::rfc3339;
use super::state::AppState;
use crate::auth::{generate_token, hash_token, validate_token_name};
use crate::store::{Role as StoreRole, StoreError, TokenInfo as Row};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use outrider_api::{CreatedToken, FieldError, NewToken, Problem, Role, TokenInfo, TokenRevoked};

fn role(r: StoreRole) -> Role {
    match r {
        StoreRole::Viewer => Role::Viewer,
        StoreRole::Editor => Role::Editor,
        StoreRole::Admin => Role::Admin,
    }
}

fn token_info(t: &Row) -> TokenInfo {
    TokenInfo {
        name: t.name.clone(),
        role: role(t.role),
        created_at: rfc3339(t.created_at_ms),
        revoked_at: t.revoked_at_ms.map(rfc3339),
    }
}

#[utoipa::path(get, path = "/tokens", tag = "tokens",
    responses(
        (status = 200, description = "every token: name, role, created, revoked (never secrets)", body = Vec<TokenInfo>),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<TokenInfo>>> {
    Ok(Json(state.store.list_tokens().await?.iter().map(token_info).collect()))
}

/// Creates a token; the answer is the only time the secret is shown.
#[utoipa::path(post, path = "/tokens", tag = "tokens",
    request_body(content = NewToken, content_type = "application/json"),
    responses(
        (status = 201, description = "created; `token` is shown this once", body = CreatedToken),
        (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "bad name or role, or the name is taken; `errors` names each field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let mut errors = Vec::new();
    if let Err(m) = validate_token_name(&body.name) {
        errors.push(FieldError {
            field: "name".into(),
            message: m,
        });
    }
    let parsed = body.role.parse::<StoreRole>();
    if let Err(m) = &parsed {
        errors.push(FieldError {
            field: "role".into(),
            message: m.clone(),
        });
    }
    let (Ok(r), true) = (parsed, errors.is_empty()) else {
        return Err(ApiError::Invalid(errors));
    };
    let token = generate_token();
    let info = match state.store.create_token(&body.name, r, &hash_token(&token)).await {
        Err(StoreError::AlreadyExists) => {
            return Err(ApiError::Invalid(vec![FieldError {
                field: "name".into(),
                message: "a token with this name exists (revoked names stay taken)".into(),
            }]))
        }
        r => r?,
    };
    let t = token_info(&info);
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            name: t.name,
            role: t.role,
            created_at: t.created_at,
            revoked_at: t.revoked_at,
            token,
        }),
    ))
}

#[utoipa::path(delete, path = "/tokens/{name}", tag = "tokens",
    params(("name" = String, Path, description = "token name")),
    responses(
        (status = 200, description = "revoked", body = TokenRevoked),
        (status = 404, description = "no live token of that name", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "it is the last live admin token and no OUTRIDER_API_TOKEN is set: revoking it would open the API to anyone", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn revoke(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<TokenRevoked>> {
    // Without the bootstrap token, the last live admin token is what keeps the API
    // closed: with no live token left it would be open to anyone as admin.
    let revoked = if state.api_token.is_some() {
        state.store.revoke_token(&name).await.map(|()| true)
    } else {
        state.store.revoke_token_keeping_an_admin(&name).await
    };
    match revoked {
        Err(StoreError::NotFound) => Err(ApiError::NotFound(format!("no live token named {name:?}"))),
        Ok(false) => Err(ApiError::Conflict(format!(
            "revoking {name:?} would leave no admin token, and a control plane without any live token is open \
             to every caller as admin: create another admin token first, or set OUTRIDER_API_TOKEN"
        ))),
        r => {
            r?;
            Ok(Json(TokenRevoked { name, revoked: true }))
        }
    }
}
