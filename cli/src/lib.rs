//! `outriderctl`: the operator CLI, a client of the control plane's REST API (DESIGN §6).
//!
//! `args` is the command line, `envelope` parses and validates `apply` files before
//! anything is sent, `client` speaks HTTP, `output` renders tables/JSON/YAML and
//! `commands` ties them together. Every failure is one [`CliError`].

pub mod args;
pub mod canary;
pub mod client;
pub mod commands;
pub mod envelope;
pub mod error;
pub mod output;

pub use args::Cli;
pub use error::CliError;
