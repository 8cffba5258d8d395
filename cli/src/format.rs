//! The `-o` output format, a leaf that both the command line (`args`) and the
//! renderers (`output`) name without depending on each other.

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}
