//! Access records from the proxy. [`Pending::begin`] runs before the request is
//! forwarded (and only when the policy asks for access logs and the sample says so);
//! [`Pending::finish`] runs once the response head is known and hands the record to
//! the shipper with a non-blocking `try_send`. Header values are captured only for
//! the few fields a record has, and never for a header named in `redactHeaders`.
//!
//! The work is done by [`Pending::for_policy`] and [`Pending::finish_into`], which take
//! only the logging policy and the [`LogHub`]; `begin`/`finish` adapt the proxies'
//! `Applied`/`SidecarState` to them and are this module's only use of `state`.

use super::{clf_time, rfc3339_millis, Identity, LogHub};
use crate::state::{Applied, SidecarState};
use http::{HeaderMap, Request, Version};
use outrider_policy::{AccessLog, LogFormat, LoggingPolicy};
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// What replaces the value of a header named in `redactHeaders` in a record.
pub const REDACTED: &str = "[REDACTED]";

pub use crate::loghub::AccessRecord;

/// A request being served whose record will be written.
pub struct Pending {
    record: AccessRecord,
}

impl Pending {
    /// `None` unless access logs are on and this request is sampled. Gives the
    /// request an `x-request-id` if it has none, so the app and the record agree.
    /// `applied` is the snapshot the proxy already loaded for this request.
    pub fn begin<B>(
        applied: Option<&Applied>,
        req: &mut Request<B>,
        peer: IpAddr,
        new_request_id: impl FnOnce() -> http::HeaderValue,
    ) -> Option<Self> {
        Self::begin_direction(applied, req, peer, new_request_id, "inbound")
    }

    /// Like [`Pending::begin`] for a request in `direction` (`inbound`, `outbound`).
    pub fn begin_direction<B>(
        applied: Option<&Applied>,
        req: &mut Request<B>,
        peer: IpAddr,
        new_request_id: impl FnOnce() -> http::HeaderValue,
        direction: &'static str,
    ) -> Option<Self> {
        Self::for_policy(applied?.logging.as_ref(), req, peer, new_request_id, direction)
    }

    /// Like [`Pending::begin_direction`], from the logging policy alone.
    pub fn for_policy<B>(
        logging: Option<&LoggingPolicy>,
        req: &mut Request<B>,
        peer: IpAddr,
        new_request_id: impl FnOnce() -> http::HeaderValue,
        direction: &'static str,
    ) -> Option<Self> {
        let policy = &logging?.access_log;
        if !policy.enabled || !(policy.sample_rate >= 1.0 || rand::random::<f64>() < policy.sample_rate) {
            return None;
        }
        if !req.headers().contains_key("x-request-id") {
            req.headers_mut().insert("x-request-id", new_request_id());
        }
        let h = req.headers();
        let record = AccessRecord {
            unix_ms: outrider_runtime::time::now_ms(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            protocol: protocol(req.version()),
            client_ip: Some(peer.to_canonical()),
            request_id: header(policy, h, "x-request-id"),
            trace_id: trace_id(policy, h),
            user_agent: header(policy, h, "user-agent"),
            direction,
            ..AccessRecord::default()
        };
        Some(Self { record })
    }

    /// Notes the AuthorizationPolicy's decision on the request.
    pub fn with_authz(mut self, decision: Option<&crate::authz::AuthzDecision>) -> Self {
        self.record.authz = decision.cloned();
        self
    }

    /// Completes the record from the response head and queues it.
    pub fn finish(
        self,
        state: &SidecarState,
        status: u16,
        headers: &HeaderMap,
        upstream: Option<&Arc<str>>,
        started: Instant,
    ) {
        self.finish_into(&state.logs, status, headers, upstream, started);
    }

    /// Like [`Pending::finish`], into the hub itself.
    pub fn finish_into(
        mut self,
        hub: &LogHub,
        status: u16,
        headers: &HeaderMap,
        upstream: Option<&Arc<str>>,
        started: Instant,
    ) {
        let r = &mut self.record;
        r.status = status;
        r.duration_us = started.elapsed().as_micros() as u64;
        r.bytes = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        r.upstream = upstream.cloned();
        hub.push_access(self.record);
    }
}

fn redacted(policy: &AccessLog, name: &str) -> bool {
    policy.redact_headers.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn header(policy: &AccessLog, h: &HeaderMap, name: &str) -> Option<String> {
    let v = h.get(name)?;
    if redacted(policy, name) {
        return Some(REDACTED.to_owned());
    }
    v.to_str().ok().map(str::to_owned)
}

/// W3C `traceparent` (`00-<trace-id>-<span-id>-<flags>`) or Zipkin `x-b3-traceid`.
fn trace_id(policy: &AccessLog, h: &HeaderMap) -> Option<String> {
    let hex = |s: &str| !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(tp) = h.get("traceparent").and_then(|v| v.to_str().ok()) {
        if !redacted(policy, "traceparent") {
            let id = tp.split('-').nth(1).unwrap_or("");
            if id.len() == 32 && hex(id) {
                return Some(id.to_owned());
            }
        }
    }
    let b3 = h.get("x-b3-traceid").and_then(|v| v.to_str().ok())?;
    (!redacted(policy, "x-b3-traceid") && hex(b3)).then(|| b3.to_owned())
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The shipped form of a record: a JSON object with the request's fields, or in
/// `common` format the Common Log Format line as `message`; identity fields in both.
pub fn to_json(r: &AccessRecord, format: LogFormat, id: &Identity) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("timestamp".into(), rfc3339_millis(r.unix_ms).into());
    m.insert("source".into(), "access".into());
    let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
    match format {
        LogFormat::Json => {
            m.insert("direction".into(), r.direction.into());
            m.insert("method".into(), r.method.as_str().into());
            m.insert("path".into(), r.path.clone().into());
            m.insert("protocol".into(), r.protocol.into());
            m.insert("status".into(), r.status.into());
            m.insert("durationMs".into(), (r.duration_us as f64 / 1000.0).into());
            m.insert("bytes".into(), r.bytes.map_or(Value::Null, Value::from));
            m.insert(
                "upstream".into(),
                r.upstream.as_deref().map_or(Value::Null, Value::from),
            );
            m.insert("requestId".into(), opt(&r.request_id));
            m.insert("traceId".into(), opt(&r.trace_id));
            m.insert(
                "clientIp".into(),
                r.client_ip.map_or(Value::Null, |ip| ip.to_string().into()),
            );
            m.insert("userAgent".into(), opt(&r.user_agent));
        }
        LogFormat::Common => {
            let line = format!(
                "{} - - [{}] \"{} {} {}\" {} {}",
                r.client_ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                clf_time(r.unix_ms),
                r.method,
                r.path,
                r.protocol,
                r.status,
                r.bytes.map_or_else(|| "-".to_owned(), |b| b.to_string()),
            );
            m.insert("message".into(), line.into());
            m.insert("requestId".into(), opt(&r.request_id));
            m.insert("traceId".into(), opt(&r.trace_id));
        }
    }
    if let Some(a) = &r.authz {
        let rule = a.rule.as_deref().map_or(Value::Null, Value::from);
        m.insert("authz".into(), serde_json::json!({"decision": a.outcome, "rule": rule}));
    }
    super::parse::enrich(&mut m, id);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(access: &str) -> LoggingPolicy {
        let logging = format!(r#"{{"accessLog":{access},"sink":{{"type":"stdout"}}}}"#);
        outrider_policy::parse_document(logging.as_bytes()).unwrap()
    }

    fn begin(policy: &LoggingPolicy, req: &mut Request<()>, peer: IpAddr) -> Option<Pending> {
        Pending::for_policy(Some(policy), req, peer, id, "inbound")
    }

    fn id() -> http::HeaderValue {
        http::HeaderValue::from_static("generated")
    }

    #[test]
    fn a_record_shows_the_authorization_decision_when_there_is_one() {
        let ident = Identity {
            service: "web".into(),
            version: "v1".into(),
            namespace: "default".into(),
            pod: "web-1".into(),
        };
        let mut record = AccessRecord::default();
        assert!(to_json(&record, LogFormat::Json, &ident).get("authz").is_none());
        record.authz = Some(crate::authz::AuthzDecision {
            outcome: "would-deny",
            rule: Some("defaultAction".into()),
        });
        for format in [LogFormat::Json, LogFormat::Common] {
            let v = Value::Object(to_json(&record, format, &ident));
            assert_eq!(
                v["authz"],
                serde_json::json!({"decision": "would-deny", "rule": "defaultAction"})
            );
        }
    }

    #[test]
    fn disabled_access_logs_capture_nothing() {
        let policy = policy(r#"{"enabled":false}"#);
        let mut req = Request::get("/x").body(()).unwrap();
        assert!(begin(&policy, &mut req, [127, 0, 0, 1].into()).is_none());
        assert!(!req.headers().contains_key("x-request-id"));
    }

    #[test]
    fn records_carry_request_fields_and_never_a_redacted_value() {
        let policy = policy(r#"{"enabled":true,"redactHeaders":["Authorization","user-agent"]}"#);
        let mut req = Request::post("/api/x?token=s3cret")
            .header("authorization", "Bearer s3cret")
            .header("user-agent", "curl/8 s3cret")
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .body(())
            .unwrap();
        let pending = begin(&policy, &mut req, [10, 0, 0, 9].into()).unwrap();
        assert_eq!(req.headers()["x-request-id"], "generated");
        let mut head = HeaderMap::new();
        head.insert("content-length", http::HeaderValue::from_static("42"));
        let upstream: Arc<str> = Arc::from("127.0.0.1:8080");
        let hub = LogHub::new();
        pending.finish_into(&hub, 201, &head, Some(&upstream), Instant::now());
        let mut rx = hub.take_access_receiver().unwrap();
        let record = rx.try_recv().unwrap();
        let ident = Identity {
            service: "web".into(),
            version: "v1".into(),
            namespace: "default".into(),
            pod: "web-1".into(),
        };
        let json = serde_json::to_string(&to_json(&record, LogFormat::Json, &ident)).unwrap();
        assert!(!json.contains("s3cret"), "{json}");
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/api/x");
        assert_eq!(v["status"], 201);
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["upstream"], "127.0.0.1:8080");
        assert_eq!(v["requestId"], "generated");
        assert_eq!(v["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["userAgent"], REDACTED);
        assert_eq!(v["clientIp"], "10.0.0.9");
        assert_eq!(v["pod"], "web-1");

        let common = to_json(&record, LogFormat::Common, &ident);
        let line = common["message"].as_str().unwrap();
        assert!(line.starts_with("10.0.0.9 - - ["), "{line}");
        assert!(line.ends_with("] \"POST /api/x HTTP/1.1\" 201 42"), "{line}");
    }

    #[test]
    fn b3_trace_ids_are_taken_when_there_is_no_traceparent() {
        let policy = AccessLog::default();
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", http::HeaderValue::from_static("a3ce929d0e0e4736"));
        assert_eq!(trace_id(&policy, &h).as_deref(), Some("a3ce929d0e0e4736"));
        h.insert("x-b3-traceid", http::HeaderValue::from_static("not hex"));
        assert_eq!(trace_id(&policy, &h), None);
    }

    #[test]
    fn sample_rate_zero_records_nothing() {
        let policy = policy(r#"{"enabled":true,"sampleRate":0}"#);
        for _ in 0..100 {
            let mut req = Request::get("/").body(()).unwrap();
            assert!(begin(&policy, &mut req, [127, 0, 0, 1].into()).is_none());
        }
    }
}
