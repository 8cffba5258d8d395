//! Discovery, scoped and incremental: which instances of each service callers may
//! route to, kept in memory and sent only to the sidecars that watch that service.
//!
//! The unit is a *destination*: one service's healthy endpoints and its RoutingPolicy.
//! A destination is tracked while anyone on this replica needs it — a session that
//! watches it (its app called the name, or declared it) or a sidecar of the service
//! itself (whose snapshot carries the healthy count). Each tracked destination has a
//! version, a short log of endpoint changes and the set of sessions watching it:
//!
//! - **Membership is event driven.** Joins, leaves, app-health flips and silences mark
//!   a service dirty ([`Mesh::mark_dirty`]); the [`Mesh::run`] task waits a short
//!   debounce, then re-reads the sidecar rows of each dirty service only (never the
//!   fleet), overlays what this replica's own sessions know in memory, and diffs the
//!   healthy set against the one it holds. Other replicas reach it through their
//!   `members:` notifications; sidecars whose replica died are found by an indexed
//!   query for rows that *became* silent since the last look ([`Mesh::silenced`]).
//! - **Changes reach watchers only.** A change bumps the destination's version, is
//!   logged, and wakes the watching sessions; each session asks [`Mesh::since`] for
//!   what changed after the version it sent last: a delta when the log still covers
//!   it, the whole destination otherwise. A slow session simply asks later and gets
//!   everything coalesced; nobody waits for it and the log is bounded.
//! - **Health reports stay in memory** ([`Mesh::report`]) and reach the store in
//!   batches ([`Mesh::flush`]); only a report that changes an instance's health is
//!   written at once, so other replicas hear of it.

use crate::store::{now_ms, SidecarRegistration, SidecarStatus, Store, StoreError};
use crate::timing::Timing;
use outrider_policy::PolicyKind;
use outrider_proto::v1::{DestinationService, Endpoint, EndpointDelta, EndpointKey};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::warn;

/// How long membership changes gather before one re-read per service (a rolling
/// restart of many instances becomes a few updates a second, not one per pod).
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Endpoint changes kept per destination for deltas; a session further behind gets
/// the whole destination.
const LOG_LEN: usize = 256;

/// The most destinations one stream may watch; further names are not tracked.
pub const MAX_WATCHES: usize = 1024;

/// Identifies a session among the watchers of a destination.
pub type SessionId = u64;

/// Wakes one session: the destinations that changed since it last looked.
#[derive(Default)]
pub struct Wake {
    dirty: Mutex<HashSet<String>>,
    notify: Notify,
}

impl Wake {
    pub fn mark(&self, service: &str) {
        let inserted = self.dirty.lock().unwrap().insert(service.to_owned());
        if inserted {
            self.notify.notify_one();
        }
    }

    /// Waits until something is marked (at once if something is).
    pub async fn wait(&self) {
        if !self.dirty.lock().unwrap().is_empty() {
            return;
        }
        self.notify.notified().await
    }

    pub fn take(&self) -> Vec<String> {
        self.dirty.lock().unwrap().drain().collect()
    }
}

/// What a session receives for one watched destination.
pub enum Update {
    /// Nothing after the version it holds.
    Same,
    Full(u64, Arc<DestinationService>),
    Delta(u64, EndpointDelta),
}

type Key = (String, u32);

enum Change {
    Upsert(Endpoint),
    Remove(Key),
}

#[derive(Default)]
struct Destination {
    version: u64,
    /// Healthy endpoints, by address and port (sorted, so equal sets compare equal).
    endpoints: BTreeMap<Key, Endpoint>,
    healthy: u32,
    routing: String,
    routing_revision: u64,
    /// (version, change), oldest first; `floor` is the newest version no longer in it.
    log: VecDeque<(u64, Change)>,
    floor: u64,
    watchers: HashMap<SessionId, Arc<Wake>>,
    /// This replica's sessions of the service itself.
    members: u32,
    /// The whole destination at `version`, built once for every session that needs it.
    full: Option<Arc<DestinationService>>,
    loaded: bool,
    /// Held by the one task doing the first read: a burst of joins or watches of a
    /// service nobody tracked yet becomes one read, not one per newcomer.
    first_load: Arc<tokio::sync::Mutex<()>>,
}

impl Destination {
    fn whole(&mut self, name: &str) -> Arc<DestinationService> {
        if let Some(f) = &self.full {
            return f.clone();
        }
        let f = Arc::new(DestinationService {
            service: name.to_owned(),
            endpoints: self.endpoints.values().cloned().collect(),
            routing: self.routing.clone(),
            routing_revision: self.routing_revision,
        });
        self.full = Some(f.clone());
        f
    }

    fn wake_all(&self, name: &str) {
        for w in self.watchers.values() {
            w.mark(name);
        }
    }

    fn idle(&self) -> bool {
        self.watchers.is_empty() && self.members == 0
    }

    /// Installs a new healthy set; true when it differs.
    fn set_endpoints(&mut self, endpoints: BTreeMap<Key, Endpoint>, healthy: u32) -> bool {
        self.healthy = healthy;
        if endpoints == self.endpoints {
            return false;
        }
        let version = self.version + 1;
        let mut changes = Vec::new();
        for (k, e) in &endpoints {
            if self.endpoints.get(k) != Some(e) {
                changes.push(Change::Upsert(e.clone()));
            }
        }
        for k in self.endpoints.keys() {
            if !endpoints.contains_key(k) {
                changes.push(Change::Remove(k.clone()));
            }
        }
        self.endpoints = endpoints;
        self.bump(version, changes);
        true
    }

    fn bump(&mut self, version: u64, changes: Vec<Change>) {
        self.version = version;
        self.full = None;
        self.log.extend(changes.into_iter().map(|c| (version, c)));
        while self.log.len() > LOG_LEN {
            if let Some((v, _)) = self.log.pop_front() {
                // Changes of one version must all be in the log for a delta from
                // before it, so a partly dropped version counts as dropped.
                self.floor = self.floor.max(v);
            }
        }
    }

    /// A routing change is sent as the whole destination: the log cannot carry it.
    fn set_routing(&mut self, routing: String, revision: u64) -> bool {
        if routing == self.routing && revision == self.routing_revision {
            return false;
        }
        self.routing = routing;
        self.routing_revision = revision;
        let version = self.version + 1;
        self.log.clear();
        self.floor = version;
        self.bump(version, Vec::new());
        true
    }

    fn since(&mut self, name: &str, held: u64) -> Update {
        if held == self.version {
            return Update::Same;
        }
        if held == 0 || held < self.floor || held > self.version {
            return Update::Full(self.version, self.whole(name));
        }
        let mut upsert: BTreeMap<Key, Endpoint> = BTreeMap::new();
        let mut remove: BTreeMap<Key, ()> = BTreeMap::new();
        for (v, c) in &self.log {
            if *v <= held {
                continue;
            }
            match c {
                Change::Upsert(e) => {
                    let k = (e.address.clone(), e.port);
                    remove.remove(&k);
                    upsert.insert(k, e.clone());
                }
                Change::Remove(k) => {
                    upsert.remove(k);
                    remove.insert(k.clone(), ());
                }
            }
        }
        Update::Delta(
            self.version,
            EndpointDelta {
                service: name.to_owned(),
                upsert: upsert.into_values().collect(),
                remove: remove
                    .into_keys()
                    .map(|(address, port)| EndpointKey { address, port })
                    .collect(),
            },
        )
    }
}

/// What this replica knows of one of its own sessions, ahead of the store.
struct Local {
    service: String,
    session: String,
    last_seen_ms: i64,
    /// The last report's app health (`None` before the first report).
    app_healthy: Option<bool>,
    /// The last report, not yet written to the store.
    pending: Option<String>,
    /// The last ACKed revision, not yet written to the store.
    pending_ack: Option<u64>,
}

pub struct Mesh {
    store: Store,
    timing: Timing,
    destinations: Mutex<HashMap<String, Destination>>,
    local: Mutex<HashMap<String, Local>>,
    dirty: Mutex<HashSet<String>>,
    /// Services whose membership this replica changed by a join, told to the other
    /// replicas once per debounce rather than once per join.
    announce: Mutex<HashSet<String>>,
    dirty_notify: Notify,
    next_session: AtomicU64,
    /// Up to where [`Mesh::silenced`] has looked (epoch ms).
    silence_checked: AtomicU64,
    /// The store's last outage, so that silence it caused is not taken for dead pods.
    outage: Mutex<Outage>,
}

/// While the store is down nobody's reports land, so afterwards every instance of
/// every other replica looks silent until that replica's next flush. Instances that
/// were alive when the outage began get a fresh unhealthy window from the moment the
/// store came back instead of being withdrawn at once.
#[derive(Default)]
struct Outage {
    /// When store calls started failing, while they still do.
    down_since: Option<i64>,
    /// The last outage that ended: (began, ended).
    last: Option<(i64, i64)>,
    /// Services whose instances were kept only by that grace: re-read once it ends,
    /// so a replica that really died during the outage still loses its endpoints.
    forgiven: HashSet<String>,
}

/// (id, session, last seen, health JSON) of a batched report.
type HealthRow = (String, String, i64, String);
/// (id, session, revision) of a batched ACK.
type AckRow = (String, String, u64);

/// A healthy-count change the hub must hear about (`scope: service` splits).
pub type CountChange = (String, u32);

impl Mesh {
    pub fn new(store: Store, timing: Timing) -> Self {
        Self {
            store,
            timing,
            destinations: Mutex::default(),
            local: Mutex::default(),
            dirty: Mutex::default(),
            announce: Mutex::default(),
            dirty_notify: Notify::new(),
            next_session: AtomicU64::new(1),
            silence_checked: AtomicU64::new((now_ms() - timing.unhealthy_after.as_millis() as i64).max(0) as u64),
            outage: Mutex::default(),
        }
    }

    /// Notes whether a store call reached the store, to know when an outage began and
    /// ended (see [`Outage`]).
    fn observe<T>(&self, r: &Result<T, StoreError>) {
        let mut o = self.outage.lock().unwrap();
        match r {
            Err(e) if e.is_unavailable() => {
                o.down_since.get_or_insert_with(now_ms);
            }
            Err(_) => {}
            Ok(_) => {
                if let Some(began) = o.down_since.take() {
                    warn!(
                        outage_ms = now_ms() - began,
                        "store reachable again; instances alive before the outage keep their endpoints for one unhealthy window"
                    );
                    o.last = Some((began, now_ms()));
                }
            }
        }
    }

    /// The last store outage that ended, as (began, ended) epoch ms.
    fn last_outage(&self) -> Option<(i64, i64)> {
        self.outage.lock().unwrap().last
    }

    pub fn session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// The healthy instances of `service`, as last counted (0 when untracked).
    pub fn healthy(&self, service: &str) -> u32 {
        self.destinations.lock().unwrap().get(service).map_or(0, |d| d.healthy)
    }

    /// How many destinations this replica tracks, and how many watches they have.
    pub fn sizes(&self) -> (usize, usize) {
        let d = self.destinations.lock().unwrap();
        (d.len(), d.values().map(|d| d.watchers.len()).sum())
    }

    /// The sessions on this replica watching `service`.
    pub fn watchers(&self, service: &str) -> usize {
        self.destinations
            .lock()
            .unwrap()
            .get(service)
            .map_or(0, |d| d.watchers.len())
    }

    /// Queues `service` for a membership re-read after the debounce.
    pub fn mark_dirty(&self, service: &str) {
        let inserted = self.dirty.lock().unwrap().insert(service.to_owned());
        if inserted {
            self.dirty_notify.notify_one();
        }
    }

    /// A session of `reg` started: its service is tracked from now on, and counted
    /// before the session's first snapshot so that the split is right at once.
    pub async fn join(&self, reg: &SidecarRegistration) -> Result<Vec<CountChange>, StoreError> {
        self.local.lock().unwrap().insert(
            reg.id.clone(),
            Local {
                service: reg.service.clone(),
                session: reg.session.clone(),
                last_seen_ms: now_ms(),
                app_healthy: None,
                pending: None,
                pending_ack: None,
            },
        );
        {
            let mut d = self.destinations.lock().unwrap();
            d.entry(reg.service.clone()).or_default().members += 1;
        }
        if self.announce.lock().unwrap().insert(reg.service.clone()) {
            self.dirty_notify.notify_one();
        }
        match self.load_once(&reg.service).await? {
            Some(changes) => Ok(changes),
            None => {
                // Loaded already, perhaps by a read that started before this row was
                // written: the debounced re-read counts it.
                self.mark_dirty(&reg.service);
                Ok(Vec::new())
            }
        }
    }

    /// Reads a tracked destination for the first time, once however many sessions ask
    /// at the same moment: the others wait for that read. `None` when it was loaded
    /// already (or is no longer tracked); a failed read leaves it to the next caller.
    async fn load_once(&self, service: &str) -> Result<Option<Vec<CountChange>>, StoreError> {
        let lock = match self.destinations.lock().unwrap().get(service) {
            Some(d) if !d.loaded => d.first_load.clone(),
            _ => return Ok(None),
        };
        let _first = lock.lock().await;
        if self.destinations.lock().unwrap().get(service).is_none_or(|d| d.loaded) {
            return Ok(None);
        }
        self.reload(service).await.map(Some)
    }

    /// The session of `id` ended (or lost its row to a newer one).
    pub fn leave(&self, id: &str, session: &str, service: &str) {
        {
            let mut local = self.local.lock().unwrap();
            if local.get(id).is_some_and(|l| l.session == session) {
                local.remove(id);
            }
        }
        {
            let mut d = self.destinations.lock().unwrap();
            if let Some(e) = d.get_mut(service) {
                e.members = e.members.saturating_sub(1);
                if e.idle() {
                    d.remove(service);
                }
            }
        }
        self.mark_dirty(service);
    }

    /// Records a health report in memory. True when it changed the instance's health
    /// (its app turned healthy or unhealthy, or it spoke again after a silence): then
    /// the caller writes it to the store at once, for the other replicas.
    pub fn report(&self, id: &str, session: &str, health: String, app_healthy: bool) -> bool {
        let now = now_ms();
        let unhealthy_after = self.timing.unhealthy_after.as_millis() as i64;
        let mut local = self.local.lock().unwrap();
        let Some(l) = local.get_mut(id).filter(|l| l.session == session) else {
            return false;
        };
        // A new session's health is unknown, which counts as healthy (its row's health
        // was cleared at registration): only a report of an unhealthy app, or one after
        // a silence, changes what callers see.
        let flipped = l.app_healthy.unwrap_or(true) != app_healthy || now - l.last_seen_ms > unhealthy_after;
        l.last_seen_ms = now;
        l.app_healthy = Some(app_healthy);
        let service = l.service.clone();
        if flipped {
            l.pending = None;
        } else {
            l.pending = Some(health);
        }
        drop(local);
        if flipped {
            self.mark_dirty(&service);
        }
        flipped
    }

    /// Any other message from the session: it is alive.
    pub fn seen(&self, id: &str, session: &str) {
        if let Some(l) = self.local.lock().unwrap().get_mut(id).filter(|l| l.session == session) {
            l.last_seen_ms = now_ms();
        }
    }

    /// An ACK of `revision` from the session: written with the next batch.
    pub fn acked(&self, id: &str, session: &str, revision: u64) {
        if let Some(l) = self.local.lock().unwrap().get_mut(id).filter(|l| l.session == session) {
            l.last_seen_ms = now_ms();
            l.pending_ack = Some(l.pending_ack.map_or(revision, |r| r.max(revision)));
        }
    }

    /// The session's ACK not yet written, taken out (a NACK is written after it, so
    /// that the batch cannot clear a newer NACK).
    pub fn take_ack(&self, id: &str, session: &str) -> Option<u64> {
        self.local
            .lock()
            .unwrap()
            .get_mut(id)
            .filter(|l| l.session == session)
            .and_then(|l| l.pending_ack.take())
    }

    /// Writes the reports and ACKs gathered since the last flush, in one batch each;
    /// the number of rows written. What a failed write held is put back for the next
    /// flush unless something newer arrived meanwhile.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let (reports, acks): (Vec<HealthRow>, Vec<AckRow>) = {
            let mut local = self.local.lock().unwrap();
            let mut reports = Vec::new();
            let mut acks = Vec::new();
            for (id, l) in local.iter_mut() {
                if let Some(h) = l.pending.take() {
                    reports.push((id.clone(), l.session.clone(), l.last_seen_ms, h));
                }
                if let Some(r) = l.pending_ack.take() {
                    acks.push((id.clone(), l.session.clone(), r));
                }
            }
            (reports, acks)
        };
        let n = reports.len() + acks.len();
        if n == 0 {
            return Ok(0);
        }
        let written = async {
            if !acks.is_empty() {
                self.store.record_ack_batch(&acks).await?;
            }
            if !reports.is_empty() {
                self.store.record_health_batch(&reports).await?;
            }
            Ok(n)
        }
        .await;
        self.observe(&written);
        if written.is_err() {
            let mut local = self.local.lock().unwrap();
            for (id, session, seen, h) in reports {
                if let Some(l) = local.get_mut(&id).filter(|l| l.session == session) {
                    if l.pending.is_none() && l.last_seen_ms == seen {
                        l.pending = Some(h);
                    }
                }
            }
            for (id, session, r) in acks {
                if let Some(l) = local.get_mut(&id).filter(|l| l.session == session) {
                    l.pending_ack = Some(l.pending_ack.map_or(r, |p| p.max(r)));
                }
            }
        }
        written
    }

    /// Marks dirty every tracked service with an instance that fell silent (past the
    /// unhealthy window) since the last call: the instances of a replica that died
    /// with its streams. An indexed range over `last_seen_ms`, never the whole table.
    pub async fn silenced(&self) -> Result<(), StoreError> {
        let cutoff = now_ms() - self.timing.unhealthy_after.as_millis() as i64;
        let from = self.silence_checked.swap(cutoff.max(0) as u64, Ordering::SeqCst) as i64;
        if cutoff <= from {
            return Ok(());
        }
        let services = self.store.services_silent_between(from, cutoff).await;
        self.observe(&services);
        let mut services = match services {
            Ok(s) => s,
            Err(e) => {
                // Look at the same range again next time: silence during an outage
                // must still be noticed once the store answers.
                self.silence_checked.fetch_min(from as u64, Ordering::SeqCst);
                return Err(e);
            }
        };
        {
            let mut o = self.outage.lock().unwrap();
            let ended = o.last.map_or(0, |(_, ended)| ended);
            if !o.forgiven.is_empty() && now_ms() - ended >= self.timing.unhealthy_after.as_millis() as i64 {
                services.extend(o.forgiven.drain());
            }
        }
        let tracked: Vec<String> = {
            let d = self.destinations.lock().unwrap();
            services.into_iter().filter(|s| d.contains_key(s)).collect()
        };
        for s in tracked {
            self.mark_dirty(&s);
        }
        Ok(())
    }

    /// Waits for dirty services, lets more gather for [`DEBOUNCE`], then re-reads each
    /// once. Returns the healthy-count changes for the hub.
    pub async fn next_changes(&self) -> Vec<CountChange> {
        loop {
            self.dirty_notify.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
            let announce: Vec<String> = self.announce.lock().unwrap().drain().collect();
            for s in announce {
                if let Err(e) = self.store.notify_members(&s).await {
                    // Other replicas still find the newcomers at their next re-read
                    // of the service (any other change to it, or a silence).
                    warn!(service = %s, error = %e, "could not tell other replicas of a join");
                }
            }
            let dirty: Vec<String> = self.dirty.lock().unwrap().drain().collect();
            let mut counts = Vec::new();
            for s in dirty {
                match self.reload(&s).await {
                    Ok(c) => counts.extend(c),
                    Err(e) => {
                        warn!(service = %s, error = %e, "membership re-read failed; retrying");
                        self.mark_dirty(&s);
                    }
                }
            }
            if !counts.is_empty() {
                return counts;
            }
        }
    }

    /// Re-reads one tracked service's instances (and, the first time, its routing).
    async fn reload(&self, service: &str) -> Result<Vec<CountChange>, StoreError> {
        let first = match self.destinations.lock().unwrap().get(service) {
            None => return Ok(Vec::new()),
            Some(d) => !d.loaded,
        };
        let rows = self.store.list_sidecars(Some(service)).await;
        self.observe(&rows);
        let rows = rows?;
        let routing = if first {
            Some(self.routing_of(service).await?)
        } else {
            None
        };
        let now = now_ms();
        let unhealthy = self.timing.unhealthy_after.as_millis() as i64;
        let disconnected = self.timing.disconnected_after.as_millis() as i64;
        let mut endpoints = BTreeMap::new();
        let mut healthy = 0u32;
        let outage = self.last_outage();
        let mut forgave = false;
        {
            let local = self.local.lock().unwrap();
            for mut r in rows {
                // This replica's own sessions are fresher in memory than in the store.
                if let Some(l) = local.get(&r.id).filter(|l| l.session_matches(&r)) {
                    r.last_seen_ms = r.last_seen_ms.max(l.last_seen_ms);
                    if let Some(h) = l.app_healthy {
                        r.health = Some(serde_json::json!({ "appHealthy": h }));
                    }
                } else if let Some((began, ended)) = outage.filter(|_| r.connected) {
                    // Another replica's instance: if it was alive when the last store
                    // outage began, its silence counts from when the store came back.
                    if r.last_seen_ms < ended && r.last_seen_ms + unhealthy >= began {
                        r.last_seen_ms = ended;
                        forgave |= now - ended < unhealthy;
                    }
                }
                if r.status(now, unhealthy, disconnected) != SidecarStatus::Healthy {
                    continue;
                }
                healthy += 1;
                if r.address.is_empty() {
                    continue;
                }
                endpoints.insert(
                    (r.address.clone(), r.inbound_port),
                    Endpoint {
                        address: r.address,
                        port: r.inbound_port,
                        subset: r.version,
                        pod: r.pod,
                        // An expired certificate is no identity: callers would refuse it.
                        identity: r
                            .identity
                            .filter(|_| r.certificate_expiry_ms.is_some_and(|e| e > now))
                            .unwrap_or_default(),
                        namespace: r.namespace,
                    },
                );
            }
        }
        if forgave {
            // Re-read once the grace ends, so that a replica that died during the
            // outage still loses its endpoints.
            self.outage.lock().unwrap().forgiven.insert(service.to_owned());
        }
        let mut d = self.destinations.lock().unwrap();
        let Some(dest) = d.get_mut(service) else {
            return Ok(Vec::new());
        };
        let before = (dest.loaded, dest.healthy);
        if !dest.loaded {
            // Version 0 means "never sent": a loaded destination is at least 1, so a
            // new watcher of an empty one still gets its (empty) answer.
            dest.loaded = true;
            dest.version = dest.version.max(1);
            dest.floor = dest.version;
        }
        let mut changed = false;
        if let Some((doc, revision)) = routing {
            changed |= dest.set_routing(doc, revision);
        }
        changed |= dest.set_endpoints(endpoints, healthy);
        // The first load is news to every watcher, even of an empty service: one
        // whose first read failed is still waiting for its answer.
        if changed || !before.0 {
            dest.wake_all(service);
        }
        Ok(if before != (true, dest.healthy) {
            vec![(service.to_owned(), dest.healthy)]
        } else {
            Vec::new()
        })
    }

    async fn routing_of(&self, service: &str) -> Result<(String, u64), StoreError> {
        Ok(self
            .store
            .get_policy(service, PolicyKind::Routing)
            .await?
            .map_or((String::new(), 0), |p| (p.document.to_string(), p.revision)))
    }

    /// After a change to `service`'s documents: its routing may have changed.
    pub async fn documents_changed(&self, service: &str) -> Result<(), StoreError> {
        if !self.destinations.lock().unwrap().contains_key(service) {
            return Ok(());
        }
        let (doc, revision) = self.routing_of(service).await?;
        let mut d = self.destinations.lock().unwrap();
        if let Some(dest) = d.get_mut(service) {
            if dest.set_routing(doc, revision) {
                dest.wake_all(service);
            }
        }
        Ok(())
    }

    /// Starts sending `service` to session `id`: tracked (and read) if it was not.
    /// The session is woken when the destination is ready to send.
    pub async fn watch(&self, service: &str, id: SessionId, wake: &Arc<Wake>) -> Result<(), StoreError> {
        {
            let mut d = self.destinations.lock().unwrap();
            d.entry(service.to_owned())
                .or_default()
                .watchers
                .insert(id, wake.clone());
        }
        self.load_once(service).await?;
        // `reload` wakes watchers only on a change; an empty service is none.
        wake.mark(service);
        Ok(())
    }

    pub fn unwatch(&self, service: &str, id: SessionId) {
        let mut d = self.destinations.lock().unwrap();
        if let Some(e) = d.get_mut(service) {
            e.watchers.remove(&id);
            if e.idle() {
                d.remove(service);
            }
        }
    }

    /// What session-held version `held` of `service` lacks (`Same` when untracked).
    pub fn since(&self, service: &str, held: u64) -> Update {
        match self.destinations.lock().unwrap().get_mut(service) {
            Some(d) if d.loaded => d.since(service, held),
            _ => Update::Same,
        }
    }
}

impl Local {
    /// Only the session that owns the row may speak for it: after a reconnect to
    /// another replica, that replica's row wins.
    fn session_matches(&self, row: &crate::store::SidecarRow) -> bool {
        row.connected && row.session == self.session
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u32) -> Endpoint {
        Endpoint {
            address: "10.0.0.1".into(),
            port,
            subset: "v1".into(),
            pod: format!("p{port}"),
            ..Default::default()
        }
    }

    fn set(ports: &[u32]) -> BTreeMap<Key, Endpoint> {
        ports.iter().map(|p| (("10.0.0.1".to_owned(), *p), ep(*p))).collect()
    }

    #[test]
    fn a_session_behind_by_a_few_changes_gets_one_coalesced_delta() {
        let mut d = Destination {
            loaded: true,
            ..Default::default()
        };
        assert!(d.set_endpoints(set(&[1, 2]), 2));
        let v1 = d.version;
        assert!(d.set_endpoints(set(&[2, 3]), 2));
        assert!(d.set_endpoints(set(&[2, 3, 4]), 3));
        assert!(!d.set_endpoints(set(&[2, 3, 4]), 3), "the same set is no change");
        let Update::Delta(v, delta) = d.since("web", v1) else {
            panic!("a delta")
        };
        assert_eq!(v, d.version);
        let ports: Vec<u32> = delta.upsert.iter().map(|e| e.port).collect();
        assert_eq!(ports, [3, 4]);
        let removed: Vec<u32> = delta.remove.iter().map(|k| k.port).collect();
        assert_eq!(removed, [1]);
        assert!(matches!(d.since("web", d.version), Update::Same));
        assert!(
            matches!(d.since("web", 0), Update::Full(_, _)),
            "a new watcher gets everything"
        );
    }

    #[test]
    fn a_session_behind_the_log_or_across_a_routing_change_gets_the_whole_destination() {
        let mut d = Destination {
            loaded: true,
            ..Default::default()
        };
        d.set_endpoints(set(&[1]), 1);
        let old = d.version;
        for i in 0..(LOG_LEN as u32 + 10) {
            d.set_endpoints(set(&[1, 100 + i]), 2);
        }
        let Update::Full(_, whole) = d.since("web", old) else {
            panic!("whole")
        };
        assert_eq!(whole.endpoints.len(), 2);

        let before = d.version;
        assert!(d.set_routing("{\"routes\":[]}".into(), 7));
        let Update::Full(_, whole) = d.since("web", before) else {
            panic!("a routing change is sent whole")
        };
        assert_eq!(whole.routing_revision, 7);
    }
}
