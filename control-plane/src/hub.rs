//! The snapshot hub: builds each service's own snapshot once and fans it out to every
//! sidecar of that service through a `watch` channel; owns the [`Mesh`] that sends
//! destinations to the sidecars that watch them.
//!
//! Triggers of a snapshot build, all ending in [`Hub::refresh`]: a local write (fast
//! path), a PostgreSQL notification from another replica, and a periodic catch-up read
//! that makes any missed notification harmless. A change in a service's healthy count
//! re-stamps its snapshot (no store read) only when one of its rate limits has
//! `scope: service`, the one thing the count changes. Nothing is built before
//! [`Hub::load`] has read the store, so a restarting control plane can never push an
//! empty snapshot.

use crate::mesh::{CountChange, Mesh};
use crate::metrics::Metrics;
use crate::store::{now_ms, Store, StoreError, CHANGES_CHANNEL};
use outrider_policy::{PolicyKind, RateLimitPolicy, Scope};
use outrider_proto::v1::{ConfigDocument, Secret, Snapshot};
use outrider_runtime::shutdown::CancellationToken;
use outrider_runtime::Backoff;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tracing::{debug, error, info, warn};

pub use crate::timing::Timing;

/// What the dashboard and `/api/v1/events` hear about.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    /// A new snapshot for the service (policy, config or split change).
    Snapshot { service: String, revision: u64 },
    /// The set of healthy instances of a service changed.
    Membership { service: String, healthy: u32 },
    /// Sidecar rows (as in `GET /sidecars`) that changed in the last second: health
    /// reports, ACKs, NACKs; see `fleet`.
    Sidecars { sidecars: Vec<serde_json::Value> },
}

#[derive(Clone, Copy)]
enum Rebuild {
    FromStore,
    Restamp,
}

type SnapshotTx = watch::Sender<Option<Arc<Snapshot>>>;

struct ServiceEntry {
    tx: SnapshotTx,
    /// Serializes builds of one service so an older build never overwrites a newer one.
    build: Arc<tokio::sync::Mutex<()>>,
    /// Whether a rate-limit rule has `scope: service` (the split follows the count).
    scoped: Arc<AtomicBool>,
}

/// Half of the PostgreSQL pool (see `store::db`).
const JOINS_AT_ONCE: usize = 8;

pub struct Hub {
    store: Store,
    pub timing: Timing,
    pub replica: String,
    pub metrics: Arc<Metrics>,
    pub mesh: Arc<Mesh>,
    loaded: watch::Sender<bool>,
    services: Mutex<HashMap<String, ServiceEntry>>,
    seen_revision: AtomicU64,
    events: broadcast::Sender<Event>,
    /// Registrations writing to the store at once (see `grpc::Session::run`).
    pub joins: tokio::sync::Semaphore,
}

impl Hub {
    pub fn new(store: Store, timing: Timing, metrics: Arc<Metrics>) -> Arc<Self> {
        let replica = format!("cp-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        Arc::new(Self {
            mesh: Arc::new(Mesh::new(store.clone(), timing)),
            store,
            timing,
            replica,
            metrics,
            loaded: watch::channel(false).0,
            services: Mutex::default(),
            seen_revision: AtomicU64::new(0),
            events: broadcast::channel(1024).0,
            joins: tokio::sync::Semaphore::new(JOINS_AT_ONCE),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Sends an event to every `/events` listener of this replica.
    pub fn publish(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// How many `/events` listeners this replica has.
    pub fn event_listeners(&self) -> usize {
        self.events.receiver_count()
    }

    /// Reads what the hub needs from the store, retrying until the store answers.
    pub async fn load(self: &Arc<Self>) {
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 0;
        loop {
            match self.store.latest_revision().await {
                Ok(rev) => {
                    self.seen_revision.store(rev, Ordering::SeqCst);
                    self.metrics.latest_revision.set(rev as i64);
                    info!(revision = rev, replica = %self.replica, "loaded state from the store");
                    self.loaded.send_replace(true);
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "store not ready; retrying");
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// The service's snapshot channel; the first subscriber triggers its first build.
    pub fn subscribe(self: &Arc<Self>, service: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        let mut services = self.services.lock().unwrap();
        if let Some(e) = services.get(service) {
            return e.tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        services.insert(
            service.to_owned(),
            ServiceEntry {
                tx,
                build: Arc::default(),
                scoped: Arc::default(),
            },
        );
        drop(services);
        let hub = self.clone();
        let service = service.to_owned();
        tokio::spawn(async move { hub.refresh(&service).await });
        rx
    }

    /// Rebuilds the service's snapshot from the store and publishes it, if any sidecar
    /// listens for it.
    pub async fn refresh(&self, service: &str) {
        self.rebuild(service, Rebuild::FromStore).await
    }

    /// Re-issues the service's snapshot with the current healthy count, without
    /// reading the store. Falls back to a full build when there is no snapshot yet.
    async fn restamp(&self, service: &str) {
        self.rebuild(service, Rebuild::Restamp).await
    }

    async fn rebuild(&self, service: &str, how: Rebuild) {
        let mut loaded = self.loaded.subscribe();
        if loaded.wait_for(|l| *l).await.is_err() {
            return;
        }
        let (tx, lock, scoped) = {
            let services = self.services.lock().unwrap();
            match services.get(service) {
                Some(e) => (e.tx.clone(), e.build.clone(), e.scoped.clone()),
                None => return,
            }
        };
        let _guard = lock.lock().await;
        let current = tx.borrow().clone();
        let built = match (how, current) {
            (Rebuild::Restamp, Some(current)) => {
                let mut snap = (*current).clone();
                self.stamp(&mut snap, current.revision);
                Ok(snap)
            }
            _ => self.build(service).await,
        };
        match built {
            Ok(snap) => {
                debug!(service, revision = snap.revision, "snapshot built");
                self.metrics.snapshots_built.inc();
                let revision = snap.revision;
                scoped.store(service_scoped(&snap.rate_limit), Ordering::Relaxed);
                tx.send_replace(Some(Arc::new(snap)));
                let _ = self.events.send(Event::Snapshot {
                    service: service.to_owned(),
                    revision,
                });
            }
            // The previous snapshot stays; the periodic catch-up retries.
            Err(e) => warn!(service, error = %e, "snapshot build failed"),
        }
    }

    async fn build(&self, service: &str) -> Result<Snapshot, StoreError> {
        // The revision first: a write committing between these reads then makes the
        // snapshot hold more than its label says (the next build relabels it), never
        // less. Read last, a snapshot could claim a revision whose document it lacks,
        // and a sidecar would report as applied what it never enforced.
        let revision = self.store.service_revision(service).await?;
        let policies = self.store.list_policies(service).await?;
        let configs = self.store.list_configs(service).await?;
        // A key problem withholds the secrets (the sidecars keep the files they have)
        // but not the policies: routing and limits still follow the store.
        let (secrets, secrets_withheld) = match self.store.secret_values(service).await {
            Ok(values) => (values, String::new()),
            Err(e @ (StoreError::SecretsKeyMissing | StoreError::SecretUnreadable { .. })) => {
                error!(service, error = %e, "secrets withheld from the snapshot");
                (Vec::new(), e.to_string())
            }
            Err(e) => return Err(e),
        };
        let doc = |k: PolicyKind| {
            policies
                .iter()
                .find(|p| p.kind == k)
                .map(|p| p.document.to_string())
                .unwrap_or_default()
        };
        let mut snap = Snapshot {
            service: service.to_owned(),
            rate_limit: doc(PolicyKind::RateLimit),
            logging: doc(PolicyKind::Logging),
            authorization: doc(PolicyKind::Authorization),
            configs: configs
                .into_iter()
                .map(|c| ConfigDocument {
                    name: c.name,
                    content_type: c.content_type,
                    content: c.content.into(),
                    revision: c.revision,
                })
                .collect(),
            secrets: secrets
                .into_iter()
                .map(|s| Secret {
                    name: s.name,
                    value: s.value,
                    revision: s.revision,
                })
                .collect(),
            secrets_withheld,
            ..Snapshot::default()
        };
        self.stamp(&mut snap, revision);
        Ok(snap)
    }

    /// Sets what comes from the hub's memory rather than the service's documents: a new
    /// nonce and the split of `scope: service` limits.
    fn stamp(&self, snap: &mut Snapshot, own_revision: u64) {
        let healthy = self.mesh.healthy(&snap.service);
        snap.revision = own_revision;
        snap.nonce = uuid::Uuid::new_v4().simple().to_string();
        snap.service_share = 1.0 / f64::from(healthy.max(1));
        snap.healthy_instances = healthy;
    }

    /// The newest snapshot revision of `service`, if a sidecar subscribed to it here.
    pub fn current_revision(&self, service: &str) -> Option<u64> {
        let services = self.services.lock().unwrap();
        services
            .get(service)
            .and_then(|e| e.tx.borrow().as_ref().map(|s| s.revision))
    }

    /// Reads every change after the last one seen and refreshes the services it
    /// touched (their own snapshot, and their routing for the sessions watching
    /// them): the one path for local writes, notifications and the periodic sweep.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        let after = self.seen_revision.load(Ordering::SeqCst);
        let (services, newest) = self.store.changes_since(after).await?;
        if newest > after {
            self.seen_revision.fetch_max(newest, Ordering::SeqCst);
            self.metrics.latest_revision.set(newest as i64);
        }
        for s in services {
            self.refresh(&s).await;
            self.mesh.documents_changed(&s).await?;
        }
        Ok(())
    }

    /// Healthy counts that changed: an event for each, and a new split for the
    /// services whose limits depend on it.
    pub async fn counts_changed(&self, changes: Vec<CountChange>) {
        for (service, healthy) in changes {
            let _ = self.events.send(Event::Membership {
                service: service.clone(),
                healthy,
            });
            let scoped = self
                .services
                .lock()
                .unwrap()
                .get(&service)
                .is_some_and(|e| e.scoped.load(Ordering::Relaxed));
            if scoped {
                self.restamp(&service).await;
            }
        }
    }

    /// Keeps the hub current until `shutdown`: PostgreSQL notifications from every
    /// replica, membership re-reads, batched health writes, and a periodic catch-up.
    pub async fn run_background(self: Arc<Self>, shutdown: CancellationToken) {
        let hub = self;
        let members = {
            let hub = hub.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        changes = hub.mesh.next_changes() => hub.counts_changed(changes).await,
                    }
                }
            })
        };
        let (notify_tx, mut notify_rx) = tokio::sync::mpsc::channel::<String>(1024);
        if hub.store.backend() == crate::store::Backend::Postgres {
            tokio::spawn(listen(hub.store.url().to_owned(), notify_tx, shutdown.clone()));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(payload) = notify_rx.recv() => {
                    if let Some(service) = payload.strip_prefix("members:") {
                        hub.mesh.mark_dirty(service);
                    } else if let Err(e) = hub.catch_up().await {
                        warn!(error = %e, "applying a change notification failed");
                    }
                }
                _ = tick.tick() => {
                    ticks += 1;
                    if let Err(e) = hub.catch_up().await { warn!(error = %e, "catch-up read failed") }
                    if ticks.is_multiple_of(2) {
                        match hub.mesh.flush().await {
                            Ok(n) => { hub.metrics.health_rows_written.inc_by(n as u64); }
                            Err(e) => warn!(error = %e, "writing health reports failed; kept for the next batch"),
                        }
                        if let Err(e) = hub.mesh.silenced().await { warn!(error = %e, "silence check failed") }
                    }
                    // Pods gone for an hour are forgotten.
                    if ticks.is_multiple_of(120) {
                        let _ = hub.store.prune_sidecars(now_ms() - 3_600_000).await;
                    }
                }
            }
        }
        // What was reported last still reaches the store.
        let _ = hub.mesh.flush().await;
        members.abort();
    }
}

/// Whether a RateLimitPolicy document has a rule with `scope: service`.
fn service_scoped(doc: &str) -> bool {
    !doc.is_empty()
        && serde_json::from_str::<RateLimitPolicy>(doc).is_ok_and(|p| p.rules.iter().any(|r| r.scope == Scope::Service))
}

/// LISTENs on the changes channel, reconnecting on failure; every (re)connect is
/// followed by a catch-up (the sender sends an empty payload) so nothing is missed
/// while the listener was down.
async fn listen(url: String, tx: tokio::sync::mpsc::Sender<String>, shutdown: CancellationToken) {
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut attempt = 0;
    loop {
        let result = async {
            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
            l.listen(CHANGES_CHANNEL).await?;
            let _ = tx.send(String::new()).await;
            loop {
                let n = l.recv().await?;
                if tx.send(n.payload().to_owned()).await.is_err() {
                    return Ok::<(), sqlx::Error>(());
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = result => {
                if let Err(e) = r { warn!(error = %e, "PostgreSQL listener lost; reconnecting") }
                if tx.is_closed() { return }
            }
        }
        tokio::time::sleep(backoff.delay(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::reg;
    use crate::store::Precondition;
    use serde_json::json;

    async fn hub() -> (Arc<Hub>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        (Hub::new(store, Timing::default(), Arc::new(Metrics::new())), dir)
    }

    async fn next(rx: &mut watch::Receiver<Option<Arc<Snapshot>>>) -> Arc<Snapshot> {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("a snapshot within 10 s")
            .unwrap();
        rx.borrow_and_update().clone().expect("a published snapshot")
    }

    #[tokio::test]
    async fn no_snapshot_is_built_before_the_hub_has_loaded() {
        let (hub, _dir) = hub().await;
        let mut rx = hub.subscribe("web");
        tokio::task::yield_now().await;
        assert!(rx.borrow_and_update().is_none());
        assert!(!hub.is_loaded());
        hub.load().await;
        let snap = next(&mut rx).await;
        assert_eq!(snap.service, "web");
    }

    #[tokio::test]
    async fn a_service_at_every_size_limit_still_gets_a_snapshot_within_the_message_limit() {
        use outrider_policy::limits::{
            CONTENT_TYPE_MAX_BYTES, DOCUMENT_MAX_BYTES, SERVICE_CONFIG_MAX_BYTES, SERVICE_CONFIG_MAX_DOCUMENTS,
            SNAPSHOT_MAX_BYTES,
        };
        use prost::Message;
        let (hub, _dir) = hub().await;
        let store = hub.store();
        // The store does not validate documents; a long string stands for the largest body.
        let big = |kind| json!({"rules": [], "pad": "p".repeat(DOCUMENT_MAX_BYTES - 32), "kind": kind});
        for kind in [PolicyKind::RateLimit, PolicyKind::Logging, PolicyKind::Authorization] {
            store
                .put_policy("web", kind, &big(kind.as_str()), Precondition::None, "t")
                .await
                .unwrap();
        }
        let content_type = "t".repeat(CONTENT_TYPE_MAX_BYTES);
        let each = SERVICE_CONFIG_MAX_BYTES / SERVICE_CONFIG_MAX_DOCUMENTS;
        for i in 0..SERVICE_CONFIG_MAX_DOCUMENTS {
            let name = format!("{i:03}{}", "n".repeat(197));
            store
                .put_config("web", &name, &content_type, &vec![b'c'; each], Precondition::None, "t")
                .await
                .unwrap();
        }
        hub.load().await;
        let mut rx = hub.subscribe("web");
        let snap = next(&mut rx).await;
        assert_eq!(snap.configs.len(), SERVICE_CONFIG_MAX_DOCUMENTS);
        let size = snap.encoded_len();
        assert!(size > SERVICE_CONFIG_MAX_BYTES + DOCUMENT_MAX_BYTES, "{size}");
        assert!(size <= SNAPSHOT_MAX_BYTES, "{size} > {SNAPSHOT_MAX_BYTES}");
    }

    #[tokio::test]
    async fn a_write_rebuilds_only_the_written_service() {
        let (hub, _dir) = hub().await;
        hub.load().await;
        let mut web = hub.subscribe("web");
        let mut api = hub.subscribe("api");
        let web0 = next(&mut web).await;
        let api0 = next(&mut api).await;

        let doc = json!({"rules": [{"name": "all", "requestsPerSecond": 5}]});
        let stored = hub
            .store()
            .put_policy("web", PolicyKind::RateLimit, &doc, Precondition::None, "test")
            .await
            .unwrap();
        hub.catch_up().await.unwrap();

        let web1 = next(&mut web).await;
        assert_eq!(web1.revision, stored.revision);
        assert!(web1.revision > web0.revision);
        assert!(web1.rate_limit.contains("requestsPerSecond"));
        assert!(!api.has_changed().unwrap(), "api's snapshot must not be rebuilt");
        assert_eq!(hub.current_revision("api"), Some(api0.revision));
    }

    #[tokio::test]
    async fn a_new_healthy_instance_re_splits_service_scoped_limits_and_nothing_else() {
        let (hub, _dir) = hub().await;
        hub.load().await;
        let scoped = json!({"rules": [{"name": "all", "requestsPerSecond": 10, "scope": "service"}]});
        hub.store()
            .put_policy("web", PolicyKind::RateLimit, &scoped, Precondition::None, "test")
            .await
            .unwrap();
        let mut web = hub.subscribe("web");
        let mut api = hub.subscribe("api");
        let first = next(&mut web).await;
        next(&mut api).await;
        assert_eq!(first.healthy_instances, 0);

        for (service, pod) in [("web", "web-1"), ("web", "web-2"), ("api", "api-1")] {
            let r = reg(&format!("default/{pod}"), service, &format!("s-{pod}"));
            hub.store().register_sidecar(&r).await.unwrap();
            let changes = hub.mesh.join(&r).await.unwrap();
            hub.counts_changed(changes).await;
        }
        // The second web join is debounced, as in the running hub.
        let changes = hub.mesh.next_changes().await;
        hub.counts_changed(changes).await;

        let mut snap = next(&mut web).await;
        while snap.healthy_instances < 2 {
            snap = next(&mut web).await;
        }
        assert_eq!(snap.service_share, 0.5);
        // A re-split re-stamps the same documents with a fresh nonce.
        assert_ne!(snap.nonce, first.nonce);
        assert_eq!(snap.rate_limit, first.rate_limit);
        assert!(
            !api.has_changed().unwrap(),
            "api has no service-scoped limit: its count changes send it nothing"
        );
        assert_eq!(hub.mesh.healthy("api"), 1);
    }
}
