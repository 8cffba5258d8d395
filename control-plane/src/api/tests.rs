//! The HTTP layer in-process: `app(state)` on a real SQLite file store in a temporary
//! directory, driven with `oneshot`.

use super::*;
use crate::hub::{Event, Hub, Timing};
use crate::metrics::Metrics;
use crate::store::Store;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use tower::ServiceExt;

struct TestApp {
    app: Router,
    store: Store,
    dir: tempfile::TempDir,
}

async fn test_app() -> TestApp {
    test_app_with(None).await
}

/// With `OUTRIDER_API_TOKEN` set to `api_token`, when given.
async fn test_app_with(api_token: Option<&str>) -> TestApp {
    test_app_guarded(api_token, guard::Guard::new(true, &[], &[]).unwrap()).await
}

/// Listening on loopback as `guard` says.
async fn test_app_guarded(api_token: Option<&str>, guard: guard::Guard) -> TestApp {
    test_app_keyed(api_token, guard, None).await
}

/// With secrets sealed by `key` (none: secret writes are refused).
async fn test_app_keyed(
    api_token: Option<&str>,
    guard: guard::Guard,
    key: Option<crate::vault::SecretsKey>,
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(None, dir.path()).await.unwrap().with_secrets_key(key);
    let hub = Hub::new(store.clone(), Timing::default(), Arc::new(Metrics::new()));
    // Writes push to the hub, which builds nothing before it has loaded.
    hub.load().await;
    let app = app(AppState {
        hub,
        store: store.clone(),
        api_token: api_token.map(Into::into),
        guard: Arc::new(guard),
        throttle: Arc::new(crate::auth::AuthThrottle::default()),
    });
    TestApp { app, store, dir }
}

fn request(method: Method, uri: &str, body: Option<&Value>) -> Request<Body> {
    let b = Request::builder().method(method).uri(uri);
    match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let resp: Response = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, ct, body)
}

const PROBLEM: Option<&str> = Some(outrider_api::PROBLEM_JSON);

#[tokio::test]
async fn an_invalid_policy_is_refused_with_422_naming_every_bad_field_and_nothing_is_stored() {
    let t = test_app().await;
    let doc = json!({"rules": [{"name": "", "requestsPerSecond": 0}]});
    let (status, ct, body) = send(
        &t.app,
        request(Method::PUT, "/api/v1/services/web/policies/rate-limit", Some(&doc)),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(ct.as_deref(), PROBLEM);
    let problem: outrider_api::Problem = serde_json::from_value(body).unwrap();
    let fields: Vec<&str> = problem.errors.iter().flatten().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["rules[0].name", "rules[0].requestsPerSecond"]);
    assert!(problem.detail.contains("rules[0].name") && problem.detail.contains("rules[0].requestsPerSecond"));
    assert!(
        t.store.list_revisions(None, 10).await.unwrap().is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn a_write_with_a_stale_if_match_gets_412_with_the_current_revision() {
    let t = test_app().await;
    let uri = "/api/v1/services/web/policies/rate-limit";
    let doc = json!({"rules": [{"name": "all", "requestsPerSecond": 10}]});
    let (status, _, first) = send(&t.app, request(Method::PUT, uri, Some(&doc))).await;
    assert_eq!(status, 200, "{first}");
    let stored: outrider_api::PolicyRecord = serde_json::from_value(first).unwrap();
    let mut stale = request(Method::PUT, uri, Some(&doc));
    stale.headers_mut().insert(
        header::IF_MATCH,
        format!("\"{}\"", stored.revision + 5).parse().unwrap(),
    );
    let (status, ct, body) = send(&t.app, stale).await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(ct.as_deref(), PROBLEM);
    assert_eq!(body["currentRevision"], stored.revision);
}

#[tokio::test]
async fn an_unknown_service_is_a_404_problem() {
    let t = test_app().await;
    let (status, ct, body) = send(&t.app, request(Method::GET, "/api/v1/services/nope", None)).await;
    assert_eq!(status, 404);
    assert_eq!(ct.as_deref(), PROBLEM);
    assert_eq!(body["status"], 404);
    assert_eq!(body["type"], "about:blank");
}

#[tokio::test]
async fn an_oversized_body_is_a_413_problem() {
    let t = test_app().await;
    let big = vec![b'x'; extract::MAX_BODY + 1];
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/api/v1/services/web/config/big.txt")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(big))
        .unwrap();
    let (status, ct, body) = send(&t.app, req).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(ct.as_deref(), PROBLEM);
}

#[tokio::test]
async fn config_documents_past_the_service_budget_are_a_413_problem_dry_run_included() {
    use outrider_policy::limits::{DOCUMENT_MAX_BYTES, SERVICE_CONFIG_MAX_BYTES};
    let t = test_app().await;
    let put = |name: &str, size: usize, query: &str| {
        Request::builder()
            .method(Method::PUT)
            .uri(format!("/api/v1/services/web/config/{name}{query}"))
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(vec![b'x'; size]))
            .unwrap()
    };
    for i in 0..SERVICE_CONFIG_MAX_BYTES / DOCUMENT_MAX_BYTES {
        let (status, _, body) = send(&t.app, put(&format!("d{i}"), DOCUMENT_MAX_BYTES, "")).await;
        assert_eq!(status, 200, "{body}");
    }
    for query in ["?dryRun=true", ""] {
        let (status, ct, body) = send(&t.app, put("one-more", 1, query)).await;
        assert_eq!(status, 413, "{query}: {body}");
        assert_eq!(ct.as_deref(), PROBLEM);
        assert!(body["detail"].as_str().unwrap().contains("4194305 bytes"), "{body}");
    }
    let (status, _, _) = send(
        &t.app,
        request(Method::GET, "/api/v1/services/web/config/one-more", None),
    )
    .await;
    assert_eq!(status, 404, "nothing was stored");
}

#[tokio::test]
async fn malformed_query_and_path_parameters_are_400_problems() {
    let t = test_app().await;
    for uri in [
        "/api/v1/services/web/policies/routing?dryRun=maybe",
        "/api/v1/revisions/abc",
        "/api/v1/sidecars?limit=0",
        "/api/v1/sidecars?limit=many",
    ] {
        let method = if uri.contains("dryRun") {
            Method::PUT
        } else {
            Method::GET
        };
        let (status, ct, body) = send(&t.app, request(method, uri, Some(&json!({"routes": []})))).await;
        assert_eq!(
            (status, ct.as_deref()),
            (StatusCode::BAD_REQUEST, PROBLEM),
            "{uri}: {body}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_store_is_a_503_that_names_no_database_error() {
    let t = test_app().await;
    t.store.close().await;
    let resp = t
        .app
        .clone()
        .oneshot(request(Method::GET, "/api/v1/services", None))
        .await
        .unwrap();
    assert!(
        resp.extensions().get::<error::InternalCause>().is_none(),
        "the logging layer takes the cause off the response"
    );
    let (status, ct, body) = (
        resp.status(),
        resp.headers().get(header::CONTENT_TYPE).cloned(),
        axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap(),
    );
    assert_eq!(status, 503);
    assert_eq!(ct.unwrap(), outrider_api::PROBLEM_JSON);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["detail"], "store unavailable", "{body}");
}

/// Registers a connected (so healthy) instance of `service`'s `version`.
async fn instance(t: &TestApp, service: &str, version: &str) {
    let mut r = crate::store::tests::reg(&format!("{service}-{version}"), service, "s1");
    r.version = version.into();
    t.store.register_sidecar(&r).await.unwrap();
}

#[tokio::test]
async fn an_internal_error_is_a_500_that_shows_none_of_its_cause() {
    let t = test_app().await;
    instance(&t, "web", "v2").await;
    let start = json!({"subset": "v2", "steps": [10, 100], "interval": "1h"});
    let (status, _, body) = send(
        &t.app,
        request(Method::POST, "/api/v1/services/web/canary", Some(&start)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Damage the stored rollout behind the API's back, as a bad migration might.
    let url = format!("sqlite://{}", t.dir.path().join("outrider.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE canary_rollouts SET state = 'exploded-secret-state'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (status, ct, body) = send(&t.app, request(Method::GET, "/api/v1/services/web/canary", None)).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(ct.as_deref(), PROBLEM);
    assert_eq!(body["detail"], "internal error");
    assert!(!body.to_string().contains("exploded"), "{body}");
}

#[tokio::test]
async fn a_second_rollout_while_one_runs_is_a_409_conflict() {
    let t = test_app().await;
    instance(&t, "web", "v2").await;
    let start = json!({"subset": "v2", "steps": [10, 100], "interval": "1h"});
    let uri = "/api/v1/services/web/canary";
    assert_eq!(send(&t.app, request(Method::POST, uri, Some(&start))).await.0, 201);
    let (status, ct, body) = send(&t.app, request(Method::POST, uri, Some(&start))).await;
    assert_eq!((status, ct.as_deref()), (StatusCode::CONFLICT, PROBLEM), "{body}");
    assert_eq!(body["title"], "Conflict");
}

#[tokio::test]
async fn canary_writes_on_an_unknown_service_are_404_and_create_nothing() {
    let t = test_app().await;
    let start = json!({"subset": "v2", "steps": [10, 100], "interval": "1s"});
    let weight = json!({"subset": "v2", "weight": 10});
    for (method, uri, body) in [
        (Method::POST, "/api/v1/services/ghost/canary", Some(&start)),
        (Method::PUT, "/api/v1/services/ghost/canary/weight", Some(&weight)),
        (Method::POST, "/api/v1/services/ghost/canary/promote", None),
    ] {
        let (status, ct, body) = send(&t.app, request(method.clone(), uri, body)).await;
        assert_eq!(
            (status, ct.as_deref()),
            (StatusCode::NOT_FOUND, PROBLEM),
            "{method} {uri}: {body}"
        );
        assert!(body["detail"].as_str().unwrap().contains("unknown service"), "{body}");
    }
    assert!(
        !t.store.service_exists("ghost").await.unwrap(),
        "no service was created"
    );
    assert!(t.store.get_rollout("ghost").await.unwrap().is_none());
}

#[tokio::test]
async fn canary_writes_to_a_subset_without_a_healthy_instance_are_409_and_change_nothing() {
    let t = test_app().await;
    instance(&t, "web", "v1").await;
    let start = json!({"subset": "v3", "steps": [10, 100], "interval": "1s"});
    let (status, ct, body) = send(
        &t.app,
        request(Method::POST, "/api/v1/services/web/canary", Some(&start)),
    )
    .await;
    assert_eq!((status, ct.as_deref()), (StatusCode::CONFLICT, PROBLEM), "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("\"v3\" of web has no healthy instance"),
        "{body}"
    );
    assert!(t.store.get_rollout("web").await.unwrap().is_none(), "no rollout stored");

    let weight = json!({"subset": "v3", "weight": 100});
    let uri = "/api/v1/services/web/canary/weight";
    let (status, _, body) = send(&t.app, request(Method::PUT, uri, Some(&weight))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        t.store.list_revisions(None, 10).await.unwrap().is_empty(),
        "no policy written"
    );

    // A weight of 0 sends it nothing, so it needs no instance; promoting it does.
    let zero = json!({"subset": "v3", "weight": 0, "stable": "v1"});
    let (status, _, body) = send(&t.app, request(Method::PUT, uri, Some(&zero))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = send(
        &t.app,
        request(Method::POST, "/api/v1/services/web/canary/promote", None),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("\"v3\""), "{body}");
    assert_eq!(
        t.store.list_revisions(None, 10).await.unwrap().len(),
        1,
        "only the 0% write"
    );
}

#[tokio::test]
async fn manual_weight_edits_during_a_rollout_are_409_naming_who_drives_it() {
    let t = test_app().await;
    instance(&t, "web", "v1").await;
    instance(&t, "web", "v2").await;
    let policy = json!({"routes": [{"name": "default", "backends": [{"subset": "v1", "weight": 100}]}]});
    let routing = "/api/v1/services/web/policies/routing";
    assert_eq!(send(&t.app, request(Method::PUT, routing, Some(&policy))).await.0, 200);
    let start = json!({"subset": "v2", "steps": [10, 100], "interval": "1h"});
    let (status, _, body) = send(
        &t.app,
        request(Method::POST, "/api/v1/services/web/canary", Some(&start)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["active"].clone(), body["actor"].clone()),
        (json!(true), json!("anonymous")),
        "{body}"
    );

    let moved = json!({"routes": [{"name": "default", "backends": [{"subset": "v1", "weight": 50}, {"subset": "v2", "weight": 50}]}]});
    let weight = json!({"subset": "v2", "weight": 50});
    for (method, uri, body) in [
        (Method::PUT, "/api/v1/services/web/canary/weight", Some(&weight)),
        (Method::POST, "/api/v1/services/web/canary/promote", None),
        (Method::PUT, routing, Some(&moved)),
        (
            Method::PUT,
            "/api/v1/services/web/policies/routing?dryRun=true",
            Some(&moved),
        ),
        (Method::DELETE, routing, None),
    ] {
        let (status, ct, body) = send(&t.app, request(method.clone(), uri, body)).await;
        assert_eq!(
            (status, ct.as_deref()),
            (StatusCode::CONFLICT, PROBLEM),
            "{method} {uri}: {body}"
        );
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains("driven by a canary rollout of v2") && detail.contains("started by anonymous"),
            "{detail}"
        );
    }
    // Reverting the routing write would remove the weights the rollout drives.
    let last = t.store.list_revisions(None, 1).await.unwrap()[0].revision;
    let (status, _, body) = send(
        &t.app,
        request(Method::POST, &format!("/api/v1/revisions/{last}/revert"), None),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // An edit that keeps the weights (a timeout) is not the rollout's business.
    let timeout =
        json!({"routes": [{"name": "default", "backends": [{"subset": "v1", "weight": 100}], "timeout": "3s"}]});
    let (status, _, body) = send(&t.app, request(Method::PUT, routing, Some(&timeout))).await;
    assert_eq!(status, 200, "{body}");
    // Aborting hands the weights back.
    assert_eq!(
        send(&t.app, request(Method::DELETE, "/api/v1/services/web/canary", None))
            .await
            .0,
        200
    );
    let (status, _, body) = send(&t.app, request(Method::PUT, routing, Some(&moved))).await;
    assert_eq!(status, 200, "{body}");
}

/// (METHOD, path) of every operation in the document.
fn documented() -> BTreeSet<(Method, String)> {
    let doc = serde_json::to_value(openapi()).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            out.insert((Method::from_bytes(m.to_uppercase().as_bytes()).unwrap(), path.clone()));
        }
    }
    out
}

fn concrete(path: &str) -> String {
    path.replace("{service}", "web")
        .replace("{kind}", "routing")
        .replace("{name}", "app.yaml")
        .replace("{n}", "1")
}

#[tokio::test]
async fn every_route_of_the_router_is_in_the_document_and_only_those() {
    let t = test_app().await;
    let documented = documented();
    assert!(documented.len() >= 23, "{documented:?}");
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let uri = concrete(path);
        for method in [Method::GET, Method::PUT, Method::POST, Method::DELETE, Method::PATCH] {
            let is_documented = documented.contains(&(method.clone(), path.clone()));
            let resp = t
                .app
                .clone()
                .oneshot(request(method.clone(), &uri, None))
                .await
                .unwrap();
            let status = resp.status();
            if uri.ends_with("/events") && status == 200 {
                continue; // a stream that never ends
            }
            let body = axum::body::to_bytes(resp.into_body(), 1 << 22).await.unwrap();
            let body = String::from_utf8_lossy(&body);
            if is_documented {
                assert_ne!(status, 405, "{method} {uri} is documented but not routed");
                assert!(!body.contains("no such API endpoint"), "{method} {uri}: {body}");
            } else {
                assert_eq!(status, 405, "{method} {uri} is routed but not documented: {body}");
            }
        }
    }
}

#[test]
fn every_operation_documents_its_success_body_and_its_request_body() {
    let doc = serde_json::to_value(openapi()).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let (code, ok) = responses
                .iter()
                .find(|(code, _)| code.starts_with('2'))
                .unwrap_or_else(|| panic!("{method} {path}: no success response"));
            let content = ok["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} {code}: no body"));
            assert!(
                content.values().all(|c| c.get("schema").is_some()),
                "{method} {path} {code}: a body without a schema"
            );
            for (code, r) in responses
                .iter()
                .filter(|(c, _)| c.starts_with('4') || c.starts_with('5'))
            {
                if path.starts_with("/api/v1") {
                    assert!(
                        r["content"][outrider_api::PROBLEM_JSON]["schema"].is_object(),
                        "{method} {path} {code}: errors are problem+json"
                    );
                }
            }
            // Revert and promote act on what is stored and take no body.
            if matches!(method.as_str(), "put" | "post") && !path.ends_with("/revert") && !path.ends_with("/promote") {
                let body = &op["requestBody"]["content"];
                assert!(
                    body.as_object()
                        .is_some_and(|c| c.values().all(|c| c.get("schema").is_some())),
                    "{method} {path}: no request body schema"
                );
            }
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "Problem",
        "Sidecar",
        "SidecarHealth",
        "ServiceDetail",
        "RolloutStatus",
        "RevisionDetail",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
}

#[tokio::test]
async fn the_served_document_is_the_routers_document() {
    let t = test_app().await;
    let (status, ct, body) = send(&t.app, request(Method::GET, "/api/v1/openapi.json", None)).await;
    assert_eq!(status, 200);
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert_eq!(body, serde_json::to_value(openapi()).unwrap());
}

#[tokio::test]
async fn responses_read_back_as_the_boundary_types() {
    let t = test_app().await;
    let put = |uri: &'static str, doc: Value| request(Method::PUT, uri, Some(&doc));
    let (s, _, _) = send(
        &t.app,
        put(
            "/api/v1/services/web/policies/rate-limit",
            json!({"rules": [{"name": "all", "requestsPerSecond": 5}]}),
        ),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, dry) = send(
        &t.app,
        put(
            "/api/v1/services/web/policies/routing?dryRun=true",
            json!({"routes": [{"name": "d", "backends": [{"subset": "v1", "weight": 100}]}]}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{dry}");
    let dry: outrider_api::DryRunReport = serde_json::from_value(dry).unwrap();
    assert!(dry.dry_run && dry.changed);
    let (_, _, list) = send(&t.app, request(Method::GET, "/api/v1/services", None)).await;
    let list: Vec<outrider_api::ServiceSummary> = serde_json::from_value(list).unwrap();
    assert_eq!(list[0].policies, ["rate-limit"]);
    let (_, _, detail) = send(&t.app, request(Method::GET, "/api/v1/services/web", None)).await;
    let detail: outrider_api::ServiceDetail = serde_json::from_value(detail).unwrap();
    assert!(detail.policies.contains_key("rate-limit"));
    let (_, _, revs) = send(&t.app, request(Method::GET, "/api/v1/revisions", None)).await;
    let revs: Vec<outrider_api::RevisionSummary> = serde_json::from_value(revs).unwrap();
    assert_eq!(revs.len(), 1, "the dry run stored nothing");
    assert!(revs[0].propagation.is_some());
    let (s, _, reverted) = send(&t.app, request(Method::POST, "/api/v1/revisions/1/revert", None)).await;
    assert_eq!(s, 200, "{reverted}");
    let reverted: outrider_api::RevisionDetail = serde_json::from_value(reverted).unwrap();
    assert_eq!((reverted.reverts, reverted.after), (Some(1), None));
}

#[test]
fn the_hubs_events_read_as_change_events() {
    let events = [
        Event::Snapshot {
            service: "web".into(),
            revision: 3,
        },
        Event::Membership {
            service: "web".into(),
            healthy: 2,
        },
        Event::Sidecars { sidecars: vec![] },
    ];
    for e in events {
        let v = serde_json::to_value(&e).unwrap();
        serde_json::from_value::<outrider_api::ChangeEvent>(v.clone()).unwrap_or_else(|err| panic!("{v}: {err}"));
    }
}

#[tokio::test]
async fn a_method_a_path_does_not_serve_is_405_even_with_a_query() {
    let t = test_app().await;
    let uri = "/api/v1/services/web/policies/routing?dryRun=true";
    let (status, _, body) = send(&t.app, request(Method::TRACE, uri, None)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
}

#[test]
fn every_api_operation_documents_the_400_of_an_unknown_query_parameter() {
    let doc = serde_json::to_value(openapi()).unwrap();
    for (method, path) in documented() {
        if path.starts_with("/api/v1") {
            let op = &doc["paths"][&path][method.as_str().to_lowercase()];
            assert!(op["responses"]["400"].is_object(), "{method} {path}");
        }
    }
}

#[tokio::test]
async fn query_parameters_are_exact_so_a_misspelt_dry_run_never_writes() {
    let t = test_app().await;
    let doc = json!({"rules": [{"name": "all", "requestsPerSecond": 5}]});
    for uri in [
        "/api/v1/services/web/policies/rate-limit?dryrun=true",
        "/api/v1/services/web/policies/rate-limit?dryRun=true&x=1",
    ] {
        let (status, ct, body) = send(&t.app, request(Method::PUT, uri, Some(&doc))).await;
        assert_eq!(status, 400, "{uri}: {body}");
        assert_eq!(ct.as_deref(), PROBLEM);
        assert!(
            body["detail"].as_str().unwrap().contains("unknown query parameter"),
            "{body}"
        );
    }
    // A route that takes no parameters refuses any; malformed values are 400 too.
    for (method, uri) in [
        (Method::GET, "/api/v1/services?verbose=1"),
        (Method::GET, "/api/v1/sidecars?lmit=5"),
        (Method::PUT, "/api/v1/services/web/policies/rate-limit?dryRun=1"),
    ] {
        let body = (method == Method::PUT).then_some(&doc);
        let (status, ct, problem) = send(&t.app, request(method, uri, body)).await;
        assert_eq!(
            (status, ct.as_deref()),
            (StatusCode::BAD_REQUEST, PROBLEM),
            "{uri}: {problem}"
        );
    }
    assert!(
        t.store.list_revisions(None, 10).await.unwrap().is_empty(),
        "nothing stored"
    );
    // The documented ones still work.
    let (status, _, _) = send(
        &t.app,
        request(Method::GET, "/api/v1/sidecars?service=web&limit=5", None),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_dry_run_honours_if_match_and_works_on_delete() {
    let t = test_app().await;
    let doc = json!({"rules": [{"name": "all", "requestsPerSecond": 5}]});
    let uri = "/api/v1/services/web/policies/rate-limit";
    let (status, _, stored) = send(&t.app, request(Method::PUT, uri, Some(&doc))).await;
    assert_eq!(status, 200, "{stored}");

    let stale = |method: Method, dry: &str| {
        Request::builder()
            .method(method)
            .uri(format!("{uri}{dry}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::IF_MATCH, "\"999\"")
            .body(Body::from(doc.to_string()))
            .unwrap()
    };
    let (status, _, _) = send(&t.app, stale(Method::PUT, "?dryRun=true")).await;
    assert_eq!(status, 412, "a dry run with a stale If-Match fails as the write would");
    let (status, _, _) = send(&t.app, stale(Method::DELETE, "?dryRun=true")).await;
    assert_eq!(status, 412);

    let (status, _, report) = send(&t.app, request(Method::DELETE, &format!("{uri}?dryRun=true"), None)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (report["dryRun"].clone(), report["changed"].clone()),
        (json!(true), json!(true))
    );
    let (status, _, still) = send(&t.app, request(Method::GET, uri, None)).await;
    assert_eq!(status, 200, "the dry run deleted nothing: {still}");
    assert_eq!(t.store.list_revisions(None, 10).await.unwrap().len(), 1);

    let (status, _, deleted) = send(&t.app, request(Method::DELETE, uri, None)).await;
    assert_eq!(
        (status, deleted["deleted"].clone()),
        (StatusCode::OK, json!(true)),
        "{deleted}"
    );
    let (status, _, _) = send(&t.app, request(Method::DELETE, &format!("{uri}?dryRun=true"), None)).await;
    assert_eq!(status, 404, "nothing left to delete");
}

#[tokio::test]
async fn sidecars_limit_keeps_the_first_rows_in_listing_order() {
    let t = test_app().await;
    for pod in ["web-c", "web-a", "web-b"] {
        let mut r = crate::store::tests::reg(&format!("default/{pod}"), "web", &format!("s-{pod}"));
        r.pod = pod.into();
        t.store.register_sidecar(&r).await.unwrap();
    }
    let pods = |body: &Value| -> Vec<String> {
        body.as_array()
            .unwrap()
            .iter()
            .map(|s| s["pod"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, _, all) = send(&t.app, request(Method::GET, "/api/v1/sidecars", None)).await;
    assert_eq!(status, 200);
    assert_eq!(pods(&all), ["web-a", "web-b", "web-c"]);
    let (status, _, two) = send(
        &t.app,
        request(Method::GET, "/api/v1/sidecars?service=web&limit=2", None),
    )
    .await;
    assert_eq!(status, 200, "{two}");
    assert_eq!(pods(&two), ["web-a", "web-b"]);
    assert_eq!(
        two.as_array().unwrap()[0],
        all.as_array().unwrap()[0],
        "same view either way"
    );
}

/// The target of a `Link: <…>; rel="next"` header, if the answer has one.
fn next_link(resp: &Response) -> Option<String> {
    let link = resp.headers().get(header::LINK)?.to_str().unwrap();
    let (target, rel) = link.split_once(">; ")?;
    assert_eq!(rel, "rel=\"next\"", "{link}");
    Some(target.trim_start_matches('<').to_owned())
}

/// Follows `uri`'s rel="next" links to the end: every page's ids, and the links.
async fn every_page(app: &Router, uri: &str) -> (Vec<Vec<String>>, Vec<String>) {
    let (mut pages, mut links) = (Vec::new(), Vec::new());
    let mut uri = uri.to_owned();
    loop {
        let resp = app.clone().oneshot(request(Method::GET, &uri, None)).await.unwrap();
        assert_eq!(resp.status(), 200, "{uri}");
        let next = next_link(&resp);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap();
        let rows: Vec<outrider_api::Sidecar> = serde_json::from_slice(&bytes).unwrap();
        pages.push(rows.into_iter().map(|s| s.id).collect());
        match next {
            Some(n) => {
                links.push(n.clone());
                uri = n;
            }
            None => return (pages, links),
        }
    }
}

async fn register(store: &Store, id: &str, service: &str) {
    store
        .register_sidecar(&crate::store::tests::reg(id, service, id))
        .await
        .unwrap();
}

#[tokio::test]
async fn sidecar_pages_link_to_the_next_one_with_the_same_filters_until_the_last() {
    let t = test_app().await;
    for i in 0..5 {
        register(&t.store, &format!("default/web-{i}"), "web").await;
    }
    register(&t.store, "default/api-0", "api").await;
    let (pages, links) = every_page(&t.app, "/api/v1/sidecars?service=web&q=WEB&limit=2").await;
    assert_eq!(
        pages,
        [
            vec!["default/web-0", "default/web-1"],
            vec!["default/web-2", "default/web-3"],
            vec!["default/web-4"]
        ]
    );
    for l in &links {
        assert!(
            l.starts_with("/api/v1/sidecars?service=web&q=WEB&limit=2&after="),
            "the link keeps the filters and the limit: {l}"
        );
    }
    // Without a limit a page holds 500: these five fit in one, with no link.
    let (pages, links) = every_page(&t.app, "/api/v1/sidecars").await;
    assert_eq!((pages[0].len(), links.len()), (6, 0));
}

#[tokio::test]
async fn a_sidecar_listing_without_limit_stops_at_500_and_links_to_the_rest() {
    let t = test_app().await;
    for i in 0..501 {
        register(&t.store, &format!("default/web-{i:03}"), "web").await;
    }
    let (pages, _) = every_page(&t.app, "/api/v1/sidecars").await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [500, 1]);
    assert_eq!(pages[1], ["default/web-500"]);
}

#[tokio::test]
async fn sidecars_are_filtered_by_status_and_text_on_the_server() {
    let t = test_app().await;
    for id in ["default/web-a", "default/web-b", "prod/api-a"] {
        register(&t.store, id, if id.contains("web") { "web" } else { "api" }).await;
    }
    t.store
        .disconnect_sidecar("default/web-b", "default/web-b", "web")
        .await
        .unwrap();
    let ids = |q: &'static str| {
        let app = t.app.clone();
        async move { every_page(&app, &format!("/api/v1/sidecars?{q}")).await.0.concat() }
    };
    assert_eq!(ids("status=disconnected").await, ["default/web-b"]);
    assert_eq!(ids("status=healthy").await, ["prod/api-a", "default/web-a"]);
    assert_eq!(ids("status=healthy&q=PROD%2F").await, ["prod/api-a"]);
    assert_eq!(ids("q=-a&service=web").await, ["default/web-a"]);
    let (_, _, rows) = send(
        &t.app,
        request(Method::GET, "/api/v1/sidecars?status=disconnected", None),
    )
    .await;
    assert_eq!(
        rows[0]["status"], "disconnected",
        "a row shows the status it was selected by"
    );
}

#[tokio::test]
async fn a_malformed_status_or_cursor_is_a_400_problem() {
    let t = test_app().await;
    for uri in [
        "/api/v1/sidecars?status=sleepy",
        "/api/v1/sidecars?after=not-a-cursor",
        // Valid base64url, but not a cursor.
        "/api/v1/sidecars?after=e30",
        "/api/v1/sidecars?limit=10001",
    ] {
        let (status, ct, body) = send(&t.app, request(Method::GET, uri, None)).await;
        assert_eq!(
            (status, ct.as_deref()),
            (StatusCode::BAD_REQUEST, PROBLEM),
            "{uri}: {body}"
        );
    }
}

#[tokio::test]
async fn the_services_list_counts_instances_as_their_rows_show_them() {
    let t = test_app().await;
    for (id, service, version) in [
        ("a", "web", "v1"),
        ("b", "web", "v2"),
        ("c", "web", "v2"),
        ("d", "api", "v1"),
    ] {
        let mut r = crate::store::tests::reg(id, service, id);
        r.version = version.into();
        t.store.register_sidecar(&r).await.unwrap();
    }
    t.store.disconnect_sidecar("c", "c", "web").await.unwrap();
    t.store
        .record_health("a", "a", &json!({"appHealthy": false}).to_string(), "web")
        .await
        .unwrap();
    let (_, _, list) = send(&t.app, request(Method::GET, "/api/v1/services", None)).await;
    let list: Vec<outrider_api::ServiceSummary> = serde_json::from_value(list).unwrap();
    for summary in list {
        let (_, _, detail) = send(
            &t.app,
            request(Method::GET, &format!("/api/v1/services/{}", summary.name), None),
        )
        .await;
        let detail: outrider_api::ServiceDetail = serde_json::from_value(detail).unwrap();
        assert_eq!(summary.instances, detail.instances, "{}", summary.name);
    }
    let (_, _, web) = send(&t.app, request(Method::GET, "/api/v1/services/web", None)).await;
    assert_eq!(
        web["instances"],
        json!({"total": 3, "healthy": 1, "unhealthy": 1, "disconnected": 1,
               "subsets": {"v1": {"total": 1, "healthy": 0}, "v2": {"total": 2, "healthy": 1}}})
    );
}

#[tokio::test]
async fn a_config_name_over_200_bytes_is_a_422_naming_the_field_but_one_stored_earlier_can_be_read_and_deleted() {
    let t = test_app().await;
    let put = |name: &str| {
        Request::builder()
            .method(Method::PUT)
            .uri(format!("/api/v1/services/web/config/{name}"))
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("x"))
            .unwrap()
    };
    let (status, ct, body) = send(&t.app, put(&"n".repeat(201))).await;
    assert_eq!(
        (status, ct.as_deref()),
        (StatusCode::UNPROCESSABLE_ENTITY, PROBLEM),
        "{body}"
    );
    assert_eq!(body["errors"][0]["field"], "name", "{body}");
    assert!(
        body["errors"][0]["message"].as_str().unwrap().contains("at most 200"),
        "{body}"
    );
    assert_eq!(send(&t.app, put(&"n".repeat(200))).await.0, StatusCode::OK);

    // Written before the limit was lowered (the store takes any name it is given).
    let old = "o".repeat(253);
    t.store
        .put_config(
            "web",
            &old,
            "text/plain",
            b"old",
            crate::store::Precondition::None,
            "test",
        )
        .await
        .unwrap();
    let uri = format!("/api/v1/services/web/config/{old}");
    let (status, _, body) = send(&t.app, request(Method::GET, &uri, None)).await;
    assert_eq!((status, body), (StatusCode::OK, Value::String("old".into())));
    let (status, _, body) = send(&t.app, request(Method::DELETE, &uri, None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A request as a browser page would send it: with these headers, and `body` as is.
fn browser(method: Method, uri: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn a_write_from_another_origin_is_a_403_problem_and_stores_nothing() {
    let t = test_app().await;
    let rl = r#"{"rules": [{"name": "all", "requestsPerSecond": 10}]}"#;
    let foreign = [
        ("host", "127.0.0.1:18080"),
        ("origin", "http://evil.example"),
        ("content-type", "application/json"),
    ];
    for (method, uri, body) in [
        (Method::PUT, "/api/v1/services/web/policies/rate-limit", rl),
        (
            Method::POST,
            "/api/v1/tokens",
            r#"{"name": "mallory", "role": "admin"}"#,
        ),
        (
            Method::POST,
            "/api/v1/services/web/canary",
            r#"{"subset": "v2", "steps": [10, 100], "interval": "1s"}"#,
        ),
        (Method::PUT, "/api/v1/services/web/config/app.yaml", "a: 1"),
    ] {
        let (status, ct, body) = send(&t.app, browser(method.clone(), uri, &foreign, body)).await;
        assert_eq!(
            (status, ct.as_deref()),
            (StatusCode::FORBIDDEN, PROBLEM),
            "{method} {uri}: {body}"
        );
        assert!(body["detail"].as_str().unwrap().contains("evil.example"), "{body}");
    }
    assert!(
        t.store.list_revisions(None, 10).await.unwrap().is_empty(),
        "nothing stored"
    );
    assert!(t.store.list_tokens().await.unwrap().is_empty(), "no token created");
    // The control plane's own origin, in any case and with its default port spelt out.
    let own = [
        ("host", "localhost:18080"),
        ("origin", "HTTP://LocalHost:18080"),
        ("content-type", "application/json"),
    ];
    let uri = "/api/v1/services/web/policies/rate-limit";
    let (status, _, body) = send(&t.app, browser(Method::PUT, uri, &own, rl)).await;
    assert_eq!(status, 200, "{body}");
    // Reads are not refused for their Origin: a page elsewhere cannot read the answer.
    let read = [("host", "127.0.0.1:18080"), ("origin", "http://evil.example")];
    let (status, _, _) = send(&t.app, browser(Method::GET, uri, &read, "")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_allowed_origin_may_write_and_its_host_is_answered() {
    let guard = guard::Guard::new(true, &["https://ops.example.com".into()], &[]).unwrap();
    let t = test_app_guarded(None, guard).await;
    let headers = [
        ("host", "ops.example.com"),
        ("origin", "https://ops.example.com"),
        ("content-type", "application/json"),
    ];
    let rl = r#"{"rules": [{"name": "all", "requestsPerSecond": 10}]}"#;
    let req = browser(Method::PUT, "/api/v1/services/web/policies/rate-limit", &headers, rl);
    let (status, _, body) = send(&t.app, req).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_loopback_listener_refuses_a_foreign_host_with_a_403_problem() {
    let t = test_app().await;
    for uri in ["/api/v1/services", "/", "/dashboard/js/main.js", "/healthz"] {
        let (status, ct, body) = send(
            &t.app,
            browser(Method::GET, uri, &[("host", "rebound.evil.example")], ""),
        )
        .await;
        assert_eq!(
            (status, ct.as_deref()),
            (StatusCode::FORBIDDEN, PROBLEM),
            "{uri}: {body}"
        );
        assert!(body["detail"].as_str().unwrap().contains("--allowed-hosts"), "{body}");
    }
    for host in ["localhost:18080", "127.0.0.1", "[::1]:18080"] {
        let (status, _, body) = send(&t.app, browser(Method::GET, "/api/v1/services", &[("host", host)], "")).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
}

#[tokio::test]
async fn form_and_plain_text_bodies_are_415_problems_where_json_is_taken() {
    let t = test_app().await;
    let rl = r#"{"rules": [{"name": "all", "requestsPerSecond": 10}]}"#;
    let policy = "/api/v1/services/web/policies/rate-limit";
    let config = "/api/v1/services/web/config/app.txt";
    for (method, uri, ct) in [
        (Method::PUT, policy, Some("text/plain")),
        (Method::PUT, policy, Some("application/x-www-form-urlencoded")),
        (Method::PUT, policy, None),
        (Method::POST, "/api/v1/tokens", Some("text/plain;charset=UTF-8")),
        (
            Method::POST,
            "/api/v1/services/web/canary",
            Some("multipart/form-data; boundary=x"),
        ),
        (Method::PUT, config, Some("multipart/form-data; boundary=x")),
        (Method::PUT, config, Some("application/x-www-form-urlencoded")),
        (Method::DELETE, config, Some("application/x-www-form-urlencoded")),
    ] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let (status, pct, body) = send(&t.app, browser(method.clone(), uri, &headers, rl)).await;
        assert_eq!(
            (status, pct.as_deref()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, PROBLEM),
            "{method} {uri} {ct:?}: {body}"
        );
    }
    assert!(
        t.store.list_revisions(None, 10).await.unwrap().is_empty(),
        "nothing stored"
    );
    // A config document keeps its own type, plain text included.
    let (status, _, body) = send(
        &t.app,
        browser(Method::PUT, config, &[("content-type", "text/plain")], "hi"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn config_documents_are_served_inert_and_every_answer_says_nosniff() {
    let t = test_app().await;
    let page = "<script>alert(document.cookie)</script>";
    for (name, ct, attachment) in [
        ("page.html", "text/html", true),
        ("app.yaml", "application/yaml", false),
    ] {
        let uri = format!("/api/v1/services/web/config/{name}");
        let (status, _, body) = send(&t.app, browser(Method::PUT, &uri, &[("content-type", ct)], page)).await;
        assert_eq!(status, 200, "{body}");
        let resp = t.app.clone().oneshot(request(Method::GET, &uri, None)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(
            h[header::CONTENT_TYPE],
            ct,
            "{name}: served in the type it was stored with"
        );
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{name}");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], "sandbox", "{name}");
        assert_eq!(
            h.get(header::CONTENT_DISPOSITION).map(|v| v.to_str().unwrap()),
            attachment.then_some("attachment"),
            "{name}"
        );
    }
    for uri in [
        "/api/v1/services",
        "/api/v1/services/nope",
        "/api/v1/openapi.json",
        "/healthz",
        "/nope",
    ] {
        let resp = t.app.clone().oneshot(request(Method::GET, uri, None)).await.unwrap();
        assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{uri}");
    }
}

#[tokio::test]
async fn every_error_is_problem_json_even_those_no_handler_wrote() {
    let t = test_app().await;
    for (method, uri, want) in [
        (Method::GET, "/api/v1/no-such-route", StatusCode::NOT_FOUND),
        (Method::GET, "/no-such-page", StatusCode::NOT_FOUND),
        (Method::GET, "/dashboard/js/none.js", StatusCode::NOT_FOUND),
        (Method::DELETE, "/api/v1/services", StatusCode::METHOD_NOT_ALLOWED),
        (Method::POST, "/healthz", StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/api/v1/revisions/abc", StatusCode::BAD_REQUEST),
        (Method::GET, "/api/v1/revisions/%FF", StatusCode::BAD_REQUEST),
        (Method::GET, "/api/v1/services/%FF/config/a", StatusCode::BAD_REQUEST),
        (Method::GET, "/api/v1/sidecars?limit=abc", StatusCode::BAD_REQUEST),
        (Method::GET, "/api/v1/revisions?limit=abc", StatusCode::BAD_REQUEST),
    ] {
        let (status, ct, body) = send(&t.app, request(method.clone(), uri, None)).await;
        assert_eq!((status, ct.as_deref()), (want, PROBLEM), "{method} {uri}: {body}");
        assert_eq!(body["status"], want.as_u16(), "{method} {uri}: {body}");
    }
    let resp = t
        .app
        .clone()
        .oneshot(request(Method::DELETE, "/api/v1/services", None))
        .await
        .unwrap();
    assert!(
        resp.headers().contains_key(header::ALLOW),
        "a 405 still names the methods it takes"
    );
}

#[tokio::test]
async fn if_match_takes_a_list_and_if_none_match_star_creates_only() {
    let t = test_app().await;
    let uri = "/api/v1/services/web/policies/rate-limit";
    let doc = json!({"rules": [{"name": "all", "requestsPerSecond": 10}]});
    let with = |name: &'static str, value: String| {
        let mut r = request(Method::PUT, uri, Some(&doc));
        r.headers_mut().insert(name, value.parse().unwrap());
        r
    };
    let (status, _, body) = send(&t.app, with("if-match", "*".into())).await;
    assert_eq!(status, 412, "If-Match: * needs an existing document: {body}");
    let (status, _, body) = send(&t.app, with("if-none-match", "*".into())).await;
    assert_eq!(status, 200, "create-only on a new document: {body}");
    let rev = body["revision"].as_u64().unwrap();
    let (status, _, body) = send(&t.app, with("if-none-match", "*".into())).await;
    assert_eq!(
        (status, body["currentRevision"].as_u64()),
        (StatusCode::PRECONDITION_FAILED, Some(rev))
    );
    let (status, _, body) = send(&t.app, with("if-match", format!("\"{}\", \"{rev}\"", rev + 10))).await;
    assert_eq!(status, 200, "any tag of the list matches: {body}");
    let rev = body["revision"].as_u64().unwrap();
    let (status, _, body) = send(&t.app, with("if-match", format!("\"{}\", \"{}\"", rev + 1, rev + 2))).await;
    assert_eq!(status, 412, "no tag of the list matches: {body}");
    let (status, _, body) = send(&t.app, with("if-match", format!("\"x\", \"{rev}\""))).await;
    assert_eq!(
        status, 200,
        "a tag that names no revision does not spoil the list: {body}"
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let t = test_app_with(Some("boot-secret")).await;
    for value in ["Bearer boot-secret", "bearer boot-secret", "BEARER boot-secret"] {
        let req = browser(Method::GET, "/api/v1/services", &[("authorization", value)], "");
        let (status, _, body) = send(&t.app, req).await;
        assert_eq!(status, 200, "{value}: {body}");
    }
    let req = browser(
        Method::GET,
        "/api/v1/services",
        &[("authorization", "Basic boot-secret")],
        "",
    );
    assert_eq!(send(&t.app, req).await.0, 401);
}

#[tokio::test]
async fn repeated_bad_tokens_from_one_address_get_429_while_a_good_token_still_works() {
    let t = test_app_with(Some("boot-secret")).await;
    let from = |addr: &str, token: &str| {
        let mut r = browser(Method::GET, "/api/v1/services", &[("authorization", token)], "");
        let peer: std::net::SocketAddr = addr.parse().unwrap();
        r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        r
    };
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(send(&t.app, from("10.1.1.1:5000", "Bearer wrong")).await.0.as_u16());
    }
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert_eq!(statuses[10..], [429; 2], "{statuses:?}");
    let resp = t
        .app
        .clone()
        .oneshot(from("10.1.1.1:5001", "Bearer wrong"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], outrider_api::PROBLEM_JSON);
    let retry: u64 = resp.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let (status, _, body) = send(&t.app, from("10.1.1.1:5002", "Bearer boot-secret")).await;
    assert_eq!(status, 200, "a valid token is never throttled: {body}");
    assert_eq!(
        send(&t.app, from("10.2.2.2:5000", "Bearer wrong")).await.0,
        401,
        "another address is not"
    );
    let metrics = send(&t.app, request(Method::GET, "/metrics", None)).await.2;
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains("outrider_control_plane_api_auth_throttled_total 3"),
        "{text}"
    );
    assert!(
        text.contains("outrider_control_plane_api_auth_failures_total 14"),
        "{text}"
    );
}

#[tokio::test]
async fn revoking_the_last_admin_token_is_a_409_and_leaves_the_api_closed() {
    let t = test_app().await;
    let create = |name: &str, role: &str| {
        request(
            Method::POST,
            "/api/v1/tokens",
            Some(&json!({"name": name, "role": role})),
        )
    };
    let (status, _, root) = send(&t.app, create("root", "admin")).await;
    assert_eq!(status, 201, "{root}");
    let root = format!("Bearer {}", root["token"].as_str().unwrap());
    let as_root = |method: Method, uri: &str| browser(method, uri, &[("authorization", root.as_str())], "");
    let (status, ct, body) = send(&t.app, as_root(Method::DELETE, "/api/v1/tokens/root")).await;
    assert_eq!((status, ct.as_deref()), (StatusCode::CONFLICT, PROBLEM), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("admin token"), "{body}");
    let (status, _, _) = send(&t.app, request(Method::GET, "/api/v1/services", None)).await;
    assert_eq!(status, 401, "the API stays closed to anonymous callers");
    // With another admin live, the first may go.
    let mut second = create("second", "admin");
    second
        .headers_mut()
        .insert(header::AUTHORIZATION, root.parse().unwrap());
    assert_eq!(send(&t.app, second).await.0, 201);
    let (status, _, body) = send(&t.app, as_root(Method::DELETE, "/api/v1/tokens/root")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_body_that_never_arrives_is_a_408_problem_and_stores_nothing() {
    // The bootstrap token is checked without the store, so nothing but the body's
    // timer runs while time is paused (and jumps ahead when all is idle).
    let t = test_app_with(Some("boot-secret")).await;
    let never = Body::from_stream(futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>());
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/api/v1/services/web/config/app.yaml")
        .header(header::CONTENT_TYPE, "application/yaml")
        .header(header::AUTHORIZATION, "Bearer boot-secret")
        .body(never)
        .unwrap();
    tokio::time::pause();
    let (status, ct, body) = send(&t.app, req).await;
    tokio::time::resume();
    assert_eq!(
        (status, ct.as_deref()),
        (StatusCode::REQUEST_TIMEOUT, PROBLEM),
        "{body}"
    );
    assert!(
        t.store.list_revisions(None, 10).await.unwrap().is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn an_authorization_policy_is_stored_read_listed_reverted_and_deleted_like_every_kind() {
    let t = test_app().await;
    let uri = "/api/v1/services/web/policies/authorization";
    let doc = json!({"defaultAction": "deny",
        "rules": [{"name": "reads", "from": ["frontend"], "match": {"methods": ["GET"]}, "action": "allow"}]});
    let (status, _, report) = send(&t.app, request(Method::PUT, &format!("{uri}?dryRun=true"), Some(&doc))).await;
    assert_eq!(
        (status, report["dryRun"].clone()),
        (StatusCode::OK, json!(true)),
        "{report}"
    );
    assert!(
        t.store.list_revisions(None, 10).await.unwrap().is_empty(),
        "a dry run stores nothing"
    );

    let (status, _, stored) = send(&t.app, request(Method::PUT, uri, Some(&doc))).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["kind"], "authorization");
    // Defaults are filled in: what the sidecar enforces is what the API shows.
    assert_eq!(stored["document"]["mtls"], "permissive");
    assert_eq!(stored["document"]["dryRun"], false);
    let (status, _, read) = send(&t.app, request(Method::GET, uri, None)).await;
    assert_eq!((status, &read["document"]), (StatusCode::OK, &stored["document"]));
    let (_, _, detail) = send(&t.app, request(Method::GET, "/api/v1/services/web", None)).await;
    assert_eq!(
        detail["policies"]["authorization"]["document"], stored["document"],
        "{detail}"
    );

    let revision = stored["revision"].as_u64().unwrap();
    let (status, _, reverted) = send(
        &t.app,
        request(Method::POST, &format!("/api/v1/revisions/{revision}/revert"), None),
    )
    .await;
    assert_eq!(status, 200, "{reverted}");
    let (status, _, _) = send(&t.app, request(Method::GET, uri, None)).await;
    assert_eq!(status, 404, "the revert restored the state before: no policy");
    let history = t.store.list_revisions(None, 10).await.unwrap();
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|r| r.kind == "authorization"), "{history:?}");

    let (status, _, _) = send(&t.app, request(Method::PUT, uri, Some(&doc))).await;
    assert_eq!(status, 200);
    let (status, _, deleted) = send(&t.app, request(Method::DELETE, uri, None)).await;
    assert_eq!((status, deleted["deleted"].clone()), (StatusCode::OK, json!(true)));
}

#[tokio::test]
async fn an_invalid_authorization_policy_is_a_422_naming_every_bad_field() {
    let t = test_app().await;
    let doc = json!({"rules": [
        {"name": "a", "from": ["Not A Service", "ops/admin"], "match": {"methods": ["get"]}, "action": "allow"},
        {"name": "a", "action": "deny"}]});
    let (status, ct, body) = send(
        &t.app,
        request(Method::PUT, "/api/v1/services/web/policies/authorization", Some(&doc)),
    )
    .await;
    assert_eq!(
        (status, ct.as_deref()),
        (StatusCode::UNPROCESSABLE_ENTITY, PROBLEM),
        "{body}"
    );
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["rules[0].from[0]", "rules[0].match.methods[0]", "rules[1].name"]
    );
    assert!(t.store.list_revisions(None, 10).await.unwrap().is_empty());
}

#[test]
fn the_document_lists_every_policy_kind_for_the_kind_parameter() {
    let doc = serde_json::to_value(openapi()).unwrap();
    let params = doc["paths"]["/api/v1/services/{service}/policies/{kind}"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let kind = params.iter().find(|p| p["name"] == "kind").unwrap();
    let listed: Vec<&str> = kind["schema"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{kind}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let every: Vec<&str> = outrider_policy::PolicyKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(listed, every);
}

async fn secrets_app() -> TestApp {
    let key = crate::vault::SecretsKey::from_bytes(&[9; 32]);
    test_app_keyed(None, guard::Guard::new(true, &[], &[]).unwrap(), Some(key)).await
}

fn put_secret(uri: &str, value: impl Into<Body>, content_type: &str) -> Request<Body> {
    Request::builder()
        .method(Method::PUT)
        .uri(uri)
        .header(header::CONTENT_TYPE, content_type)
        .body(value.into())
        .unwrap()
}

#[tokio::test]
async fn a_secret_is_written_raw_and_only_its_metadata_is_ever_read_back() {
    let t = secrets_app().await;
    let uri = "/api/v1/services/web/secrets/db-password";
    let resp = t
        .app
        .clone()
        .oneshot(put_secret(uri, "hunter2-hunter2", "text/plain"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tag = resp.headers()[header::ETAG].to_str().unwrap().to_owned();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
    let meta: outrider_api::SecretMeta = serde_json::from_slice(&body).unwrap();
    assert_eq!((meta.name.as_str(), meta.size), ("db-password", 15));
    assert_eq!(tag, format!("\"{}\"", meta.revision));
    for read in [
        uri,
        "/api/v1/services/web/secrets",
        "/api/v1/services/web",
        "/api/v1/revisions",
    ] {
        let (status, _, body) = send(&t.app, request(Method::GET, read, None)).await;
        assert_eq!(status, 200, "{read}: {body}");
        assert!(!body.to_string().contains("hunter2"), "{read}: {body}");
    }
    let (_, _, one) = send(&t.app, request(Method::GET, uri, None)).await;
    assert_eq!(serde_json::from_value::<outrider_api::SecretMeta>(one).unwrap(), meta);
    let (_, _, list) = send(&t.app, request(Method::GET, "/api/v1/services/web/secrets", None)).await;
    assert_eq!(
        serde_json::from_value::<Vec<outrider_api::SecretMeta>>(list).unwrap(),
        vec![meta.clone()]
    );
    let (_, _, rev) = send(
        &t.app,
        request(Method::GET, &format!("/api/v1/revisions/{}", meta.revision), None),
    )
    .await;
    assert!(!rev.to_string().contains("hunter2"), "{rev}");
    assert_eq!(rev["kind"], "secret");
    // A revert would need the value, which the history does not have.
    let revert = format!("/api/v1/revisions/{}/revert", meta.revision);
    let (status, ct, body) = send(&t.app, request(Method::POST, &revert, None)).await;
    assert_eq!((status, ct.as_deref()), (StatusCode::CONFLICT, PROBLEM), "{body}");
    // The value reaches the snapshot, and only there.
    assert_eq!(t.store.secret_values("web").await.unwrap()[0].value, b"hunter2-hunter2");

    let (status, _, body) = send(&t.app, request(Method::DELETE, uri, None)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], true);
    let (status, ct, _) = send(&t.app, request(Method::GET, uri, None)).await;
    assert_eq!((status, ct.as_deref()), (StatusCode::NOT_FOUND, PROBLEM));
}

#[tokio::test]
async fn secret_writes_are_refused_with_413_422_412_415_and_503_as_documented() {
    let t = secrets_app().await;
    let uri = "/api/v1/services/web/secrets/key";
    let too_big = vec![b'x'; outrider_policy::limits::SECRET_MAX_BYTES + 1];
    let (status, ct, body) = send(&t.app, put_secret(uri, too_big, "application/octet-stream")).await;
    assert_eq!(
        (status, ct.as_deref()),
        (StatusCode::PAYLOAD_TOO_LARGE, PROBLEM),
        "{body}"
    );
    assert!(body["detail"].as_str().unwrap().contains("65536"), "{body}");
    let exact = vec![b'x'; outrider_policy::limits::SECRET_MAX_BYTES];
    let (status, _, body) = send(&t.app, put_secret(uri, exact, "application/octet-stream")).await;
    assert_eq!(status, 200, "{body}");
    let stored: outrider_api::SecretMeta = serde_json::from_value(body).unwrap();

    for bad in [
        "/api/v1/services/Web/secrets/key",
        "/api/v1/services/web/secrets/..",
        "/api/v1/services/web/secrets/a%2Fb",
    ] {
        let (status, ct, body) = send(&t.app, put_secret(bad, "v", "text/plain")).await;
        assert_eq!(
            (status, ct.as_deref()),
            (StatusCode::UNPROCESSABLE_ENTITY, PROBLEM),
            "{bad}: {body}"
        );
    }
    let mut stale = put_secret(uri, "v", "text/plain");
    stale.headers_mut().insert(
        header::IF_MATCH,
        format!("\"{}\"", stored.revision + 7).parse().unwrap(),
    );
    let (status, _, body) = send(&t.app, stale).await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(body["currentRevision"], stored.revision);
    let mut create_only = put_secret(uri, "v", "text/plain");
    create_only
        .headers_mut()
        .insert(header::IF_NONE_MATCH, "*".parse().unwrap());
    assert_eq!(send(&t.app, create_only).await.0, 412);
    let (status, _, _) = send(&t.app, put_secret(uri, "a=b", "application/x-www-form-urlencoded")).await;
    assert_eq!(status, 415);

    // A dry run checks the same and writes nothing.
    let (status, _, body) = send(&t.app, put_secret(&format!("{uri}?dryRun=true"), "new", "text/plain")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["document"], json!({"name": "key", "size": 3}));
    let mut stale_dry = put_secret(&format!("{uri}?dryRun=true"), "v", "text/plain");
    stale_dry.headers_mut().insert(
        header::IF_MATCH,
        format!("\"{}\"", stored.revision + 7).parse().unwrap(),
    );
    assert_eq!(send(&t.app, stale_dry).await.0, 412);
    let (status, _, _) = send(&t.app, request(Method::DELETE, &format!("{uri}?dryRun=true"), None)).await;
    assert_eq!(status, 200);
    assert_eq!(
        t.store.get_secret("web", "key").await.unwrap().unwrap().revision,
        stored.revision
    );

    // Without a key: a clear 503 that says what to configure, and nothing stored.
    let keyless = test_app().await;
    let (status, ct, body) = send(&keyless.app, put_secret(uri, "v", "text/plain")).await;
    assert_eq!(
        (status, ct.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, PROBLEM),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("OUTRIDER_SECRETS_KEY_FILE"),
        "{body}"
    );
    assert!(keyless.store.list_secrets("web").await.unwrap().is_empty());
}

#[tokio::test]
async fn sink_credentials_are_masked_in_every_answer_and_a_masked_url_written_back_keeps_them() {
    let t = test_app().await;
    let uri = "/api/v1/services/web/policies/logging";
    let doc = json!({"sink": {"type": "http", "url": "https://elastic:hunter2@es:9200/_bulk", "format": "elasticsearch-bulk"}});
    let (status, _, put) = send(&t.app, request(Method::PUT, uri, Some(&doc))).await;
    assert_eq!(status, 200, "{put}");
    let (_, _, got) = send(&t.app, request(Method::GET, uri, None)).await;
    let rev = put["revision"].as_u64().unwrap();
    let (_, _, history) = send(&t.app, request(Method::GET, &format!("/api/v1/revisions/{rev}"), None)).await;
    let (_, _, service) = send(&t.app, request(Method::GET, "/api/v1/services/web", None)).await;
    for answer in [&put, &got, &history, &service] {
        assert!(!answer.to_string().contains("hunter2"), "{answer}");
    }
    assert_eq!(got["document"]["sink"]["url"], "https://elastic:***@es:9200/_bulk");
    let stored = || async {
        let p = t
            .store
            .get_policy("web", outrider_policy::PolicyKind::Logging)
            .await
            .unwrap()
            .unwrap();
        p.document["sink"]["url"].as_str().unwrap().to_owned()
    };
    // What was read, written back with another change: the password stays.
    let mut edited = got["document"].clone();
    edited["sink"]["batchSize"] = json!(100);
    let (status, _, body) = send(&t.app, request(Method::PUT, uri, Some(&edited))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stored().await, "https://elastic:hunter2@es:9200/_bulk");
    // A new password is taken as written.
    edited["sink"]["url"] = json!("https://elastic:s3cond@es:9200/_bulk");
    send(&t.app, request(Method::PUT, uri, Some(&edited))).await;
    assert_eq!(stored().await, "https://elastic:s3cond@es:9200/_bulk");
}
