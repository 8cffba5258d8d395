//! The admin port (`docs/reference.md`, `127.0.0.1:15000`): liveness, readiness, Prometheus
//! metrics and a dump of the configuration being enforced; and the health port
//! (`0.0.0.0:15020`), the part of it that is safe to expose to the Pod's network:
//! liveness, readiness and metrics for kubelet probes and Prometheus, nothing else.
//!
//! Read-only views of [`SidecarState`]; nothing here is on the request path.

use crate::state::{Applied, ConfigSummary, SidecarState, Source};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use outrider_policy::{LoggingPolicy, RateLimitPolicy};
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;

/// The Prometheus text exposition format served by `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Routes of the admin port. `/config/{name}` (config documents) is added beside
/// these by its own module.
pub fn router(state: Arc<SidecarState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/config_dump", get(config_dump))
        .with_state(state)
}

/// Routes of the health port: the same handlers as the admin port's, so that both
/// answer alike, and no configuration or documents (the port faces the network).
pub fn health_router(state: Arc<SidecarState>) -> Router {
    Router::new()
        // Kubernetes' own name for liveness; the handler is the admin port's.
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<SidecarState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(state), shutdown).await
}

/// Serves [`router`] merged with other modules' admin routes (`/config/{name}`).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Liveness: the process answers, which takes a turn of the runtime every proxy and
/// the agent run on. Deliberately independent of the control plane,
/// so that losing it never gets the Pod restarted (static stability, `docs/reference.md`).
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: a snapshot is applied (from the control plane or from disk), so the
/// inbound proxy enforces the intended policy.
async fn readyz(State(state): State<Arc<SidecarState>>) -> (StatusCode, &'static str) {
    if state.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no snapshot applied yet")
    }
}

async fn metrics(State(state): State<Arc<SidecarState>>) -> Response {
    let mut body = state.metrics.render();
    body.push_str(&state.logs.figures.render());
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response()
}

/// The body of `/config_dump`. When nothing is applied yet every field but
/// `controlPlaneConnected` is `null` (or empty) and the status is 503, matching
/// `/readyz`, so that clients parse one shape in both cases.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigDump<'a> {
    revision: Option<u64>,
    nonce: Option<&'a str>,
    source: Option<Source>,
    control_plane_connected: bool,
    service_share: Option<f64>,
    healthy_instances: Option<u32>,
    rate_limit: Option<&'a RateLimitPolicy>,
    /// With credentials in its sink URL masked.
    logging: Option<LoggingPolicy>,
    authorization: Option<&'a outrider_policy::AuthorizationPolicy>,
    configs: &'a [ConfigSummary],
    destinations: Option<serde_json::Value>,
    /// The workload certificate in force (`null` before the first); never the key.
    identity: Option<IdentityDump>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDump {
    spiffe_id: String,
    serial: String,
    /// RFC 3339.
    not_after: String,
}

fn identity_dump(state: &SidecarState) -> Option<IdentityDump> {
    state.identity.load().as_deref().map(|w| IdentityDump {
        spiffe_id: w.spiffe_id.clone(),
        serial: w.serial.clone(),
        not_after: rfc3339(w.not_after_ms),
    })
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

async fn config_dump(State(state): State<Arc<SidecarState>>) -> Response {
    let applied = state.applied.load_full();
    let connected = state.is_connected();
    let identity = identity_dump(&state);
    match applied.as_deref() {
        Some(a) => Json(dump(Some(a), connected, identity)).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(dump(None, connected, identity))).into_response(),
    }
}

fn dump(applied: Option<&Applied>, control_plane_connected: bool, identity: Option<IdentityDump>) -> ConfigDump<'_> {
    ConfigDump {
        revision: applied.map(|a| a.revision),
        nonce: applied.map(|a| a.nonce.as_str()),
        source: applied.map(|a| a.source),
        control_plane_connected,
        service_share: applied.map(|a| a.service_share),
        healthy_instances: applied.map(|a| a.healthy_instances),
        rate_limit: applied.and_then(|a| a.rate_limit.as_ref()),
        logging: applied.and_then(|a| a.logging.as_ref()).map(LoggingPolicy::masked),
        authorization: applied.and_then(|a| a.authorization.as_ref()),
        configs: applied.map_or(&[], |a| a.configs.as_slice()),
        destinations: applied.map(|a| a.destinations.dump()),
        identity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use outrider_proto::v1::Snapshot;
    use tower::ServiceExt;

    async fn get(state: &Arc<SidecarState>, path: &str) -> (StatusCode, Option<String>, String) {
        let response = router(Arc::clone(state))
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, String::from_utf8(body.to_vec()).unwrap())
    }

    fn applied_state() -> Arc<SidecarState> {
        let state = Arc::new(SidecarState::new());
        let snapshot = Snapshot {
            revision: 7,
            nonce: "n7".into(),
            service: "web".into(),
            rate_limit: r#"{"rules":[{"name":"all","requestsPerSecond":5,"burst":5,"scope":"service"}]}"#.into(),
            service_share: 0.5,
            healthy_instances: 2,
            ..Default::default()
        };
        state.apply(&snapshot, Source::ControlPlane).unwrap();
        state
    }

    #[tokio::test]
    async fn healthz_is_ok_before_any_snapshot() {
        let state = Arc::new(SidecarState::new());
        let (status, _, body) = get(&state, "/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }

    #[tokio::test]
    async fn readyz_waits_for_the_first_snapshot() {
        let state = Arc::new(SidecarState::new());
        let (status, _, body) = get(&state, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "no snapshot applied yet")
        );

        let (status, _, _) = get(&applied_state(), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let state = applied_state();
        state.metrics.record_request(200, std::time::Duration::from_millis(1));
        let (status, content_type, body) = get(&state, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(METRICS_CONTENT_TYPE));
        assert!(
            body.contains("outrider_sidecar_requests_total{class=\"2xx\"} 1\n"),
            "{body}"
        );
        assert!(body.contains("outrider_sidecar_applied_revision 7\n"), "{body}");
        assert!(
            body.contains("outrider_sidecar_log_records_shipped_total 0\n"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn config_dump_shows_the_applied_snapshot() {
        let state = applied_state();
        state.set_connected(true);
        let (status, content_type, body) = get(&state, "/config_dump").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["revision"], 7);
        assert_eq!(v["nonce"], "n7");
        assert_eq!(v["source"], "control-plane");
        assert_eq!(v["controlPlaneConnected"], true);
        assert_eq!(v["serviceShare"], 0.5);
        assert_eq!(v["healthyInstances"], 2);
        assert_eq!(v["rateLimit"]["rules"][0]["name"], "all");
        assert_eq!(v["rateLimit"]["rules"][0]["scope"], "service");
        assert!(v["logging"].is_null());
        assert_eq!(v["configs"], serde_json::json!([]));
    }

    #[tokio::test]
    async fn config_dump_masks_credentials_in_the_sink_url() {
        let state = Arc::new(SidecarState::new());
        let snapshot = Snapshot {
            revision: 3,
            service: "web".into(),
            logging: r#"{"sink":{"type":"http","url":"https://elastic:hunter2@es:9200/_bulk"}}"#.into(),
            ..Default::default()
        };
        state.apply(&snapshot, Source::ControlPlane).unwrap();
        let (status, _, body) = get(&state, "/config_dump").await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.contains("hunter2"), "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["logging"]["sink"]["url"], "https://elastic:***@es:9200/_bulk");
    }

    #[tokio::test]
    async fn config_dump_before_any_snapshot_is_503_with_nulls() {
        let state = Arc::new(SidecarState::new());
        let (status, _, body) = get(&state, "/config_dump").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["revision"].is_null());
        assert!(v["rateLimit"].is_null());
        assert_eq!(v["controlPlaneConnected"], false);
        assert_eq!(v["configs"], serde_json::json!([]));
    }

    async fn get_health(state: &Arc<SidecarState>, path: &str) -> (StatusCode, String) {
        let response = health_router(Arc::clone(state))
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_health_port_answers_like_the_admin_port_and_serves_nothing_else() {
        let empty = Arc::new(SidecarState::new());
        assert_eq!(get_health(&empty, "/livez").await, (StatusCode::OK, "ok".into()));
        assert_eq!(
            get_health(&empty, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "no snapshot applied yet".into())
        );
        let state = applied_state();
        assert_eq!(get_health(&state, "/readyz").await.0, StatusCode::OK);
        let (status, body) = get_health(&state, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            get(&state, "/metrics").await.2,
            "the admin port's metrics, unchanged"
        );
        for admin_only in ["/config_dump", "/healthz", "/config/app.yaml"] {
            assert_eq!(
                get_health(&state, admin_only).await.0,
                StatusCode::NOT_FOUND,
                "{admin_only}"
            );
        }
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        let (status, _, _) = get(&Arc::new(SidecarState::new()), "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
