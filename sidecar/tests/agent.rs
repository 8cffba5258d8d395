//! The sidecar's agent against a fake control plane: the real `outrider-sidecar` binary
//! on loopback sockets, with the test scripting every snapshot it receives.
//!
//! These are the paths a real control plane rarely takes: invalid snapshots (NACK, the
//! previous one stays), a snapshot for another service, a stream that breaks, a
//! sidecar that starts while the control plane is down, a state or config directory
//! it cannot write (NACK with the reason, retried until it can).

use outrider_proto::v1::{Ack, ConfigDocument, DestinationService, Destinations, Snapshot};
use outrider_testkit::fake_control_plane::{snapshot, FakeControlPlane, Reply, Stream};
use outrider_testkit::{free_port, wait_for, wait_for_http_ok, Proc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SERVICE: &str = "web";
const SOON: Duration = Duration::from_secs(20);

fn rate_limit(rps: u32) -> String {
    format!(r#"{{"rules":[{{"name":"all","requestsPerSecond":{rps},"burst":{rps}}}]}}"#)
}

/// A rate-limit policy that fails validation (a negative rate).
const INVALID_RATE_LIMIT: &str = r#"{"rules":[{"name":"all","requestsPerSecond":-1}]}"#;

fn limited(revision: u64, rps: u32) -> Snapshot {
    Snapshot {
        rate_limit: rate_limit(rps),
        ..snapshot(SERVICE, revision)
    }
}

fn ack(revision: u64, nonce: &str) -> Reply {
    Reply::Ack(Ack {
        revision,
        nonce: nonce.into(),
    })
}

/// One `outrider-sidecar` process for service `web`, its admin port queried over HTTP.
struct Sidecar {
    proc: Proc,
    admin: String,
    http: reqwest::Client,
}

impl Sidecar {
    fn start(control_plane: &str, dir: &Path) -> Sidecar {
        let admin_port = free_port();
        let (inbound, outbound, app) = (free_port(), free_port(), free_port());
        let state_dir: PathBuf = dir.join("state");
        let config_dir: PathBuf = dir.join("config");
        let proc = Proc::spawn(
            env!("CARGO_BIN_EXE_outrider-sidecar"),
            &[],
            &[
                ("OUTRIDER_CONTROL_PLANE", control_plane),
                ("OUTRIDER_SERVICE", SERVICE),
                ("OUTRIDER_POD_NAME", "web-1"),
                ("OUTRIDER_APP_PORT", &app.to_string()),
                ("OUTRIDER_INBOUND_ADDR", &format!("127.0.0.1:{inbound}")),
                ("OUTRIDER_OUTBOUND_ADDR", &format!("127.0.0.1:{outbound}")),
                ("OUTRIDER_ADMIN_ADDR", &format!("127.0.0.1:{admin_port}")),
                // Tests run side by side on one host: 15020 would clash.
                ("OUTRIDER_HEALTH_ADDR", "off"),
                ("OUTRIDER_STATE_DIR", &state_dir.display().to_string()),
                ("OUTRIDER_CONFIG_DIR", &config_dir.display().to_string()),
                ("OUTRIDER_LOG", "info"),
            ],
        );
        Sidecar {
            proc,
            admin: format!("http://127.0.0.1:{admin_port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("http client"),
        }
    }

    /// `/config_dump` (which answers 503 with the same shape while nothing is applied).
    async fn config_dump(&self) -> Value {
        let url = format!("{}/config_dump", self.admin);
        wait_for(SOON, || async {
            let r = self.http.get(&url).send().await?;
            Ok(r.json::<Value>().await?)
        })
        .await
        .expect("config_dump answers")
    }

    async fn readyz(&self) -> u16 {
        let url = format!("{}/readyz", self.admin);
        wait_for(SOON, || async {
            Ok(self.http.get(&url).send().await?.status().as_u16())
        })
        .await
        .expect("readyz answers")
    }
}

/// A fake control plane, a sidecar in `dir` and its first stream. Keep the control
/// plane: dropping it stops the server.
async fn connected(dir: &Path) -> (FakeControlPlane, Sidecar, Stream) {
    let mut cp = FakeControlPlane::start().await.unwrap();
    let sc = Sidecar::start(&cp.url(), dir);
    let stream = cp.accept().await.unwrap();
    (cp, sc, stream)
}

/// Sends `snapshot`, expects it acknowledged with its own revision and nonce.
async fn apply(stream: &mut Stream, snapshot: Snapshot) {
    let expected = ack(snapshot.revision, &snapshot.nonce);
    stream.send(snapshot).unwrap();
    assert_eq!(stream.next_reply().await.unwrap(), expected);
}

async fn nack_of(stream: &mut Stream, snapshot: Snapshot) -> outrider_proto::v1::Nack {
    stream.send(snapshot).unwrap();
    match stream.next_reply().await.unwrap() {
        Reply::Nack(n) => n,
        other => panic!("expected a Nack, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_snapshot_is_nacked_with_its_error_and_the_previous_one_stays_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let (_cp, sc, mut stream) = connected(dir.path()).await;
    apply(&mut stream, limited(3, 5)).await;

    let bad = Snapshot {
        rate_limit: INVALID_RATE_LIMIT.into(),
        nonce: "bad-one".into(),
        ..snapshot(SERVICE, 4)
    };
    let nack = nack_of(&mut stream, bad).await;
    assert_eq!((nack.revision, nack.nonce.as_str()), (4, "bad-one"));
    assert!(
        nack.error.contains("rate-limit policy") && nack.error.contains("rules[0].requestsPerSecond"),
        "the error names the document and the field: {}",
        nack.error
    );

    let dump = sc.config_dump().await;
    assert_eq!(dump["revision"], 3, "{dump}");
    assert_eq!(dump["rateLimit"]["rules"][0]["requestsPerSecond"], 5.0, "{dump}");
    // The control plane hears the same from the health reports.
    stream.heartbeat(100).unwrap();
    assert_eq!(stream.next_health().await.unwrap().applied_revision, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_for_another_service_is_refused_and_the_stream_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let (_cp, sc, mut stream) = connected(dir.path()).await;
    let identity = stream.hello.identity.clone().unwrap();
    assert_eq!((identity.service.as_str(), identity.pod.as_str()), (SERVICE, "web-1"));

    let nack = nack_of(&mut stream, snapshot("api", 5)).await;
    assert_eq!((nack.revision, nack.nonce.as_str()), (5, "n5"));
    assert!(
        nack.error.contains("\"api\"") && nack.error.contains("\"web\""),
        "{}",
        nack.error
    );
    assert_eq!(sc.readyz().await, 503, "nothing was applied");

    apply(&mut stream, snapshot(SERVICE, 6)).await;
    assert_eq!(sc.readyz().await, 200);
    assert_eq!(sc.config_dump().await["revision"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_stream_drop_the_sidecar_reconnects_says_what_it_holds_and_applies_the_resync() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = FakeControlPlane::start().await.unwrap();
    let sc = Sidecar::start(&cp.url(), dir.path());
    let mut first = cp.accept().await.unwrap();
    assert_eq!(first.hello.held_revision, 0, "a fresh sidecar holds nothing");
    apply(&mut first, limited(5, 5)).await;

    // Broken with an error status: the sidecar reconnects and says it holds 5.
    first.fail(tonic::Status::unavailable("control plane restarting"));
    let mut second = cp.accept().await.unwrap();
    assert_eq!(second.hello.held_revision, 5);
    apply(&mut second, limited(6, 9)).await;
    let dump = sc.config_dump().await;
    assert_eq!(
        (dump["revision"].clone(), dump["source"].clone()),
        (6.into(), "control-plane".into())
    );
    assert_eq!(
        dump["rateLimit"]["rules"][0]["requestsPerSecond"], 9.0,
        "the resync is enforced"
    );

    // Ended cleanly this time: the same again.
    drop(second);
    let third = cp.accept().await.unwrap();
    assert_eq!(third.hello.held_revision, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_started_while_the_control_plane_is_down_enforces_the_persisted_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = FakeControlPlane::start().await.unwrap();
    let addr = cp.addr();
    let mut sc = Sidecar::start(&cp.url(), dir.path());
    let mut stream = cp.accept().await.unwrap();
    apply(&mut stream, limited(7, 3)).await;
    // Refused snapshots are never persisted.
    let bad = Snapshot {
        rate_limit: INVALID_RATE_LIMIT.into(),
        ..snapshot(SERVICE, 8)
    };
    nack_of(&mut stream, bad).await;
    assert!(sc.proc.terminate().success(), "the sidecar exits 0 on SIGTERM");
    cp.stop().await;

    let sc = Sidecar::start(&format!("http://{addr}"), dir.path());
    wait_for_http_ok(&format!("{}/readyz", sc.admin), SOON)
        .await
        .expect("ready from the state directory alone");
    let dump = sc.config_dump().await;
    assert_eq!(dump["source"], "persisted", "{dump}");
    assert_eq!(dump["revision"], 7, "{dump}");
    assert_eq!(dump["controlPlaneConnected"], false, "{dump}");
    assert_eq!(dump["rateLimit"]["rules"][0]["requestsPerSecond"], 3.0, "{dump}");

    // The control plane comes back on its address: the sidecar, retrying with
    // backoff all along, connects and says what it enforces.
    let mut cp = FakeControlPlane::start_on(addr).await.unwrap();
    let stream = cp.accept().await.unwrap();
    assert_eq!(stream.hello.held_revision, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_keep_breaking_at_once_are_retried_with_backoff_not_in_a_tight_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = FakeControlPlane::start().await.unwrap();
    let _sc = Sidecar::start(&cp.url(), dir.path());
    // A control plane that breaks every stream right after its Hello, as one did whose
    // snapshots the sidecar could not read.
    let window = Duration::from_secs(4);
    let started = std::time::Instant::now();
    let mut streams = 0;
    while let Some(left) = window.checked_sub(started.elapsed()) {
        match tokio::time::timeout(left, cp.accept()).await {
            Ok(stream) => {
                stream
                    .unwrap()
                    .fail(tonic::Status::internal("cannot send the snapshot"));
                streams += 1;
            }
            Err(_) => break,
        }
    }
    // Backing off from 100 ms, doubling to 5 s, at least half of each ceiling: at most
    // about seven attempts fit in four seconds; retrying at once would be dozens.
    assert!(streams >= 2, "it does retry ({streams} streams)");
    assert!(streams <= 10, "{streams} streams in {window:?}: no backoff");
}

/// Waits for the next Ack or Nack; the sidecar may send it only after its retry timer.
async fn reply_within(stream: &mut Stream, within: Duration) -> Reply {
    tokio::time::timeout(within, async {
        loop {
            match stream.next_reply().await {
                Ok(r) => return r,
                // `next_reply` gives up after its own wait; keep waiting up to `within`.
                Err(e) if e.to_string().contains("sent nothing") => continue,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("an answer within the retry window")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_cannot_be_persisted_is_nacked_with_the_reason_not_enforced_and_acked_once_the_disk_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_cp, sc, mut stream) = connected(dir.path()).await;
    apply(&mut stream, limited(3, 5)).await;

    // A directory where snapshot.pb goes: every save fails (as root, permissions
    // would not stop it), as a full or read-only disk would.
    let file = dir.path().join("state").join("snapshot.pb");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir_all(file.join("in-the-way")).unwrap();
    let nack = nack_of(&mut stream, limited(4, 9)).await;
    assert_eq!((nack.revision, nack.nonce.as_str()), (4, "n4"));
    assert!(
        nack.error.starts_with("state dir: ") && nack.error.contains("snapshot.pb"),
        "the reason names the state dir and the file: {}",
        nack.error
    );
    let dump = sc.config_dump().await;
    assert_eq!(
        dump["revision"], 3,
        "what could not be persisted is not enforced: {dump}"
    );
    assert_eq!(dump["rateLimit"]["rules"][0]["requestsPerSecond"], 5.0, "{dump}");

    // The disk takes it again: the retry timer ACKs revision 4 without a new snapshot.
    std::fs::remove_dir_all(&file).unwrap();
    assert_eq!(reply_within(&mut stream, SOON).await, ack(4, "n4"));
    assert_eq!(sc.config_dump().await["revision"], 4);
    assert!(file.is_file(), "snapshot.pb written before the ACK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_document_that_cannot_be_written_nacks_its_snapshot_until_it_can() {
    let dir = tempfile::tempdir().unwrap();
    // The config directory's path is a file: no document can be written under it.
    let config_dir = dir.path().join("config");
    std::fs::write(&config_dir, b"not a directory").unwrap();
    let (_cp, sc, mut stream) = connected(dir.path()).await;
    let with_doc = Snapshot {
        configs: vec![ConfigDocument {
            name: "app.yaml".into(),
            content_type: "application/yaml".into(),
            content: b"level: debug".to_vec().into(),
            revision: 2,
        }],
        ..snapshot(SERVICE, 2)
    };
    let nack = nack_of(&mut stream, with_doc).await;
    assert!(
        nack.error.starts_with("config documents: ") && nack.error.contains("config"),
        "{}",
        nack.error
    );
    assert_eq!(sc.readyz().await, 503, "not enforced: nothing is applied");
    assert!(!dir.path().join("state").join("snapshot.pb").exists(), "nor persisted");

    std::fs::remove_file(&config_dir).unwrap();
    assert_eq!(reply_within(&mut stream, SOON).await, ack(2, "n2"));
    assert_eq!(
        std::fs::read_to_string(config_dir.join("app.yaml")).unwrap(),
        "level: debug"
    );
    assert_eq!(sc.readyz().await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_update_that_cannot_be_saved_is_nacked_with_the_reason_and_acked_once_saved() {
    let dir = tempfile::tempdir().unwrap();
    let (_cp, sc, mut stream) = connected(dir.path()).await;
    apply(&mut stream, snapshot(SERVICE, 1)).await;

    let file = dir.path().join("state").join("destinations.pb");
    std::fs::create_dir_all(file.join("in-the-way")).unwrap();
    let update = Destinations {
        version: 1,
        nonce: "d1".into(),
        full: true,
        services: vec![DestinationService {
            service: "api".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    stream.send_destinations(update).unwrap();
    match stream.next_reply().await.unwrap() {
        Reply::DestinationsNack(n) => {
            assert_eq!((n.version, n.nonce.as_str()), (1, "d1"));
            assert!(
                n.error.starts_with("state dir: ") && n.error.contains("destinations.pb"),
                "{}",
                n.error
            );
        }
        other => panic!("expected a DestinationsNack, got {other:?}"),
    }
    // Applied all the same: endpoints move whether the disk takes them or not.
    let dump = sc.config_dump().await;
    assert!(dump["destinations"].to_string().contains("\"api\""), "{dump}");

    std::fs::remove_dir_all(&file).unwrap();
    match reply_within(&mut stream, SOON).await {
        Reply::DestinationsAck(a) => assert_eq!((a.version, a.nonce.as_str()), (1, "d1")),
        other => panic!("expected a DestinationsAck, got {other:?}"),
    }
    assert!(file.is_file(), "destinations.pb saved before the ACK");
}
