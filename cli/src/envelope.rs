//! `apply` input: envelopes (`docs/reference.md`) in YAML (documents separated by `---`) or
//! JSON (one object, an array, or several objects in a row), parsed and validated
//! with `outrider-policy` so that a bad file sends nothing.

use crate::error::{join_field_errors, one_line};
use outrider_policy::{FieldError, Policy, PolicyError, PolicyKind};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Largest config document the control plane accepts (`docs/reference.md`).
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Largest secret value the control plane accepts (`docs/reference.md`).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

const CONFIG_KIND: &str = "ConfigDocument";
const SECRET_KIND: &str = "Secret";
const KINDS: &str = "RoutingPolicy, RateLimitPolicy, LoggingPolicy, AuthorizationPolicy, ConfigDocument or Secret";

/// Where a Secret envelope's value comes from. Its `Debug` never shows the value.
#[derive(Clone, PartialEq)]
pub enum SecretSource {
    /// `value`: inline.
    Value(String),
    /// `valueFrom: {file}`: read when applied; a relative path is taken from the
    /// applied file's directory (the working directory for stdin).
    File(std::path::PathBuf),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Value(v) => write!(f, "Value(<{} bytes>)", v.len()),
            SecretSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// One validated envelope, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    Policy {
        service: String,
        policy: Policy,
    },
    Config {
        service: String,
        name: String,
        content_type: String,
        content: String,
    },
    Secret {
        service: String,
        name: String,
        source: SecretSource,
    },
}

impl Document {
    pub fn service(&self) -> &str {
        match self {
            Document::Policy { service, .. } | Document::Config { service, .. } | Document::Secret { service, .. } => {
                service
            }
        }
    }

    /// `RateLimitPolicy web`, `ConfigDocument web/app.yaml`: how messages name it.
    pub fn describe(&self) -> String {
        match self {
            Document::Policy { service, policy } => format!("{} {service}", policy.kind().envelope_name()),
            Document::Config { service, name, .. } => format!("{CONFIG_KIND} {service}/{name}"),
            Document::Secret { service, name, .. } => format!("{SECRET_KIND} {service}/{name}"),
        }
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("{0}")]
    Syntax(String),
    #[error("no documents found")]
    Empty,
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<DocumentError>),
}

/// What is wrong with the `index`-th document (from 1) of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentError {
    pub index: usize,
    /// `RateLimitPolicy web`, when the envelope said that much.
    pub what: Option<String>,
    pub errors: Vec<FieldError>,
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "document {}", self.index)?;
        if let Some(what) = &self.what {
            write!(f, " ({what})")?;
        }
        write!(f, " is invalid: {}", join_field_errors(&self.errors))
    }
}

/// Parses every document of `text` and validates all of them; any problem in any
/// document fails the whole file, listing each.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, EnvelopeError> {
    let values = read_values(text)?;
    if values.is_empty() {
        return Err(EnvelopeError::Empty);
    }
    let mut docs = Vec::with_capacity(values.len());
    let mut problems = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        match parse_envelope(value) {
            Ok(doc) => {
                if let Some(first) = docs.iter().position(|(_, d): &(usize, Document)| same_target(d, &doc)) {
                    problems.push(DocumentError {
                        index: i + 1,
                        what: Some(doc.describe()),
                        errors: vec![FieldError::new(
                            "",
                            format!("document {} already sets this; one document per target", docs[first].0),
                        )],
                    });
                } else {
                    docs.push((i + 1, doc));
                }
            }
            Err((what, errors)) => problems.push(DocumentError {
                index: i + 1,
                what,
                errors,
            }),
        }
    }
    if problems.is_empty() {
        Ok(docs.into_iter().map(|(_, d)| d).collect())
    } else {
        Err(EnvelopeError::Invalid(problems))
    }
}

fn same_target(a: &Document, b: &Document) -> bool {
    match (a, b) {
        (
            Document::Policy {
                service: s1,
                policy: p1,
            },
            Document::Policy {
                service: s2,
                policy: p2,
            },
        ) => s1 == s2 && p1.kind() == p2.kind(),
        (
            Document::Config {
                service: s1, name: n1, ..
            },
            Document::Config {
                service: s2, name: n2, ..
            },
        ) => s1 == s2 && n1 == n2,
        (
            Document::Secret {
                service: s1, name: n1, ..
            },
            Document::Secret {
                service: s2, name: n2, ..
            },
        ) => s1 == s2 && n1 == n2,
        _ => false,
    }
}

/// The documents of a file as JSON values: JSON when it starts like JSON, YAML
/// otherwise. A top-level array (JSON or YAML) is a list of documents.
pub fn read_values(text: &str) -> Result<Vec<Value>, EnvelopeError> {
    let mut out = Vec::new();
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        for v in serde_json::Deserializer::from_str(trimmed).into_iter::<Value>() {
            let v = v.map_err(|e| EnvelopeError::Syntax(format!("invalid JSON: {e}")))?;
            flatten(v, &mut out);
        }
    } else {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let v =
                Value::deserialize(doc).map_err(|e| EnvelopeError::Syntax(one_line(&format!("invalid YAML: {e}"))))?;
            flatten(v, &mut out);
        }
    }
    Ok(out)
}

fn flatten(v: Value, out: &mut Vec<Value>) {
    match v {
        Value::Null => {} // an empty YAML document, e.g. before a leading `---`
        Value::Array(items) => out.extend(items),
        v => out.push(v),
    }
}

type EnvelopeResult = Result<Document, (Option<String>, Vec<FieldError>)>;

/// One envelope → one [`Document`], or every field error found in it.
pub fn parse_envelope(value: Value) -> EnvelopeResult {
    let Value::Object(mut map) = value else {
        let msg = format!(
            "expected a mapping with kind, service and spec, found {}",
            type_name(&value)
        );
        return Err((None, vec![FieldError::new("", msg)]));
    };
    let mut errors = Vec::new();
    let kind = required_string(&mut map, "kind", &mut errors);
    let service = required_string(&mut map, "service", &mut errors);
    if let Some(s) = &service {
        if let Err(m) = outrider_policy::validate_service_name(s) {
            errors.push(FieldError::new("service", m));
        }
    }
    let what = kind.as_ref().map(|k| match &service {
        Some(s) => format!("{k} {s}"),
        None => k.clone(),
    });
    let doc = match kind.as_deref() {
        None => None,
        Some(CONFIG_KIND) => parse_config(&mut map, &service, &mut errors),
        Some(SECRET_KIND) => parse_secret(&mut map, &service, &mut errors),
        Some(k) => match PolicyKind::from_envelope_name(k) {
            Some(kind) => parse_policy(&mut map, kind, &service, &mut errors),
            None => {
                errors.push(FieldError::new("kind", format!("unknown kind {k:?}: expected {KINDS}")));
                map.clear(); // the other fields mean nothing without a known kind
                None
            }
        },
    };
    let allowed = match kind.as_deref() {
        Some(CONFIG_KIND) => "kind, service, name, contentType, content",
        Some(SECRET_KIND) => "kind, service, name, and value or valueFrom",
        _ => "kind, service, spec",
    };
    for key in map.keys() {
        errors.push(FieldError::new(
            key.clone(),
            format!("unknown field; an envelope has {allowed}"),
        ));
    }
    match doc {
        Some(doc) if errors.is_empty() => Ok(doc),
        _ => Err((what, errors)),
    }
}

fn parse_policy(
    map: &mut Map<String, Value>,
    kind: PolicyKind,
    service: &Option<String>,
    errors: &mut Vec<FieldError>,
) -> Option<Document> {
    let Some(spec) = map.remove("spec") else {
        errors.push(FieldError::new(
            "spec",
            format!("missing: the {} document", kind.envelope_name()),
        ));
        return None;
    };
    match Policy::from_value(kind, spec) {
        Ok(policy) => service.clone().map(|service| Document::Policy { service, policy }),
        Err(PolicyError::Invalid(errs)) => {
            errors.extend(errs.into_iter().map(|e| {
                let field = if e.field.is_empty() {
                    "spec".to_owned()
                } else {
                    format!("spec.{}", e.field)
                };
                FieldError::new(field, e.message)
            }));
            None
        }
        Err(e) => {
            errors.push(FieldError::new("spec", e.to_string()));
            None
        }
    }
}

fn parse_config(
    map: &mut Map<String, Value>,
    service: &Option<String>,
    errors: &mut Vec<FieldError>,
) -> Option<Document> {
    let name = file_name(map, errors);
    let content_type = match map.remove("contentType") {
        None => name.as_deref().map(content_type_for),
        Some(Value::String(ct)) if !ct.trim().is_empty() => Some(ct),
        Some(_) => {
            errors.push(FieldError::new("contentType", "must be a media type such as text/yaml"));
            None
        }
    };
    let content = required_string(map, "content", errors);
    if let Some(c) = &content {
        if c.len() > MAX_CONFIG_BYTES {
            errors.push(FieldError::new(
                "content",
                format!("{} bytes is over the limit of {MAX_CONFIG_BYTES} bytes", c.len()),
            ));
        }
    }
    Some(Document::Config {
        service: service.clone()?,
        name: name?,
        content_type: content_type?,
        content: content?,
    })
}

/// `{kind: Secret, service, name, value}` or `… valueFrom: {file: PATH}`: exactly one
/// of the two. The value is checked for size here; a file's when it is read.
fn parse_secret(
    map: &mut Map<String, Value>,
    service: &Option<String>,
    errors: &mut Vec<FieldError>,
) -> Option<Document> {
    let name = file_name(map, errors);
    let source = match (map.remove("value"), map.remove("valueFrom")) {
        (Some(Value::String(v)), None) => {
            if v.len() > MAX_SECRET_BYTES {
                errors.push(FieldError::new(
                    "value",
                    format!("{} bytes is over the limit of {MAX_SECRET_BYTES} bytes", v.len()),
                ));
            }
            Some(SecretSource::Value(v))
        }
        (Some(_), None) => {
            errors.push(FieldError::new("value", "must be a string"));
            None
        }
        (None, Some(Value::Object(mut from))) => {
            let file = match from.remove("file") {
                Some(Value::String(f)) if !f.is_empty() => Some(SecretSource::File(f.into())),
                _ => {
                    errors.push(FieldError::new("valueFrom.file", "must be the path of a file"));
                    None
                }
            };
            for key in from.keys() {
                errors.push(FieldError::new(
                    format!("valueFrom.{key}"),
                    "unknown field; valueFrom has file",
                ));
            }
            file
        }
        (None, Some(_)) => {
            errors.push(FieldError::new("valueFrom", "must be a mapping with file"));
            None
        }
        (Some(_), Some(_)) => {
            errors.push(FieldError::new("value", "give value or valueFrom, not both"));
            None
        }
        (None, None) => {
            errors.push(FieldError::new(
                "value",
                "missing: the secret's value, or valueFrom: {file: PATH}",
            ));
            None
        }
    };
    Some(Document::Secret {
        service: service.clone()?,
        name: name?,
        source: source?,
    })
}

/// The `name` of a config document or secret envelope: a file name on the sidecar.
fn file_name(map: &mut Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    let name = required_string(map, "name", errors);
    if let Some(n) = &name {
        if let Err(m) = outrider_policy::validate_config_name(n) {
            errors.push(FieldError::new("name", m));
        }
    }
    name
}

/// A media type from the file name, for config envelopes that do not say one.
fn content_type_for(name: &str) -> String {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "json" => "application/json",
        "yaml" | "yml" => "application/yaml",
        "toml" => "application/toml",
        _ => "text/plain",
    }
    .to_owned()
}

fn required_string(map: &mut Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match map.remove(field) {
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            errors.push(FieldError::new(
                field,
                format!("must be a string, found {}", type_name(&other)),
            ));
            None
        }
        None => {
            let msg = if field == "kind" {
                format!("missing: expected {KINDS}")
            } else {
                "missing".to_owned()
            };
            errors.push(FieldError::new(field, msg));
            None
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI_YAML: &str = r#"
---
kind: RateLimitPolicy
service: web
spec:
  rules:
    - name: all
      requestsPerSecond: 100
      burst: 200
---
kind: RoutingPolicy
service: web
spec:
  routes:
    - name: default
      match: {pathPrefix: /}
      backends: [{subset: v1, weight: 100}]
      retries: {attempts: 2, perTryTimeout: 500ms, on: [5xx]}
---
kind: ConfigDocument
service: web
name: app.yaml
content: |
  greeting: hello
"#;

    #[test]
    fn a_secret_takes_a_value_or_a_file_and_never_shows_the_value() {
        let docs = parse_documents(
            "kind: Secret\nservice: web\nname: db\nvalue: hunter2\n---\nkind: Secret\nservice: web\nname: tls.key\nvalueFrom: {file: key.pem}\n",
        )
        .unwrap();
        assert_eq!(docs[0].describe(), "Secret web/db");
        assert!(matches!(&docs[0], Document::Secret { source: SecretSource::Value(v), .. } if v == "hunter2"));
        assert!(
            matches!(&docs[1], Document::Secret { source: SecretSource::File(p), .. } if p.as_os_str() == "key.pem")
        );
        assert!(!format!("{docs:?}").contains("hunter2"));

        let err = parse_documents(
            "kind: Secret\nservice: web\nname: a/b\nvalue: x\nvalueFrom: {file: f}\n---\nkind: Secret\nservice: web\nname: c\n---\nkind: Secret\nservice: web\nname: d\nvalueFrom: {path: f}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("document 1 (Secret web) is invalid: name: "), "{err}");
        assert!(err.contains("value: give value or valueFrom, not both"), "{err}");
        assert!(
            err.contains("document 2 (Secret web) is invalid: value: missing"),
            "{err}"
        );
        assert!(
            err.contains("valueFrom.file: must be the path of a file; valueFrom.path: unknown field"),
            "{err}"
        );
        let big = format!(
            "{{\"kind\": \"Secret\", \"service\": \"web\", \"name\": \"k\", \"value\": \"{}\"}}",
            "x".repeat(MAX_SECRET_BYTES + 1)
        );
        let err = parse_documents(&big).unwrap_err().to_string();
        assert!(
            err.contains("value: 65537 bytes is over the limit of 65536 bytes"),
            "{err}"
        );
    }

    #[test]
    fn multi_document_yaml_yields_every_document_in_order() {
        let docs = parse_documents(MULTI_YAML).unwrap();
        let names: Vec<String> = docs.iter().map(Document::describe).collect();
        assert_eq!(
            names,
            [
                "RateLimitPolicy web",
                "RoutingPolicy web",
                "ConfigDocument web/app.yaml"
            ]
        );
        let Document::Config {
            content_type, content, ..
        } = &docs[2]
        else {
            panic!()
        };
        assert_eq!(content_type, "application/yaml");
        assert_eq!(content, "greeting: hello\n");
    }

    #[test]
    fn an_authorization_policy_envelope_in_yaml_is_validated_with_its_kind() {
        let text = "kind: AuthorizationPolicy\nservice: web\nspec:\n  defaultAction: deny\n  rules:\n    - name: reads\n      from: [frontend]\n      match: {pathPrefix: /api, methods: [GET]}\n      action: allow\n";
        let docs = parse_documents(text).unwrap();
        assert!(
            matches!(&docs[0], Document::Policy { policy, .. } if policy.kind() == PolicyKind::Authorization),
            "{docs:?}"
        );
        let bad = "kind: AuthorizationPolicy\nservice: web\nspec:\n  rules:\n    - name: a\n      from: [Bad]\n      action: allow\n";
        let msg = parse_documents(bad).unwrap_err().to_string();
        assert!(msg.contains("rules[0].from[0]"), "{msg}");
    }

    #[test]
    fn json_array_is_a_list_of_documents() {
        let text = r#"[
          {"kind": "RateLimitPolicy", "service": "web", "spec": {"rules": [{"name": "a", "requestsPerSecond": 5, "burst": 5}]}},
          {"kind": "ConfigDocument", "service": "api", "name": "app.json", "contentType": "application/json", "content": "{}"}
        ]"#;
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert!(matches!(&docs[0], Document::Policy { policy, .. } if policy.kind() == PolicyKind::RateLimit));
        assert_eq!(docs[1].service(), "api");
    }

    #[test]
    fn unknown_kind_is_an_error_naming_the_kinds() {
        let err = parse_documents("kind: TrafficPolicy\nservice: web\nspec: {}\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("document 1 (TrafficPolicy web)"), "{msg}");
        assert!(msg.contains(r#"kind: unknown kind "TrafficPolicy""#), "{msg}");
        assert!(msg.contains("RateLimitPolicy"), "{msg}");
    }

    #[test]
    fn validation_error_names_the_field_inside_spec() {
        let text = "kind: RateLimitPolicy\nservice: web\nspec:\n  rules:\n    - name: a\n      requestsPerSecond: fast\n      burst: 1\n";
        let EnvelopeError::Invalid(errs) = parse_documents(text).unwrap_err() else {
            panic!()
        };
        assert_eq!(errs[0].errors[0].field, "spec.rules[0].requestsPerSecond");
    }

    #[test]
    fn every_bad_document_is_reported_not_just_the_first() {
        let text = "kind: RateLimitPolicy\nservice: Web\nspec: {rules: []}\n---\nkind: LoggingPolicy\nservice: web\n";
        let EnvelopeError::Invalid(errs) = parse_documents(text).unwrap_err() else {
            panic!()
        };
        assert_eq!(errs.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(errs[0].errors[0].field, "service");
        assert_eq!(errs[1].errors[0].field, "spec");
    }

    #[test]
    fn unknown_envelope_fields_are_rejected() {
        let text = r#"{"kind": "RateLimitPolicy", "service": "web", "spec": {"rules": []}, "metadata": {}}"#;
        let EnvelopeError::Invalid(errs) = parse_documents(text).unwrap_err() else {
            panic!()
        };
        assert_eq!(errs[0].errors[0].field, "metadata");
    }

    #[test]
    fn two_documents_for_one_target_are_rejected() {
        let one = "kind: RateLimitPolicy\nservice: web\nspec: {rules: []}\n";
        let err = parse_documents(&format!("{one}---\n{one}")).unwrap_err().to_string();
        assert!(
            err.contains("document 2") && err.contains("document 1 already sets this"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_and_empty_files_are_one_line() {
        let err = parse_documents("kind: [unclosed\n").unwrap_err().to_string();
        assert!(err.starts_with("invalid YAML") && !err.contains('\n'), "{err}");
        assert!(parse_documents("{\"kind\": ")
            .unwrap_err()
            .to_string()
            .starts_with("invalid JSON"));
        assert_eq!(parse_documents("---\n").unwrap_err(), EnvelopeError::Empty);
    }
}
