//! The Outrider control plane: the policy store, the REST API and dashboard host, and
//! the gRPC control stream that pushes snapshots to sidecars.

pub mod store;
