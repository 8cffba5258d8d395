//! AuthorizationPolicy (`docs/reference.md`): who may call a service, enforced by the
//! service's own sidecars on inbound traffic, and whether plaintext callers are let in.

use crate::names::{check_item_name, valid_header_name};
use crate::{validate_service_name, FieldError, RouteMatch, Validate};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// Most rules one document may have: every denied or allowed request walks them in
/// order, so a list this long is already a mistake rather than a policy.
pub const MAX_AUTHZ_RULES: usize = 256;
/// Most `from` entries in one rule.
pub const MAX_FROM_ENTRIES: usize = 64;
/// Most `methods` in one rule (there are nine standard ones).
pub const MAX_METHODS: usize = 16;
/// Longest method name (RFC 9110 sets none; registered ones are under 20 bytes).
const MAX_METHOD_LEN: usize = 32;
/// Longest SPIFFE ID (the SPIFFE specification's limit for the URI).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Most exact-value headers in one rule's match.
const MAX_MATCH_HEADERS: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    #[serde(default)]
    pub mtls: MtlsMode,
    #[serde(default)]
    pub default_action: Action,
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
    /// Only log and count what would be denied; let everything through.
    #[serde(default)]
    pub dry_run: bool,
}

/// Whether the inbound port also takes plaintext callers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MtlsMode {
    #[default]
    Permissive,
    Strict,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    pub name: String,
    /// Callers the rule is for (see [`Peer`]); `None` means anyone, plaintext included.
    /// Kept as written and parsed by [`AuthorizationRule::peers`], so that validation can
    /// name every bad entry rather than the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<String>>,
    #[serde(default, rename = "match", skip_serializing_if = "AuthzMatch::is_empty")]
    pub matches: AuthzMatch,
    pub action: Action,
}

impl AuthorizationRule {
    /// The parsed `from` entries (`None`: anyone). Entries that do not parse are left
    /// out; a validated document has none.
    pub fn peers(&self) -> Option<Vec<Peer>> {
        self.from
            .as_ref()
            .map(|from| from.iter().filter_map(|s| Peer::parse(s).ok()).collect())
    }
}

/// The routing match (`pathPrefix`, `headers`) plus `methods`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Exact, case-sensitive method names (`GET`); empty means any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

impl AuthzMatch {
    pub fn is_empty(&self) -> bool {
        self.path_prefix.is_none() && self.headers.is_empty() && self.methods.is_empty()
    }

    /// The path and header part, as routes and rate-limit rules write it.
    pub fn route_match(&self) -> RouteMatch {
        RouteMatch {
            path_prefix: self.path_prefix.clone(),
            headers: self.headers.clone(),
        }
    }
}

/// One `from` entry: who a rule is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// `frontend`: that service in the policy's own namespace.
    Service(String),
    /// `ops/admin`: a service in another namespace.
    NsService { namespace: String, service: String },
    /// `spiffe://outrider.local/ns/ops/svc/admin`: exactly that identity.
    Spiffe(String),
    /// `*`: any authenticated peer (never a plaintext caller).
    AnyAuthenticated,
}

impl Peer {
    pub fn parse(s: &str) -> Result<Peer, String> {
        if s == "*" {
            return Ok(Peer::AnyAuthenticated);
        }
        if s.starts_with("spiffe://") {
            return check_spiffe_id(s).map(|()| Peer::Spiffe(s.to_owned()));
        }
        match s.split_once('/') {
            Some((namespace, service)) => {
                validate_service_name(namespace).map_err(|e| format!("namespace: {e}"))?;
                validate_service_name(service)?;
                Ok(Peer::NsService {
                    namespace: namespace.to_owned(),
                    service: service.to_owned(),
                })
            }
            None => validate_service_name(s)
                .map(|()| Peer::Service(s.to_owned()))
                .map_err(|e| format!("{e}; or write ns/service, a SPIFFE ID or \"*\"")),
        }
    }

    /// The SPIFFE ID this entry stands for, for a policy of a service in `namespace`
    /// of `trust_domain`; `None` for `*`.
    pub fn spiffe_id(&self, trust_domain: &str, namespace: &str) -> Option<String> {
        match self {
            Peer::Service(service) => Some(spiffe_id(trust_domain, namespace, service)),
            Peer::NsService { namespace, service } => Some(spiffe_id(trust_domain, namespace, service)),
            Peer::Spiffe(id) => Some(id.clone()),
            Peer::AnyAuthenticated => None,
        }
    }
}

/// The identity of a service's workloads: `spiffe://<trust-domain>/ns/<namespace>/svc/<service>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/svc/{service}")
}

/// A trust domain as SPIFFE allows it: lowercase letters, digits, `.`, `-`, `_`.
pub fn validate_trust_domain(td: &str) -> Result<(), String> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid trust domain {td:?}: use lowercase letters, digits, '.', '-' and '_'"
        ))
    }
}

/// A SPIFFE ID (`spiffe://<trust domain>/<path>`): a valid trust domain and a path of
/// non-empty segments of letters, digits, `.`, `-`, `_` (no `.`/`..` segments, no
/// query, fragment or port), as the SPIFFE ID specification has it.
fn check_spiffe_id(s: &str) -> Result<(), String> {
    if s.len() > MAX_SPIFFE_ID_LEN {
        return Err(format!("a SPIFFE ID is at most {MAX_SPIFFE_ID_LEN} bytes long"));
    }
    let rest = s.strip_prefix("spiffe://").unwrap_or(s);
    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
    validate_trust_domain(td)?;
    let segment_ok = |seg: &str| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    if path.is_empty() || !path.split('/').all(segment_ok) {
        return Err(format!(
            "invalid SPIFFE ID {s:?}: expected spiffe://<trust-domain>/ns/<namespace>/svc/<service>"
        ));
    }
    Ok(())
}

/// Method names are RFC 9110 tokens; matching is case-sensitive, so a lowercase
/// name (which no client sends for a standard method) is refused rather than never matching.
fn check_method(m: &str) -> Result<(), String> {
    if m.is_empty() || m.len() > MAX_METHOD_LEN {
        return Err(format!("a method name is 1-{MAX_METHOD_LEN} bytes long"));
    }
    if m.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "method names are case-sensitive: write {:?}",
            m.to_ascii_uppercase()
        ));
    }
    if !valid_header_name(&m.to_ascii_lowercase()) {
        return Err(format!("{m:?} is not a method name"));
    }
    Ok(())
}

impl Validate for AuthorizationPolicy {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        if self.rules.len() > MAX_AUTHZ_RULES {
            errors.push(FieldError::new("rules", format!("at most {MAX_AUTHZ_RULES} rules")));
        }
        let mut names = HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            check_item_name(&r.name, format!("{at}.name"), "rule", &mut names, errors);
            // `defaultAction` is what a denial by no rule names in its `rule` field.
            if r.name == "defaultAction" {
                errors.push(FieldError::new(
                    format!("{at}.name"),
                    "\"defaultAction\" names denials by no rule; choose another name",
                ));
            }
            if let Some(from) = &r.from {
                if from.is_empty() {
                    errors.push(FieldError::new(
                        format!("{at}.from"),
                        "must name at least one caller; leave it out to mean anyone",
                    ));
                }
                if from.len() > MAX_FROM_ENTRIES {
                    errors.push(FieldError::new(
                        format!("{at}.from"),
                        format!("at most {MAX_FROM_ENTRIES} entries"),
                    ));
                }
                let mut seen = HashSet::new();
                for (j, entry) in from.iter().enumerate() {
                    match Peer::parse(entry) {
                        Err(e) => errors.push(FieldError::new(format!("{at}.from[{j}]"), e)),
                        Ok(_) if !seen.insert(entry.as_str()) => {
                            errors.push(FieldError::new(format!("{at}.from[{j}]"), "listed twice"))
                        }
                        Ok(_) => {}
                    }
                }
            }
            let m = &r.matches;
            m.route_match().validate(&format!("{at}.match"), errors);
            if m.headers.len() > MAX_MATCH_HEADERS {
                errors.push(FieldError::new(
                    format!("{at}.match.headers"),
                    format!("at most {MAX_MATCH_HEADERS} headers"),
                ));
            }
            if m.methods.len() > MAX_METHODS {
                errors.push(FieldError::new(
                    format!("{at}.match.methods"),
                    format!("at most {MAX_METHODS} methods"),
                ));
            }
            let mut seen = HashSet::new();
            for (j, method) in m.methods.iter().enumerate() {
                if let Err(e) = check_method(method) {
                    errors.push(FieldError::new(format!("{at}.match.methods[{j}]"), e));
                } else if !seen.insert(method.as_str()) {
                    errors.push(FieldError::new(format!("{at}.match.methods[{j}]"), "listed twice"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_document, Policy, PolicyError, PolicyKind};

    const EXAMPLE: &str = r#"{"mtls": "strict",
     "defaultAction": "deny",
     "rules": [
       {"name": "shop-reads", "from": ["frontend", "spiffe://outrider.local/ns/ops/svc/admin"],
        "match": {"pathPrefix": "/api", "methods": ["GET", "HEAD"]}, "action": "allow"}],
     "dryRun": false}"#;

    fn fields(json: &str) -> Vec<String> {
        match parse_document::<AuthorizationPolicy>(json.as_bytes()) {
            Err(PolicyError::Invalid(e)) => e.into_iter().map(|e| e.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn accepts_the_reference_example_and_parses_every_from_form() {
        let p: AuthorizationPolicy = parse_document(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            (p.mtls, p.default_action, p.dry_run),
            (MtlsMode::Strict, Action::Deny, false)
        );
        assert_eq!(
            p.rules[0].peers().unwrap(),
            [
                Peer::Service("frontend".into()),
                Peer::Spiffe("spiffe://outrider.local/ns/ops/svc/admin".into())
            ]
        );
        assert_eq!(
            Peer::parse("ops/admin"),
            Ok(Peer::NsService {
                namespace: "ops".into(),
                service: "admin".into()
            })
        );
        assert_eq!(Peer::parse("*"), Ok(Peer::AnyAuthenticated));
    }

    #[test]
    fn an_empty_document_is_permissive_and_allows_everything() {
        let p: AuthorizationPolicy = parse_document(b"{}").unwrap();
        assert_eq!(
            (p.mtls, p.default_action, p.dry_run),
            (MtlsMode::Permissive, Action::Allow, false)
        );
        assert!(p.rules.is_empty());
    }

    #[test]
    fn the_canonical_form_round_trips() {
        let policy = Policy::parse(PolicyKind::Authorization, EXAMPLE.as_bytes()).unwrap();
        let json = policy.to_json();
        assert_eq!(json["defaultAction"], "deny");
        assert_eq!(json["rules"][0]["match"]["methods"][1], "HEAD");
        let again = Policy::from_value(PolicyKind::Authorization, json.clone()).unwrap();
        assert_eq!(again, policy);
        assert_eq!(again.to_json(), json);
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let doc = r#"{"rules": [
          {"name": "a", "from": ["Frontend", "ops/", "spiffe://Outrider/ns/x", "spiffe://td", "*", "*"],
           "match": {"pathPrefix": "api", "headers": {"bad header": "x"}, "methods": ["get", "G E T", "PUT", "PUT"]},
           "action": "allow"},
          {"name": "a", "from": [], "action": "deny"},
          {"name": "defaultAction", "action": "deny"}]}"#;
        assert_eq!(
            fields(doc),
            [
                "rules[0].from[0]",
                "rules[0].from[1]",
                "rules[0].from[2]",
                "rules[0].from[3]",
                "rules[0].from[5]",
                "rules[0].match.pathPrefix",
                "rules[0].match.headers.bad header",
                "rules[0].match.methods[0]",
                "rules[0].match.methods[1]",
                "rules[0].match.methods[3]",
                "rules[1].name",
                "rules[1].from",
                "rules[2].name",
            ]
        );
    }

    #[test]
    fn unknown_modes_actions_and_fields_are_named() {
        assert_eq!(fields(r#"{"mtls": "required"}"#), ["mtls"]);
        assert_eq!(fields(r#"{"defaultAction": "reject"}"#), ["defaultAction"]);
        assert_eq!(
            fields(r#"{"rules": [{"name": "a", "action": "allow", "to": []}]}"#),
            ["rules[0].to"]
        );
        assert_eq!(fields(r#"{"rules": [{"name": "a"}]}"#), ["rules[0]"]);
    }

    #[test]
    fn sizes_are_bounded() {
        let rule = |i: usize| format!(r#"{{"name": "r{i}", "action": "allow"}}"#);
        let many: Vec<_> = (0..=MAX_AUTHZ_RULES).map(rule).collect();
        assert_eq!(fields(&format!(r#"{{"rules": [{}]}}"#, many.join(","))), ["rules"]);
        let from: Vec<_> = (0..=MAX_FROM_ENTRIES).map(|i| format!("\"s{i}\"")).collect();
        assert_eq!(
            fields(&format!(
                r#"{{"rules": [{{"name": "a", "from": [{}], "action": "allow"}}]}}"#,
                from.join(",")
            )),
            ["rules[0].from"]
        );
        let long = format!("spiffe://td/{}", "p".repeat(MAX_SPIFFE_ID_LEN));
        assert_eq!(
            fields(&format!(
                r#"{{"rules": [{{"name": "a", "from": ["{long}"], "action": "allow"}}]}}"#
            )),
            ["rules[0].from[0]"]
        );
    }

    #[test]
    fn from_entries_stand_for_spiffe_ids_in_the_policys_namespace() {
        let td = "outrider.local";
        assert_eq!(
            Peer::Service("web".into()).spiffe_id(td, "shop"),
            Some("spiffe://outrider.local/ns/shop/svc/web".into())
        );
        assert_eq!(
            Peer::parse("ops/admin").unwrap().spiffe_id(td, "shop"),
            Some("spiffe://outrider.local/ns/ops/svc/admin".into())
        );
        assert_eq!(Peer::AnyAuthenticated.spiffe_id(td, "shop"), None);
        assert!(validate_trust_domain("example.org").is_ok());
        assert!(validate_trust_domain("Example.org").is_err());
    }
}
