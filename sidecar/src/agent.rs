//! The control-stream client: registers with Hello, validates each snapshot, makes it
//! durable (config documents written, `snapshot.pb` saved), then enforces and
//! acknowledges it; asks for the destinations its app calls and acknowledges their
//! updates once saved; asks for its workload certificate after Hello and again when
//! renewal is due (see `identity`); reports health, and reconnects with exponential backoff and
//! full jitter (`outrider_runtime::Backoff`) whenever the stream breaks.
//!
//! A snapshot that cannot be made durable (a full or read-only state disk) is NACKed
//! with the reason and not enforced: what is in force is always what was last ACKed
//! and persisted, so a restart while the control plane is away enforces exactly that.
//! It is tried again on a timer, so freeing the disk recovers without a new write.

use crate::configdocs::{doc_set, ConfigDocs, Writer};
use crate::identity::IdentityFiles;
use crate::persist;
use crate::secrets::SecretFiles;
use crate::state::{SidecarState, Source};
use outrider_proto::v1::control_plane_client::ControlPlaneClient;
use outrider_proto::v1::{
    control_message, sidecar_message, Ack, AuthzDenied, Certificate, CertificateRequest, Destinations, DestinationsAck,
    DestinationsNack, HealthReport, Hello, Identity, LatencySummary, LogShipping, Nack, SidecarMessage, Snapshot,
    Watch,
};
use outrider_runtime::shutdown::CancellationToken;
use outrider_runtime::Backoff;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::{error, info, warn};

pub struct Agent {
    /// The control plane, plaintext or TLS as its URL says (`Trust::control_plane`).
    pub endpoint: Endpoint,
    pub identity: Identity,
    pub token: String,
    pub state_dir: PathBuf,
    pub app_addr: SocketAddr,
    pub state: Arc<SidecarState>,
    /// Destinations asked for at every connect, before the app calls them
    /// (`OUTRIDER_DESTINATIONS`).
    pub declared: Vec<String>,
    /// Destinations no request named for this long are dropped and unwatched
    /// (`OUTRIDER_DESTINATION_IDLE`); declared ones are kept.
    pub destination_idle: Duration,
    /// Where a snapshot's config documents are written before it is acknowledged.
    pub config_docs: Option<Arc<ConfigDocs>>,
    /// Where a snapshot's secrets are written before it is acknowledged.
    pub secret_files: Option<Arc<SecretFiles>>,
    /// The workload key; `None`: no certificate is asked for (the key could not be
    /// made or read). What is issued goes in force in `state.identity`.
    pub workload: Option<Arc<IdentityFiles>>,
}

/// Between certificate requests that got no certificate (refused, lost, or not
/// acceptable): soon at first, then every minute at most.
/// After the control plane says another root signs now, each sidecar renews at a
/// random moment within this, so the old root can be retired soon after and the CA
/// is not asked by the whole fleet at once.
const RENEW_ON_ROTATION: Duration = Duration::from_secs(10);

const RETRY_CERTIFICATE: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// Between attempts to make a NACKed snapshot durable: soon at first (a disk freed by
/// an operator recovers in about a second), then no more than every 10 s.
const RETRY_DURABLE: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));

/// A valid snapshot that could not be made durable, waiting to be tried again.
struct Pending {
    snapshot: Snapshot,
    attempt: u32,
    /// The reason last NACKed: a retry that fails the same way sends nothing.
    error: String,
    at: tokio::time::Instant,
}

/// What became of a snapshot.
enum Accepted {
    /// Enforced and persisted: the Ack to send.
    Ack(SidecarMessage),
    /// Refused for good (invalid, another service's): the Nack to send.
    Refused(SidecarMessage),
    /// Valid, but not durable: not enforced; NACK with `error` and retry.
    NotDurable { snapshot: Snapshot, error: String },
}

/// How often held destinations are written to disk when they changed: they are for
/// static stability, and endpoints move while the control plane is away anyway, so
/// a busy callee never costs its callers an fsync per update.
const SAVE_DESTINATIONS: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// With its causes: a certificate the sidecar does not trust says so here.
    #[error("cannot reach the control plane: {}", crate::trust::error_chain(.0))]
    Connect(#[from] tonic::transport::Error),
    #[error("control stream: {0}")]
    Stream(#[from] tonic::Status),
}

enum End {
    Shutdown,
    /// The stream ended after it worked; reconnect promptly.
    Lost,
}

/// Between reconnects. Full jitter from 0: a fleet that lost its control plane spreads
/// its reconnects over the whole window instead of arriving in waves.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// This process, to the control plane: a reconnect whose old stream it has not seen
/// end yet takes the registration over, while another process with the same pod name
/// is refused.
static INSTANCE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| format!("{:032x}", rand::random::<u128>()));

/// A stream that lived this long worked: its loss is news, and the next connect is
/// prompt.
const STABLE_STREAM: Duration = Duration::from_secs(30);

impl Agent {
    /// Runs until `shutdown` is cancelled; on shutdown closes the stream cleanly so the
    /// control plane marks this sidecar disconnected at once.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut attempt: u32 = 0;
        loop {
            let started = Instant::now();
            match self.session(&shutdown).await {
                Ok(End::Shutdown) => return,
                Ok(End::Lost) => {
                    warn!("control stream lost; reconnecting (enforcing the last snapshot meanwhile)");
                    // A stream that keeps breaking soon after it opens (a message this
                    // sidecar cannot read, a control plane failing every session) must
                    // back off like a refused connect, not retry ten times a second.
                    attempt = if started.elapsed() >= STABLE_STREAM {
                        0
                    } else {
                        attempt.saturating_add(1)
                    };
                }
                Err(e) => {
                    if attempt == 0 {
                        warn!(error = %e, "control plane unavailable; enforcing the last snapshot and retrying");
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
            self.state.set_connected(false);
            let delay = RECONNECT.delay(attempt);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<End, AgentError> {
        let channel = self
            .endpoint
            .clone()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .connect()
            .await?;
        let mut client = ControlPlaneClient::new(channel)
            .max_decoding_message_size(outrider_policy::limits::CONTROL_MESSAGE_MAX_BYTES);
        let (tx, rx) = mpsc::channel::<SidecarMessage>(16);
        self.state.reset_destination_version();
        let mut watch = self.state.watch_list();
        watch.extend(self.declared.iter().cloned());
        watch.sort();
        watch.dedup();
        let hello = Hello {
            identity: Some(self.identity.clone()),
            token: self.token.clone(),
            build_version: env!("CARGO_PKG_VERSION").to_owned(),
            held_revision: self.state.applied_revision(),
            watch,
            instance: INSTANCE.clone(),
        };
        // The channel has room: this cannot block.
        let _ = tx.send(msg(sidecar_message::Msg::Hello(hello))).await;
        let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        self.state.set_connected(true);
        info!(endpoint = %self.endpoint.uri(), "connected to the control plane");

        let mut report = tokio::time::interval(Duration::from_secs(1));
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = (Instant::now(), 0u64);
        let mut save = tokio::time::interval(SAVE_DESTINATIONS);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unsaved = false;
        // The newest destination update applied and not yet saved: acknowledged once
        // it is on disk. `dest_error`: the reason last NACKed for saving, if any.
        let mut unacked: Option<(u64, String)> = None;
        let mut dest_error: Option<String> = None;
        let mut pending: Option<Pending> = None;
        // A certificate is asked for at once when none is in force, else when renewal
        // is due; every request re-arms this for a retry until a certificate arrives.
        let mut cert_attempt: u32 = 0;
        let mut cert_due = self.workload.as_ref().map(|_| self.renewal_due());
        let mut idle_check =
            tokio::time::interval((self.destination_idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)));
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(cm)) => match cm.msg {
                        Some(control_message::Msg::Snapshot(s)) => {
                            // A newer snapshot supersedes one waiting for the disk.
                            pending = None;
                            let reply = match self.accept(s).await {
                                Accepted::Ack(m) | Accepted::Refused(m) => m,
                                Accepted::NotDurable { snapshot, error } => {
                                    let m = nack(&snapshot, &error);
                                    pending = Some(Pending {
                                        snapshot,
                                        attempt: 0,
                                        error,
                                        at: tokio::time::Instant::now() + RETRY_DURABLE.ceiling(0),
                                    });
                                    m
                                }
                            };
                            if tx.send(reply).await.is_err() { break End::Lost }
                        }
                        Some(control_message::Msg::Destinations(d)) => {
                            let (version, nonce) = (d.version, d.nonce.clone());
                            let Some(refused) = self.accept_destinations(d) else { break End::Lost };
                            unsaved = true;
                            match refused {
                                Some(reply) => if tx.send(reply).await.is_err() { break End::Lost },
                                None => unacked = Some((version, nonce)),
                            }
                        }
                        Some(control_message::Msg::Certificate(c)) => {
                            if let Some(due) = self.accept_certificate(c).await {
                                cert_attempt = 0;
                                cert_due = Some(due);
                            }
                        }
                        Some(control_message::Msg::TrustBundle(t)) => {
                            let in_force = self.accept_trust_bundle(&t.trust_bundle_pem).await;
                            if in_force && t.renew {
                                // Another root signs now: renew soon, the fleet spread
                                // over a few seconds rather than all at once.
                                let spread = RENEW_ON_ROTATION.mul_f64(rand::random::<f64>());
                                cert_due = Some(tokio::time::Instant::now() + spread);
                            }
                        }
                        Some(control_message::Msg::CertificateRefused(r)) => {
                            warn!(error = %r.error, "the control plane refused the certificate request; retrying");
                        }
                        Some(control_message::Msg::Heartbeat(h)) => {
                            let every = Duration::from_millis(u64::from(h.report_interval_ms).clamp(100, 60_000));
                            report = tokio::time::interval(every);
                            report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                        None => {}
                    },
                    Ok(None) => break End::Lost,
                    Err(status) if status.code() == tonic::Code::AlreadyExists => {
                        error!(
                            message = status.message(),
                            "refused: another live sidecar is registered with this pod name; \
                             enforcing the last snapshot and retrying"
                        );
                        break End::Lost;
                    }
                    Err(status) => {
                        warn!(%status, "control stream broke");
                        break End::Lost;
                    }
                },
                _ = self.state.discovery.wait() => {
                    let add = self.state.discovery.take_unsent();
                    if !add.is_empty() {
                        let w = Watch { add, remove: Vec::new() };
                        if tx.send(msg(sidecar_message::Msg::Watch(w))).await.is_err() { break End::Lost }
                    }
                }
                _ = idle_check.tick() => {
                    let before = (outrider_runtime::time::now_ms() / 1000).saturating_sub(self.destination_idle.as_secs());
                    let idle: Vec<String> = self
                        .state
                        .idle_destinations(before)
                        .into_iter()
                        .filter(|n| !self.declared.contains(n))
                        .collect();
                    if !idle.is_empty() {
                        info!(destinations = ?idle, "dropping destinations the app no longer calls");
                        self.state.drop_destinations(&idle);
                        unsaved = true;
                        let w = Watch { add: Vec::new(), remove: idle };
                        if tx.send(msg(sidecar_message::Msg::Watch(w))).await.is_err() { break End::Lost }
                    }
                }
                () = sleep_until_opt(cert_due), if cert_due.is_some() => {
                    cert_due = Some(tokio::time::Instant::now() + RETRY_CERTIFICATE.ceiling(cert_attempt));
                    cert_attempt = cert_attempt.saturating_add(1);
                    match self.workload.as_ref().map(|w| w.csr_der()) {
                        Some(Ok(csr_der)) => {
                            let r = CertificateRequest { csr_der };
                            if tx.send(msg(sidecar_message::Msg::CertificateRequest(r))).await.is_err() { break End::Lost }
                        }
                        Some(Err(e)) => warn!(error = %e, "cannot make a certificate request"),
                        None => cert_due = None,
                    }
                }
                () = sleep_until_pending(&pending), if pending.is_some() => {
                    let Some(p) = pending.take() else { continue };
                    match self.accept(p.snapshot).await {
                        Accepted::Ack(m) | Accepted::Refused(m) => {
                            if tx.send(m).await.is_err() { break End::Lost }
                        }
                        Accepted::NotDurable { snapshot, error } => {
                            if error != p.error {
                                let m = nack(&snapshot, &error);
                                if tx.send(m).await.is_err() { break End::Lost }
                            }
                            let attempt = p.attempt.saturating_add(1);
                            pending = Some(Pending {
                                snapshot,
                                attempt,
                                error,
                                at: tokio::time::Instant::now() + RETRY_DURABLE.ceiling(attempt),
                            });
                        }
                    }
                }
                _ = save.tick(), if unsaved => {
                    match self.save_destinations().await {
                        Ok(()) => {
                            unsaved = false;
                            if dest_error.take().is_some() {
                                info!("destinations persisted again");
                            }
                            if let Some((version, nonce)) = unacked.take() {
                                let a = DestinationsAck { version, nonce };
                                if tx.send(msg(sidecar_message::Msg::DestinationsAck(a))).await.is_err() { break End::Lost }
                            }
                        }
                        // Still unsaved: the next tick tries again. NACKed once per reason.
                        Err(error) => if dest_error.as_ref() != Some(&error) {
                            warn!(%error, "could not persist the destinations; not acknowledging them");
                            dest_error = Some(error.clone());
                            if let Some((version, nonce)) = unacked.clone() {
                                let n = DestinationsNack { version, nonce, error };
                                if tx.send(msg(sidecar_message::Msg::DestinationsNack(n))).await.is_err() { break End::Lost }
                            }
                        },
                    }
                }
                _ = report.tick() => {
                    let h = self.health(&mut last).await;
                    if tx.send(msg(sidecar_message::Msg::Health(h))).await.is_err() { break End::Lost }
                }
                _ = shutdown.cancelled() => {
                    // Half-close: the control plane sees a clean end and deregisters us;
                    // wait (briefly) for it to finish the stream.
                    drop(tx);
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Ok(Some(_)) = inbound.message().await {}
                    })
                    .await;
                    break End::Shutdown;
                }
            }
        };
        if unsaved {
            if let Err(error) = self.save_destinations().await {
                warn!(%error, "could not persist the destinations");
            }
        }
        Ok(end)
    }

    /// When to ask for a certificate: now without one in force, else at its renewal time.
    fn renewal_due(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        match self.state.identity.load().as_deref() {
            None => now,
            Some(w) => {
                let wait = w.renew_at_ms.saturating_sub(outrider_runtime::time::now_ms() as i64);
                now + Duration::from_millis(wait.max(0) as u64)
            }
        }
    }

    /// Checks, saves and puts in force an issued certificate; the next renewal time
    /// when it went in force. One that is not acceptable is logged and the retry
    /// already armed asks again.
    async fn accept_certificate(&self, c: Certificate) -> Option<tokio::time::Instant> {
        let files = self.workload.clone()?;
        let now = outrider_runtime::time::now_ms() as i64;
        let accepted = tokio::task::spawn_blocking(move || files.accept(&c.chain_pem, &c.trust_bundle_pem, now)).await;
        match accepted {
            Ok(Ok(w)) => {
                info!(identity = %w.spiffe_id, serial = %w.serial, not_after_ms = w.not_after_ms, "workload certificate in force");
                self.state.identity.store(Some(Arc::new(w)));
                Some(self.renewal_due())
            }
            Ok(Err(e)) => {
                warn!(error = %e, "not taking the issued certificate");
                None
            }
            Err(e) => {
                warn!(error = %e, "certificate task failed");
                None
            }
        }
    }

    /// Puts a new trust bundle in force with the certificate held; whether it did.
    async fn accept_trust_bundle(&self, bundle_pem: &str) -> bool {
        let (Some(files), Some(current)) = (self.workload.clone(), self.state.identity.load_full()) else {
            // No certificate yet: the one asked for brings the bundle with it.
            return false;
        };
        let now = outrider_runtime::time::now_ms() as i64;
        let bundle = bundle_pem.to_owned();
        match tokio::task::spawn_blocking(move || files.rebundle(&current, &bundle, now)).await {
            Ok(Ok(w)) => {
                info!(identity = %w.spiffe_id, "trust bundle in force");
                self.state.identity.store(Some(Arc::new(w)));
                true
            }
            Ok(Err(e)) => {
                warn!(error = %e, "not taking the trust bundle");
                false
            }
            Err(e) => {
                warn!(error = %e, "trust bundle task failed");
                false
            }
        }
    }

    /// Applies a destination update: `Some(None)` when it applied (acknowledged once
    /// saved), `Some(Some(nack))` when part of it was refused, `None` when it is out
    /// of order (the stream and this sidecar disagree: reconnect, and get a full
    /// resync).
    ///
    /// Unlike a snapshot, an update is enforced before it is saved: endpoints move
    /// whether this sidecar can write its disk or not, and routing to the ones that
    /// are gone would break traffic. Only its ACK waits for the disk.
    fn accept_destinations(&self, d: Destinations) -> Option<Option<SidecarMessage>> {
        let (version, nonce) = (d.version, d.nonce.clone());
        match self.state.apply_destinations(&d) {
            Ok(()) => Some(None),
            Err(e @ crate::state::DestinationsError::OutOfOrder { .. }) => {
                warn!(error = %e, "resynchronising destinations");
                None
            }
            Err(e) => {
                warn!(version, error = %e, "refusing part of a destination update");
                Some(Some(msg(sidecar_message::Msg::DestinationsNack(DestinationsNack {
                    version,
                    nonce,
                    error: e.to_string(),
                }))))
            }
        }
    }

    /// Saves the held destinations; the error is the NACK reason.
    async fn save_destinations(&self) -> Result<(), String> {
        let dir = self.state_dir.clone();
        let service = self.identity.service.clone();
        let table = self.state.held_destinations();
        match tokio::task::spawn_blocking(move || persist::save_destinations(&dir, &service, &table)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("state dir: {e}")),
            Err(e) => Err(format!("state dir: persist task failed: {e}")),
        }
    }

    /// Validates, makes durable, then enforces: the Ack means "in force and on disk".
    /// A snapshot that fails validation is refused; one that cannot be written is
    /// handed back with the reason. Either way the previous one stays in force.
    async fn accept(&self, s: Snapshot) -> Accepted {
        let revision = s.revision;
        if s.service != self.identity.service {
            let error = format!(
                "snapshot for service {:?}, this sidecar is {:?}",
                s.service, self.identity.service
            );
            warn!(revision, %error, "refusing snapshot");
            return Accepted::Refused(nack(&s, &error));
        }
        let prepared = match self.state.prepare(&s, Source::ControlPlane) {
            Ok(p) => p,
            Err(e) => {
                warn!(revision, error = %e, "refusing snapshot");
                return Accepted::Refused(nack(&s, &e.to_string()));
            }
        };
        // Held until the snapshot is in force, so the config-document owner never
        // writes the previous set over this one meanwhile.
        let writer = match &self.config_docs {
            Some(docs) => Some(docs.writer().await),
            None => None,
        };
        if let Some(w) = &writer {
            if let Err(e) = w.write(&doc_set(&prepared.configs)).await {
                let error = format!("config documents: {e}");
                warn!(revision, %error, "cannot make the snapshot durable; not enforcing it");
                self.restore_config_docs(w).await;
                return Accepted::NotDurable { snapshot: s, error };
            }
        }
        if let Some(files) = &self.secret_files {
            if let Err(e) = files.write(&s).await {
                let error = format!("secrets: {e}");
                warn!(revision, %error, "cannot make the snapshot durable; not enforcing it");
                if let Some(w) = &writer {
                    self.restore_config_docs(w).await;
                }
                return Accepted::NotDurable { snapshot: s, error };
            }
        }
        let dir = self.state_dir.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let r = persist::save(&dir, &s);
            (s, r)
        })
        .await;
        let (s, error) = match saved {
            Ok((s, Ok(()))) => (s, None),
            Ok((s, Err(e))) => (s, Some(format!("state dir: {e}"))),
            Err(e) => {
                // The task owned the snapshot; without it there is nothing to retry.
                let error = format!("state dir: persist task failed: {e}");
                warn!(revision, %error, "cannot make the snapshot durable; not enforcing it");
                return Accepted::Refused(nack_of(revision, prepared.nonce.clone(), error));
            }
        };
        if let Some(error) = error {
            warn!(revision, %error, "cannot make the snapshot durable; not enforcing it");
            if let Some(w) = &writer {
                self.restore_config_docs(w).await;
            }
            return Accepted::NotDurable { snapshot: s, error };
        }
        self.state.install(prepared);
        drop(writer);
        info!(revision, "snapshot applied");
        Accepted::Ack(msg(sidecar_message::Msg::Ack(Ack {
            revision,
            nonce: s.nonce,
        })))
    }

    /// Puts the app's config files back to the set in force after a snapshot was not
    /// made durable (best effort: the disk that refused it may refuse this too). With
    /// nothing in force yet, files from an earlier run stay as they are.
    async fn restore_config_docs(&self, writer: &Writer<'_>) {
        if let Some(current) = self.state.applied.load_full() {
            if let Err(e) = writer.write(&doc_set(&current.configs)).await {
                warn!(error = %e, "could not restore the config documents in force");
            }
        }
    }

    async fn health(&self, last: &mut (Instant, u64)) -> HealthReport {
        let f = self.state.metrics.health_figures();
        let now = Instant::now();
        let secs = now.duration_since(last.0).as_secs_f64().max(0.001);
        let rate = f.requests_total.saturating_sub(last.1) as f64 / secs;
        *last = (now, f.requests_total);
        let app_healthy = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(self.app_addr),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        HealthReport {
            app_healthy,
            requests_total: f.requests_total,
            errors_total: f.errors_total,
            rate_limited_total: f.rate_limited_total,
            latency: Some(LatencySummary {
                p50_ms: f.p50_ms,
                p99_ms: f.p99_ms,
            }),
            request_rate: rate,
            applied_revision: self.state.applied_revision(),
            destinations: self
                .state
                .applied
                .load()
                .as_ref()
                .map(|a| a.destinations.figures())
                .unwrap_or_default(),
            log_shipping: Some(log_shipping(&self.state)),
            authz_denied: self
                .state
                .metrics
                .authz
                .values()
                .into_iter()
                .map(|(dry_run, rule, count)| AuthzDenied { rule, dry_run, count })
                .collect(),
            plaintext_requests: self.state.metrics.plaintext_total(),
        }
    }
}

fn log_shipping(state: &SidecarState) -> LogShipping {
    let v = state.logs.figures.values();
    LogShipping {
        lines_read: v.lines_read,
        access_records: v.access_records,
        shipped: v.shipped,
        dropped: v.dropped,
        buffered_bytes: v.buffered_bytes,
        sink_errors: v.sink_errors,
    }
}

/// Resolves when the pending snapshot is due (never, without one).
async fn sleep_until_pending(pending: &Option<Pending>) {
    match pending {
        Some(p) => tokio::time::sleep_until(p.at).await,
        None => std::future::pending().await,
    }
}

/// Resolves at `at` (never, without one).
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn nack(s: &Snapshot, error: &str) -> SidecarMessage {
    nack_of(s.revision, s.nonce.clone(), error.to_owned())
}

fn nack_of(revision: u64, nonce: String, error: String) -> SidecarMessage {
    msg(sidecar_message::Msg::Nack(Nack { revision, nonce, error }))
}

fn msg(m: sidecar_message::Msg) -> SidecarMessage {
    SidecarMessage { msg: Some(m) }
}
