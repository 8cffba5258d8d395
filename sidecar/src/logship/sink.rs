//! Sinks (`docs/reference.md`): `stdout`, `file` and `http` in three wire formats — `ndjson`
//! (one JSON object a line), `elasticsearch-bulk` (`_bulk` action/document pairs)
//! and `loki` (the push API's JSON) — with optional gzip on HTTP bodies.
//!
//! A delivery either succeeds, fails in a way worth retrying (connection, timeout,
//! 408/429/5xx, Elasticsearch item errors), or is refused for good (other 4xx): a
//! refused batch is dropped and counted rather than retried forever, which would
//! stop all shipping behind one bad batch.

use super::Identity;
use flate2::write::GzEncoder;
use outrider_policy::{Compression, Sink, SinkFormat, SinkType};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// Bound on one HTTP delivery, so a stalled collector becomes a retry, never a hang.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// One record: its time and its JSON object, serialized once when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub unix_ms: u64,
    pub json: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0} (will retry)")]
    Retry(String),
    #[error("{0} (refused; batch dropped)")]
    Refused(String),
}

pub struct SinkClient {
    kind: SinkType,
    format: SinkFormat,
    gzip: bool,
    url: String,
    path: PathBuf,
    identity: Identity,
    http: reqwest::Client,
}

impl SinkClient {
    pub fn new(sink: &Sink, identity: Identity) -> Self {
        Self {
            kind: sink.kind,
            format: sink.format.unwrap_or(SinkFormat::Ndjson),
            gzip: sink.compression == Compression::Gzip,
            url: sink.url.clone().unwrap_or_default(),
            path: PathBuf::from(sink.path.clone().unwrap_or_default()),
            identity,
            http: reqwest::Client::builder()
                .timeout(HTTP_TIMEOUT)
                .connect_timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        }
    }

    pub async fn send(&self, records: &[Record]) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        match self.kind {
            // Written in place: the shipper has a thread of its own, so blocking it
            // for a write holds up shipping only, and no blocking pool is needed.
            SinkType::Stdout => {
                let body = encode(SinkFormat::Ndjson, records, &self.identity);
                let mut out = std::io::stdout().lock();
                out.write_all(&body)
                    .and_then(|()| out.flush())
                    .map_err(|e| SinkError::Retry(format!("stdout: {e}")))
            }
            SinkType::File => {
                let body = encode(SinkFormat::Ndjson, records, &self.identity);
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .and_then(|mut f| f.write_all(&body).and_then(|()| f.sync_data()))
                    .map_err(|e| SinkError::Retry(format!("{}: {e}", self.path.display())))
            }
            SinkType::Http => self.post(records).await,
        }
    }

    async fn post(&self, records: &[Record]) -> Result<(), SinkError> {
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
            .map_err(|e| SinkError::Retry(format!("POST {}: {e}", self.url)))?;
        let status = response.status();
        if status.is_success() {
            if self.format == SinkFormat::ElasticsearchBulk {
                // _bulk answers 200 even when items failed; those must be retried.
                let text = response.text().await.unwrap_or_default();
                let failed = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("errors").and_then(serde_json::Value::as_bool))
                    .unwrap_or(false);
                if failed {
                    return Err(SinkError::Retry("elasticsearch bulk: some items failed".into()));
                }
            }
            return Ok(());
        }
        let what = format!("POST {}: {status}", self.url);
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            Err(SinkError::Retry(what))
        } else {
            Err(SinkError::Refused(what))
        }
    }
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
    fn gzip_round_trips() {
        let body = encode(SinkFormat::Ndjson, &records(), &id());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gzip(&body)[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }
}
