//! The command line as clap derive structs (`docs/reference.md` lists the commands).
//! Flags and environment variables share one definition each; no command logic here.

use crate::format::Output;
use clap::{Args, Parser, Subcommand};
use outrider_policy::PolicyKind;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "outriderctl",
    version,
    about = "Operate an Outrider service mesh through its control plane's REST API",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Base URL of the control plane's HTTP listener.
    #[arg(
        long,
        global = true,
        env = "OUTRIDER_SERVER",
        default_value = "http://127.0.0.1:18080"
    )]
    pub server: String,
    /// Bearer token for the REST API (the control plane's OUTRIDER_API_TOKEN).
    #[arg(long, global = true, env = "OUTRIDER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificates that verify an https:// --server (instead of the system roots).
    #[arg(long, global = true, env = "OUTRIDER_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List services, sidecars or policies.
    #[command(subcommand)]
    Get(Get),
    /// Create or update policies, config documents and secrets from a YAML or JSON file.
    Apply(Apply),
    /// Delete a policy or a secret.
    #[command(subcommand)]
    Delete(Delete),
    /// Show the change history, newest first.
    History {
        /// Only changes to this service.
        service: Option<String>,
        /// At most this many revisions.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Undo one revision: a new revision restores the state before it.
    Revert {
        /// The revision to undo.
        revision: u64,
    },
    /// Canary releases: shift traffic between subsets by hand or automatically.
    #[command(subcommand)]
    Canary(CanaryCommand),
    /// Diagnose the control plane, its store and the sidecar fleet (and, with
    /// --kubernetes or --pre, the cluster side); exits 1 on problems.
    Check(Check),
    /// Print every Kubernetes object the control plane needs, as multi-document YAML
    /// for `kubectl apply -f -` (Secrets, its CA and tokens included, made here).
    Install(Install),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Add the sidecar to the workloads of a file of Kubernetes objects, offline (as
    /// the injection webhook would), and print every object.
    Inject(Inject),
}

#[derive(Debug, Args)]
pub struct Inject {
    /// Kubernetes objects (YAML documents separated by `---`, or JSON); `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// The image of the injected sidecar and its init container.
    #[arg(long, default_value = outrider_inject::DEFAULT_IMAGE)]
    pub sidecar_image: String,
    /// The UID the sidecar runs as (capture leaves its traffic alone).
    #[arg(long, default_value_t = outrider_inject::DEFAULT_PROXY_UID,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub proxy_uid: u32,
    /// The control plane's gRPC address as the Pods reach it (OUTRIDER_CONTROL_PLANE
    /// of the injected sidecars).
    #[arg(long, default_value = outrider_inject::DEFAULT_CONTROL_PLANE)]
    pub injected_control_plane: String,
    /// PEM certificates the injected sidecars verify an https:// control plane with
    /// (their OUTRIDER_CA_PEM): the `ca.crt` of the `outrider-ca` Secret install made.
    #[arg(long, value_name = "FILE")]
    pub injected_ca_file: Option<PathBuf>,
    /// The Secret (in each Pod's namespace, key `token`) the sidecar's OUTRIDER_TOKEN
    /// comes from, when it exists; a Pod's annotation outrider.io/token-secret wins.
    #[arg(long, default_value = outrider_inject::DEFAULT_TOKEN_SECRET)]
    pub token_secret: String,
}

#[derive(Debug, Subcommand)]
pub enum Get {
    /// Services with their instance counts and health.
    Services,
    /// Sidecar instances: status, applied revision, last NACK.
    Sidecars {
        /// Only this service's sidecars.
        #[arg(long)]
        service: Option<String>,
        /// Only sidecars with this status.
        #[arg(long, value_parser = ["healthy", "unhealthy", "disconnected"])]
        status: Option<String>,
        /// Stop after this many sidecars (default: all of them).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Read the list in pages of this many (1–10000).
        #[arg(long, default_value_t = outrider_api::DEFAULT_SIDECAR_PAGE,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(outrider_api::MAX_SIDECAR_PAGE)))]
        chunk_size: u32,
    },
    /// A service's policies, or one of them.
    Policy {
        service: String,
        /// routing, rate-limit, logging or authorization (envelope names such as
        /// RateLimitPolicy work too).
        #[arg(value_parser = parse_kind)]
        kind: Option<PolicyKind>,
    },
    /// A service's secrets: name, size, revision and time (never values).
    Secrets { service: String },
}

#[derive(Debug, Subcommand)]
pub enum Delete {
    /// Delete one policy of a service.
    Policy {
        service: String,
        /// routing, rate-limit, logging or authorization.
        #[arg(value_parser = parse_kind)]
        kind: PolicyKind,
    },
    /// Delete one secret of a service.
    Secret { service: String, name: String },
}

#[derive(Debug, Args)]
pub struct Apply {
    /// File of envelopes (YAML documents separated by `---`, or JSON); `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Validate on the server and show which sidecars would change; store nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct Check {
    /// Before installing: can this cluster and this user take `outriderctl install`?
    /// Needs no control plane.
    #[arg(long, conflicts_with = "kubernetes")]
    pub pre: bool,
    /// Also check the installation in the cluster: the Deployment, the webhook
    /// configuration, and that every injected Pod's sidecar registered.
    #[arg(long)]
    pub kubernetes: bool,
    /// The control plane's namespace.
    #[arg(long, default_value = "outrider")]
    pub namespace: String,
    /// The kubectl to run (its current context is the cluster checked).
    #[arg(long, default_value = "kubectl")]
    pub kubectl: PathBuf,
}

#[derive(Debug, Args)]
pub struct Install {
    /// The control plane's namespace (created).
    #[arg(long, default_value = "outrider")]
    pub namespace: String,
    /// Control plane replicas; more than one need PostgreSQL (--database-url-secret).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub replicas: u32,
    /// The image with every Outrider binary (deploy/Dockerfile).
    #[arg(long, default_value_t = crate::install::default_image())]
    pub image: String,
    /// The image injected sidecars run (default: --image).
    #[arg(long)]
    pub sidecar_image: Option<String>,
    /// The UID injected sidecars' proxies run as (their own traffic is not captured).
    #[arg(long, default_value_t = crate::install::OUTRIDER_UID)]
    pub proxy_uid: u32,
    /// The Secret (created by you, key `database-url`) holding the PostgreSQL URL.
    #[arg(long, default_value = "outrider-database", conflicts_with = "embedded_store")]
    pub database_url_secret: String,
    /// No PostgreSQL: the embedded store on a PersistentVolumeClaim (`pvc`) or an
    /// emptyDir lost with the Pod (`empty-dir`). Needs --replicas 1.
    #[arg(long, value_parser = ["pvc", "empty-dir"])]
    pub embedded_store: Option<String>,
    /// Size of the embedded store's PersistentVolumeClaim.
    #[arg(long, default_value = "1Gi")]
    pub data_size: String,
    /// The mesh-wide registration token, or `generated` to have one made.
    #[arg(long, default_value = "generated", value_parser = crate::install::Token::parse)]
    pub registration_token: crate::install::Token,
    /// The REST API's admin token, or `generated` to have one made.
    #[arg(long, default_value = "generated", value_parser = crate::install::Token::parse)]
    pub api_token: crate::install::Token,
    /// The SPIFFE trust domain of workload identities.
    #[arg(long, default_value = "outrider.local")]
    pub trust_domain: String,
    /// Your root (or issuing) CA certificate, PEM, instead of a root made here; needs --ca-key.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The key of --ca-cert (PEM, PKCS #8).
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CanaryCommand {
    /// Send WEIGHT% of SERVICE's traffic to a subset, the rest to the stable one.
    Set {
        service: String,
        #[arg(long)]
        subset: String,
        /// Percentage for the canary subset, 0–100.
        #[arg(long)]
        weight: u32,
        /// The stable subset (default: the current one, else v1).
        #[arg(long)]
        stable: Option<String>,
    },
    /// Weights, per-subset success rate and latency, and any automated rollout.
    Status { service: String },
    /// Make the canary the stable subset with 100% of the traffic.
    Promote { service: String },
    /// Stop any rollout and send 100% to the stable subset, whatever the state.
    Abort {
        service: String,
        /// The stable subset when the policy does not say (default v1).
        #[arg(long)]
        stable: Option<String>,
    },
    /// Start an automated rollout in the control plane and follow its progress.
    Run(Run),
}

#[derive(Debug, Args)]
pub struct Run {
    pub service: String,
    #[arg(long)]
    pub subset: String,
    #[arg(long)]
    pub stable: Option<String>,
    /// Canary weights to step through, in percent.
    #[arg(long, value_delimiter = ',', default_value = "5,25,50,100")]
    pub steps: Vec<u32>,
    /// How long each step runs before its figures are judged.
    #[arg(long, default_value = "30s")]
    pub interval: String,
    /// Roll back when the canary's error rate over a step exceeds this fraction.
    #[arg(long, default_value_t = 0.01)]
    pub max_error_rate: f64,
    /// Roll back when the canary's p99 latency exceeds this.
    #[arg(long)]
    pub max_p99: Option<String>,
    /// Canary requests a step needs before it is judged or advances.
    #[arg(long, default_value_t = outrider_api::canary::default_min_requests())]
    pub min_requests: u64,
    /// Intervals a step may wait for those requests before the rollout rolls back.
    #[arg(long, default_value_t = outrider_api::canary::default_max_hold_intervals())]
    pub max_hold_intervals: u32,
    /// Roll back when the canary's success rate over a step is more than this
    /// fraction below the stable subset's.
    #[arg(long, default_value_t = outrider_api::canary::default_max_success_rate_drop())]
    pub max_success_rate_drop: f64,
    /// Roll back when the canary's p99 latency over a step is more than this many
    /// times the stable subset's.
    #[arg(long)]
    pub max_latency_ratio: Option<f64>,
    /// Start the rollout and return without following it.
    #[arg(long)]
    pub detach: bool,
}

/// Accepts the REST names (`rate-limit`) and the envelope names (`RateLimitPolicy`).
pub fn parse_kind(s: &str) -> Result<PolicyKind, String> {
    s.parse::<PolicyKind>()
        .ok()
        .or_else(|| PolicyKind::from_envelope_name(s))
        .ok_or_else(|| format!("unknown policy kind {s:?}: expected routing, rate-limit, logging or authorization"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_model_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kinds_accept_rest_and_envelope_names() {
        assert_eq!(parse_kind("rate-limit"), Ok(PolicyKind::RateLimit));
        assert_eq!(parse_kind("RoutingPolicy"), Ok(PolicyKind::Routing));
        assert!(parse_kind("ratelimit").unwrap_err().contains("expected routing"));
    }

    #[test]
    fn output_flag_works_after_the_subcommand() {
        let cli = Cli::try_parse_from(["outriderctl", "get", "services", "-o", "json"]).unwrap();
        assert_eq!(cli.global.output, Output::Json);
    }
}
