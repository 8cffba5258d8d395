//! `outrider-fleet-sim`: many simulated sidecars on the real control stream, for load
//! and dashboard tests. Each one says Hello, ACKs every snapshot and sends a health
//! report every interval with counters that move, as a real sidecar would; it proxies
//! nothing. Prints `ready N` once every stream has its first snapshot.

use clap::Parser;
use outrider_proto::v1::control_plane_client::ControlPlaneClient;
use outrider_proto::v1::{
    control_message, sidecar_message, Ack, HealthReport, Hello, Identity, LatencySummary, SidecarMessage,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser)]
#[command(name = "outrider-fleet-sim", about = "Simulated sidecars on the control stream")]
struct Args {
    /// The control plane's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:18000")]
    control_plane: String,
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
}

/// Streams per HTTP/2 connection, under the servers' usual concurrent-stream limits.
const STREAMS_PER_CONNECTION: usize = 50;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let versions: Vec<String> = args.versions.split(',').map(str::to_owned).collect();
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let mut channel = None;
    for i in 0..args.count {
        if i % STREAMS_PER_CONNECTION == 0 {
            channel = Some(
                tonic::transport::Endpoint::from_shared(args.control_plane.clone())?
                    .connect()
                    .await?,
            );
        }
        let client = ControlPlaneClient::new(channel.clone().expect("set above"));
        let identity = Identity {
            service: args.service.clone(),
            version: versions[i % versions.len()].clone(),
            namespace: "sim".into(),
            pod: format!("{}-{i:04}", args.service),
            address: "127.0.0.1".into(),
            inbound_port: 20000 + i as u32,
            outbound_port: 30000 + i as u32,
            admin_port: 40000 + i as u32,
        };
        tasks.push(tokio::spawn(run(
            client,
            identity,
            args.clone(),
            ready.clone(),
            i as u64,
        )));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn run(
    mut client: ControlPlaneClient<tonic::transport::Channel>,
    identity: Identity,
    args: Arc<Args>,
    ready: Arc<AtomicUsize>,
    seed: u64,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(16);
    let hello = Hello {
        identity: Some(identity),
        token: args.token.clone(),
        build_version: "fleet-sim".into(),
        held_revision: 0,
        watch: Vec::new(),
    };
    tx.send(SidecarMessage {
        msg: Some(sidecar_message::Msg::Hello(hello)),
    })
    .await?;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    let mut tick = tokio::time::interval(Duration::from_millis(args.report_ms));
    let (mut requests, mut errors, mut applied, mut first) = (0u64, 0u64, 0u64, true);
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let Some(msg) = msg? else { return Ok(()) };
                if let Some(control_message::Msg::Snapshot(s)) = msg.msg {
                    applied = s.revision;
                    let ack = Ack { revision: s.revision, nonce: s.nonce };
                    tx.send(SidecarMessage { msg: Some(sidecar_message::Msg::Ack(ack)) }).await?;
                    if first {
                        first = false;
                        if ready.fetch_add(1, Ordering::SeqCst) + 1 == args.count {
                            println!("ready {}", args.count);
                        }
                    }
                }
            }
            _ = tick.tick() => {
                // Deterministic but moving figures: 5..25 requests a second, 1 in 50 fails.
                let rate = 5 + (seed * 7 + requests) % 20;
                requests += rate;
                errors += rate / 50 + u64::from(requests % 50 < rate % 50);
                let report = HealthReport {
                    app_healthy: true,
                    requests_total: requests,
                    errors_total: errors,
                    rate_limited_total: 0,
                    latency: Some(LatencySummary { p50_ms: 1.0 + (seed % 5) as f64, p99_ms: 5.0 + (requests % 40) as f64 }),
                    request_rate: rate as f64,
                    applied_revision: applied,
                    ..Default::default()
                };
                tx.send(SidecarMessage { msg: Some(sidecar_message::Msg::Health(report)) }).await?;
            }
        }
    }
}
