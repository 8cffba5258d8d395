//! The error body of every REST error: RFC 9457 problem details
//! (`application/problem+json`), with the fields Outrider adds.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The content type of every error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error, as every route answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the status ("Invalid document", "Stale write", …).
    pub title: String,
    /// The HTTP status code, repeated.
    pub status: u16,
    /// What went wrong, for a person; for a 422, every field error joined by `; `.
    pub detail: String,
    /// 422 only: every bad field of the document, at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// 412 only: the revision the document is at now (absent when it was deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<u64>,
}

impl Problem {
    /// A problem with the usual `about:blank` type and no extra fields.
    pub fn new(status: u16, title: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            problem_type: "about:blank".into(),
            title: title.into(),
            status,
            detail: detail.into(),
            errors: None,
            current_revision: None,
        }
    }
}

/// One bad field of a document: its JSON path (`rules[0].burst`; empty for the
/// document as a whole) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl From<&outrider_policy::FieldError> for FieldError {
    fn from(e: &outrider_policy::FieldError) -> Self {
        Self {
            field: e.field.clone(),
            message: e.message.clone(),
        }
    }
}

impl From<outrider_policy::FieldError> for FieldError {
    fn from(e: outrider_policy::FieldError) -> Self {
        Self {
            field: e.field,
            message: e.message,
        }
    }
}
