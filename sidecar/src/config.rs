//! The sidecar's settings: every one a flag and an environment variable (`docs/reference.md`),
//! which is what a Pod spec sets through the Downward API.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The longest a timeout setting may be, as for a route's `timeout`.
const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// The control plane's gRPC address: `http://` (plaintext) or `https://` (TLS,
    /// verified with --ca-file or the system roots; never plaintext).
    #[arg(long, env = "OUTRIDER_CONTROL_PLANE", default_value = "http://127.0.0.1:18000")]
    pub control_plane: String,
    /// PEM CA certificates that verify an https:// control plane (instead of the
    /// system roots), and https log sinks and reload hooks (besides them).
    #[arg(long, env = "OUTRIDER_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The same certificates inline (PEM), as injection sets them; given both, this
    /// one is used.
    #[arg(long, env = "OUTRIDER_CA_PEM", hide_env_values = true)]
    pub ca_pem: Option<String>,
    /// The service this instance belongs to.
    #[arg(long, env = "OUTRIDER_SERVICE")]
    pub service: String,
    /// The subset label of this instance (OUTRIDER_VERSION; `--version` prints the build).
    #[arg(long = "subset", env = "OUTRIDER_VERSION", default_value = "v1")]
    pub subset: String,
    #[arg(long, env = "OUTRIDER_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The trust domain of SPIFFE IDs (`spiffe://<trust-domain>/ns/<namespace>/svc/<service>`).
    #[arg(long, env = "OUTRIDER_TRUST_DOMAIN", default_value = crate::state::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Defaults to the host name.
    #[arg(long, env = "OUTRIDER_POD_NAME")]
    pub pod_name: Option<String>,
    /// The address other sidecars use to reach this one.
    #[arg(long, env = "OUTRIDER_POD_IP", default_value = "127.0.0.1")]
    pub pod_ip: String,
    /// The app's port on localhost.
    #[arg(long, env = "OUTRIDER_APP_PORT")]
    pub app_port: u16,
    #[arg(long, env = "OUTRIDER_INBOUND_ADDR", default_value = "0.0.0.0:15006")]
    pub inbound_addr: SocketAddr,
    #[arg(long, env = "OUTRIDER_OUTBOUND_ADDR", default_value = "127.0.0.1:15001")]
    pub outbound_addr: SocketAddr,
    #[arg(long, env = "OUTRIDER_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// The health port (`/livez`, `/readyz`, `/metrics`) for kubelet probes and
    /// Prometheus; `off` (or empty) serves none.
    #[arg(long, env = "OUTRIDER_HEALTH_ADDR", default_value = "0.0.0.0:15020")]
    pub health_addr: HealthAddr,
    /// The app's HTTP and TCP probes the health port makes for the kubelet, at
    /// `/app-health/<container>/<livez|readyz|startupz>` (set by the injector; JSON).
    #[arg(long, env = "OUTRIDER_APP_PROBES", default_value = "", value_parser = crate::probes::AppProbes::parse)]
    pub app_probes: crate::probes::AppProbes,
    /// Last-known-good snapshot and log checkpoints.
    #[arg(long, env = "OUTRIDER_STATE_DIR", default_value = "./outrider-state")]
    pub state_dir: PathBuf,
    /// Where config documents are written.
    #[arg(long, env = "OUTRIDER_CONFIG_DIR", default_value = "./outrider-config")]
    pub config_dir: PathBuf,
    /// Where the service's secrets are written, one file each (mode 0600); default
    /// `<state dir>/secrets`. In Kubernetes, a memory volume.
    #[arg(long, env = "OUTRIDER_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Registration token (OUTRIDER_REGISTRATION_TOKEN on the control plane).
    #[arg(long, env = "OUTRIDER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Reload hooks for config documents: `NAME=sighup:/path/to/pidfile` or
    /// `NAME=http://127.0.0.1:8080/-/reload` (POST), comma-separated; `*` for all.
    #[arg(long, env = "OUTRIDER_CONFIG_RELOAD", default_value = "")]
    pub config_reload: String,
    /// Bound of the on-disk log buffer used while the sink is down (bytes).
    #[arg(long, env = "OUTRIDER_LOG_BUFFER_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub log_buffer_bytes: u64,
    /// The app's log files the sidecar may read (comma-separated absolute globs); a
    /// LoggingPolicy reaching outside them is NACKed.
    #[arg(long, env = "OUTRIDER_LOG_PATHS", default_value = crate::logship::confine::DEFAULT_LOG_PATHS)]
    pub log_paths: String,
    /// The only directory file sinks write under (default `<state dir>/sinks`); a
    /// relative `sink.path` is taken from here.
    #[arg(long, env = "OUTRIDER_SINK_DIR")]
    pub sink_dir: Option<PathBuf>,
    /// Hosts an http sink may POST to: `host`, `host:port`, `*.domain`
    /// (comma-separated; unset: any host).
    #[arg(long, env = "OUTRIDER_SINK_HOSTS", default_value = "")]
    pub sink_hosts: String,
    /// How the inbound proxy talks to the app: `http1` (pooled HTTP/1.1) or `h2c`
    /// (HTTP/2 with prior knowledge, for gRPC apps: trailers reach the caller).
    #[arg(long, env = "OUTRIDER_APP_PROTOCOL", value_enum, default_value_t = AppProtocol::Http1)]
    pub app_protocol: AppProtocol,
    /// How long the inbound proxy waits for the app's response head once the whole
    /// request has been sent to it; then the caller gets `504`.
    #[arg(long, env = "OUTRIDER_INBOUND_TIMEOUT", default_value = "60s")]
    pub inbound_timeout: outrider_policy::Duration,
    /// A request body from the world that sends nothing for this long is cut: `408`.
    #[arg(long, env = "OUTRIDER_INBOUND_BODY_TIMEOUT", default_value = "60s")]
    pub inbound_body_timeout: outrider_policy::Duration,
    /// Services this app calls, asked for at every connect so that even the first
    /// call needs no lookup (comma-separated; others are discovered on first call).
    #[arg(long, env = "OUTRIDER_DESTINATIONS", default_value = "")]
    pub destinations: String,
    /// Destinations no request named for this long are dropped (declared ones stay).
    #[arg(long, env = "OUTRIDER_DESTINATION_IDLE", default_value = "1h")]
    pub destination_idle: outrider_policy::Duration,
    /// Where outbound traffic for no mesh service may go: `allow-any` (to its original
    /// destination, or as a forward proxy to the host an explicit request names) or
    /// `registry-only` (refused: 502 for HTTP, the connection closed otherwise).
    #[arg(
        long,
        env = "OUTRIDER_OUTBOUND_POLICY",
        default_value = "allow-any",
        value_parser = crate::outbound::passthrough::OutboundPolicy::parse
    )]
    pub outbound_policy: crate::outbound::passthrough::OutboundPolicy,
    /// Runtime worker threads (default: one per core).
    #[arg(long, env = "OUTRIDER_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

/// Where the health port listens, or nowhere (`off`, or an empty value: several
/// sidecars on one host without network namespaces cannot all have `15020`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthAddr(pub Option<SocketAddr>);

impl std::str::FromStr for HealthAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") {
            return Ok(HealthAddr(None));
        }
        s.parse()
            .map(|a| HealthAddr(Some(a)))
            .map_err(|_| format!("{s:?} is neither an address (`0.0.0.0:15020`) nor `off`"))
    }
}

/// The protocol the app speaks on `OUTRIDER_APP_PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AppProtocol {
    /// HTTP/1.1; requests that arrived over HTTP/2 are translated (trailers are lost).
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge; every request reaches the app as
    /// HTTP/2, so gRPC status trailers pass through. Upgrades (WebSocket) still use
    /// HTTP/1.1, the only version they exist in.
    H2c,
}

impl Config {
    pub fn pod(&self) -> String {
        self.pod_name.clone().filter(|p| !p.is_empty()).unwrap_or_else(hostname)
    }

    pub fn declared_destinations(&self) -> Vec<String> {
        self.destinations
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Where log shipping may read and write, from `OUTRIDER_LOG_PATHS`,
    /// `OUTRIDER_SINK_DIR` and `OUTRIDER_SINK_HOSTS`; the state, config and secrets
    /// directories are never readable.
    pub fn log_confinement(&self) -> Result<crate::logship::Confinement, crate::logship::ConfinementError> {
        let sink_dir = self.sink_dir.clone().unwrap_or_else(|| self.state_dir.join("sinks"));
        crate::logship::Confinement::new(
            &self.log_paths,
            &sink_dir,
            &self.sink_hosts,
            &[&self.state_dir, &self.config_dir, &self.secrets_dir()],
        )
    }

    /// `OUTRIDER_SECRETS_DIR`, or `<state dir>/secrets`.
    pub fn secrets_dir(&self) -> PathBuf {
        self.secrets_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("secrets"))
    }

    /// What the sidecar's clients trust (`OUTRIDER_CA_PEM` or `OUTRIDER_CA_FILE`).
    pub fn trust(&self) -> Result<crate::trust::Trust, String> {
        crate::trust::Trust::load_either(self.ca_file.as_deref(), self.ca_pem.as_deref()).map_err(|e| e.to_string())
    }

    pub fn app_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.app_port))
    }

    pub fn validate(&self) -> Result<(), String> {
        outrider_policy::validate_service_name(&self.service)?;
        outrider_policy::validate_trust_domain(&self.trust_domain)
            .map_err(|e| format!("OUTRIDER_TRUST_DOMAIN: {e}"))?;
        if self.app_port == 0 {
            return Err("OUTRIDER_APP_PORT must be a port number".into());
        }
        self.trust()?
            .control_plane(&self.control_plane)
            .map_err(|e| e.to_string())?;
        self.log_confinement().map_err(|e| e.to_string())?;
        crate::configdocs::ReloadHooks::parse(&self.config_reload)
            .map_err(|e| format!("OUTRIDER_CONFIG_RELOAD: {e}"))?;
        if self.destination_idle.as_std().is_zero() {
            return Err("OUTRIDER_DESTINATION_IDLE must be greater than 0".into());
        }
        for (name, value) in [
            ("OUTRIDER_INBOUND_TIMEOUT", self.inbound_timeout),
            ("OUTRIDER_INBOUND_BODY_TIMEOUT", self.inbound_body_timeout),
        ] {
            let value = value.as_std();
            if value.is_zero() || value > MAX_TIMEOUT {
                return Err(format!(
                    "{name} must be greater than 0 and at most 1h, not {}",
                    outrider_policy::Duration(value)
                ));
            }
        }
        for d in self.declared_destinations() {
            outrider_policy::validate_service_name(&d).map_err(|e| format!("OUTRIDER_DESTINATIONS: {d:?}: {e}"))?;
        }
        Ok(())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["outrider-sidecar", "--service", "web", "--app-port", "8080"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().config
    }

    #[test]
    fn file_sinks_default_to_the_state_dirs_sinks_and_the_flags_set_the_confinement() {
        let c = config(&["--state-dir", "/srv/state"]).log_confinement().unwrap();
        assert_eq!(
            c.sink_path("a.ndjson").unwrap(),
            PathBuf::from("/srv/state/sinks/a.ndjson")
        );
        let c = config(&[
            "--sink-dir",
            "/srv/ship",
            "--log-paths",
            "/data/logs/**",
            "--sink-hosts",
            "es:9200",
        ])
        .log_confinement()
        .unwrap();
        assert_eq!(c.sink_path("a").unwrap(), PathBuf::from("/srv/ship/a"));
        let policy: outrider_policy::LoggingPolicy = outrider_policy::parse_document(
            br#"{"appLogs":[{"path":"/var/log/app.log"}],"sink":{"type":"http","url":"http://other:9200/_bulk"}}"#,
        )
        .unwrap();
        let fields: Vec<String> = c.check(&policy).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["logging.appLogs[0].path", "logging.sink.url"]);
    }

    #[test]
    fn the_health_port_defaults_to_15020_on_every_address_and_off_or_empty_turns_it_off() {
        assert_eq!(
            config(&[]).health_addr,
            HealthAddr(Some("0.0.0.0:15020".parse().unwrap()))
        );
        assert_eq!(
            config(&["--health-addr", "127.0.0.1:0"]).health_addr,
            HealthAddr(Some("127.0.0.1:0".parse().unwrap()))
        );
        for off in ["off", "OFF", "", " "] {
            assert_eq!(config(&["--health-addr", off]).health_addr, HealthAddr(None), "{off:?}");
        }
        let mut all = vec!["outrider-sidecar", "--service", "web", "--app-port", "8080"];
        all.extend(["--health-addr", "15020"]);
        let err = Cli::try_parse_from(all).err().unwrap().to_string();
        assert!(err.contains("neither an address"), "{err}");
    }

    #[test]
    fn the_outbound_policy_defaults_to_allow_any_and_a_bad_one_names_the_variable() {
        use crate::outbound::passthrough::OutboundPolicy;
        assert_eq!(config(&[]).outbound_policy, OutboundPolicy::AllowAny);
        assert_eq!(
            config(&["--outbound-policy", "registry-only"]).outbound_policy,
            OutboundPolicy::RegistryOnly
        );
        let all = [
            "outrider-sidecar",
            "--service",
            "web",
            "--app-port",
            "8080",
            "--outbound-policy",
            "deny",
        ];
        let err = Cli::try_parse_from(all).err().unwrap().to_string();
        assert!(err.contains("OUTRIDER_OUTBOUND_POLICY"), "{err}");
    }

    #[test]
    fn a_relative_log_path_glob_or_a_bad_sink_host_refuses_to_start_naming_the_variable() {
        let err = config(&["--log-paths", "logs/**"]).validate().unwrap_err();
        assert!(err.contains("OUTRIDER_LOG_PATHS"), "{err}");
        let err = config(&["--sink-hosts", "a b"]).validate().unwrap_err();
        assert!(err.contains("OUTRIDER_SINK_HOSTS"), "{err}");
    }
}
