//! The Outrider control plane: the policy store, the REST API and dashboard host, and
//! the gRPC control stream that pushes snapshots to sidecars.
//!
//! Data flow: a REST write (`api`) validates with `outrider-policy`, commits to the
//! `store` (taking the next global revision), then `hub` rebuilds the affected
//! service's snapshot once and `grpc` sessions forward it to each of its sidecars.

pub mod api;
pub mod auth;
pub mod ca;
pub mod canary;
pub mod dashboard;
pub mod fleet;
pub mod grpc;
pub mod hub;
pub mod join;
pub mod listen;
pub mod mesh;
pub mod metrics;
pub mod propagation;
pub mod secret;
pub mod server;
pub mod server_cert;
pub mod store;
pub mod timing;
pub mod tls;
pub mod traffic;
pub mod vault;
pub mod webhook;
