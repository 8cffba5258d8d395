//! One pipeline for one logging policy: a reader (files + access records → batches)
//! and a sender (batches → sink, spool on failure, checkpoint on success), run by the
//! shipper's thread (`shipper`). Positions and spool live in the state directory, so a
//! restart on a new policy (or a crash) costs at most duplicates.

use super::access::{self, AccessRecord};
use super::parse::{enrich, Parser};
use super::sink::{Record, SinkClient, SinkError};
use super::spool::{Batch, Spool};
use super::tail::{Position, Tailer};
use super::{rfc3339_millis, Figures, Identity};
use outrider_policy::LoggingPolicy;
use outrider_runtime::fs::{write_atomic_with, WriteOptions};
use outrider_runtime::time::now_ms;
use outrider_runtime::Backoff;
use serde_json::Value;
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
    } = settings;
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
    let sink = SinkClient::new(&policy.sink, identity.clone());
    // One batch in hand on each side: the reader waits (backpressure) while the
    // sender is busy or the spool is full.
    let (tx, rx) = mpsc::channel::<Batch>(1);
    let parsers: Vec<Parser> = sources.iter().map(|(_, p)| p.clone()).collect();
    let reader = read_loop(
        Tailer::new(sources, resume),
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
    let mut access_rx = access_rx.lock().await;
    let batch_size = policy.sink.batch_size as usize;
    let flush = policy.sink.flush_interval.as_std();
    let format = policy.access_log.format;
    let redact: Vec<String> = policy
        .access_log
        .redact_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let has_files = !policy.app_logs.is_empty();
    let mut records: Vec<Record> = Vec::with_capacity(batch_size);
    let mut deadline = Instant::now() + flush;
    let mut next_scan = Instant::now();
    loop {
        if stopping(&stop) {
            // Shutdown: file lines not read yet stay in the files (the checkpoint says
            // where to resume), but access records live only in memory, so they and
            // the lines in hand go out now.
            loop {
                while records.len() < batch_size {
                    let Ok(r) = access_rx.try_recv() else { break };
                    figures.access_records.fetch_add(1, Ordering::Relaxed);
                    push_access(&mut records, &r, format, &identity);
                }
                if records.is_empty() {
                    return;
                }
                let batch = Batch {
                    records: std::mem::replace(&mut records, Vec::with_capacity(batch_size)),
                    positions: tailer.positions(),
                };
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
        }
        if has_files && Instant::now() >= next_scan {
            tailer.scan();
            next_scan = Instant::now() + SCAN_EVERY;
        }
        let mut read = 0;
        if has_files {
            let now = now_ms();
            let mut emit = |line: super::tail::Line<'_>| {
                let mut m = parsers[line.source].parse(line.text);
                redact_fields(&mut m, &redact);
                m.entry("timestamp").or_insert_with(|| rfc3339_millis(now).into());
                m.entry("source").or_insert_with(|| "app".into());
                m.entry("file").or_insert_with(|| line.path.into());
                enrich(&mut m, &identity);
                records.push(Record {
                    unix_ms: now,
                    json: Value::Object(m).to_string(),
                });
            };
            read = tailer.read(&mut emit);
            figures.lines_read.fetch_add(read, Ordering::Relaxed);
        }
        while records.len() < batch_size {
            match access_rx.try_recv() {
                Ok(r) => {
                    figures.access_records.fetch_add(1, Ordering::Relaxed);
                    push_access(&mut records, &r, format, &identity);
                }
                Err(_) => break,
            }
        }
        let due = Instant::now() >= deadline;
        if records.len() >= batch_size || (due && !records.is_empty()) {
            let batch = Batch {
                records: std::mem::replace(&mut records, Vec::with_capacity(batch_size)),
                positions: tailer.positions(),
            };
            if tx.send(batch).await.is_err() {
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
            r = access_rx.recv() => match r {
                Some(r) => {
                    figures.access_records.fetch_add(1, Ordering::Relaxed);
                    push_access(&mut records, &r, format, &identity);
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

fn push_access(records: &mut Vec<Record>, r: &AccessRecord, format: outrider_policy::LogFormat, id: &Identity) {
    let m = access::to_json(r, format, id);
    records.push(Record {
        unix_ms: r.unix_ms,
        json: Value::Object(m).to_string(),
    });
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
                Err(()) => {
                    if let Err(e) = spool.push(&batch) {
                        // Cannot buffer on disk: keep retrying this batch in hand
                        // rather than lose it; the reader waits meanwhile.
                        warn!(error = %e, "cannot spool a batch; retrying it from memory");
                        retry_in_memory(&sink, batch, figures, &checkpoint).await;
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
        if deliver(&sink, &head, figures, &checkpoint).await.is_ok() {
            spool.pop_front();
            if spool.is_empty() {
                info!("log sink recovered; spool delivered");
            }
            attempt = 0;
            continue;
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

/// Sends one batch; on success checkpoints its positions.
async fn deliver(sink: &SinkClient, batch: &Batch, figures: &Figures, checkpoint: &Path) -> Result<(), ()> {
    let n = batch.records.len() as u64;
    match sink.send(&batch.records).await {
        Ok(()) => {
            figures.shipped.fetch_add(n, Ordering::Relaxed);
        }
        Err(SinkError::Refused(e)) => {
            figures.sink_errors.fetch_add(1, Ordering::Relaxed);
            figures.dropped.fetch_add(n, Ordering::Relaxed);
            warn!(error = %e, records = n, "the sink refused a batch");
        }
        Err(e @ SinkError::Retry(_)) => {
            figures.sink_errors.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, records = n, "log delivery failed");
            return Err(());
        }
    }
    save_positions(checkpoint, &batch.positions);
    Ok(())
}

async fn retry_in_memory(sink: &SinkClient, batch: Batch, figures: &Figures, checkpoint: &Path) {
    let mut attempt = 1;
    while deliver(sink, &batch, figures, checkpoint).await.is_err() {
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
