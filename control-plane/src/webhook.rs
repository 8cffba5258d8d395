//! The mutating admission webhook (`--webhook-addr`): `POST /inject` takes an
//! AdmissionReview v1 for a Pod and answers with the JSONPatch that injects the
//! sidecar (`outrider-inject` decides what), `GET /healthz` for its probe.
//!
//! Failure policy: the mesh never blocks a Pod. Whatever goes wrong with a review
//! that can be answered (not a Pod, a Pod that cannot be injected, any error here)
//! is answered `allowed: true` without a patch and with a warning saying why; only
//! a body that is no AdmissionReview at all gets a 400 problem. Which Pods are sent
//! here is the webhook configuration's selectors' decision; a Pod labelled
//! `outrider.io/inject: disabled` is never injected whatever they say.

use crate::api::error::{every_error_is_a_problem, ApiError};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use base64::Engine as _;
use outrider_inject::{InjectError, Namespace, Outcome, Settings, Skip};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// The largest review read: a Pod is at most what etcd stores (1.5 MiB), and a
/// review may carry it twice (object and oldObject).
pub const BODY_LIMIT_BYTES: usize = 4 * 1024 * 1024;

/// How long the body may take to arrive. The API server gives a webhook at most
/// 30 s (10 s by default) for the whole call.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

const API_VERSION: &str = "admission.k8s.io/v1";

/// The webhook's router.
pub fn app(settings: Settings) -> Router {
    Router::new()
        .route("/inject", post(inject))
        .route("/healthz", get(|| async { "ok" }))
        .layer(middleware::map_response(every_error_is_a_problem))
        .with_state(Arc::new(settings))
}

async fn inject(State(settings): State<Arc<Settings>>, body: Body) -> Response {
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, BODY_LIMIT_BYTES)).await {
        Err(_) => {
            return ApiError::Body("the review did not arrive in time".into(), StatusCode::REQUEST_TIMEOUT)
                .into_response()
        }
        Ok(Err(_)) => {
            return ApiError::Body(
                format!("the review is larger than {BODY_LIMIT_BYTES} bytes, or its body broke off"),
                StatusCode::PAYLOAD_TOO_LARGE,
            )
            .into_response()
        }
        Ok(Ok(b)) => b,
    };
    let review: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return ApiError::BadRequest(format!("not JSON: {e}")).into_response(),
    };
    let request = match admission_request(&review) {
        Ok(r) => r,
        Err(m) => return ApiError::BadRequest(m).into_response(),
    };
    let uid = request.get("uid").cloned().unwrap_or(Value::Null);
    let answer = review_pod(request, &settings);
    let mut response = json!({"uid": uid, "allowed": true});
    match answer {
        Answer::Patch(patch) => {
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
        }
        Answer::Leave(None) => {}
        Answer::Leave(Some(warning)) => response["warnings"] = json!([warning]),
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        Json(json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})),
    )
        .into_response()
}

/// The review's `request`, or why the body is not an AdmissionReview v1.
fn admission_request(review: &Value) -> Result<&Value, String> {
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err("kind: expected AdmissionReview".into());
    }
    if review.get("apiVersion").and_then(Value::as_str) != Some(API_VERSION) {
        return Err(format!("apiVersion: expected {API_VERSION} (the only version served)"));
    }
    let request = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or("request: missing")?;
    match request.get("uid").and_then(Value::as_str) {
        Some(uid) if !uid.is_empty() => Ok(request),
        _ => Err("request.uid: missing".into()),
    }
}

enum Answer {
    Patch(Value),
    /// No patch, with a warning for the user when there is something to say.
    Leave(Option<String>),
}

fn review_pod(request: &Value, settings: &Settings) -> Answer {
    let text = |p: &str| request.pointer(p).and_then(Value::as_str).unwrap_or("");
    let (namespace, name) = (text("/namespace"), text("/object/metadata/name"));
    let name = if name.is_empty() {
        text("/object/metadata/generateName")
    } else {
        name
    };
    if text("/kind/kind") != "Pod" || !text("/kind/group").is_empty() {
        return Answer::Leave(Some(format!(
            "outrider: not injected: only Pods are injected, this is a {}",
            text("/kind/kind")
        )));
    }
    if text("/operation") != "CREATE" {
        return Answer::Leave(None);
    }
    let Some(pod) = request.get("object") else {
        return Answer::Leave(Some("outrider: not injected: the review carries no Pod".into()));
    };
    match outrider_inject::inject(pod, Namespace::Selected, settings) {
        Ok(Outcome::Injected { patch, .. }) => {
            info!(namespace, pod = name, "sidecar injected");
            Answer::Patch(serde_json::to_value(patch).unwrap_or_else(|_| json!([])))
        }
        // A pod opted out, or seen again after a reinvocation: nothing to say.
        Ok(Outcome::Skipped(Skip::OptedOut | Skip::AlreadyInjected)) => Answer::Leave(None),
        Ok(Outcome::Skipped(why)) => Answer::Leave(Some(format!("outrider: not injected: {why}"))),
        Err(e) => {
            warn!(namespace, pod = name, error = %e, "sidecar not injected");
            Answer::Leave(Some(warning(&e)))
        }
    }
}

/// The API server passes warnings to `kubectl` as they are; it asks for short ones.
fn warning(e: &InjectError) -> String {
    let mut w = format!("outrider: not injected: {e}");
    if w.len() > 240 {
        let mut cut = 237;
        while !w.is_char_boundary(cut) {
            cut -= 1;
        }
        w.truncate(cut);
        w.push_str("...");
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn post(body: impl Into<Body>) -> (StatusCode, Value) {
        let req = axum::http::Request::post("/inject")
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap();
        let resp = app(Settings::default()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn review(kind: &str, operation: &str, object: Value) -> Value {
        json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "namespace": "shop", "operation": operation, "object": object}})
    }

    fn web() -> Value {
        json!({"metadata": {"name": "web-0", "labels": {"app": "web"}},
               "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]}})
    }

    #[tokio::test]
    async fn a_pod_gets_a_base64_json_patch_and_its_uid_back() {
        let (status, body) = post(review("Pod", "CREATE", web()).to_string()).await;
        assert_eq!(status, 200);
        let r = &body["response"];
        assert_eq!(body["kind"], "AdmissionReview");
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap();
        let patch: Vec<Value> = serde_json::from_slice(&patch).unwrap();
        assert!(patch.iter().any(|op| op["path"] == "/spec/initContainers"));
    }

    #[tokio::test]
    async fn what_cannot_be_injected_is_allowed_with_a_warning_and_no_patch() {
        let no_service = json!({"spec": {"containers": [{"name": "app"}]}});
        for (kind, op, object, says) in [
            ("Service", "CREATE", json!({}), "only Pods"),
            ("Pod", "CREATE", no_service, "no service name"),
        ] {
            let (status, body) = post(review(kind, op, object).to_string()).await;
            assert_eq!(status, 200);
            let r = &body["response"];
            assert_eq!(r["allowed"], true);
            assert!(r.get("patch").is_none(), "{r}");
            assert!(r["warnings"][0].as_str().unwrap().contains(says), "{r}");
        }
        let (_, body) = post(review("Pod", "UPDATE", web()).to_string()).await;
        assert!(body["response"].get("patch").is_none());
    }

    #[tokio::test]
    async fn a_body_that_is_no_admission_review_is_a_400_problem_and_an_oversized_one_413() {
        for body in [
            "not json".to_owned(),
            json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": {"uid": "x"}})
                .to_string(),
            json!({"kind": "AdmissionReview", "apiVersion": API_VERSION, "request": {}}).to_string(),
            json!({"kind": "Pod"}).to_string(),
        ] {
            let (status, problem) = post(body.clone()).await;
            assert_eq!(status, 400, "{body}");
            assert_eq!(problem["status"], 400);
        }
        let (status, problem) = post(vec![b' '; BODY_LIMIT_BYTES + 1]).await;
        assert_eq!(status, 413);
        assert_eq!(problem["status"], 413);
    }
}
