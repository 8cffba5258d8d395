//! `GET /sidecars`: every instance with its status, the revision it applied and its
//! latest health figures (also the rows of the `sidecars` live event).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// One sidecar, as `GET /sidecars` and `GET /services/{service}` list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sidecar {
    pub id: String,
    pub service: String,
    /// The subset label.
    pub version: String,
    pub namespace: String,
    pub pod: String,
    /// The address other sidecars reach this one at.
    pub address: String,
    pub inbound_port: u32,
    pub admin_port: u32,
    pub status: SidecarStatus,
    /// The newest revision it acknowledged.
    pub applied_revision: u64,
    /// The revision of its service's current snapshot.
    pub target_revision: u64,
    /// Applied the target and has no NACK outstanding.
    pub in_sync: bool,
    /// The last snapshot it refused, if any (`null` otherwise).
    pub last_nack: Option<LastNack>,
    /// RFC 3339.
    pub last_seen: String,
    /// RFC 3339.
    pub connected_at: String,
    /// The control-plane replica holding its stream.
    pub replica: String,
    /// The sidecar's own build version.
    pub build_version: String,
    /// Its latest health report (`null` before the first one).
    pub health: Option<SidecarHealth>,
    /// The SPIFFE ID of its workload certificate (`null` before the first one).
    #[serde(default)]
    pub identity: Option<String>,
    /// When that certificate expires, RFC 3339 (`null` without one).
    #[serde(default)]
    pub certificate_expiry: Option<String>,
}

/// Derived from the stream and the last report at read time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SidecarStatus {
    Healthy,
    Unhealthy,
    Disconnected,
}

/// A refused snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastNack {
    /// The revision it refused.
    pub revision: Option<u64>,
    /// Why, in the sidecar's words.
    pub error: String,
}

/// A sidecar's latest health report. Every field defaults, so a report from an older
/// sidecar that lacks some still reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct SidecarHealth {
    pub app_healthy: bool,
    /// Inbound requests since the sidecar started.
    pub requests_total: u64,
    pub errors_total: u64,
    pub rate_limited_total: u64,
    /// Requests per second over the last report interval.
    pub request_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub applied_revision: u64,
    /// Outbound traffic of this sidecar, per destination service and subset.
    pub destinations: Vec<DestinationFigures>,
    /// Log-shipping figures (`null`: not reported).
    pub log_shipping: Option<LogShipping>,
    /// What the AuthorizationPolicy denied, or in dry run would have, since the sidecar
    /// started, per rule.
    pub authz_denied: Vec<AuthzDenied>,
    /// Inbound requests that arrived in plaintext (no mTLS) since the sidecar started.
    pub plaintext_requests: u64,
}

/// One rule's denials (`dryRun`: would-be denials) on one sidecar since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthzDenied {
    /// A rule's name, `defaultAction`, or `mtls`.
    pub rule: String,
    pub dry_run: bool,
    pub count: u64,
}

/// What one caller saw of one destination subset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct DestinationFigures {
    pub service: String,
    pub subset: String,
    /// Since the caller started.
    pub requests_total: u64,
    /// 5xx answers, timeouts and connection failures, after retries.
    pub errors_total: u64,
    /// Over the last report interval (0 when there were no requests).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub window_requests: u64,
}

/// Log-shipping figures since the sidecar started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LogShipping {
    pub lines_read: u64,
    pub access_records: u64,
    pub shipped: u64,
    pub dropped: u64,
    pub buffered_bytes: u64,
    pub sink_errors: u64,
}

/// Query parameters of `GET /sidecars`: filters applied by the server, and a page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SidecarQuery {
    /// Only this service's sidecars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Only sidecars with this status now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(inline)]
    pub status: Option<SidecarStatus>,
    /// Only sidecars whose id, service, version, pod or address contains this text
    /// (ignoring ASCII case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// At most this many in this page (1 to 10000, default 500); a `Link: <…>;
    /// rel="next"` header says where the next page is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    /// Where the page starts: the cursor of the previous page's `rel="next"` link,
    /// opaque to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// The `limit` of a `GET /sidecars` without one.
pub const DEFAULT_SIDECAR_PAGE: u32 = 500;
/// The largest `limit` of `GET /sidecars`.
pub const MAX_SIDECAR_PAGE: u32 = 10_000;
