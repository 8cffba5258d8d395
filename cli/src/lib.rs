//! `outriderctl`: the operator CLI, a client of the control plane's REST API only
//! (`docs/reference.md` lists its commands). Every failure is one [`CliError`].
//!
//! Modules, from the bottom up: `format` (the `-o` enum) and `error`; `args` (the
//! command line) and `envelope` (parses and validates `apply` files before anything is
//! sent); `client` (HTTP) and `output` (tables, JSON, YAML); `inject` (the offline
//! `inject`, on `outrider-inject`); `canary` and `commands` (what each command does). Nothing imports a module above it.

pub mod args;
pub mod canary;
pub mod client;
pub mod commands;
pub mod envelope;
pub mod error;
pub mod format;
pub mod inject;
pub mod install;
pub mod kubecheck;
pub mod output;

pub use args::Cli;
pub use error::CliError;
