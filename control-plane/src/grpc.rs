//! The gRPC control stream (`docs/reference.md`): Hello → Snapshot → Ack/Nack, health reports.
//!
//! Each stream is one session task that owns the sidecar's registration: it registers
//! on Hello, forwards every new snapshot of the sidecar's service, sends the
//! destinations the sidecar watches (whole at first, then deltas, see `mesh`), records
//! Acks, Nacks and health, signs the sidecar's certificate requests for the identity it
//! registered as (see `ca`), and marks the sidecar disconnected when the stream ends.
//! A session that cannot send (its sidecar reads slowly) holds only itself up: what
//! changed meanwhile is coalesced and sent when it can send again.

use crate::ca::{self, Ca, CaError};
use crate::hub::Hub;
use crate::join;
use crate::mesh::{SessionId, Update, Wake, MAX_WATCHES};
use crate::store::{now_ms, SidecarRegistration, StoreError};
use outrider_proto::v1::control_plane_server::{ControlPlane, ControlPlaneServer};
use outrider_proto::v1::{
    control_message, sidecar_message, Certificate, CertificateRefused, CertificateRequest, ControlMessage,
    Destinations, Heartbeat, Hello, SidecarMessage, Snapshot, TrustBundle, Watch,
};
use outrider_runtime::shutdown::CancellationToken;
use prost::Message as _;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, info_span, warn, Instrument};

pub struct ControlService {
    hub: Arc<Hub>,
    registration_token: Option<String>,
    shutdown: CancellationToken,
    ca: Option<Arc<Ca>>,
    /// Whether the port serves TLS (all its streams then may carry secrets).
    tls: bool,
}

impl ControlService {
    pub fn new(hub: Arc<Hub>, registration_token: Option<String>, shutdown: CancellationToken) -> Self {
        Self {
            hub,
            registration_token,
            shutdown,
            ca: None,
            tls: false,
        }
    }

    /// Tells the service that its port serves TLS (see [`may_carry_secrets`]).
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Signs certificate requests with `ca`; without one they are refused.
    pub fn with_ca(mut self, ca: Arc<Ca>) -> Self {
        self.ca = Some(ca);
        self
    }

    pub fn into_server(self) -> ControlPlaneServer<Self> {
        // Every snapshot the API can produce fits (the limits are checked when
        // written); the sidecar decodes with the same bound.
        ControlPlaneServer::new(self).max_encoding_message_size(outrider_policy::limits::CONTROL_MESSAGE_MAX_BYTES)
    }
}

type OutStream = Pin<Box<dyn futures::Stream<Item = Result<ControlMessage, Status>> + Send>>;

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[tonic::async_trait]
impl ControlPlane for ControlService {
    type StreamStream = OutStream;

    async fn stream(&self, req: Request<Streaming<SidecarMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let secrets = may_carry_secrets(self.tls, req.remote_addr());
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10s"))??;
        let Some(SidecarMessage {
            msg: Some(sidecar_message::Msg::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        let reg = registration(&hello, &self.hub.replica).map_err(Status::invalid_argument)?;
        match join::check(
            self.hub.store(),
            self.registration_token.as_deref(),
            &hello.token,
            &reg.service,
        )
        .await
        {
            Ok(()) => {}
            Err(e @ join::Refusal::Unauthenticated(_)) => return Err(Status::unauthenticated(e.to_string())),
            Err(e @ join::Refusal::WrongService { .. }) => {
                warn!(id = %reg.id, error = %e, "registration refused");
                return Err(Status::permission_denied(e.to_string()));
            }
            Err(join::Refusal::Store(e)) => {
                warn!(error = %e, "cannot check a registration token");
                return Err(Status::unavailable("store unavailable; retry"));
            }
        }
        // Small: a sidecar that reads slowly holds few messages here (each may be a
        // large snapshot); the session coalesces the rest.
        let (tx, rx) = mpsc::channel(2);
        let span = info_span!("sidecar", service = %reg.service, pod = %reg.pod, version = %reg.version);
        let session = Session {
            hub: self.hub.clone(),
            reg,
            tx,
            shutdown: self.shutdown.clone(),
            initial_watch: hello.watch,
            ca: self.ca.clone(),
            secrets,
            told_withheld: false,
            destinations_nacked: false,
        };
        tokio::spawn(session.run(inbound).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The delivery rule for secrets: only a stream that is TLS (the control plane's own,
/// see `tls`) or whose peer is on this machine (a loopback address) carries them. Any
/// other stream is plaintext across a network, where a value could be read on the way.
pub fn may_carry_secrets(tls: bool, peer: Option<std::net::SocketAddr>) -> bool {
    tls || peer.is_some_and(|p| match p.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    })
}

/// The snapshot as a stream that may not carry secrets receives it: without them,
/// saying why, so its sidecar keeps the secret files it has.
fn without_secrets(snap: &Snapshot) -> Snapshot {
    Snapshot {
        secrets: Vec::new(),
        secrets_withheld: if snap.secrets_withheld.is_empty() {
            WITHHELD_ON_PLAINTEXT.to_owned()
        } else {
            snap.secrets_withheld.clone()
        },
        ..snap.clone()
    }
}

const WITHHELD_ON_PLAINTEXT: &str =
    "secrets are sent only over TLS or from a loopback address; this control stream is plaintext from another host";

fn registration(hello: &Hello, replica: &str) -> Result<SidecarRegistration, String> {
    let id = hello.identity.as_ref().ok_or("Hello without identity")?;
    outrider_policy::validate_service_name(&id.service)?;
    if id.pod.is_empty() || id.namespace.is_empty() {
        return Err("identity needs pod and namespace".into());
    }
    let port = |p: u32, what: &str| {
        if p == 0 || p > 65535 {
            Err(format!("invalid {what} port {p}"))
        } else {
            Ok(p)
        }
    };
    Ok(SidecarRegistration {
        id: format!("{}/{}", id.namespace, id.pod),
        service: id.service.clone(),
        version: if id.version.is_empty() {
            "v1".into()
        } else {
            id.version.clone()
        },
        namespace: id.namespace.clone(),
        pod: id.pod.clone(),
        address: id.address.clone(),
        inbound_port: port(id.inbound_port, "inbound")?,
        outbound_port: port(id.outbound_port, "outbound")?,
        admin_port: port(id.admin_port, "admin")?,
        build_version: hello.build_version.clone(),
        session: uuid::Uuid::new_v4().simple().to_string(),
        replica: replica.to_owned(),
        held_revision: hello.held_revision,
        instance: hello.instance.clone(),
    })
}

/// How a refused destinations update reads in a sidecar's `lastNack`.
const DESTINATIONS_NACK: &str = "destinations: ";

struct Session {
    hub: Arc<Hub>,
    reg: SidecarRegistration,
    tx: mpsc::Sender<Result<ControlMessage, Status>>,
    shutdown: CancellationToken,
    initial_watch: Vec<String>,
    ca: Option<Arc<Ca>>,
    /// Whether this stream may carry secrets (see [`may_carry_secrets`]).
    secrets: bool,
    /// Whether the log already says this stream's secrets are withheld.
    told_withheld: bool,
    /// Whether this stream's last word on destinations was a NACK: the ACK that follows
    /// clears it from the sidecar's row (and only then writes; ACKs are frequent).
    destinations_nacked: bool,
}

/// The CA's next change; never, without a CA (or once it is gone).
async fn changed_trust(trust: &mut Option<watch::Receiver<Arc<ca::Current>>>) -> Option<Arc<ca::Current>> {
    if let Some(t) = trust {
        if t.changed().await.is_ok() {
            return Some(t.borrow_and_update().clone());
        }
    }
    std::future::pending().await
}

/// The destinations one session sends: each watched service with the version last
/// sent, and the stream's own message version.
struct Watching {
    id: SessionId,
    wake: Arc<Wake>,
    held: HashMap<String, u64>,
    version: u64,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<SidecarMessage>) {
        let store = self.hub.store().clone();
        let registered = {
            // A fleet that (re)connects at once queues here rather than for the
            // store's pool, whose wait is bounded: joins wait their turn instead of
            // failing, and API reads and batched writes keep connections of their own.
            let _turn = self.hub.joins.acquire().await;
            let live_since = now_ms() - self.hub.timing.unhealthy_after.as_millis() as i64;
            store.register_sidecar_unless_live(&self.reg, live_since).await
        };
        match registered {
            Ok(()) => {}
            Err(StoreError::AlreadyExists) => {
                warn!(id = %self.reg.id, "refused: a live stream is registered with the same pod");
                let status = Status::already_exists(format!(
                    "sidecar {} is registered by a live stream; a second instance of the same pod is refused until that one has been silent for {:?}",
                    self.reg.id, self.hub.timing.unhealthy_after
                ));
                let _ = self.tx.send(Err(status)).await;
                return;
            }
            Err(e) => {
                warn!(error = %e, "registration failed");
                let _ = self.tx.send(Err(Status::unavailable("store unavailable; retry"))).await;
                return;
            }
        }
        info!(id = %self.reg.id, held_revision = self.reg.held_revision, "sidecar connected");
        self.hub.metrics.connected_sidecars.inc();
        // The newcomer joins its service's endpoints (debounced) and, the first time,
        // is counted before its first snapshot so that the split is right at once.
        match self.hub.mesh.join(&self.reg).await {
            Ok(changes) => self.hub.counts_changed(changes).await,
            Err(e) => warn!(error = %e, "membership read failed"),
        }
        let heartbeat = ControlMessage {
            msg: Some(control_message::Msg::Heartbeat(Heartbeat {
                report_interval_ms: self.hub.timing.report_interval.as_millis() as u32,
            })),
        };
        let clean = self.tx.send(Ok(heartbeat)).await.is_ok() && self.serve(&mut inbound).await;
        self.hub.metrics.connected_sidecars.dec();
        info!(id = %self.reg.id, clean, "sidecar stream closed");
        if let Some(acked) = self.hub.mesh.take_ack(&self.reg.id, &self.reg.session) {
            if let Err(e) = store.record_ack(&self.reg.id, &self.reg.session, acked).await {
                warn!(error = %e, "could not record the last ACK");
            }
        }
        if let Err(e) = store
            .disconnect_sidecar(&self.reg.id, &self.reg.session, &self.reg.service)
            .await
        {
            warn!(error = %e, "could not record the disconnect");
        }
        self.hub.mesh.leave(&self.reg.id, &self.reg.session, &self.reg.service);
    }

    /// Runs until the stream ends; true when the sidecar closed it cleanly.
    async fn serve(&mut self, inbound: &mut Streaming<SidecarMessage>) -> bool {
        let mut watching = Watching {
            id: self.hub.mesh.session_id(),
            wake: Arc::new(Wake::default()),
            held: HashMap::new(),
            version: 0,
        };
        let initial = Watch {
            add: std::mem::take(&mut self.initial_watch),
            remove: Vec::new(),
        };
        self.watch(&mut watching, initial).await;
        let clean = self.serve_watching(inbound, &mut watching).await;
        for service in watching.held.keys() {
            self.hub.mesh.unwatch(service, watching.id);
        }
        clean
    }

    async fn serve_watching(&mut self, inbound: &mut Streaming<SidecarMessage>, w: &mut Watching) -> bool {
        let store = self.hub.store().clone();
        let mut snapshots = self.hub.subscribe(&self.reg.service);
        // Mark the current value unseen so the first snapshot goes out at once.
        snapshots.mark_changed();
        // A sidecar that falls silent leaves its service's endpoints once the silence
        // passes the unhealthy window; this replica notices without any sweep.
        let quiet = self.hub.timing.unhealthy_after + Duration::from_millis(100);
        let silence = tokio::time::sleep(quiet);
        tokio::pin!(silence);
        let mut first_revision: Option<u64> = None;
        // Root rotation: a changed bundle, or a new signing root, goes out at once.
        let mut trust = self.ca.as_ref().map(|ca| ca.subscribe());
        let mut signer = trust.as_ref().map_or(0, |t| t.borrow().signer_generation);
        loop {
            tokio::select! {
                Some(current) = changed_trust(&mut trust) => {
                    let renew = current.signer_generation != signer;
                    signer = current.signer_generation;
                    info!(renew, "trust bundle changed; sending it");
                    let m = control_message::Msg::TrustBundle(TrustBundle {
                        trust_bundle_pem: current.bundle_pem.clone(),
                        renew,
                    });
                    if self.tx.send(Ok(ControlMessage { msg: Some(m) })).await.is_err() { return false }
                }
                changed = snapshots.changed() => {
                    if changed.is_err() { return false }
                    let snap = snapshots.borrow_and_update().clone();
                    if let Some(snap) = snap {
                        first_revision.get_or_insert(snap.revision);
                        let snap = if self.secrets {
                            (*snap).clone()
                        } else {
                            if !self.told_withheld {
                                self.told_withheld = true;
                                warn!(secrets = snap.secrets.len(), "{WITHHELD_ON_PLAINTEXT}: the stream's snapshots carry none");
                            }
                            without_secrets(&snap)
                        };
                        let msg = ControlMessage { msg: Some(control_message::Msg::Snapshot(snap)) };
                        self.hub.metrics.stream_bytes_sent.inc_by(msg.encoded_len() as u64);
                        if self.tx.send(Ok(msg)).await.is_err() { return false }
                        self.hub.metrics.snapshots_sent.inc();
                    }
                }
                _ = w.wake.wait() => {
                    if !self.send_destinations(w).await { return false }
                }
                _ = &mut silence => {
                    self.hub.mesh.mark_dirty(&self.reg.service);
                    silence.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(24 * 3600));
                }
                msg = inbound.message() => match msg {
                    Ok(Some(SidecarMessage { msg: Some(m) })) => {
                        silence.as_mut().reset(tokio::time::Instant::now() + quiet);
                        let (id, session) = (&self.reg.id, &self.reg.session);
                        let r = match m {
                            sidecar_message::Msg::Ack(a) => {
                                self.hub.metrics.acks.inc();
                                // Revisions up to the first snapshot's were written before
                                // this session began: they have no spread to measure here,
                                // and a whole fleet joining would otherwise read for each.
                                if a.revision > first_revision.unwrap_or(u64::MAX) {
                                    crate::propagation::on_ack(&self.hub, id, session, a.revision).await;
                                }
                                // `applied_revision` reaches the store with the next batch.
                                self.hub.mesh.acked(id, session, a.revision);
                                Ok(())
                            }
                            sidecar_message::Msg::Nack(n) => {
                                self.hub.metrics.nacks.inc();
                                self.hub.mesh.seen(id, session);
                                warn!(revision = n.revision, error = %n.error, "sidecar refused a snapshot");
                                // An ACK still waiting for its batch goes first: written
                                // after, it would clear this NACK.
                                match self.hub.mesh.take_ack(id, session) {
                                    Some(acked) => match store.record_ack(id, session, acked).await {
                                        Ok(()) => store.record_nack(id, session, n.revision, &n.error).await,
                                        Err(e) => Err(e),
                                    },
                                    None => store.record_nack(id, session, n.revision, &n.error).await,
                                }
                            }
                            sidecar_message::Msg::Health(h) => {
                                let json = health_json(&h).to_string();
                                // Reports gather in memory and reach the store in batches;
                                // one that changes the instance's health is written now.
                                if self.hub.mesh.report(id, session, json.clone(), h.app_healthy) {
                                    self.hub.metrics.health_rows_written.inc();
                                    store.record_health(id, session, &json, &self.reg.service).await
                                } else {
                                    Ok(())
                                }
                            }
                            sidecar_message::Msg::Watch(watch) => {
                                self.hub.mesh.seen(id, session);
                                self.watch(w, watch).await;
                                Ok(())
                            }
                            sidecar_message::Msg::DestinationsAck(_) => {
                                self.hub.mesh.seen(id, session);
                                if std::mem::take(&mut self.destinations_nacked) {
                                    store.clear_nack(id, session, DESTINATIONS_NACK).await
                                } else {
                                    Ok(())
                                }
                            }
                            sidecar_message::Msg::DestinationsNack(n) => {
                                self.hub.metrics.nacks.inc();
                                self.hub.mesh.seen(id, session);
                                warn!(version = n.version, error = %n.error, "sidecar refused destinations");
                                self.destinations_nacked = true;
                                store.record_nack(id, session, 0, &format!("{DESTINATIONS_NACK}{}", n.error)).await
                            }
                            sidecar_message::Msg::CertificateRequest(r) => {
                                self.hub.mesh.seen(id, session);
                                let (reply, issued) = self.certificate(&r);
                                if self.tx.send(Ok(reply)).await.is_err() { return false }
                                match issued {
                                    Some((identity, expiry)) => {
                                        let r = store.record_certificate(id, session, &identity, expiry).await;
                                        // Callers learn the endpoint now speaks mTLS (and as whom).
                                        self.hub.mesh.mark_dirty(&self.reg.service);
                                        r
                                    }
                                    None => Ok(()),
                                }
                            }
                            sidecar_message::Msg::Hello(_) => Ok(()),
                        };
                        if let Err(e) = r { warn!(error = %e, "could not record a sidecar message") }
                    }
                    Ok(Some(SidecarMessage { msg: None })) => {}
                    Ok(None) => return true,
                    Err(status) => {
                        info!(%status, "sidecar stream broke");
                        return false;
                    }
                },
                _ = self.shutdown.cancelled() => return false,
            }
        }
    }

    /// The answer to a certificate request, and what was issued (SPIFFE ID, expiry).
    /// Signing is a few hundred microseconds of CPU: done inline, like decoding.
    fn certificate(&self, r: &CertificateRequest) -> (ControlMessage, Option<(String, i64)>) {
        let refused = |error: String| {
            let m = control_message::Msg::CertificateRefused(CertificateRefused { error });
            (ControlMessage { msg: Some(m) }, None)
        };
        let Some(ca) = &self.ca else {
            return refused("this control plane issues no certificates".into());
        };
        match ca.issue(&r.csr_der, &self.reg.namespace, &self.reg.service) {
            Ok(issued) => {
                info!(identity = %issued.spiffe_id, not_after_ms = issued.not_after_ms, "certificate issued");
                let m = control_message::Msg::Certificate(Certificate {
                    chain_pem: issued.chain_pem,
                    trust_bundle_pem: issued.trust_bundle_pem,
                    not_after_ms: issued.not_after_ms,
                });
                (
                    ControlMessage { msg: Some(m) },
                    Some((issued.spiffe_id, issued.not_after_ms)),
                )
            }
            Err(e @ CaError::Refused(_)) => {
                warn!(error = %e, "certificate request refused");
                refused(e.to_string())
            }
            Err(e) => {
                warn!(error = %e, "could not sign a certificate");
                refused("signing failed; retry".into())
            }
        }
    }

    /// Adds and removes watched destinations. Names that are not service names, and
    /// names past [`MAX_WATCHES`], are not tracked (the sidecar's lookup then times out).
    async fn watch(&self, w: &mut Watching, watch: Watch) {
        for service in watch.remove {
            if w.held.remove(&service).is_some() {
                self.hub.mesh.unwatch(&service, w.id);
            }
        }
        for service in watch.add {
            if w.held.contains_key(&service) || outrider_policy::validate_service_name(&service).is_err() {
                continue;
            }
            if w.held.len() >= MAX_WATCHES {
                warn!(%service, limit = MAX_WATCHES, "too many destinations watched; not tracking more");
                break;
            }
            self.hub.metrics.watches.inc();
            w.held.insert(service.clone(), 0);
            if let Err(e) = self.hub.mesh.watch(&service, w.id, &w.wake).await {
                // Tracked all the same: the next membership read fills it in.
                warn!(%service, error = %e, "reading a watched destination failed");
                self.hub.mesh.mark_dirty(&service);
            }
        }
    }

    /// Sends what changed in the watched destinations since the last message, as one
    /// `Destinations`: whole services for new watches and routing changes, endpoint
    /// deltas otherwise. The first message of a stream is `full`.
    async fn send_destinations(&self, w: &mut Watching) -> bool {
        let mut msg = Destinations {
            full: w.version == 0,
            ..Default::default()
        };
        for service in w.wake.take() {
            let Some(held) = w.held.get_mut(&service) else { continue };
            match self.hub.mesh.since(&service, *held) {
                Update::Same => {}
                Update::Full(v, d) => {
                    msg.services.push((*d).clone());
                    *held = v;
                }
                Update::Delta(v, d) => {
                    msg.deltas.push(d);
                    *held = v;
                }
            }
        }
        if msg.services.is_empty() && msg.deltas.is_empty() {
            return true;
        }
        w.version += 1;
        msg.version = w.version;
        msg.nonce = uuid::Uuid::new_v4().simple().to_string();
        let msg = ControlMessage {
            msg: Some(control_message::Msg::Destinations(msg)),
        };
        self.hub.metrics.stream_bytes_sent.inc_by(msg.encoded_len() as u64);
        self.hub.metrics.destinations_sent.inc();
        self.tx.send(Ok(msg)).await.is_ok()
    }
}

fn health_json(h: &outrider_proto::v1::HealthReport) -> serde_json::Value {
    let lat = h.latency.unwrap_or_default();
    serde_json::json!({
        "appHealthy": h.app_healthy,
        "requestsTotal": h.requests_total,
        "errorsTotal": h.errors_total,
        "rateLimitedTotal": h.rate_limited_total,
        "requestRate": h.request_rate,
        "p50Ms": lat.p50_ms,
        "p99Ms": lat.p99_ms,
        "appliedRevision": h.applied_revision,
        "destinations": crate::traffic::figures_json(&h.destinations),
        "logShipping": h.log_shipping.map(|l| serde_json::json!({
            "linesRead": l.lines_read,
            "accessRecords": l.access_records,
            "shipped": l.shipped,
            "dropped": l.dropped,
            "bufferedBytes": l.buffered_bytes,
            "sinkErrors": l.sink_errors,
        })),
        "plaintextRequests": h.plaintext_requests,
        "authzDenied": h.authz_denied.iter().map(|d| serde_json::json!({
            "rule": d.rule,
            "dryRun": d.dry_run,
            "count": d.count,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    //! The control stream over a real loopback socket, against a real SQLite store.
    use super::*;
    use crate::hub::Timing;
    use crate::metrics::Metrics;
    use crate::store::Store;
    use outrider_proto::v1::control_plane_client::ControlPlaneClient;
    use outrider_proto::v1::{Ack, Identity, Nack, Snapshot};
    use tokio_stream::wrappers::TcpListenerStream;

    struct Fixture {
        hub: Arc<Hub>,
        endpoint: String,
        _stop: outrider_runtime::shutdown::DropGuard,
        _dir: tempfile::TempDir,
    }

    async fn control_plane(token: Option<&str>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        let ca_config = crate::ca::CaConfig {
            trust_domain: "outrider.local".into(),
            cert_ttl: Duration::from_secs(3600),
            ca_cert: None,
            ca_key: None,
        };
        let ca = Arc::new(Ca::open(&store, &ca_config).await.unwrap());
        let hub = Hub::new(store, Timing::default(), Arc::new(Metrics::new()));
        hub.load().await;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone().drop_guard();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(hub.clone().run_background(shutdown.clone()));
        let svc = ControlService::new(hub.clone(), token.map(str::to_owned), shutdown)
            .with_ca(ca)
            .into_server();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Fixture {
            hub,
            endpoint,
            _stop: stop,
            _dir: dir,
        }
    }

    fn hello(pod: &str, token: &str) -> SidecarMessage {
        hello_as("web", pod, "10.1.0.7", token, &[])
    }

    fn hello_as(service: &str, pod: &str, address: &str, token: &str, watch: &[&str]) -> SidecarMessage {
        SidecarMessage {
            msg: Some(sidecar_message::Msg::Hello(Hello {
                identity: Some(Identity {
                    service: service.into(),
                    version: "v2".into(),
                    namespace: "default".into(),
                    pod: pod.into(),
                    address: address.into(),
                    inbound_port: 15006,
                    outbound_port: 15001,
                    admin_port: 15000,
                }),
                token: token.into(),
                build_version: "test".into(),
                held_revision: 0,
                watch: watch.iter().map(|s| s.to_string()).collect(),
                instance: String::new(),
            })),
        }
    }

    async fn watch(s: &Stream, names: &[&str]) {
        let add = names.iter().map(|n| n.to_string()).collect();
        let msg = sidecar_message::Msg::Watch(Watch { add, remove: vec![] });
        s.tx.send(SidecarMessage { msg: Some(msg) }).await.unwrap();
    }

    /// The next message `pick` accepts, within 10 s; others before it are skipped.
    async fn next_of<T>(s: &mut Stream, pick: impl Fn(control_message::Msg) -> Option<T>) -> T {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), s.rx.message())
                .await
                .expect("a message within 10 s")
                .unwrap()
                .expect("the stream stays open");
            if let Some(t) = msg.msg.and_then(&pick) {
                return t;
            }
        }
    }

    async fn next_destinations(s: &mut Stream) -> Destinations {
        next_of(s, |m| match m {
            control_message::Msg::Destinations(d) => Some(d),
            _ => None,
        })
        .await
    }

    struct Stream {
        tx: mpsc::Sender<SidecarMessage>,
        rx: Streaming<ControlMessage>,
    }

    async fn open(endpoint: &str, first: SidecarMessage) -> Result<Stream, Status> {
        let mut client = ControlPlaneClient::connect(endpoint.to_owned()).await.unwrap();
        let (tx, rx) = mpsc::channel(8);
        tx.send(first).await.unwrap();
        let rx = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Stream { tx, rx })
    }

    async fn next_snapshot(s: &mut Stream) -> Snapshot {
        next_of(s, |m| match m {
            control_message::Msg::Snapshot(snap) => Some(snap),
            _ => None,
        })
        .await
    }

    /// Polls the store until `pred` holds for the sidecar's row (the session records
    /// messages asynchronously).
    async fn row_until(hub: &Hub, pred: impl Fn(&crate::store::SidecarRow) -> bool) -> crate::store::SidecarRow {
        for _ in 0..200 {
            let rows = hub.store().list_sidecars(Some("web")).await.unwrap();
            if let Some(r) = rows.into_iter().find(|r| pred(r)) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the sidecar row never reached the expected state");
    }

    #[tokio::test]
    async fn a_wrong_registration_token_is_refused_before_registering() {
        let cp = control_plane(Some("sekret")).await;
        let err = open(&cp.endpoint, hello("web-1", "guess"))
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(cp.hub.store().list_sidecars(None).await.unwrap().is_empty());
    }

    #[test]
    fn secrets_travel_only_over_tls_or_from_loopback() {
        let at = |a: &str| Some(a.parse::<std::net::SocketAddr>().unwrap());
        assert!(may_carry_secrets(false, at("127.0.0.1:5000")));
        assert!(may_carry_secrets(false, at("127.9.0.1:5000")));
        assert!(may_carry_secrets(false, at("[::1]:5000")));
        assert!(may_carry_secrets(false, at("[::ffff:127.0.0.1]:5000")));
        assert!(!may_carry_secrets(false, at("192.0.2.7:5000")));
        assert!(!may_carry_secrets(false, at("[::ffff:192.0.2.7]:5000")));
        assert!(!may_carry_secrets(false, at("[fd00::2]:5000")));
        assert!(!may_carry_secrets(false, None));
        assert!(may_carry_secrets(true, at("192.0.2.7:5000")));
        assert!(may_carry_secrets(true, None));
    }

    #[test]
    fn a_stream_without_secrets_is_told_why_and_keeps_an_earlier_reason() {
        let snap = Snapshot {
            secrets: vec![outrider_proto::v1::Secret {
                name: "db".into(),
                value: b"v".to_vec(),
                revision: 1,
            }],
            rate_limit: "{}".into(),
            ..Snapshot::default()
        };
        let sent = without_secrets(&snap);
        assert!(sent.secrets.is_empty());
        assert_eq!(sent.secrets_withheld, WITHHELD_ON_PLAINTEXT);
        assert_eq!(sent.rate_limit, "{}");
        let keyless = Snapshot {
            secrets_withheld: "no key".into(),
            ..Snapshot::default()
        };
        assert_eq!(without_secrets(&keyless).secrets_withheld, "no key");
    }

    #[tokio::test]
    async fn the_first_message_must_be_hello() {
        let cp = control_plane(None).await;
        let ack = SidecarMessage {
            msg: Some(sidecar_message::Msg::Ack(Ack::default())),
        };
        let err = open(&cp.endpoint, ack).await.err().expect("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn hello_gets_the_services_snapshot_and_acks_and_nacks_are_recorded() {
        let cp = control_plane(Some("sekret")).await;
        let mut s = open(&cp.endpoint, hello("web-1", "sekret")).await.unwrap();
        let snap = next_snapshot(&mut s).await;
        assert_eq!(snap.service, "web");

        let registered = row_until(&cp.hub, |r| r.pod == "web-1").await;
        assert_eq!(
            (registered.version.as_str(), registered.address.as_str()),
            ("v2", "10.1.0.7")
        );

        let nack = Nack {
            revision: snap.revision,
            nonce: snap.nonce.clone(),
            error: "rules[0]: bad".into(),
        };
        s.tx.send(SidecarMessage {
            msg: Some(sidecar_message::Msg::Nack(nack)),
        })
        .await
        .unwrap();
        let row = row_until(&cp.hub, |r| r.last_nack.is_some()).await;
        assert_eq!(row.last_nack.as_deref(), Some("rules[0]: bad"));

        // A write reaches the open stream as a new snapshot; its Ack is recorded.
        let doc = serde_json::json!({"rules": [{"name": "all", "requestsPerSecond": 5}]});
        let stored = cp
            .hub
            .store()
            .put_policy(
                "web",
                outrider_policy::PolicyKind::RateLimit,
                &doc,
                crate::store::Precondition::None,
                "test",
            )
            .await
            .unwrap();
        cp.hub.catch_up().await.unwrap();
        let snap = next_snapshot(&mut s).await;
        assert_eq!(snap.revision, stored.revision);
        let ack = Ack {
            revision: snap.revision,
            nonce: snap.nonce,
        };
        s.tx.send(SidecarMessage {
            msg: Some(sidecar_message::Msg::Ack(ack)),
        })
        .await
        .unwrap();
        row_until(&cp.hub, |r| r.applied_revision == stored.revision).await;
    }

    #[tokio::test]
    async fn a_destinations_ack_clears_the_destinations_nack_before_it_and_nothing_else() {
        use outrider_proto::v1::{DestinationsAck, DestinationsNack};
        let cp = control_plane(None).await;
        let mut s = open(&cp.endpoint, hello("web-1", "")).await.unwrap();
        let snap = next_snapshot(&mut s).await;
        let send = |m| SidecarMessage { msg: Some(m) };
        let dnack = |error: &str| {
            send(sidecar_message::Msg::DestinationsNack(DestinationsNack {
                version: 3,
                nonce: "n".into(),
                error: error.into(),
            }))
        };
        let dack = || {
            send(sidecar_message::Msg::DestinationsAck(DestinationsAck {
                version: 4,
                nonce: "n".into(),
            }))
        };

        s.tx.send(dnack("endpoint 10.0.0.1:x: bad port")).await.unwrap();
        let row = row_until(&cp.hub, |r| r.last_nack.is_some()).await;
        assert_eq!(
            row.last_nack.as_deref(),
            Some("destinations: endpoint 10.0.0.1:x: bad port")
        );
        s.tx.send(dack()).await.unwrap();
        row_until(&cp.hub, |r| r.last_nack.is_none()).await;

        // A policy NACK after a destinations NACK is not the destinations ACK's to clear.
        s.tx.send(dnack("again")).await.unwrap();
        row_until(&cp.hub, |r| r.last_nack.as_deref() == Some("destinations: again")).await;
        let nack = Nack {
            revision: snap.revision,
            nonce: snap.nonce.clone(),
            error: "rules[0]: bad".into(),
        };
        s.tx.send(send(sidecar_message::Msg::Nack(nack))).await.unwrap();
        row_until(&cp.hub, |r| r.last_nack.as_deref() == Some("rules[0]: bad")).await;
        s.tx.send(dack()).await.unwrap();
        // Messages of a stream are handled in order: once the certificate requested
        // after the ACK is recorded, the ACK has had its effect.
        s.tx.send(csr_for(vec![])).await.unwrap();
        let row = row_until(&cp.hub, |r| r.identity.is_some()).await;
        assert_eq!(row.last_nack.as_deref(), Some("rules[0]: bad"));
    }

    fn csr_for(sans: Vec<rcgen::SanType>) -> SidecarMessage {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        let csr_der = params.serialize_request(&key).unwrap().der().to_vec();
        SidecarMessage {
            msg: Some(sidecar_message::Msg::CertificateRequest(CertificateRequest { csr_der })),
        }
    }

    #[tokio::test]
    async fn a_stream_gets_a_certificate_only_for_the_identity_it_registered_as() {
        let cp = control_plane(None).await;
        let mut s = open(&cp.endpoint, hello("web-1", "")).await.unwrap();
        next_snapshot(&mut s).await;
        let db = rcgen::SanType::URI("spiffe://outrider.local/ns/default/svc/db".try_into().unwrap());
        s.tx.send(csr_for(vec![db])).await.unwrap();
        let refused = next_of(&mut s, |m| match m {
            control_message::Msg::CertificateRefused(r) => Some(r),
            _ => None,
        })
        .await;
        assert!(refused.error.contains("svc/db"), "{}", refused.error);
        let row = row_until(&cp.hub, |r| r.pod == "web-1").await;
        assert_eq!(row.identity, None, "nothing recorded for a refused request");

        s.tx.send(csr_for(vec![])).await.unwrap();
        let cert = next_of(&mut s, |m| match m {
            control_message::Msg::Certificate(c) => Some(c),
            _ => None,
        })
        .await;
        assert!(cert.chain_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!cert.trust_bundle_pem.is_empty());
        let row = row_until(&cp.hub, |r| r.identity.is_some()).await;
        assert_eq!(
            row.identity.as_deref(),
            Some("spiffe://outrider.local/ns/default/svc/web")
        );
        assert_eq!(row.certificate_expiry_ms, Some(cert.not_after_ms));
    }

    #[tokio::test]
    async fn a_caller_gets_what_it_watches_whole_then_as_deltas_and_nobody_else_hears_of_it() {
        let cp = control_plane(None).await;
        let mut caller = open(&cp.endpoint, hello_as("client", "client-1", "10.1.0.9", "", &["web"]))
            .await
            .unwrap();
        let first = next_destinations(&mut caller).await;
        assert!(first.full && first.version == 1, "{first:?}");
        assert_eq!(first.services.len(), 1);
        assert_eq!(first.services[0].service, "web");
        assert!(first.services[0].endpoints.is_empty(), "no web instance yet");

        let mut bystander = open(&cp.endpoint, hello_as("other", "other-1", "10.1.0.10", "", &[]))
            .await
            .unwrap();
        next_snapshot(&mut bystander).await;

        let mut web = open(&cp.endpoint, hello("web-1", "")).await.unwrap();
        next_snapshot(&mut web).await;
        let joined = next_destinations(&mut caller).await;
        assert_eq!((joined.full, joined.version), (false, 2));
        assert!(joined.services.is_empty(), "a join is a delta, not the whole service");
        assert_eq!(joined.deltas.len(), 1);
        let added: Vec<_> = joined.deltas[0].upsert.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(added, ["10.1.0.7"]);

        drop(web.tx);
        let left = next_destinations(&mut caller).await;
        assert_eq!(left.version, 3);
        let removed: Vec<_> = left.deltas[0].remove.iter().map(|k| k.address.as_str()).collect();
        assert_eq!(removed, ["10.1.0.7"]);

        // Had the bystander received any destination update, its first one now would
        // not be version 1.
        watch(&bystander, &["web"]).await;
        let seen = next_destinations(&mut bystander).await;
        assert_eq!((seen.full, seen.version), (true, 1));
        assert!(seen.services[0].endpoints.is_empty());
    }

    #[tokio::test]
    async fn a_name_outside_the_mesh_is_answered_at_once_with_an_empty_destination() {
        let cp = control_plane(None).await;
        let mut caller = open(&cp.endpoint, hello_as("client", "client-1", "10.1.0.9", "", &[]))
            .await
            .unwrap();
        next_snapshot(&mut caller).await;
        watch(&caller, &["nowhere", "Not A Name"]).await;
        let d = next_destinations(&mut caller).await;
        let names: Vec<_> = d.services.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(names, ["nowhere"], "an invalid name is not tracked");
        assert!(d.services[0].endpoints.is_empty() && d.services[0].routing.is_empty());
    }
}
