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
