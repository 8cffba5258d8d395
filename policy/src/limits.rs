//! Size limits that keep every snapshot deliverable.
//!
//! A service's snapshot carries its RateLimitPolicy, LoggingPolicy, AuthorizationPolicy and all its config
//! documents in one control-stream message, so each of them is bounded when it is
//! written and the message limit both ends of the stream use is derived from the sum.
//! Nothing the API accepts can then make a snapshot that a sidecar refuses to read.

/// One policy document or config document, as a request body (`413` beyond).
pub const DOCUMENT_MAX_BYTES: usize = 1024 * 1024;

/// All of one service's config documents together (`413` beyond).
pub const SERVICE_CONFIG_MAX_BYTES: usize = 4 * 1024 * 1024;

/// How many config documents one service may have (`413` beyond): each also costs
/// a file, a name and a content type in every snapshot.
pub const SERVICE_CONFIG_MAX_DOCUMENTS: usize = 256;

/// The longest content type a config document keeps; it travels in every snapshot
/// and comes back as a response header.
pub const CONTENT_TYPE_MAX_BYTES: usize = 255;

/// One secret's value (`413` beyond): passwords, keys and certificates, not files.
pub const SECRET_MAX_BYTES: usize = 64 * 1024;

/// How many secrets one service may have (`413` beyond); with [`SECRET_MAX_BYTES`]
/// this bounds what they add to a snapshot.
pub const SERVICE_SECRETS_MAX: usize = 64;

/// The largest snapshot the limits above allow, with room for the framing of each
/// field: three policies of a service (routing travels to callers separately), every
/// config document at its longest name and content type, every secret at its
/// largest, and the fixed fields.
pub const SNAPSHOT_MAX_BYTES: usize = 3 * DOCUMENT_MAX_BYTES
    + SERVICE_CONFIG_MAX_BYTES
    + SERVICE_CONFIG_MAX_DOCUMENTS * (FILE_NAME_MAX_BYTES + CONTENT_TYPE_MAX_BYTES + 64)
    + SERVICE_SECRETS_MAX * (SECRET_MAX_BYTES + FILE_NAME_MAX_BYTES + 64)
    + 64 * 1024;

/// A config document's name is a file name: never longer than this on any file system.
const FILE_NAME_MAX_BYTES: usize = 255;

/// The control stream's message limit on both ends (the sidecar's decoder, the
/// control plane's encoder). Well above [`SNAPSHOT_MAX_BYTES`]; the rest is room for
/// a full `Destinations` answer naming many services with large RoutingPolicies.
pub const CONTROL_MESSAGE_MAX_BYTES: usize = 64 * 1024 * 1024;

// The largest snapshot the API accepts always fits the control stream.
const _: () = assert!(SNAPSHOT_MAX_BYTES < CONTROL_MESSAGE_MAX_BYTES);
