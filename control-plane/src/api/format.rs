//! How values look on the wire: times as RFC 3339 with milliseconds, revisions as
//! strong ETags, and the answer to a write that may have been a dry run.

use crate::store::StoredPolicy;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use outrider_api::PolicyRecord;
use std::time::{Duration, UNIX_EPOCH};

/// Epoch milliseconds as RFC 3339 (`2026-01-02T03:04:05.678Z`); negatives clamp to the epoch.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A revision as an ETag: `"7"`.
pub fn etag(revision: u64) -> HeaderValue {
    // Digits in quotes are always a valid header value; the fallback is unreachable.
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// The answer to a write that may be a dry run: the stored resource with its ETag,
/// or the report of what would have happened.
pub enum Written<T> {
    Stored { revision: u64, body: T },
    DryRun(outrider_api::DryRunReport),
}

impl<T: serde::Serialize> IntoResponse for Written<T> {
    fn into_response(self) -> Response {
        match self {
            Written::Stored { revision, body } => ([(header::ETAG, etag(revision))], Json(body)).into_response(),
            Written::DryRun(report) => Json(report).into_response(),
        }
    }
}

/// A stored policy as the API shows it.
pub fn policy_record(p: &StoredPolicy) -> PolicyRecord {
    PolicyRecord {
        service: p.service.clone(),
        kind: p.kind.as_str().to_owned(),
        revision: p.revision,
        updated_at: rfc3339(p.updated_at_ms),
        document: shown_document(p.kind.as_str(), &p.document),
    }
}

/// A stored document as the API shows it: a LoggingPolicy's sink credentials masked
/// (`user:***`; written back unchanged, the mask keeps the stored password).
pub fn shown_document(kind: &str, doc: &serde_json::Value) -> serde_json::Value {
    let mut shown = doc.clone();
    if kind == outrider_policy::PolicyKind::Logging.as_str() {
        outrider_policy::mask_document_credentials(&mut shown);
    }
    shown
}
