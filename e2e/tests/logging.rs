//! Log shipping and access logs end to end: the real control plane and sidecar, a
//! log file the test writes like an app would, and a small NDJSON collector (axum)
//! standing in for the central log platform.

mod common;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use common::*;
use outrider_testkit::wait_until;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Long enough for 20,000 lines on a busy two-core CI machine.
const SHIP: Duration = Duration::from_secs(60);

#[derive(Clone, Default)]
struct Collector {
    lines: Arc<Mutex<Vec<String>>>,
    raw: Arc<Mutex<Vec<u8>>>,
    down: Arc<AtomicBool>,
    refused: Arc<std::sync::atomic::AtomicU64>,
}

impl Collector {
    async fn start() -> (Self, String) {
        let c = Collector::default();
        let app = Router::new().route("/ingest", post(ingest)).with_state(c.clone());
        let url = format!("{}/ingest", serve_on_loopback(app).await);
        (c, url)
    }

    fn records(&self) -> Vec<Value> {
        let lines = self.lines.lock().unwrap();
        lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// (distinct `seq` values, duplicates) among app records.
    fn seqs(&self) -> (usize, usize) {
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for r in self.records() {
            if let Some(s) = r["seq"].as_u64() {
                *seen.entry(s).or_default() += 1;
            }
        }
        let dups = seen.values().map(|n| n - 1).sum();
        (seen.len(), dups)
    }

    fn missing(&self, n: u64) -> Vec<u64> {
        let have: std::collections::HashSet<u64> = self.records().iter().filter_map(|r| r["seq"].as_u64()).collect();
        (0..n).filter(|s| !have.contains(s)).take(10).collect()
    }
}

async fn ingest(State(c): State<Collector>, body: Bytes) -> StatusCode {
    if c.down.load(Ordering::SeqCst) {
        c.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    c.raw.lock().unwrap().extend_from_slice(&body);
    let text = String::from_utf8_lossy(&body);
    c.lines
        .lock()
        .unwrap()
        .extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
    StatusCode::OK
}

fn write_lines(path: &Path, seqs: std::ops::Range<u64>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut buf = String::new();
    for s in seqs {
        buf.push_str(&format!(
            "{{\"seq\":{s},\"level\":\"info\",\"msg\":\"order {s} processed in 12ms\"}}\n"
        ));
    }
    f.write_all(buf.as_bytes()).unwrap();
}

fn policy(log_glob: &str, url: &str, access: &str) -> String {
    format!(
        r#"{{"accessLog": {access},
             "appLogs": [{{"path": "{log_glob}", "parser": "json"}}],
             "sink": {{"type": "http", "url": "{url}", "format": "ndjson", "batchSize": 1000, "flushInterval": "200ms"}}}}"#
    )
}

async fn setup(log_glob_name: &str, url: &str, access: &str) -> LogSetup {
    let mut s = LogSetup::start().await;
    let glob = s.logs.join(log_glob_name).display().to_string();
    s.applied(&policy(&glob, url, access)).await;
    s
}

async fn wait_all(c: &Collector, n: u64, sidecar: &Sidecar) {
    if wait_until(SHIP, || async { c.seqs().0 as u64 >= n }).await.is_err() {
        sidecar.proc.print_log_tail(40);
        panic!("{} of {n} arrived; missing e.g. {:?}", c.seqs().0, c.missing(n));
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn twenty_thousand_json_lines_reach_the_ndjson_sink_enriched_with_service_and_pod() {
    let (c, url) = Collector::start().await;
    let s = setup("*.log", &url, "{}").await;
    write_lines(&s.logs.join("app.log"), 0..20_000);
    wait_all(&c, 20_000, &s.sidecar).await;
    let r = c.records().into_iter().find(|r| r["seq"] == 7).unwrap();
    assert_eq!(r["service"], "web");
    assert_eq!(r["pod"], "web-a");
    assert_eq!(r["version"], "v1");
    assert_eq!(r["namespace"], "default");
    assert_eq!(r["msg"], "order 7 processed in 12ms");
    assert_eq!(r["source"], "app");

    // The figures reach the API through the health reports.
    let id = s.sidecar.id();
    let shipped = wait_until(SOON, || async {
        let list = s.cp.get_json("/sidecars").await;
        list.as_array()
            .into_iter()
            .flatten()
            .any(|x| x["id"] == id.as_str() && x["health"]["logShipping"]["shipped"].as_u64().unwrap_or(0) >= 20_000)
    })
    .await;
    assert!(shipped.is_ok(), "{}", s.cp.get_json("/sidecars").await);
    assert!(s.sidecar.metric("outrider_sidecar_log_lines_read_total").await >= 20_000);
}

#[tokio::test]
async fn sigkill_mid_stream_and_restart_loses_no_line() {
    let (c, url) = Collector::start().await;
    let mut s = setup("app.log", &url, "{}").await;
    let log = s.logs.join("app.log");
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for chunk in 0..20 {
                write_lines(&log, chunk * 1000..(chunk + 1) * 1000);
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };
    wait_until(SHIP, || async { c.seqs().0 >= 3000 }).await.unwrap();
    s.sidecar.proc.kill9();
    let before = c.seqs().0;
    s.sidecar.restart().await;
    writer.join().unwrap();
    wait_all(&c, 20_000, &s.sidecar).await;
    let (distinct, dups) = c.seqs();
    println!("killed after {before} lines; {distinct} distinct, {dups} duplicates after restart");
    assert_eq!(distinct, 20_000);
}

#[tokio::test]
async fn rename_and_copytruncate_rotation_lose_no_line() {
    let (c, url) = Collector::start().await;
    let s = setup("app.log", &url, "{}").await;
    let log = s.logs.join("app.log");
    // The sidecar follows the file (a file renamed before it was ever seen under a
    // matching name cannot be followed by anyone).
    write_lines(&log, 0..1);
    wait_all(&c, 1, &s.sidecar).await;
    write_lines(&log, 1..5_000);
    // Rename rotation, as logrotate's default does, with lines not yet read.
    std::fs::rename(&log, s.logs.join("app.log.1")).unwrap();
    write_lines(&log, 5_000..10_000);
    wait_all(&c, 10_000, &s.sidecar).await;

    // copytruncate: lines written between logrotate's copy and its truncate are lost
    // for every tailer (logrotate(8) says so); truncating after the sidecar caught up
    // must lose nothing.
    write_lines(&log, 10_000..12_000);
    wait_until(SHIP, || async {
        s.sidecar.metric("outrider_sidecar_log_lines_read_total").await >= 12_000
    })
    .await
    .unwrap();
    std::fs::copy(&log, s.logs.join("app.log.2")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    write_lines(&log, 12_000..20_000);
    wait_all(&c, 20_000, &s.sidecar).await;
}

#[tokio::test]
async fn three_second_sink_outage_loses_no_line_and_memory_stays_bounded() {
    let (c, url) = Collector::start().await;
    let s = setup("app.log", &url, "{}").await;
    let log = s.logs.join("app.log");
    write_lines(&log, 0..2_000);
    wait_all(&c, 2_000, &s.sidecar).await;
    let rss_before = rss_kib(s.sidecar.proc.pid());

    c.down.store(true, Ordering::SeqCst);
    let mut peak = rss_before;
    for chunk in 0..6 {
        write_lines(&log, 2_000 + chunk * 3_000..2_000 + (chunk + 1) * 3_000);
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_kib(s.sidecar.proc.pid()));
    }
    assert!(c.refused.load(Ordering::SeqCst) > 0, "the outage was noticed");
    assert!(s.sidecar.metric("outrider_sidecar_log_sink_errors_total").await > 0);
    c.down.store(false, Ordering::SeqCst);
    wait_all(&c, 20_000, &s.sidecar).await;
    println!("RSS before the outage {rss_before} KiB, peak during it {peak} KiB");
    // 18,000 lines are ~1.5 MiB; memory must not hold them all several times over
    // (the spool is on disk). Generous: allocator slack on a busy machine.
    assert!(
        peak < rss_before + 64 * 1024,
        "before {rss_before} KiB, peak {peak} KiB"
    );
    wait_until(SOON, || async {
        s.sidecar.metric("outrider_sidecar_log_buffered_bytes").await == 0
    })
    .await
    .expect("the spool drains");
}

#[tokio::test]
async fn fifty_requests_give_fifty_access_records_and_the_authorization_value_appears_nowhere() {
    let (c, url) = Collector::start().await;
    let s = setup(
        "app.log",
        &url,
        r#"{"enabled": true, "format": "json", "redactHeaders": ["authorization", "cookie"]}"#,
    )
    .await;
    let secret = "Bearer s3cr3t-token-0f-the-user";
    let http = client();
    for i in 0..50 {
        let r = http
            .get(format!("{}/orders/{i}", s.sidecar.inbound()))
            .header("authorization", secret)
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let access = || {
        c.records()
            .into_iter()
            .filter(|r| r["source"] == "access")
            .collect::<Vec<_>>()
    };
    wait_until(SOON, || async { access().len() >= 50 })
        .await
        .unwrap_or_else(|_| panic!("{} access records", access().len()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = access();
    assert_eq!(records.len(), 50);
    let r = &records[0];
    assert_eq!(r["method"], "GET");
    assert!(r["path"].as_str().unwrap().starts_with("/orders/"), "{r}");
    assert_eq!(r["status"], 200);
    assert_eq!(r["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(r["pod"], "web-a");
    assert!(r["requestId"].as_str().is_some_and(|id| id.len() == 36), "{r}");
    assert!(r["durationMs"].as_f64().is_some());
    assert!(r["upstream"].as_str().unwrap().starts_with("127.0.0.1:"));

    // Nowhere: not at the sink, not in the sidecar's own log, not in its state dir.
    let needle = "s3cr3t-token";
    assert!(!String::from_utf8_lossy(&c.raw.lock().unwrap()).contains(needle));
    assert!(!s.sidecar.proc.log().contains(needle));
    for entry in walk(&s.state) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&bytes).contains(needle), "{}", entry.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
