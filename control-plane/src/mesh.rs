//! Discovery: the destination table every sidecar uses for outbound traffic — each
//! service's healthy endpoints (address, inbound port, subset) and its RoutingPolicy.
//!
//! It is the same for every sidecar, so the hub builds it once per change and puts the
//! same table into every service's snapshot. Health is derived from the sidecar rows
//! at build time (as the API does), so an instance that stops reporting drops out on
//! the next membership check and one that closes its stream drops out at once.

use crate::store::{now_ms, SidecarStatus, Store, StoreError};
use crate::timing::Timing;
use outrider_proto::v1::{DestinationService, DestinationTable, Endpoint};
use std::collections::BTreeMap;

/// Reads the store and builds the table. Deterministic (services and endpoints are
/// sorted), so two builds of the same state compare equal and no-op rebuilds are
/// not pushed.
pub async fn build_destinations(store: &Store, timing: &Timing) -> Result<DestinationTable, StoreError> {
    let sidecars = store.list_sidecars(None).await?;
    let routing = store.list_routing_policies().await?;
    let routing_revision = store.routing_revision().await?;
    let now = now_ms();
    let unhealthy_after = timing.unhealthy_after.as_millis() as i64;
    let disconnected_after = timing.disconnected_after.as_millis() as i64;

    let mut services: BTreeMap<String, DestinationService> = BTreeMap::new();
    for s in sidecars {
        if s.status(now, unhealthy_after, disconnected_after) != SidecarStatus::Healthy || s.address.is_empty() {
            continue;
        }
        let entry = services.entry(s.service.clone()).or_insert_with(|| DestinationService {
            service: s.service.clone(),
            ..Default::default()
        });
        entry.endpoints.push(Endpoint {
            address: s.address,
            port: s.inbound_port,
            subset: s.version,
            pod: s.pod,
        });
    }
    for (service, doc) in routing {
        services
            .entry(service.clone())
            .or_insert_with(|| DestinationService {
                service,
                ..Default::default()
            })
            .routing = doc;
    }
    let mut table = DestinationTable {
        services: services.into_values().collect(),
        routing_revision,
    };
    for s in &mut table.services {
        s.endpoints
            .sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
    }
    Ok(table)
}
