//! `outrider-control-plane`: parses flags and environment, sets up logging and signal
//! handling, and runs the server — or, with `token …` and `join-token …`, manages API
//! tokens and sidecar join tokens in the store; `ca bundle` prints the trust bundle.

use clap::{Parser, Subcommand};
use outrider_control_plane::auth::{generate_token, hash_token, validate_token_name};
use outrider_control_plane::server::{self, Config};
use outrider_control_plane::store::{Role, Store, StoreError};
use std::path::Path;

#[derive(Parser)]
#[command(
    name = "outrider-control-plane",
    version,
    about = "Outrider control plane: policy store, REST API and control stream"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    /// Log format: text or json.
    #[arg(long, env = "OUTRIDER_LOG_FORMAT", default_value = "text")]
    log_format: outrider_runtime::tracing::Format,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Manage REST API tokens (stored hashed; the secret is printed once, at creation).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Manage join tokens: each lets sidecars register as one service and nothing else
    /// (stored hashed; the secret is printed once, at creation).
    JoinToken {
        #[command(subcommand)]
        action: JoinTokenAction,
    },
    /// The certificate authority that signs workload certificates.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
}

#[derive(Subcommand)]
enum CaAction {
    /// Print the trust bundle (PEM): every root sidecars trust. Safe while a control
    /// plane runs on the same store; on a new store it makes the root that one will use.
    Bundle,
    /// List the store's roots: generation, state (signing, trusted, waiting), created.
    Roots,
    /// Rotation, step 1: add a new root to the bundle. It is trusted everywhere within
    /// seconds and signs nothing until `activate-root`.
    AddRoot,
    /// Rotation, step 2: the newest added root signs from now on; every connected
    /// sidecar asks for a new certificate within ten seconds.
    ActivateRoot,
    /// Rotation, step 3: drop an old root from the bundle, once no certificate it
    /// signed is in use (its successor has signed for longer than --cert-ttl).
    RetireRoot {
        #[arg(long)]
        generation: i64,
        /// Retire it even though certificates it signed may still be in use: their
        /// holders' peers stop trusting them at once.
        #[arg(long)]
        force: bool,
    },
    /// After a change of secrets key: re-encrypt the roots' keys, sealed with the key
    /// before, with the configured one (--secrets-key-file).
    ResealRoots {
        /// The secrets key the roots' keys were sealed with.
        #[arg(long)]
        from_key_file: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum JoinTokenAction {
    /// Create a join token for a service and print it on stdout (only now).
    Create {
        /// The only service a sidecar presenting it may register as.
        #[arg(long)]
        service: String,
        /// Default: <service>-<8 hex digits>.
        #[arg(long)]
        name: Option<String>,
    },
    /// List join tokens (names and services, never secrets).
    List,
    /// Revoke a join token: no new registration with it, on every replica.
    Revoke {
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token and print it (only now: the store keeps its hash).
    Create {
        /// Recorded as the actor of every change made with the token.
        #[arg(long)]
        name: String,
        /// viewer (read only), editor (changes policy) or admin (also manages tokens).
        #[arg(long, value_parser = |s: &str| s.parse::<Role>())]
        role: Role,
    },
    /// List tokens (names and roles, never secrets).
    List,
    /// Revoke a token at once, on every replica.
    Revoke {
        #[arg(long)]
        name: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token { action }) => {
            return token(action, cli.config.database_url.as_deref(), &cli.config.data_dir).await
        }
        Some(Command::JoinToken { action }) => {
            return join_token(action, cli.config.database_url.as_deref(), &cli.config.data_dir).await
        }
        Some(Command::Ca { action }) => return ca(action, &cli.config).await,
        None => {}
    }
    outrider_runtime::tracing::init(cli.log_format)?;
    outrider_control_plane::tls::install_default_provider();
    let listeners = server::bind(&cli.config).await?;
    server::run(cli.config, listeners, shutdown_signal()).await?;
    Ok(())
}

async fn ca(action: CaAction, config: &server::Config) -> anyhow::Result<()> {
    use outrider_control_plane::ca;
    let store = Store::open(config.database_url.as_deref(), &config.data_dir).await?;
    // The roots' keys are sealed with the secrets key, as the running control plane
    // keeps them.
    let key = server::secrets_key(config, &store)?;
    let store = store.with_secrets_key(key);
    let cfg = config.ca_config();
    let result: anyhow::Result<()> = async {
        if let CaAction::ResealRoots { from_key_file } = &action {
            let old = outrider_control_plane::vault::SecretsKey::from_file(from_key_file)?;
            let n = store.reseal_ca_root_keys(&old).await?;
            println!(
                "{n} root key(s) sealed with key {} now sealed with the configured key",
                old.id()
            );
            return Ok(());
        }
        if cfg.ca_cert.is_some() && !matches!(action, CaAction::Bundle) {
            anyhow::bail!("the roots are the operator's (--ca-cert): rotate them in your own PKI");
        }
        match action {
            CaAction::Bundle => print!("{}", ca::trust_bundle(&store, &cfg).await?),
            CaAction::Roots => {
                // Opening the CA makes the first root on a new store, as `bundle` does.
                ca::Ca::open(&store, &cfg).await?;
                let roots = store.ca_roots().await?;
                let signing = roots
                    .iter()
                    .rev()
                    .find(|r| r.activated_at_ms.is_some())
                    .map(|r| r.generation);
                println!("{:<11} {:<9} CREATED", "GENERATION", "STATE");
                for r in &roots {
                    let state = match r.activated_at_ms {
                        _ if Some(r.generation) == signing => "signing",
                        Some(_) => "trusted",
                        None => "waiting",
                    };
                    println!("{:<11} {:<9} {}", r.generation, state, rfc3339(r.created_at_ms));
                }
            }
            CaAction::AddRoot => {
                ca::Ca::open(&store, &cfg).await?;
                let generation = ca::add_root(&store, &cfg.trust_domain).await?;
                println!("root {generation} added: trusted now, signing after `ca activate-root`");
            }
            CaAction::ActivateRoot => {
                let generation = store.activate_ca_root().await?;
                println!("root {generation} signs now; sidecars renew their certificates within ten seconds");
            }
            CaAction::ResealRoots { .. } => unreachable!("handled before"),
            CaAction::RetireRoot { generation, force } => {
                let ttl = i64::try_from(cfg.cert_ttl.as_millis()).unwrap_or(i64::MAX);
                store.retire_ca_root(generation, ttl, force).await?;
                println!("root {generation} retired: no longer trusted");
            }
        }
        Ok(())
    }
    .await;
    store.close().await;
    result
}

/// Epoch milliseconds as RFC 3339 (UTC, seconds).
fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

async fn token(action: TokenAction, database_url: Option<&str>, data_dir: &Path) -> anyhow::Result<()> {
    let store = Store::open(database_url, data_dir).await?;
    let result = match action {
        TokenAction::Create { name, role } => {
            validate_token_name(&name).map_err(|m| anyhow::anyhow!("--name {name:?}: {m}"))?;
            let token = generate_token();
            match store.create_token(&name, role, &hash_token(&token)).await {
                Err(StoreError::AlreadyExists) => Err(anyhow::anyhow!(
                    "a token named {name:?} exists already (revoked names stay taken)"
                )),
                Err(e) => Err(e.into()),
                Ok(_) => {
                    eprintln!("created {role} token {name:?}; it is shown once:");
                    println!("{token}");
                    Ok(())
                }
            }
        }
        TokenAction::List => {
            println!("{:<24} {:<8} {:<26} REVOKED", "NAME", "ROLE", "CREATED");
            for t in store.list_tokens().await? {
                println!(
                    "{:<24} {:<8} {:<26} {}",
                    t.name,
                    t.role,
                    outrider_control_plane::api::format::rfc3339(t.created_at_ms),
                    t.revoked_at_ms
                        .map_or_else(|| "-".to_owned(), outrider_control_plane::api::format::rfc3339)
                );
            }
            Ok(())
        }
        TokenAction::Revoke { name } => {
            let r = revoked(store.revoke_token(&name).await, &name, "token");
            // This command works on the store, not through a running control plane,
            // so it cannot know whether that one has OUTRIDER_API_TOKEN: say what the
            // API's own revoke would have refused.
            if r.is_ok() && !store.has_tokens().await? {
                eprintln!(
                    "warning: no live API token is left; a control plane on this store without \
                     OUTRIDER_API_TOKEN now lets every caller in as admin"
                );
            }
            r
        }
    };
    store.close().await;
    result
}

async fn join_token(action: JoinTokenAction, database_url: Option<&str>, data_dir: &Path) -> anyhow::Result<()> {
    use outrider_control_plane::api::format::rfc3339;
    let store = Store::open(database_url, data_dir).await?;
    let result = match action {
        JoinTokenAction::Create { service, name } => {
            outrider_policy::validate_service_name(&service).map_err(|m| anyhow::anyhow!("--service: {m}"))?;
            let name = name.unwrap_or_else(|| outrider_control_plane::join::default_name(&service));
            validate_token_name(&name).map_err(|m| anyhow::anyhow!("--name {name:?}: {m}"))?;
            let token = outrider_control_plane::join::generate();
            match store.create_join_token(&name, &service, &hash_token(&token)).await {
                Err(StoreError::AlreadyExists) => Err(anyhow::anyhow!(
                    "a join token named {name:?} exists already (revoked names stay taken)"
                )),
                Err(e) => Err(e.into()),
                Ok(_) => {
                    eprintln!("created join token {name:?} for service {service:?}; it is shown once:");
                    println!("{token}");
                    Ok(())
                }
            }
        }
        JoinTokenAction::List => {
            println!("{:<32} {:<24} {:<26} REVOKED", "NAME", "SERVICE", "CREATED");
            for t in store.list_join_tokens().await? {
                println!(
                    "{:<32} {:<24} {:<26} {}",
                    t.name,
                    t.service,
                    rfc3339(t.created_at_ms),
                    t.revoked_at_ms.map_or_else(|| "-".to_owned(), rfc3339)
                );
            }
            Ok(())
        }
        JoinTokenAction::Revoke { name } => revoked(store.revoke_join_token(&name).await, &name, "join token"),
    };
    store.close().await;
    result
}

/// What `… revoke` says about the outcome of revoking the `what` called `name`.
fn revoked(r: Result<(), StoreError>, name: &str, what: &str) -> anyhow::Result<()> {
    match r {
        Err(StoreError::NotFound) => Err(anyhow::anyhow!("no live {what} named {name:?}")),
        Err(e) => Err(e.into()),
        Ok(()) => {
            eprintln!("revoked {name:?}");
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
