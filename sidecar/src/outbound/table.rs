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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
pub struct Destinations {
    pub routing_revision: u64,
    services: HashMap<Box<str>, Arc<Destination>>,
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
}

impl Destination {
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
        (
            Self {
                routing_revision,
                services,
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

    /// The destination for a request's host in `namespace` (see [`service_name`]).
    pub fn resolve(&self, host: &str, namespace: &str) -> Option<&Arc<Destination>> {
        let name = service_name(host, namespace)?;
        self.services
            .get(&*name)
            // The control plane's answer for a name the mesh does not know.
            .filter(|d| !(d.all.is_empty() && d.policy.is_none()))
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
    let mut all = Vec::with_capacity(d.endpoints.len());
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
    }
    let routes = policy.as_ref().map(compile_routes).unwrap_or_default();
    Ok(Destination {
        name: d.service.as_str().into(),
        routes,
        all: all.into(),
        subsets: subsets.into_iter().map(|(k, v)| (k, v.into())).collect(),
        budget: old.map(|o| o.budget.clone()).unwrap_or_default(),
        policy,
        last_used: old.map_or_else(
            || Arc::new(AtomicU64::new(outrider_runtime::time::now_ms() / 1000)),
            |o| o.last_used.clone(),
        ),
    })
}

/// A service name as read from a `Host` or `:authority`: lowercased into a buffer
/// on the stack (a valid name has at most 63 bytes), so the request path does not
/// allocate for it.
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

/// The mesh service a request for `host` names, from a sidecar in `namespace`:
/// `web`, `web.<namespace>`, `web.<namespace>.svc` or
/// `web.<namespace>.svc.cluster.local`, in any case, with or without a port (and a
/// trailing dot). Anything else (`api.stripe.com`, another namespace, an address)
/// names no mesh service: a name is never guessed from its first label.
pub fn service_name(host: &str, namespace: &str) -> Option<ServiceName> {
    let host = strip_port(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    let (first, rest) = host.split_once('.').unwrap_or((host, ""));
    if !rest.is_empty() && !in_namespace(rest, namespace) {
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
    outrider_policy::validate_service_name(&name).is_ok().then_some(name)
}

/// Whether `suffix` (what follows the service's label) is `namespace`, optionally
/// followed by `.svc` or `.svc.cluster.local`.
fn in_namespace(suffix: &str, namespace: &str) -> bool {
    let Some(after) = suffix
        .get(..namespace.len())
        .filter(|ns| ns.eq_ignore_ascii_case(namespace))
        .map(|_| &suffix[namespace.len()..])
    else {
        return false;
    };
    after.is_empty() || after.eq_ignore_ascii_case(".svc") || after.eq_ignore_ascii_case(".svc.cluster.local")
}

/// The service name to ask the control plane for when a request names `host` (as
/// [`Destinations::resolve`] reads it); `None` when it names no service.
pub fn lookup_name(host: &str, namespace: &str) -> Option<ServiceName> {
    service_name(host, namespace)
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
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
            "Web.Default:8080",
            "web.default.svc",
            "web.default.svc.cluster.local",
            "web.default.svc.cluster.local.:80",
        ] {
            assert_eq!(&*d.resolve(h, "default").unwrap().name, "web", "{h}");
        }
        for h in [
            "api",
            "web.stripe.com",
            "web.other",
            "web.other.svc.cluster.local",
            "web.default.svc.example.com",
            "web.defaults",
            "127.0.0.1:1001",
            "[::1]:80",
        ] {
            assert!(d.resolve(h, "default").is_none(), "{h}");
        }
        assert!(d.resolve("web.shop.svc", "shop").is_some());
        assert_eq!(lookup_name("api.stripe.com", "default").as_deref(), None);
        assert_eq!(lookup_name("API:443", "default").as_deref(), Some("api"));
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
