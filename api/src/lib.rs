//! The REST boundary of the control plane (`/api/v1`): every request and response body
//! as a serde type with its OpenAPI schema, shared by the server and its clients.
//!
//! These types are the wire format and nothing more: they carry no behaviour, no I/O
//! and no validation beyond their shape (the policy model in `outrider-policy`
//! validates documents). Field names are camelCase as on the wire; a field that a
//! response may leave out is an `Option` skipped when `None`, while a field the server
//! always sends, possibly as `null`, is an `Option` that is never skipped.

pub mod canary;
pub mod configs;
pub mod events;
pub mod join_tokens;
pub mod policies;
pub mod problem;
pub mod revisions;
pub mod secrets;
pub mod services;
pub mod sidecars;
pub mod tokens;

pub use canary::{CanaryWeightRequest, RolloutRequest, RolloutState, RolloutStatus, StepFigures, WindowFigures};
pub use configs::{ConfigDeleteResponse, ConfigDeleted, ConfigMeta, ConfigPutResponse, ConfigSize};
pub use events::{ChangeEvent, CHANGE_EVENT, RESYNC_EVENT};
pub use join_tokens::{CreatedJoinToken, JoinTokenInfo, JoinTokenRevoked, NewJoinToken};
pub use policies::{
    DryRunReport, PolicyDeleteResponse, PolicyDeleted, PolicyKindName, PolicyPutResponse, PolicyRecord, WriteQuery,
};
pub use problem::{FieldError, Problem, PROBLEM_JSON};
pub use revisions::{Propagation, RevisionDetail, RevisionQuery, RevisionSummary};
pub use secrets::{SecretDeleteResponse, SecretDeleted, SecretMeta, SecretPutResponse};
pub use services::{InstanceSummary, ServiceDetail, ServiceSummary, SubsetInstances, SubsetTraffic};
pub use sidecars::{
    AuthzDenied, DestinationFigures, LastNack, LogShipping, Sidecar, SidecarHealth, SidecarQuery, SidecarStatus,
    DEFAULT_SIDECAR_PAGE, MAX_SIDECAR_PAGE,
};
pub use tokens::{CreatedToken, NewToken, Role, TokenInfo, TokenRevoked};

/// The prefix every REST route lives under.
pub const API_PREFIX: &str = "/api/v1";
