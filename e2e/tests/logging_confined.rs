//! Log shipping confined to what the sidecar's settings allow, and delivery that a
//! record refused alone cannot block: the real control plane and sidecar binaries, a
//! log volume in a temporary directory (`OUTRIDER_LOG_PATHS`) and small collectors
//! (axum) that refuse large bodies or answer like Elasticsearch's `_bulk`.

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
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How a collector answers.
#[derive(Clone, Copy)]
enum Mode {
    /// NDJSON; `413` to any body over this many bytes.
    LimitBytes(usize),
    /// Elasticsearch `_bulk`: a document whose `kind` is `mapping` fails for good
    /// (400), one whose `kind` is `busy` is answered 429 the first time.
    Bulk,
}

#[derive(Clone)]
struct Collector {
    mode: Mode,
    /// Documents accepted, in arrival order.
    docs: Arc<Mutex<Vec<Value>>>,
    raw: Arc<Mutex<Vec<u8>>>,
    too_large: Arc<AtomicU64>,
    /// How often each `seq` was offered to the collector (accepted or not).
    offered: Arc<Mutex<HashMap<u64, u64>>>,
}

impl Collector {
    async fn start(mode: Mode) -> (Self, String) {
        let c = Collector {
            mode,
            docs: Arc::default(),
            raw: Arc::default(),
            too_large: Arc::default(),
            offered: Arc::default(),
        };
        let app = Router::new().route("/ingest", post(ingest)).with_state(c.clone());
        let url = format!("{}/ingest", serve_on_loopback(app).await);
        (c, url)
    }

    fn seqs(&self) -> Vec<u64> {
        self.docs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|d| d["seq"].as_u64())
            .collect()
    }

    fn offered(&self, seq: u64) -> u64 {
        self.offered.lock().unwrap().get(&seq).copied().unwrap_or(0)
    }
}

async fn ingest(State(c): State<Collector>, body: Bytes) -> (StatusCode, String) {
    c.raw.lock().unwrap().extend_from_slice(&body);
    let text = String::from_utf8_lossy(&body);
    let lines = text.lines().filter(|l| !l.is_empty());
    match c.mode {
        Mode::LimitBytes(limit) => {
            let docs: Vec<Value> = lines.filter_map(|l| serde_json::from_str(l).ok()).collect();
            for d in &docs {
                *c.offered
                    .lock()
                    .unwrap()
                    .entry(d["seq"].as_u64().unwrap_or(u64::MAX))
                    .or_default() += 1;
            }
            if body.len() > limit {
                c.too_large.fetch_add(1, Ordering::SeqCst);
                return (StatusCode::PAYLOAD_TOO_LARGE, String::new());
            }
            c.docs.lock().unwrap().extend(docs);
            (StatusCode::OK, String::new())
        }
        Mode::Bulk => {
            // Pairs of an action line and a document.
            let docs: Vec<Value> = lines
                .skip(1)
                .step_by(2)
                .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
                .collect();
            let mut items = Vec::new();
            for d in docs {
                let seq = d["seq"].as_u64().unwrap_or(u64::MAX);
                let offered = {
                    let mut o = c.offered.lock().unwrap();
                    let n = o.entry(seq).or_default();
                    *n += 1;
                    *n
                };
                let status = match d["kind"].as_str() {
                    Some("mapping") => 400,
                    Some("busy") if offered == 1 => 429,
                    _ => 201,
                };
                if status == 201 {
                    c.docs.lock().unwrap().push(d);
                }
                items.push(serde_json::json!({"create": {"status": status}}));
            }
            let answer = serde_json::json!({"took": 1, "errors": true, "items": items});
            (StatusCode::OK, answer.to_string())
        }
    }
}

/// Waits for the sidecar's NACK of `revision`; returns its error.
async fn nack_of(s: &LogSetup, revision: u64) -> String {
    let id = s.sidecar.id();
    let found = wait_until(SOON, || async {
        let list = s.cp.get_json("/sidecars").await;
        list.as_array()
            .into_iter()
            .flatten()
            .any(|x| x["id"] == id.as_str() && x["lastNack"]["revision"].as_u64() == Some(revision))
    })
    .await;
    let list = s.cp.get_json("/sidecars").await;
    if found.is_err() {
        s.sidecar.proc.print_log_tail(30);
        panic!("no NACK of revision {revision}: {list}");
    }
    let me = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id.as_str())
        .unwrap();
    me["lastNack"]["error"].as_str().unwrap_or_default().to_owned()
}

async fn enforced_revision(s: &LogSetup) -> u64 {
    s.sidecar.config_dump().await["revision"].as_u64().unwrap_or(0)
}

fn http_policy(glob: &str, url: &str, format: &str) -> String {
    format!(
        r#"{{"appLogs": [{{"path": "{glob}", "parser": "json"}}],
             "sink": {{"type": "http", "url": "{url}", "format": "{format}", "batchSize": 1000, "flushInterval": "200ms"}}}}"#
    )
}

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

fn line(seq: u64) -> String {
    format!(r#"{{"seq":{seq},"msg":"order {seq} processed"}}"#)
}

async fn wait_seqs(c: &Collector, s: &Sidecar, want: &[u64]) {
    let ok = wait_until(SOON, || async {
        let got = c.seqs();
        want.iter().all(|w| got.contains(w))
    })
    .await;
    if ok.is_err() {
        s.proc.print_log_tail(40);
        panic!("wanted {want:?}, got {:?}", c.seqs());
    }
}

fn assert_no_duplicates(seqs: &[u64]) {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    let before = sorted.len();
    sorted.dedup();
    assert_eq!(before, sorted.len(), "duplicates among {seqs:?}");
}

#[tokio::test]
async fn a_policy_reading_etc_hostname_is_nacked_naming_the_field_and_the_previous_one_keeps_shipping() {
    let (c, url) = Collector::start(Mode::LimitBytes(usize::MAX)).await;
    let mut s = LogSetup::start().await;
    let log = s.logs.join("app.log");
    let good = s
        .applied(&http_policy(&log.display().to_string(), &url, "ndjson"))
        .await;

    let bad = s.put(&http_policy("/etc/hostname", &url, "ndjson")).await;
    let error = nack_of(&s, bad).await;
    assert!(error.contains("logging.appLogs[0].path"), "{error}");
    assert!(error.contains("OUTRIDER_LOG_PATHS"), "{error}");
    assert_eq!(enforced_revision(&s).await, good, "the previous policy stays in force");

    // Still shipping on the previous policy; nothing of /etc/hostname went anywhere.
    append(&log, &[line(1)]);
    wait_seqs(&c, &s.sidecar, &[1]).await;
    let docs = c.docs.lock().unwrap().clone();
    assert!(docs.iter().all(|d| d["file"] == log.display().to_string()), "{docs:?}");
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let hostname = hostname.trim();
    if hostname.len() >= 8 {
        assert!(!String::from_utf8_lossy(&c.raw.lock().unwrap()).contains(hostname));
    }
}

#[tokio::test]
async fn a_file_sink_outside_the_sink_dir_is_nacked_and_a_relative_one_writes_inside_it() {
    let mut s = LogSetup::start().await;
    let log = s.logs.join("app.log");
    let glob = log.display().to_string();
    let elsewhere = s.dir.path().join("elsewhere.ndjson");
    let doc = |path: &str| {
        format!(
            r#"{{"appLogs": [{{"path": "{glob}", "parser": "json"}}],
                 "sink": {{"type": "file", "path": "{path}", "flushInterval": "200ms"}}}}"#
        )
    };
    let bad = s.put(&doc(&elsewhere.display().to_string())).await;
    let error = nack_of(&s, bad).await;
    assert!(error.contains("logging.sink.path"), "{error}");
    assert!(error.contains("OUTRIDER_SINK_DIR"), "{error}");
    assert_eq!(enforced_revision(&s).await, 0, "nothing was applied");

    // A relative path is taken from the sink directory, `<state dir>/sinks` by default.
    s.applied(&doc("ship/web.ndjson")).await;
    append(&log, &[line(1), line(2)]);
    let shipped = s.state.join("sinks/ship/web.ndjson");
    let arrived = wait_until(SOON, || async {
        std::fs::read_to_string(&shipped).unwrap_or_default().lines().count() >= 2
    })
    .await;
    if arrived.is_err() {
        s.sidecar.proc.print_log_tail(30);
        panic!("nothing in {}", shipped.display());
    }
    assert!(!elsewhere.exists(), "the refused policy never wrote");
}

#[tokio::test]
async fn one_huge_line_a_collector_refuses_is_dropped_and_counted_and_its_neighbours_arrive_once() {
    const LIMIT: usize = 64 * 1024;
    let (c, url) = Collector::start(Mode::LimitBytes(LIMIT)).await;
    let mut s = LogSetup::start().await;
    let log = s.logs.join("app.log");
    s.applied(&http_policy(&log.display().to_string(), &url, "ndjson"))
        .await;

    // Written at once, so that they are read into one batch under the 1 MiB default.
    let mut lines: Vec<String> = (0..20).map(line).collect();
    lines.push(format!(r#"{{"seq":20,"pad":"{}"}}"#, "x".repeat(4 * LIMIT)));
    lines.extend((21..41).map(line));
    append(&log, &lines);
    let normal: Vec<u64> = (0..41).filter(|s| *s != 20).collect();
    wait_seqs(&c, &s.sidecar, &normal).await;
    let dropped = wait_until(SOON, || async {
        s.sidecar.metric("outrider_sidecar_log_records_dropped_total").await == 1
    })
    .await;
    assert!(dropped.is_ok(), "the huge record is counted as dropped");
    assert!(c.too_large.load(Ordering::SeqCst) >= 1, "the collector did refuse it");
    assert!(!c.seqs().contains(&20));

    // Nothing is resent forever: the next line goes through and the huge one is
    // never offered again.
    let offered = c.offered(20);
    append(&log, &[line(41)]);
    wait_seqs(&c, &s.sidecar, &[41]).await;
    assert_eq!(c.offered(20), offered, "the dropped record was not sent again");
    assert_no_duplicates(&c.seqs());
    let drained = wait_until(SOON, || async {
        s.sidecar.metric("outrider_sidecar_log_buffered_bytes").await == 0
    })
    .await;
    assert!(drained.is_ok(), "the spool is empty");
}

#[tokio::test]
async fn a_bulk_item_answered_429_is_retried_alone_and_a_mapping_error_is_dropped_without_duplicates() {
    let (c, url) = Collector::start(Mode::Bulk).await;
    let mut s = LogSetup::start().await;
    let log = s.logs.join("app.log");
    s.applied(&http_policy(&log.display().to_string(), &url, "elasticsearch-bulk"))
        .await;

    let lines: Vec<String> = (0..10)
        .map(|seq| match seq {
            3 => r#"{"seq":3,"kind":"mapping"}"#.to_owned(),
            6 => r#"{"seq":6,"kind":"busy"}"#.to_owned(),
            n => line(n),
        })
        .collect();
    append(&log, &lines);
    let wanted: Vec<u64> = (0..10).filter(|s| *s != 3).collect();
    wait_seqs(&c, &s.sidecar, &wanted).await;
    assert_eq!(c.offered(6), 2, "the 429 item was sent a second time");
    assert_eq!(c.offered(3), 1, "the mapping error was not retried");
    for seq in wanted.iter().filter(|s| **s != 6) {
        assert_eq!(c.offered(*seq), 1, "accepted item {seq} was never resent");
    }
    assert_no_duplicates(&c.seqs());
    let dropped = wait_until(SOON, || async {
        s.sidecar.metric("outrider_sidecar_log_records_dropped_total").await == 1
    })
    .await;
    assert!(dropped.is_ok(), "the mapping error is counted as dropped");

    append(&log, &[line(10)]);
    wait_seqs(&c, &s.sidecar, &[10]).await;
    assert_eq!(c.offered(3), 1, "and it does not block what follows");
}

#[tokio::test]
async fn an_http_sink_to_a_host_outside_outrider_sink_hosts_is_nacked_naming_the_url() {
    let (_c, url) = Collector::start(Mode::LimitBytes(usize::MAX)).await;
    let s = LogSetup::start_with(&[("OUTRIDER_SINK_HOSTS", "collector.logging.svc:9880,*.internal")]).await;
    let glob = s.logs.join("app.log").display().to_string();
    let bad = s.put(&http_policy(&glob, &url, "ndjson")).await;
    let error = nack_of(&s, bad).await;
    assert!(error.contains("logging.sink.url"), "{error}");
    assert!(error.contains("OUTRIDER_SINK_HOSTS"), "{error}");
    assert_eq!(enforced_revision(&s).await, 0);
}

#[tokio::test]
async fn a_symlink_out_of_the_log_volume_is_not_shipped_and_app_fields_cannot_forge_mesh_fields() {
    let (c, url) = Collector::start(Mode::LimitBytes(usize::MAX)).await;
    let mut s = LogSetup::start().await;
    let secret = s.dir.path().join("secret.txt");
    std::fs::write(&secret, "{\"seq\":999,\"msg\":\"top secret\"}\n").unwrap();
    std::os::unix::fs::symlink(&secret, s.logs.join("evil.log")).unwrap();
    let log = s.logs.join("app.log");
    let glob = s.logs.join("*.log").display().to_string();
    s.applied(&http_policy(&glob, &url, "ndjson")).await;

    append(
        &log,
        &[
            r#"{"seq":1,"source":"access","pod":"web-z","file":"/etc/shadow","timestamp":"1999-01-01T00:00:00Z"}"#
                .to_owned(),
        ],
    );
    wait_seqs(&c, &s.sidecar, &[1]).await;
    let r = c.docs.lock().unwrap()[0].clone();
    assert_eq!(r["source"], "app", "{r}");
    assert_eq!(r["pod"], "web-a", "{r}");
    assert_eq!(r["file"], log.display().to_string(), "{r}");
    assert_ne!(r["timestamp"], "1999-01-01T00:00:00Z", "{r}");
    assert_eq!(
        r["app"]["source"], "access",
        "the app's own values are kept under app: {r}"
    );
    assert_eq!(r["app"]["pod"], "web-z", "{r}");

    // Several scans have passed since the app line was read: the symlink was refused.
    append(&log, &[line(2)]);
    wait_seqs(&c, &s.sidecar, &[2]).await;
    assert!(!c.seqs().contains(&999));
    assert!(!String::from_utf8_lossy(&c.raw.lock().unwrap()).contains("top secret"));
}
