//! `server::run` on listeners the test binds itself: it serves on them, drains and
//! returns when told to stop, and refuses a public listener without tokens.

use clap::Parser;
use outrider_control_plane::server::{self, Config, Listeners, ServerError};
use std::time::Duration;
use tokio::net::TcpListener;

const SOON: Duration = Duration::from_secs(20);

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: Config,
}

fn config(data_dir: &std::path::Path) -> Config {
    Args::parse_from(["outrider-control-plane", "--data-dir", data_dir.to_str().unwrap()]).config
}

async fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

#[tokio::test]
async fn run_serves_on_the_listeners_it_is_given_and_returns_after_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (loopback().await, loopback().await);
    let base = format!("http://{}", http.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(
        config(dir.path()),
        Listeners {
            grpc,
            http,
            webhook: None,
        },
        async {
            let _ = stop_rx.await;
        },
    ));

    outrider_testkit::wait_for_http_ok(&format!("{base}/readyz"), SOON)
        .await
        .unwrap();
    let services: Vec<outrider_api::ServiceSummary> = reqwest::get(format!("{base}/api/v1/services"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(services.is_empty());

    stop_tx.send(()).unwrap();
    let result = tokio::time::timeout(SOON, server)
        .await
        .expect("run returns after shutdown");
    assert!(result.unwrap().is_ok());
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "the HTTP listener is closed once run returned"
    );
}

#[tokio::test]
async fn run_refuses_a_public_listener_without_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let public = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let listeners = Listeners {
        grpc: loopback().await,
        http: public,
        webhook: None,
    };
    let result = server::run(config(dir.path()), listeners, std::future::pending()).await;
    assert!(
        matches!(result, Err(ServerError::Insecure { what: "REST API", .. })),
        "{:?}",
        result.err()
    );
}

fn parse(args: &[&str]) -> Result<Config, clap::Error> {
    let mut all = vec!["outrider-control-plane"];
    all.extend_from_slice(args);
    Args::try_parse_from(all).map(|a| a.config)
}

#[test]
fn tls_san_takes_dns_names_and_ip_addresses_and_refuses_anything_else_naming_it() {
    let cfg = parse(&["--tls-san", "cp.outrider.svc,10.0.0.7,[::1]"]).unwrap();
    let names: Vec<String> = cfg.tls_san.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["cp.outrider.svc", "10.0.0.7", "::1"]);
    assert!(matches!(cfg.tls_mode(), Ok(server::TlsMode::Issued(_))));
    let err = parse(&["--tls-san", "cp.svc,not a name"]).err().unwrap().to_string();
    assert!(err.contains("--tls-san") && err.contains("not a name"), "{err}");
    let both = parse(&["--tls-san", "localhost", "--tls-cert", "/c.pem", "--tls-key", "/k.pem"]).unwrap();
    assert!(matches!(both.tls_mode(), Err(ServerError::TlsConflict)));
}

#[test]
fn the_webhooks_certificate_names_its_service_in_the_namespace_given() {
    let names = |cfg: Config| -> Vec<String> { cfg.webhook_names().unwrap().iter().map(ToString::to_string).collect() };
    assert_eq!(
        names(parse(&["--namespace", "mesh"]).unwrap()),
        ["outrider-webhook.mesh.svc", "outrider-webhook.mesh.svc.cluster.local"]
    );
    assert!(parse(&["--namespace", "Not_A_Namespace"])
        .unwrap()
        .webhook_names()
        .is_err());
    let cfg = parse(&["--injected-control-plane", "outrider:18000"]).unwrap();
    assert!(matches!(
        cfg.inject_settings(),
        Err(ServerError::InjectedControlPlane(_))
    ));
}
