//! What a sidecar does with its state directory at start: decode the persisted
//! snapshot (`snapshot.pb`) and destinations (`destinations.pb`), then validate,
//! compile and apply them as `main.rs` does after `persist::load*`. Any bytes: never
//! a panic; whatever applies must then serve a rate-limit check.
//!
//! Every input goes through `persist::decode` (header, checksum: it must refuse
//! or accept, never panic) and, since a fuzzer rarely forges a checksum, is also
//! tried as the payload of both files, as if its checksum had matched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_proto::v1::{DestinationTable, Snapshot};
use outrider_sidecar::persist::Content;
use outrider_sidecar::state::{SidecarState, Source};
use prost::Message;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let state = SidecarState::new();
    if let Ok(p) = outrider_sidecar::persist::decode(data) {
        match p.content {
            Content::Snapshot(s) => apply(&state, &s),
            Content::Destinations(t) => {
                let _ = state.load_destinations(&t);
            }
        }
    }
    if let Ok(table) = DestinationTable::decode(data) {
        let _ = state.load_destinations(&table);
        let _ = state.held_destinations();
    }
    if let Ok(snapshot) = Snapshot::decode(data) {
        apply(&state, &snapshot);
    }
});

/// Applies as `main.rs` does at start; whatever applies must serve a check.
fn apply(state: &SidecarState, snapshot: &Snapshot) {
    if state.apply(snapshot, Source::Persisted).is_ok() {
        let applied = state.applied.load_full().expect("applied after apply");
        let headers = http::HeaderMap::new();
        let _ = applied
            .limiter
            .check("/", &headers, [127, 0, 0, 1].into(), Instant::now())
            .headers();
    }
}
