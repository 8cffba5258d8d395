//! A fake control plane for sidecar tests: a real tonic server on a loopback port that
//! speaks the control stream, scripted by the test and observed by it.
//!
//! The test decides what each stream receives (snapshots with any revision, nonce and
//! contents, valid or not; heartbeats) and reads what the sidecar sends (its Hello with
//! the held revision, Acks and Nacks with nonce and error, health reports). It can end a
//! stream cleanly or with an error, and stop the whole server (every stream broken, the
//! port closed) and start it again on the same address, as a control plane that
//! crashes and comes back would. Nothing is stored: there is no hub and no database.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use outrider_testkit::fake_control_plane::{snapshot, FakeControlPlane, Reply};
//! let mut cp = FakeControlPlane::start().await?;
//! // … start a sidecar with OUTRIDER_CONTROL_PLANE = cp.url() …
//! let mut stream = cp.accept().await?;
//! assert_eq!(stream.hello.held_revision, 0);
//! stream.send(snapshot("web", 3))?;
//! assert!(matches!(stream.next_reply().await?, Reply::Ack(a) if a.revision == 3));
//! # Ok(()) }
//! ```

use anyhow::{anyhow, bail, Context};
use outrider_proto::v1::control_plane_server::{ControlPlane, ControlPlaneServer};
use outrider_proto::v1::{
    control_message, sidecar_message, Ack, ControlMessage, Destinations, DestinationsAck, DestinationsNack,
    HealthReport, Heartbeat, Hello, Nack, SidecarMessage, Snapshot, Watch,
};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// How long [`FakeControlPlane::accept`] and the [`Stream`] readers wait for the sidecar.
/// Generous: a sidecar binary on a loaded machine takes a while to start.
pub const WAIT: Duration = Duration::from_secs(20);

type ToSidecar = Result<ControlMessage, Status>;

/// A running fake control plane on `127.0.0.1`.
pub struct FakeControlPlane {
    addr: SocketAddr,
    streams: mpsc::UnboundedReceiver<Stream>,
    /// Senders of every open stream, to break them all on [`FakeControlPlane::stop`];
    /// weak, so that dropping a [`Stream`] still ends its stream cleanly.
    open: Arc<Mutex<Vec<mpsc::WeakSender<ToSidecar>>>>,
    stopping: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl FakeControlPlane {
    /// Listens on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Listens on `addr`: after [`FakeControlPlane::stop`], the same address brings the
    /// control plane "back" for sidecars that keep reconnecting to it.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("fake control plane cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let (streams_tx, streams) = mpsc::unbounded_channel();
        let open = Arc::new(Mutex::new(Vec::new()));
        let (stopping, stopped) = watch::channel(false);
        let service = Service {
            streams: streams_tx,
            open: Arc::clone(&open),
            stopped,
        };
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(ControlPlaneServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Ok(Self {
            addr,
            streams,
            open,
            stopping,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value for `OUTRIDER_CONTROL_PLANE`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next stream a sidecar opened (its Hello already read), within [`WAIT`].
    pub async fn accept(&mut self) -> anyhow::Result<Stream> {
        match tokio::time::timeout(WAIT, self.streams.recv()).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => bail!("the fake control plane's server has stopped"),
            Err(_) => bail!("no sidecar opened a control stream within {WAIT:?}"),
        }
    }

    /// Breaks every open stream with `UNAVAILABLE` and closes the port, as a crashed
    /// control plane would; sidecars see the stream fail and their reconnects refused.
    pub async fn stop(mut self) {
        let _ = self.stopping.send(true);
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|e| e.into_inner()));
        for tx in open.iter().filter_map(mpsc::WeakSender::upgrade) {
            let _ = tx.try_send(Err(Status::unavailable("control plane stopped")));
        }
        // Dropping the server future drops the listener: the port refuses connections
        // from here on.
        self.server.abort();
        let _ = (&mut self.server).await;
    }
}

impl Drop for FakeControlPlane {
    /// A test that ends without `stop` does not leave the server running.
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What the sidecar answered to a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Ack(Ack),
    Nack(Nack),
    DestinationsAck(DestinationsAck),
    DestinationsNack(DestinationsNack),
}

/// One sidecar's control stream, seen from the control plane's side. Dropping it ends
/// the stream cleanly (the sidecar sees the end of the response and reconnects).
pub struct Stream {
    /// The first message of the stream.
    pub hello: Hello,
    to_sidecar: mpsc::Sender<ToSidecar>,
    from_sidecar: mpsc::UnboundedReceiver<sidecar_message::Msg>,
}

impl Stream {
    /// Sends a snapshot as it is: nothing is checked or filled in.
    pub fn send(&self, snapshot: Snapshot) -> anyhow::Result<()> {
        self.push(control_message::Msg::Snapshot(snapshot))
    }

    /// Sends a destination update as it is.
    pub fn send_destinations(&self, destinations: Destinations) -> anyhow::Result<()> {
        self.push(control_message::Msg::Destinations(destinations))
    }

    /// The next `Watch`, within [`WAIT`]; other messages before it are skipped.
    pub async fn next_watch(&mut self) -> anyhow::Result<Watch> {
        loop {
            if let sidecar_message::Msg::Watch(w) = self.next().await? {
                return Ok(w);
            }
        }
    }

    /// Asks for health reports every `report_interval_ms` (the sidecar clamps it).
    pub fn heartbeat(&self, report_interval_ms: u32) -> anyhow::Result<()> {
        self.push(control_message::Msg::Heartbeat(Heartbeat { report_interval_ms }))
    }

    fn push(&self, msg: control_message::Msg) -> anyhow::Result<()> {
        self.to_sidecar
            .try_send(Ok(ControlMessage { msg: Some(msg) }))
            .map_err(|e| anyhow!("cannot send on the control stream: {e}"))
    }

    /// The next Ack or Nack, within [`WAIT`]; health reports before it are skipped.
    pub async fn next_reply(&mut self) -> anyhow::Result<Reply> {
        loop {
            match self.next().await? {
                sidecar_message::Msg::Ack(a) => return Ok(Reply::Ack(a)),
                sidecar_message::Msg::Nack(n) => return Ok(Reply::Nack(n)),
                sidecar_message::Msg::DestinationsAck(a) => return Ok(Reply::DestinationsAck(a)),
                sidecar_message::Msg::DestinationsNack(n) => return Ok(Reply::DestinationsNack(n)),
                sidecar_message::Msg::Health(_)
                | sidecar_message::Msg::Watch(_)
                | sidecar_message::Msg::CertificateRequest(_) => {}
                sidecar_message::Msg::Hello(h) => bail!("a second Hello on one stream: {h:?}"),
            }
        }
    }

    /// The next health report, within [`WAIT`]; Acks and Nacks before it are skipped.
    pub async fn next_health(&mut self) -> anyhow::Result<HealthReport> {
        loop {
            if let sidecar_message::Msg::Health(h) = self.next().await? {
                return Ok(h);
            }
        }
    }

    /// The next message of any kind, within [`WAIT`].
    pub async fn next(&mut self) -> anyhow::Result<sidecar_message::Msg> {
        match tokio::time::timeout(WAIT, self.from_sidecar.recv()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => bail!("the sidecar ended the control stream"),
            Err(_) => bail!("the sidecar sent nothing within {WAIT:?}"),
        }
    }

    /// Waits (within [`WAIT`]) until the sidecar has ended its side of the stream,
    /// skipping whatever it still sends.
    pub async fn ended(&mut self) -> anyhow::Result<()> {
        let drained = tokio::time::timeout(WAIT, async { while self.from_sidecar.recv().await.is_some() {} });
        drained
            .await
            .map_err(|_| anyhow!("the sidecar kept the stream open past {WAIT:?}"))
    }

    /// Ends the stream with `status`, as a control plane failing one session would.
    pub fn fail(self, status: Status) {
        let _ = self.to_sidecar.try_send(Err(status));
    }
}

/// A minimal valid snapshot for `service` at `revision` (nonce `n<revision>`): no
/// policies, no destinations, the whole service share.
pub fn snapshot(service: &str, revision: u64) -> Snapshot {
    Snapshot {
        revision,
        nonce: format!("n{revision}"),
        service: service.to_owned(),
        service_share: 1.0,
        healthy_instances: 1,
        ..Snapshot::default()
    }
}

struct Service {
    streams: mpsc::UnboundedSender<Stream>,
    open: Arc<Mutex<Vec<mpsc::WeakSender<ToSidecar>>>>,
    stopped: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl ControlPlane for Service {
    type StreamStream = ReceiverStream<ToSidecar>;

    async fn stream(&self, req: Request<Streaming<SidecarMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(WAIT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello"))??;
        let Some(SidecarMessage {
            msg: Some(sidecar_message::Msg::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        let (to_sidecar, rx) = mpsc::channel(64);
        let (from_tx, from_sidecar) = mpsc::unbounded_channel();
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(to_sidecar.downgrade());
        let mut stopped = self.stopped.clone();
        // Reads the sidecar's side until it ends, or until the server stops (a stopped
        // control plane reads nothing more).
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(SidecarMessage { msg: Some(m) })) => {
                            if from_tx.send(m).is_err() { return }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => return,
                    },
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        });
        let stream = Stream {
            hello,
            to_sidecar,
            from_sidecar,
        };
        self.streams
            .send(stream)
            .map_err(|_| Status::unavailable("the test is no longer listening"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
