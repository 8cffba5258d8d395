//! One pipeline for one logging policy: a reader (files + access records → batches)
//! and a sender (batches → sink, spool on failure, checkpoint on success), run by the
//! shipper's thread (`shipper`). Positions and spool live in the state directory, so a
//! restart on a new policy (or a crash) costs at most duplicates.

use super::access::{self, AccessRecord};
use super::confine::Confinement;
use super::parse::{stamp_app_record, Parser};
use super::sink::{Record, SinkClient, SinkError};
use super::spool::{Batch, Spool};
use super::tail::{Flow, Position, Tailer};
use super::{rfc3339_millis, Figures, Identity};
use outrider_policy::{LogFormat, LoggingPolicy};
use outrider_runtime::fs::{write_atomic_with, WriteOptions};
use outrider_runtime::time::now_ms;
use outrider_runtime::Backoff;
use serde_json::Value;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::time::Instant;
use tracing::{info, warn};

/// How often globs are matched again (new files, rotation, truncation).
const SCAN_EVERY: Duration = Duration::from_millis(250);
/// Between deliveries to a failing sink; attempt 1 waits up to 200 ms, at most 5 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
const CHECKPOINT: &str = "log-positions.json";
const SPOOL: &str = "log-spool";

/// What one pipeline runs on: the policy it was started for and where it keeps state.
pub struct Settings {
    pub policy: LoggingPolicy,
    pub identity: Identity,
    pub state_dir: PathBuf,
    /// Bound of the on-disk spool (`OUTRIDER_LOG_BUFFER_BYTES`).
    pub buffer_bytes: u64,
    /// What may be read and written (`OUTRIDER_LOG_PATHS`, `OUTRIDER_SINK_DIR`, …).
    pub confinement: Arc<Confinement>,
    /// What an https sink is verified against.
    pub trust: Arc<crate::trust::Trust>,
}

/// Reads and delivers until `stop` turns true (then flushes what it holds and ends)
/// or the task is aborted (a policy change).
pub async fn pipeline(
    settings: Settings,
    figures: Arc<Figures>,
    access_rx: Arc<Mutex<mpsc::Receiver<AccessRecord>>>,
    stop: watch::Receiver<bool>,
) {
    let Settings {
        policy,
        identity,
        state_dir,
        buffer_bytes,
        confinement,
        trust,
    } = settings;
    // Checked before the policy was applied; checked again here so that no way of
    // starting a pipeline can skip it.
    let refused = confinement.check(&policy);
    if !refused.is_empty() {
        let why: Vec<String> = refused.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
        warn!(errors = %why.join("; "), "the logging policy reaches outside this sidecar's settings; log shipping is off");
        return;
    }
    let mut sources = Vec::new();
    for l in &policy.app_logs {
        match Parser::compile(l) {
            Ok(p) => sources.push((l.path.clone(), p)),
            // Validated by the control plane already; only a changed regex engine
            // could get here.
            Err(e) => warn!(path = %l.path, error = %e, "skipping an app log source"),
        }
    }
    let checkpoint = state_dir.join(CHECKPOINT);
    let resume = load_positions(&checkpoint);
    let spool = match Spool::open(&state_dir.join(SPOOL), buffer_bytes) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot open the log spool; log shipping is off");
            return;
        }
    };
    let sink = SinkClient::new(&policy.sink, identity.clone(), Arc::clone(&confinement), &trust);
    // One batch in hand on each side: the reader waits (backpressure) while the
    // sender is busy or the spool is full.
    let (tx, rx) = mpsc::channel::<Batch>(1);
    let parsers: Vec<Parser> = sources.iter().map(|(_, p)| p.clone()).collect();
    let reader = read_loop(
        Tailer::new(sources, resume, confinement),
        parsers,
        policy,
        identity,
        Arc::clone(&figures),
        access_rx,
        tx,
        stop,
    );
    let sender = send_loop(rx, spool, sink, figures, checkpoint);
    tokio::join!(reader, sender);
}

/// The batch being filled: it closes at `batchSize` records or `batchBytes` bytes,
/// whichever comes first. A record larger than the byte bound is taken by an empty
/// batch only, so it travels alone and never makes its neighbours' body too large.
struct Filling {
    records: Vec<Record>,
    bytes: u64,
    max_records: usize,
    max_bytes: u64,
}

impl Filling {
    fn new(max_records: usize, max_bytes: u64) -> Self {
        Self {
            records: Vec::with_capacity(max_records.min(4096)),
            bytes: 0,
            max_records,
            max_bytes,
        }
    }

    /// Takes `r`, or gives it back when the batch has no room for it.
    fn offer(&mut self, r: Record) -> Result<(), Record> {
        let size = r.size();
        if self.is_full() || (!self.records.is_empty() && self.bytes + size > self.max_bytes) {
            return Err(r);
        }
        self.bytes += size;
        self.records.push(r);
        Ok(())
    }

    fn is_full(&self) -> bool {
        self.records.len() >= self.max_records || self.bytes >= self.max_bytes
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn take(&mut self) -> Vec<Record> {
        self.bytes = 0;
        std::mem::replace(&mut self.records, Vec::with_capacity(self.max_records.min(4096)))
    }
}

/// Access records between the queue and the batch. One that did not fit waits in
/// `carry` for the next batch: unlike a file line it exists nowhere else, and it
/// covers no file position, so it may open the next batch.
struct AccessFeed<'a> {
    rx: tokio::sync::MutexGuard<'a, mpsc::Receiver<AccessRecord>>,
    carry: Option<Record>,
    format: LogFormat,
    identity: &'a Identity,
    figures: &'a Figures,
}

impl AccessFeed<'_> {
    fn record(&self, r: &AccessRecord) -> Record {
        self.figures.access_records.fetch_add(1, Ordering::Relaxed);
        let m = access::to_json(r, self.format, self.identity);
        Record {
            unix_ms: r.unix_ms,
            json: Value::Object(m).to_string(),
        }
    }

    /// Offers `r` to the batch; keeps it for the next one when it does not fit.
    fn offer(&mut self, batch: &mut Filling, r: Record) -> bool {
        match batch.offer(r) {
            Ok(()) => true,
            Err(r) => {
                self.carry = Some(r);
                false
            }
        }
    }

    /// Moves queued records into the batch while it has room.
    fn fill(&mut self, batch: &mut Filling) {
        if let Some(r) = self.carry.take() {
            if !self.offer(batch, r) {
                return;
            }
        }
        while !batch.is_full() {
            let Ok(r) = self.rx.try_recv() else { break };
            let r = self.record(&r);
            if !self.offer(batch, r) {
                return;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    mut tailer: Tailer,
    parsers: Vec<Parser>,
    policy: LoggingPolicy,
    identity: Identity,
    figures: Arc<Figures>,
    access_rx: Arc<Mutex<mpsc::Receiver<AccessRecord>>>,
    tx: mpsc::Sender<Batch>,
    mut stop: watch::Receiver<bool>,
) {
    let mut access = AccessFeed {
        rx: access_rx.lock().await,
        carry: None,
        format: policy.access_log.format,
        identity: &identity,
        figures: &figures,
    };
    let flush = policy.sink.flush_interval.as_std();
    let redact: Vec<String> = policy
        .access_log
        .redact_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let has_files = !policy.app_logs.is_empty();
    let mut batch = Filling::new(policy.sink.batch_size as usize, policy.sink.batch_bytes);
    let mut deadline = Instant::now() + flush;
    let mut next_scan = Instant::now();
    loop {
        if stopping(&stop) {
            // Shutdown: file lines not read yet stay in the files (the checkpoint says
            // where to resume), but access records live only in memory, so they and
            // the lines in hand go out now.
            loop {
                access.fill(&mut batch);
                if batch.is_empty() {
                    return;
                }
                let b = Batch {
                    records: batch.take(),
                    positions: tailer.positions(),
                };
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        }
        if has_files && Instant::now() >= next_scan {
            tailer.scan();
            next_scan = Instant::now() + SCAN_EVERY;
        }
        let mut read = 0;
        // Set when the tailer offered a record the batch had no room for.
        let mut full = false;
        if has_files {
            let now = now_ms();
            let mut emit = |line: super::tail::Line<'_>| {
                if batch.is_full() {
                    full = true;
                    return Flow::Break(());
                }
                let mut m = parsers[line.source].parse(line.text);
                redact_fields(&mut m, &redact);
                stamp_app_record(&mut m, &identity, line.path, rfc3339_millis(now));
                let record = Record {
                    unix_ms: now,
                    json: Value::Object(m).to_string(),
                };
                match batch.offer(record) {
                    Ok(()) => Flow::Continue(()),
                    // The tailer rewinds: the line is read again for the next batch.
                    Err(_) => {
                        full = true;
                        Flow::Break(())
                    }
                }
            };
            read = tailer.read(&mut emit);
            figures.lines_read.fetch_add(read, Ordering::Relaxed);
        }
        access.fill(&mut batch);
        let due = Instant::now() >= deadline;
        if full || batch.is_full() || access.carry.is_some() || (due && !batch.is_empty()) {
            let b = Batch {
                records: batch.take(),
                positions: tailer.positions(),
            };
            if tx.send(b).await.is_err() {
                return;
            }
            deadline = Instant::now() + flush;
            continue;
        }
        if due {
            deadline = Instant::now() + flush;
        }
        if read > 0 || (has_files && tailer.behind()) {
            tokio::task::yield_now().await;
            continue;
        }
        // Idle: wake for an access record, the batch deadline or the next scan.
        let wake = if has_files { next_scan.min(deadline) } else { deadline };
        tokio::select! {
            r = access.rx.recv() => match r {
                Some(r) => {
                    let r = access.record(&r);
                    access.offer(&mut batch, r);
                }
                None => return,
            },
            () = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Asked to stop, or its owner is gone (which asks the same).
fn stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Fields of an app's JSON record named like a redacted header are masked too: an
/// app that logs its request headers must not leak what the access log hides.
fn redact_fields(m: &mut serde_json::Map<String, Value>, redact: &[String]) {
    if redact.is_empty() {
        return;
    }
    for (k, v) in m.iter_mut() {
        if redact.iter().any(|r| r.eq_ignore_ascii_case(k)) {
            *v = access::REDACTED.into();
        } else if let Value::Object(inner) = v {
            for (k2, v2) in inner.iter_mut() {
                if redact.iter().any(|r| r.eq_ignore_ascii_case(k2)) {
                    *v2 = access::REDACTED.into();
                }
            }
        }
    }
}

async fn send_loop(
    mut rx: mpsc::Receiver<Batch>,
    mut spool: Spool,
    sink: SinkClient,
    figures: Arc<Figures>,
    checkpoint: PathBuf,
) {
    let figures = &*figures;
    let mut attempt = 0u32;
    let mut open = true;
    loop {
        figures.buffered_bytes.store(spool.bytes(), Ordering::Relaxed);
        if spool.is_empty() {
            if !open {
                return;
            }
            let Some(batch) = rx.recv().await else { return };
            figures.buffered_bytes.store(batch.bytes(), Ordering::Relaxed);
            match deliver(&sink, &batch, figures, &checkpoint).await {
                Ok(()) => attempt = 0,
                Err(rest) => {
                    if let Err(e) = spool.push(&rest) {
                        // Cannot buffer on disk: keep retrying this batch in hand
                        // rather than lose it; the reader waits meanwhile.
                        warn!(error = %e, "cannot spool a batch; retrying it from memory");
                        retry_in_memory(&sink, rest, figures, &checkpoint).await;
                    }
                    attempt = 1;
                }
            }
            continue;
        }
        // The sink failed recently: deliver the spool in order, oldest first.
        let head = match spool.front() {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "dropping an unreadable spooled batch");
                spool.pop_front();
                continue;
            }
        };
        match deliver(&sink, &head, figures, &checkpoint).await {
            Ok(()) => {
                spool.pop_front();
                if spool.is_empty() {
                    info!("log sink recovered; spool delivered");
                }
                attempt = 0;
                continue;
            }
            // Only what is left goes back: what the sink took is never sent again.
            Err(rest) if rest.records.len() < head.records.len() => {
                if let Err(e) = spool.replace_front(&rest) {
                    warn!(error = %e, "cannot rewrite a spooled batch; it is sent whole again");
                }
            }
            Err(_) => {}
        }
        attempt = attempt.saturating_add(1);
        let wait = tokio::time::sleep(RETRY.delay(attempt));
        tokio::pin!(wait);
        // While waiting, take new batches into the spool as long as it has room;
        // when it is full the reader blocks instead of memory growing.
        loop {
            tokio::select! {
                () = &mut wait => break,
                b = rx.recv(), if open && spool.has_room(0) => match b {
                    Some(b) => {
                        if let Err(e) = spool.push(&b) {
                            warn!(error = %e, "cannot spool a batch; retrying it from memory");
                            retry_in_memory(&sink, b, figures, &checkpoint).await;
                        }
                        figures.buffered_bytes.store(spool.bytes(), Ordering::Relaxed);
                    }
                    None => open = false,
                },
            }
        }
    }
}

/// Sends one batch and, once every record in it is delivered or dropped, checkpoints
/// its positions. A body the sink rejects (413, 400, 422) is split in halves and each
/// half sent in turn, so a record it refuses alone is dropped and counted while its
/// neighbours go through. `Err` holds the records still to send (the whole rest after
/// a retryable failure, or the items an Elasticsearch `_bulk` answer asked for again),
/// with the batch's positions: the caller retries only those.
async fn deliver(sink: &SinkClient, batch: &Batch, figures: &Figures, checkpoint: &Path) -> Result<(), Batch> {
    let mut parts: VecDeque<&[Record]> = VecDeque::from([&batch.records[..]]);
    let mut again: Vec<Record> = Vec::new();
    while let Some(part) = parts.pop_front() {
        let n = part.len() as u64;
        match sink.send(part).await {
            Ok(accepted) => {
                let retry = accepted.retry.len() as u64;
                figures
                    .shipped
                    .fetch_add(n - retry - accepted.refused, Ordering::Relaxed);
                if accepted.refused > 0 {
                    figures.dropped.fetch_add(accepted.refused, Ordering::Relaxed);
                    warn!(
                        records = accepted.refused,
                        first = accepted.refusal.as_deref().unwrap_or(""),
                        "the sink refused records for good; dropped"
                    );
                }
                if retry > 0 {
                    figures.sink_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(records = retry, "the sink asked for records again");
                    again.extend(accepted.retry.iter().filter_map(|&i| part.get(i).cloned()));
                }
            }
            Err(SinkError::Rejected(e)) if part.len() > 1 => {
                // Halves, in order: the earlier records go first.
                let (a, b) = part.split_at(part.len() / 2);
                parts.push_front(b);
                parts.push_front(a);
                info!(error = %e, records = n, "the sink rejected a batch; sending it in halves");
            }
            Err(e @ (SinkError::Rejected(_) | SinkError::Refused(_))) => {
                figures.sink_errors.fetch_add(1, Ordering::Relaxed);
                figures.dropped.fetch_add(n, Ordering::Relaxed);
                warn!(error = %e, records = n, "the sink refused records for good; dropped");
            }
            Err(e @ SinkError::Retry(_)) => {
                figures.sink_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, records = n, "log delivery failed");
                again.extend_from_slice(part);
                again.extend(parts.drain(..).flatten().cloned());
                break;
            }
        }
    }
    if !again.is_empty() {
        return Err(Batch {
            records: again,
            positions: batch.positions.clone(),
        });
    }
    save_positions(checkpoint, &batch.positions);
    Ok(())
}

async fn retry_in_memory(sink: &SinkClient, mut batch: Batch, figures: &Figures, checkpoint: &Path) {
    let mut attempt = 1;
    while let Err(rest) = deliver(sink, &batch, figures, checkpoint).await {
        batch = rest;
        tokio::time::sleep(RETRY.delay(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

fn load_positions(path: &Path) -> Vec<Position> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_positions(path: &Path, positions: &[Position]) {
    let data = serde_json::to_vec(positions).unwrap_or_default();
    // Not durable: after a power loss an older checkpoint means duplicates, not loss,
    // and an fsync per delivered batch would pace shipping by the disk.
    let not_durable = WriteOptions {
        durable: false,
        ..WriteOptions::default()
    };
    if let Err(e) = write_atomic_with(path, &data, &not_durable) {
        warn!(path = %path.display(), error = %e, "cannot save log positions");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;
    use std::sync::Mutex as StdMutex;

    fn record(text: &str) -> Record {
        Record {
            unix_ms: 1,
            json: serde_json::json!({ "message": text }).to_string(),
        }
    }

    #[test]
    fn a_batch_closes_at_its_byte_bound_and_a_larger_record_travels_alone() {
        let mut b = Filling::new(100, 100);
        b.offer(record("a")).unwrap(); // 15 + 16 bytes
        b.offer(record("b")).unwrap();
        let big = record(&"x".repeat(200));
        let big = b.offer(big).unwrap_err();
        assert_eq!(b.take().len(), 2, "the big one did not join its neighbours");
        b.offer(big).unwrap();
        assert!(b.is_full(), "alone, and nothing after it");
        assert!(b.offer(record("c")).is_err());
        let mut counted = Filling::new(2, 1 << 20);
        counted.offer(record("a")).unwrap();
        counted.offer(record("b")).unwrap();
        assert!(counted.offer(record("c")).is_err(), "records bound it as well");
    }

    /// A collector on a real socket; `answer` decides each POST from its body.
    async fn collector(
        answer: impl Fn(&str) -> (StatusCode, String) + Clone + Send + Sync + 'static,
    ) -> (String, Arc<StdMutex<Vec<String>>>) {
        let got = Arc::new(StdMutex::new(Vec::new()));
        let seen = Arc::clone(&got);
        let app = axum::Router::new().route(
            "/in",
            post(move |State(()): State<()>, body: Bytes| {
                let answer = answer.clone();
                let seen = Arc::clone(&seen);
                async move {
                    let text = String::from_utf8_lossy(&body).into_owned();
                    let (status, reply) = answer(&text);
                    if status.is_success() {
                        seen.lock().unwrap().push(text);
                    }
                    (status, reply)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/in", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app.with_state(())).await });
        (url, got)
    }

    fn client(url: &str, format: &str, dir: &Path) -> SinkClient {
        let sink: outrider_policy::Sink =
            serde_json::from_str(&format!(r#"{{"type":"http","url":"{url}","format":"{format}"}}"#)).unwrap();
        let confinement = Confinement::new("/var/log/**", &dir.join("sinks"), "", &[]).unwrap();
        SinkClient::new(
            &sink,
            Identity::default(),
            Arc::new(confinement),
            &crate::trust::Trust::default(),
        )
    }

    #[tokio::test]
    async fn a_record_refused_alone_is_dropped_and_counted_and_its_neighbours_are_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (url, got) = collector(|body: &str| {
            if body.len() > 2000 {
                (StatusCode::PAYLOAD_TOO_LARGE, String::new())
            } else {
                (StatusCode::OK, String::new())
            }
        })
        .await;
        let sink = client(&url, "ndjson", dir.path());
        let mut records: Vec<Record> = (0..5).map(|i| record(&format!("before {i}"))).collect();
        records.push(record(&"x".repeat(3000)));
        records.extend((0..5).map(|i| record(&format!("after {i}"))));
        let batch = Batch {
            records,
            positions: Vec::new(),
        };
        let figures = Figures::default();
        let checkpoint = dir.path().join(CHECKPOINT);
        deliver(&sink, &batch, &figures, &checkpoint).await.unwrap();
        let delivered: Vec<String> = got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        assert_eq!(delivered.len(), 10, "{delivered:?}");
        assert!(
            delivered[0].contains("before 0") && delivered[9].contains("after 4"),
            "in order"
        );
        let v = figures.values();
        assert_eq!((v.shipped, v.dropped), (10, 1));
        assert!(checkpoint.exists(), "the batch is done: its positions are saved");
    }

    #[tokio::test]
    async fn bulk_items_answered_429_are_sent_again_alone_and_refused_items_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let busy_once = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (url, got) = collector(move |body: &str| {
            let docs: Vec<&str> = body.lines().skip(1).step_by(2).collect();
            let items: Vec<String> = docs
                .iter()
                .map(|d| {
                    let status = if d.contains("mapping") {
                        400
                    } else if d.contains("busy") && busy_once.swap(false, Ordering::SeqCst) {
                        429
                    } else {
                        201
                    };
                    format!(r#"{{"create":{{"status":{status}}}}}"#)
                })
                .collect();
            (
                StatusCode::OK,
                format!(r#"{{"errors":true,"items":[{}]}}"#, items.join(",")),
            )
        })
        .await;
        let sink = client(&url, "elasticsearch-bulk", dir.path());
        let batch = Batch {
            records: vec![record("ok 1"), record("mapping"), record("busy"), record("ok 2")],
            positions: Vec::new(),
        };
        let figures = Figures::default();
        let checkpoint = dir.path().join(CHECKPOINT);
        let rest = deliver(&sink, &batch, &figures, &checkpoint).await.unwrap_err();
        assert_eq!(rest.records, [record("busy")], "only the 429 item comes back");
        assert!(!checkpoint.exists(), "not done yet: no checkpoint");
        deliver(&sink, &rest, &figures, &checkpoint).await.unwrap();
        let bodies = got.lock().unwrap().clone();
        assert_eq!(bodies.len(), 2);
        assert_eq!(
            bodies[1].lines().count(),
            2,
            "the retry carries one action and one document"
        );
        let v = figures.values();
        assert_eq!((v.shipped, v.dropped), (3, 1));
        assert!(checkpoint.exists());
    }
}
