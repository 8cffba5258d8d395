use crate::duration::MAX_INTERVAL;
use crate::{Duration, FieldError, Validate};
use serde::{Deserialize, Serialize};

/// LoggingPolicy (`docs/reference.md`): access logs and the app's own log files, to one sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoggingPolicy {
    #[serde(default)]
    pub access_log: AccessLog,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_logs: Vec<AppLog>,
    pub sink: Sink,
}

impl LoggingPolicy {
    /// The policy as shown outside the store (`/config_dump`, logs): credentials in
    /// the sink URL masked, see [`mask_url_credentials`].
    pub fn masked(&self) -> LoggingPolicy {
        let mut shown = self.clone();
        if let Some(url) = &mut shown.sink.url {
            *url = mask_url_credentials(url).into_owned();
        }
        shown
    }
}

/// A URL with the credentials of its user info masked: `https://user:pass@host/x`
/// → `https://user:***@host/x`; a user info without a password (often a token by
/// itself) becomes `***`. Anything else comes back as it is.
pub fn mask_url_credentials(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[scheme_end..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_len].rfind('@') else {
        return url.into();
    };
    let userinfo = &rest[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{}{shown}{}", &url[..scheme_end], &rest[at..]).into()
}

/// A LoggingPolicy document (JSON) as the API shows it: credentials in `sink.url`
/// masked (see [`mask_url_credentials`]).
pub fn mask_document_credentials(doc: &mut serde_json::Value) {
    if let Some(serde_json::Value::String(url)) = doc.pointer_mut("/sink/url") {
        if let std::borrow::Cow::Owned(masked) = mask_url_credentials(url) {
            *url = masked;
        }
    }
}

/// Takes a masked `sink.url` back as "keep the stored credentials": a written
/// document whose URL is exactly the `stored` one masked gets the stored URL, so a
/// document read from the API (masked) and written back unchanged keeps its password.
pub fn restore_masked_credentials(doc: &mut serde_json::Value, stored: &serde_json::Value) {
    let Some(serde_json::Value::String(stored_url)) = stored.pointer("/sink/url") else {
        return;
    };
    if let Some(serde_json::Value::String(url)) = doc.pointer_mut("/sink/url") {
        let masked = mask_url_credentials(stored_url);
        if matches!(masked, std::borrow::Cow::Owned(_)) && *url == masked {
            *url = stored_url.clone();
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLog {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "one")]
    pub sample_rate: f64,
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default)]
    pub redact_headers: Vec<String>,
}

fn one() -> f64 {
    1.0
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            enabled: false,
            sample_rate: 1.0,
            format: LogFormat::Json,
            redact_headers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Common,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppLog {
    pub path: String,
    #[serde(default)]
    pub parser: LogParser,
    /// Named-group regex for `parser: regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// A line matching this starts a new record; others continue the previous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiline_start: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogParser {
    Json,
    Regex,
    #[default]
    Plain,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sink {
    #[serde(rename = "type")]
    pub kind: SinkType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<SinkFormat>,
    #[serde(default = "default_batch")]
    pub batch_size: u32,
    /// A batch closes at `batch_size` records or at this many bytes of records,
    /// whichever comes first (a single larger record travels alone).
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: u64,
    #[serde(default = "default_flush")]
    pub flush_interval: Duration,
    /// `gzip` compresses HTTP request bodies (`Content-Encoding: gzip`); the
    /// default `none` suits collectors that do not accept compressed bodies.
    #[serde(default, skip_serializing_if = "is_default")]
    pub compression: Compression,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_batch() -> u32 {
    500
}
/// The default byte bound of a batch, well under the request-body limits collectors
/// commonly ship with.
pub const DEFAULT_BATCH_BYTES: u64 = 1024 * 1024;
/// The range of `batchBytes`: below 4 KiB batches degenerate into a request per line;
/// above 64 MiB one batch is more than a sidecar should hold in memory.
pub const BATCH_BYTES_RANGE: std::ops::RangeInclusive<u64> = 4 * 1024..=64 * 1024 * 1024;

fn default_batch_bytes() -> u64 {
    DEFAULT_BATCH_BYTES
}
fn default_flush() -> Duration {
    Duration::from_millis(1000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    Stdout,
    File,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkFormat {
    Ndjson,
    ElasticsearchBulk,
    Loki,
}

impl Validate for LoggingPolicy {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        let a = &self.access_log;
        if !(a.sample_rate.is_finite() && (0.0..=1.0).contains(&a.sample_rate)) {
            errors.push(FieldError::new("accessLog.sampleRate", "must be between 0 and 1"));
        }
        for (i, l) in self.app_logs.iter().enumerate() {
            if !l.path.starts_with('/') {
                errors.push(FieldError::new(
                    format!("appLogs[{i}].path"),
                    "must be an absolute path (globs allowed)",
                ));
            } else if has_dot_segment(&l.path) {
                errors.push(FieldError::new(format!("appLogs[{i}].path"), DOT_SEGMENT));
            }
            if l.parser == LogParser::Regex && l.pattern.as_deref().is_none_or(str::is_empty) {
                errors.push(FieldError::new(
                    format!("appLogs[{i}].pattern"),
                    "required with parser \"regex\"",
                ));
            }
            if let Some(p) = l.pattern.as_deref().filter(|p| !p.is_empty()) {
                match regex::Regex::new(p) {
                    Err(e) => errors.push(FieldError::new(format!("appLogs[{i}].pattern"), e.to_string())),
                    Ok(re) if l.parser == LogParser::Regex && re.capture_names().flatten().next().is_none() => errors
                        .push(FieldError::new(
                            format!("appLogs[{i}].pattern"),
                            "needs at least one named group, such as (?P<level>\\w+)",
                        )),
                    Ok(_) => {}
                }
            }
            if let Some(Err(e)) = l.multiline_start.as_deref().map(regex::Regex::new) {
                errors.push(FieldError::new(format!("appLogs[{i}].multilineStart"), e.to_string()));
            }
            if let Err(e) = glob::Pattern::new(&l.path) {
                errors.push(FieldError::new(format!("appLogs[{i}].path"), format!("bad glob: {e}")));
            }
        }
        let s = &self.sink;
        match s.kind {
            SinkType::Stdout => {}
            SinkType::File => match s.path.as_deref() {
                None | Some("") => errors.push(FieldError::new("sink.path", "required for a file sink")),
                Some(p) if p.ends_with('/') => {
                    errors.push(FieldError::new("sink.path", "must name a file, not a directory"))
                }
                Some(p) if has_dot_segment(p) => errors.push(FieldError::new("sink.path", DOT_SEGMENT)),
                Some(_) => {}
            },
            SinkType::Http => {
                if !s
                    .url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("http://") || u.starts_with("https://"))
                {
                    errors.push(FieldError::new(
                        "sink.url",
                        "an http:// or https:// URL is required for an http sink",
                    ));
                }
            }
        }
        if s.batch_size == 0 || s.batch_size > 100_000 {
            errors.push(FieldError::new("sink.batchSize", "must be between 1 and 100000"));
        }
        if !BATCH_BYTES_RANGE.contains(&s.batch_bytes) {
            errors.push(FieldError::new(
                "sink.batchBytes",
                format!(
                    "must be between {} and {} (4 KiB to 64 MiB)",
                    BATCH_BYTES_RANGE.start(),
                    BATCH_BYTES_RANGE.end()
                ),
            ));
        }
        s.flush_interval.check("sink.flushInterval", MAX_INTERVAL, errors);
    }
}

const DOT_SEGMENT: &str = "must not contain `.` or `..` segments";

/// A `.` or `..` segment makes a path mean something other than it reads, which is how
/// a path escapes the directory it seems to be under; no legitimate path needs one.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use crate::{parse_document, LoggingPolicy, PolicyError};

    #[test]
    fn accepts_the_design_example() {
        parse_document::<LoggingPolicy>(
            br#"{"accessLog": {"enabled": true, "sampleRate": 1.0, "format": "json",
                "redactHeaders": ["authorization", "cookie"]},
               "appLogs": [{"path": "/var/log/app/*.log", "parser": "json"}],
               "sink": {"type": "http", "url": "http://collector:9880/ingest", "format": "ndjson",
                        "batchSize": 500, "flushInterval": "1s"}}"#,
        )
        .unwrap();
    }

    #[test]
    fn http_sink_needs_a_url() {
        let err = parse_document::<LoggingPolicy>(br#"{"sink":{"type":"http"}}"#).unwrap_err();
        let PolicyError::Invalid(e) = err else { panic!() };
        assert_eq!(e[0].field, "sink.url");
    }

    #[test]
    fn a_relative_file_sink_path_is_accepted_and_dot_segments_are_refused_everywhere() {
        parse_document::<LoggingPolicy>(br#"{"sink":{"type":"file","path":"ship/out.ndjson"}}"#).unwrap();
        let err = parse_document::<LoggingPolicy>(
            br#"{"appLogs":[{"path":"/var/log/../../etc/hostname"}],
                "sink":{"type":"file","path":"../escape.ndjson"}}"#,
        )
        .unwrap_err();
        let PolicyError::Invalid(e) = err else { panic!() };
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["appLogs[0].path", "sink.path"]);
    }

    #[test]
    fn batch_bytes_defaults_to_one_mebibyte_and_is_bounded() {
        let p = parse_document::<LoggingPolicy>(br#"{"sink":{"type":"stdout"}}"#).unwrap();
        assert_eq!(p.sink.batch_bytes, 1024 * 1024);
        for bad in ["0", "4095", "67108865"] {
            let doc = format!(r#"{{"sink":{{"type":"stdout","batchBytes":{bad}}}}}"#);
            let err = parse_document::<LoggingPolicy>(doc.as_bytes()).unwrap_err();
            let PolicyError::Invalid(e) = err else { panic!() };
            assert_eq!(e[0].field, "sink.batchBytes", "{bad}");
        }
    }

    #[test]
    fn bad_patterns_are_named() {
        let err = parse_document::<LoggingPolicy>(
            br#"{"appLogs":[{"path":"/l/*.log","parser":"regex","pattern":"(unclosed"},
                            {"path":"/l/b","parser":"regex","pattern":"no groups"},
                            {"path":"/l/c","multilineStart":"["}],
                "sink":{"type":"stdout","compression":"gzip"}}"#,
        )
        .unwrap_err();
        let PolicyError::Invalid(e) = err else { panic!() };
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["appLogs[0].pattern", "appLogs[1].pattern", "appLogs[2].multilineStart"]
        );
    }
}

#[cfg(test)]
mod mask_tests {
    use super::mask_url_credentials as mask;

    #[test]
    fn credentials_in_urls_are_masked_and_nothing_else_changes() {
        assert_eq!(
            mask("https://elastic:s3cret@es:9200/_bulk"),
            "https://elastic:***@es:9200/_bulk"
        );
        assert_eq!(mask("http://tok3n@collector/in"), "http://***@collector/in");
        assert_eq!(mask("http://u:p:q@h/a@b?c=d@e"), "http://u:***@h/a@b?c=d@e");
        assert_eq!(mask("http://u:p%40x@h"), "http://u:***@h");
        assert_eq!(mask("http://collector:9880/ingest"), "http://collector:9880/ingest");
        assert_eq!(mask("http://h/path?user=a@b"), "http://h/path?user=a@b");
        assert_eq!(mask("not a url"), "not a url");
    }

    #[test]
    fn a_masked_url_written_back_keeps_the_stored_credentials_and_any_other_url_is_taken() {
        use super::{mask_document_credentials, restore_masked_credentials};
        let stored = serde_json::json!({"sink": {"type": "http", "url": "https://u:pw@es/_bulk"}});
        let mut shown = stored.clone();
        mask_document_credentials(&mut shown);
        assert_eq!(shown["sink"]["url"], "https://u:***@es/_bulk");
        let mut back = shown.clone();
        restore_masked_credentials(&mut back, &stored);
        assert_eq!(back, stored);
        for other in [
            "https://u:new@es/_bulk",
            "https://u:***@other/_bulk",
            "https://es/_bulk",
        ] {
            let mut doc = serde_json::json!({"sink": {"type": "http", "url": other}});
            restore_masked_credentials(&mut doc, &stored);
            assert_eq!(doc["sink"]["url"], other);
        }
        // A stored URL without credentials gives a literal `***` no meaning.
        let plain = serde_json::json!({"sink": {"type": "http", "url": "https://es/x"}});
        let mut doc = serde_json::json!({"sink": {"type": "http", "url": "https://u:***@es/x"}});
        restore_masked_credentials(&mut doc, &plain);
        assert_eq!(doc["sink"]["url"], "https://u:***@es/x");
    }
}
