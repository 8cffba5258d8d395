//! Shared harness: real control-plane and sidecar processes on free ports.
#![allow(dead_code)]

pub mod pods;

use outrider_testkit::{bin_path, echo, free_port, wait_for_http_ok, wait_until, Proc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Generous deadline for things that take milliseconds when the machine is idle; CI
/// runs many tests side by side on two cores.
pub const SOON: Duration = Duration::from_secs(10);

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The body of `GET url` as text (a metrics page, say).
pub async fn get_text(url: &str) -> String {
    client().get(url).send().await.unwrap().text().await.unwrap()
}

/// An executable (`python`, `kubernetes-validate`, …) of the pinned test clients'
/// virtualenv, which `.ci/run` makes under `target/pyclients` (`OUTRIDER_TEST_PYTHON`
/// names its `python`). `None` when it is missing, which CI never allows.
pub fn pyclient(name: &str) -> Option<PathBuf> {
    let python = std::env::var_os("OUTRIDER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyclients/bin/python"));
    let found = python.with_file_name(name);
    if found.exists() {
        return Some(found);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have the Python test clients ({} is missing; .ci/run makes target/pyclients)",
        found.display()
    );
    None
}

/// The Python of the virtualenv `.ci/run` makes (`OUTRIDER_TEST_PYTHON`, else
/// `target/pyclients/bin/python`), or `None` outside CI, where a test that needs it
/// skips. Under CI it must be there.
pub fn test_python() -> Option<PathBuf> {
    let found = pyclient("python");
    if found.is_none() {
        eprintln!("skipped: no Python test clients (run the virtualenv step of .ci/run)");
    }
    found
}

/// The trust bundle `outrider-control-plane ca bundle` prints for the store in
/// `data_dir` (safe while a control plane runs on it), written to `out`.
pub fn ca_bundle(data_dir: &Path, out: &Path) -> String {
    let run = std::process::Command::new(bin_path("outrider-control-plane"))
        .args(["--data-dir", &data_dir.display().to_string(), "ca", "bundle"])
        .env_remove("OUTRIDER_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "ca bundle: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let pem = String::from_utf8(run.stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    std::fs::write(out, &pem).unwrap();
    pem
}

/// An https client that trusts the certificates in `ca_pem` only; `resolve` pins a
/// host name to an address (a name the certificate is for, on a loopback port).
pub fn tls_client(ca_pem: &[u8], resolve: Option<(&str, std::net::SocketAddr)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10));
    for ca in reqwest::Certificate::from_pem_bundle(ca_pem).unwrap() {
        builder = builder.add_root_certificate(ca);
    }
    if let Some((host, addr)) = resolve {
        builder = builder.resolve(host, addr);
    }
    builder.build().unwrap()
}

/// Runs `outriderctl` with `args` (and `stdin`, when given), without the caller's
/// `OUTRIDER_SERVER` and `OUTRIDER_CA_FILE`; returns (success, stdout, stderr).
pub fn outriderctl(args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = std::process::Command::new(bin_path("outriderctl"))
        .args(args)
        .env_remove("OUTRIDER_CA_FILE")
        .env_remove("OUTRIDER_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub struct ControlPlane {
    pub proc: Proc,
    pub grpc_port: u16,
    pub http_port: u16,
    /// The address the gRPC port listens on (loopback unless told otherwise).
    pub grpc_host: String,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub extra_env: Vec<(String, String)>,
}

impl ControlPlane {
    /// On the embedded store in `data_dir`.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, None, Vec::new()).await
    }

    pub async fn start_with(data_dir: &Path, database_url: Option<&str>, extra_env: Vec<(String, String)>) -> Self {
        Self::start_on("127.0.0.1", data_dir, database_url, extra_env).await
    }

    /// With the gRPC port on `grpc_host` (a bridge address sidecars in other network
    /// namespaces reach; the REST API stays on loopback).
    pub async fn start_on(
        grpc_host: &str,
        data_dir: &Path,
        database_url: Option<&str>,
        extra_env: Vec<(String, String)>,
    ) -> Self {
        let grpc_port = free_port();
        let http_port = free_port();
        let mut cp = Self {
            proc: spawn_cp(grpc_host, grpc_port, http_port, data_dir, database_url, &extra_env),
            grpc_port,
            http_port,
            grpc_host: grpc_host.to_owned(),
            data_dir: data_dir.to_owned(),
            database_url: database_url.map(str::to_owned),
            extra_env,
        };
        cp.wait_ready().await;
        cp
    }

    async fn wait_ready(&mut self) {
        if let Err(e) = wait_for_http_ok(&format!("{}/readyz", self.base()), SOON).await {
            self.proc.print_log_tail(50);
            panic!("control plane not ready: {e}");
        }
    }

    /// Starts again on the same ports and store.
    pub async fn restart(&mut self) {
        self.proc = spawn_cp(
            &self.grpc_host,
            self.grpc_port,
            self.http_port,
            &self.data_dir,
            self.database_url.as_deref(),
            &self.extra_env,
        );
        self.wait_ready().await;
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base())
    }

    pub fn grpc(&self) -> String {
        format!("http://{}:{}", self.grpc_host, self.grpc_port)
    }

    /// PUTs a policy document; returns (status, body).
    pub async fn put_policy(&self, service: &str, kind: &str, doc: &str) -> (u16, Value) {
        let r = client()
            .put(self.api(&format!("/services/{service}/policies/{kind}")))
            .header("content-type", "application/json")
            .body(doc.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> Value {
        client().get(self.api(path)).send().await.unwrap().json().await.unwrap()
    }

    pub async fn sidecar_status(&self, id: &str) -> Option<String> {
        self.sidecar_row(id)
            .await
            .map(|s| s["status"].as_str().unwrap_or("").to_owned())
    }

    /// The sidecar's row in `GET /sidecars`.
    pub async fn sidecar_row(&self, id: &str) -> Option<Value> {
        let list = self.get_json("/sidecars").await;
        list.as_array()?.iter().find(|s| s["id"] == id).cloned()
    }
}

/// Runs outriderctl against the control plane: (exit code, stdout, stderr). The
/// caller's own `OUTRIDER_TOKEN` and `OUTRIDER_SERVER` do not leak in.
pub fn ctl(cp: &ControlPlane, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin_path("outriderctl"))
        .arg("--server")
        .arg(cp.base())
        .args(args)
        .env_remove("OUTRIDER_TOKEN")
        .env_remove("OUTRIDER_SERVER")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn spawn_cp(
    grpc_host: &str,
    grpc: u16,
    http: u16,
    data_dir: &Path,
    db: Option<&str>,
    extra: &[(String, String)],
) -> Proc {
    let grpc_addr = format!("{grpc_host}:{grpc}");
    let http_addr = format!("127.0.0.1:{http}");
    let data = data_dir.display().to_string();
    let mut env: Vec<(&str, &str)> = vec![("OUTRIDER_LOG", "info")];
    if let Some(db) = db {
        env.push(("OUTRIDER_DATABASE_URL", db));
    }
    env.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut args = vec![
        "--grpc-addr",
        &grpc_addr,
        "--http-addr",
        &http_addr,
        "--data-dir",
        &data,
    ];
    if grpc_host.parse::<std::net::IpAddr>().is_ok_and(|ip| !ip.is_loopback()) {
        args.push("--insecure");
    }
    Proc::spawn(bin_path("outrider-control-plane"), &args, &env)
}

pub struct Sidecar {
    pub proc: Proc,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub health_port: u16,
    pub pod: String,
    pub env: Vec<(String, String)>,
}

impl Sidecar {
    /// Starts a sidecar with the documented variables only, and waits until its admin
    /// port answers (not until it has a snapshot).
    pub async fn start(cp_grpc: &str, service: &str, pod: &str, app_port: u16, state_dir: &Path) -> Self {
        Self::start_with(cp_grpc, service, pod, "v1", app_port, state_dir, &[]).await
    }

    pub async fn start_with(
        cp_grpc: &str,
        service: &str,
        pod: &str,
        version: &str,
        app_port: u16,
        state_dir: &Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let inbound_port = free_port();
        let outbound_port = free_port();
        let admin_port = free_port();
        // Many sidecars share this host: each its own health port, not 15020.
        let health_port = free_port();
        let mut env: Vec<(String, String)> = [
            ("OUTRIDER_CONTROL_PLANE", cp_grpc.to_owned()),
            ("OUTRIDER_SERVICE", service.to_owned()),
            ("OUTRIDER_VERSION", version.to_owned()),
            ("OUTRIDER_POD_NAME", pod.to_owned()),
            ("OUTRIDER_APP_PORT", app_port.to_string()),
            ("OUTRIDER_INBOUND_ADDR", format!("127.0.0.1:{inbound_port}")),
            ("OUTRIDER_OUTBOUND_ADDR", format!("127.0.0.1:{outbound_port}")),
            ("OUTRIDER_ADMIN_ADDR", format!("127.0.0.1:{admin_port}")),
            ("OUTRIDER_HEALTH_ADDR", format!("127.0.0.1:{health_port}")),
            ("OUTRIDER_STATE_DIR", state_dir.display().to_string()),
            ("OUTRIDER_CONFIG_DIR", state_dir.join("config").display().to_string()),
            ("OUTRIDER_LOG", "info".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut s = Self {
            proc: spawn_sidecar(&env),
            inbound_port,
            outbound_port,
            admin_port,
            health_port,
            pod: pod.to_owned(),
            env,
        };
        s.wait_up().await;
        s
    }

    /// Starts a sidecar whose app log volume (`OUTRIDER_LOG_PATHS`) is the directory
    /// `logs` rather than the default `/var/log`.
    pub async fn start_with_log_volume(
        cp_grpc: &str,
        service: &str,
        pod: &str,
        app_port: u16,
        state_dir: &Path,
        logs: &Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let log_paths = format!("{}/**", logs.display());
        let mut env = vec![("OUTRIDER_LOG_PATHS", log_paths.as_str())];
        env.extend_from_slice(extra);
        Self::start_with(cp_grpc, service, pod, "v1", app_port, state_dir, &env).await
    }

    /// A counter or gauge from the admin port's `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> u64 {
        let text = client()
            .get(format!("{}/metrics", self.admin()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    async fn wait_up(&mut self) {
        if let Err(e) = wait_for_http_ok(&format!("{}/healthz", self.admin()), SOON).await {
            self.proc.print_log_tail(50);
            panic!("sidecar did not come up: {e}");
        }
    }

    /// Starts the same sidecar again (same ports, same state directory).
    pub async fn restart(&mut self) {
        self.proc = spawn_sidecar(&self.env);
        self.wait_up().await;
    }

    pub fn id(&self) -> String {
        format!("default/{}", self.pod)
    }

    pub fn admin(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn health(&self) -> String {
        format!("http://127.0.0.1:{}", self.health_port)
    }

    pub fn inbound(&self) -> String {
        format!("http://127.0.0.1:{}", self.inbound_port)
    }

    pub async fn config_dump(&self) -> Value {
        client()
            .get(format!("{}/config_dump", self.admin()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null)
    }

    /// Waits until the sidecar enforces `revision` or newer: in its own snapshot, or,
    /// for a RoutingPolicy of a service it calls, in its destinations.
    pub async fn wait_revision(&mut self, revision: u64) {
        let r = wait_until(SOON, || async {
            let dump = self.config_dump().await;
            let own = dump["revision"].as_u64().unwrap_or(0);
            let routing = dump["destinations"]["routingRevision"].as_u64().unwrap_or(0);
            own.max(routing) >= revision
        })
        .await;
        if let Err(e) = r {
            self.proc.print_log_tail(50);
            panic!("sidecar {} never applied revision {revision}: {e}", self.pod);
        }
    }

    /// Sends `n` requests as fast as one connection allows; returns the status codes.
    pub async fn burst(&self, n: usize, header: Option<(&str, &str)>) -> Vec<u16> {
        let c = client();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut req = c.get(format!("{}/", self.inbound()));
            if let Some((k, v)) = header {
                req = req.header(k, v);
            }
            out.push(req.send().await.unwrap().status().as_u16());
        }
        out
    }
}

fn spawn_sidecar(env: &[(String, String)]) -> Proc {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Proc::spawn(bin_path("outrider-sidecar"), &[], &env)
}

/// Calls `service` through `caller`'s outbound port: the status and the name of the
/// echo that answered (`x-echo-name`).
pub async fn call_service(caller: &Sidecar, service: &str) -> (u16, String) {
    let r = client()
        .get(format!("http://127.0.0.1:{}/", caller.outbound_port))
        .header("host", service)
        .send()
        .await
        .unwrap();
    let name = r
        .headers()
        .get("x-echo-name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (r.status().as_u16(), name)
}

pub fn count(codes: &[u16], code: u16) -> usize {
    codes.iter().filter(|c| **c == code).count()
}

/// A fresh PostgreSQL database for one test, dropped on `cleanup`.
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    pub fn create() -> Self {
        let admin_url = std::env::var("OUTRIDER_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("outrider_e2e_{}_{}", std::process::id(), free_port());
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        Self {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) {
    let out = std::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("psql {sql}: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("psql is needed to create test databases: {e}"),
    }
}

/// For the log-shipping tests: a control plane, an echo app and a `web` sidecar (pod
/// `web-a`) whose app log volume is the temporary directory `logs`.
pub struct LogSetup {
    pub dir: tempfile::TempDir,
    pub cp: ControlPlane,
    pub sidecar: Sidecar,
    pub app: Proc,
    pub logs: PathBuf,
    /// The sidecar's state directory.
    pub state: PathBuf,
}

impl LogSetup {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With more sidecar variables (`OUTRIDER_SINK_HOSTS`, say).
    pub async fn start_with(extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("applogs");
        std::fs::create_dir_all(&logs).unwrap();
        let cp = ControlPlane::start(&dir.path().join("cp")).await;
        let app_port = free_port();
        let app = echo(app_port);
        let state = dir.path().join("sidecar");
        let sidecar = Sidecar::start_with_log_volume(&cp.grpc(), "web", "web-a", app_port, &state, &logs, extra).await;
        Self {
            dir,
            cp,
            sidecar,
            app,
            logs,
            state,
        }
    }

    /// PUTs `doc` as web's LoggingPolicy (the control plane must accept it); returns
    /// its revision.
    pub async fn put(&self, doc: &str) -> u64 {
        let (status, body) = self.cp.put_policy("web", "logging", doc).await;
        assert_eq!(status, 200, "{body}");
        body["revision"].as_u64().unwrap()
    }

    /// PUTs `doc` and waits until the sidecar enforces it.
    pub async fn applied(&mut self, doc: &str) -> u64 {
        let revision = self.put(doc).await;
        self.sidecar.wait_revision(revision).await;
        revision
    }
}

/// Serves `app` on a free loopback port; returns `http://127.0.0.1:PORT`.
pub async fn serve_on_loopback(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// An app that answers `200 app` and keeps the headers of every request it receives:
/// what tests check to prove a request did, or did not, reach the app.
#[derive(Clone, Default)]
pub struct RecordingApp {
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<axum::http::HeaderMap>>>,
}

impl RecordingApp {
    /// Serves on a loopback port; returns the app and its port.
    pub async fn start() -> (Self, u16) {
        use axum::extract::State;
        let app = RecordingApp::default();
        let router = axum::Router::new()
            .fallback(
                |State(app): State<RecordingApp>, headers: axum::http::HeaderMap| async move {
                    app.seen.lock().unwrap().push(headers);
                    "app\n"
                },
            )
            .with_state(app.clone());
        let base = serve_on_loopback(router).await;
        let port = base.rsplit(':').next().unwrap().parse().unwrap();
        (app, port)
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The `x-outrider-peer-identity` of the last request, if it had one.
    pub fn last_peer_identity(&self) -> Option<String> {
        let seen = self.seen.lock().unwrap();
        let h = seen.last()?.get("x-outrider-peer-identity")?;
        Some(h.to_str().ok()?.to_owned())
    }
}
