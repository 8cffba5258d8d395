//! The compiled destination table: for each service, its routes (RoutingPolicy,
//! see `docs/reference.md`) and its healthy endpoints grouped by subset. Compiled once per snapshot;
//! endpoint state, subset figures and retry budgets carry over from the previous table
//! so that an update never resets load, ejections or counters.

use super::budget::RetryBudget;
use super::endpoint::EndpointState;
use super::stats::SubsetStats;
use crate::matcher::RequestMatcher;
use http::header::HeaderMap;
use http::uri::Authority;
use outrider_policy::{RetryOn, RoutingPolicy};
use outrider_proto::v1::{DestinationFigures, DestinationService, DestinationTable, Destinations as DestinationsMsg};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
pub struct Destinations {
    pub routing_revision: u64,
    services: HashMap<Box<str>, Arc<Destination>>,
    /// Which service has an endpoint at an address (for a `Host` or an original
    /// destination that is an IP address): the namespace view holding it, with the
    /// endpoint's port, ordered by service name so that the answer is stable.
    by_address: HashMap<IpAddr, Vec<(u16, Arc<Destination>)>>,
}

/// A set of endpoints a request may be balanced over.
pub type Endpoints = Arc<[Arc<EndpointState>]>;

pub struct Destination {
    pub name: Box<str>,
    /// Empty without a RoutingPolicy: every request spreads over all endpoints.
    pub routes: Vec<CompiledRoute>,
    /// Shared slices, so that a request holds the set it was routed to with one
    /// reference count.
    pub all: Endpoints,
    pub subsets: HashMap<Box<str>, Endpoints>,
    pub budget: Arc<RetryBudget>,
    pub policy: Option<RoutingPolicy>,
    /// When a request last named this service (epoch seconds): destinations the app
    /// stopped calling are dropped after `OUTRIDER_DESTINATION_IDLE`.
    pub last_used: Arc<AtomicU64>,
    /// Where its instances are: `Single(ns)` when every endpoint is in one namespace
    /// (the usual case: this destination is that namespace's view), `Split` with one
    /// view per namespace when the name exists in several, `Unknown` without
    /// endpoints.
    pub namespaces: Namespaces,
}

/// The namespaces a destination's instances are in; see [`Destination::namespaces`].
#[derive(Default)]
pub enum Namespaces {
    #[default]
    Unknown,
    Single(Box<str>),
    /// One view per namespace (lowercase), sharing the endpoints' state.
    Split(Vec<(Box<str>, Arc<Destination>)>),
}

/// The namespace an endpoint without one is in: persisted tables from before
/// endpoints carried it, and the default of `OUTRIDER_NAMESPACE`.
const DEFAULT_NAMESPACE: &str = "default";

impl Destination {
    /// This destination as seen from a name qualified with `namespace` (or, when
    /// `callers` is set, an unqualified name from a sidecar in it): the view of its
    /// instances there, or `None` when it has none there. A destination without
    /// endpoints (a policy, no healthy instance yet) answers for the caller's own
    /// namespace only, where "no healthy instance" is the truth.
    pub fn in_namespace<'a>(self: &'a Arc<Self>, namespace: &str, callers: bool) -> Option<&'a Arc<Destination>> {
        match &self.namespaces {
            Namespaces::Single(ns) => ns.eq_ignore_ascii_case(namespace).then_some(self),
            Namespaces::Split(views) => views
                .iter()
                .find(|(ns, _)| ns.eq_ignore_ascii_case(namespace))
                .map(|(_, d)| d),
            Namespaces::Unknown => callers.then_some(self),
        }
    }

    /// Notes a request for it; one store a second at most, so the hot path rarely
    /// writes the shared line.
    pub fn touch(&self) {
        let now = outrider_runtime::time::now_ms() / 1000;
        if self.last_used.load(Ordering::Relaxed) != now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }
}

pub struct CompiledRoute {
    pub name: Box<str>,
    matcher: RequestMatcher,
    /// (subset, weight) with weight > 0.
    backends: Vec<(Box<str>, u32)>,
    total_weight: u32,
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on_5xx: bool,
    pub on_connect_failure: bool,
    pub on_reset: bool,
}

impl Retry {
    /// Without a policy a request that never reached an instance (connection refused)
    /// is retried once elsewhere: nothing was sent, so this is always safe.
    pub const DEFAULT: Retry = Retry {
        attempts: 1,
        per_try_timeout: None,
        on_5xx: false,
        on_connect_failure: true,
        on_reset: false,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("routing policy of {service}: {error}")]
    Routing {
        service: String,
        error: outrider_policy::PolicyError,
    },
    #[error("endpoint changes for {0}, which this sidecar does not hold")]
    UnknownDelta(String),
    #[error("endpoint {address}:{port} of {service}: not a valid address")]
    Endpoint {
        service: String,
        address: String,
        port: u32,
    },
}

/// The destination services as the control plane sent them, before compiling: what a
/// `Destinations` message is applied to, and what is persisted.
pub type Held = BTreeMap<String, DestinationService>;

/// Applies one `Destinations` message to `held`; returns the names it touched. A
/// delta for a service not held is an error (the streams are ordered, so it means
/// the two sides disagree and a resync is due).
pub fn apply_message(held: &mut Held, msg: &DestinationsMsg) -> Result<Vec<String>, TableError> {
    let mut touched = Vec::new();
    if msg.full {
        touched.extend(held.keys().cloned());
        held.clear();
    }
    for s in &msg.services {
        held.insert(s.service.clone(), s.clone());
        touched.push(s.service.clone());
    }
    for d in &msg.deltas {
        let Some(h) = held.get_mut(&d.service) else {
            return Err(TableError::UnknownDelta(d.service.clone()));
        };
        let gone: HashSet<(&str, u32)> = d.remove.iter().map(|k| (k.address.as_str(), k.port)).collect();
        let replaced: HashSet<(&str, u32)> = d.upsert.iter().map(|e| (e.address.as_str(), e.port)).collect();
        h.endpoints.retain(|e| {
            let k = (e.address.as_str(), e.port);
            !gone.contains(&k) && !replaced.contains(&k)
        });
        h.endpoints.extend(d.upsert.iter().cloned());
        h.endpoints
            .sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
        touched.push(d.service.clone());
    }
    for r in &msg.removed {
        held.remove(r);
        touched.push(r.clone());
    }
    touched.sort();
    touched.dedup();
    Ok(touched)
}

impl Destinations {
    /// Validates and compiles a whole `table`, reusing state from `previous`.
    pub fn compile(table: Option<&DestinationTable>, previous: Option<&Destinations>) -> Result<Self, TableError> {
        let held: Held = table
            .map(|t| t.services.iter().map(|s| (s.service.clone(), s.clone())).collect())
            .unwrap_or_default();
        let names: Vec<String> = held.keys().cloned().collect();
        let empty = Destinations::default();
        let (mut compiled, errors) = previous.unwrap_or(&empty).recompile(&held, &names);
        compiled.routing_revision = compiled.routing_revision.max(table.map_or(0, |t| t.routing_revision));
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(compiled),
        }
    }

    /// A new table from `held` in which only the `changed` services are compiled again;
    /// the others are shared with `self`. A service that fails to compile keeps its
    /// previous form (if any) and is reported, so one bad document never takes the
    /// others with it.
    pub fn recompile(&self, held: &Held, changed: &[String]) -> (Self, Vec<TableError>) {
        let mut services = self.services.clone();
        let mut errors = Vec::new();
        for name in changed {
            match held.get(name) {
                None => {
                    services.remove(name.as_str());
                }
                Some(d) => match compile_one(d, self.services.get(name.as_str()).map(|a| &**a)) {
                    Ok(dest) => {
                        services.insert(name.as_str().into(), Arc::new(dest));
                    }
                    Err(e) => errors.push(e),
                },
            }
        }
        let routing_revision = held.values().map(|d| d.routing_revision).max().unwrap_or(0);
        let by_address = index_addresses(&services);
        (
            Self {
                routing_revision,
                services,
                by_address,
            },
            errors,
        )
    }

    /// Whether the control plane has answered for `name` (perhaps with "no such
    /// service"): a request for it need not wait for a lookup.
    pub fn holds(&self, name: &str) -> bool {
        self.services.contains_key(name)
    }

    /// A held entry by exact name, known to the mesh or not.
    pub fn held(&self, name: &str) -> Option<&Arc<Destination>> {
        self.services.get(name)
    }

    /// Held services no request named since `before` (epoch seconds).
    pub fn idle_since(&self, before: u64) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .iter()
            .filter(|(_, d)| d.last_used.load(Ordering::Relaxed) < before)
            .map(|(n, _)| n.to_string())
            .collect();
        names.sort();
        names
    }

    /// The destination for a request's host from a sidecar in `namespace` (see
    /// [`parse_host`]): a service name in one of its forms, or an address one of its
    /// endpoints has.
    pub fn resolve(&self, host: &str, namespace: &str) -> Option<&Arc<Destination>> {
        match parse_host(host)? {
            Host::Service { name, namespace: ns } => {
                let dest = self
                    .services
                    .get(&*name)
                    // The control plane's answer for a name the mesh does not know.
                    .filter(|d| !(d.all.is_empty() && d.policy.is_none()))?;
                dest.in_namespace(
                    ns.unwrap_or(namespace),
                    ns.is_none_or(|n| n.eq_ignore_ascii_case(namespace)),
                )
            }
            Host::Address(ip, port) => self.at_address(ip, port),
        }
    }

    /// The service with an endpoint at `ip`: one at exactly `ip:port` first, else (for
    /// an address that is not loopback, where in development every instance lives)
    /// one at that address on any port, since an app dials its peer's own port while
    /// the endpoint is the peer's sidecar.
    pub fn at_address(&self, ip: IpAddr, port: Option<u16>) -> Option<&Arc<Destination>> {
        let at = self.by_address.get(&ip.to_canonical())?;
        at.iter()
            .find(|(p, _)| Some(*p) == port)
            .or_else(|| at.first().filter(|_| !ip.to_canonical().is_loopback()))
            .map(|(_, d)| d)
    }

    /// The identity an endpoint must prove, by its address. A scan of the held
    /// endpoints, done once per new mTLS connection (never per request), so the
    /// table keeps no second index to maintain on every update.
    pub fn identity_at(&self, authority: &Authority) -> Option<Arc<str>> {
        self.services
            .values()
            .flat_map(|d| d.all.iter())
            .find(|e| e.authority == *authority && e.identity.is_some())
            .and_then(|e| e.identity.clone())
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Figures for every subset this sidecar has called, for the health report.
    pub fn figures(&self) -> Vec<DestinationFigures> {
        let mut out = Vec::new();
        for d in self.services.values() {
            for eps in d.subsets.values() {
                if let Some(ep) = eps.first() {
                    if ep.stats.requests_total() > 0 {
                        out.push(ep.stats.figures());
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.service, &a.subset).cmp(&(&b.service, &b.subset)));
        out
    }

    /// A readable view for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let mut names: Vec<&Box<str>> = self.services.keys().collect();
        names.sort();
        let services: Vec<serde_json::Value> = names
            .into_iter()
            .map(|n| {
                let d = &self.services[n];
                serde_json::json!({
                    "service": n.as_ref(),
                    "endpoints": d.all.iter().map(|e| serde_json::json!({
                        "address": e.authority.as_str(), "subset": e.subset.as_ref(), "pod": e.pod.as_ref(),
                        "identity": e.identity.as_deref(), "outstanding": e.outstanding(),
                    })).collect::<Vec<_>>(),
                    "routing": d.policy,
                })
            })
            .collect();
        serde_json::json!({"routingRevision": self.routing_revision, "services": services})
    }
}

/// Compiles one destination service, carrying endpoint state, subset figures and the
/// retry budget over from `old`.
fn compile_one(d: &DestinationService, old: Option<&Destination>) -> Result<Destination, TableError> {
    let policy = if d.routing.trim().is_empty() {
        None
    } else {
        Some(
            outrider_policy::parse_document::<RoutingPolicy>(d.routing.as_bytes()).map_err(|error| {
                TableError::Routing {
                    service: d.service.clone(),
                    error,
                }
            })?,
        )
    };
    // An endpoint whose identity changed (its first certificate) is a new one: its
    // pooled plaintext connections must not carry on as if it were the same.
    let carried: HashMap<(&Authority, &str, Option<&str>), &Arc<EndpointState>> = old
        .map(|o| {
            o.all
                .iter()
                .map(|e| ((&e.authority, &*e.subset, e.identity.as_deref()), e))
                .collect()
        })
        .unwrap_or_default();
    let budget: Arc<RetryBudget> = old.map(|o| o.budget.clone()).unwrap_or_default();
    let last_used = old.map_or_else(
        || Arc::new(AtomicU64::new(outrider_runtime::time::now_ms() / 1000)),
        |o| o.last_used.clone(),
    );
    let mut all = Vec::with_capacity(d.endpoints.len());
    let mut namespace_of: Vec<Box<str>> = Vec::with_capacity(d.endpoints.len());
    let mut subsets: HashMap<Box<str>, Vec<Arc<EndpointState>>> = HashMap::new();
    let mut stats: HashMap<String, Arc<SubsetStats>> = HashMap::new();
    for e in &d.endpoints {
        let authority: Authority = format!("{}:{}", e.address, e.port)
            .parse()
            .ok()
            .filter(|_| e.port > 0 && e.port <= 65535)
            .ok_or_else(|| TableError::Endpoint {
                service: d.service.clone(),
                address: e.address.clone(),
                port: e.port,
            })?;
        let identity = (!e.identity.is_empty()).then_some(e.identity.as_str());
        let ep = match carried.get(&(&authority, e.subset.as_str(), identity)) {
            Some(ep) => Arc::clone(ep),
            None => {
                let s = stats
                    .entry(e.subset.clone())
                    .or_insert_with(|| {
                        old.and_then(|o| o.subsets.get(e.subset.as_str()))
                            .and_then(|v| v.first())
                            .map(|ep| ep.stats.clone())
                            .unwrap_or_else(|| Arc::new(SubsetStats::new(&d.service, &e.subset)))
                    })
                    .clone();
                Arc::new(EndpointState::new(authority, &e.subset, &e.pod, s).with_identity(&e.identity))
            }
        };
        stats.entry(e.subset.clone()).or_insert_with(|| ep.stats.clone());
        subsets.entry(e.subset.as_str().into()).or_default().push(ep.clone());
        all.push(ep);
        let ns = if e.namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            &e.namespace
        };
        namespace_of.push(ns.to_ascii_lowercase().into());
    }
    let mut distinct: Vec<&Box<str>> = namespace_of.iter().collect();
    distinct.sort();
    distinct.dedup();
    let namespaces = match distinct.as_slice() {
        [] => Namespaces::Unknown,
        [one] => Namespaces::Single((*one).clone()),
        several => Namespaces::Split(
            several
                .iter()
                .map(|ns| {
                    let mine: Vec<Arc<EndpointState>> = all
                        .iter()
                        .zip(&namespace_of)
                        .filter(|(_, n)| n == ns)
                        .map(|(e, _)| Arc::clone(e))
                        .collect();
                    let view = Destination {
                        name: d.service.as_str().into(),
                        routes: policy.as_ref().map(compile_routes).unwrap_or_default(),
                        subsets: group_by_subset(&mine),
                        all: mine.into(),
                        budget: Arc::clone(&budget),
                        policy: policy.clone(),
                        last_used: Arc::clone(&last_used),
                        namespaces: Namespaces::Single((*ns).clone()),
                    };
                    ((*ns).clone(), Arc::new(view))
                })
                .collect(),
        ),
    };
    let routes = policy.as_ref().map(compile_routes).unwrap_or_default();
    Ok(Destination {
        name: d.service.as_str().into(),
        routes,
        all: all.into(),
        subsets: subsets.into_iter().map(|(k, v)| (k, v.into())).collect(),
        budget,
        policy,
        last_used,
        namespaces,
    })
}

fn group_by_subset(endpoints: &[Arc<EndpointState>]) -> HashMap<Box<str>, Endpoints> {
    let mut subsets: HashMap<Box<str>, Vec<Arc<EndpointState>>> = HashMap::new();
    for e in endpoints {
        subsets.entry(e.subset.clone()).or_default().push(Arc::clone(e));
    }
    subsets.into_iter().map(|(k, v)| (k, v.into())).collect()
}

/// The address index of [`Destinations::by_address`], rebuilt with every table (one
/// pass over the held endpoints).
fn index_addresses(services: &HashMap<Box<str>, Arc<Destination>>) -> HashMap<IpAddr, Vec<(u16, Arc<Destination>)>> {
    let mut names: Vec<&Arc<Destination>> = services.values().collect();
    names.sort_by(|a, b| a.name.cmp(&b.name));
    let mut index: HashMap<IpAddr, Vec<(u16, Arc<Destination>)>> = HashMap::new();
    for dest in names {
        let views: Vec<&Arc<Destination>> = match &dest.namespaces {
            Namespaces::Split(views) => views.iter().map(|(_, v)| v).collect(),
            _ => vec![dest],
        };
        for view in views {
            for e in view.all.iter() {
                let host = e.authority.host().trim_matches(|c| c == '[' || c == ']');
                if let (Ok(ip), Some(port)) = (host.parse::<IpAddr>(), e.authority.port_u16()) {
                    index
                        .entry(ip.to_canonical())
                        .or_default()
                        .push((port, Arc::clone(view)));
                }
            }
        }
    }
    index
}

/// A service name as read from a `Host` or `:authority`: lowercased into a buffer
/// on the stack (a valid name has at most 63 bytes), so the request path does not
/// allocate for it.
#[derive(PartialEq, Eq)]
pub struct ServiceName {
    buf: [u8; 63],
    len: usize,
}

impl std::ops::Deref for ServiceName {
    type Target = str;

    fn deref(&self) -> &str {
        // Only ASCII letters, digits and '-' are ever copied in.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// What a request's `Host` (or `:authority`, or original destination) names.
#[derive(Debug, PartialEq, Eq)]
pub enum Host<'a> {
    /// `web`, `web.<ns>`, `web.<ns>.svc` or `web.<ns>.svc.cluster.local`; `namespace`
    /// is `None` for the unqualified form, which means the caller's namespace.
    Service {
        name: ServiceName,
        namespace: Option<&'a str>,
    },
    /// An IP address, with its port when one was given.
    Address(IpAddr, Option<u16>),
}

/// Reads `host` as the mesh reads it: a service name in one of its four forms, in
/// any case, with or without a port (ignored) and a trailing dot; or an IP address
/// (`10.0.0.5`, `10.0.0.5:8080`, `[fd00::5]:80`). Anything else (`api.stripe.com`,
/// `web.example.org`, `web.default.svc.cluster.local.evil.com`) names nothing: a name
/// is never guessed from its first label.
pub fn parse_host(host: &str) -> Option<Host<'_>> {
    if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some(Host::Address(IpAddr::V6(ip), port));
    }
    let (host, port) = split_port(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some(Host::Address(IpAddr::V4(ip), port.and_then(|p| p.parse().ok())));
    }
    let mut labels = host.split('.');
    let first = labels.next()?;
    let namespace = labels.next();
    let is = |label: Option<&str>, want: &str| label.is_some_and(|l| l.eq_ignore_ascii_case(want));
    let rest: [Option<&str>; 4] = std::array::from_fn(|_| labels.next());
    let suffix_ok = match rest {
        [None, ..] => true,
        [svc, None, ..] => is(svc, "svc"),
        [svc, cluster, local, None] => is(svc, "svc") && is(cluster, "cluster") && is(local, "local"),
        _ => false,
    };
    if !suffix_ok || namespace.is_some_and(|ns| !is_label(ns)) {
        return None;
    }
    let mut name = ServiceName { buf: [0; 63], len: 0 };
    let bytes = first.as_bytes();
    if bytes.len() > name.buf.len() {
        return None;
    }
    for (slot, b) in name.buf.iter_mut().zip(bytes) {
        *slot = b.to_ascii_lowercase();
    }
    name.len = bytes.len();
    outrider_policy::validate_service_name(&name)
        .is_ok()
        .then_some(Host::Service { name, namespace })
}

/// A DNS label as Kubernetes names namespaces with (RFC 1123), in any case.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The service name to ask the control plane for when a request names `host`: the
/// name alone, whatever the namespace (the control plane lists instances of every
/// namespace, each with its own, and the table picks the view); `None` when it names
/// no service.
pub fn lookup_name(host: &str) -> Option<ServiceName> {
    match parse_host(host)? {
        Host::Service { name, .. } => Some(name),
        Host::Address(..) => None,
    }
}

/// `host:port` → (`host`, the port); a colon not followed by digits only is no port.
fn split_port(host: &str) -> (&str, Option<&str>) {
    match host.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (h, Some(port))
        }
        _ => (host, None),
    }
}

fn compile_routes(p: &RoutingPolicy) -> Vec<CompiledRoute> {
    p.routes
        .iter()
        .map(|r| {
            let backends: Vec<(Box<str>, u32)> = r
                .backends
                .iter()
                .filter(|b| b.weight > 0)
                .map(|b| (b.subset.as_str().into(), b.weight))
                .collect();
            CompiledRoute {
                name: r.name.as_str().into(),
                matcher: RequestMatcher::compile(&r.matches),
                total_weight: backends.iter().map(|(_, w)| w).sum(),
                backends,
                timeout: r.timeout.map(|t| t.as_std()),
                retry: r.retries.as_ref().map(|rt| Retry {
                    attempts: rt.attempts,
                    per_try_timeout: rt.per_try_timeout.map(|t| t.as_std()),
                    on_5xx: rt.on.contains(&RetryOn::ServerError),
                    on_connect_failure: rt.on.contains(&RetryOn::ConnectFailure),
                    on_reset: rt.on.contains(&RetryOn::Reset),
                }),
            }
        })
        .collect()
}

impl CompiledRoute {
    pub fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        self.matcher.matches(path, headers)
    }

    /// A subset by weight; `roll` is uniform in `0..total_weight`.
    pub fn subset_for(&self, roll: u32) -> Option<&str> {
        let mut acc = 0;
        for (s, w) in &self.backends {
            acc += w;
            if roll < acc {
                return Some(s);
            }
        }
        None
    }

    pub fn total_weight(&self) -> u32 {
        self.total_weight
    }

    /// Backends in order, for falling back when the chosen subset has no endpoints.
    pub fn subsets(&self) -> impl Iterator<Item = &str> {
        self.backends.iter().map(|(s, _)| &**s)
    }
}

impl Destination {
    /// The first route whose match fits (`None`: no policy, or nothing matched).
    pub fn route(&self, path: &str, headers: &HeaderMap) -> Option<&CompiledRoute> {
        self.routes.iter().find(|r| r.matches(path, headers))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use outrider_proto::v1::{DestinationService, Endpoint};

    pub(crate) fn table(routing: &str) -> DestinationTable {
        let ep = |port: u32, subset: &str| Endpoint {
            address: "127.0.0.1".into(),
            port,
            subset: subset.into(),
            pod: format!("web-{port}"),
            ..Default::default()
        };
        DestinationTable {
            services: vec![DestinationService {
                service: "web".into(),
                endpoints: vec![ep(1001, "v1"), ep(1002, "v2")],
                routing: routing.into(),
                routing_revision: 3,
            }],
            routing_revision: 3,
        }
    }

    #[test]
    fn hosts_resolve_by_name_in_this_namespace_in_any_case_without_port() {
        let d = Destinations::compile(Some(&table("")), None).unwrap();
        for h in [
            "web",
            "web:80",
            "WEB",
            "WEB:8080",
            "web.",
            "Web.Default:8080",
            "web.default.svc",
            "WEB.DEFAULT.SVC.CLUSTER.LOCAL",
            "web.default.svc.cluster.local",
            "web.default.svc.cluster.local.:80",
            // An address: exactly an endpoint's, port and all, on loopback.
            "127.0.0.1:1001",
        ] {
            assert_eq!(&*d.resolve(h, "default").unwrap().name, "web", "{h}");
        }
        for h in [
            "api",
            "web.stripe.com",
            "web.example.org",
            "web.other",
            "web.other.svc.cluster.local",
            "web.default.svc.example.com",
            "web.default.svc.cluster.local.evil.com",
            "web.default.svc.cluster",
            "web.default.cluster.local",
            "web.defaults",
            "web..svc",
            "web.-default",
            "web:http",
            "",
            ":80",
            // Loopback on another port: in development every instance is on it.
            "127.0.0.1:80",
            "127.0.0.1",
            "[::1]:80",
            "[::1",
        ] {
            assert!(d.resolve(h, "default").is_none(), "{h}");
        }
        assert!(
            d.resolve("web", "shop").is_none(),
            "unqualified means the caller's namespace"
        );
        assert!(
            d.resolve("web.default.svc", "shop").is_some(),
            "qualified reaches across namespaces"
        );
        assert_eq!(lookup_name("api.stripe.com").as_deref(), None);
        assert_eq!(lookup_name("API:443").as_deref(), Some("api"));
        assert_eq!(
            lookup_name("web.payments.svc").as_deref(),
            Some("web"),
            "asked by name, filtered by namespace"
        );
        assert_eq!(lookup_name("10.0.0.5:8080").as_deref(), None);
    }

    #[test]
    fn hosts_parse_into_names_with_their_namespace_or_addresses() {
        let service = |h| match parse_host(h) {
            Some(Host::Service { name, namespace }) => Some((name.to_string(), namespace.map(str::to_owned))),
            _ => None,
        };
        assert_eq!(
            service("Web.Payments.SVC:80"),
            Some(("web".into(), Some("Payments".into())))
        );
        assert_eq!(service("web"), Some(("web".into(), None)));
        assert_eq!(service("web.default.svc.cluster.local.evil.com"), None);
        assert_eq!(
            parse_host("10.0.0.5:8080"),
            Some(Host::Address("10.0.0.5".parse().unwrap(), Some(8080)))
        );
        assert_eq!(
            parse_host("10.0.0.5."),
            Some(Host::Address("10.0.0.5".parse().unwrap(), None))
        );
        assert_eq!(
            parse_host("[fd00::5]:80"),
            Some(Host::Address("fd00::5".parse().unwrap(), Some(80)))
        );
        assert_eq!(parse_host("[fd00::5]x"), None);
        assert_eq!(parse_host("fd00::5"), None, "an IPv6 host must be bracketed");
    }

    /// `web` with one instance in `default` and one in `payments`, as the control plane
    /// lists a name that exists in two namespaces.
    fn two_namespaces() -> Destinations {
        let ep = |address: &str, namespace: &str| Endpoint {
            address: address.into(),
            port: 15006,
            subset: "v1".into(),
            pod: format!("web-{namespace}"),
            namespace: namespace.into(),
            ..Default::default()
        };
        let t = DestinationTable {
            services: vec![DestinationService {
                service: "web".into(),
                endpoints: vec![ep("10.0.0.1", "default"), ep("10.0.0.2", "payments")],
                routing: String::new(),
                routing_revision: 1,
            }],
            routing_revision: 1,
        };
        Destinations::compile(Some(&t), None).unwrap()
    }

    #[test]
    fn a_qualified_name_reaches_only_the_instances_in_its_namespace() {
        let d = two_namespaces();
        let pods = |h: &str, ns: &str| -> Vec<String> {
            d.resolve(h, ns)
                .map(|w| w.all.iter().map(|e| e.pod.to_string()).collect())
                .unwrap_or_default()
        };
        assert_eq!(pods("web", "default"), ["web-default"]);
        assert_eq!(pods("web", "payments"), ["web-payments"]);
        assert_eq!(pods("web.payments", "default"), ["web-payments"]);
        assert_eq!(pods("WEB.PAYMENTS.SVC.CLUSTER.LOCAL:8080", "default"), ["web-payments"]);
        assert_eq!(pods("web.default.svc", "payments"), ["web-default"]);
        assert!(pods("web", "shop").is_empty());
        assert!(pods("web.shop.svc", "default").is_empty());
        // An address matches the service with an endpoint there, on any port (the app
        // dials its peer's port, the endpoint is the peer's sidecar).
        assert_eq!(pods("10.0.0.2:8080", "default"), ["web-payments"]);
        assert_eq!(pods("10.0.0.1", "shop"), ["web-default"]);
        assert!(pods("10.0.0.3:8080", "default").is_empty());
        // The views share the endpoints' state with the whole destination.
        let whole = d.held("web").unwrap();
        assert!(Arc::ptr_eq(
            &whole.all[1],
            &d.resolve("web.payments", "x").unwrap().all[0]
        ));
    }

    #[test]
    fn endpoint_state_carries_over_across_updates() {
        let first = Destinations::compile(Some(&table("")), None).unwrap();
        let ep = first.resolve("web", "default").unwrap().subsets["v2"][0].clone();
        ep.stats.record(false, Duration::from_millis(1));
        let second = Destinations::compile(Some(&table("")), Some(&first)).unwrap();
        assert!(Arc::ptr_eq(
            &ep,
            &second.resolve("web", "default").unwrap().subsets["v2"][0]
        ));
        assert_eq!(second.figures()[0].requests_total, 1);
    }

    #[test]
    fn routes_match_in_order_and_weights_pick_subsets() {
        let p = r#"{"routes":[
            {"name":"beta","match":{"pathPrefix":"/","headers":{"X-Canary":"always"}},"backends":[{"subset":"v2","weight":100}]},
            {"name":"default","backends":[{"subset":"v1","weight":80},{"subset":"v2","weight":20},{"subset":"v3","weight":0}]}]}"#;
        let d = Destinations::compile(Some(&table(p)), None).unwrap();
        let web = d.resolve("web", "default").unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(&*web.route("/", &h).unwrap().name, "default");
        h.insert("x-canary", "always".parse().unwrap());
        assert_eq!(&*web.route("/x", &h).unwrap().name, "beta");
        let r = &web.routes[1];
        assert_eq!(r.total_weight(), 100);
        assert_eq!(
            (r.subset_for(0), r.subset_for(79), r.subset_for(80)),
            (Some("v1"), Some("v1"), Some("v2"))
        );
        assert_eq!(
            r.subsets().collect::<Vec<_>>(),
            ["v1", "v2"],
            "zero weights never get traffic"
        );
    }

    #[test]
    fn an_invalid_routing_document_is_refused() {
        let bad = r#"{"routes":[{"name":"d","backends":[{"subset":"v2","weight":150}]}]}"#;
        let err = Destinations::compile(Some(&table(bad)), None).err().unwrap();
        assert!(err.to_string().contains("routing policy of web"), "{err}");
    }
}
