//! A compiled AuthorizationPolicy: the service's rules in order, each caller set turned
//! into SPIFFE IDs once per snapshot, and the counters of what they denied.
//!
//! A leaf like `ratelimit`: the inbound `authz` layer evaluates it, `state` compiles it,
//! `metrics` renders its counters.

use crate::matcher::RequestMatcher;
use http::{HeaderMap, Method};
use outrider_policy::{Action, AuthorizationPolicy, MtlsMode, Peer};
use outrider_runtime::prom::{Kind, Writer};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a denial by no rule names (`rule` in the 403 and the metric label).
pub const DEFAULT_ACTION: &str = "defaultAction";
/// What a plaintext caller refused by `mtls: strict` is counted under.
pub const MTLS_STRICT: &str = "mtls";

/// How often the dry-run log may speak: every would-be denial is counted, but a flood
/// of them must not become a flood of log lines.
const DRY_RUN_LOG_INTERVAL_NS: u64 = 1_000_000_000;

/// `outrider_authz_denied_total{dry_run, rule}`: one counter per rule name and mode,
/// kept for the sidecar's lifetime so that a new snapshot never makes a counter go back.
#[derive(Default)]
pub struct AuthzCounters {
    counters: Mutex<BTreeMap<CounterKey, Arc<AtomicU64>>>,
}

/// `(dry_run, rule)`.
type CounterKey = (bool, Box<str>);

impl AuthzCounters {
    /// The counter for `rule` in this mode, made on first use. Called when a snapshot
    /// is compiled, never on the request path.
    pub fn counter(&self, rule: &str, dry_run: bool) -> Arc<AtomicU64> {
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry((dry_run, rule.into())).or_default())
    }

    /// The counts so far: `(dry_run, rule, count)`.
    pub fn values(&self) -> Vec<(bool, String, u64)> {
        let map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|((dry, rule), c)| (*dry, rule.to_string(), c.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn render(&self, w: &mut Writer<'_>) {
        const NAME: &str = "outrider_authz_denied_total";
        w.family(
            NAME,
            Kind::Counter,
            "Requests the AuthorizationPolicy denied (dry_run=\"true\": would have denied), by rule.",
        );
        for (dry, rule, count) in self.values() {
            w.sample(
                NAME,
                &[("dry_run", if dry { "true" } else { "false" }), ("rule", &rule)],
                count,
            );
        }
    }
}

/// What the policy decided about one request, as its access record shows it (a
/// response extension the access-log layer reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzDecision {
    /// `allow`, `deny`, or `would-deny` (a dry run let it through).
    pub outcome: &'static str,
    /// Who denied (a rule, `defaultAction`, `mtls`); `None` when allowed.
    pub rule: Option<Arc<str>>,
}

/// Who decided against a request: a rule, `defaultAction` or strict mode.
pub struct Denier {
    pub name: Arc<str>,
    count: Arc<AtomicU64>,
}

impl Denier {
    fn new(name: &str, dry_run: bool, counters: &AuthzCounters) -> Self {
        Denier {
            name: name.into(),
            count: counters.counter(name, dry_run),
        }
    }
}

/// The callers a rule is for.
struct Callers {
    /// `*`: any authenticated peer.
    any: bool,
    /// Exact SPIFFE IDs.
    ids: Box<[Box<str>]>,
}

impl Callers {
    fn admit(&self, peer: Option<&str>) -> bool {
        // A plaintext caller has no identity, so it fits no `from` at all.
        peer.is_some_and(|p| self.any || self.ids.iter().any(|id| **id == *p))
    }
}

struct Rule {
    /// `None`: anyone, plaintext included.
    from: Option<Callers>,
    matcher: RequestMatcher,
    /// Empty: any method.
    methods: Box<[Method]>,
    deny: Option<Denier>,
}

impl Rule {
    fn fits(&self, method: &Method, path: &str, headers: &HeaderMap, peer: Option<&str>) -> bool {
        self.from.as_ref().is_none_or(|f| f.admit(peer))
            && (self.methods.is_empty() || self.methods.contains(method))
            && self.matcher.matches(path, headers)
    }
}

/// The verdict on one request.
pub enum Verdict<'a> {
    Allow,
    Deny(&'a Denier),
}

pub struct Authorizer {
    pub strict: bool,
    pub dry_run: bool,
    rules: Box<[Rule]>,
    /// `Some` when `defaultAction` is `deny`.
    default_deny: Option<Denier>,
    plaintext: Denier,
    base: Instant,
    next_log_ns: AtomicU64,
}

impl Authorizer {
    /// Compiles `policy` for a service in `namespace` of `trust_domain`: service names
    /// and `ns/service` entries become the SPIFFE IDs they stand for.
    pub fn compile(
        policy: &AuthorizationPolicy,
        trust_domain: &str,
        namespace: &str,
        counters: &AuthzCounters,
    ) -> Self {
        let dry = policy.dry_run;
        let rules = policy
            .rules
            .iter()
            .map(|r| {
                let from = r.peers().map(|peers| Callers {
                    any: peers.contains(&Peer::AnyAuthenticated),
                    ids: peers
                        .iter()
                        .filter_map(|p| p.spiffe_id(trust_domain, namespace))
                        .map(Into::into)
                        .collect(),
                });
                Rule {
                    from,
                    matcher: RequestMatcher::compile(&r.matches.route_match()),
                    // Validated as tokens; one that does not parse could never match.
                    methods: r
                        .matches
                        .methods
                        .iter()
                        .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                        .collect(),
                    deny: (r.action == Action::Deny).then(|| Denier::new(&r.name, dry, counters)),
                }
            })
            .collect();
        Authorizer {
            strict: policy.mtls == MtlsMode::Strict,
            dry_run: dry,
            rules,
            default_deny: (policy.default_action == Action::Deny).then(|| Denier::new(DEFAULT_ACTION, dry, counters)),
            plaintext: Denier::new(MTLS_STRICT, dry, counters),
            base: Instant::now(),
            next_log_ns: AtomicU64::new(0),
        }
    }

    /// Strict mode first (a plaintext caller is refused whatever the rules say), then
    /// the first rule whose `from` and `match` fit, then `defaultAction`. Counts a
    /// denial (or, in dry-run mode, a would-be denial). No allocation.
    pub fn decide(&self, method: &Method, path: &str, headers: &HeaderMap, peer: Option<&str>) -> Verdict<'_> {
        let verdict = if self.strict && peer.is_none() {
            Verdict::Deny(&self.plaintext)
        } else {
            match self.rules.iter().find(|r| r.fits(method, path, headers, peer)) {
                Some(Rule { deny: Some(d), .. }) => Verdict::Deny(d),
                Some(_) => Verdict::Allow,
                None => self.default_deny.as_ref().map_or(Verdict::Allow, Verdict::Deny),
            }
        };
        if let Verdict::Deny(d) = verdict {
            d.count.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    /// Whether a plaintext connection that is not HTTP (opaque TCP, judged as a whole,
    /// not per request) may reach the app: not in strict mode, where it is counted
    /// under `mtls` like a refused plaintext request (and let through in dry run).
    pub fn admit_opaque_plaintext(&self) -> bool {
        if !self.strict {
            return true;
        }
        self.plaintext.count.fetch_add(1, Ordering::Relaxed);
        self.dry_run
    }

    /// Whether a dry-run log line may be written now (at most one a second; the
    /// counters carry the full figure).
    pub fn may_log(&self, now: Instant) -> bool {
        let now_ns = u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        let due = self.next_log_ns.load(Ordering::Relaxed);
        now_ns >= due
            && self
                .next_log_ns
                .compare_exchange(
                    due,
                    now_ns.saturating_add(DRY_RUN_LOG_INTERVAL_NS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ME: &str = "spiffe://outrider.local/ns/shop/svc/frontend";

    fn authorizer(json: &str) -> (Authorizer, AuthzCounters) {
        let policy: AuthorizationPolicy = outrider_policy::parse_document(json.as_bytes()).unwrap();
        let counters = AuthzCounters::default();
        (
            Authorizer::compile(&policy, "outrider.local", "shop", &counters),
            counters,
        )
    }

    fn verdict(a: &Authorizer, method: &str, path: &str, peer: Option<&str>) -> Option<String> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        match a.decide(&method, path, &HeaderMap::new(), peer) {
            Verdict::Allow => None,
            Verdict::Deny(d) => Some(d.name.to_string()),
        }
    }

    #[test]
    fn the_first_rule_that_fits_decides_and_none_fitting_means_the_default_action() {
        let (a, _) = authorizer(
            r#"{"defaultAction": "deny", "rules": [
              {"name": "no-admin", "match": {"pathPrefix": "/api/admin"}, "action": "deny"},
              {"name": "reads", "match": {"pathPrefix": "/api", "methods": ["GET", "HEAD"]}, "action": "allow"},
              {"name": "late-allow", "match": {"pathPrefix": "/api/admin"}, "action": "allow"}]}"#,
        );
        assert_eq!(verdict(&a, "GET", "/api/admin/x", None).as_deref(), Some("no-admin"));
        assert_eq!(verdict(&a, "GET", "/api/items", None), None);
        assert_eq!(verdict(&a, "HEAD", "/api/items", None), None);
        assert_eq!(verdict(&a, "POST", "/api/items", None).as_deref(), Some(DEFAULT_ACTION));
        assert_eq!(verdict(&a, "GET", "/web", None).as_deref(), Some(DEFAULT_ACTION));
    }

    #[test]
    fn without_rules_the_default_action_allows_unless_it_says_deny() {
        let (allow, _) = authorizer("{}");
        assert_eq!(verdict(&allow, "DELETE", "/", None), None);
        let (deny, _) = authorizer(r#"{"defaultAction": "deny"}"#);
        assert_eq!(verdict(&deny, "GET", "/", Some(ME)).as_deref(), Some(DEFAULT_ACTION));
    }

    #[test]
    fn each_from_form_fits_its_callers_and_never_a_plaintext_one() {
        let (a, _) = authorizer(
            r#"{"defaultAction": "deny", "rules": [
              {"name": "same-ns", "from": ["frontend"], "match": {"pathPrefix": "/a"}, "action": "allow"},
              {"name": "other-ns", "from": ["ops/admin"], "match": {"pathPrefix": "/b"}, "action": "allow"},
              {"name": "exact", "from": ["spiffe://partner.example/ns/x/svc/y"], "match": {"pathPrefix": "/c"}, "action": "allow"},
              {"name": "any", "from": ["*"], "match": {"pathPrefix": "/d"}, "action": "allow"},
              {"name": "anyone", "match": {"pathPrefix": "/e"}, "action": "allow"}]}"#,
        );
        let admin = "spiffe://outrider.local/ns/ops/svc/admin";
        let partner = "spiffe://partner.example/ns/x/svc/y";
        assert_eq!(verdict(&a, "GET", "/a", Some(ME)), None);
        assert!(
            verdict(&a, "GET", "/a", Some(admin)).is_some(),
            "frontend means this namespace's"
        );
        assert!(
            verdict(&a, "GET", "/a", Some("spiffe://outrider.local/ns/other/svc/frontend")).is_some(),
            "a service of the same name in another namespace is someone else"
        );
        assert_eq!(verdict(&a, "GET", "/b", Some(admin)), None);
        assert_eq!(verdict(&a, "GET", "/c", Some(partner)), None);
        assert!(verdict(&a, "GET", "/c", Some(ME)).is_some());
        assert_eq!(verdict(&a, "GET", "/d", Some(partner)), None);
        for path in ["/a", "/b", "/c", "/d"] {
            assert!(
                verdict(&a, "GET", path, None).is_some(),
                "{path}: plaintext fits no from"
            );
        }
        assert_eq!(
            verdict(&a, "GET", "/e", None),
            None,
            "no from: anyone, plaintext included"
        );
    }

    #[test]
    fn methods_are_matched_exactly() {
        let (a, _) = authorizer(
            r#"{"defaultAction": "deny", "rules": [
              {"name": "reads", "match": {"methods": ["GET"]}, "action": "allow"}]}"#,
        );
        assert_eq!(verdict(&a, "GET", "/x", None), None);
        assert!(verdict(&a, "PUT", "/x", None).is_some());
        assert!(verdict(&a, "PURGE", "/x", None).is_some());
    }

    #[test]
    fn opaque_plaintext_is_closed_in_strict_mode_counted_and_let_through_in_a_dry_run() {
        let refused = |c: &AuthzCounters| {
            c.values()
                .iter()
                .filter(|v| v.1 == MTLS_STRICT)
                .map(|v| v.2)
                .sum::<u64>()
        };
        let (a, counters) = authorizer(r#"{"mtls": "permissive"}"#);
        assert!(a.admit_opaque_plaintext());
        assert_eq!(refused(&counters), 0);
        let (a, counters) = authorizer(r#"{"mtls": "strict"}"#);
        assert!(!a.admit_opaque_plaintext());
        assert_eq!(refused(&counters), 1);
        let (a, _) = authorizer(r#"{"mtls": "strict", "dryRun": true}"#);
        assert!(a.admit_opaque_plaintext());
    }

    #[test]
    fn strict_mode_refuses_plaintext_callers_before_any_rule() {
        let (a, _) = authorizer(r#"{"mtls": "strict", "rules": [{"name": "all", "action": "allow"}]}"#);
        assert_eq!(verdict(&a, "GET", "/", None).as_deref(), Some(MTLS_STRICT));
        assert_eq!(verdict(&a, "GET", "/", Some(ME)), None);
    }

    #[test]
    fn denials_are_counted_per_rule_and_dry_run_counts_apart() {
        let (a, counters) = authorizer(
            r#"{"defaultAction": "deny", "rules": [
              {"name": "no-post", "match": {"methods": ["POST"]}, "action": "deny"}]}"#,
        );
        verdict(&a, "POST", "/", None);
        verdict(&a, "GET", "/", None);
        verdict(&a, "GET", "/", None);
        let dry = Authorizer::compile(
            &outrider_policy::parse_document(br#"{"defaultAction": "deny", "dryRun": true}"#).unwrap(),
            "outrider.local",
            "shop",
            &counters,
        );
        assert!(dry.dry_run);
        verdict(&dry, "GET", "/", None);
        let values = counters.values();
        let count = |dry: bool, rule: &str| {
            values
                .iter()
                .find(|(d, r, _)| *d == dry && r == rule)
                .map(|(_, _, c)| *c)
        };
        assert_eq!(count(false, "no-post"), Some(1));
        assert_eq!(count(false, DEFAULT_ACTION), Some(2));
        assert_eq!(count(true, DEFAULT_ACTION), Some(1));
        // A recompiled policy counts on from where the last one stopped.
        let again = Authorizer::compile(
            &outrider_policy::parse_document(br#"{"defaultAction": "deny"}"#).unwrap(),
            "outrider.local",
            "shop",
            &counters,
        );
        verdict(&again, "GET", "/", None);
        assert_eq!(counters.counter(DEFAULT_ACTION, false).load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_dry_run_log_speaks_at_most_once_a_second() {
        let (a, _) = authorizer(r#"{"dryRun": true}"#);
        let t0 = Instant::now();
        assert!(a.may_log(t0));
        assert!(!a.may_log(t0 + Duration::from_millis(10)));
        assert!(a.may_log(t0 + Duration::from_millis(1100)));
    }
}
