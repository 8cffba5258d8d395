//! Each revision says how many sidecars applied it and how long the last one took,
//! in the API (from the store, so on any replica) and in `/metrics`.

mod common;
use common::*;
use outrider_testkit::{echo, free_port, wait_for};

#[tokio::test]
async fn a_write_reports_every_connected_sidecar_applying_it_and_the_time_it_took() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let mut a = Sidecar::start(&cp.grpc(), "web", "web-a", app_port, &dir.path().join("a")).await;
    let mut b = Sidecar::start(&cp.grpc(), "web", "web-b", app_port, &dir.path().join("b")).await;
    for id in [a.id(), b.id()] {
        wait_for(SOON, || async {
            match cp.sidecar_status(&id).await.as_deref() {
                Some("healthy") => Ok(()),
                other => Err(anyhow::anyhow!("{id} is {other:?}")),
            }
        })
        .await
        .unwrap();
    }

    let (status, body) = cp
        .put_policy(
            "web",
            "rate-limit",
            r#"{"rules":[{"name":"all","requestsPerSecond":5}]}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rev = body["revision"].as_u64().unwrap();
    a.wait_revision(rev).await;
    b.wait_revision(rev).await;

    let p = wait_for(SOON, || async {
        let p = cp.get_json(&format!("/revisions/{rev}")).await["propagation"].clone();
        if p["applied"] == 2 {
            Ok(p)
        } else {
            Err(anyhow::anyhow!("not yet applied by both: {p}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(p["pending"], 0);
    let took = p["lastAckSeconds"].as_f64().unwrap();
    assert!((0.0..SOON.as_secs_f64()).contains(&took), "{p}");
    let listed = cp.get_json("/revisions").await;
    assert_eq!(listed[0]["revision"], rev);
    assert_eq!(listed[0]["propagation"], p);

    let metrics = client()
        .get(format!("{}/metrics", cp.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("outrider_control_plane_propagation_seconds_count "))
        .unwrap_or_else(|| panic!("no propagation histogram: {metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, 2, "one observation per sidecar ACK");
}
