//! Canary releases with `outriderctl` against the real binaries: manual weights,
//! promote and abort, and automated rollouts that the control plane drives.

mod common;
use common::*;
use outrider_testkit::{bin_path, echo_with, free_port, wait_until, Proc};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Instance {
    _app: Proc,
    sidecar: Sidecar,
}

async fn instance(cp: &ControlPlane, dir: &Path, service: &str, version: &str, pod: &str, args: &[&str]) -> Instance {
    let port = free_port();
    let app = echo_with(port, pod, args);
    // Every instance declares `web` ahead, so none waits for a lookup (on-demand
    // discovery has its own tests in discovery.rs).
    let declared = [("OUTRIDER_DESTINATIONS", "web")];
    let sidecar = Sidecar::start_with(&cp.grpc(), service, pod, version, port, &dir.join(pod), &declared).await;
    Instance { _app: app, sidecar }
}

struct Mesh {
    cp: ControlPlane,
    _dir: tempfile::TempDir,
    client: Instance,
    _v1: Instance,
    _v2: Instance,
}

async fn mesh(v2_args: &[&str]) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let v1 = instance(&cp, dir.path(), "web", "v1", "web-v1", &[]).await;
    let v2 = instance(&cp, dir.path(), "web", "v2", "web-v2", v2_args).await;
    let client = instance(&cp, dir.path(), "client", "v1", "client-1", &[]).await;
    let caller = &client.sidecar;
    wait_until(SOON, || async {
        let d = caller.config_dump().await;
        d["destinations"]["services"]
            .as_array()
            .and_then(|s| s.iter().find(|x| x["service"] == "web"))
            .and_then(|w| w["endpoints"].as_array().map(|e| e.len() == 2))
            .unwrap_or(false)
    })
    .await
    .expect("the caller sees both web instances");
    Mesh {
        cp,
        _dir: dir,
        client,
        _v1: v1,
        _v2: v2,
    }
}

/// Share of `n` calls through the caller's outbound port that v2 answered.
async fn v2_share(caller: &Sidecar, n: usize) -> f64 {
    let c = client();
    let mut v2 = 0;
    for _ in 0..n {
        let r = c
            .get(format!("http://127.0.0.1:{}/", caller.outbound_port))
            .header("host", "web")
            .send()
            .await
            .unwrap();
        v2 += usize::from(r.headers().get("x-echo-name").is_some_and(|v| v == "web-v2"));
    }
    v2 as f64 / n as f64
}

/// Waits until the caller enforces the routing revision the CLI just wrote.
async fn caller_has_latest(m: &mut Mesh) {
    let rev = m.cp.get_json("/services/web").await["policies"]["routing"]["revision"]
        .as_u64()
        .unwrap();
    let started = Instant::now();
    m.client.sidecar.wait_revision(rev).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?} to reach the caller",
        started.elapsed()
    );
}

#[tokio::test]
async fn canary_set_promote_and_abort_take_effect_and_bad_weights_change_nothing() {
    let mut m = mesh(&[]).await;

    let (code, out, err) = ctl(
        &m.cp,
        &[
            "canary", "set", "web", "--subset", "v2", "--weight", "30", "--stable", "v1",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("v1 70%, v2 30%"), "{out}");
    caller_has_latest(&mut m).await;
    let share = v2_share(&m.client.sidecar, 300).await;
    assert!((0.2..=0.4).contains(&share), "v2 share {share}");

    // A weight of 150 fails with one clear line and changes nothing.
    let before = m.cp.get_json("/services/web/policies/routing").await;
    let (code, _, err) = ctl(&m.cp, &["canary", "set", "web", "--subset", "v2", "--weight", "150"]);
    assert_eq!(code, 1);
    assert!(err.contains("weight 150 is out of range"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(m.cp.get_json("/services/web/policies/routing").await, before);

    // Status shows the weights and per-subset figures.
    wait_until(SOON, || async {
        let (_, out, _) = ctl(&m.cp, &["canary", "status", "web"]);
        out.contains("v1 70%, v2 30%") && out.contains("SUCCESS") && out.contains("v2")
    })
    .await
    .expect("status shows weights and figures");
    let (_, json, _) = ctl(&m.cp, &["canary", "status", "web", "-o", "json"]);
    let status: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["weights"]["v2"], 30);

    let (code, out, err) = ctl(&m.cp, &["canary", "promote", "web"]);
    assert_eq!(code, 0, "{out}{err}");
    caller_has_latest(&mut m).await;
    assert_eq!(v2_share(&m.client.sidecar, 50).await, 1.0);

    // Abort after a promote restores 100% to the (new) stable subset; abort on a
    // half-way canary restores the old one.
    ctl(&m.cp, &["canary", "set", "web", "--subset", "v1", "--weight", "50"]);
    let (code, out, err) = ctl(&m.cp, &["canary", "abort", "web"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("v2 100%"), "{out}");
    caller_has_latest(&mut m).await;
    assert_eq!(v2_share(&m.client.sidecar, 50).await, 1.0);
}

/// Keeps calling web through the caller until dropped.
struct Load(Arc<AtomicBool>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn load(caller: &Sidecar) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let port = caller.outbound_port;
    tokio::spawn(async move {
        let c = client();
        while !flag.load(Ordering::Relaxed) {
            let _ = c
                .get(format!("http://127.0.0.1:{port}/"))
                .header("host", "web")
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    Load(stop)
}

/// `outriderctl canary run web --subset v2 --stable v1 ARGS…`, followed to its end.
async fn run_rollout_with(m: &Mesh, args: &[&str]) -> (i32, String, String) {
    let base = m.cp.base();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(bin_path("outriderctl"))
            .args([
                "--server", &base, "canary", "run", "web", "--subset", "v2", "--stable", "v1",
            ])
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

async fn run_rollout(m: &Mesh) -> (i32, String, String) {
    run_rollout_with(
        m,
        &["--steps", "20,50,100", "--interval", "1s", "--max-error-rate", "0.05"],
    )
    .await
}

/// The managed route's weights as stored, e.g. `[("v1", 100)]`.
async fn stored_weights(cp: &ControlPlane) -> Vec<(String, u64)> {
    let p = cp.get_json("/services/web/policies/routing").await;
    let routes = p["document"]["routes"].as_array().cloned().unwrap_or_default();
    routes
        .last()
        .and_then(|r| r["backends"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|b| (b["subset"].as_str().unwrap().to_owned(), b["weight"].as_u64().unwrap()))
        .collect()
}

/// Sends `n` requests to web through the caller.
async fn calls(caller: &Sidecar, n: usize) {
    let c = client();
    for _ in 0..n {
        let _ = c
            .get(format!("http://127.0.0.1:{}/", caller.outbound_port))
            .header("host", "web")
            .send()
            .await;
    }
}

#[tokio::test]
async fn an_automated_canary_of_a_failing_v2_rolls_back_by_itself() {
    let mut m = mesh(&["--fail-rate", "0.2"]).await;
    let _load = load(&m.client.sidecar);
    let (code, out, err) = run_rollout(&m).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("rolled-back"), "{err}");
    assert!(err.contains("error rate"), "the reason is given: {err}");
    let r = m.cp.get_json("/services/web/canary").await;
    assert_eq!(r["state"], "rolled-back", "{r}");
    caller_has_latest(&mut m).await;
    assert_eq!(v2_share(&m.client.sidecar, 50).await, 0.0, "100% back on v1");
}

#[tokio::test]
async fn an_automated_canary_of_a_healthy_v2_reaches_100_percent() {
    let mut m = mesh(&[]).await;
    let _load = load(&m.client.sidecar);
    let (code, out, err) = run_rollout(&m).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("running at step 1/3 (20% to v2)") && out.contains("s left;"),
        "progress is shown with the time left: {out}"
    );
    assert!(
        out.contains("success, p99") && out.contains("v2 ") && out.contains("requests,"),
        "per-step figures are shown: {out}"
    );
    let r = m.cp.get_json("/services/web/canary").await;
    assert_eq!(r["state"], "succeeded", "{r}");
    caller_has_latest(&mut m).await;
    assert_eq!(v2_share(&m.client.sidecar, 50).await, 1.0);
}

#[tokio::test]
async fn a_broken_v2_with_too_little_traffic_holds_then_rolls_back_and_is_never_promoted() {
    let m = mesh(&["--fail-rate", "1.0"]).await;
    let caller = m.client.sidecar.outbound_port;
    // A trickle: a few requests a second, far below the 20 a step needs.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let trickle = tokio::spawn(async move {
        let c = client();
        while !flag.load(Ordering::Relaxed) {
            for _ in 0..3 {
                let _ = c
                    .get(format!("http://127.0.0.1:{caller}/"))
                    .header("host", "web")
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let (code, out, err) = run_rollout_with(
        &m,
        &["--steps", "50,100", "--interval", "1s", "--max-hold-intervals", "2"],
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    trickle.await.unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("holding at step 1/2 (50% to v2)"),
        "it waited for traffic: {out}"
    );
    assert!(!out.contains("step 2/2"), "never stepped on: {out}");
    assert!(
        err.contains("rolled-back") && err.contains("not enough traffic"),
        "{err}"
    );
    let r = m.cp.get_json("/services/web/canary").await;
    assert_eq!(
        (r["state"].as_str(), r["step"].as_u64()),
        (Some("rolled-back"), Some(0)),
        "{r}"
    );
    assert!(r["figures"]["canary"]["requests"].as_u64().unwrap() < 20, "{r}");
    assert_eq!(stored_weights(&m.cp).await, [("v1".to_owned(), 100)]);
}

#[tokio::test]
async fn a_v2_that_breaks_after_a_long_healthy_history_rolls_back_on_the_steps_own_figures() {
    // v2 answers its first 400 requests well, then fails everything: by the time the
    // rollout starts its callers' totals are mostly successes while it fails them all.
    let mut m = mesh(&["--fail-rate", "1.0", "--fail-after", "400"]).await;
    let (code, out, err) = ctl(
        &m.cp,
        &[
            "canary", "set", "web", "--subset", "v2", "--weight", "50", "--stable", "v1",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    caller_has_latest(&mut m).await;
    calls(&m.client.sidecar, 1000).await;
    // Wait until the callers' totals show v2's long healthy history.
    wait_until(SOON, || async {
        let t = m.cp.get_json("/services/web").await["traffic"].clone();
        t.as_array()
            .and_then(|t| t.iter().find(|s| s["subset"] == "v2").cloned())
            .is_some_and(|v2| v2["requests"].as_u64().unwrap_or(0) >= 450)
    })
    .await
    .expect("v2's history is reported");
    let _load = load(&m.client.sidecar);
    let (code, out, err) = run_rollout_with(
        &m,
        &["--steps", "50,100", "--interval", "1s", "--max-error-rate", "0.1"],
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("rolled-back") && err.contains("error rate 100.0% of v2"),
        "{err}"
    );
    let r = m.cp.get_json("/services/web/canary").await;
    assert_eq!(
        r["figures"]["canary"]["successRate"], 0.0,
        "the step's own figures: {r}"
    );
    assert!(r["figures"]["canary"]["requests"].as_u64().unwrap() >= 20, "{r}");
    let t = m.cp.get_json("/services/web").await["traffic"].clone();
    let lifetime = t.as_array().unwrap().iter().find(|s| s["subset"] == "v2").unwrap()["successRate"]
        .as_f64()
        .unwrap();
    assert!(
        lifetime > 0.5,
        "the callers' totals still look healthy ({lifetime}); the step did not"
    );
    assert_eq!(stored_weights(&m.cp).await, [("v1".to_owned(), 100)]);
}

#[tokio::test]
async fn a_canary_worse_than_stable_by_more_than_the_margin_rolls_back_within_absolute_thresholds() {
    // 20% errors: within an absolute 50%, but 20 points below v1's 100%.
    let m = mesh(&["--fail-rate", "0.2"]).await;
    let _load = load(&m.client.sidecar);
    let (code, out, err) = run_rollout_with(
        &m,
        &[
            "--steps",
            "50,100",
            "--interval",
            "1s",
            "--max-error-rate",
            "0.5",
            "--max-success-rate-drop",
            "0.05",
        ],
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("rolled-back") && err.contains("below v1's"), "{err}");
    assert_eq!(stored_weights(&m.cp).await, [("v1".to_owned(), 100)]);
}

#[tokio::test]
async fn canary_writes_to_a_subset_without_healthy_instances_are_refused_and_change_nothing() {
    let m = mesh(&[]).await;
    let (code, _, _) = ctl(
        &m.cp,
        &[
            "canary", "set", "web", "--subset", "v2", "--weight", "10", "--stable", "v1",
        ],
    );
    assert_eq!(code, 0);
    let before = m.cp.get_json("/services/web/policies/routing").await;

    let (code, _, err) = ctl(&m.cp, &["canary", "set", "web", "--subset", "v3", "--weight", "100"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("\"v3\" of web has no healthy instance"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = ctl(
        &m.cp,
        &[
            "canary",
            "run",
            "web",
            "--subset",
            "v3",
            "--steps",
            "10,100",
            "--interval",
            "1s",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no healthy instance"), "{err}");
    assert_eq!(
        m.cp.get_json("/services/web/policies/routing").await,
        before,
        "nothing written"
    );
    let r = client().get(m.cp.api("/services/web/canary")).send().await.unwrap();
    assert_eq!(r.status(), 404, "no rollout was stored");

    // A 0% canary needs no instance, but promoting it does.
    let (code, _, err) = ctl(
        &m.cp,
        &[
            "canary", "set", "web", "--subset", "v3", "--weight", "0", "--stable", "v1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let before = m.cp.get_json("/services/web/policies/routing").await;
    let (code, _, err) = ctl(&m.cp, &["canary", "promote", "web"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no healthy instance"), "{err}");
    assert_eq!(m.cp.get_json("/services/web/policies/routing").await, before);
}

#[tokio::test]
async fn manual_edits_while_a_rollout_drives_the_service_get_409_until_it_is_aborted() {
    let m = mesh(&[]).await;
    let (code, out, err) = ctl(
        &m.cp,
        &[
            "canary",
            "run",
            "web",
            "--subset",
            "v2",
            "--stable",
            "v1",
            "--steps",
            "10,100",
            "--interval",
            "1h",
            "--detach",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    wait_until(SOON, || async {
        stored_weights(&m.cp).await.contains(&("v2".to_owned(), 10))
    })
    .await
    .expect("the first step is set");

    for args in [
        &["canary", "set", "web", "--subset", "v2", "--weight", "100"][..],
        &["canary", "promote", "web"][..],
    ] {
        let (code, _, err) = ctl(&m.cp, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("driven by a canary rollout of v2"), "{args:?}: {err}");
    }
    let moved = r#"{"routes":[{"name":"default","match":{"pathPrefix":"/"},
        "backends":[{"subset":"v1","weight":0},{"subset":"v2","weight":100}]}]}"#;
    let (status, body) = m.cp.put_policy("web", "routing", moved).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("step 1/2 at 10%"), "{body}");
    assert!(
        stored_weights(&m.cp).await.contains(&("v2".to_owned(), 10)),
        "the rollout's weights stand"
    );

    let (code, out, err) = ctl(&m.cp, &["canary", "abort", "web"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(m.cp.get_json("/services/web/canary").await["state"], "aborted");
    let (status, body) = m.cp.put_policy("web", "routing", moved).await;
    assert_eq!(status, 200, "an ended rollout drives nothing: {body}");
}
