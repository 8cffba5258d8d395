//! Scoped, incremental discovery through the real binaries (`docs/reference.md`,
//! "Destinations"): a sidecar holds only the services its app calls, learns a new
//! one on the first call, gets endpoint changes as deltas, resyncs after a
//! reconnect, keeps routing from disk, and a slow reader holds nobody up.

mod common;
use common::*;
use outrider_proto::v1::control_plane_client::ControlPlaneClient;
use outrider_proto::v1::{control_message, sidecar_message, Hello, Identity, SidecarMessage};
use outrider_testkit::{echo_with, free_port, wait_until, Proc};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;

struct Instance {
    _app: Proc,
    sidecar: Sidecar,
}

async fn instance(cp: &ControlPlane, dir: &Path, service: &str, pod: &str) -> Instance {
    instance_with(cp, dir, service, pod, &[]).await
}

async fn instance_with(cp: &ControlPlane, dir: &Path, service: &str, pod: &str, env: &[(&str, &str)]) -> Instance {
    let port = free_port();
    let app = echo_with(port, pod, &[]);
    let sidecar = Sidecar::start_with(&cp.grpc(), service, pod, "v1", port, &dir.join(pod), env).await;
    // Before its stream is open a sidecar answers calls to names it does not hold with
    // 503 at once; the control plane lists it as healthy a moment before that.
    wait_until(SOON, || async {
        sidecar.config_dump().await["controlPlaneConnected"] == true
    })
    .await
    .unwrap_or_else(|e| panic!("{pod} never connected: {e}"));
    Instance { _app: app, sidecar }
}

/// The services a sidecar holds, with the pods of each.
async fn held(s: &Sidecar) -> Vec<(String, BTreeSet<String>)> {
    let dump = s.config_dump().await;
    dump["destinations"]["services"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let pods = d["endpoints"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|e| e["pod"].as_str().unwrap_or("").to_owned())
                .collect();
            (d["service"].as_str().unwrap_or("").to_owned(), pods)
        })
        .collect()
}

async fn pods_of(s: &Sidecar, service: &str) -> BTreeSet<String> {
    held(s)
        .await
        .into_iter()
        .find(|(n, _)| n == service)
        .map(|(_, p)| p)
        .unwrap_or_default()
}

async fn wait_pods(s: &Sidecar, service: &str, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|p| p.to_string()).collect();
    if let Err(e) = wait_until(SOON, || async { pods_of(s, service).await == want }).await {
        panic!(
            "{} never saw {service} = {want:?} ({e}); holds {:?}",
            s.pod,
            held(s).await
        );
    }
}

/// GET `http://{service}/` through the sidecar's outbound port; (status, x-echo-name).
async fn call(s: &Sidecar, service: &str) -> (u16, String) {
    call_service(s, service).await
}

async fn wait_healthy(cp: &ControlPlane, ids: &[String]) {
    for id in ids {
        wait_until(SOON, || async {
            cp.sidecar_status(id).await.as_deref() == Some("healthy")
        })
        .await
        .unwrap_or_else(|e| panic!("{id} never healthy: {e}"));
    }
}

#[tokio::test]
async fn a_first_call_to_a_never_seen_service_succeeds_and_joins_reach_its_callers_only() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let web1 = instance(&cp, dir.path(), "web", "web-1").await;
    let caller = instance(&cp, dir.path(), "client", "client-1").await;
    let bystander = instance(&cp, dir.path(), "other", "other-1").await;
    wait_healthy(&cp, &[web1.sidecar.id(), caller.sidecar.id(), bystander.sidecar.id()]).await;
    assert!(
        held(&caller.sidecar).await.is_empty(),
        "nothing is held before the app calls"
    );

    // The very first call waits for the lookup and succeeds.
    assert_eq!(call(&caller.sidecar, "web").await, (200, "web-1".to_owned()));
    wait_pods(&caller.sidecar, "web", &["web-1"]).await;
    // A name the mesh does not know is answered, not hung.
    let (status, _) = call(&caller.sidecar, "nowhere").await;
    assert_eq!(status, 503);

    // web's own sidecar keeps its snapshot (no scoped limit depends on the count).
    let web1_nonce = web1.sidecar.config_dump().await["nonce"].clone();
    let web2 = instance(&cp, dir.path(), "web", "web-2").await;
    wait_pods(&caller.sidecar, "web", &["web-1", "web-2"]).await;
    assert!(
        held(&bystander.sidecar).await.is_empty(),
        "a sidecar that never called web hears nothing of it"
    );
    assert_eq!(web1.sidecar.config_dump().await["nonce"], web1_nonce);

    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.insert(call(&caller.sidecar, "web").await.1);
    }
    assert_eq!(seen, ["web-1", "web-2"].map(str::to_owned).into());
    drop(web2);
}

#[tokio::test]
async fn a_destination_the_app_stops_calling_is_dropped_and_found_again_on_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let web1 = instance(&cp, dir.path(), "web", "web-1").await;
    let idle = [("OUTRIDER_DESTINATION_IDLE", "2s")];
    let caller = instance_with(&cp, dir.path(), "client", "client-1", &idle).await;
    // The caller too: before it has connected, a call is answered 503 at once.
    wait_healthy(&cp, &[web1.sidecar.id(), caller.sidecar.id()]).await;
    assert_eq!(call(&caller.sidecar, "web").await.0, 200);
    wait_pods(&caller.sidecar, "web", &["web-1"]).await;

    wait_until(SOON, || async { held(&caller.sidecar).await.is_empty() })
        .await
        .expect("web is dropped once the app stops calling it");
    assert_eq!(call(&caller.sidecar, "web").await, (200, "web-1".to_owned()));
    wait_pods(&caller.sidecar, "web", &["web-1"]).await;
}

#[tokio::test]
async fn after_a_control_plane_restart_callers_resync_and_keep_getting_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(&dir.path().join("cp")).await;
    let web1 = instance(&cp, dir.path(), "web", "web-1").await;
    let caller = instance(&cp, dir.path(), "client", "client-1").await;
    wait_healthy(&cp, &[web1.sidecar.id()]).await;
    assert_eq!(call(&caller.sidecar, "web").await.0, 200);
    wait_pods(&caller.sidecar, "web", &["web-1"]).await;

    cp.proc.kill9();
    wait_until(SOON, || async {
        caller.sidecar.config_dump().await["controlPlaneConnected"] == false
    })
    .await
    .unwrap();
    assert_eq!(
        call(&caller.sidecar, "web").await.0,
        200,
        "routes while the control plane is away"
    );
    cp.restart().await;
    wait_until(SOON, || async {
        caller.sidecar.config_dump().await["controlPlaneConnected"] == true
    })
    .await
    .unwrap();

    // The reconnected caller gets a full answer for what it held, then deltas again.
    let web2 = instance(&cp, dir.path(), "web", "web-2").await;
    wait_pods(&caller.sidecar, "web", &["web-1", "web-2"]).await;
    drop(web2);
    wait_pods(&caller.sidecar, "web", &["web-1"]).await;
}

#[tokio::test]
async fn a_sidecar_restarted_while_the_control_plane_is_down_routes_with_its_persisted_destinations() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(&dir.path().join("cp")).await;
    let web1 = instance(&cp, dir.path(), "web", "web-1").await;
    let mut caller = instance(&cp, dir.path(), "client", "client-1").await;
    wait_healthy(&cp, &[web1.sidecar.id()]).await;
    assert_eq!(call(&caller.sidecar, "web").await.0, 200);
    wait_pods(&caller.sidecar, "web", &["web-1"]).await;
    // Destinations reach the disk within about a second of a change.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    cp.proc.kill9();
    caller.sidecar.proc.terminate();
    caller.sidecar.restart().await;
    wait_pods(&caller.sidecar, "web", &["web-1"]).await;
    assert_eq!(call(&caller.sidecar, "web").await, (200, "web-1".to_owned()));
    let _ = cp.restart().await;
}

#[tokio::test]
async fn a_watcher_that_does_not_read_holds_nobody_up_and_gets_the_latest_state_when_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let caller = instance(&cp, dir.path(), "client", "client-1").await;
    wait_healthy(&cp, &[caller.sidecar.id()]).await;
    assert_eq!(call(&caller.sidecar, "web").await.0, 503, "no web yet");

    // A raw stream with a tiny receive window that watches web and reads nothing.
    let channel = tonic::transport::Endpoint::from_shared(cp.grpc())
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(SidecarMessage {
        msg: Some(sidecar_message::Msg::Hello(Hello {
            identity: Some(Identity {
                service: "slow".into(),
                version: "v1".into(),
                namespace: "default".into(),
                pod: "slow-1".into(),
                address: "127.0.0.1".into(),
                inbound_port: 1,
                outbound_port: 2,
                admin_port: 3,
            }),
            watch: vec!["web".into()],
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut slow = ControlPlaneClient::new(channel)
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    // Enough churn to fill the slow stream's window many times over.
    let mut pods = Vec::new();
    for i in 0..6 {
        pods.push(instance(&cp, dir.path(), "web", &format!("web-{i}")).await);
    }
    for p in pods.drain(..3) {
        drop(p);
    }
    let live = ["web-3", "web-4", "web-5"];
    wait_pods(&caller.sidecar, "web", &live).await;

    // Now read: applying whatever arrives ends at the same set, coalesced.
    let mut endpoints: BTreeMap<(String, u32), String> = BTreeMap::new();
    let want: BTreeSet<String> = live.iter().map(|p| p.to_string()).collect();
    let deadline = tokio::time::Instant::now() + SOON;
    let mut messages = 0;
    while endpoints.values().cloned().collect::<BTreeSet<_>>() != want {
        let msg = tokio::time::timeout_at(deadline, slow.message())
            .await
            .unwrap_or_else(|_| panic!("the slow reader never caught up; holds {endpoints:?}"))
            .unwrap()
            .expect("stream open");
        let Some(control_message::Msg::Destinations(d)) = msg.msg else {
            continue;
        };
        messages += 1;
        for s in d.services.iter().filter(|s| s.service == "web") {
            endpoints = s
                .endpoints
                .iter()
                .map(|e| ((e.address.clone(), e.port), e.pod.clone()))
                .collect();
        }
        for delta in d.deltas.iter().filter(|d| d.service == "web") {
            for k in &delta.remove {
                endpoints.remove(&(k.address.clone(), k.port));
            }
            for e in &delta.upsert {
                endpoints.insert((e.address.clone(), e.port), e.pod.clone());
            }
        }
    }
    assert!(messages >= 1);
    drop(pods);
}
