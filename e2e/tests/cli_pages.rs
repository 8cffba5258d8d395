//! `outriderctl get sidecars` against a real control plane with simulated sidecars:
//! it follows the API's pages to list every sidecar, and its JSON is one array that
//! reads exactly as the server's own listing.

mod common;

use common::{ctl, ControlPlane, SOON};
use outrider_testkit::{bin_path, wait_until, Proc};
use serde_json::Value;

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn get_sidecars_follows_every_page_and_prints_one_array_as_the_server_lists_it() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let grpc = cp.grpc();
    let mut sim = Proc::spawn(
        bin_path("outrider-fleet-sim"),
        &["--control-plane", &grpc, "--service", "many", "--count", "7"],
        &[],
    );
    let all_in = wait_until(SOON, || async {
        let list = cp.get_json("/sidecars?status=healthy").await;
        list.as_array().is_some_and(|l| l.len() == 7)
    })
    .await;
    if all_in.is_err() {
        sim.print_log_tail(20);
        panic!("7 simulated sidecars did not register");
    }
    // Stopped, the rows stay (disconnected) and no longer change, so two listings of
    // them can be compared byte for byte.
    sim.terminate();
    wait_until(SOON, || async {
        let list = cp.get_json("/sidecars?status=disconnected").await;
        list.as_array().is_some_and(|l| l.len() == 7)
    })
    .await
    .expect("the simulated sidecars disconnected");

    let whole = cp.get_json("/sidecars?limit=100").await;
    let (code, out, err) = ctl(&cp, &["get", "sidecars", "--chunk-size", "3", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let mut expected = serde_json::to_string_pretty(&whole).unwrap();
    expected.push('\n');
    assert_eq!(out, expected, "three pages merged into the server's one listing");

    // --limit stops after that many, wherever the pages end.
    let (code, out, err) = ctl(
        &cp,
        &["get", "sidecars", "--chunk-size", "3", "--limit", "4", "-o", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let four: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ids(&four), ids(&whole)[..4]);

    // Filters are the server's: none of them is healthy any more.
    let (code, out, err) = ctl(
        &cp,
        &[
            "get",
            "sidecars",
            "--service",
            "many",
            "--status",
            "healthy",
            "-o",
            "json",
        ],
    );
    assert_eq!((code, out.trim()), (0, "[]"), "{err}");
    let (code, _, err) = ctl(&cp, &["get", "sidecars", "--status", "sleepy"]);
    assert_eq!(code, 2, "a status the API does not know is a usage error: {err}");
}
