use super::StoreError;
use base64::Engine;
use outrider_policy::PolicyKind;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq)]
pub struct StoredPolicy {
    pub service: String,
    pub kind: PolicyKind,
    pub document: serde_json::Value,
    pub revision: u64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredConfig {
    pub service: String,
    pub name: String,
    pub content_type: String,
    pub content: Vec<u8>,
    pub revision: u64,
    pub updated_at_ms: i64,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSummary {
    pub revision: u64,
    #[serde(skip)]
    pub created_at_ms: i64,
    pub actor: String,
    pub kind: String,
    pub service: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub operation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverts: Option<u64>,
}

/// One change with the document before and after it (`None`: absent).
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionRecord {
    pub summary: RevisionSummary,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// What a sidecar's `Hello` registers.
#[derive(Debug, Clone)]
pub struct SidecarRegistration {
    pub id: String,
    pub service: String,
    pub version: String,
    pub namespace: String,
    pub pod: String,
    pub address: String,
    pub inbound_port: u32,
    pub outbound_port: u32,
    pub admin_port: u32,
    pub build_version: String,
    /// Identifies this stream, so a late close of an old stream cannot mark a
    /// reconnected sidecar disconnected.
    pub session: String,
    /// The control-plane replica holding the stream.
    pub replica: String,
    pub held_revision: u64,
}

#[derive(Debug, Clone)]
pub struct SidecarRow {
    pub id: String,
    pub service: String,
    pub version: String,
    pub namespace: String,
    pub pod: String,
    pub address: String,
    pub inbound_port: u32,
    pub outbound_port: u32,
    pub admin_port: u32,
    pub build_version: String,
    pub replica: String,
    pub connected: bool,
    pub connected_at_ms: i64,
    pub last_seen_ms: i64,
    pub applied_revision: u64,
    pub last_nack: Option<String>,
    pub last_nack_revision: Option<u64>,
    pub health: Option<serde_json::Value>,
}

/// Sidecar status, derived from the row at read time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarStatus {
    Healthy,
    Unhealthy,
    Disconnected,
}

impl SidecarRow {
    /// Healthy while reports arrive; unhealthy once they stop for `unhealthy_after_ms`;
    /// disconnected when the stream closed or nothing came for `disconnected_after_ms`
    /// (its control-plane replica died with it, say).
    pub fn status(&self, now_ms: i64, unhealthy_after_ms: i64, disconnected_after_ms: i64) -> SidecarStatus {
        let silent = now_ms - self.last_seen_ms;
        if !self.connected || silent > disconnected_after_ms {
            SidecarStatus::Disconnected
        } else if silent > unhealthy_after_ms
            || self
                .health
                .as_ref()
                .and_then(|h| h.get("appHealthy"))
                .and_then(|v| v.as_bool())
                == Some(false)
        {
            SidecarStatus::Unhealthy
        } else {
            SidecarStatus::Healthy
        }
    }
}

/// How a config document appears in the history: text stays readable, anything else
/// is base64.
pub(crate) fn config_history_doc(content_type: &str, content: &[u8]) -> String {
    let v = match std::str::from_utf8(content) {
        Ok(text) => serde_json::json!({"contentType": content_type, "text": text}),
        Err(_) => serde_json::json!({
            "contentType": content_type,
            "base64": base64::engine::general_purpose::STANDARD.encode(content),
        }),
    };
    v.to_string()
}

pub(crate) fn config_from_history_doc(doc: &serde_json::Value) -> Result<(String, Vec<u8>), StoreError> {
    let ct = doc
        .get("contentType")
        .and_then(|v| v.as_str())
        .unwrap_or("application/octet-stream");
    if let Some(t) = doc.get("text").and_then(|v| v.as_str()) {
        return Ok((ct.to_owned(), t.as_bytes().to_vec()));
    }
    let b = doc
        .get("base64")
        .and_then(|v| v.as_str())
        .ok_or_else(|| StoreError::Corrupt("config history without content".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((ct.to_owned(), bytes))
}
