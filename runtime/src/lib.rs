//! Infrastructure shared by Outrider's binaries, written once: backoff with jitter,
//! atomic file writes, shutdown plumbing, wall-clock time, logging setup and Prometheus text.
//!
//! Nothing here knows about policy, snapshots or the control stream; a module is added
//! here only when two components would otherwise each write their own.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod fs;
pub mod prom;
pub mod shutdown;
pub mod time;
pub mod tracing;

pub use backoff::Backoff;
