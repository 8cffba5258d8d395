//! Turning one log record (a line, or several with a multiline start pattern) into a
//! JSON object: `json` takes the app's own fields, `regex` the named groups, `plain`
//! the whole text as `message`. Then [`enrich`] adds who shipped it.

use super::Identity;
use outrider_policy::{AppLog, LogParser};
use regex::Regex;
use serde_json::{Map, Value};

/// The parser of one `appLogs[]` entry, compiled once per policy.
#[derive(Debug, Clone)]
pub struct Parser {
    kind: LogParser,
    pattern: Option<Regex>,
    /// A line matching this starts a new record.
    pub multiline_start: Option<Regex>,
}

#[derive(Debug, thiserror::Error)]
#[error("appLogs: bad regular expression: {0}")]
pub struct ParserError(#[from] regex::Error);

impl Parser {
    pub fn compile(spec: &AppLog) -> Result<Self, ParserError> {
        let pattern = match spec.parser {
            LogParser::Regex => spec.pattern.as_deref().map(Regex::new).transpose()?,
            _ => None,
        };
        Ok(Self {
            kind: spec.parser,
            pattern,
            multiline_start: spec.multiline_start.as_deref().map(Regex::new).transpose()?,
        })
    }

    /// Parses `text` (without its final newline). A line the parser cannot read is
    /// still shipped, as `message`, so that nothing is lost to a format change.
    pub fn parse(&self, text: &str) -> Map<String, Value> {
        match self.kind {
            LogParser::Json => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => m,
                _ => message(text),
            },
            LogParser::Regex => match self.pattern.as_ref().and_then(|re| re.captures(text).map(|c| (re, c))) {
                Some((re, caps)) => {
                    let mut m = Map::new();
                    for name in re.capture_names().flatten() {
                        if let Some(v) = caps.name(name) {
                            m.insert(name.to_owned(), v.as_str().into());
                        }
                    }
                    if !m.contains_key("message") {
                        m.insert("message".into(), text.into());
                    }
                    m
                }
                None => message(text),
            },
            LogParser::Plain => message(text),
        }
    }
}

fn message(text: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("message".into(), text.into());
    m
}

/// Adds service, version, namespace and pod: every record carries them.
/// The sidecar's identity wins over same-named fields from the app, so a record
/// cannot claim to come from another instance.
pub fn enrich(m: &mut Map<String, Value>, id: &Identity) {
    m.insert("service".into(), id.service.clone().into());
    m.insert("version".into(), id.version.clone().into());
    m.insert("namespace".into(), id.namespace.clone().into());
    m.insert("pod".into(), id.pod.clone().into());
}

/// The fields the sidecar sets on every app record. An app field of one of these
/// names, or named `app`, is moved under `app`: a line can then neither pass for
/// another instance, file, source or time, nor lose what the app wrote.
pub const MESH_FIELDS: [&str; 7] = ["service", "version", "namespace", "pod", "source", "file", "timestamp"];

/// An app record as shipped: `m` (the parsed line) with its clashing fields moved
/// under `app`, then `timestamp` (when the sidecar read it), `source: app`, `file`
/// and the identity set by the sidecar.
pub fn stamp_app_record(m: &mut Map<String, Value>, id: &Identity, file: &str, timestamp: String) {
    let mut moved = Map::new();
    for key in MESH_FIELDS.iter().chain(&["app"]) {
        if let Some(v) = m.remove(*key) {
            moved.insert((*key).to_owned(), v);
        }
    }
    if !moved.is_empty() {
        m.insert("app".into(), Value::Object(moved));
    }
    m.insert("timestamp".into(), timestamp.into());
    m.insert("source".into(), "app".into());
    m.insert("file".into(), file.into());
    enrich(m, id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser(json: &str) -> Parser {
        Parser::compile(&serde_json::from_str::<AppLog>(json).unwrap()).unwrap()
    }

    #[test]
    fn json_lines_keep_their_fields_and_bad_ones_become_messages() {
        let p = parser(r#"{"path":"/l/*.log","parser":"json"}"#);
        let m = p.parse(r#"{"level":"info","n":3}"#);
        assert_eq!(m["level"], "info");
        assert_eq!(m["n"], 3);
        assert_eq!(p.parse("not json")["message"], "not json");
        assert_eq!(p.parse("[1,2]")["message"], "[1,2]");
    }

    #[test]
    fn regex_named_groups_become_fields() {
        let p = parser(r#"{"path":"/l/x","parser":"regex","pattern":"^(?P<level>[A-Z]+) (?P<msg>.*)$"}"#);
        let m = p.parse("WARN disk almost full");
        assert_eq!(m["level"], "WARN");
        assert_eq!(m["msg"], "disk almost full");
        assert_eq!(m["message"], "WARN disk almost full");
        assert_eq!(p.parse("lowercase")["message"], "lowercase");
    }

    #[test]
    fn app_fields_named_like_mesh_fields_move_under_app_and_the_sidecars_win() {
        let mut m = parser(r#"{"path":"/l/x","parser":"json"}"#).parse(
            r#"{"source":"access","file":"/etc/shadow","timestamp":"1999-01-01T00:00:00Z",
                "service":"billing","pod":"other","app":"mine","level":"warn"}"#,
        );
        let id = Identity {
            service: "web".into(),
            version: "v1".into(),
            namespace: "default".into(),
            pod: "web-1".into(),
        };
        stamp_app_record(&mut m, &id, "/var/log/app/a.log", "2026-01-01T00:00:00.000Z".into());
        assert_eq!(m["source"], "app");
        assert_eq!(m["file"], "/var/log/app/a.log");
        assert_eq!(m["timestamp"], "2026-01-01T00:00:00.000Z");
        assert_eq!((&m["service"], &m["pod"]), (&"web".into(), &"web-1".into()));
        assert_eq!(m["level"], "warn", "other fields stay where they were");
        let app = &m["app"];
        assert_eq!(app["source"], "access");
        assert_eq!(app["file"], "/etc/shadow");
        assert_eq!(app["timestamp"], "1999-01-01T00:00:00Z");
        assert_eq!(app["service"], "billing");
        assert_eq!(app["app"], "mine", "the app's own `app` field is kept too");
        let mut plain = parser(r#"{"path":"/l/x"}"#).parse("hello");
        stamp_app_record(&mut plain, &id, "/f", "t".into());
        assert!(plain.get("app").is_none(), "nothing clashed, nothing moved");
    }

    #[test]
    fn enrichment_overrides_app_claims() {
        let mut m = parser(r#"{"path":"/l/x","parser":"json"}"#).parse(r#"{"pod":"evil","a":1}"#);
        let id = Identity {
            service: "web".into(),
            version: "v2".into(),
            namespace: "prod".into(),
            pod: "web-7".into(),
        };
        enrich(&mut m, &id);
        assert_eq!(m["pod"], "web-7");
        assert_eq!(m["service"], "web");
        assert_eq!(m["version"], "v2");
        assert_eq!(m["namespace"], "prod");
        assert_eq!(m["a"], 1);
    }
}
