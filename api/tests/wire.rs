//! The wire form of the boundary types: the exact JSON names clients rely on.

use outrider_api::*;
use serde_json::json;

#[test]
fn a_problem_leaves_out_the_fields_of_other_statuses() {
    let p = Problem::new(404, "Not Found", "unknown service \"web\"");
    assert_eq!(
        serde_json::to_value(&p).unwrap(),
        json!({"type": "about:blank", "title": "Not Found", "status": 404, "detail": "unknown service \"web\""})
    );
    let mut stale = Problem::new(412, "Stale write", "changed");
    stale.current_revision = Some(7);
    assert_eq!(serde_json::to_value(&stale).unwrap()["currentRevision"], 7);
}

#[test]
fn change_events_are_tagged_by_type_in_kebab_case() {
    let e = ChangeEvent::Snapshot {
        service: "web".into(),
        revision: 3,
    };
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        json!({"type": "snapshot", "service": "web", "revision": 3})
    );
    let back: ChangeEvent = serde_json::from_value(json!({"type": "sidecars", "sidecars": []})).unwrap();
    assert_eq!(back, ChangeEvent::Sidecars { sidecars: vec![] });
}

#[test]
fn a_rollout_request_defaults_its_error_rate_and_refuses_unknown_fields() {
    let r: RolloutRequest =
        serde_json::from_value(json!({"subset": "v2", "steps": [10, 100], "interval": "30s", "maxP99": "250ms"}))
            .unwrap();
    assert_eq!(r.max_error_rate, 0.01);
    assert_eq!(serde_json::to_value(&r).unwrap()["maxP99"], "250ms");
    assert!(serde_json::from_value::<RolloutRequest>(
        json!({"subset": "v2", "steps": [10], "interval": "30s", "maxp99": "1s"})
    )
    .is_err());
}

#[test]
fn a_sidecar_without_health_or_nack_sends_them_as_null() {
    let s: Sidecar = serde_json::from_value(json!({
        "id": "web-1", "service": "web", "version": "v1", "namespace": "default", "pod": "web-1",
        "address": "127.0.0.1", "inboundPort": 15006, "adminPort": 15000, "status": "healthy",
        "appliedRevision": 2, "targetRevision": 2, "inSync": true, "lastNack": null,
        "lastSeen": "2026-01-01T00:00:00.000Z", "connectedAt": "2026-01-01T00:00:00.000Z",
        "replica": "r1", "buildVersion": "0.1.0", "health": {"appHealthy": true, "requestsTotal": 5}
    }))
    .unwrap();
    assert_eq!(s.health.as_ref().map(|h| h.requests_total), Some(5));
    let mut v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["health"]["logShipping"], serde_json::Value::Null);
    v["health"] = serde_json::Value::Null;
    let bare: Sidecar = serde_json::from_value(v).unwrap();
    assert!(serde_json::to_value(&bare)
        .unwrap()
        .as_object()
        .unwrap()
        .contains_key("lastNack"));
}
