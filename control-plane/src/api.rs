//! The REST API of DESIGN §5 (`/api/v1`), plus `/healthz`, `/readyz` and `/metrics`.
//!
//! Handlers are small: they extract typed inputs, validate with `outrider-policy`,
//! call the store, then let the hub push the change. Every error goes through
//! [`ApiError`], which renders `application/problem+json` with the right status.

use crate::hub::Hub;
use crate::store::{
    now_ms, Precondition, RevisionRecord, RevisionSummary, SidecarRow, SidecarStatus, Store, StoreError, StoredConfig,
    StoredPolicy,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use outrider_policy::{FieldError, Policy, PolicyError, PolicyKind};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Largest policy or config document accepted (DESIGN §4).
pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub store: Store,
    pub api_token: Option<Arc<str>>,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/services", get(list_services))
        .route("/services/{service}", get(get_service))
        .route(
            "/services/{service}/policies/{kind}",
            get(get_policy).put(put_policy).delete(delete_policy),
        )
        .route(
            "/services/{service}/config/{name}",
            get(get_config).put(put_config).delete(delete_config),
        )
        .route(
            "/services/{service}/canary",
            get(crate::canary::get)
                .post(crate::canary::start)
                .delete(crate::canary::abort),
        )
        .route("/sidecars", get(list_sidecars))
        .route("/revisions", get(list_revisions))
        .route("/revisions/{n}", get(get_revision))
        .route("/revisions/{n}/revert", post(revert))
        .route("/events", get(events))
        .merge(crate::auth::routes())
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .fallback(|| async { ApiError::NotFound("no such API endpoint".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes())
        .with_state(state)
}

// ---- errors ------------------------------------------------------------------------

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
    #[error("{0}")]
    Body(String, StatusCode),
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("store unavailable: {0}")]
    Store(StoreError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::PreconditionFailed { current } => ApiError::Stale { current },
            e => ApiError::Store(e),
        }
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Malformed(m) => ApiError::BadRequest(format!("malformed JSON: {m}")),
            PolicyError::Invalid(errs) => ApiError::Invalid(errs),
            PolicyError::UnknownKind(k) => ApiError::NotFound(format!(
                "unknown policy kind {k:?}: expected routing, rate-limit or logging"
            )),
        }
    }
}

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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "Not Found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad Request"),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid document"),
            ApiError::Stale { .. } => (StatusCode::PRECONDITION_FAILED, "Stale write"),
            ApiError::Body(_, s) => (*s, "Unacceptable body"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store error");
                (StatusCode::SERVICE_UNAVAILABLE, "Store unavailable")
            }
        };
        let mut body =
            json!({"type": "about:blank", "title": title, "status": status.as_u16(), "detail": self.to_string()});
        if let ApiError::Invalid(errs) = &self {
            body["detail"] = json!(errs
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "));
            body["errors"] = json!(errs);
        }
        if let ApiError::Stale { current } = &self {
            body["currentRevision"] = json!(current);
        }
        let mut resp = (status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

// ---- auth ----------------------------------------------------------------------------

/// Who made a change, for the history.
#[derive(Clone)]
struct Actor(String);

/// Every `/api/v1` request passes here: who is it (401), may they (403); see `auth`.
async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    match crate::auth::authorize(&state, req.method(), req.uri().path(), req.headers()).await {
        Ok(p) => {
            req.extensions_mut().insert(Actor(p.name));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

fn actor(req_actor: Option<axum::Extension<Actor>>) -> String {
    req_actor.map_or_else(|| "anonymous".to_owned(), |a| a.0 .0.clone())
}

// ---- helpers -------------------------------------------------------------------------

pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).expect("digits are a valid header value")
}

/// `If-Match` → what the write expects. A value that names no revision can match
/// nothing, so it fails the write like a stale one.
fn precondition(headers: &HeaderMap) -> Precondition {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Precondition::None;
    };
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" {
        return Precondition::Exists;
    }
    let s = s.strip_prefix("W/").unwrap_or(s).trim_matches('"');
    Precondition::Revision(s.parse().unwrap_or(u64::MAX))
}

fn check_service(service: &str) -> ApiResult<()> {
    outrider_policy::validate_service_name(service).map_err(|m| ApiError::Invalid(vec![FieldError::new("service", m)]))
}

fn parse_kind(kind: &str) -> ApiResult<PolicyKind> {
    Ok(kind.parse::<PolicyKind>()?)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WriteQuery {
    #[serde(default)]
    dry_run: bool,
}

fn with_etag(revision: u64, body: Value) -> Response {
    let mut r = Json(body).into_response();
    r.headers_mut().insert(header::ETAG, etag(revision));
    r
}

fn policy_json(p: &StoredPolicy) -> Value {
    json!({
        "service": p.service,
        "kind": p.kind.as_str(),
        "revision": p.revision,
        "updatedAt": rfc3339(p.updated_at_ms),
        "document": p.document,
    })
}

fn config_json(c: &StoredConfig) -> Value {
    json!({
        "service": c.service,
        "name": c.name,
        "contentType": c.content_type,
        "size": c.content.len(),
        "revision": c.revision,
        "updatedAt": rfc3339(c.updated_at_ms),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SidecarView {
    id: String,
    service: String,
    version: String,
    namespace: String,
    pod: String,
    address: String,
    inbound_port: u32,
    admin_port: u32,
    status: SidecarStatus,
    applied_revision: u64,
    target_revision: u64,
    in_sync: bool,
    last_nack: Option<Value>,
    last_seen: String,
    connected_at: String,
    replica: String,
    build_version: String,
    health: Option<Value>,
}

pub(crate) fn sidecar_view(s: SidecarRow, hub: &Hub, target: u64, now: i64) -> SidecarView {
    let t = hub.timing;
    let status = s.status(
        now,
        t.unhealthy_after.as_millis() as i64,
        t.disconnected_after.as_millis() as i64,
    );
    SidecarView {
        in_sync: s.applied_revision >= target && s.last_nack.is_none(),
        last_nack: s
            .last_nack
            .map(|e| json!({"revision": s.last_nack_revision, "error": e})),
        id: s.id,
        service: s.service,
        version: s.version,
        namespace: s.namespace,
        pod: s.pod,
        address: s.address,
        inbound_port: s.inbound_port,
        admin_port: s.admin_port,
        status,
        applied_revision: s.applied_revision,
        target_revision: target,
        last_seen: rfc3339(s.last_seen_ms),
        connected_at: rfc3339(s.connected_at_ms),
        replica: s.replica,
        build_version: s.build_version,
        health: s.health,
    }
}

async fn sidecar_views(state: &AppState, service: Option<&str>) -> ApiResult<Vec<SidecarView>> {
    let rows = state.store.list_sidecars(service).await?;
    let mut targets: HashMap<String, u64> = HashMap::new();
    for r in &rows {
        if !targets.contains_key(&r.service) {
            targets.insert(r.service.clone(), state.store.service_revision(&r.service).await?);
        }
    }
    let now = now_ms();
    Ok(rows
        .into_iter()
        .map(|r| {
            let target = targets.get(&r.service).copied().unwrap_or(0);
            sidecar_view(r, &state.hub, target, now)
        })
        .collect())
}

// ---- handlers: services --------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/services", tag = "services", responses((status = 200, description = "services with instance counts per subset and health summary"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
async fn list_services(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let names = state.store.list_services().await?;
    let sidecars = sidecar_views(&state, None).await?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let policies: Vec<&str> = state
            .store
            .list_policies(&name)
            .await?
            .iter()
            .map(|p| p.kind.as_str())
            .collect();
        let configs = state.store.list_configs(&name).await?.len();
        let mine: Vec<&SidecarView> = sidecars.iter().filter(|s| s.service == name).collect();
        out.push(json!({
            "name": name,
            "revision": state.store.service_revision(&name).await?,
            "policies": policies,
            "configs": configs,
            "instances": instance_summary(&mine),
        }));
    }
    Ok(Json(json!(out)))
}

fn instance_summary(sidecars: &[&SidecarView]) -> Value {
    let count = |st: SidecarStatus| sidecars.iter().filter(|s| s.status == st).count();
    let mut subsets: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for s in sidecars {
        let e = subsets.entry(s.version.as_str()).or_default();
        e.0 += 1;
        if s.status == SidecarStatus::Healthy {
            e.1 += 1;
        }
    }
    json!({
        "total": sidecars.len(),
        "healthy": count(SidecarStatus::Healthy),
        "unhealthy": count(SidecarStatus::Unhealthy),
        "disconnected": count(SidecarStatus::Disconnected),
        "subsets": subsets.into_iter().map(|(k, (t, h))| (k.to_owned(), json!({"total": t, "healthy": h}))).collect::<serde_json::Map<_, _>>(),
    })
}

#[utoipa::path(get, path = "/api/v1/services/{service}", tag = "services", params(("service" = String, Path, description = "service name")), responses((status = 200, description = "its policies, config documents and instances"), (status = 404, description = "unknown service"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
async fn get_service(State(state): State<AppState>, Path(service): Path<String>) -> ApiResult<Json<Value>> {
    check_service(&service)?;
    if !state.store.service_exists(&service).await? {
        return Err(ApiError::NotFound(format!("unknown service {service:?}")));
    }
    let policies: serde_json::Map<String, Value> = state
        .store
        .list_policies(&service)
        .await?
        .iter()
        .map(|p| (p.kind.as_str().to_owned(), policy_json(p)))
        .collect();
    let configs: Vec<Value> = state
        .store
        .list_configs(&service)
        .await?
        .iter()
        .map(config_json)
        .collect();
    let sidecars = sidecar_views(&state, Some(&service)).await?;
    let refs: Vec<&SidecarView> = sidecars.iter().collect();
    Ok(Json(json!({
        "name": service,
        "revision": state.store.service_revision(&service).await?,
        "policies": policies,
        "configs": configs,
        "instances": instance_summary(&refs),
        "sidecars": sidecars,
        "traffic": service_traffic(&state, &service).await?,
    })))
}

// ---- handlers: policies --------------------------------------------------------------

/// Per-subset traffic figures of `service`, as its callers reported them.
async fn service_traffic(state: &AppState, service: &str) -> ApiResult<Vec<crate::traffic::SubsetTraffic>> {
    let rows = state.store.list_sidecars(None).await?;
    let now = now_ms();
    let t = state.hub.timing;
    Ok(crate::traffic::aggregate(service, &rows, |r| {
        r.status(
            now,
            t.unhealthy_after.as_millis() as i64,
            t.disconnected_after.as_millis() as i64,
        ) != crate::store::SidecarStatus::Disconnected
    }))
}

#[utoipa::path(get, path = "/api/v1/services/{service}/policies/{kind}", tag = "policies", params(("service" = String, Path, description = "service name"), ("kind" = String, Path, description = "routing, rate-limit or logging")), responses((status = 200, description = "the policy with its revision; ETag"), (status = 404, description = "no such policy"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
async fn get_policy(
    State(state): State<AppState>,
    Path((service, kind)): Path<(String, String)>,
) -> ApiResult<Response> {
    check_service(&service)?;
    let kind = parse_kind(&kind)?;
    let p = state
        .store
        .get_policy(&service, kind)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("service {service:?} has no {kind} policy")))?;
    Ok(with_etag(p.revision, policy_json(&p)))
}

#[utoipa::path(put, path = "/api/v1/services/{service}/policies/{kind}", tag = "policies", params(("service" = String, Path, description = "service name"), ("kind" = String, Path, description = "routing, rate-limit or logging"), ("dryRun" = Option<bool>, Query, description = "validate and report the sidecars that would change, store nothing"), ("If-Match" = Option<String>, Header, description = "the ETag read; 412 if the document changed since")), request_body(content = serde_json::Value, description = "the policy document (DESIGN §4)", content_type = "application/json"), responses((status = 200, description = "stored (with its revision and ETag), or the dry-run report"), (status = 400, description = "malformed body"), (status = 404, description = "unknown kind"), (status = 412, description = "stale If-Match"), (status = 413, description = "body over 1 MiB"), (status = 422, description = "invalid document; `errors` names each field"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
async fn put_policy(
    State(state): State<AppState>,
    Path((service, kind)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    who: Option<axum::Extension<Actor>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body?;
    check_service(&service)?;
    let kind = parse_kind(&kind)?;
    let policy = Policy::parse(kind, &body)?;
    let document = policy.to_json();
    if q.dry_run {
        let current = state.store.get_policy(&service, kind).await?;
        let changed = current.as_ref().map(|c| &c.document) != Some(&document);
        let scope = (kind != PolicyKind::Routing).then_some(service.as_str());
        return dry_run_report(&state, scope, changed, document).await;
    }
    let stored = state
        .store
        .put_policy(&service, kind, &document, precondition(&headers), &actor(who))
        .await?;
    after_write(&state).await;
    Ok(with_etag(stored.revision, policy_json(&stored)))
}

#[utoipa::path(delete, path = "/api/v1/services/{service}/policies/{kind}", tag = "policies", params(("service" = String, Path, description = "service name"), ("kind" = String, Path, description = "routing, rate-limit or logging"), ("If-Match" = Option<String>, Header, description = "the ETag read; 412 if the document changed since")), responses((status = 200, description = "deleted; the revision of the deletion"), (status = 404, description = "no such policy"), (status = 412, description = "stale If-Match"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
async fn delete_policy(
    State(state): State<AppState>,
    Path((service, kind)): Path<(String, String)>,
    who: Option<axum::Extension<Actor>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_service(&service)?;
    let kind = parse_kind(&kind)?;
    let revision = match state
        .store
        .delete_policy(&service, kind, precondition(&headers), &actor(who))
        .await
    {
        Err(StoreError::NotFound) => {
            return Err(ApiError::NotFound(format!("service {service:?} has no {kind} policy")))
        }
        r => r?,
    };
    after_write(&state).await;
    Ok(Json(json!({"service": service, "kind": kind.as_str(), "revision": revision, "deleted": true})).into_response())
}

/// Pushes a committed change to this replica's sidecars at once; other replicas hear
/// of it through the store (NOTIFY) or their periodic catch-up.
async fn after_write(state: &AppState) {
    state.hub.metrics.policy_writes.inc();
    if let Err(e) = state.hub.catch_up().await {
        tracing::warn!(error = %e, "catch-up after a write failed; the periodic sweep will retry");
    }
}

/// `scope`: the sidecars that would get a new snapshot — one service's, or every
/// sidecar (`None`) for a RoutingPolicy, which callers enforce.
async fn dry_run_report(state: &AppState, scope: Option<&str>, changed: bool, document: Value) -> ApiResult<Response> {
    let sidecars: Vec<String> = if changed {
        sidecar_views(state, scope)
            .await?
            .into_iter()
            .filter(|s| s.status != SidecarStatus::Disconnected)
            .map(|s| s.id)
            .collect()
    } else {
        Vec::new()
    };
    Ok(
        Json(json!({"dryRun": true, "valid": true, "changed": changed, "sidecars": sidecars, "document": document}))
            .into_response(),
    )
}

// ---- handlers: config documents ------------------------------------------------------

fn check_config_name(name: &str) -> ApiResult<()> {
    outrider_policy::validate_config_name(name).map_err(|m| ApiError::Invalid(vec![FieldError::new("name", m)]))
}

#[utoipa::path(get, path = "/api/v1/services/{service}/config/{name}", tag = "config", params(("service" = String, Path, description = "service name"), ("name" = String, Path, description = "config document name")), responses((status = 200, description = "the document as stored, with its content type; ETag"), (status = 404, description = "no such document"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
async fn get_config(
    State(state): State<AppState>,
    Path((service, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    check_service(&service)?;
    check_config_name(&name)?;
    let c = state
        .store
        .get_config(&service, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("service {service:?} has no config document {name:?}")))?;
    let mut r = c.content.into_response();
    let ct = HeaderValue::from_str(&c.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    r.headers_mut().insert(header::CONTENT_TYPE, ct);
    r.headers_mut().insert(header::ETAG, etag(c.revision));
    Ok(r)
}

#[utoipa::path(put, path = "/api/v1/services/{service}/config/{name}", tag = "config", params(("service" = String, Path, description = "service name"), ("name" = String, Path, description = "config document name"), ("dryRun" = Option<bool>, Query, description = "validate and report the sidecars that would change, store nothing"), ("If-Match" = Option<String>, Header, description = "the ETag read; 412 if the document changed since")), request_body(content = String, description = "the document (up to 1 MiB), any content type", content_type = "application/octet-stream"), responses((status = 200, description = "stored, or the dry-run report"), (status = 400, description = "malformed body"), (status = 404, description = "unknown kind"), (status = 412, description = "stale If-Match"), (status = 413, description = "body over 1 MiB"), (status = 422, description = "invalid document; `errors` names each field"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
async fn put_config(
    State(state): State<AppState>,
    Path((service, name)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    who: Option<axum::Extension<Actor>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body?;
    check_service(&service)?;
    check_config_name(&name)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    if q.dry_run {
        let current = state.store.get_config(&service, &name).await?;
        let changed = current.is_none_or(|c| c.content != body.as_ref() || c.content_type != content_type);
        return dry_run_report(
            &state,
            Some(&service),
            changed,
            json!({"name": name, "size": body.len()}),
        )
        .await;
    }
    let stored = state
        .store
        .put_config(
            &service,
            &name,
            &content_type,
            &body,
            precondition(&headers),
            &actor(who),
        )
        .await?;
    after_write(&state).await;
    Ok(with_etag(stored.revision, config_json(&stored)))
}

#[utoipa::path(delete, path = "/api/v1/services/{service}/config/{name}", tag = "config", params(("service" = String, Path, description = "service name"), ("name" = String, Path, description = "config document name"), ("If-Match" = Option<String>, Header, description = "the ETag read; 412 if the document changed since")), responses((status = 200, description = "deleted"), (status = 404, description = "no such document"), (status = 412, description = "stale If-Match"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
async fn delete_config(
    State(state): State<AppState>,
    Path((service, name)): Path<(String, String)>,
    who: Option<axum::Extension<Actor>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_service(&service)?;
    check_config_name(&name)?;
    let revision = match state
        .store
        .delete_config(&service, &name, precondition(&headers), &actor(who))
        .await
    {
        Err(StoreError::NotFound) => {
            return Err(ApiError::NotFound(format!(
                "service {service:?} has no config document {name:?}"
            )))
        }
        r => r?,
    };
    after_write(&state).await;
    Ok(Json(json!({"service": service, "name": name, "revision": revision, "deleted": true})).into_response())
}

// ---- handlers: sidecars, revisions ---------------------------------------------------

#[derive(Deserialize)]
struct ServiceQuery {
    service: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/sidecars", tag = "sidecars", params(("service" = Option<String>, Query, description = "only this service"), ("limit" = Option<u32>, Query, description = "at most this many (default 100, at most 1000)")), responses((status = 200, description = "every instance: status, applied and target revision, last NACK, last seen, health figures"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
async fn list_sidecars(
    State(state): State<AppState>,
    Query(q): Query<ServiceQuery>,
) -> ApiResult<Json<Vec<SidecarView>>> {
    Ok(Json(sidecar_views(&state, q.service.as_deref()).await?))
}

fn summary_json(s: &RevisionSummary) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    v["time"] = json!(rfc3339(s.created_at_ms));
    v
}

fn record_json(r: &RevisionRecord) -> Value {
    let mut v = summary_json(&r.summary);
    v["before"] = json!(r.before);
    v["after"] = json!(r.after);
    v
}

#[utoipa::path(get, path = "/api/v1/revisions", tag = "revisions", params(("service" = Option<String>, Query, description = "only this service"), ("limit" = Option<u32>, Query, description = "at most this many (default 100, at most 1000)")), responses((status = 200, description = "history, newest first, with propagation (applied, pending, lastAckSeconds)"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
async fn list_revisions(State(state): State<AppState>, Query(q): Query<ServiceQuery>) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let revs = state.store.list_revisions(q.service.as_deref(), limit).await?;
    let mut out: Vec<Value> = revs.iter().map(summary_json).collect();
    if let (Some(newest), Some(oldest)) = (revs.first(), revs.last()) {
        let prop = state.store.propagation_range(oldest.revision, newest.revision).await?;
        for (v, r) in out.iter_mut().zip(&revs) {
            v["propagation"] = crate::propagation::json(prop.get(&r.revision));
        }
    }
    Ok(Json(json!(out)))
}

#[utoipa::path(get, path = "/api/v1/revisions/{n}", tag = "revisions", params(("n" = u64, Path, description = "revision number")), responses((status = 200, description = "one change with its document before and after, and its propagation"), (status = 404, description = "no such revision"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
async fn get_revision(State(state): State<AppState>, Path(n): Path<u64>) -> ApiResult<Json<Value>> {
    let r = state
        .store
        .get_revision(n)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no revision {n}")))?;
    let mut v = record_json(&r);
    v["propagation"] = crate::propagation::json(Some(&state.store.propagation(n).await?));
    Ok(Json(v))
}

#[utoipa::path(post, path = "/api/v1/revisions/{n}/revert", tag = "revisions", params(("n" = u64, Path, description = "revision number")), responses((status = 200, description = "the new revision restoring the state before n"), (status = 404, description = "no such revision"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
async fn revert(
    State(state): State<AppState>,
    Path(n): Path<u64>,
    who: Option<axum::Extension<Actor>>,
) -> ApiResult<Json<Value>> {
    let r = match state.store.revert(n, &actor(who)).await {
        Err(StoreError::NotFound) => return Err(ApiError::NotFound(format!("no revision {n}"))),
        r => r?,
    };
    after_write(&state).await;
    Ok(Json(record_json(&r)))
}

#[utoipa::path(get, path = "/api/v1/events", tag = "events", responses((status = 200, description = "server-sent events: `change` (snapshot, membership, sidecars row deltas) and `resync`", content_type = "text/event-stream"), (status = 401, description = "no valid bearer token"), (status = 403, description = "the token's role does not allow this")))]
async fn events(State(state): State<AppState>) -> impl IntoResponse {
    let rx = state.hub.events();
    let stream = tokio_stream::wrappers::BroadcastStream::new(rx).map(|e| {
        let ev = match e {
            Ok(ev) => SseEvent::default().event("change").json_data(ev).unwrap_or_default(),
            // The client fell behind: tell it to re-read rather than guess.
            Err(_) => SseEvent::default().event("resync").data("{}"),
        };
        Ok::<_, std::convert::Infallible>(ev)
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

// ---- health and metrics --------------------------------------------------------------

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "the process is up")))]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "loaded and the store answers"), (status = 503, description = "loading or store unavailable")))]
async fn readyz(State(state): State<AppState>) -> Response {
    if !state.hub.is_loaded() {
        return (StatusCode::SERVICE_UNAVAILABLE, "loading state from the store").into_response();
    }
    match state.store.ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store unavailable: {e}")).into_response(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus/OpenMetrics text", content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<AppState>) -> Response {
    let mut r = state.hub.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}
