//! `outrider-fleet-sim`: many simulated sidecars on the real control stream, for load
//! and dashboard tests and `bench/fleet.sh`. Each one says Hello, ACKs every snapshot
//! and sends a health report every interval with counters that move, as a real sidecar
//! would; it proxies nothing. Prints `ready N` once every stream has its first snapshot.
//!
//! For the fleet benchmark it can also spread its sidecars over several services,
//! replace them one by one as a rolling restart does (`--roll-every`, printing
//! `rolled N`), and keep counters of what it received in a JSON file (`--stats-file`)
//! whose `sinceMark` figures restart at every SIGUSR1.

use clap::Parser;
use outrider_proto::v1::control_plane_client::ControlPlaneClient;
use outrider_proto::v1::{
    control_message, sidecar_message, Ack, ControlMessage, DestinationsAck, HealthReport, Hello, Identity,
    LatencySummary, SidecarMessage, Watch,
};
use outrider_runtime::backoff::Backoff;
use outrider_runtime::fs::{write_atomic_with, WriteOptions};
use outrider_runtime::time::now_ms;
use prost::Message;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "outrider-fleet-sim", about = "Simulated sidecars on the control stream")]
struct Args {
    /// The control plane's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:18000")]
    control_plane: String,
    /// The service every sidecar registers as; with `--services N` > 1, the prefix of
    /// the service names `SERVICE-000`, `SERVICE-001`, ….
    #[arg(long, default_value = "load")]
    service: String,
    /// How many sidecars.
    #[arg(long, default_value_t = 500)]
    count: usize,
    /// Subsets, assigned round-robin.
    #[arg(long, default_value = "v1,v2")]
    versions: String,
    #[arg(long, env = "OUTRIDER_REGISTRATION_TOKEN", default_value = "")]
    token: String,
    /// Between health reports.
    #[arg(long, default_value_t = 1000)]
    report_ms: u64,
    /// Spread `--count` round-robin over this many services (1: all are `--service`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    services: u32,
    /// Pods are named `PREFIX-0000`, `PREFIX-0001`, … (default: `--service`).
    #[arg(long)]
    pod_prefix: Option<String>,
    /// Number of the first pod (and offset of its ports), so that a second process's
    /// pods join the fleet instead of displacing the first one's.
    #[arg(long, default_value_t = 0)]
    start_index: usize,
    /// Rolling restart: after the first SIGUSR1 that follows `ready`, replace each
    /// sidecar in turn by a new pod (`…-r1`): the new one connects and gets its first
    /// snapshot, then the old stream closes cleanly; this many milliseconds between
    /// replacements. Prints `rolled N` when done.
    #[arg(long, value_name = "MS")]
    roll_every: Option<u64>,
    /// Rewrite this file every second with JSON counters (streams ready, messages and
    /// bytes received, and since the last SIGUSR1: how many sidecars received anything
    /// and how much).
    #[arg(long, value_name = "PATH")]
    stats_file: Option<PathBuf>,
    /// Each sidecar looks up this many other services of this process's `--services`
    /// (chosen by its index), with a `Watch` after its first snapshot, as an app's
    /// first calls would make a real sidecar do.
    #[arg(long, default_value_t = 3)]
    lookups: usize,
    /// Services every sidecar also looks up (comma-separated), e.g. a service of
    /// another fleet-sim process.
    #[arg(long, default_value = "")]
    watch: String,
}

/// Streams per HTTP/2 connection, under the servers' usual concurrent-stream limits.
const STREAMS_PER_CONNECTION: usize = 50;
/// How long a closing stream waits for the control plane to end its side, so that the
/// close is seen as clean rather than as a cancelled stream.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Between attempts of a stream that broke (a real sidecar's defaults).
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// What every simulated sidecar shares: the arguments and the counters.
struct Fleet {
    args: Args,
    versions: Vec<String>,
    stats: Stats,
}

impl Fleet {
    /// The services the sidecar in `slot` looks up: `--lookups` others of this
    /// process's services (spread by slot), and `--watch`.
    fn lookups(&self, slot: usize) -> Vec<String> {
        let args = &self.args;
        let n = args.services as usize;
        let own = slot % n;
        let mut names: Vec<String> = if n > 1 {
            (1..n)
                .map(|step| (own + step * 7 + slot) % n)
                .filter(|k| *k != own)
                .take(args.lookups)
                .map(|k| format!("{}-{k:03}", args.service))
                .collect()
        } else {
            Vec::new()
        };
        names.extend(
            args.watch
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
        names.sort();
        names.dedup();
        names
    }

    /// The identity of the sidecar in `slot` (0..count); `generation` counts the
    /// replacements of a rolling restart (0: the original pod).
    fn identity(&self, slot: usize, generation: u32) -> Identity {
        let args = &self.args;
        let service = if args.services > 1 {
            format!("{}-{:03}", args.service, slot % args.services as usize)
        } else {
            args.service.clone()
        };
        let index = args.start_index + slot;
        let prefix = args.pod_prefix.as_deref().unwrap_or(&args.service);
        let pod = match generation {
            0 => format!("{prefix}-{index:04}"),
            g => format!("{prefix}-{index:04}-r{g}"),
        };
        // Nobody connects to these ports; they only have to be valid and distinct
        // enough for endpoint lists to look like a real fleet's.
        let port = |base: u32| base + (index % 15_000) as u32;
        Identity {
            service,
            version: self.versions[slot % self.versions.len()].clone(),
            namespace: "sim".into(),
            pod,
            address: "127.0.0.1".into(),
            inbound_port: port(20000),
            outbound_port: port(35000),
            admin_port: port(50000),
        }
    }
}

/// Counters of the whole process, and per slot what arrived since the last mark.
struct Stats {
    /// Streams that have their first snapshot and are still open.
    ready: AtomicUsize,
    messages: AtomicU64,
    bytes: AtomicU64,
    snapshots: AtomicU64,
    stream_errors: AtomicU64,
    rolled: AtomicUsize,
    /// (messages, bytes) per slot since the last mark; a replacement pod of a rolling
    /// restart counts in its predecessor's slot.
    since_mark: Vec<(AtomicU64, AtomicU64)>,
    marks: AtomicU64,
    mark_at_ms: AtomicU64,
}

impl Stats {
    fn new(slots: usize) -> Self {
        Self {
            ready: AtomicUsize::new(0),
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            stream_errors: AtomicU64::new(0),
            rolled: AtomicUsize::new(0),
            since_mark: (0..slots).map(|_| (AtomicU64::new(0), AtomicU64::new(0))).collect(),
            marks: AtomicU64::new(0),
            mark_at_ms: AtomicU64::new(now_ms()),
        }
    }

    fn received(&self, slot: usize, msg: &ControlMessage) {
        // Protobuf bytes of the message: what the control plane had to encode and send,
        // without HTTP/2 framing, so the figure is comparable across transports.
        let bytes = msg.encoded_len() as u64;
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if matches!(msg.msg, Some(control_message::Msg::Snapshot(_))) {
            self.snapshots.fetch_add(1, Ordering::Relaxed);
        }
        let (m, b) = &self.since_mark[slot];
        m.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(bytes, Ordering::Relaxed);
    }

    fn mark(&self) {
        for (m, b) in &self.since_mark {
            m.store(0, Ordering::Relaxed);
            b.store(0, Ordering::Relaxed);
        }
        self.mark_at_ms.store(now_ms(), Ordering::Relaxed);
        self.marks.fetch_add(1, Ordering::Relaxed);
    }

    fn to_json(&self, count: usize) -> serde_json::Value {
        let (mut receivers, mut messages, mut bytes) = (0u64, 0u64, 0u64);
        for (m, b) in &self.since_mark {
            let m = m.load(Ordering::Relaxed);
            receivers += u64::from(m > 0);
            messages += m;
            bytes += b.load(Ordering::Relaxed);
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "atMs": now_ms(),
            "count": count,
            "ready": self.ready.load(Ordering::Relaxed),
            "messages": load(&self.messages),
            "bytes": load(&self.bytes),
            "snapshots": load(&self.snapshots),
            "streamErrors": load(&self.stream_errors),
            "rolled": self.rolled.load(Ordering::Relaxed),
            "marks": load(&self.marks),
            "markAtMs": load(&self.mark_at_ms),
            "sinceMark": {"receivers": receivers, "messages": messages, "bytes": bytes},
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let versions: Vec<String> = args.versions.split(',').map(str::to_owned).collect();
    let fleet = Arc::new(Fleet {
        stats: Stats::new(args.count),
        versions,
        args,
    });
    let count = fleet.args.count;

    // Installed first: SIGUSR1's default action would kill the process.
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let (mark_tx, mut marks) = watch::channel(0u64);
    {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                fleet.stats.mark();
                mark_tx.send_modify(|n| *n += 1);
            }
        });
    }
    if let Some(path) = fleet.args.stats_file.clone() {
        tokio::spawn(write_stats(fleet.clone(), path));
    }

    let mut channels = Vec::with_capacity(count.div_ceil(STREAMS_PER_CONNECTION));
    for _ in 0..count.div_ceil(STREAMS_PER_CONNECTION) {
        channels.push(
            tonic::transport::Endpoint::from_shared(fleet.args.control_plane.clone())?
                .connect()
                .await?,
        );
    }
    let channel_of = |slot: usize| channels[slot / STREAMS_PER_CONNECTION].clone();

    let mut instances = Vec::with_capacity(count);
    let mut first_snapshots = Vec::with_capacity(count);
    for slot in 0..count {
        let (instance, first) = Instance::spawn(&fleet, channel_of(slot), slot, 0);
        instances.push(instance);
        first_snapshots.push(first);
    }

    let all_ready = tokio::spawn(async move {
        let mut n = 0;
        for first in first_snapshots {
            // A sidecar that never got one has ended; its own task reports why.
            n += usize::from(first.await.is_ok());
        }
        if n == count {
            println!("ready {count}");
        }
    });

    if let Some(every) = fleet.args.roll_every {
        all_ready.await?;
        // The first mark after `ready`: the benchmark marks right before the event.
        marks.borrow_and_update();
        marks.changed().await?;
        for (slot, current) in instances.iter_mut().enumerate() {
            let (next, first) = Instance::spawn(&fleet, channel_of(slot), slot, current.generation + 1);
            if first.await.is_err() {
                // The successor failed (its task says why): keep the old pod, as a
                // rollout that cannot start a new pod keeps the old one.
                continue;
            }
            let old = std::mem::replace(current, next);
            old.close().await;
            fleet.stats.rolled.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(every)).await;
        }
        println!("rolled {}", fleet.stats.rolled.load(Ordering::Relaxed));
    }

    let mut first_error = None;
    for instance in instances {
        if let Err(e) = instance.task.await? {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// One running simulated sidecar: its stream's task and the handle that closes it.
struct Instance {
    generation: u32,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Instance {
    /// Starts the sidecar in `slot`; the receiver fires at its first snapshot (and
    /// fails if the stream ends before one).
    fn spawn(fleet: &Arc<Fleet>, channel: Channel, slot: usize, generation: u32) -> (Self, oneshot::Receiver<()>) {
        let (stop, stopped) = oneshot::channel();
        let (first_tx, first_rx) = oneshot::channel();
        let identity = fleet.identity(slot, generation);
        let fleet = fleet.clone();
        let task = tokio::spawn(async move {
            let pod = identity.pod.clone();
            let mut first = Some(first_tx);
            let mut stopped = stopped;
            // A broken stream is retried with backoff, as a real sidecar's agent does,
            // so that a control plane that refuses some joins under a burst (store
            // unavailable) is measured by how long the fleet takes, not by who gave up.
            let mut attempt = 0;
            loop {
                let result = sidecar(
                    &fleet,
                    channel.clone(),
                    slot,
                    identity.clone(),
                    &mut first,
                    &mut stopped,
                )
                .await;
                match result {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        fleet.stats.stream_errors.fetch_add(1, Ordering::Relaxed);
                        if attempt == 0 || attempt % 10 == 9 {
                            eprintln!("{pod}: {e:#} (attempt {}, retrying)", attempt + 1);
                        }
                    }
                }
                let wait = RECONNECT.delay(attempt);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = &mut stopped => return Ok(()),
                }
            }
        });
        (Self { generation, stop, task }, first_rx)
    }

    /// Closes the stream cleanly and waits for its task.
    async fn close(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// One simulated sidecar's stream: Hello, then answer every control message and send
/// a health report every interval, until `stop` (a clean close: the request side ends,
/// then the control plane ends its side) or the stream ends. Every message received
/// passes through [`on_message`], the one place that knows the message kinds.
async fn sidecar(
    fleet: &Fleet,
    channel: Channel,
    slot: usize,
    identity: Identity,
    first_snapshot: &mut Option<oneshot::Sender<()>>,
    stop: &mut oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let args = &fleet.args;
    let stats = &fleet.stats;
    let (tx, rx) = mpsc::channel(16);
    let hello = Hello {
        identity: Some(identity),
        token: args.token.clone(),
        build_version: "fleet-sim".into(),
        held_revision: 0,
        watch: Vec::new(),
        // One process per simulated sidecar slot: its reconnects take its own
        // registration over.
        instance: format!("fleet-sim-{}-{slot}", std::process::id()),
    };
    tx.send(SidecarMessage {
        msg: Some(sidecar_message::Msg::Hello(hello)),
    })
    .await?;
    let mut inbound = ControlPlaneClient::new(channel)
        .stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut ready = ReadyGuard { stats, counted: false };
    let mut state = SimState {
        lookups: fleet.lookups(slot),
        ..SimState::default()
    };
    let mut figures = Figures::new((args.start_index + slot) as u64);
    // Spread the reports over the interval, as independently started pods would, so
    // that a fleet started in a burst does not report in bursts.
    let period = Duration::from_millis(args.report_ms.max(1));
    let offset = Duration::from_millis(figures.seed.wrapping_mul(7919) % period.as_millis() as u64);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let Some(msg) = msg? else { return Ok(()) };
                stats.received(slot, &msg);
                for reply in on_message(&mut state, msg) {
                    tx.send(reply).await?;
                }
                if state.snapshots > 0 {
                    ready.set();
                    if let Some(first) = first_snapshot.take() {
                        let _ = first.send(());
                    }
                }
            }
            _ = tick.tick() => tx.send(figures.report(state.applied)).await?,
            _ = &mut *stop => {
                drop(tx);
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    while let Ok(Some(msg)) = inbound.message().await {
                        stats.received(slot, &msg);
                    }
                })
                .await;
                return Ok(());
            }
        }
    }
}

/// Counts a stream in [`Stats::ready`] from its first snapshot until it ends, however
/// it ends.
struct ReadyGuard<'a> {
    stats: &'a Stats,
    counted: bool,
}

impl ReadyGuard<'_> {
    fn set(&mut self) {
        if !self.counted {
            self.counted = true;
            self.stats.ready.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for ReadyGuard<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.stats.ready.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What a simulated sidecar holds of the control plane's state.
#[derive(Default)]
struct SimState {
    /// Snapshots received on this stream.
    snapshots: u64,
    /// The revision of the last snapshot, reported in health reports.
    applied: u64,
    /// Destinations to look up after the first snapshot (then empty).
    lookups: Vec<String>,
}

/// Takes in one control message and returns the sidecar's answers. A real sidecar
/// would validate and persist a snapshot first; the simulation accepts everything.
fn on_message(state: &mut SimState, msg: ControlMessage) -> Vec<SidecarMessage> {
    match msg.msg {
        Some(control_message::Msg::Snapshot(s)) => {
            state.snapshots += 1;
            state.applied = s.revision;
            let ack = Ack {
                revision: s.revision,
                nonce: s.nonce,
            };
            let mut replies = vec![SidecarMessage {
                msg: Some(sidecar_message::Msg::Ack(ack)),
            }];
            if !state.lookups.is_empty() {
                let add = std::mem::take(&mut state.lookups);
                replies.push(SidecarMessage {
                    msg: Some(sidecar_message::Msg::Watch(Watch {
                        add,
                        remove: Vec::new(),
                    })),
                });
            }
            replies
        }
        // Whole services and deltas alike: the simulation holds nothing, it only
        // acknowledges, as a sidecar that applied them would.
        Some(control_message::Msg::Destinations(d)) => {
            let ack = DestinationsAck {
                version: d.version,
                nonce: d.nonce,
            };
            vec![SidecarMessage {
                msg: Some(sidecar_message::Msg::DestinationsAck(ack)),
            }]
        }
        // The report interval is `--report-ms`, so the benchmark controls it.
        Some(control_message::Msg::Heartbeat(_))
        | Some(control_message::Msg::Certificate(_))
        | Some(control_message::Msg::CertificateRefused(_))
        | Some(control_message::Msg::TrustBundle(_))
        | None => Vec::new(),
    }
}

/// Deterministic but moving health figures: 5..25 requests a second, 1 in 50 fails.
struct Figures {
    seed: u64,
    requests: u64,
    errors: u64,
}

impl Figures {
    fn new(seed: u64) -> Self {
        Self {
            seed,
            requests: 0,
            errors: 0,
        }
    }

    fn report(&mut self, applied: u64) -> SidecarMessage {
        let rate = 5 + (self.seed * 7 + self.requests) % 20;
        self.requests += rate;
        self.errors += rate / 50 + u64::from(self.requests % 50 < rate % 50);
        let report = HealthReport {
            app_healthy: true,
            requests_total: self.requests,
            errors_total: self.errors,
            rate_limited_total: 0,
            latency: Some(LatencySummary {
                p50_ms: 1.0 + (self.seed % 5) as f64,
                p99_ms: 5.0 + (self.requests % 40) as f64,
            }),
            request_rate: rate as f64,
            applied_revision: applied,
            ..Default::default()
        };
        SidecarMessage {
            msg: Some(sidecar_message::Msg::Health(report)),
        }
    }
}

/// Rewrites `path` every second with the counters, so a script can read them at any
/// time and tell a fresh file from a stale one by `atMs`.
async fn write_stats(fleet: Arc<Fleet>, path: PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let options = WriteOptions {
        durable: false,
        ..WriteOptions::default()
    };
    loop {
        tick.tick().await;
        let json = fleet.stats.to_json(fleet.args.count).to_string();
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomic_with(&target, json.as_bytes(), &options)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cannot write {}: {e}", path.display()),
            Err(e) => eprintln!("stats writer failed: {e}"),
        }
    }
}
