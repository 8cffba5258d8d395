use serde::Serialize;

/// One bad field of a document: its JSON path (`rules[0].burst`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("malformed JSON: {0}")]
    Malformed(String),
    #[error("invalid document: {}", summarize(.0))]
    Invalid(Vec<FieldError>),
    #[error("unknown policy kind {0:?} (expected routing, rate-limit, logging or authorization)")]
    UnknownKind(String),
}

fn summarize(errs: &[FieldError]) -> String {
    errs.iter()
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
