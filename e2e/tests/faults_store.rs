//! The store going away under a running mesh: two control-plane replicas reach
//! PostgreSQL through a TCP proxy this test can cut. Traffic between sidecars on
//! different replicas never fails, writes during the outage are refused with 503 and
//! never half-applied, acknowledged writes survive, and a sidecar that starts during
//! the outage joins once the store is back.

mod common;
use common::*;
use outrider_testkit::{echo_with, free_port, wait_until, Proc};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to PostgreSQL that can be cut: cutting closes every open connection
/// and refuses new ones, as a database host going away does.
struct StoreLink {
    port: u16,
    up: watch::Sender<bool>,
}

impl StoreLink {
    async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, _) = watch::channel(true);
        let link = up.clone();
        let target = target.to_owned();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut state = link.subscribe();
                if !*state.borrow_and_update() {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { port, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// The database URL of `db` with its host and port replaced by the link's.
fn through(link: &StoreLink, db: &PgDatabase) -> (String, String) {
    let (_, rest) = db.url.split_once('@').unwrap();
    let (hostport, name) = rest.split_once('/').unwrap();
    (
        format!("postgres://postgres@127.0.0.1:{}/{name}", link.port),
        hostport.to_owned(),
    )
}

/// Calls a sidecar every 20 ms until stopped (a service through its outbound, or its
/// own app through its inbound); every
/// answer that is not 200 is kept with the moment it came.
struct Traffic {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(outbound_port: u16, service: &str) -> Self {
        Self::run(outbound_port, Some(service.to_owned()))
    }

    /// Straight into a sidecar's inbound port.
    fn start_inbound(inbound_port: u16) -> Self {
        Self::run(inbound_port, None)
    }

    fn run(port: u16, host: Option<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, c, f) = (stop.clone(), calls.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let http = client();
            let started = std::time::Instant::now();
            while !s.load(Ordering::Relaxed) {
                let mut r = http.get(format!("http://127.0.0.1:{port}/"));
                if let Some(host) = &host {
                    r = r.header("host", host);
                }
                let r = r.timeout(Duration::from_secs(5)).send().await;
                c.fetch_add(1, Ordering::Relaxed);
                let failed = match r {
                    Ok(r) if r.status() == 200 => None,
                    Ok(r) => Some(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(what) = failed {
                    f.lock().unwrap().push(format!("at {:?}: {what}", started.elapsed()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self {
            stop,
            calls,
            failures,
            task,
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.calls.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
        )
    }
}

fn app(name: &str) -> (u16, Proc) {
    let port = free_port();
    (port, echo_with(port, name, &[]))
}

#[tokio::test]
async fn a_store_outage_longer_than_the_unhealthy_window_fails_no_request_and_loses_no_acknowledged_write() {
    let db = PgDatabase::create();
    let pg_addr = db.url.split_once('@').unwrap().1.split_once('/').unwrap().0.to_owned();
    let link = StoreLink::start(&pg_addr).await;
    let (url, _) = through(&link, &db);
    let dir = tempfile::tempdir().unwrap();
    // Reports every second, silent after three: an outage of eight seconds makes
    // every row look dead, which is what used to withdraw endpoints on recovery.
    let timing: Vec<(String, String)> = [
        ("OUTRIDER_REPORT_INTERVAL", "1s"),
        ("OUTRIDER_UNHEALTHY_AFTER", "3s"),
        ("OUTRIDER_DISCONNECTED_AFTER", "60s"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    let a = ControlPlane::start_with(&dir.path().join("a"), Some(&url), timing.clone()).await;
    let b = ControlPlane::start_with(&dir.path().join("b"), Some(&url), timing.clone()).await;

    // web lives on replica B, its caller on replica A.
    let (web_port, _web_app) = app("web-1");
    let web = Sidecar::start(&b.grpc(), "web", "web-1", web_port, &dir.path().join("web-1")).await;
    let (client_port, _client_app) = app("client-1");
    let caller = Sidecar::start(
        &a.grpc(),
        "client",
        "client-1",
        client_port,
        &dir.path().join("client-1"),
    )
    .await;
    for id in [web.id(), caller.id()] {
        wait_until(SOON, || async {
            a.sidecar_status(&id).await.as_deref() == Some("healthy")
        })
        .await
        .unwrap_or_else(|e| panic!("{id} never healthy: {e}"));
    }
    wait_until(SOON, || async {
        caller.config_dump().await["controlPlaneConnected"] == true
    })
    .await
    .unwrap();
    let probe = client()
        .get(format!("http://127.0.0.1:{}/", caller.outbound_port))
        .header("host", "web")
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200, "web answers its caller before the outage");

    // An acknowledged write before the outage.
    let (status, body) = a
        .put_policy(
            "web",
            "rate-limit",
            r#"{"rules":[{"name":"all","requestsPerSecond":1000,"burst":1000}]}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let before = body["revision"].as_u64().unwrap();

    let traffic = Traffic::start(caller.outbound_port, "web");
    tokio::time::sleep(Duration::from_secs(2)).await;
    link.set(false);

    // Writes during the outage are refused, whole, with 503 problem+json.
    wait_until(SOON, || async {
        let (status, _) = b
            .put_policy(
                "web",
                "rate-limit",
                r#"{"rules":[{"name":"all","requestsPerSecond":7,"burst":7}]}"#,
            )
            .await;
        status == 503
    })
    .await
    .expect("a write during the outage gets 503");
    // A sidecar starting during the outage cannot register yet; it keeps trying.
    let (web2_port, _web2_app) = app("web-2");
    let web2 = Sidecar::start(&a.grpc(), "web", "web-2", web2_port, &dir.path().join("web-2")).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    link.set(true);

    // The newcomer joins once the store is back, and its callers reach it.
    wait_until(Duration::from_secs(30), || async {
        a.sidecar_status(&web2.id()).await.as_deref() == Some("healthy")
    })
    .await
    .expect("a sidecar started during the outage registers after it");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (calls, failures) = traffic.finish().await;
    assert!(calls > 100, "the traffic ran ({calls} calls)");
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed across the outage: {failures:#?}\nA:\n{}\nB:\n{}",
        failures.len(),
        a.proc.log_tail(40),
        b.proc.log_tail(40)
    );

    // Nothing acknowledged was lost, nothing refused was stored, and writing works again.
    let history = a.get_json("/revisions?service=web").await;
    let revisions: Vec<u64> = history
        .as_array()
        .expect("a list of revisions")
        .iter()
        .filter_map(|r| r["revision"].as_u64())
        .collect();
    assert!(revisions.contains(&before), "{history}");
    let stored = a.get_json("/services/web/policies/rate-limit").await;
    assert_eq!(stored["document"]["rules"][0]["requestsPerSecond"], 1000.0, "{stored}");
    assert_eq!(stored["revision"], before, "the refused write stored nothing");
    let (status, body) = b
        .put_policy(
            "web",
            "rate-limit",
            r#"{"rules":[{"name":"all","requestsPerSecond":500,"burst":500}]}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    drop(db);
}

/// Writers PUT config documents as fast as the control plane takes them; it is killed
/// with SIGKILL in the middle. Every write that was answered 200 is there after the
/// restart, byte for byte, and a sidecar serving meanwhile never fails a request.
async fn kill9_under_write_load(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start_with(&dir.path().join("cp"), database_url, Vec::new()).await;
    let (web_port, _web_app) = app("web-1");
    let web = Sidecar::start(&cp.grpc(), "web", "web-1", web_port, &dir.path().join("web-1")).await;
    wait_until(SOON, || async { web.config_dump().await["revision"].is_u64() })
        .await
        .expect("the sidecar gets its first snapshot");

    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (acked, stop, url) = (acked.clone(), stop.clone(), cp.api("/services/web/config"));
            tokio::spawn(async move {
                let http = client();
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let (name, body) = (format!("w{w}-{i}"), format!("writer {w} write {i}"));
                    let r = http
                        .put(format!("{url}/{name}"))
                        .header("content-type", "text/plain")
                        .body(body.clone())
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => acked.lock().unwrap().push((name, body)),
                        // Refused or cut off by the kill: not acknowledged, so not owed.
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let traffic = Traffic::start_inbound(web.inbound_port);

    wait_until(SOON, || async { acked.lock().unwrap().len() >= 20 })
        .await
        .expect("writes are being acknowledged");
    cp.proc.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cp.restart().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let (calls, failures) = traffic.finish().await;

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20, "{}", acked.len());
    let http = client();
    for (name, body) in &acked {
        let r = http
            .get(cp.api(&format!("/services/web/config/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged write {name} lost");
        assert_eq!(&r.text().await.unwrap(), body, "acknowledged write {name} changed");
    }
    assert!(calls > 20, "the traffic ran ({calls} calls)");
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:#?}",
        failures.len()
    );
}

#[tokio::test]
async fn no_acknowledged_write_is_lost_when_the_control_plane_is_killed_under_write_load_on_sqlite() {
    kill9_under_write_load(None).await;
}

#[tokio::test]
async fn no_acknowledged_write_is_lost_when_the_control_plane_is_killed_under_write_load_on_postgres() {
    let db = PgDatabase::create();
    kill9_under_write_load(Some(&db.url)).await;
}
