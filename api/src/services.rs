//! `GET /services` and `GET /services/{service}`: what the mesh knows of each service,
//! its instances and the traffic its callers see.

use crate::configs::ConfigMeta;
use crate::policies::PolicyRecord;
use crate::sidecars::Sidecar;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// One line of `GET /services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSummary {
    pub name: String,
    /// The newest revision of any of the service's documents.
    pub revision: u64,
    /// The kinds of policy it has (`routing`, `rate-limit`, `logging`).
    pub policies: Vec<String>,
    /// How many config documents it has.
    pub configs: u64,
    pub instances: InstanceSummary,
}

/// Instance counts of a service, by status and per subset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSummary {
    pub total: u64,
    pub healthy: u64,
    pub unhealthy: u64,
    pub disconnected: u64,
    /// Keyed by subset (the instances' version label).
    pub subsets: BTreeMap<String, SubsetInstances>,
}

/// Instances of one subset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubsetInstances {
    pub total: u64,
    pub healthy: u64,
}

/// `GET /services/{service}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDetail {
    pub name: String,
    pub revision: u64,
    /// Keyed by kind (`routing`, `rate-limit`, `logging`).
    pub policies: BTreeMap<String, PolicyRecord>,
    pub configs: Vec<ConfigMeta>,
    pub instances: InstanceSummary,
    pub sidecars: Vec<Sidecar>,
    /// Per subset, as the service's callers reported it.
    pub traffic: Vec<SubsetTraffic>,
    /// Whether its sidecars take plaintext callers: `permissive` or `strict` (its
    /// AuthorizationPolicy's `mtls`; no policy: `permissive`).
    pub mtls: String,
    /// Inbound requests its instances received in plaintext since each started, summed:
    /// what should be 0 (over a while) before switching to `strict`.
    pub plaintext_requests: u64,
}

/// One subset of a service as all its callers saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubsetTraffic {
    pub subset: String,
    /// Since each caller started, summed over callers.
    pub requests: u64,
    pub errors: u64,
    /// `1 - errors / requests` (1.0 without requests).
    pub success_rate: f64,
    /// Over the callers' last report interval: request-weighted median, worst p99.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub window_requests: u64,
}
