//! The one error type of the CLI. Every variant renders as a single line: `main`
//! prints it after `error: ` and exits 1.

use outrider_policy::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Nothing answered at the server address.
    #[error(
        "cannot reach the control plane at {server}: {reason}; is it running? \
         Point --server (or OUTRIDER_SERVER) at its HTTP address"
    )]
    Unreachable { server: String, reason: String },
    #[error("the control plane at {server} did not answer within {secs}s")]
    Timeout { server: String, secs: u64 },
    #[error("request to {server} failed: {reason}")]
    Transport { server: String, reason: String },
    /// A bad argument that clap's types cannot catch (a service name, say).
    #[error("{0}")]
    Invalid(String),
    #[error("invalid --server {server:?}: {reason}")]
    BadServer { server: String, reason: String },
    #[error("cannot use --ca-file {path}: {reason}")]
    CaFile { path: String, reason: String },
    /// The server answered with an error status.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// An `apply` input that could not be read or parsed, or a document that is invalid.
    #[error("{source_name}: {message}")]
    Input { source_name: String, message: String },
    /// `apply` failed part way: which document, and what was applied before it.
    #[error("{what}: {source}{}", applied_note(*.applied))]
    Apply {
        what: String,
        applied: usize,
        source: Box<CliError>,
    },
    /// `check` found problems (the report itself went to stdout).
    #[error("check failed: {0}")]
    Unhealthy(String),
    #[error("cannot write output: {0}")]
    Output(String),
}

fn applied_note(applied: usize) -> String {
    match applied {
        0 => "; nothing was applied".into(),
        1 => "; 1 earlier document was applied".into(),
        n => format!("; {n} earlier documents were applied"),
    }
}

/// An error answer of the REST API, from its `application/problem+json` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub title: String,
    pub detail: Option<String>,
    pub errors: Vec<FieldError>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.errors.is_empty() {
            return write!(f, "invalid document: {}", join_field_errors(&self.errors));
        }
        let detail = self.detail.as_deref().filter(|d| !d.is_empty()).unwrap_or(&self.title);
        match self.status {
            401 => write!(f, "{detail}; pass --token or set OUTRIDER_TOKEN"),
            403 => write!(f, "forbidden: {detail}"),
            s if s >= 500 && !detail.starts_with("the server answered") => write!(f, "{detail} (HTTP {s})"),
            _ => f.write_str(detail),
        }
    }
}

impl std::error::Error for ApiError {}

/// `field: message; field: message`, the 422 form the brief and the API share.
pub fn join_field_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| {
            if e.field.is_empty() {
                e.message.clone()
            } else {
                format!("{}: {}", e.field, e.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Folds a message onto one line: the CLI's errors are one line each.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprocessable_lists_each_field() {
        let e = ApiError {
            status: 422,
            title: "Invalid document".into(),
            detail: None,
            errors: vec![
                FieldError::new("rules[0].burst", "must be at least 1"),
                FieldError::new("rules[1].key", "bad"),
            ],
        };
        assert_eq!(
            e.to_string(),
            "invalid document: rules[0].burst: must be at least 1; rules[1].key: bad"
        );
    }

    #[test]
    fn unauthorized_says_how_to_pass_a_token() {
        let e = ApiError {
            status: 401,
            title: "Unauthorized".into(),
            detail: None,
            errors: vec![],
        };
        assert!(e.to_string().contains("--token"), "{e}");
    }

    #[test]
    fn apply_error_says_what_was_applied() {
        let e = CliError::Apply {
            what: "document 2 (RateLimitPolicy web)".into(),
            applied: 1,
            source: Box::new(CliError::Unhealthy("x".into())),
        };
        assert_eq!(
            e.to_string(),
            "document 2 (RateLimitPolicy web): check failed: x; 1 earlier document was applied"
        );
    }
}
