//! Who is calling the REST API and what they may do.
//!
//! Bearer tokens carry a role (`viewer` < `editor` < `admin`). Named tokens live in the
//! store as SHA-256 hashes; `OUTRIDER_API_TOKEN` is a bootstrap admin token named
//! `admin`. When neither exists the API is open (the server refuses non-loopback
//! listeners in that case), and the caller is `anonymous`.

use crate::api::{ApiError, AppState};
use crate::store::{Role, StoreError, TokenInfo};
use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Name recorded for the bootstrap token (`OUTRIDER_API_TOKEN`).
pub const BOOTSTRAP_NAME: &str = "admin";
/// Name recorded when no token is configured at all.
pub const ANONYMOUS: &str = "anonymous";

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// A fresh token: 256 random bits, hex, with a prefix that secret scanners can spot.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let mut s = String::with_capacity(5 + 64);
    s.push_str("ortk_");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// What the store keeps of a token. SHA-256 without salt or stretching is enough
/// because tokens are 256 random bits (nothing to guess), and it lets a request find
/// its token by an indexed equality lookup; a password KDF would cost tens of
/// milliseconds on every API call and buy nothing here.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Token names appear in the history as actors: short, printable, unambiguous.
pub fn validate_token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err("may contain only letters, digits, '-', '_', '.' and '@'".into());
    }
    if name == BOOTSTRAP_NAME || name == ANONYMOUS {
        return Err(format!("{name:?} is reserved"));
    }
    Ok(())
}

/// The least role a request needs: reads are for everyone with a token, changes for
/// editors, token management for admins. Decided by method and path so that a new
/// route is protected without anyone remembering to.
pub fn required_role(method: &Method, path: &str) -> Role {
    if path == "/tokens" || path.starts_with("/tokens/") {
        Role::Admin
    } else if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        Role::Viewer
    } else {
        Role::Editor
    }
}

/// Identifies the caller from the `Authorization` header.
pub async fn authenticate(state: &AppState, authorization: Option<&str>) -> Result<Principal, ApiError> {
    let given = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(given) = given else {
        // No token: fine only while no token exists anywhere.
        if state.api_token.is_some() || state.store.has_tokens().await? {
            return Err(ApiError::Unauthorized);
        }
        return Ok(Principal {
            name: ANONYMOUS.into(),
            role: Role::Admin,
        });
    };
    if let Some(bootstrap) = &state.api_token {
        if crate::grpc::constant_time_eq(given.as_bytes(), bootstrap.as_bytes()) {
            return Ok(Principal {
                name: BOOTSTRAP_NAME.into(),
                role: Role::Admin,
            });
        }
    }
    match state.store.token_by_hash(&hash_token(given)).await? {
        Some(t) => Ok(Principal {
            name: t.name,
            role: t.role,
        }),
        None => Err(ApiError::Unauthorized),
    }
}

/// Authenticates, then checks the role the request needs.
pub async fn authorize(
    state: &AppState,
    method: &Method,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> Result<Principal, ApiError> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let p = authenticate(state, auth).await?;
    let need = required_role(method, path);
    if p.role < need {
        return Err(ApiError::Forbidden(format!(
            "token {:?} has role {}; this needs {need}",
            p.name, p.role
        )));
    }
    Ok(p)
}

// ---- token management over the API (admin) ------------------------------------------

/// `/tokens` routes, merged into `/api/v1`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{name}", delete(revoke_token))
}

fn token_json(t: &TokenInfo) -> Value {
    json!({
        "name": t.name,
        "role": t.role,
        "createdAt": crate::api::rfc3339(t.created_at_ms),
        "revokedAt": t.revoked_at_ms.map(crate::api::rfc3339),
    })
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", responses((status = 200, description = "every token: name, role, created, revoked (never secrets)"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
pub(crate) async fn list_tokens(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let tokens = state.store.list_tokens().await?;
    Ok(Json(json!(tokens.iter().map(token_json).collect::<Vec<_>>())))
}

#[derive(Deserialize)]
pub(crate) struct NewToken {
    name: String,
    role: String,
}

/// Creates a token; the answer is the only time the secret is shown.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body(content = serde_json::Value, description = "{\"name\": \"alice\", \"role\": \"viewer|editor|admin\"}", content_type = "application/json"), responses((status = 201, description = "created; `token` is shown this once"), (status = 422, description = "bad name or role, or the name is taken"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body: NewToken = serde_json::from_slice(&body?)
        .map_err(|e| ApiError::BadRequest(format!("expected {{\"name\": …, \"role\": …}}: {e}")))?;
    let mut errors = Vec::new();
    if let Err(m) = validate_token_name(&body.name) {
        errors.push(outrider_policy::FieldError::new("name", m));
    }
    let role = body.role.parse::<Role>();
    if let Err(m) = &role {
        errors.push(outrider_policy::FieldError::new("role", m.clone()));
    }
    let Ok(role) = role else {
        return Err(ApiError::Invalid(errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let token = generate_token();
    let info = match state.store.create_token(&body.name, role, &hash_token(&token)).await {
        Err(StoreError::AlreadyExists) => {
            return Err(ApiError::Invalid(vec![outrider_policy::FieldError::new(
                "name",
                "a token with this name exists (revoked names stay taken)",
            )]))
        }
        r => r?,
    };
    let mut v = token_json(&info);
    v["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/tokens/{name}", tag = "tokens", params(("name" = String, Path, description = "token name")), responses((status = 200, description = "revoked"), (status = 404, description = "no live token of that name"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.store.revoke_token(&name).await {
        Err(StoreError::NotFound) => Err(ApiError::NotFound(format!("no live token named {name:?}"))),
        r => {
            r?;
            Ok(Json(json!({"name": name, "revoked": true})))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_a_viewer_changes_an_editor_and_tokens_an_admin() {
        assert_eq!(required_role(&Method::GET, "/services"), Role::Viewer);
        assert_eq!(
            required_role(&Method::PUT, "/services/web/policies/rate-limit"),
            Role::Editor
        );
        assert_eq!(required_role(&Method::DELETE, "/services/web/config/a"), Role::Editor);
        assert_eq!(required_role(&Method::POST, "/revisions/3/revert"), Role::Editor);
        assert_eq!(required_role(&Method::GET, "/tokens"), Role::Admin);
        assert_eq!(required_role(&Method::DELETE, "/tokens/alice"), Role::Admin);
    }

    #[test]
    fn generated_tokens_are_distinct_and_hash_to_64_hex_digits() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with("ortk_") && a.len() == 69);
        let h = hash_token(&a);
        assert_eq!(h.len(), 64);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(h, hash_token(&b));
        // The SHA-256 test vector, so the stored hashes stay readable by other tools.
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn token_names_are_checked_and_bootstrap_names_reserved() {
        assert!(validate_token_name("alice@ops").is_ok());
        assert!(validate_token_name("").is_err());
        assert!(validate_token_name("a b").is_err());
        assert!(validate_token_name("admin").is_err());
        assert!(validate_token_name("anonymous").is_err());
    }
}
