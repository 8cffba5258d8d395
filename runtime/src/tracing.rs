//! Logging setup for every binary: one filter variable (`OUTRIDER_LOG`, default `info`)
//! and one format switch (text or JSON), with colour only on a terminal.
//!
//! Logs usually end up in files (container runtimes, test harnesses); ANSI escape codes
//! there make them hard to grep, so colour is on only when the output is a terminal.

use std::io::IsTerminal;
use std::str::FromStr;
use tracing_subscriber::EnvFilter;

/// The variable holding the filter, in `tracing_subscriber::EnvFilter` syntax.
pub const FILTER_VAR: &str = "OUTRIDER_LOG";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("log format {0:?}: expected text or json")]
    Format(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadySet,
}

impl FromStr for Format {
    type Err = TracingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(TracingError::Format(s.to_owned())),
        }
    }
}

/// Installs the global subscriber writing to stdout. A malformed `OUTRIDER_LOG` falls
/// back to `info` rather than silencing the process.
pub fn init(format: Format) -> Result<(), TracingError> {
    let filter = EnvFilter::try_from_env(FILTER_VAR).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stdout().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    let installed = match format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().try_init(),
    };
    installed.map_err(|_| TracingError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_others_are_named_in_the_error() {
        assert_eq!("text".parse::<Format>().unwrap(), Format::Text);
        assert_eq!("JSON".parse::<Format>().unwrap(), Format::Json);
        let e = "yaml".parse::<Format>().unwrap_err();
        assert_eq!(e.to_string(), "log format \"yaml\": expected text or json");
    }
}
