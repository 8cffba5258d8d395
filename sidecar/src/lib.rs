//! The Outrider sidecar: the data-plane proxy and agent that runs next to each app
//! instance.
//!
//! It registers with the control plane, applies the snapshots it streams (persisting
//! the last acknowledged one for static stability), enforces rate limits on the inbound
//! proxy and serves its admin endpoints. `main.rs` only wires these modules together.

#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod authz;
pub mod capture;
pub mod config;
pub mod configdocs;
pub mod identity;
pub mod inbound;
pub mod loghub;
pub mod logship;
pub mod matcher;
pub mod metrics;
pub mod mtls;
pub mod outbound;
pub mod persist;
pub mod probes;
pub mod proxy;
pub mod ratelimit;
pub mod secrets;
pub mod state;
pub mod trust;
