//! The REST API against its own description: schemathesis generates requests from
//! `GET /api/v1/openapi.json` (valid and invalid ones, and sequences that follow the
//! document's links) and checks every answer of the real control plane: no server
//! error, status codes, content types, headers and bodies as documented, invalid
//! input refused and valid input accepted. `e2e/schemathesis.toml` lists the few
//! deliberate answers a schema cannot express, each with its reason.
//!
//! schemathesis lives in the virtualenv `.ci/run` makes, beside the Python that
//! `OUTRIDER_TEST_PYTHON` names (else `target/pyclients/bin/`); without it this test
//! skips, except under CI, where it fails.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOKEN: &str = "schemathesis-admin-token";

/// At most this many generated requests per operation and phase: a few minutes on
/// a busy two-core machine.
const MAX_EXAMPLES: &str = "40";

/// The `schemathesis` executable of the test virtualenv, or `None` (outside CI) to skip.
fn schemathesis() -> Option<PathBuf> {
    let found = pyclient("schemathesis");
    if found.is_none() {
        eprintln!("skipped: no schemathesis (run the virtualenv step of .ci/run)");
    }
    found
}

/// Stores one document of each kind for `web`, so that the generated reads find
/// something besides 404s and the revision history is not empty.
async fn seed(cp: &ControlPlane) {
    let put = |path: &str, content_type: &'static str, body: &'static str| {
        client()
            .put(cp.api(path))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (path, content_type, body) in [
        (
            "/services/web/policies/rate-limit",
            "application/json",
            r#"{"rules":[{"name":"all","requestsPerSecond":5,"burst":5}]}"#,
        ),
        (
            "/services/web/policies/routing",
            "application/json",
            r#"{"routes":[{"name":"default","backends":[{"subset":"v1","weight":100}]}]}"#,
        ),
        ("/services/web/config/app.yaml", "application/yaml", "feature: on\n"),
    ] {
        let r = put(path, content_type, body).await.unwrap();
        assert_eq!(
            r.status(),
            200,
            "seeding {path}: {}",
            r.text().await.unwrap_or_default()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_generated_request_gets_a_documented_answer_and_no_server_error() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(
        &dir.path().join("data"),
        None,
        vec![
            ("OUTRIDER_API_TOKEN".into(), TOKEN.into()),
            // Its requests without a token are many and all from one address: the
            // throttle would answer 429 where the checks expect 401.
            ("OUTRIDER_AUTH_FAILURES_PER_MINUTE".into(), "1000000".into()),
        ],
    )
    .await;
    seed(&cp).await;

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    let seed = std::env::var("OUTRIDER_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let mut command = Command::new(&schemathesis);
    command
        // Its reports and cache go to the temporary directory, not the worktree.
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(&config)
        .args(["run", &cp.api("/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "all"])
        // An endless event stream: nothing to validate when it ends; the control
        // plane's own tests read its events.
        .args(["--exclude-path", "/api/v1/events"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", &seed])
        // One worker: hypothesis describing its strategies from several threads at
        // once trips a CPython 3.11 parser bug ("AST constructor recursion depth
        // mismatch"), an error of the tool, not a finding.
        .args(["--workers", "1", "--request-timeout", "10", "--no-color"]);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        cp.proc.print_log_tail(40);
        panic!(
            "schemathesis found problems (seed {seed}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The summary, for the test log.
    let summary: Vec<&str> = stdout.lines().rev().take(12).collect();
    eprintln!("{}", summary.into_iter().rev().collect::<Vec<_>>().join("\n"));
}
