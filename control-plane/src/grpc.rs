//! The gRPC control stream (DESIGN §3): Hello → Snapshot → Ack/Nack, health reports.
//!
//! Each stream is one session task that owns the sidecar's registration: it registers
//! on Hello, forwards every new snapshot of the sidecar's service, records Acks, Nacks
//! and health, and marks the sidecar disconnected when the stream ends.

use crate::hub::Hub;
use crate::store::SidecarRegistration;
use outrider_proto::v1::control_plane_server::{ControlPlane, ControlPlaneServer};
use outrider_proto::v1::{control_message, sidecar_message, ControlMessage, Heartbeat, Hello, SidecarMessage};
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
    shutdown: watch::Receiver<bool>,
}

impl ControlService {
    pub fn new(hub: Arc<Hub>, registration_token: Option<String>, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            hub,
            registration_token,
            shutdown,
        }
    }

    pub fn into_server(self) -> ControlPlaneServer<Self> {
        ControlPlaneServer::new(self)
    }
}

type OutStream = Pin<Box<dyn futures::Stream<Item = Result<ControlMessage, Status>> + Send>>;

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[tonic::async_trait]
impl ControlPlane for ControlService {
    type StreamStream = OutStream;

    async fn stream(&self, req: Request<Streaming<SidecarMessage>>) -> Result<Response<Self::StreamStream>, Status> {
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
        if let Some(expected) = &self.registration_token {
            if !constant_time_eq(hello.token.as_bytes(), expected.as_bytes()) {
                return Err(Status::unauthenticated("invalid registration token"));
            }
        }
        let reg = registration(&hello, &self.hub.replica).map_err(Status::invalid_argument)?;
        let (tx, rx) = mpsc::channel(16);
        let span = info_span!("sidecar", service = %reg.service, pod = %reg.pod, version = %reg.version);
        let session = Session {
            hub: self.hub.clone(),
            reg,
            tx,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(session.run(inbound).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

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
    })
}

struct Session {
    hub: Arc<Hub>,
    reg: SidecarRegistration,
    tx: mpsc::Sender<Result<ControlMessage, Status>>,
    shutdown: watch::Receiver<bool>,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<SidecarMessage>) {
        let store = self.hub.store().clone();
        if let Err(e) = store.register_sidecar(&self.reg).await {
            warn!(error = %e, "registration failed");
            let _ = self.tx.send(Err(Status::unavailable("store unavailable; retry"))).await;
            return;
        }
        info!(id = %self.reg.id, held_revision = self.reg.held_revision, "sidecar connected");
        self.hub.metrics.connected_sidecars.inc();
        // The newcomer changes the split of `scope: service` limits for its service.
        if let Err(e) = self.hub.check_membership().await {
            warn!(error = %e, "membership check failed");
        }
        let heartbeat = ControlMessage {
            msg: Some(control_message::Msg::Heartbeat(Heartbeat {
                report_interval_ms: self.hub.timing.report_interval.as_millis() as u32,
            })),
        };
        let clean = self.tx.send(Ok(heartbeat)).await.is_ok() && self.serve(&mut inbound).await;
        self.hub.metrics.connected_sidecars.dec();
        info!(id = %self.reg.id, clean, "sidecar stream closed");
        if let Err(e) = store
            .disconnect_sidecar(&self.reg.id, &self.reg.session, &self.reg.service)
            .await
        {
            warn!(error = %e, "could not record the disconnect");
        }
        if let Err(e) = self.hub.check_membership().await {
            warn!(error = %e, "membership check failed");
        }
    }

    /// Runs until the stream ends; true when the sidecar closed it cleanly.
    async fn serve(&mut self, inbound: &mut Streaming<SidecarMessage>) -> bool {
        let store = self.hub.store().clone();
        let mut snapshots = self.hub.subscribe(&self.reg.service);
        // Mark the current value unseen so the first snapshot goes out at once.
        snapshots.mark_changed();
        loop {
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() { return false }
                    let snap = snapshots.borrow_and_update().clone();
                    if let Some(snap) = snap {
                        let msg = ControlMessage { msg: Some(control_message::Msg::Snapshot((*snap).clone())) };
                        if self.tx.send(Ok(msg)).await.is_err() { return false }
                        self.hub.metrics.snapshots_sent.inc();
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(SidecarMessage { msg: Some(m) })) => {
                        let r = match m {
                            sidecar_message::Msg::Ack(a) => {
                                self.hub.metrics.acks.inc();
                                crate::propagation::on_ack(&self.hub, &self.reg.id, &self.reg.session, a.revision).await;
                                store.record_ack(&self.reg.id, &self.reg.session, a.revision).await
                            }
                            sidecar_message::Msg::Nack(n) => {
                                self.hub.metrics.nacks.inc();
                                warn!(revision = n.revision, error = %n.error, "sidecar refused a snapshot");
                                store.record_nack(&self.reg.id, &self.reg.session, n.revision, &n.error).await
                            }
                            sidecar_message::Msg::Health(h) => {
                                store.record_health(&self.reg.id, &self.reg.session, &health_json(&h)).await
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
                _ = crate::hub::stopped(&mut self.shutdown) => return false,
            }
        }
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
    })
}

/// Token comparison whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
