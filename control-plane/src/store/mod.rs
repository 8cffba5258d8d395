//! The policy store: PostgreSQL in production, an embedded SQLite file otherwise.
//!
//! One set of queries serves both backends through `sqlx::Any` (numbered `$n`
//! parameters work on both, all integers are BIGINT, times are epoch milliseconds), and
//! one test suite proves the behaviours on each. This module holds the handle, the
//! error type and the write transaction every change goes through; each aggregate
//! (policies, configs, revisions, sidecars, services, tokens, rollouts, propagation,
//! routing, join tokens, CA roots, secrets) has a module of its own.

mod ca;
mod canary;
mod configs;
mod db;
mod join_tokens;
mod policies;
mod propagation;
mod reads;
mod revisions;
mod routing;
mod secrets;
mod services;
mod sidecars;
mod tokens;

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_dashboard;
#[cfg(test)]
mod tests_reads;
#[cfg(test)]
mod tests_revisions;
#[cfg(test)]
mod tests_secrets;
#[cfg(test)]
mod tests_sidecars;

pub use ca::CaRoot;
pub use canary::RolloutRow;
pub use configs::StoredConfig;
pub use join_tokens::JoinTokenInfo;
pub use policies::StoredPolicy;
pub use propagation::Propagation;
pub use reads::{ServiceOverview, StatusClock, SubsetCounts};
pub use revisions::{RevisionRecord, RevisionSummary};
pub use secrets::{SecretMeta, SecretValue};
pub use sidecars::{
    SidecarCursor, SidecarFilter, SidecarPage, SidecarRegistration, SidecarRow, SidecarStatus, StatusFilter,
};
pub use tokens::{Role, TokenInfo};

pub use db::{now_ms, Backend, Precondition, Store, StoreError, CHANGES_CHANNEL, CONFIG_KIND, SECRET_KIND};
