//! `outrider-sidecar`: reads its settings, enforces the persisted snapshot at once if
//! there is one, then serves the inbound proxy and admin port while the agent keeps
//! the control stream. SIGTERM: deregister first, then drain, then exit.

use anyhow::Context;
use clap::Parser;
use outrider_proto::v1::Identity;
use outrider_sidecar::agent::Agent;
use outrider_sidecar::config::Config;
use outrider_sidecar::configdocs::{ConfigDocs, ReloadHooks};
use outrider_sidecar::inbound::{self, InboundProxy};
use outrider_sidecar::logship::{Identity as LogIdentity, PolicyFeed, Shipper};
use outrider_sidecar::outbound::{self, OutboundProxy};
use outrider_sidecar::state::{SidecarState, Source};
use outrider_sidecar::{admin, persist};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};
use tracing_subscriber::EnvFilter;

// The request path allocates a few small objects per request (header maps, body
// frames); mimalloc's thread-local free lists make those markedly cheaper than glibc's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "outrider-sidecar",
    version,
    about = "Outrider sidecar: proxy and agent next to each app instance"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    /// Log format: text or json.
    #[arg(long, env = "OUTRIDER_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One worker: a current-thread runtime does the same work without the
    // work-stealing scheduler's cross-thread bookkeeping.
    let mut rt = match cli.config.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    rt.enable_all();
    rt.build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("OUTRIDER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if cli.log_format == "json" {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let cfg = cli.config;
    cfg.validate().map_err(anyhow::Error::msg)?;
    let pod = cfg.pod();
    let span = info_span!("sidecar", service = %cfg.service, pod = %pod);
    async move {
        let state = Arc::new(SidecarState::new());
        match persist::load(&cfg.state_dir, &cfg.service) {
            Ok(Some(snap)) => match state.apply(&snap, Source::Persisted) {
                Ok(()) => info!(
                    revision = snap.revision,
                    "enforcing the persisted snapshot until the control plane answers"
                ),
                Err(e) => warn!(error = %e, "persisted snapshot is invalid; ignoring it"),
            },
            Ok(None) => {}
            Err(e) => warn!(error = %e, "ignoring the persisted snapshot"),
        }

        let inbound_listener = TcpListener::bind(cfg.inbound_addr)
            .await
            .with_context(|| format!("cannot listen on {} (inbound)", cfg.inbound_addr))?;
        let outbound_listener = TcpListener::bind(cfg.outbound_addr)
            .await
            .with_context(|| format!("cannot listen on {} (outbound)", cfg.outbound_addr))?;
        let admin_listener = TcpListener::bind(cfg.admin_addr)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", cfg.admin_addr))?;
        let inbound_port = inbound_listener.local_addr()?.port();
        let admin_port = admin_listener.local_addr()?.port();
        info!(
            inbound = %cfg.inbound_addr, admin = %cfg.admin_addr, app = %cfg.app_addr(),
            app_protocol = ?cfg.app_protocol, "sidecar starting"
        );

        let (stop_agent_tx, stop_agent) = watch::channel(false);
        let (stop_proxy_tx, stop_proxy) = watch::channel(false);
        let when = |rx: &watch::Receiver<bool>| {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await.map(|_| ());
            }
        };

        let proxy = Arc::new(InboundProxy::with_app_protocol(
            cfg.app_addr(),
            state.clone(),
            cfg.app_protocol,
        ));
        let inbound_task = tokio::spawn(inbound::serve(inbound_listener, proxy, when(&stop_proxy)).in_current_span());
        let outbound = Arc::new(OutboundProxy::new(state.clone()));
        let outbound_task =
            tokio::spawn(outbound::serve(outbound_listener, outbound, when(&stop_proxy)).in_current_span());
        let docs = ConfigDocs::new(
            cfg.config_dir.clone(),
            &cfg.state_dir,
            ReloadHooks::parse(&cfg.config_reload)?,
        );
        let admin_router = admin::router(state.clone()).merge(docs.clone().router());
        let admin_task =
            tokio::spawn(admin::serve_router(admin_listener, admin_router, when(&stop_proxy)).in_current_span());
        let docs_task = tokio::spawn(docs.run(state.clone(), when(&stop_proxy)).in_current_span());
        let shipper = Shipper {
            identity: LogIdentity {
                service: cfg.service.clone(),
                version: cfg.subset.clone(),
                namespace: cfg.namespace.clone(),
                pod: pod.clone(),
            },
            state_dir: cfg.state_dir.clone(),
            buffer_bytes: cfg.log_buffer_bytes,
        };
        let (stop_logs_tx, stop_logs) = watch::channel(false);
        let applied = state.clone();
        let logging = PolicyFeed::new(state.subscribe(), move || {
            applied.applied.load().as_ref().and_then(|a| a.logging.clone())
        });
        let logs = shipper.spawn(&state.logs, logging, when(&stop_logs))?;
        let agent = Agent {
            endpoint: cfg.control_plane.clone(),
            identity: Identity {
                service: cfg.service.clone(),
                version: cfg.subset.clone(),
                namespace: cfg.namespace.clone(),
                pod: pod.clone(),
                address: cfg.pod_ip.clone(),
                inbound_port: u32::from(inbound_port),
                outbound_port: u32::from(cfg.outbound_addr.port()),
                admin_port: u32::from(admin_port),
            },
            token: cfg.token.clone().unwrap_or_default(),
            state_dir: cfg.state_dir.clone(),
            app_addr: cfg.app_addr(),
            state: state.clone(),
        };
        let agent_task = tokio::spawn(agent.run(stop_agent).in_current_span());

        shutdown_signal().await;
        info!("shutting down: deregistering, then draining in-flight requests");
        let _ = stop_agent_tx.send(true);
        let _ = agent_task.await;
        let _ = stop_proxy_tx.send(true);
        if let Ok(Err(e)) = inbound_task.await {
            warn!(error = %e, "inbound proxy ended with an error");
        }
        let _ = outbound_task.await;
        let _ = admin_task.await;
        let _ = docs_task.await;
        // Last, so that access records of drained requests get a chance to ship;
        // what is not delivered stays in the files and the spool for the next start.
        let _ = stop_logs_tx.send(true);
        logs.join().await;
        info!("stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
