//! Outrider's policy model: the documents of `docs/reference.md` (Policy documents), their validation and the
//! small value types they use (durations, names).
//!
//! Plain Rust with no I/O, shared by the control plane (validates writes), the sidecar
//! (validates snapshots before applying them) and the CLI (validates before sending).

mod authorization;
pub mod canary;
mod duration;
mod error;
mod json;
pub mod limits;
mod logging;
mod names;
mod ratelimit;
mod routing;

pub use authorization::{
    spiffe_id, validate_trust_domain, Action, AuthorizationPolicy, AuthorizationRule, AuthzMatch, MtlsMode, Peer,
    MAX_AUTHZ_RULES,
};
pub use duration::Duration;
pub use error::{FieldError, PolicyError};
pub use logging::{
    mask_document_credentials, mask_url_credentials, restore_masked_credentials, AccessLog, AppLog, Compression,
    LogFormat, LogParser, LoggingPolicy, Sink, SinkFormat, SinkType, BATCH_BYTES_RANGE,
};
pub use names::{validate_config_file_name, validate_config_name, validate_service_name, MAX_CONFIG_NAME_LEN};
pub use ratelimit::{RateLimitKey, RateLimitPolicy, RateLimitRule, RouteMatch, Scope};
pub use routing::{Backend, RetryOn, RetryPolicy, Route, RoutingPolicy};

use serde::de::DeserializeOwned;

/// The kinds of policy a service can have, at most one document of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    Routing,
    RateLimit,
    Logging,
    Authorization,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Routing,
        PolicyKind::RateLimit,
        PolicyKind::Logging,
        PolicyKind::Authorization,
    ];

    /// The name used in REST paths and in the store: `routing`, `rate-limit`, `logging`,
    /// `authorization`.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Routing => "routing",
            PolicyKind::RateLimit => "rate-limit",
            PolicyKind::Logging => "logging",
            PolicyKind::Authorization => "authorization",
        }
    }

    /// The envelope name used by the CLI: `RoutingPolicy`, …
    pub fn envelope_name(self) -> &'static str {
        match self {
            PolicyKind::Routing => "RoutingPolicy",
            PolicyKind::RateLimit => "RateLimitPolicy",
            PolicyKind::Logging => "LoggingPolicy",
            PolicyKind::Authorization => "AuthorizationPolicy",
        }
    }

    pub fn from_envelope_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.envelope_name() == s)
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| PolicyError::UnknownKind(s.to_owned()))
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every policy document: semantic checks beyond what the types say.
pub trait Validate {
    /// Pushes one [`FieldError`] per bad field; `Ok` when there are none.
    fn validate(&self, errors: &mut Vec<FieldError>);
}

/// Parses and validates one document of type `T` from JSON bytes.
///
/// Malformed JSON is [`PolicyError::Malformed`]; a key written twice, a wrong type or unknown field is
/// [`PolicyError::Invalid`] naming the field's path; then every semantic problem is
/// reported at once.
pub fn parse_document<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, PolicyError> {
    if let Some(path) = json::duplicate_key(bytes).map_err(|e| PolicyError::Malformed(e.to_string()))? {
        return Err(PolicyError::Invalid(vec![FieldError::new(
            path,
            "key appears more than once",
        )]));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| PolicyError::Malformed(e.to_string()))?;
    from_value(value)
}

/// Like [`parse_document`] for an already-parsed JSON value (YAML input in the CLI, say).
pub fn from_value<T: DeserializeOwned + Validate>(value: serde_json::Value) -> Result<T, PolicyError> {
    let doc: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        PolicyError::Invalid(vec![FieldError::new(field, e.into_inner().to_string())])
    })?;
    let mut errors = Vec::new();
    doc.validate(&mut errors);
    if errors.is_empty() {
        Ok(doc)
    } else {
        Err(PolicyError::Invalid(errors))
    }
}

/// A validated policy of any kind, kept with its canonical JSON form.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    Routing(RoutingPolicy),
    RateLimit(RateLimitPolicy),
    Logging(LoggingPolicy),
    Authorization(AuthorizationPolicy),
}

impl Policy {
    pub fn parse(kind: PolicyKind, bytes: &[u8]) -> Result<Self, PolicyError> {
        Ok(match kind {
            PolicyKind::Routing => Policy::Routing(parse_document(bytes)?),
            PolicyKind::RateLimit => Policy::RateLimit(parse_document(bytes)?),
            PolicyKind::Logging => Policy::Logging(parse_document(bytes)?),
            PolicyKind::Authorization => Policy::Authorization(parse_document(bytes)?),
        })
    }

    pub fn from_value(kind: PolicyKind, value: serde_json::Value) -> Result<Self, PolicyError> {
        Ok(match kind {
            PolicyKind::Routing => Policy::Routing(from_value(value)?),
            PolicyKind::RateLimit => Policy::RateLimit(from_value(value)?),
            PolicyKind::Logging => Policy::Logging(from_value(value)?),
            PolicyKind::Authorization => Policy::Authorization(from_value(value)?),
        })
    }

    pub fn kind(&self) -> PolicyKind {
        match self {
            Policy::Routing(_) => PolicyKind::Routing,
            Policy::RateLimit(_) => PolicyKind::RateLimit,
            Policy::Logging(_) => PolicyKind::Logging,
            Policy::Authorization(_) => PolicyKind::Authorization,
        }
    }

    /// The canonical JSON of the document (defaults filled in), as stored and streamed.
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            Policy::Routing(p) => serde_json::to_value(p),
            Policy::RateLimit(p) => serde_json::to_value(p),
            Policy::Logging(p) => serde_json::to_value(p),
            Policy::Authorization(p) => serde_json::to_value(p),
        };
        v.expect("policy documents always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for k in PolicyKind::ALL {
            assert_eq!(k.as_str().parse::<PolicyKind>().unwrap(), k);
            assert_eq!(PolicyKind::from_envelope_name(k.envelope_name()), Some(k));
        }
        assert!("ratelimit".parse::<PolicyKind>().is_err());
    }

    #[test]
    fn malformed_json_is_not_a_field_error() {
        let err = Policy::parse(PolicyKind::RateLimit, b"{\"rules\": [").unwrap_err();
        assert!(matches!(err, PolicyError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn wrong_type_names_the_field_path() {
        let err = Policy::parse(
            PolicyKind::RateLimit,
            br#"{"rules":[{"name":"a","requestsPerSecond":"fast","burst":1}]}"#,
        )
        .unwrap_err();
        let PolicyError::Invalid(errs) = err else {
            panic!("{err:?}")
        };
        assert_eq!(errs[0].field, "rules[0].requestsPerSecond");
    }
}
