//! Outbound routing through the real binaries: a caller `client` reaches `web` (v1
//! and v2 instances, each an echo app behind its own sidecar) through its sidecar's
//! outbound port; discovery, RoutingPolicy, retries and instance loss.

mod common;
use common::*;
use outrider_testkit::{echo_with, free_port, wait_until, Proc};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An echo app and its sidecar: one instance of a service.
struct Instance {
    app: Proc,
    sidecar: Sidecar,
}

async fn instance(
    cp: &ControlPlane,
    dir: &Path,
    service: &str,
    version: &str,
    pod: &str,
    echo_args: &[&str],
) -> Instance {
    let port = free_port();
    let app = echo_with(port, pod, echo_args);
    // Every instance declares `web` ahead, so none waits for a lookup (on-demand
    // discovery has its own tests in discovery.rs).
    let declared = [("OUTRIDER_DESTINATIONS", "web")];
    let sidecar = Sidecar::start_with(&cp.grpc(), service, pod, version, port, &dir.join(pod), &declared).await;
    Instance { app, sidecar }
}

/// How many endpoints of `service` the caller's sidecar routes to.
async fn endpoints_of(caller: &Sidecar, service: &str) -> Vec<String> {
    let dump = caller.config_dump().await;
    dump["destinations"]["services"]
        .as_array()
        .and_then(|s| s.iter().find(|d| d["service"] == service))
        .and_then(|d| d["endpoints"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|e| e["pod"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn wait_endpoints(caller: &Sidecar, service: &str, n: usize) {
    let r = wait_until(SOON, || async { endpoints_of(caller, service).await.len() == n }).await;
    if let Err(e) = r {
        panic!(
            "caller never saw {n} endpoints of {service}: {e}; has {:?}",
            endpoints_of(caller, service).await
        );
    }
}

/// GET `http://web{path}` through the caller's outbound port; (status, x-echo-name).
async fn call(c: &reqwest::Client, caller: &Sidecar, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = c
        .get(format!("http://127.0.0.1:{}{path}", caller.outbound_port))
        .header("host", "web");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match req.send().await {
        Ok(r) => (
            r.status().as_u16(),
            r.headers()
                .get("x-echo-name")
                .map(|v| v.to_str().unwrap_or("").to_owned())
                .unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

struct Mesh {
    cp: ControlPlane,
    _dir: tempfile::TempDir,
    client: Instance,
    v1: Instance,
    v2: Instance,
}

async fn mesh(v2_args: &[&str]) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let v1 = instance(&cp, dir.path(), "web", "v1", "web-v1", &[]).await;
    let v2 = instance(&cp, dir.path(), "web", "v2", "web-v2", v2_args).await;
    let client = instance(&cp, dir.path(), "client", "v1", "client-1", &[]).await;
    wait_endpoints(&client.sidecar, "web", 2).await;
    Mesh {
        cp,
        _dir: dir,
        client,
        v1,
        v2,
    }
}

async fn put_routing(cp: &ControlPlane, caller: &mut Sidecar, doc: &str) {
    let (status, body) = cp.put_policy("web", "routing", doc).await;
    assert_eq!(status, 200, "{body}");
    caller.wait_revision(body["revision"].as_u64().unwrap()).await;
}

#[tokio::test]
async fn traffic_spreads_then_follows_weights_headers_and_absolute_form() {
    let mut m = mesh(&[]).await;
    let c = client();

    // No policy: both subsets get traffic.
    let mut v2 = 0;
    for _ in 0..100 {
        let (status, name) = call(&c, &m.client.sidecar, "/", &[]).await;
        assert_eq!(status, 200);
        v2 += usize::from(name == "web-v2");
    }
    assert!((20..=80).contains(&v2), "no policy spreads: v2 got {v2} of 100");

    // 80/20 within ±5 points over 1000 requests.
    put_routing(
        &m.cp,
        &mut m.client.sidecar,
        r#"{"routes":[
          {"name":"beta","match":{"headers":{"x-canary":"always"}},"backends":[{"subset":"v2","weight":100}]},
          {"name":"default","match":{"pathPrefix":"/"},"backends":[{"subset":"v1","weight":80},{"subset":"v2","weight":20}]}]}"#,
    )
    .await;
    let mut v2 = 0;
    for _ in 0..1000 {
        let (status, name) = call(&c, &m.client.sidecar, "/", &[]).await;
        assert_eq!(status, 200);
        v2 += usize::from(name == "web-v2");
    }
    assert!((150..=250).contains(&v2), "v2 share {v2}/1000 is not 20% ± 5 points");

    // A header-matched route pins v2.
    for _ in 0..50 {
        let (_, name) = call(&c, &m.client.sidecar, "/", &[("x-canary", "always")]).await;
        assert_eq!(name, "web-v2");
    }

    // HTTP_PROXY style: absolute-form `http://web/...`.
    let proxied = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://127.0.0.1:{}", m.client.sidecar.outbound_port)).unwrap())
        .build()
        .unwrap();
    let r = proxied
        .get("http://web/hello")
        .header("x-canary", "always")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo-name"], "web-v2");

    // Unknown service: 503 with a clear body.
    let r = c
        .get(format!("http://127.0.0.1:{}/", m.client.sidecar.outbound_port))
        .header("host", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("unknown service \"nope\""));
    let _ = (&m.v1.app, &m.v2.app);
}

#[tokio::test]
async fn instances_join_within_a_second_and_leave_every_caller() {
    let mut m = mesh(&[]).await;
    let dir = tempfile::tempdir().unwrap();

    // A new instance is routed to within a second of registering.
    let started = Instant::now();
    let mut v3 = instance(&m.cp, dir.path(), "web", "v3", "web-v3", &[]).await;
    wait_endpoints(&m.client.sidecar, "web", 3).await;
    let joined = started.elapsed();
    assert!(joined < Duration::from_secs(3), "joined after {joined:?}");
    let c = client();
    let (status, name) = call(&c, &m.client.sidecar, "/", &[]).await;
    assert_eq!(status, 200, "{name}");

    // A clean stop removes it at once.
    v3.sidecar.proc.terminate();
    wait_endpoints(&m.client.sidecar, "web", 2).await;
    let _ = v3.app.terminate();

    // kill -9 of an instance (app and sidecar, no deregistration) under load costs the
    // caller at most a handful of errors, and the instance leaves the table.
    let sent = Arc::new(AtomicU32::new(0));
    let load = {
        let c = c.clone();
        let sent = sent.clone();
        let port = m.client.sidecar.outbound_port;
        tokio::spawn(async move {
            let mut errors = 0;
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let r = c
                    .get(format!("http://127.0.0.1:{port}/"))
                    .header("host", "web")
                    .send()
                    .await;
                if !r.is_ok_and(|r| r.status() == 200) {
                    errors += 1;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            errors
        })
    };
    // Kill only once traffic flows through both instances' connections.
    wait_until(SOON, || async { sent.load(Ordering::Relaxed) >= 100 })
        .await
        .expect("the load is running");
    m.v2.app.kill9();
    m.v2.sidecar.proc.kill9();
    let errors = load.await.unwrap();
    assert!(errors <= 5, "{errors} errors after kill -9");
    wait_endpoints(&m.client.sidecar, "web", 1).await;
}

#[tokio::test]
async fn retries_hide_an_instance_that_fails_half_its_requests() {
    let mut m = mesh(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let _bad = instance(&m.cp, dir.path(), "web", "v1", "web-v1-bad", &["--fail-rate", "0.5"]).await;
    wait_endpoints(&m.client.sidecar, "web", 3).await;
    put_routing(
        &m.cp,
        &mut m.client.sidecar,
        r#"{"routes":[{"name":"default","backends":[{"subset":"v1","weight":100}],
            "retries":{"attempts":2,"perTryTimeout":"1s","on":["5xx","connect-failure"]}}]}"#,
    )
    .await;
    let c = client();
    let mut errors = 0;
    for _ in 0..400 {
        let (status, _) = call(&c, &m.client.sidecar, "/", &[]).await;
        errors += usize::from(status != 200);
    }
    assert!(errors <= 4, "{errors} of 400 failed despite retries");

    // The caller's per-subset figures reach the control plane.
    let figures = wait_for_traffic(&m.cp, "web", |t| {
        t.iter()
            .any(|f| f["subset"] == "v1" && f["requests"].as_u64() >= Some(400))
    })
    .await;
    let v1 = figures.iter().find(|f| f["subset"] == "v1").expect("v1 figures");
    assert!(v1["successRate"].as_f64().unwrap() >= 0.99, "{figures:?}");
    let _ = (&m.v1.app, &m.v2.app);
}

/// The per-subset traffic figures in `GET /services/{service}`, once `ok` holds.
async fn wait_for_traffic(cp: &ControlPlane, service: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let path = format!("/services/{service}");
    let deadline = Instant::now() + SOON;
    loop {
        let v = cp.get_json(&path).await;
        match v["traffic"].as_array() {
            Some(t) if ok(t) => return t.clone(),
            _ if Instant::now() > deadline => panic!("no traffic figures: {v}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn a_routing_dry_run_names_the_callers_that_would_change() {
    let m = mesh(&[]).await;
    let r = client()
        .put(m.cp.api("/services/web/policies/routing?dryRun=true"))
        .header("content-type", "application/json")
        .body(r#"{"routes":[{"name":"d","backends":[{"subset":"v2","weight":100}]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let ids: Vec<&str> = v["sidecars"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(ids.contains(&"default/client-1"), "callers enforce routing: {ids:?}");
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(
        m.cp.get_json("/services/web").await["policies"]["routing"].is_null(),
        "nothing stored"
    );
    let _ = (&m.client, &m.v1, &m.v2);
}
