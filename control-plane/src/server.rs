//! Configuration and the process lifecycle: [`bind`] the listeners, then [`run`]:
//! open the store, load, serve gRPC and HTTP on the listeners given, drain on shutdown.

use crate::api::guard::Guard;
use crate::api::{self, AppState};
use crate::auth::AuthThrottle;
use crate::ca::{Ca, CaConfig, CaError, San};
use crate::grpc::ControlService;
use crate::hub::{Hub, Timing};
use crate::listen::{serve_http, tls_incoming, HandshakeDeadline, HttpLimits};
use crate::metrics::Metrics;
use crate::server_cert::IssuedCert;
use crate::store::{Backend, Store, StoreError};
use crate::tls::ServerTls;
use crate::vault::SecretsKey;
use outrider_runtime::shutdown::{CancellationToken, TaskTracker};
use outrider_runtime::Backoff;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tracing::Instrument;
use tracing::{info, warn};

/// A token setting as it counts: an empty or blank value is no token, so that
/// `OUTRIDER_API_TOKEN=` neither passes the public-listener check nor turns
/// authentication off by matching an empty bearer.
fn present(token: &Option<String>) -> Option<String> {
    token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// Every setting is a flag and an environment variable (see `docs/reference.md`).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// gRPC listener for sidecars.
    #[arg(long, env = "OUTRIDER_GRPC_ADDR", default_value = "0.0.0.0:18000")]
    pub grpc_addr: SocketAddr,
    /// HTTP listener: REST API, dashboard, /metrics, /healthz, /readyz.
    #[arg(long, env = "OUTRIDER_HTTP_ADDR", default_value = "0.0.0.0:18080")]
    pub http_addr: SocketAddr,
    /// PostgreSQL URL; without one the embedded SQLite store in --data-dir is used.
    #[arg(long, env = "OUTRIDER_DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// Directory of the embedded store.
    #[arg(long, env = "OUTRIDER_DATA_DIR", default_value = "./outrider-data", global = true)]
    pub data_dir: PathBuf,
    /// Bearer token required by the REST API.
    #[arg(long, env = "OUTRIDER_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Token sidecars must present to register.
    #[arg(long, env = "OUTRIDER_REGISTRATION_TOKEN", hide_env_values = true)]
    pub registration_token: Option<String>,
    /// Allow listening on non-loopback addresses without tokens.
    #[arg(long, env = "OUTRIDER_INSECURE")]
    pub insecure: bool,
    /// How often sidecars report health.
    #[arg(long, env = "OUTRIDER_REPORT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub report_interval: Duration,
    /// Silence after which a sidecar is unhealthy.
    #[arg(long, env = "OUTRIDER_UNHEALTHY_AFTER", default_value = "5s", value_parser = parse_duration)]
    pub unhealthy_after: Duration,
    /// Silence after which a sidecar is disconnected.
    #[arg(long, env = "OUTRIDER_DISCONNECTED_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub disconnected_after: Duration,
    /// Origins (scheme://host[:port]) besides the control plane's own whose pages may
    /// write through the API, comma-separated; their hosts are allowed hosts too.
    #[arg(long, env = "OUTRIDER_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Host names a loopback HTTP listener answers besides localhost, 127.0.0.1 and
    /// [::1], comma-separated (a name that resolves to this machine, e.g. behind a tunnel).
    #[arg(long, env = "OUTRIDER_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Time the HTTP port gives a request head, and an idle kept-alive connection.
    #[arg(long, env = "OUTRIDER_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,
    /// HTTP connections open at once; more wait to be accepted.
    #[arg(long, env = "OUTRIDER_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,
    /// Time a gRPC client has to send the HTTP/2 preface and its first frame.
    #[arg(long, env = "OUTRIDER_GRPC_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub grpc_handshake_timeout: Duration,
    /// Failed authentications a client address may have per minute before it gets 429.
    #[arg(long, env = "OUTRIDER_AUTH_FAILURES_PER_MINUTE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failures_per_minute: u32,
    /// PEM certificate chain (leaf first) to serve both ports over TLS; needs --tls-key.
    #[arg(long, env = "OUTRIDER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "OUTRIDER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// DNS names and IP addresses (comma-separated) to serve both ports over TLS with
    /// a certificate from the control plane's own CA, renewed before it expires.
    #[arg(long, env = "OUTRIDER_TLS_SAN", value_delimiter = ',', value_parser = parse_san)]
    pub tls_san: Vec<San>,
    /// Serve the sidecar injection webhook (POST /inject, over TLS) here; off unless given.
    #[arg(long, env = "OUTRIDER_WEBHOOK_ADDR")]
    pub webhook_addr: Option<SocketAddr>,
    /// The namespace the control plane runs in: the webhook's certificate is for
    /// outrider-webhook.<namespace>.svc. Default: POD_NAMESPACE, else outrider.
    #[arg(long, env = "OUTRIDER_NAMESPACE")]
    pub namespace: Option<String>,
    /// The image of injected sidecars (and their init container).
    #[arg(long, env = "OUTRIDER_SIDECAR_IMAGE", default_value = outrider_inject::DEFAULT_IMAGE)]
    pub sidecar_image: String,
    /// The UID injected sidecars run as; capture leaves its traffic alone.
    #[arg(long, env = "OUTRIDER_PROXY_UID", default_value_t = outrider_inject::DEFAULT_PROXY_UID,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub proxy_uid: u32,
    /// OUTRIDER_CONTROL_PLANE of injected sidecars: this control plane's gRPC port as
    /// Pods reach it.
    #[arg(long, env = "OUTRIDER_INJECTED_CONTROL_PLANE", default_value = outrider_inject::DEFAULT_CONTROL_PLANE)]
    pub injected_control_plane: String,
    /// The SPIFFE trust domain of workload identities.
    #[arg(long, env = "OUTRIDER_TRUST_DOMAIN", default_value = "outrider.local")]
    pub trust_domain: String,
    /// Lifetime of the workload certificates issued to sidecars.
    #[arg(long, env = "OUTRIDER_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,
    /// The operator's issuing CA certificate (PEM; its chain may follow) instead of a
    /// root kept in the store. Needs --ca-key.
    #[arg(long, env = "OUTRIDER_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The key of --ca-cert (PEM, PKCS #8).
    #[arg(long, env = "OUTRIDER_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// The key secrets are encrypted with: a file of 32 random bytes, raw, as 64 hex
    /// digits or as base64. Without one the embedded store generates
    /// <data-dir>/secrets.key; PostgreSQL then refuses secret writes.
    #[arg(long, env = "OUTRIDER_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
}

fn parse_san(s: &str) -> Result<San, String> {
    s.parse()
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<outrider_policy::Duration>().map(|d| d.0)
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "refusing to listen on {addr} ({what}) without {token}: set the token, bind a loopback address, or pass --insecure"
    )]
    Insecure {
        addr: SocketAddr,
        what: &'static str,
        token: &'static str,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Guard(#[from] crate::api::guard::GuardError),
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
    #[error(transparent)]
    SecretsKey(#[from] crate::vault::VaultError),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "--tls-san (OUTRIDER_TLS_SAN) and --tls-cert/--tls-key (OUTRIDER_TLS_CERT/OUTRIDER_TLS_KEY) are both set: serve either the operator's certificate or one from the mesh CA"
    )]
    TlsConflict,
    #[error("--injected-control-plane {0:?}: expected an http:// or https:// URL")]
    InjectedControlPlane(String),
    #[error("--namespace {0:?}: {1}")]
    Namespace(String, String),
}

/// How both ports speak, before the CA is open.
pub enum TlsMode {
    Plaintext,
    /// The operator's certificate (`--tls-cert`/`--tls-key`).
    Files(ServerTls),
    /// A certificate from the mesh CA for these names (`--tls-san`).
    Issued(Vec<San>),
}

impl Config {
    /// The CA's part of the settings.
    pub fn ca_config(&self) -> CaConfig {
        CaConfig {
            trust_domain: self.trust_domain.clone(),
            cert_ttl: self.cert_ttl,
            ca_cert: self.ca_cert.clone(),
            ca_key: self.ca_key.clone(),
        }
    }

    /// Security by default: no public listener without the token that protects it.
    /// Join tokens in the store protect registration too, but the store is not open
    /// yet here: [`run`] checks the gRPC address again once it is.
    pub fn check_security(&self) -> Result<(), ServerError> {
        self.check_addresses(self.http_addr, self.grpc_addr, true)
    }

    /// The same check for the addresses actually listened on; `join_tokens`: whether
    /// live join tokens exist in the store (or may, before it is open).
    fn check_addresses(&self, http: SocketAddr, grpc: SocketAddr, join_tokens: bool) -> Result<(), ServerError> {
        if self.insecure {
            return Ok(());
        }
        if !http.ip().is_loopback() && present(&self.api_token).is_none() {
            return Err(ServerError::Insecure {
                addr: http,
                what: "REST API",
                token: "OUTRIDER_API_TOKEN",
            });
        }
        if !grpc.ip().is_loopback() && present(&self.registration_token).is_none() && !join_tokens {
            return Err(ServerError::Insecure {
                addr: grpc,
                what: "sidecar registration",
                token: "OUTRIDER_REGISTRATION_TOKEN or a join token",
            });
        }
        Ok(())
    }

    /// How both ports speak TLS. TLS is no substitute for a token: the security
    /// check above is the same either way.
    pub fn tls_mode(&self) -> Result<TlsMode, ServerError> {
        if !self.tls_san.is_empty() {
            if self.tls_cert.is_some() || self.tls_key.is_some() {
                return Err(ServerError::TlsConflict);
            }
            return Ok(TlsMode::Issued(self.tls_san.clone()));
        }
        Ok(
            match ServerTls::from_files(self.tls_cert.as_deref(), self.tls_key.as_deref())? {
                Some(tls) => TlsMode::Files(tls),
                None => TlsMode::Plaintext,
            },
        )
    }

    /// The namespace the control plane runs in: `--namespace`, else the
    /// `POD_NAMESPACE` a Pod spec sets through the Downward API, else `outrider`.
    pub fn own_namespace(&self) -> Result<String, ServerError> {
        let ns = self
            .namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "outrider".to_owned());
        outrider_policy::validate_service_name(&ns)
            .map_err(|_| ServerError::Namespace(ns.clone(), "not a namespace name (a DNS label)".into()))?;
        Ok(ns)
    }

    /// What the webhook injects.
    pub fn inject_settings(&self) -> Result<outrider_inject::Settings, ServerError> {
        let cp = &self.injected_control_plane;
        if !(cp.starts_with("http://") || cp.starts_with("https://")) {
            return Err(ServerError::InjectedControlPlane(cp.clone()));
        }
        Ok(outrider_inject::Settings {
            image: self.sidecar_image.clone(),
            proxy_uid: self.proxy_uid,
            control_plane: cp.clone(),
            ..outrider_inject::Settings::default()
        })
    }

    /// The names of the webhook's certificate: its Service in our namespace.
    pub fn webhook_names(&self) -> Result<Vec<San>, ServerError> {
        let ns = self.own_namespace()?;
        Ok(vec![
            San::Dns(format!("outrider-webhook.{ns}.svc")),
            San::Dns(format!("outrider-webhook.{ns}.svc.cluster.local")),
        ])
    }
}

/// The control plane's two listeners, bound by the caller: [`bind`] from the config
/// in `main`, any loopback port in tests.
pub struct Listeners {
    /// The control stream for sidecars.
    pub grpc: TcpListener,
    /// REST API, dashboard, `/metrics`, `/healthz`, `/readyz`.
    pub http: TcpListener,
    /// The injection webhook, when it is served.
    pub webhook: Option<TcpListener>,
}

/// Checks the configured addresses (no public listener without its token), then
/// binds them.
pub async fn bind(cfg: &Config) -> Result<Listeners, ServerError> {
    cfg.check_security()?;
    // A bad certificate or setting is found before anything listens.
    cfg.tls_mode()?;
    cfg.inject_settings()?;
    cfg.webhook_names()?;
    let bind_one = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })
    };
    let webhook = match cfg.webhook_addr {
        Some(addr) => Some(bind_one(addr).await?),
        None => None,
    };
    Ok(Listeners {
        grpc: bind_one(cfg.grpc_addr).await?,
        http: bind_one(cfg.http_addr).await?,
        webhook,
    })
}

fn local_addr(l: &TcpListener) -> Result<SocketAddr, ServerError> {
    l.local_addr().map_err(ServerError::Http)
}

/// How long in-flight requests and streams get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the control plane on `listeners` until `shutdown` resolves, then drains and
/// returns. The listeners' addresses pass the same security check as the config's.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Listeners {
        grpc: grpc_listener,
        http: http_listener,
        webhook: webhook_listener,
    } = listeners;
    let (http_addr, grpc_addr) = (local_addr(&http_listener)?, local_addr(&grpc_listener)?);
    cfg.check_addresses(http_addr, grpc_addr, true)?;
    let guard = Guard::new(http_addr.ip().is_loopback(), &cfg.allowed_origins, &cfg.allowed_hosts)?;
    let tls_mode = cfg.tls_mode()?;
    let inject_settings = cfg.inject_settings()?;
    let webhook_names = cfg.webhook_names()?;
    let store = open_store(&cfg).await?;
    let key = secrets_key(&cfg, &store)?;
    let store = store.with_secrets_key(key);
    check_secrets_key(&store).await?;
    // Before anything is served: a public gRPC port needs the mesh-wide token or at
    // least one join token.
    cfg.check_addresses(http_addr, grpc_addr, store.has_join_tokens().await?)?;
    let ca = Arc::new(Ca::open(&store, &cfg.ca_config()).await?);
    // Certificates from the CA, each renewed by a task of its own (spawned below).
    let mut issued = Vec::new();
    let own_ca_tls = matches!(tls_mode, TlsMode::Issued(_));
    let plaintext = matches!(tls_mode, TlsMode::Plaintext);
    let tls = match tls_mode {
        TlsMode::Plaintext => None,
        TlsMode::Files(tls) => Some(tls),
        TlsMode::Issued(names) => {
            let cert = IssuedCert::issue(&ca, names)?;
            issued.push(Arc::clone(&cert));
            Some(ServerTls::from_resolver(cert)?)
        }
    };
    let webhook = match webhook_listener {
        Some(listener) => {
            let cert = IssuedCert::issue(&ca, webhook_names)?;
            issued.push(Arc::clone(&cert));
            Some((listener, ServerTls::from_resolver(cert)?))
        }
        None => None,
    };
    info!(
        backend = ?store.backend(),
        grpc = %grpc_addr,
        http = %http_addr,
        tls = tls.is_some(),
        webhook = ?webhook.as_ref().and_then(|(l, _)| l.local_addr().ok()),
        "control plane starting"
    );
    let timing = Timing {
        report_interval: cfg.report_interval,
        unhealthy_after: cfg.unhealthy_after,
        disconnected_after: cfg.disconnected_after,
    };
    let hub = Hub::new(store.clone(), timing, Arc::new(Metrics::new()));
    // Every long-running task is tracked, so the drain below waits for all of them.
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();

    // Serve HTTP at once (health and readiness answer while loading); streams wait
    // for the load before any snapshot is built.
    let state = AppState {
        hub: hub.clone(),
        store: store.clone(),
        api_token: present(&cfg.api_token).map(Into::into),
        guard: Arc::new(guard),
        throttle: Arc::new(AuthThrottle::new(cfg.auth_failures_per_minute, Duration::from_secs(60))),
    };
    tasks.spawn(crate::fleet::run(state.clone(), stop.clone()).in_current_span());
    let app = api::app(state);
    let limits = HttpLimits {
        header_timeout: cfg.http_header_timeout,
        max_connections: cfg.http_max_connections,
    };
    let http_tls = tls.as_ref().map(ServerTls::http);
    tasks.spawn(serve_http(http_listener, app, limits, http_tls, stop.clone()).in_current_span());
    if let Some((listener, webhook_tls)) = webhook {
        let mut inject_settings = inject_settings;
        let https = inject_settings.control_plane.starts_with("https://");
        if https && own_ca_tls {
            // Injected sidecars verify our certificate with our bundle (as of now: a
            // root rotation reaches Pods injected later, or restarted).
            inject_settings.ca_pem = Some(ca.trust_bundle_pem());
        } else if https && plaintext {
            warn!(
                injected = %inject_settings.control_plane,
                "injected sidecars dial https:// but this control plane serves plaintext (no --tls-san or --tls-cert)"
            );
        }
        let app = crate::webhook::app(inject_settings);
        tasks.spawn(serve_http(listener, app, limits, Some(webhook_tls.http()), stop.clone()).in_current_span());
    }
    for cert in issued {
        tasks.spawn(cert.keep_renewed(Arc::clone(&ca), stop.clone()).in_current_span());
    }

    let loader = hub.clone();
    let load_stop = stop.clone();
    tasks.spawn(async move {
        tokio::select! {
            () = loader.load() => {}
            () = load_stop.cancelled() => {}
        }
    });
    tasks.spawn(hub.clone().run_background(stop.clone()).in_current_span());
    tasks.spawn(crate::canary::run_driver(hub.clone(), stop.clone()).in_current_span());

    tasks.spawn(crate::ca::follow_roots(ca.clone(), store.clone(), stop.clone()).in_current_span());
    let svc = ControlService::new(hub.clone(), present(&cfg.registration_token), stop.clone())
        .with_ca(ca)
        .with_tls(tls.is_some())
        .into_server();
    let handshake = cfg.grpc_handshake_timeout;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(svc);
    let done = stop.clone().cancelled_owned();
    // The two kinds of connection are different types, hence two serve futures.
    let grpc: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
        None => {
            // The builder's own TCP settings apply only to listeners it binds itself.
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener).map(move |accepted| {
                accepted.map(|stream| {
                    let _ = stream.set_nodelay(true);
                    HandshakeDeadline::new(stream, handshake)
                })
            });
            Box::pin(router.serve_with_incoming_shutdown(incoming, done))
        }
        Some(tls) => {
            let (accepting, incoming) = tls_incoming(grpc_listener, tls.grpc(), handshake, stop.clone());
            tasks.spawn(accepting.in_current_span());
            Box::pin(router.serve_with_incoming_shutdown(incoming, done))
        }
    };
    tasks.spawn(
        async move {
            if let Err(e) = grpc.await {
                warn!(error = %e, "gRPC server ended with an error");
            }
        }
        .in_current_span(),
    );
    tasks.close();

    shutdown.await;
    info!("shutting down: closing sidecar streams and draining requests");
    stop.cancel();
    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait()).await.is_err() {
        warn!("drain timed out after {DRAIN_TIMEOUT:?}");
    }
    store.close().await;
    info!("stopped");
    Ok(())
}

/// Opens the store, retrying while PostgreSQL is not reachable yet (it may start
/// after us); an embedded store that cannot open is a hard error.
/// The secrets key: the operator's file, or on the embedded store one generated in its
/// data dir; PostgreSQL without a file has none (replicas must share one key, which
/// only the operator can give them).
pub fn secrets_key(cfg: &Config, store: &Store) -> Result<Option<SecretsKey>, ServerError> {
    if let Some(path) = &cfg.secrets_key_file {
        return Ok(Some(SecretsKey::from_file(path)?));
    }
    match store.backend() {
        Backend::Sqlite => Ok(Some(SecretsKey::generated_in(&cfg.data_dir)?)),
        Backend::Postgres => {
            warn!("no OUTRIDER_SECRETS_KEY_FILE: secrets cannot be written, and stored ones are not delivered");
            Ok(None)
        }
    }
}

/// Says at start, once and plainly, when stored secrets do not match the key (the
/// hub withholds them from snapshots, so sidecars keep the files they have).
async fn check_secrets_key(store: &Store) -> Result<(), ServerError> {
    let foreign = store.secrets_sealed_with_other_keys().await?;
    if foreign > 0 {
        tracing::error!(
            secrets = foreign,
            "stored secrets were encrypted with a different key than the one configured (OUTRIDER_SECRETS_KEY_FILE); their services' sidecars keep the secret files they have until the right key is given or the secrets are set again"
        );
    }
    Ok(())
}

async fn open_store(cfg: &Config) -> Result<Store, ServerError> {
    let backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut attempt = 0;
    loop {
        match Store::open(cfg.database_url.as_deref(), &cfg.data_dir).await {
            Ok(s) => return Ok(s),
            Err(StoreError::Db(e)) if cfg.database_url.is_some() => {
                warn!(error = %e, "database not reachable; retrying");
                tokio::time::sleep(backoff.delay(attempt)).await;
                attempt = attempt.saturating_add(1);
            }
            Err(e) => return Err(e.into()),
        }
    }
}
