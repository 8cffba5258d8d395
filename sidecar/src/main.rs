//! `outrider-sidecar`: reads its settings, enforces the persisted snapshot at once if
//! there is one, then serves the inbound proxy and admin port while the agent keeps
//! the control stream. SIGTERM: deregister first, then drain, then flush logs, then exit.

#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use outrider_proto::v1::Identity;
use outrider_runtime::shutdown::{CancellationToken, Signals, TaskTracker};
use outrider_runtime::tracing::Format as LogFormat;
use outrider_sidecar::agent::Agent;
use outrider_sidecar::capture::{self, InitArgs, Outcome};
use outrider_sidecar::config::Config;
use outrider_sidecar::configdocs::{ConfigDocs, ReloadHooks};
use outrider_sidecar::identity::IdentityFiles;
use outrider_sidecar::inbound::{self, InboundProxy};
use outrider_sidecar::logship::{Identity as LogIdentity, PolicyFeed, Shipper};
use outrider_sidecar::outbound::{self, OutboundProxy};
use outrider_sidecar::secrets::SecretFiles;
use outrider_sidecar::state::{SidecarState, Source};
use outrider_sidecar::{admin, persist};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{info, info_span, warn, Instrument};

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
#[command(after_help = "Subcommand: `outrider-sidecar init --help` (writes the Pod's traffic capture rules).")]
struct Cli {
    #[command(flatten)]
    config: Config,
    /// Log format: text or json.
    #[arg(long, env = "OUTRIDER_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

/// `outrider-sidecar init`. Parsed apart from [`Cli`], whose required settings
/// (`OUTRIDER_SERVICE`, …) an init container does not have.
#[derive(Parser)]
#[command(
    name = "outrider-sidecar init",
    version,
    about = "Writes the Pod's traffic capture rules (iptables, nat table) and exits: run once per Pod, \
             as root, before the app starts"
)]
struct InitCli {
    #[command(flatten)]
    args: InitArgs,
}

fn main() -> anyhow::Result<()> {
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        let cli = InitCli::parse_from(std::env::args_os().skip(1));
        std::process::exit(init(&cli.args));
    }
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

/// `init`: one line on stderr, and a non-zero exit code when it could not do what it
/// was asked.
fn init(args: &InitArgs) -> i32 {
    let mut stdout = std::io::stdout().lock();
    let result = capture::init(args, &mut stdout);
    let _ = std::io::Write::flush(&mut stdout);
    match result {
        Ok(Outcome::Printed) => 0,
        Ok(Outcome::Installed { families }) => {
            eprintln!("outrider-sidecar init: capture rules installed ({families:?})");
            0
        }
        Ok(Outcome::Removed { families }) => {
            eprintln!("outrider-sidecar init: capture rules removed ({families:?})");
            0
        }
        Err(e) => {
            eprintln!("outrider-sidecar init: {e}");
            1
        }
    }
}

/// Log shipping's share of shutdown: what it cannot deliver by then stays in the files
/// and the spool for the next start.
const LOG_FLUSH_BUDGET: Duration = Duration::from_secs(2);

/// The tasks that stop together at one step of shutdown: cancelling `stop` tells them,
/// `tasks` says when all of them have.
#[derive(Default)]
struct Stage {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Stage {
    /// Runs `task` in its own span until it ends; it must return soon after `stop`.
    fn spawn(&self, span: tracing::Span, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task.instrument(span));
    }

    /// Cancels the stage and waits for every task in it.
    async fn finish(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    outrider_runtime::tracing::init(cli.log_format)?;
    let cfg = cli.config;
    cfg.validate().map_err(anyhow::Error::msg)?;
    // Before anything listens, so that a SIGTERM during start-up still drains.
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    let pod = cfg.pod();
    let span = info_span!("sidecar", service = %cfg.service, pod = %pod);
    async move {
        let confinement = Arc::new(cfg.log_confinement()?);
        let trust = Arc::new(cfg.trust().map_err(anyhow::Error::msg)?);
        let endpoint = trust.control_plane(&cfg.control_plane)?;
        let check = Arc::clone(&confinement);
        let state = Arc::new(
            SidecarState::new()
                .with_logging_check(Box::new(move |p| check.check(p)))
                .with_identity(&cfg.namespace, &cfg.trust_domain),
        );
        // Destinations first: the snapshot applied next picks them up.
        // A refused file was moved aside: start without it and wait for the control
        // plane, rather than enforce what may be garbage.
        match persist::load_destinations(&cfg.state_dir, &cfg.service) {
            Ok(Some(table)) => match state.load_destinations(&table) {
                Ok(()) => info!(
                    destinations = table.services.len(),
                    "routing with the persisted destinations until the control plane answers"
                ),
                Err(e) => warn!(error = %e, "persisted destinations are invalid; ignoring them"),
            },
            Ok(None) => {}
            Err(e) => warn!(error = %e, "ignoring the persisted destinations; waiting for the control plane"),
        }
        match persist::load(&cfg.state_dir, &cfg.service) {
            Ok(Some(snap)) => match state.apply(&snap, Source::Persisted) {
                Ok(()) => info!(
                    revision = snap.revision,
                    "enforcing the persisted snapshot until the control plane answers"
                ),
                Err(e) => warn!(error = %e, "persisted snapshot is invalid; ignoring it"),
            },
            Ok(None) => {}
            Err(e) => warn!(
                error = %e,
                "ignoring the persisted snapshot; enforcing nothing until the control plane answers"
            ),
        }
        let workload = open_identity(&cfg, &state).await;

        let inbound_listener = TcpListener::bind(cfg.inbound_addr)
            .await
            .with_context(|| format!("cannot listen on {} (inbound)", cfg.inbound_addr))?;
        let outbound_listener = TcpListener::bind(cfg.outbound_addr)
            .await
            .with_context(|| format!("cannot listen on {} (outbound)", cfg.outbound_addr))?;
        let admin_listener = TcpListener::bind(cfg.admin_addr)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", cfg.admin_addr))?;
        let health_listener =
            match cfg.health_addr.0 {
                Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                    format!("cannot listen on {addr} (health; OUTRIDER_HEALTH_ADDR=off serves none)")
                })?),
                None => None,
            };
        let inbound_port = inbound_listener.local_addr()?.port();
        let admin_port = admin_listener.local_addr()?.port();
        info!(
            inbound = %cfg.inbound_addr, admin = %cfg.admin_addr, app = %cfg.app_addr(),
            health = ?cfg.health_addr.0,
            app_protocol = ?cfg.app_protocol, "sidecar starting"
        );
        // The admin port has no authentication and serves config documents and the
        // applied policy: anyone who can reach it can read them.
        if !cfg.admin_addr.ip().is_loopback() {
            warn!(
                admin = %cfg.admin_addr,
                "the admin port (config documents, /config_dump, no authentication) listens on a \
                 non-loopback address: anyone who can reach it can read them; bind OUTRIDER_ADMIN_ADDR \
                 to 127.0.0.1 unless the network in front of it is trusted"
            );
        }

        // Shutdown runs these stages in order: the agent (deregister), then the
        // proxies and the admin port (drain), then log shipping (flush).
        let control = Stage::default();
        let serving = Stage::default();
        let logs = Stage::default();

        let proxy = Arc::new(InboundProxy::with_settings(
            cfg.app_addr(),
            state.clone(),
            cfg.app_protocol,
            inbound::Timeouts {
                response: cfg.inbound_timeout.as_std(),
                body_idle: cfg.inbound_body_timeout.as_std(),
            },
        ));
        let stop = serving.stop.clone().cancelled_owned();
        serving.spawn(info_span!("inbound"), async move {
            if let Err(e) = inbound::serve(inbound_listener, proxy, stop).await {
                warn!(error = %e, "inbound proxy ended with an error");
            }
        });
        let outbound =
            Arc::new(OutboundProxy::in_namespace(state.clone(), &cfg.namespace).with_policy(cfg.outbound_policy));
        let stop = serving.stop.clone().cancelled_owned();
        serving.spawn(info_span!("outbound"), async move {
            if let Err(e) = outbound::serve(outbound_listener, outbound, stop).await {
                warn!(error = %e, "outbound proxy ended with an error");
            }
        });
        let docs = ConfigDocs::new(
            cfg.config_dir.clone(),
            &cfg.state_dir,
            ReloadHooks::parse(&cfg.config_reload)?,
            &trust,
        );
        let admin_router = admin::router(state.clone()).merge(docs.clone().router());
        let stop = serving.stop.clone().cancelled_owned();
        serving.spawn(info_span!("admin"), async move {
            if let Err(e) = admin::serve_router(admin_listener, admin_router, stop).await {
                warn!(error = %e, "admin server ended with an error");
            }
        });
        if let Some(listener) = health_listener {
            let stop = serving.stop.clone().cancelled_owned();
            let router =
                admin::health_router(state.clone()).merge(outrider_sidecar::probes::router(cfg.app_probes.clone()));
            serving.spawn(info_span!("health"), async move {
                if let Err(e) = admin::serve_router(listener, router, stop).await {
                    warn!(error = %e, "health server ended with an error");
                }
            });
        }
        serving.spawn(
            info_span!("configdocs"),
            docs.clone().run(state.clone(), serving.stop.clone().cancelled_owned()),
        );
        let shipper = Shipper {
            identity: LogIdentity {
                service: cfg.service.clone(),
                version: cfg.subset.clone(),
                namespace: cfg.namespace.clone(),
                pod: pod.clone(),
            },
            state_dir: cfg.state_dir.clone(),
            buffer_bytes: cfg.log_buffer_bytes,
            confinement,
            trust: Arc::clone(&trust),
        };
        let applied = state.clone();
        let logging = PolicyFeed::new(state.subscribe(), move || {
            applied.applied.load().as_ref().and_then(|a| a.logging.clone())
        });
        let shipping = shipper.spawn(&state.logs, logging, logs.stop.clone().cancelled_owned())?;
        logs.spawn(info_span!("logship"), shipping.join());
        let agent = Agent {
            endpoint,
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
            declared: cfg.declared_destinations(),
            destination_idle: cfg.destination_idle.as_std(),
            config_docs: Some(docs.clone()),
            secret_files: Some(Arc::new(SecretFiles::new(cfg.secrets_dir(), &cfg.state_dir))),
            workload,
        };
        control.spawn(info_span!("agent"), agent.run(control.stop.clone()));

        let signal = signals.recv().await;
        info!(
            ?signal,
            "shutting down: deregistering, then draining in-flight requests"
        );
        control.finish().await;
        serving.finish().await;
        // Last, so that access records of drained requests get a chance to ship.
        if tokio::time::timeout(LOG_FLUSH_BUDGET, logs.finish()).await.is_err() {
            warn!("log shipping did not finish within its budget; the rest ships at the next start");
        }
        info!("stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

/// The workload key (made on first start) and the saved certificate if still valid,
/// put in force at once: a restart while the control plane is away keeps the identity.
/// A key that cannot be made or read leaves the sidecar without one (logged), not down.
async fn open_identity(cfg: &Config, state: &SidecarState) -> Option<Arc<IdentityFiles>> {
    let (dir, namespace, service) = (cfg.state_dir.clone(), cfg.namespace.clone(), cfg.service.clone());
    let now = outrider_runtime::time::now_ms() as i64;
    let opened = tokio::task::spawn_blocking(move || IdentityFiles::open(&dir, &namespace, &service, now)).await;
    match opened {
        Ok(Ok((files, saved))) => {
            if let Some(w) = saved {
                info!(identity = %w.spiffe_id, serial = %w.serial, "using the saved workload certificate");
                state.identity.store(Some(Arc::new(w)));
            }
            Some(Arc::new(files))
        }
        Ok(Err(e)) => {
            warn!(error = %e, "no workload identity: cannot keep a key in the state directory");
            None
        }
        Err(e) => {
            warn!(error = %e, "no workload identity: the key task failed");
            None
        }
    }
}
