//! Traffic capture in Pods: network namespaces on a bridge (`common::pods`), each with
//! an app, `outrider-sidecar init`'s iptables rules and a sidecar running as the
//! proxy UID, like a Kubernetes Pod with an injected sidecar. The control plane runs
//! on the host, reached over the bridge.
//!
//! Skipped, saying why, without root or without `ip`, `iptables`, `setpriv`, `curl`
//! (`.ci/run` installs iptables).

mod common;

use common::pods::{unavailable, Network, Pod, GATEWAY};
use common::{ControlPlane, SOON};
use outrider_testkit::{bin_path, wait_for, Proc};
use serde_json::Value;
use std::sync::Arc;

/// The proxy UID (the injector's default): its own traffic is never captured.
const PROXY_UID: u32 = 2102;
const TOKEN: &str = "capture-e2e-registration";

fn skip() -> bool {
    match unavailable() {
        Some(reason) => {
            eprintln!("skipping: {reason}");
            true
        }
        None => false,
    }
}

/// The host's side of a mesh of Pods: the bridge, and a control plane on the
/// bridge's address (so Pods reach it; with a registration token, since that is
/// not loopback). `None` when Pods cannot be made here (the test is skipped).
struct Host {
    cp: ControlPlane,
    network: Arc<Network>,
    _dir: tempfile::TempDir,
}

async fn host() -> Option<Host> {
    if skip() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    // First: the control plane listens on the bridge.
    let network = Network::shared();
    let cp = ControlPlane::start_on(
        GATEWAY,
        dir.path(),
        None,
        vec![("OUTRIDER_REGISTRATION_TOKEN".into(), TOKEN.into())],
    )
    .await;
    Some(Host { cp, network, _dir: dir })
}

/// A Pod with an app and, when asked, the capture rules and a sidecar. Fields drop
/// in order: the processes before their namespace.
struct MeshPod {
    procs: Vec<Proc>,
    pod: Pod,
    _state: tempfile::TempDir,
}

impl MeshPod {
    /// `apps`: `outrider-echo` argument lists, each one app process.
    fn apps(network: &Arc<Network>, name: &str, apps: &[&[&str]]) -> MeshPod {
        let pod = Pod::new(network, name);
        let procs = apps
            .iter()
            .map(|args| pod.spawn(None, &bin_path("outrider-echo"), args, &[]))
            .collect();
        MeshPod {
            procs,
            pod,
            _state: tempfile::tempdir().unwrap(),
        }
    }

    /// `init` (the init container: root), then the sidecar as [`PROXY_UID`].
    async fn with_sidecar(mut self, cp: &ControlPlane, service: &str, extra: &[(&str, &str)]) -> MeshPod {
        let init = self.pod.exec(
            &bin_path("outrider-sidecar").display().to_string(),
            &["init", "--proxy-uid", &PROXY_UID.to_string()],
        );
        assert!(init.status.success(), "init: {}", String::from_utf8_lossy(&init.stderr));
        let state = self._state.path().display().to_string();
        let chown = std::process::Command::new("chown")
            .args(["-R", &format!("{PROXY_UID}:{PROXY_UID}"), &state])
            .status()
            .unwrap();
        assert!(chown.success());
        let grpc = cp.grpc();
        let pod_name = format!("{}-1", self.pod.name);
        let config = format!("{state}/config");
        let mut env = vec![
            ("OUTRIDER_CONTROL_PLANE", grpc.as_str()),
            ("OUTRIDER_SERVICE", service),
            ("OUTRIDER_POD_NAME", pod_name.as_str()),
            ("OUTRIDER_POD_IP", self.pod.ip.as_str()),
            ("OUTRIDER_APP_PORT", "8080"),
            ("OUTRIDER_STATE_DIR", state.as_str()),
            ("OUTRIDER_CONFIG_DIR", config.as_str()),
            ("OUTRIDER_TOKEN", TOKEN),
            ("OUTRIDER_LOG", "info"),
        ];
        env.extend_from_slice(extra);
        // Every listener at its default: the Pod is a host of its own.
        let sidecar = self
            .pod
            .spawn(Some(PROXY_UID), &bin_path("outrider-sidecar"), &[], &env);
        self.procs.push(sidecar);
        let ready = format!("http://{}:15020/readyz", self.pod.ip);
        if let Err(e) = outrider_testkit::wait_for_http_ok(&ready, SOON).await {
            self.print_logs();
            panic!("sidecar of {} not ready: {e}", self.pod.name);
        }
        self
    }

    fn print_logs(&self) {
        for p in &self.procs {
            p.print_log_tail(30);
        }
    }

    fn sidecar_log(&self) -> String {
        self.procs.last().map(Proc::log).unwrap_or_default()
    }
}

fn echo_json(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A sample of `/metrics` (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_ports_are_reached_only_through_its_sidecar() {
    let Some(Host { cp, network, _dir }) = host().await else {
        return;
    };
    let web = MeshPod::apps(
        &network,
        "web",
        &[
            &[
                "--listen",
                "0.0.0.0:8080",
                "--name",
                "web-app",
                "--tcp-listen",
                "0.0.0.0:9000",
            ],
            // A second port, and a server-first TCP protocol (it greets, then echoes).
            &[
                "--listen",
                "0.0.0.0:8081",
                "--name",
                "web-admin",
                "--tcp-listen",
                "0.0.0.0:9001",
                "--tcp-greeting",
                "220 ready",
            ],
        ],
    )
    .with_sidecar(&cp, "web", &[])
    .await;
    let client = Pod::new(&network, "client");
    let at = |port: u16| format!("http://{}:{port}", web.pod.ip);

    // The kubelet's view: probes from outside the Pod reach the health port.
    assert_eq!(client.curl(&format!("{}/livez", at(15020)), &[]).0, 200);
    assert_eq!(client.curl(&format!("{}/readyz", at(15020)), &[]).0, 200);

    // The app port, called as if nothing were in between, is answered through the
    // sidecar: the inbound added `Via` both ways and the caller's address.
    let (status, response) = client.curl(&format!("{}/?headers=1", at(8080)), &[]);
    assert_eq!(status, 200, "{response}");
    assert_eq!(echo_json(&response)["name"], "web-app", "{response}");
    assert_eq!(header(&response, "via"), Some("1.1 outrider"), "{response}");
    let seen = &echo_json(&response)["headers"];
    assert_eq!(seen["x-forwarded-for"], client.ip.as_str(), "{response}");
    assert_eq!(seen["via"], "1.1 outrider", "{response}");

    // Another port of the Pod reaches the app on that port, not OUTRIDER_APP_PORT.
    let (status, response) = client.curl(&at(8081), &[]);
    assert_eq!(
        (status, echo_json(&response)["name"].clone()),
        (200, "web-admin".into()),
        "{response}"
    );
    assert_eq!(header(&response, "via"), Some("1.1 outrider"), "{response}");

    // The inbound port itself, called directly, still serves the app port.
    let (status, response) = client.curl(&at(15006), &[]);
    assert_eq!(
        (status, echo_json(&response)["name"].clone()),
        (200, "web-app".into()),
        "{response}"
    );

    let metrics = client.curl(&format!("{}/metrics", at(15020)), &[]).1;
    assert!(
        metric(&metrics, "outrider_sidecar_requests_total{class=\"2xx\"}") >= 3.0,
        "the inbound counted them: {metrics}"
    );

    // Opaque TCP, client-first and server-first, passes through untouched.
    let target = |port: u16| format!("{}:{port}", web.pod.ip);
    assert_eq!(client.tcp(&target(9000), "not http\n"), "not http\n");
    assert_eq!(client.tcp(&target(9001), ""), "220 ready\n");
    assert_eq!(client.tcp(&target(9001), "x"), "220 ready\nx");

    // Each of those five connections to an app port was redirected; the probes
    // (15020) and the direct call (15006) were not.
    assert_eq!(web.pod.nat_packets("-A OUTRIDER_IN_REDIRECT "), 5);

    // Strict mTLS: nothing plaintext reaches the app any more, on any port.
    let (status, body) = cp.put_policy("web", "authorization", r#"{"mtls": "strict"}"#).await;
    assert_eq!(status, 200, "{body}");
    let refused = wait_for(SOON, || async {
        match client.curl(&at(8080), &[]) {
            (403, response) => Ok(response),
            other => Err(anyhow::anyhow!("still {other:?}")),
        }
    })
    .await
    .unwrap();
    assert!(refused.contains("\"rule\":\"mtls\""), "{refused}");
    assert_eq!(client.curl(&at(8081), &[]).0, 403);
    assert_eq!(client.tcp(&target(9000), "not http\n"), "", "closed, never echoed");
    assert_eq!(client.tcp(&target(9001), ""), "", "closed before the app could greet");
    let metrics = client.curl(&format!("{}/metrics", at(15020)), &[]).1;
    assert!(
        metric(&metrics, "outrider_authz_denied_total{dry_run=\"false\",rule=\"mtls\"}") >= 4.0,
        "{metrics}"
    );
    // The health port is not the app's: probes still answer.
    assert_eq!(client.curl(&format!("{}/readyz", at(15020)), &[]).0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecars_own_traffic_leaves_and_the_apps_is_captured_outbound() {
    let Some(Host { cp, network, _dir }) = host().await else {
        return;
    };
    let back = MeshPod::apps(&network, "back", &[&["--listen", "0.0.0.0:8080", "--name", "back-app"]])
        .with_sidecar(&cp, "back", &[])
        .await;
    let front = MeshPod::apps(
        &network,
        "front",
        &[&["--listen", "0.0.0.0:8080", "--name", "front-app"]],
    )
    .with_sidecar(&cp, "front", &[("OUTRIDER_DESTINATIONS", "back")])
    .await;

    // Its control stream left the Pod: registered, and healthy while it reports.
    let registered = wait_for(SOON, || async {
        match cp.sidecar_status("default/front-1").await.as_deref() {
            Some("healthy") => Ok(()),
            other => Err(anyhow::anyhow!("front-1 is {other:?}")),
        }
    })
    .await;
    if let Err(e) = registered {
        front.print_logs();
        panic!("{e}");
    }

    // The app calls through its outbound port explicitly: the sidecar's call to
    // back's Pod leaves (its UID is not captured, so it does not come back to it).
    let call = wait_for(SOON, || async {
        match front.pod.curl("http://127.0.0.1:15001/", &["-H", "Host: back"]) {
            (200, response) => Ok(response),
            other => Err(anyhow::anyhow!("still {other:?}")),
        }
    })
    .await;
    let response = match call {
        Ok(r) => r,
        Err(e) => {
            front.print_logs();
            panic!("{e}");
        }
    };
    assert_eq!(echo_json(&response)["name"], "back-app", "{response}");

    // The sidecar's own calls went out uncaptured, the app's call to its own
    // outbound port too (loopback).
    const REDIRECT: &str = "-A OUTRIDER_REDIRECT ";
    assert_eq!(front.pod.nat_packets(REDIRECT), 0);

    // The app calling another Pod directly is captured: the connection is
    // redirected, and answered by what listens on the outbound port (the only
    // listener it can reach), whatever the outbound makes of it.
    let (status, response) = front.pod.curl(&format!("http://{}:8080/", back.pod.ip), &[]);
    assert_eq!(front.pod.nat_packets(REDIRECT), 1, "one connection captured");
    assert_ne!(status, 0, "the outbound port did not answer: {response}");
    assert!(!front.sidecar_log().contains("panicked"), "{}", front.sidecar_log());
}

#[tokio::test]
async fn init_twice_is_init_once_and_uninstall_restores_the_table() {
    if skip() {
        return;
    }
    let network = Network::shared();
    let pod = Pod::new(&network, "rules");
    let sidecar = bin_path("outrider-sidecar").display().to_string();
    let init = |extra: &[&str]| {
        let mut args = vec![
            "init",
            "--proxy-uid",
            "2102",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12",
        ];
        args.extend_from_slice(extra);
        let out = pod.exec(&sidecar, &args);
        assert!(
            out.status.success(),
            "init {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = pod.nat_rules();

    let printed = init(&["--dry-run"]);
    assert!(
        printed.contains("-A OUTRIDER_REDIRECT -p tcp -j REDIRECT --to-ports 15001"),
        "{printed}"
    );
    assert_eq!(pod.nat_rules(), before, "a dry run changes nothing");

    init(&[]);
    let once = pod.nat_rules();
    for line in [
        "-A PREROUTING -p tcp -j OUTRIDER_INBOUND",
        "-A OUTPUT -p tcp -j OUTRIDER_OUTPUT",
        "-A OUTRIDER_OUTPUT -m owner --uid-owner 2102 -j RETURN",
        "-A OUTRIDER_OUTPUT -d 10.96.0.0/12 -j RETURN",
        "-A OUTRIDER_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
    ] {
        assert!(once.lines().any(|l| l == line), "{line} missing from {once}");
    }
    init(&[]);
    assert_eq!(pod.nat_rules(), once, "a second init replaces, never doubles");

    init(&["--uninstall"]);
    assert_eq!(pod.nat_rules(), before, "uninstall removes exactly what init added");
    init(&["--uninstall"]);
    assert_eq!(pod.nat_rules(), before, "and again is a no-op");

    // Without the rights to change the table: one line, a non-zero exit.
    let uid = PROXY_UID.to_string();
    let out = pod.exec(
        "setpriv",
        &[
            &format!("--reuid={uid}"),
            "--clear-groups",
            "--",
            &sidecar,
            "init",
            "--proxy-uid",
            &uid,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
