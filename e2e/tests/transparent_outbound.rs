//! Transparent outbound with the real binaries: traffic for no mesh service under
//! `OUTRIDER_OUTBOUND_POLICY` (`allow-any`, `registry-only`), sent to the outbound
//! port explicitly, and — as root, in a network namespace of its own with a nat
//! OUTPUT REDIRECT rule for every UID but the sidecar's — redirected from an
//! unmodified client (curl): mesh names routed with their RoutingPolicy, unknown
//! hosts and opaque TCP passed through untouched or refused, and the sidecar's own
//! connections never looped back to it.
//!
//! The namespace is `ort13o-<pid>` on 10.214.0.0/24 (10.214.0.1 and .3 are the host
//! side of its veth pair, 10.214.0.2 the namespace's); nothing else's iptables are
//! touched.

mod common;
use axum::extract::State;
use axum::http::HeaderMap;
use common::*;
use outrider_testkit::{bin_path, echo_with, free_port, wait_for_http_ok, wait_until, Proc};
use serde_json::Value;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the stand-in for the internet saw: how many requests, and their `Host`s.
type Seen = (Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>);

/// "The internet": answers every request with the `Host` it saw and counts them.
struct Outside {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    hosts: Arc<Mutex<Vec<String>>>,
}

async fn outside(ip: IpAddr) -> Outside {
    let hits = Arc::new(AtomicUsize::new(0));
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let seen = (Arc::clone(&hits), Arc::clone(&hosts));
    let app = axum::Router::new()
        .fallback(|State((hits, hosts)): State<Seen>, headers: HeaderMap| async move {
            hits.fetch_add(1, Ordering::SeqCst);
            let host = headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            hosts.lock().unwrap().push(host.clone());
            format!("outside saw {host}")
        })
        .with_state(seen);
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Outside { addr, hits, hosts }
}

/// A TCP service that is not HTTP: echoes one line back, then closes.
async fn line_echo(ip: IpAddr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_ok() {
                    let _ = write.write_all(format!("echo: {line}").as_bytes()).await;
                }
            });
        }
    });
    addr
}

/// This machine's first IPv4 address that is not loopback, if it has one.
fn non_loopback_ipv4() -> Option<IpAddr> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut words = l.split_whitespace();
        words.find(|w| *w == "inet")?;
        words.next()?.split('/').next()?.parse().ok()
    })
}

/// `GET path` sent to a sidecar's outbound port with `Host: host`.
async fn via_outbound(sidecar: &Sidecar, path: &str, host: &str) -> reqwest::Response {
    client()
        .get(format!("http://127.0.0.1:{}{path}", sidecar.outbound_port))
        .header("host", host)
        .send()
        .await
        .unwrap()
}

async fn problem_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    assert_eq!(
        r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()),
        Some("application/problem+json".to_owned())
    );
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn explicit_requests_for_unknown_hosts_are_forwarded_under_allow_any_and_refused_under_registry_only() {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("skipped: this machine has no non-loopback IPv4 address to stand in for the internet");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let outside = outside(ip).await;
    let app_port = free_port();
    let _app = echo_with(app_port, "client-app", &[]);
    let open = Sidecar::start(&cp.grpc(), "client", "client-1", app_port, &dir.path().join("open")).await;
    let closed = Sidecar::start_with(
        &cp.grpc(),
        "client",
        "client-2",
        "v1",
        app_port,
        &dir.path().join("closed"),
        &[("OUTRIDER_OUTBOUND_POLICY", "registry-only")],
    )
    .await;
    let target = outside.addr.to_string();

    // Host form and absolute form (an HTTP_PROXY client) both reach the host.
    let r = via_outbound(&open, "/a", &target).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), format!("outside saw {target}"));
    let via_proxy = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://127.0.0.1:{}", open.outbound_port)).unwrap())
        .build()
        .unwrap();
    let r = via_proxy.get(format!("http://{target}/b")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(outside.hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        open.metric("outrider_outbound_passthrough_total{kind=\"http\"}").await,
        2
    );

    // Never a relay to what only loopback reaches: the control plane's API, the
    // sidecar's own admin port.
    for host in [
        format!("127.0.0.1:{}", cp.http_port),
        format!("localhost:{}", open.admin_port),
    ] {
        let r = via_outbound(&open, "/api/v1/services", &host).await;
        let (status, problem) = problem_of(r).await;
        assert_eq!(status, 403, "{host}: {problem}");
        assert_eq!(problem["host"], host.as_str());
    }

    // registry-only: 502 naming the host, and the host never hears of it.
    let r = via_outbound(&closed, "/c", &target).await;
    let (status, problem) = problem_of(r).await;
    assert_eq!(
        (status, problem["host"].as_str()),
        (502, Some(target.as_str())),
        "{problem}"
    );
    assert_eq!(outside.hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        closed
            .metric("outrider_outbound_passthrough_refused_total{kind=\"http\",reason=\"registry-only\"}")
            .await,
        1
    );
}

/// Runs a command to completion; its output.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> Result<(), String> {
    let out = run(program, args);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The UID the sidecar runs as in the namespace (the injector's default).
const PROXY_UID: u32 = 2102;
const HOST_IP: &str = "10.214.0.1";
const NS_IP: &str = "10.214.0.2";
/// Also on the host side, for what is outside the mesh: an address no mesh instance
/// has (an address a mesh instance has is a call to its service, whatever the port).
const OUTSIDE_IP: &str = "10.214.0.3";

/// One network namespace joined to this one by a veth pair; removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Result<Self, String> {
        // Left over by an earlier run that was killed: ours by name.
        let list = run("ip", &["netns", "list"]);
        for stale in String::from_utf8_lossy(&list.stdout).lines() {
            if let Some(name) = stale.split_whitespace().next().filter(|n| n.starts_with("ort13o-")) {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
        let tag = std::process::id() % 100_000;
        let ns = Netns {
            name: format!("ort13o-{tag}"),
        };
        let (host_if, ns_if) = (format!("ort13o-h{tag}"), format!("ort13o-n{tag}"));
        run_ok("ip", &["netns", "add", &ns.name])?;
        run_ok("ip", &["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if])?;
        run_ok("ip", &["link", "set", &ns_if, "netns", &ns.name])?;
        run_ok("ip", &["addr", "add", &format!("{HOST_IP}/24"), "dev", &host_if])?;
        run_ok("ip", &["addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", &host_if])?;
        run_ok("ip", &["link", "set", &host_if, "up"])?;
        ns.exec_ok(&["ip", "addr", "add", &format!("{NS_IP}/24"), "dev", &ns_if])?;
        ns.exec_ok(&["ip", "link", "set", &ns_if, "up"])?;
        ns.exec_ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn exec_ok(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }

    /// What `outrider-sidecar init` does for outbound traffic, reduced to the rules
    /// this test needs: TCP from every UID but the proxy's, loopback excluded, to
    /// the outbound port.
    fn redirect_outbound(&self, port: u16) -> Result<(), String> {
        let uid = PROXY_UID.to_string();
        let port = port.to_string();
        for rule in [
            &["-d", "127.0.0.0/8", "-j", "RETURN"][..],
            &["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"],
            &["-j", "REDIRECT", "--to-ports", &port],
        ] {
            let mut args = vec!["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp"];
            args.extend_from_slice(rule);
            self.exec_ok(&args)?;
        }
        Ok(())
    }

    /// curl inside the namespace, as root (so captured); (status, body).
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let mut all = vec!["curl", "-sS", "-m", "10", "-w", "\n%{http_code}"];
        all.extend_from_slice(args);
        let out = self.exec(&all);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code = code.trim().parse().unwrap_or(0);
        if code == 0 {
            // No answer: what curl said instead.
            return (0, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        (code, body.to_owned())
    }

    /// A line sent over raw TCP from inside the namespace (curl's telnet client);
    /// what came back before the connection closed.
    fn tcp_line(&self, to: SocketAddr, line: &str) -> String {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "curl",
                "-s",
                "-m",
                "5",
                &format!("telnet://{to}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(line.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The outbound sidecar inside the namespace, as [`PROXY_UID`].
    fn sidecar(&self, cp: &ControlPlane, state: &Path, policy: &str) -> Proc {
        let grpc = format!("http://{HOST_IP}:{}", cp.grpc_port);
        let admin = format!("{NS_IP}:15000");
        let state_dir = state.display().to_string();
        let config_dir = state.join("config").display().to_string();
        let uid = format!("--reuid={PROXY_UID}");
        let gid = format!("--regid={PROXY_UID}");
        let sidecar = bin_path("outrider-sidecar");
        let sidecar = sidecar.to_str().unwrap();
        Proc::spawn(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "setpriv",
                &uid,
                &gid,
                "--clear-groups",
                sidecar,
            ],
            &[
                ("OUTRIDER_CONTROL_PLANE", grpc.as_str()),
                ("OUTRIDER_SERVICE", "client"),
                ("OUTRIDER_POD_NAME", "client-1"),
                ("OUTRIDER_POD_IP", NS_IP),
                ("OUTRIDER_APP_PORT", "8080"),
                ("OUTRIDER_ADMIN_ADDR", admin.as_str()),
                ("OUTRIDER_STATE_DIR", state_dir.as_str()),
                ("OUTRIDER_CONFIG_DIR", config_dir.as_str()),
                ("OUTRIDER_OUTBOUND_POLICY", policy),
                ("OUTRIDER_LOG", "info"),
            ],
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Why the redirected test cannot run here, if it cannot.
fn cannot_capture() -> Option<String> {
    let uid = run("id", &["-u"]);
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root (network namespaces and iptables need it)".into());
    }
    for tool in ["ip", "iptables", "setpriv", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

async fn metric(text_url: &str, name: &str) -> u64 {
    get_text(text_url)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

// Multi-threaded: curl runs as a blocking child process while this runtime serves
// the stand-ins for the outside world.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirected_connections_reach_mesh_names_with_their_policy_and_everything_else_passes_or_is_refused() {
    if let Some(why) = cannot_capture() {
        eprintln!("skipped: {why}");
        return;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("skipped: cannot make a network namespace here: {e}");
            return;
        }
    };
    if let Err(e) = ns.redirect_outbound(15001) {
        eprintln!("skipped: the kernel refuses the nat REDIRECT rule: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_on(HOST_IP, &dir.path().join("cp"), None, Vec::new()).await;

    // web v1 and v2 on this side, reachable from the namespace at 10.214.0.1.
    let mut webs = Vec::new();
    for subset in ["v1", "v2"] {
        let app_port = free_port();
        let app = echo_with(app_port, &format!("web-{subset}"), &[]);
        let inbound = format!("{HOST_IP}:{}", free_port());
        let sidecar = Sidecar::start_with(
            &cp.grpc(),
            "web",
            &format!("web-{subset}"),
            subset,
            app_port,
            &dir.path().join(format!("web-{subset}")),
            &[("OUTRIDER_POD_IP", HOST_IP), ("OUTRIDER_INBOUND_ADDR", &inbound)],
        )
        .await;
        webs.push((app, sidecar));
    }
    let canary = r#"{"routes":[{"name":"canary","match":{"pathPrefix":"/"},
        "backends":[{"subset":"v1","weight":0},{"subset":"v2","weight":100}]}]}"#;
    assert_eq!(cp.put_policy("web", "routing", canary).await.0, 200);
    for (_, s) in &webs {
        wait_until(SOON, || async {
            cp.sidecar_status(&s.id()).await.as_deref() == Some("healthy")
        })
        .await
        .expect("web instances healthy");
    }

    let outside = outside(OUTSIDE_IP.parse().unwrap()).await;
    let echo = line_echo(OUTSIDE_IP.parse().unwrap()).await;
    let state = dir.path().join("client");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let admin = format!("http://{NS_IP}:15000");
    let metrics = format!("{admin}/metrics");

    for policy in ["allow-any", "registry-only"] {
        let mut sidecar = ns.sidecar(&cp, &state, policy);
        if let Err(e) = wait_for_http_ok(&format!("{admin}/healthz"), SOON).await {
            sidecar.print_log_tail(40);
            panic!("sidecar in the namespace did not come up: {e}");
        }
        wait_until(SOON, || async {
            metric(&metrics, "outrider_sidecar_control_plane_connected").await == 1
        })
        .await
        .expect("the sidecar's own connection to the control plane is not captured");

        // An unmodified client calls the mesh name at an address nobody has: it is
        // routed by Host, with web's RoutingPolicy (every request to v2).
        let resolve = "web.default.svc.cluster.local:80:10.214.0.9";
        for _ in 0..5 {
            let (status, body) = ns.curl(&["--resolve", resolve, "http://web.default.svc.cluster.local/x"]);
            assert_eq!(status, 200, "{policy}: {body}\n{}", sidecar.log_tail(30));
            let doc: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(doc["name"], "web-v2", "{policy}: {doc}");
        }

        let before = outside.hits.load(Ordering::SeqCst);
        let (status, body) = ns.curl(&[
            "-H",
            "host: api.example.test",
            &format!("http://{}/hello", outside.addr),
        ]);
        let line = ns.tcp_line(echo, "ping-opaque\n");
        if policy == "allow-any" {
            // Untouched: its own Host, to where it was going, once (no loop).
            assert_eq!(
                (status, body.as_str()),
                (200, "outside saw api.example.test"),
                "{policy}\n{}",
                sidecar.log_tail(20)
            );
            assert_eq!(outside.hits.load(Ordering::SeqCst), before + 1);
            assert_eq!(line, "echo: ping-opaque\n");
            assert_eq!(
                metric(&metrics, "outrider_outbound_passthrough_total{kind=\"tcp\"}").await,
                1
            );
            assert_eq!(
                metric(&metrics, "outrider_outbound_passthrough_total{kind=\"http\"}").await,
                1
            );
        } else {
            assert_eq!(status, 502, "{policy}: {body}");
            let problem: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(problem["host"], "api.example.test", "{problem}");
            assert_eq!(
                outside.hits.load(Ordering::SeqCst),
                before,
                "registry-only never reaches it"
            );
            assert_eq!(line, "", "an opaque connection is closed");
            assert_eq!(
                metric(
                    &metrics,
                    "outrider_outbound_passthrough_refused_total{kind=\"tcp\",reason=\"registry-only\"}"
                )
                .await,
                1
            );
        }
        sidecar.terminate();
    }
    assert_eq!(*outside.hosts.lock().unwrap(), ["api.example.test"]);
}
