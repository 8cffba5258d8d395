//! End to end: the real `outriderctl` binary against a real control plane process
//! (embedded SQLite in a temp dir) over real sockets.
//!
//! The control plane binary comes from the same `target/<profile>/` as this test;
//! build it first with `cargo build --workspace`.

use outrider_testkit::{free_port, try_bin_path, wait_for_http_ok, Proc};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "e2e-secret";

/// A control plane on free loopback ports; killed when dropped (via [`Proc`]).
struct ControlPlane {
    url: String,
    _proc: Proc,
    dir: tempfile::TempDir,
}

async fn start_control_plane() -> ControlPlane {
    let bin = try_bin_path("outrider-control-plane").unwrap_or_else(|msg| panic!("{msg}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let (grpc, http) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let proc = Proc::spawn(
        bin,
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--grpc-addr",
            &grpc,
            "--http-addr",
            &http,
        ],
        &[("OUTRIDER_API_TOKEN", TOKEN), ("OUTRIDER_LOG", "warn")],
    );
    let url = format!("http://{http}");
    wait_for_http_ok(&format!("{url}/readyz"), Duration::from_secs(30))
        .await
        .expect("control plane ready");
    ControlPlane { url, _proc: proc, dir }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `outriderctl` with `--server` and the token, and optional stdin.
fn ctl(server: &str, args: &[&str], stdin: Option<&str>) -> Run {
    ctl_env(server, args, stdin, &[("OUTRIDER_TOKEN", TOKEN)])
}

fn ctl_env(server: &str, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outriderctl"));
    cmd.arg("--server")
        .arg(server)
        .args(args)
        .env_remove("OUTRIDER_TOKEN")
        .env_remove("OUTRIDER_SERVER")
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn outriderctl");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().expect("outriderctl finished");
    Run {
        code: out.status.code().expect("outriderctl exited by itself"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn assert_one_error_line(run: &Run) {
    assert_eq!(
        run.stderr.lines().count(),
        1,
        "stderr should be one line: {:?}",
        run.stderr
    );
    assert!(run.stderr.starts_with("error: "), "{:?}", run.stderr);
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("backtrace"),
        "{:?}",
        run.stderr
    );
}

fn revision_count(server: &str) -> usize {
    let run = ctl(server, &["history", "-o", "json"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json().as_array().expect("history is a list").len()
}

const RATE_LIMIT: &str = "\
kind: RateLimitPolicy
service: web
spec:
  rules:
    - name: per-client
      match: {pathPrefix: /api}
      key: header:x-client-id
      requestsPerSecond: 10
      burst: 20
      scope: instance
";

#[tokio::test]
async fn applied_rate_limit_policy_is_returned_by_get() {
    let cp = start_control_plane().await;
    let file = write_file(cp.dir.path(), "rl.yaml", RATE_LIMIT);

    let run = ctl(&cp.url, &["apply", "-f", &file], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("RateLimitPolicy web created (revision"),
        "{}",
        run.stdout
    );

    let run = ctl(&cp.url, &["get", "policy", "web", "rate-limit", "-o", "json"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v = run.json();
    assert_eq!(v["service"], "web");
    assert_eq!(v["kind"], "rate-limit");
    assert_eq!(v["document"]["rules"][0]["name"], "per-client");
    assert_eq!(v["document"]["rules"][0]["burst"].as_f64(), Some(20.0));

    let table = ctl(&cp.url, &["get", "policy", "web"], None);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.starts_with("SERVICE   KIND"), "{}", table.stdout);
    assert!(table.stdout.contains("1 rule: per-client"), "{}", table.stdout);
}

#[tokio::test]
async fn an_applied_authorization_policy_is_shown_by_get_under_its_envelope_or_rest_name() {
    let cp = start_control_plane().await;
    let yaml = "kind: AuthorizationPolicy\nservice: web\nspec:\n  defaultAction: deny\n  dryRun: true\n  rules:\n    - {name: reads, from: [frontend], match: {methods: [GET]}, action: allow}\n";
    let file = write_file(cp.dir.path(), "authz.yaml", yaml);
    let run = ctl(&cp.url, &["apply", "-f", &file], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("AuthorizationPolicy web created"), "{}", run.stdout);

    for kind in ["authorization", "AuthorizationPolicy"] {
        let run = ctl(&cp.url, &["get", "policy", "web", kind, "-o", "json"], None);
        assert_eq!(run.code, 0, "{kind}: {}", run.stderr);
        let v = run.json();
        assert_eq!(v["kind"], "authorization");
        assert_eq!(v["document"]["rules"][0]["from"][0], "frontend");
    }
    let table = ctl(&cp.url, &["get", "policy", "web"], None);
    assert!(
        table
            .stdout
            .contains("mtls permissive, default deny, DRY RUN, 1 rule: reads allow"),
        "{}",
        table.stdout
    );
}

/// The API's own JSON for `path`, read without outriderctl.
async fn api_json(server: &str, path: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("{server}/api/v1/{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET answered");
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    resp.json().await.expect("a JSON answer")
}

#[tokio::test]
async fn json_output_is_the_servers_json_unchanged() {
    let cp = start_control_plane().await;
    let text = format!(
        "{RATE_LIMIT}---\nkind: LoggingPolicy\nservice: web\nspec:\n  sink: {{type: stdout}}\n\
         ---\nkind: ConfigDocument\nservice: web\nname: app.yaml\ncontent: \"a: 1\\n\"\n"
    );
    let file = write_file(cp.dir.path(), "all.yaml", &text);
    let run = ctl(&cp.url, &["apply", "-f", &file], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let newest = ctl(&cp.url, &["history", "-o", "json"], None).json()[0]["revision"]
        .as_u64()
        .expect("a revision number");
    assert_eq!(ctl(&cp.url, &["revert", &newest.to_string()], None).code, 0);

    for (args, path) in [
        (&["get", "services"][..], "services"),
        (&["get", "sidecars"][..], "sidecars"),
        (
            &["get", "policy", "web", "rate-limit"][..],
            "services/web/policies/rate-limit",
        ),
        (&["history", "--limit", "10"][..], "revisions?limit=10"),
    ] {
        let expected = api_json(&cp.url, path).await;
        let run = ctl(&cp.url, &[args, &["-o", "json"]].concat(), None);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        assert_eq!(run.json(), expected, "{args:?} -o json");
        // Byte for byte as serde_json prints the API's value, so text tools see no change.
        let mut pretty = serde_json::to_string_pretty(&expected).unwrap();
        pretty.push('\n');
        assert_eq!(run.stdout, pretty, "{args:?} -o json text");
        let yaml = ctl(&cp.url, &[args, &["-o", "yaml"]].concat(), None);
        let from_yaml: Value = serde_yaml_ng::from_str(&yaml.stdout).expect("YAML output parses");
        assert_eq!(from_yaml, expected, "{args:?} -o yaml");
    }

    // Without a kind, `get policy` lists the service's policies in kind order.
    let detail = api_json(&cp.url, "services/web").await;
    let expected: Vec<Value> = ["routing", "rate-limit", "logging"]
        .iter()
        .filter_map(|k| detail["policies"].get(*k).cloned())
        .collect();
    assert_eq!(expected.len(), 2, "{detail}");
    let run = ctl(&cp.url, &["get", "policy", "web", "-o", "json"], None);
    assert_eq!(run.json(), Value::Array(expected));
}

#[tokio::test]
async fn reapplying_the_same_file_adds_no_revision() {
    let cp = start_control_plane().await;
    let file = write_file(cp.dir.path(), "rl.yaml", RATE_LIMIT);
    assert_eq!(ctl(&cp.url, &["apply", "-f", &file], None).code, 0);
    let before = revision_count(&cp.url);

    let run = ctl(&cp.url, &["apply", "-f", &file], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("unchanged"), "{}", run.stdout);
    assert_eq!(revision_count(&cp.url), before);
}

#[tokio::test]
async fn invalid_document_is_rejected_before_anything_is_sent() {
    let cp = start_control_plane().await;
    let before = revision_count(&cp.url);
    // The first document is valid; the second is not, so neither may be stored.
    let bad = RATE_LIMIT.replace("burst: 20", "burst: 0");
    let text = format!("kind: LoggingPolicy\nservice: web\nspec:\n  sink: {{type: stdout}}\n---\n{bad}");
    let file = write_file(cp.dir.path(), "bad.yaml", &text);

    let run = ctl(&cp.url, &["apply", "-f", &file], None);
    assert_eq!(run.code, 1, "stdout: {} stderr: {}", run.stdout, run.stderr);
    assert_one_error_line(&run);
    assert!(run.stderr.contains("spec.rules[0].burst"), "{}", run.stderr);
    assert!(
        run.stderr.contains("document 2 (RateLimitPolicy web)"),
        "{}",
        run.stderr
    );
    assert_eq!(revision_count(&cp.url), before, "an invalid file must store nothing");
}

#[tokio::test]
async fn revert_restores_the_previous_document() {
    let cp = start_control_plane().await;
    let v1 = write_file(cp.dir.path(), "v1.yaml", RATE_LIMIT);
    let v2 = write_file(
        cp.dir.path(),
        "v2.yaml",
        &RATE_LIMIT.replace("requestsPerSecond: 10", "requestsPerSecond: 99"),
    );
    assert_eq!(ctl(&cp.url, &["apply", "-f", &v1], None).code, 0);
    assert_eq!(ctl(&cp.url, &["apply", "-f", &v2], None).code, 0);
    let history = ctl(&cp.url, &["history", "web", "-o", "json"], None).json();
    let newest = history[0]["revision"].as_u64().expect("a revision number");

    let run = ctl(&cp.url, &["revert", &newest.to_string()], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("reverted revision {newest}")),
        "{}",
        run.stdout
    );

    let doc = ctl(&cp.url, &["get", "policy", "web", "rate-limit", "-o", "json"], None).json();
    assert_eq!(doc["document"]["rules"][0]["requestsPerSecond"].as_f64(), Some(10.0));
    let history = ctl(&cp.url, &["history", "web"], None);
    assert!(
        history.stdout.contains(&format!("(reverts {newest})")),
        "{}",
        history.stdout
    );
}

#[tokio::test]
async fn dry_run_from_stdin_validates_on_the_server_and_stores_nothing() {
    let cp = start_control_plane().await;
    let before = revision_count(&cp.url);
    let json = r#"[{"kind": "RateLimitPolicy", "service": "web",
                    "spec": {"rules": [{"name": "all", "requestsPerSecond": 5}]}},
                   {"kind": "ConfigDocument", "service": "web", "name": "app.yaml", "content": "a: 1\n"}]"#;
    let run = ctl(&cp.url, &["apply", "-f", "-", "--dry-run"], Some(json));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("RateLimitPolicy web valid, would change"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("ConfigDocument web/app.yaml valid"),
        "{}",
        run.stdout
    );
    assert_eq!(revision_count(&cp.url), before);
}

#[tokio::test]
async fn delete_removes_the_policy() {
    let cp = start_control_plane().await;
    let file = write_file(cp.dir.path(), "rl.yaml", RATE_LIMIT);
    assert_eq!(ctl(&cp.url, &["apply", "-f", &file], None).code, 0);
    let run = ctl(&cp.url, &["delete", "policy", "web", "rate-limit"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = ctl(&cp.url, &["get", "policy", "web", "rate-limit"], None);
    assert_eq!(run.code, 1);
    assert_one_error_line(&run);
    assert!(run.stderr.contains("no rate-limit policy"), "{}", run.stderr);
}

#[tokio::test]
async fn check_passes_on_a_healthy_control_plane() {
    let cp = start_control_plane().await;
    let run = ctl(&cp.url, &["check"], None);
    assert_eq!(run.code, 0, "stdout: {} stderr: {}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("✓ control plane") && !run.stdout.contains('✗'),
        "{}",
        run.stdout
    );
    let run = ctl(&cp.url, &["check", "-o", "json"], None);
    assert_eq!(run.json()["healthy"], true);
}

#[tokio::test]
async fn missing_token_says_how_to_pass_one() {
    let cp = start_control_plane().await;
    let run = ctl_env(&cp.url, &["get", "services"], None, &[]);
    assert_eq!(run.code, 1);
    assert_one_error_line(&run);
    assert!(run.stderr.contains("--token"), "{}", run.stderr);
}

#[test]
fn server_that_is_down_is_one_line_and_exit_1() {
    let server = format!("http://127.0.0.1:{}", free_port());
    for args in [&["get", "services"][..], &["check"][..]] {
        let run = ctl(&server, args, None);
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        assert_one_error_line(&run);
        assert!(run.stderr.contains(&server), "{}", run.stderr);
        assert!(
            run.stderr.contains("connection refused") && run.stderr.contains("--server"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    let run = ctl("http://127.0.0.1:1", &["gett", "services"], None);
    assert_eq!(run.code, 2);
    assert_one_error_line(&run);
    let run = ctl("http://127.0.0.1:1", &["get", "policy", "web", "ratelimit"], None);
    assert_eq!(run.code, 2);
    assert_one_error_line(&run);
    assert!(run.stderr.contains("rate-limit"), "{}", run.stderr);
}

#[test]
fn completions_are_generated() {
    let run = ctl("http://127.0.0.1:1", &["completions", "bash"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("outriderctl"));
}

#[tokio::test]
async fn canary_set_run_and_promote_on_an_unknown_service_fail_in_one_line_and_create_nothing() {
    let cp = start_control_plane().await;
    for args in [
        &["canary", "set", "ghost", "--subset", "v2", "--weight", "10"][..],
        &[
            "canary",
            "run",
            "ghost",
            "--subset",
            "v2",
            "--steps",
            "10,100",
            "--interval",
            "1s",
        ][..],
        &["canary", "promote", "ghost"][..],
    ] {
        let r = ctl(&cp.url, args, None);
        assert_eq!(r.code, 1, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("unknown service \"ghost\""), "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{args:?}: {}", r.stderr);
    }
    let services = ctl(&cp.url, &["get", "services", "-o", "json"], None).json();
    assert_eq!(services, serde_json::json!([]), "no service was created");
}

#[tokio::test]
async fn canary_set_to_a_subset_without_instances_is_refused_and_writes_nothing() {
    let cp = start_control_plane().await;
    let doc = r#"{"kind": "RoutingPolicy", "service": "web", "spec": {"routes": [{"name": "default", "backends": [{"subset": "v1", "weight": 100}]}]}}"#;
    assert_eq!(ctl(&cp.url, &["apply", "-f", "-"], Some(doc)).code, 0);
    let r = ctl(
        &cp.url,
        &["canary", "set", "web", "--subset", "v3", "--weight", "100"],
        None,
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("has no healthy instance"), "{}", r.stderr);
    let history = ctl(&cp.url, &["history", "web", "-o", "json"], None).json();
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(1),
        "only the applied policy: {history}"
    );
}
