use crate::names::{check_item_name, valid_header_name};
use crate::{FieldError, Validate};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// RateLimitPolicy (`docs/reference.md`): token buckets on traffic *into* a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPolicy {
    pub rules: Vec<RateLimitRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitRule {
    pub name: String,
    #[serde(default, rename = "match", skip_serializing_if = "RouteMatch::is_empty")]
    pub matches: RouteMatch,
    #[serde(default)]
    pub key: RateLimitKey,
    pub requests_per_second: f64,
    /// Bucket size; defaults to one second's worth of requests.
    #[serde(default)]
    pub burst: Option<f64>,
    #[serde(default)]
    pub scope: Scope,
}

impl RateLimitRule {
    pub fn burst(&self) -> f64 {
        self.burst.unwrap_or(self.requests_per_second.max(1.0))
    }
}

/// A request match shared by rate-limit rules and routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Exact header values; names are matched case-insensitively.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl RouteMatch {
    pub fn is_empty(&self) -> bool {
        self.path_prefix.is_none() && self.headers.is_empty()
    }

    pub(crate) fn validate(&self, at: &str, errors: &mut Vec<FieldError>) {
        if let Some(p) = &self.path_prefix {
            if !p.starts_with('/') {
                errors.push(FieldError::new(format!("{at}.pathPrefix"), "must start with '/'"));
            }
        }
        for name in self.headers.keys() {
            if !valid_header_name(&name.to_ascii_lowercase()) {
                errors.push(FieldError::new(
                    format!("{at}.headers.{name}"),
                    "not a valid header name",
                ));
            }
        }
    }
}

/// What a bucket is keyed by: `none`, `client-ip`, `peer-identity` or `header:<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum RateLimitKey {
    #[default]
    None,
    ClientIp,
    /// The caller's SPIFFE ID from mTLS; plaintext callers share one bucket.
    PeerIdentity,
    /// Lower-cased header name.
    Header(String),
}

impl std::str::FromStr for RateLimitKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "client-ip" => Ok(Self::ClientIp),
            "peer-identity" => Ok(Self::PeerIdentity),
            _ => match s.strip_prefix("header:") {
                Some(h) if valid_header_name(&h.to_ascii_lowercase()) => Ok(Self::Header(h.to_ascii_lowercase())),
                _ => Err(format!(
                    "unknown key {s:?}: expected \"none\", \"client-ip\", \"peer-identity\" or \"header:<name>\""
                )),
            },
        }
    }
}

impl std::fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::ClientIp => f.write_str("client-ip"),
            Self::PeerIdentity => f.write_str("peer-identity"),
            Self::Header(h) => write!(f, "header:{h}"),
        }
    }
}

impl Serialize for RateLimitKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RateLimitKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Each sidecar allows the full rate.
    #[default]
    Instance,
    /// The rate is for the whole service, split across its healthy instances.
    Service,
}

/// Guards against values that would make a bucket meaningless or overflow arithmetic.
const MAX_RATE: f64 = 1e9;
/// One request an hour: a slower rate would tell clients to retry after days
/// (`Retry-After`), which no client honours.
const MIN_RATE: f64 = 1.0 / 3600.0;

impl Validate for RateLimitPolicy {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        let mut names = HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            check_item_name(&r.name, format!("{at}.name"), "rule", &mut names, errors);
            if !(r.requests_per_second.is_finite() && (MIN_RATE..=MAX_RATE).contains(&r.requests_per_second)) {
                errors.push(FieldError::new(
                    format!("{at}.requestsPerSecond"),
                    format!("must be a number from {MIN_RATE:.6} (one request an hour) to {MAX_RATE}"),
                ));
            }
            if let Some(b) = r.burst {
                if !(b.is_finite() && (1.0..=MAX_RATE).contains(&b)) {
                    errors.push(FieldError::new(
                        format!("{at}.burst"),
                        format!("must be at least 1 and at most {MAX_RATE}"),
                    ));
                }
            }
            r.matches.validate(&format!("{at}.match"), errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{parse_document, PolicyError, RateLimitKey, RateLimitPolicy};

    fn errors(json: &str) -> Vec<String> {
        match parse_document::<RateLimitPolicy>(json.as_bytes()) {
            Err(PolicyError::Invalid(e)) => e.into_iter().map(|e| e.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn accepts_the_design_example() {
        let p: RateLimitPolicy = parse_document(
            br#"{"rules": [
              {"name": "per-client", "match": {"pathPrefix": "/api"}, "key": "header:X-Client-Id",
               "requestsPerSecond": 10, "burst": 20, "scope": "instance"},
              {"name": "all", "requestsPerSecond": 500, "burst": 500, "scope": "service"}]}"#,
        )
        .unwrap();
        assert_eq!(p.rules[0].key, RateLimitKey::Header("x-client-id".into()));
        assert_eq!(p.rules[1].scope, crate::Scope::Service);
    }

    #[test]
    fn negative_rate_and_bad_burst_are_named() {
        assert_eq!(
            errors(r#"{"rules":[{"name":"a","requestsPerSecond":-1,"burst":0}]}"#),
            ["rules[0].requestsPerSecond", "rules[0].burst"]
        );
        assert_eq!(
            errors(r#"{"rules":[{"name":"a","requestsPerSecond":1e-300}]}"#),
            ["rules[0].requestsPerSecond"]
        );
    }

    #[test]
    fn peer_identity_is_a_key_and_round_trips() {
        let p: RateLimitPolicy =
            parse_document(br#"{"rules":[{"name":"a","requestsPerSecond":1,"key":"peer-identity"}]}"#).unwrap();
        assert_eq!(p.rules[0].key, RateLimitKey::PeerIdentity);
        assert_eq!(serde_json::to_value(&p).unwrap()["rules"][0]["key"], "peer-identity");
    }

    #[test]
    fn unknown_key_form_is_named() {
        assert_eq!(
            errors(r#"{"rules":[{"name":"a","requestsPerSecond":1,"key":"cookie:x"}]}"#),
            ["rules[0].key"]
        );
    }

    #[test]
    fn unknown_fields_and_duplicate_names_are_refused() {
        assert_eq!(
            errors(r#"{"rules":[{"name":"a","requestsPerSecond":1,"rps":3}]}"#),
            ["rules[0].rps"]
        );
        assert_eq!(
            errors(r#"{"rules":[{"name":"a","requestsPerSecond":1},{"name":"a","requestsPerSecond":1}]}"#),
            ["rules[1].name"]
        );
    }

    #[test]
    fn a_rate_reads_back_as_the_float_that_was_written() {
        let rate = 511_447_674.974_668_44_f64;
        let json = format!(r#"{{"rules":[{{"name":"a","requestsPerSecond":{rate}}}]}}"#);
        let p: RateLimitPolicy = parse_document(json.as_bytes()).unwrap();
        assert_eq!(p.rules[0].requests_per_second.to_bits(), rate.to_bits());
    }

    #[test]
    fn burst_defaults_to_one_second_of_rate() {
        let p: RateLimitPolicy = parse_document(br#"{"rules":[{"name":"a","requestsPerSecond":0.5}]}"#).unwrap();
        assert_eq!(p.rules[0].burst(), 1.0);
    }
}
