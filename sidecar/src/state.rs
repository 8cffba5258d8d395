//! The sidecar's shared state: what it enforces now, swapped atomically as a whole.
//!
//! The request path reads [`SidecarState::applied`] with one lock-free load
//! (`arc_swap`); the agent replaces it when a snapshot or a destination update is
//! accepted. The two travel separately (own policy in snapshots, outbound
//! destinations scoped and incremental), and every swap combines the newest of each.

use crate::authz::Authorizer;
use crate::loghub::LogHub;
use crate::metrics::Metrics;
use crate::outbound::table::{self, Destinations, Held, TableError};
use crate::ratelimit::RateLimiter;
use arc_swap::ArcSwapOption;
use outrider_policy::{AuthorizationPolicy, FieldError, LoggingPolicy, PolicyError, RateLimitPolicy};
use outrider_proto::v1::{DestinationTable, Destinations as DestinationsMsg, Snapshot};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

/// Where the applied snapshot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    ControlPlane,
    /// Loaded from the state directory at start, while the control plane was away.
    Persisted,
}

/// One accepted snapshot, validated and compiled.
pub struct Applied {
    pub revision: u64,
    pub nonce: String,
    pub source: Source,
    pub service_share: f64,
    pub healthy_instances: u32,
    pub rate_limit: Option<RateLimitPolicy>,
    pub logging: Option<LoggingPolicy>,
    pub configs: Vec<ConfigSummary>,
    pub limiter: Arc<RateLimiter>,
    /// The service's AuthorizationPolicy as written (for `/config_dump`) and compiled;
    /// `None`: permissive, allow all.
    pub authorization: Option<AuthorizationPolicy>,
    pub authz: Option<Arc<Authorizer>>,
    /// Outbound routing: the watched services' endpoints and RoutingPolicy.
    pub destinations: Arc<Destinations>,
}

impl Applied {
    fn with_destinations(&self, destinations: Arc<Destinations>) -> Applied {
        Applied {
            revision: self.revision,
            nonce: self.nonce.clone(),
            source: self.source,
            service_share: self.service_share,
            healthy_instances: self.healthy_instances,
            rate_limit: self.rate_limit.clone(),
            logging: self.logging.clone(),
            configs: self.configs.clone(),
            limiter: Arc::clone(&self.limiter),
            authorization: self.authorization.clone(),
            authz: self.authz.clone(),
            destinations,
        }
    }
}

/// The destinations as held (what the control plane sent, for persisting and for
/// the next Hello) and as compiled, and the stream version they are at.
#[derive(Default)]
struct HeldDestinations {
    held: Held,
    compiled: Arc<Destinations>,
    version: u64,
}

/// On-demand discovery: names the app called that this sidecar does not hold yet.
/// The request path asks ([`Discovery::ask`]) and waits; the agent sends the names in
/// a `Watch` and the answer arrives as a destination update.
#[derive(Default)]
pub struct Discovery {
    inner: Mutex<Asked>,
    notify: Notify,
}

#[derive(Default)]
struct Asked {
    /// Asked for and not answered yet (asked again after a reconnect).
    open: HashSet<String>,
    /// Not sent yet.
    unsent: Vec<String>,
}

impl Discovery {
    /// Asks for `name` unless it is already asked for.
    pub fn ask(&self, name: &str) {
        let mut a = self.inner.lock().unwrap();
        if a.open.insert(name.to_owned()) {
            a.unsent.push(name.to_owned());
            drop(a);
            self.notify.notify_one();
        }
    }

    /// Waits until a name is waiting to be sent.
    pub async fn wait(&self) {
        if !self.inner.lock().unwrap().unsent.is_empty() {
            return;
        }
        self.notify.notified().await
    }

    pub fn take_unsent(&self) -> Vec<String> {
        std::mem::take(&mut self.inner.lock().unwrap().unsent)
    }

    /// Every open question (for a new stream's Hello), marked sent.
    pub fn open(&self) -> Vec<String> {
        let mut a = self.inner.lock().unwrap();
        a.unsent.clear();
        a.open.iter().cloned().collect()
    }

    fn answered(&self, names: &[String]) {
        let mut a = self.inner.lock().unwrap();
        for n in names {
            a.open.remove(n);
        }
    }
}

/// Why a destination update was refused.
#[derive(Debug, thiserror::Error)]
pub enum DestinationsError {
    #[error("destination update {got} after {held}: out of order")]
    OutOfOrder { held: u64, got: u64 },
    #[error("{0}")]
    Table(#[from] TableError),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Services(Vec<TableError>),
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigSummary {
    pub name: String,
    pub content_type: String,
    pub revision: u64,
    pub size: usize,
    /// The document itself, for the config-document writer and `/config/{name}`;
    /// not part of `/config_dump`.
    #[serde(skip)]
    pub content: bytes::Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("rate-limit policy: {0}")]
    RateLimit(PolicyError),
    #[error("logging policy: {0}")]
    Logging(PolicyError),
    #[error("authorization policy: {0}")]
    Authorization(PolicyError),
    /// Valid as a document, but reaching outside what this sidecar's settings allow.
    #[error("{}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Confined(Vec<FieldError>),
    #[error("service share {0} is not in (0, 1]")]
    Share(f64),
}

/// The sidecar's own limits on a LoggingPolicy (what it may read and write), checked
/// before one is applied. A function rather than log shipping's type, so that the
/// state does not import `logship`, which imports the state.
pub type LoggingCheck = Box<dyn Fn(&LoggingPolicy) -> Vec<FieldError> + Send + Sync>;

/// The trust domain of SPIFFE IDs when `OUTRIDER_TRUST_DOMAIN` is not set.
pub const DEFAULT_TRUST_DOMAIN: &str = "outrider.local";

/// Shared by the inbound proxy, the admin server and the agent.
pub struct SidecarState {
    pub applied: ArcSwapOption<Applied>,
    pub metrics: Metrics,
    /// Access-log queue and log-shipping figures, shared with the shipper (`loghub`).
    pub logs: LogHub,
    connected: AtomicBool,
    /// Bumped after every snapshot swap, so that background owners (config documents,
    /// log shipping) react to a new snapshot without polling.
    changes: watch::Sender<u64>,
    destinations: Mutex<HeldDestinations>,
    /// Bumped after every destination update (what a discovering request waits on).
    destination_changes: watch::Sender<u64>,
    pub discovery: Discovery,
    logging_check: Option<LoggingCheck>,
    /// The workload certificate in force (`identity`), for `/config_dump` and mTLS.
    pub identity: crate::identity::Handle,
    /// This instance's namespace and trust domain: what a policy's service names in
    /// `from` are resolved against.
    namespace: String,
    trust_domain: String,
}

impl Default for SidecarState {
    fn default() -> Self {
        Self::new()
    }
}

impl SidecarState {
    pub fn new() -> Self {
        Self {
            applied: ArcSwapOption::empty(),
            metrics: Metrics::new(),
            logs: LogHub::new(),
            connected: AtomicBool::new(false),
            changes: watch::channel(0).0,
            destinations: Mutex::default(),
            destination_changes: watch::channel(0).0,
            discovery: Discovery::default(),
            logging_check: None,
            identity: crate::identity::Handle::default(),
            namespace: "default".into(),
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
        }
    }

    /// Resolves AuthorizationPolicy callers against `namespace` of `trust_domain`
    /// (`OUTRIDER_NAMESPACE`, `OUTRIDER_TRUST_DOMAIN`).
    pub fn with_identity(mut self, namespace: &str, trust_domain: &str) -> Self {
        self.namespace = namespace.into();
        self.trust_domain = trust_domain.into();
        self
    }

    /// Refuses (for a NACK) every snapshot whose LoggingPolicy `check` finds fault with.
    pub fn with_logging_check(mut self, check: LoggingCheck) -> Self {
        self.logging_check = Some(check);
        self
    }

    /// Ready once a snapshot has been applied, from the control plane or from disk.
    pub fn is_ready(&self) -> bool {
        self.applied.load().is_some()
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.metrics.set_control_plane_connected(connected);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn applied_revision(&self) -> u64 {
        self.applied.load().as_ref().map_or(0, |a| a.revision)
    }

    /// Validates and compiles `snapshot`; on success swaps it in as a whole, so a
    /// request sees either the old policy or the new one, never a mix. On error
    /// nothing changes (the caller NACKs).
    pub fn apply(&self, snapshot: &Snapshot, source: Source) -> Result<(), ApplyError> {
        let applied = self.prepare(snapshot, source)?;
        self.install(applied);
        Ok(())
    }

    /// Validates and compiles `snapshot` without enforcing it, so the agent can make it
    /// durable (config documents, `snapshot.pb`) first and [`install`](Self::install)
    /// it only then.
    pub fn prepare(&self, snapshot: &Snapshot, source: Source) -> Result<Applied, ApplyError> {
        self.compile(snapshot, source)
    }

    /// Swaps in a prepared snapshot as a whole, with the destinations held now.
    pub fn install(&self, mut applied: Applied) {
        applied.destinations = Arc::clone(&self.destinations.lock().unwrap().compiled);
        self.metrics.set_applied_revision(applied.revision);
        self.applied.store(Some(Arc::new(applied)));
        self.changes.send_modify(|n| *n += 1);
    }

    /// Notified after each applied snapshot; read `applied` for its contents.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Notified after each destination update.
    pub fn subscribe_destinations(&self) -> watch::Receiver<u64> {
        self.destination_changes.subscribe()
    }

    /// Applies a destination update from the control stream. Services that compile
    /// are applied even when another one fails (that one keeps its previous form and
    /// is reported, for a NACK).
    pub fn apply_destinations(&self, msg: &DestinationsMsg) -> Result<(), DestinationsError> {
        let mut d = self.destinations.lock().unwrap();
        if !msg.full && msg.version != d.version + 1 {
            return Err(DestinationsError::OutOfOrder {
                held: d.version,
                got: msg.version,
            });
        }
        let mut held = d.held.clone();
        let touched = table::apply_message(&mut held, msg)?;
        let (compiled, errors) = d.compiled.recompile(&held, &touched);
        d.held = held;
        d.version = msg.version;
        d.compiled = Arc::new(compiled);
        self.swap_destinations(&d.compiled);
        drop(d);
        self.discovery.answered(&touched);
        self.destination_changes.send_modify(|n| *n += 1);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DestinationsError::Services(errors))
        }
    }

    /// Installs persisted destinations (at start, before the control plane answers).
    pub fn load_destinations(&self, table: &DestinationTable) -> Result<(), TableError> {
        let mut d = self.destinations.lock().unwrap();
        let compiled = Arc::new(Destinations::compile(Some(table), Some(&d.compiled))?);
        d.held = table.services.iter().map(|s| (s.service.clone(), s.clone())).collect();
        d.compiled = compiled;
        d.version = 0;
        self.swap_destinations(&d.compiled);
        drop(d);
        self.destination_changes.send_modify(|n| *n += 1);
        Ok(())
    }

    fn swap_destinations(&self, compiled: &Arc<Destinations>) {
        if let Some(a) = self.applied.load_full() {
            self.applied
                .store(Some(Arc::new(a.with_destinations(Arc::clone(compiled)))));
        }
    }

    /// Stops holding `names` (the agent unwatched them).
    pub fn drop_destinations(&self, names: &[String]) {
        let msg = DestinationsMsg {
            removed: names.to_vec(),
            ..Default::default()
        };
        let mut d = self.destinations.lock().unwrap();
        let mut held = d.held.clone();
        let Ok(touched) = table::apply_message(&mut held, &msg) else {
            return;
        };
        let (compiled, _) = d.compiled.recompile(&held, &touched);
        d.held = held;
        d.compiled = Arc::new(compiled);
        self.swap_destinations(&d.compiled);
        drop(d);
        self.destination_changes.send_modify(|n| *n += 1);
    }

    /// Held destinations no request named since `before` (epoch seconds).
    pub fn idle_destinations(&self, before: u64) -> Vec<String> {
        self.destinations.lock().unwrap().compiled.idle_since(before)
    }

    /// The held destinations, for `destinations.pb`.
    pub fn held_destinations(&self) -> DestinationTable {
        let d = self.destinations.lock().unwrap();
        DestinationTable {
            services: d.held.values().cloned().collect(),
            routing_revision: d.compiled.routing_revision,
        }
    }

    /// The names a new stream's Hello asks for: those held and those asked for.
    pub fn watch_list(&self) -> Vec<String> {
        let mut names: Vec<String> = self.destinations.lock().unwrap().held.keys().cloned().collect();
        names.extend(self.discovery.open());
        names.sort();
        names.dedup();
        names
    }

    /// A new stream starts at version 0: its first update is `full`.
    pub fn reset_destination_version(&self) {
        self.destinations.lock().unwrap().version = 0;
    }

    fn compile(&self, s: &Snapshot, source: Source) -> Result<Applied, ApplyError> {
        let share = if s.service_share == 0.0 { 1.0 } else { s.service_share };
        if !(share > 0.0 && share <= 1.0) {
            return Err(ApplyError::Share(s.service_share));
        }
        let rate_limit = non_empty(&s.rate_limit)
            .map(|j| outrider_policy::parse_document::<RateLimitPolicy>(j.as_bytes()))
            .transpose()
            .map_err(ApplyError::RateLimit)?;
        let logging = non_empty(&s.logging)
            .map(|j| outrider_policy::parse_document::<LoggingPolicy>(j.as_bytes()))
            .transpose()
            .map_err(ApplyError::Logging)?;
        let authorization = non_empty(&s.authorization)
            .map(|j| outrider_policy::parse_document::<AuthorizationPolicy>(j.as_bytes()))
            .transpose()
            .map_err(ApplyError::Authorization)?;
        if let (Some(check), Some(policy)) = (&self.logging_check, &logging) {
            let errors = check(policy);
            if !errors.is_empty() {
                return Err(ApplyError::Confined(errors));
            }
        }
        let previous = self.applied.load_full();
        // Buckets carry over from the previous snapshot so that a re-split or an
        // unrelated change does not hand every client a fresh burst.
        let limiter = Arc::new(RateLimiter::compile(
            rate_limit.as_ref(),
            share,
            previous.as_ref().map(|p| &*p.limiter),
        ));
        let authz = authorization.as_ref().map(|p| {
            Arc::new(Authorizer::compile(
                p,
                &self.trust_domain,
                &self.namespace,
                &self.metrics.authz,
            ))
        });
        let destinations = Arc::clone(&self.destinations.lock().unwrap().compiled);
        let configs = s
            .configs
            .iter()
            .map(|c| ConfigSummary {
                name: c.name.clone(),
                content_type: c.content_type.clone(),
                revision: c.revision,
                size: c.content.len(),
                content: bytes::Bytes::copy_from_slice(&c.content),
            })
            .collect();
        Ok(Applied {
            revision: s.revision,
            nonce: s.nonce.clone(),
            source,
            service_share: share,
            healthy_instances: s.healthy_instances,
            rate_limit,
            logging,
            configs,
            limiter,
            authorization,
            authz,
            destinations,
        })
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.trim().is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: &str = r#"{"rules":[{"name":"all","requestsPerSecond":5,"burst":5}]}"#;

    fn snapshot(revision: u64, rate_limit: &str) -> Snapshot {
        Snapshot {
            revision,
            nonce: format!("n{revision}"),
            service: "web".into(),
            rate_limit: rate_limit.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_that_fails_validation_leaves_the_applied_one_untouched() {
        let state = SidecarState::new();
        state.apply(&snapshot(3, LIMIT), Source::ControlPlane).unwrap();
        let before = state.applied.load_full().unwrap();
        let mut changes = state.subscribe();
        changes.borrow_and_update();

        // The rate-limit half is bad; the share is fine: nothing of it may show.
        let bad = snapshot(4, r#"{"rules":[{"name":"all","requestsPerSecond":-1}]}"#);
        let err = state.apply(&bad, Source::ControlPlane).unwrap_err();
        assert!(matches!(err, ApplyError::RateLimit(_)), "{err}");
        assert!(err.to_string().contains("rules[0].requestsPerSecond"), "{err}");

        let after = state.applied.load_full().unwrap();
        assert!(
            Arc::ptr_eq(&before, &after),
            "the same compiled snapshot stays in force"
        );
        assert_eq!(state.applied_revision(), 3);
        assert!(
            !changes.has_changed().unwrap(),
            "no change is announced for a refused snapshot"
        );
    }

    #[test]
    fn a_bad_share_or_logging_policy_is_refused_before_anything_is_swapped() {
        let state = SidecarState::new();
        let share = Snapshot {
            service_share: 1.5,
            ..snapshot(1, LIMIT)
        };
        assert!(matches!(
            state.apply(&share, Source::ControlPlane),
            Err(ApplyError::Share(_))
        ));
        let logging = Snapshot {
            logging: "{not json".into(),
            ..snapshot(1, "")
        };
        assert!(matches!(
            state.apply(&logging, Source::ControlPlane),
            Err(ApplyError::Logging(_))
        ));
        assert!(!state.is_ready(), "nothing was ever applied");
        assert_eq!(state.applied_revision(), 0);
    }

    #[test]
    fn a_logging_policy_the_check_refuses_is_nacked_naming_the_field_and_the_old_one_stays() {
        let state = SidecarState::new().with_logging_check(Box::new(|p: &LoggingPolicy| {
            p.app_logs
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.path.starts_with("/var/log/"))
                .map(|(i, _)| FieldError::new(format!("logging.appLogs[{i}].path"), "outside"))
                .collect()
        }));
        let ok = Snapshot {
            logging: r#"{"appLogs":[{"path":"/var/log/a.log"}],"sink":{"type":"stdout"}}"#.into(),
            ..snapshot(1, "")
        };
        state.apply(&ok, Source::ControlPlane).unwrap();
        let bad = Snapshot {
            logging: r#"{"appLogs":[{"path":"/etc/hostname"}],"sink":{"type":"stdout"}}"#.into(),
            ..snapshot(2, "")
        };
        let err = state.apply(&bad, Source::ControlPlane).unwrap_err();
        assert!(matches!(err, ApplyError::Confined(_)), "{err}");
        assert_eq!(err.to_string(), "logging.appLogs[0].path: outside");
        assert_eq!(state.applied_revision(), 1);
    }

    #[test]
    fn an_authorization_policy_is_compiled_with_the_snapshot_and_a_bad_one_is_refused() {
        let state = SidecarState::new().with_identity("shop", "example.org");
        let ok = Snapshot {
            authorization: r#"{"defaultAction": "deny", "rules": [
              {"name": "front", "from": ["frontend"], "action": "allow"}]}"#
                .into(),
            ..snapshot(1, "")
        };
        state.apply(&ok, Source::ControlPlane).unwrap();
        let applied = state.applied.load_full().unwrap();
        let authz = applied.authz.as_ref().expect("compiled");
        let (get, headers) = (http::Method::GET, http::HeaderMap::new());
        let front = Some("spiffe://example.org/ns/shop/svc/frontend");
        assert!(matches!(
            authz.decide(&get, "/", &headers, front),
            crate::authz::Verdict::Allow
        ));
        let bad = Snapshot {
            authorization: r#"{"rules": [{"name": "x", "from": ["Bad"], "action": "allow"}]}"#.into(),
            ..snapshot(2, "")
        };
        let err = state.apply(&bad, Source::ControlPlane).unwrap_err();
        assert!(matches!(err, ApplyError::Authorization(_)), "{err}");
        assert!(err.to_string().contains("rules[0].from[0]"), "{err}");
        assert_eq!(state.applied_revision(), 1);
        state.apply(&snapshot(3, ""), Source::ControlPlane).unwrap();
        assert!(
            state.applied.load_full().unwrap().authz.is_none(),
            "no document: allow all"
        );
    }

    #[test]
    fn an_accepted_snapshot_replaces_the_old_one_whole_and_is_announced() {
        let state = SidecarState::new();
        let mut changes = state.subscribe();
        state.apply(&snapshot(3, LIMIT), Source::Persisted).unwrap();
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();

        state.apply(&snapshot(5, ""), Source::ControlPlane).unwrap();
        let applied = state.applied.load_full().unwrap();
        assert_eq!((applied.revision, applied.nonce.as_str()), (5, "n5"));
        assert_eq!(applied.source, Source::ControlPlane);
        assert!(applied.rate_limit.is_none(), "an empty document removes the policy");
        assert_eq!(
            applied.service_share, 1.0,
            "share 0 on the wire means the whole service"
        );
        assert!(changes.has_changed().unwrap());
    }
}
