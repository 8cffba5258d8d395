//! Per-subset traffic figures of a service, aggregated from its callers' health
//! reports (each caller reports what it saw of every destination subset): the raw
//! material for canary decisions and `GET /services/{service}`.

use crate::store::SidecarRow;
use outrider_proto::v1::DestinationFigures;
use serde_json::Value;
use std::collections::BTreeMap;

/// How a caller's figures are kept in its health JSON.
pub fn figures_json(f: &[DestinationFigures]) -> Value {
    Value::Array(
        f.iter()
            .map(|d| {
                serde_json::json!({
                    "service": d.service, "subset": d.subset,
                    "requestsTotal": d.requests_total, "errorsTotal": d.errors_total,
                    "p50Ms": d.p50_ms, "p99Ms": d.p99_ms, "windowRequests": d.window_requests,
                })
            })
            .collect(),
    )
}

/// What one caller reported of one subset of a service: cumulative counters since
/// that caller started, and its last report interval's latency.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerFigures {
    /// The reporting sidecar's id.
    pub caller: String,
    /// When the caller's current stream began (epoch ms).
    pub connected_at_ms: i64,
    /// When the caller last reported (epoch ms).
    pub reported_ms: i64,
    pub subset: String,
    pub requests: u64,
    pub errors: u64,
    pub p99_ms: f64,
    pub window_requests: u64,
}

/// The per-subset figures `row`'s last report holds about `service`.
fn figures_of<'a>(row: &'a SidecarRow, service: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    row.health
        .as_ref()
        .and_then(|h| h.get("destinations"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |f| f["service"] == service)
}

/// Every caller's figures of `service`, one entry per caller and subset.
pub fn per_caller(service: &str, rows: &[SidecarRow]) -> Vec<CallerFigures> {
    let mut out = Vec::new();
    for row in rows {
        for f in figures_of(row, service) {
            out.push(CallerFigures {
                caller: row.id.clone(),
                connected_at_ms: row.connected_at_ms,
                reported_ms: row.last_seen_ms,
                subset: f["subset"].as_str().unwrap_or_default().to_owned(),
                requests: f["requestsTotal"].as_u64().unwrap_or(0),
                errors: f["errorsTotal"].as_u64().unwrap_or(0),
                p99_ms: f["p99Ms"].as_f64().unwrap_or(0.0),
                window_requests: f["windowRequests"].as_u64().unwrap_or(0),
            });
        }
    }
    out
}

/// One subset of a service as all its callers saw it: the API's own type.
pub use outrider_api::SubsetTraffic;

/// Aggregates the figures every sidecar in `rows` reported about `service`.
/// `recent` says whether a row's last report is fresh enough for its window figures.
pub fn aggregate(service: &str, rows: &[SidecarRow], recent: impl Fn(&SidecarRow) -> bool) -> Vec<SubsetTraffic> {
    let mut by_subset: BTreeMap<String, (SubsetTraffic, f64)> = BTreeMap::new();
    for row in rows {
        let fresh = recent(row);
        for f in figures_of(row, service) {
            let subset = f["subset"].as_str().unwrap_or_default();
            let (t, p50_weighted) = by_subset.entry(subset.to_owned()).or_insert_with(|| {
                (
                    SubsetTraffic {
                        subset: subset.to_owned(),
                        ..Default::default()
                    },
                    0.0,
                )
            });
            t.requests += f["requestsTotal"].as_u64().unwrap_or(0);
            t.errors += f["errorsTotal"].as_u64().unwrap_or(0);
            let window = f["windowRequests"].as_u64().unwrap_or(0);
            if fresh && window > 0 {
                t.window_requests += window;
                *p50_weighted += f["p50Ms"].as_f64().unwrap_or(0.0) * window as f64;
                t.p99_ms = t.p99_ms.max(f["p99Ms"].as_f64().unwrap_or(0.0));
            }
        }
    }
    by_subset
        .into_values()
        .map(|(mut t, p50_weighted)| {
            t.success_rate = if t.requests == 0 {
                1.0
            } else {
                1.0 - t.errors as f64 / t.requests as f64
            };
            if t.window_requests > 0 {
                t.p50_ms = p50_weighted / t.window_requests as f64;
            }
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, figures: Value) -> SidecarRow {
        SidecarRow {
            id: id.into(),
            service: "client".into(),
            version: "v1".into(),
            namespace: "default".into(),
            pod: id.into(),
            address: "127.0.0.1".into(),
            inbound_port: 1,
            outbound_port: 2,
            admin_port: 3,
            build_version: String::new(),
            replica: String::new(),
            session: String::new(),
            connected: true,
            connected_at_ms: 0,
            last_seen_ms: 0,
            applied_revision: 0,
            last_nack: None,
            last_nack_revision: None,
            health: Some(serde_json::json!({ "destinations": figures })),
            identity: None,
            certificate_expiry_ms: None,
        }
    }

    #[test]
    fn callers_figures_are_summed_per_subset() {
        let f = |subset: &str, req: u64, err: u64, p99: f64| {
            serde_json::json!({"service":"web","subset":subset,"requestsTotal":req,"errorsTotal":err,
                "p50Ms":1.0,"p99Ms":p99,"windowRequests":10})
        };
        let rows = vec![
            row("a", serde_json::json!([f("v1", 100, 1, 5.0), f("v2", 10, 2, 50.0)])),
            row(
                "b",
                serde_json::json!([f("v2", 30, 2, 20.0), {"service":"api","subset":"v1","requestsTotal":7}]),
            ),
        ];
        let t = aggregate("web", &rows, |_| true);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].subset.as_str(), t[0].requests, t[0].errors), ("v1", 100, 1));
        assert_eq!((t[1].requests, t[1].errors, t[1].window_requests), (40, 4, 20));
        assert!((t[1].success_rate - 0.9).abs() < 1e-9);
        assert_eq!(t[1].p99_ms, 50.0, "the worst caller's p99");
        assert!(
            aggregate("api", &rows, |_| false)[0].p99_ms == 0.0,
            "stale windows are ignored"
        );
    }
}
