//! Sinks (`docs/reference.md`): `stdout`, `file` and `http` in three wire formats — `ndjson`
//! (one JSON object a line), `elasticsearch-bulk` (`_bulk` action/document pairs)
//! and `loki` (the push API's JSON) — with optional gzip on HTTP bodies.
//!
//! A delivery either succeeds (perhaps partly: an Elasticsearch `_bulk` answer names
//! the items to send again and those refused for good), fails in a way worth retrying
//! (connection, timeout, 408/429/5xx), is rejected as a body (400, 413, 422: the
//! pipeline splits the batch to find the record at fault), or is refused for good
//! (other 4xx: dropped and counted rather than retried forever, which would stop all
//! shipping behind one bad batch).

use super::confine::Confinement;
use super::Identity;
use flate2::write::GzEncoder;
use outrider_policy::{Compression, Sink, SinkFormat, SinkType};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Bound on one HTTP delivery, so a stalled collector becomes a retry, never a hang.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// One record: its time and its JSON object, serialized once when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub unix_ms: u64,
    pub json: String,
}

impl Record {
    /// What the record counts for against `batchBytes` and the spool's bound: its
    /// JSON and a little framing.
    pub fn size(&self) -> u64 {
        self.json.len() as u64 + 16
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0} (will retry)")]
    Retry(String),
    /// The body was refused: alone, the record in it is dropped; otherwise the
    /// batch is split to find it.
    #[error("{0} (body rejected)")]
    Rejected(String),
    #[error("{0} (refused; batch dropped)")]
    Refused(String),
}

/// A delivery the sink answered with success, for all records or some of them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Indexes of the records to send again (items answered 429 or 5xx).
    pub retry: Vec<usize>,
    /// Records refused for good (items answered another status): dropped.
    pub refused: u64,
    /// The first refused item's error, for the log.
    pub refusal: Option<String>,
}

pub struct SinkClient {
    kind: SinkType,
    format: SinkFormat,
    gzip: bool,
    url: String,
    /// `url` as errors and the log show it: credentials masked.
    shown_url: String,
    /// The file sink's path under the sink directory; `Err` if it is not (the
    /// policy was checked before it was applied, so only a changed setting gets here).
    path: Result<PathBuf, String>,
    confinement: Arc<Confinement>,
    identity: Identity,
    http: reqwest::Client,
}

impl SinkClient {
    /// `trust`: what an `https://` sink's certificate is verified against.
    pub fn new(sink: &Sink, identity: Identity, confinement: Arc<Confinement>, trust: &crate::trust::Trust) -> Self {
        Self {
            kind: sink.kind,
            format: sink.format.unwrap_or(SinkFormat::Ndjson),
            gzip: sink.compression == Compression::Gzip,
            url: sink.url.clone().unwrap_or_default(),
            shown_url: outrider_policy::mask_url_credentials(sink.url.as_deref().unwrap_or_default()).into_owned(),
            path: confinement.sink_path(sink.path.as_deref().unwrap_or_default()),
            confinement,
            identity,
            http: trust
                .http_client(reqwest::Client::builder())
                .timeout(HTTP_TIMEOUT)
                .connect_timeout(Duration::from_secs(2))
                // A redirect would take the records (307/308 keep the body) to a host
                // nobody allowed in OUTRIDER_SINK_HOSTS.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }

    pub async fn send(&self, records: &[Record]) -> Result<Accepted, SinkError> {
        if records.is_empty() {
            return Ok(Accepted::default());
        }
        match self.kind {
            // Written in place: the shipper has a thread of its own, so blocking it
            // for a write holds up shipping only, and no blocking pool is needed.
            SinkType::Stdout => {
                let body = encode(SinkFormat::Ndjson, records, &self.identity);
                let mut out = std::io::stdout().lock();
                out.write_all(&body)
                    .and_then(|()| out.flush())
                    .map(|()| Accepted::default())
                    .map_err(|e| SinkError::Retry(format!("stdout: {e}")))
            }
            SinkType::File => {
                // Kept for retry rather than dropped: the lines stay in the app's files
                // until the operator fixes the sink directory.
                let path = self
                    .path
                    .as_ref()
                    .map_err(|e| SinkError::Retry(format!("file sink: {e}")))?;
                let body = encode(SinkFormat::Ndjson, records, &self.identity);
                self.confinement
                    .open_sink(path)
                    .and_then(|mut f| f.write_all(&body).and_then(|()| f.sync_data()))
                    .map(|()| Accepted::default())
                    .map_err(|e| SinkError::Retry(format!("{}: {e}", path.display())))
            }
            SinkType::Http => self.post(records).await,
        }
    }

    async fn post(&self, records: &[Record]) -> Result<Accepted, SinkError> {
        let body = encode(self.format, records, &self.identity);
        let content_type = match self.format {
            SinkFormat::Ndjson | SinkFormat::ElasticsearchBulk => "application/x-ndjson",
            SinkFormat::Loki => "application/json",
        };
        let mut req = self.http.post(&self.url).header("content-type", content_type);
        let body = if self.gzip {
            req = req.header("content-encoding", "gzip");
            gzip(&body)
        } else {
            body
        };
        let response = req
            .body(body)
            .send()
            .await
            // Without its URL: reqwest's error would show the credentials in it.
            .map_err(|e| SinkError::Retry(format!("POST {}: {}", self.shown_url, e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            if self.format == SinkFormat::ElasticsearchBulk {
                // _bulk answers 200 even when items failed; the answer says which.
                let text = response.text().await.map_err(|e| {
                    SinkError::Retry(format!(
                        "POST {}: reading the answer: {}",
                        self.shown_url,
                        e.without_url()
                    ))
                })?;
                return bulk_outcome(&text, records.len());
            }
            return Ok(Accepted::default());
        }
        let what = format!("POST {}: {status}", self.shown_url);
        match status.as_u16() {
            408 | 429 | 500.. => Err(SinkError::Retry(what)),
            400 | 413 | 422 => Err(SinkError::Rejected(what)),
            _ => Err(SinkError::Refused(what)),
        }
    }
}

/// Reads an Elasticsearch `_bulk` answer to `sent` records: items answered 2xx are
/// done, 429 and 5xx are to be sent again, any other status (a mapping error, say) is
/// refused for good. An answer that cannot be matched to the records item by item
/// is a failure of the whole request.
fn bulk_outcome(text: &str, sent: usize) -> Result<Accepted, SinkError> {
    use serde_json::Value;
    let unreadable = |why: &str| SinkError::Retry(format!("elasticsearch bulk: {why}"));
    let v: Value = serde_json::from_str(text).map_err(|_| unreadable("the answer is not JSON"))?;
    if v.get("errors").and_then(Value::as_bool) == Some(false) {
        return Ok(Accepted::default());
    }
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| unreadable("errors without items"))?;
    if items.len() != sent {
        return Err(unreadable(&format!("{} items answered for {sent} sent", items.len())));
    }
    let mut out = Accepted::default();
    for (i, item) in items.iter().enumerate() {
        // Each item is `{"<action>": {"status": …, "error": …}}`.
        let result = item.as_object().and_then(|o| o.values().next());
        let status = result.and_then(|r| r.get("status")).and_then(Value::as_u64);
        match status {
            Some(200..=299) => {}
            Some(429 | 500..) | None => out.retry.push(i),
            Some(s) => {
                out.refused += 1;
                if out.refusal.is_none() {
                    let error = result
                        .and_then(|r| r.get("error"))
                        .map_or_else(String::new, Value::to_string);
                    out.refusal = Some(format!("item {i}: {s} {error}"));
                }
            }
        }
    }
    Ok(out)
}

/// The request body for `format`.
pub fn encode(format: SinkFormat, records: &[Record], id: &Identity) -> Vec<u8> {
    let size: usize = records.iter().map(|r| r.json.len() + 16).sum();
    let mut out = Vec::with_capacity(size + 256);
    match format {
        SinkFormat::Ndjson => {
            for r in records {
                out.extend_from_slice(r.json.as_bytes());
                out.push(b'\n');
            }
        }
        SinkFormat::ElasticsearchBulk => {
            for r in records {
                out.extend_from_slice(b"{\"create\":{}}\n");
                out.extend_from_slice(r.json.as_bytes());
                out.push(b'\n');
            }
        }
        SinkFormat::Loki => {
            let stream = serde_json::json!({
                "service": id.service, "version": id.version, "namespace": id.namespace, "pod": id.pod,
            });
            out.extend_from_slice(b"{\"streams\":[{\"stream\":");
            out.extend_from_slice(stream.to_string().as_bytes());
            out.extend_from_slice(b",\"values\":[");
            for (i, r) in records.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let ns = u128::from(r.unix_ms) * 1_000_000;
                out.extend_from_slice(format!("[\"{ns}\",").as_bytes());
                // The record's JSON, as a JSON string.
                out.extend_from_slice(serde_json::Value::from(r.json.as_str()).to_string().as_bytes());
                out.push(b']');
            }
            out.extend_from_slice(b"]}]}");
        }
    }
    out
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn records() -> Vec<Record> {
        vec![
            Record {
                unix_ms: 1_000,
                json: r#"{"message":"a \"quoted\" one"}"#.into(),
            },
            Record {
                unix_ms: 2_000,
                json: r#"{"message":"b"}"#.into(),
            },
        ]
    }

    fn id() -> Identity {
        Identity {
            service: "web".into(),
            version: "v1".into(),
            namespace: "default".into(),
            pod: "web-1".into(),
        }
    }

    #[test]
    fn ndjson_is_one_object_a_line() {
        let body = String::from_utf8(encode(SinkFormat::Ndjson, &records(), &id())).unwrap();
        assert_eq!(body, "{\"message\":\"a \\\"quoted\\\" one\"}\n{\"message\":\"b\"}\n");
    }

    #[test]
    fn elasticsearch_bulk_pairs_an_action_with_each_document() {
        let body = String::from_utf8(encode(SinkFormat::ElasticsearchBulk, &records(), &id())).unwrap();
        let lines: Vec<_> = body.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "{\"create\":{}}");
        assert_eq!(lines[3], "{\"message\":\"b\"}");
        assert!(body.ends_with('\n'));
    }

    #[test]
    fn loki_push_has_labels_and_nanosecond_string_timestamps() {
        let body = encode(SinkFormat::Loki, &records(), &id());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let stream = &v["streams"][0];
        assert_eq!(stream["stream"]["service"], "web");
        assert_eq!(stream["stream"]["pod"], "web-1");
        assert_eq!(stream["values"][0][0], "1000000000");
        let line: serde_json::Value = serde_json::from_str(stream["values"][0][1].as_str().unwrap()).unwrap();
        assert_eq!(line["message"], "a \"quoted\" one");
    }

    #[test]
    fn a_bulk_answer_sorts_items_into_done_retried_and_refused() {
        let answer = r#"{"took":3,"errors":true,"items":[
            {"create":{"status":201}},
            {"create":{"status":400,"error":{"type":"mapper_parsing_exception"}}},
            {"create":{"status":429,"error":{"type":"es_rejected_execution_exception"}}},
            {"create":{"status":503}},
            {"create":{"status":201}}]}"#;
        let a = bulk_outcome(answer, 5).unwrap();
        assert_eq!(a.retry, [2, 3]);
        assert_eq!(a.refused, 1);
        assert!(a.refusal.unwrap().contains("mapper_parsing_exception"));
        assert_eq!(
            bulk_outcome(r#"{"errors":false,"items":[]}"#, 5).unwrap(),
            Accepted::default()
        );
        assert!(
            matches!(
                bulk_outcome(r#"{"errors":true,"items":[]}"#, 2),
                Err(SinkError::Retry(_))
            ),
            "items that cannot be matched to records retry the whole request"
        );
        assert!(matches!(bulk_outcome("<html>", 1), Err(SinkError::Retry(_))));
    }

    #[test]
    fn gzip_round_trips() {
        let body = encode(SinkFormat::Ndjson, &records(), &id());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gzip(&body)[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }
}
