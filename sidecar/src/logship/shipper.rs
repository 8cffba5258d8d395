//! The shipper's own OS thread: follows the applied `LoggingPolicy` and runs one
//! pipeline for it on a current-thread tokio runtime that belongs to this thread alone.
//!
//! Why a thread of its own, and not blocking tasks beside an async sender: tailing,
//! parsing, spooling and checkpointing are blocking file work and CPU work that come
//! in bursts (an app writing thousands of lines at once). On the proxy's runtime each
//! chunk of that work holds up every request behind it, and with one worker thread the
//! whole proxy. On a thread of its own the burst only costs the proxy a share of the
//! CPU, never a turn of its event loop. One thread with its own runtime keeps the
//! pipeline's code as it was (the HTTP sink stays async, the reader and the sender
//! stay two tasks joined by a one-batch channel), with no hand-off between a blocking
//! pool and an async side. The proxy reaches it only through the bounded access queue
//! of [`LogHub`](super::LogHub) (`try_send`, never waiting); the runtime-independent
//! `tokio::sync` channels work across the two runtimes.
//!
//! A policy change stops the pipeline and starts another on the new policy, as
//! before: positions and spool carry over through the state directory. On shutdown the
//! pipeline stops reading files, ships the access records and lines in hand, and is
//! given [`SHUTDOWN_BUDGET`] to deliver them; what is not delivered by then stays in the
//! files (the checkpoint was not advanced) or in the on-disk spool for the next start.

use super::access::AccessRecord;
use super::pipeline::{pipeline, Settings};
use super::{Confinement, Figures, Identity, LogHub};
use outrider_policy::LoggingPolicy;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tracing::{info, warn, Instrument};

/// How long the shipper may go on delivering after it was told to stop.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(2);

/// Time for the thread to return once its runtime is gone, past the budget.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// What the shipper follows: `changed` fires after every applied snapshot and
/// `current` then reads its logging policy. Plain values rather than the sidecar's
/// state type, so that shipping does not depend on how that state is kept.
pub struct PolicyFeed {
    pub changed: watch::Receiver<u64>,
    pub current: Box<dyn Fn() -> Option<LoggingPolicy> + Send>,
}

impl PolicyFeed {
    pub fn new(changed: watch::Receiver<u64>, current: impl Fn() -> Option<LoggingPolicy> + Send + 'static) -> Self {
        Self {
            changed,
            current: Box::new(current),
        }
    }
}

pub struct Shipper {
    pub identity: Identity,
    pub state_dir: PathBuf,
    /// Bound of the on-disk spool (`OUTRIDER_LOG_BUFFER_BYTES`).
    pub buffer_bytes: u64,
    /// What policies may read and write.
    pub confinement: Arc<Confinement>,
    /// What an https sink is verified against (`OUTRIDER_CA_FILE` and the system roots).
    pub trust: Arc<crate::trust::Trust>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    #[error("log shipping already runs (the access queue has been taken)")]
    AlreadyRunning,
    #[error("cannot start the log shipping thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The running shipper; [`ShipperThread::join`] waits for it after shutdown.
pub struct ShipperThread {
    done: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Shipper {
    /// Starts the shipping thread; it follows `policy` until `shutdown` resolves, then
    /// flushes within [`SHUTDOWN_BUDGET`] and exits. Takes the access queue's
    /// receiving end from `hub`, so it can run once per hub.
    pub fn spawn(
        self,
        hub: &LogHub,
        policy: PolicyFeed,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<ShipperThread, ShipperError> {
        let access_rx = hub.take_access_receiver().ok_or(ShipperError::AlreadyRunning)?;
        let figures = Arc::clone(&hub.figures);
        // Built here so that a failure is reported to the caller, not lost in the thread.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ShipperError::Thread)?;
        let (done_tx, done) = oneshot::channel();
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("outrider-logship".into())
            .spawn(move || {
                let _entered = span.enter();
                rt.block_on(self.follow(policy, access_rx, figures, shutdown));
                // The pipeline was stopped or aborted above; nothing may outlive the
                // budget, so tasks still parked in the runtime are dropped, not awaited.
                rt.shutdown_timeout(Duration::ZERO);
                let _ = done_tx.send(());
            })
            .map_err(ShipperError::Thread)?;
        Ok(ShipperThread { done, thread })
    }

    async fn follow(
        self,
        mut policy: PolicyFeed,
        access_rx: mpsc::Receiver<AccessRecord>,
        figures: Arc<Figures>,
        shutdown: impl Future<Output = ()>,
    ) {
        // Shared by successive pipelines: one policy's pipeline hands it to the next.
        let access_rx = Arc::new(Mutex::new(access_rx));
        let mut current: Option<(LoggingPolicy, Running)> = None;
        tokio::pin!(shutdown);
        loop {
            policy.changed.borrow_and_update();
            let applied = (policy.current)();
            if current.as_ref().map(|(p, _)| p) != applied.as_ref() {
                if let Some((_, running)) = current.take() {
                    running.task.abort();
                    let _ = running.task.await;
                }
                if let Some(applied) = applied {
                    info!("log shipping starts on the applied logging policy");
                    let settings = Settings {
                        policy: applied.clone(),
                        identity: self.identity.clone(),
                        state_dir: self.state_dir.clone(),
                        buffer_bytes: self.buffer_bytes,
                        confinement: Arc::clone(&self.confinement),
                        trust: Arc::clone(&self.trust),
                    };
                    let (stop_tx, stop) = watch::channel(false);
                    let task = tokio::spawn(
                        pipeline(settings, Arc::clone(&figures), Arc::clone(&access_rx), stop)
                            .instrument(tracing::info_span!("logship")),
                    );
                    current = Some((applied, Running { stop: stop_tx, task }));
                }
            }
            tokio::select! {
                r = policy.changed.changed() => if r.is_err() { break },
                () = &mut shutdown => break,
            }
        }
        let Some((_, running)) = current else { return };
        let _ = running.stop.send(true);
        let mut task = running.task;
        if tokio::time::timeout(SHUTDOWN_BUDGET, &mut task).await.is_err() {
            warn!("log shipping did not finish within its shutdown budget; the rest ships after the next start");
            task.abort();
        }
    }
}

/// One pipeline and the flag that asks it to flush and end.
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ShipperThread {
    /// Waits, without blocking the caller's runtime, until the thread has flushed and
    /// returned. Bounded: the thread keeps its own budget, and a thread stuck past it
    /// (a hung file system) is left behind rather than holding up the exit.
    pub async fn join(self) {
        match tokio::time::timeout(SHUTDOWN_BUDGET + EXIT_GRACE, self.done).await {
            Ok(Ok(())) => {
                // It has left its body; the join only collects the finished thread.
                let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
            }
            Ok(Err(_)) => warn!("the log shipping thread ended abnormally"),
            Err(_) => warn!("the log shipping thread did not stop in time; leaving it behind"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logship::access::AccessRecord;
    use std::io::Write as _;
    use std::path::Path;
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    use tokio::time::MissedTickBehavior;

    /// Enough lines that reading them takes many ticks even in an optimised build.
    const LINES: u64 = 100_000;
    const TICK: Duration = Duration::from_millis(1);
    /// Bounds a broken pipeline's hang; never an assertion about speed.
    const GIVE_UP: Duration = Duration::from_secs(300);

    fn policy(dir: &Path, access: bool, flush: &str) -> LoggingPolicy {
        let d = dir.display();
        let json = format!(
            r#"{{"accessLog": {{"enabled": {access}}},
                 "appLogs": [{{"path": "{d}/app.log", "parser": "json"}}],
                 "sink": {{"type": "file", "path": "shipped.ndjson", "batchSize": 1000, "flushInterval": "{flush}"}}}}"#
        );
        outrider_policy::parse_document(json.as_bytes()).unwrap()
    }

    /// The shipper on `policy`, with what keeps it going: its stop signal and the
    /// policy feed's sender (the shipper stops when the feed closes).
    fn start(
        dir: &Path,
        hub: &LogHub,
        policy: LoggingPolicy,
    ) -> (ShipperThread, (oneshot::Sender<()>, watch::Sender<u64>)) {
        let shipper = Shipper {
            identity: Identity {
                service: "web".into(),
                ..Identity::default()
            },
            state_dir: dir.join("state"),
            buffer_bytes: 1 << 20,
            confinement: Arc::new(
                Confinement::new(
                    &format!("{}/*.log", dir.display()),
                    &dir.join("sinks"),
                    "",
                    &[&dir.join("state")],
                )
                .unwrap(),
            ),
            trust: Arc::default(),
        };
        let (changes, changed) = watch::channel(0);
        let feed = PolicyFeed::new(changed, move || Some(policy.clone()));
        let (stop_tx, stop) = oneshot::channel::<()>();
        let thread = shipper
            .spawn(hub, feed, async move {
                let _ = stop.await;
            })
            .unwrap();
        (thread, (stop_tx, changes))
    }

    fn shipped_lines(dir: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("sinks/shipped.ndjson"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    struct Ticks {
        count: u64,
        elapsed: Duration,
        worst_late: Duration,
    }

    impl Ticks {
        fn per_ms(&self) -> f64 {
            self.count as f64 / (self.elapsed.as_secs_f64() * 1000.0)
        }
    }

    /// Ticks every `TICK` on the calling runtime until `done` says so, measuring how
    /// late each tick ran: a runtime busy with something else ticks late and seldom.
    async fn tick_until(mut done: impl FnMut(u64) -> bool) -> Ticks {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        interval.tick().await;
        let started = Instant::now();
        let (mut count, mut worst_late) = (0, Duration::ZERO);
        loop {
            let due = interval.tick().await;
            worst_late = worst_late.max(tokio::time::Instant::now() - due);
            count += 1;
            if done(count) {
                return Ticks {
                    count,
                    elapsed: started.elapsed(),
                    worst_late,
                };
            }
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let wait = async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(GIVE_UP, wait)
            .await
            .unwrap_or_else(|_| panic!("gave up waiting for {what}"));
    }

    #[test]
    fn a_burst_of_app_log_lines_does_not_delay_the_proxy_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.path().join("app.log")).unwrap());
        for n in 0..LINES {
            writeln!(
                f,
                r#"{{"level":"info","n":{n},"msg":"handled a request, with padding like a real line"}}"#
            )
            .unwrap();
        }
        f.into_inner().unwrap().sync_all().unwrap();

        // The proxy's runtime, single-threaded as with `OUTRIDER_WORKER_THREADS=1`.
        let proxy = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let hub = LogHub::new();
        let figures = Arc::clone(&hub.figures);
        let pushed = proxy.block_on(async {
            // Same runtime, same machine load, no shipping: what on-time ticking is here.
            let baseline = tick_until(|n| n >= 500).await;

            let (thread, stop) = start(dir.path(), &hub, policy(dir.path(), true, "50ms"));
            let read = figures.clone();
            let burst = tokio::time::timeout(
                GIVE_UP,
                tick_until(|_| {
                    // The proxy keeps queueing access records meanwhile, as requests would.
                    hub.push_access(AccessRecord::default());
                    read.lines_read.load(Ordering::Relaxed) >= LINES
                }),
            )
            .await
            .expect("the pipeline reads the whole file");
            println!(
                "baseline: {} ticks in {:?} (worst {:?} late); while reading {LINES} lines: {} ticks in {:?} (worst {:?} late)",
                baseline.count, baseline.elapsed, baseline.worst_late, burst.count, burst.elapsed, burst.worst_late
            );
            assert!(
                burst.elapsed >= TICK * 50,
                "the file was read in {:?}, too fast to show anything: make it larger",
                burst.elapsed
            );
            // With the pipeline on this runtime, the read loop keeps the runtime busy
            // and its timers unpolled: measured so, ticks came 60 times rarer than at
            // rest (0.015/ms against 0.914/ms), against 0.6 to 0.8 of the rest rate
            // with the pipeline on its thread, on a two-core machine under load 17.
            assert!(
                burst.per_ms() >= baseline.per_ms() / 4.0,
                "the proxy runtime ticked {:.3}/ms while the file was read, against {:.3}/ms at rest",
                burst.per_ms(),
                baseline.per_ms()
            );
            assert!(
                burst.worst_late * 4 < burst.elapsed,
                "a tick ran {:?} late during a read of {:?}",
                burst.worst_late,
                burst.elapsed
            );

            until("every line and access record to ship", || {
                let v = figures.values();
                v.shipped + v.dropped >= LINES + burst.count
            })
            .await;
            let _ = stop.0.send(());
            thread.join().await;
            burst.count
        });
        let shipped = shipped_lines(dir.path());
        let app = shipped.iter().filter(|r| r["source"] == "app").count() as u64;
        let access = shipped.iter().filter(|r| r["source"] == "access").count() as u64;
        let v = figures.values();
        assert_eq!(app, LINES, "every line of the file is shipped");
        assert_eq!(access, v.access_records, "every access record taken is shipped");
        assert_eq!(v.access_records + v.dropped, pushed, "each push was taken or counted");
    }

    #[test]
    fn on_stop_the_thread_ships_the_access_records_it_holds_and_exits() {
        let dir = tempfile::tempdir().unwrap();
        let proxy = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let hub = LogHub::new();
        proxy.block_on(async {
            // A flush interval far beyond the test: only the stop can make it ship.
            let (thread, stop) = start(dir.path(), &hub, policy(dir.path(), true, "1h"));
            for _ in 0..10 {
                hub.push_access(AccessRecord::default());
            }
            let figures = Arc::clone(&hub.figures);
            until("the shipper to take the records", || {
                figures.values().access_records == 10
            })
            .await;
            assert_eq!(figures.values().shipped, 0, "nothing ships before the interval");
            let _ = stop.0.send(());
            thread.join().await;
        });
        let shipped = shipped_lines(dir.path());
        assert_eq!(shipped.len(), 10);
        assert!(shipped.iter().all(|r| r["source"] == "access" && r["service"] == "web"));
        assert_eq!(hub.figures.values().shipped, 10);
    }
}
