//! The core both proxies are built on: the accept loop, the request every layer sees
//! ([`Call`]), hop-by-hop rules, HTTP conformance, the proxy's own answers (in gRPC
//! form to gRPC callers) and upgrade splicing.
//!
//! The inbound and outbound proxies each assemble their request path from tower layers
//! (`inbound::InboundProxy::stack`, `outbound::OutboundProxy::stack`); the layers both
//! use (gRPC form, snapshot, trace span, access log, conformance) live here, and neither proxy imports the other.

pub mod access_log;
pub mod body;
pub mod client;
pub mod conform;
pub mod headers;
pub mod identity;
pub mod redirect;
pub mod respond;
mod server;
pub mod snapshot;
pub mod sniff;
pub mod trace;
pub mod upgrade;

pub use server::{
    serve, server_builder, Accept, Accepted, ConnInfo, ConnIo, OriginalDst, Plain, DRAIN_TIMEOUT, MAX_HEADER_BYTES,
};

use crate::state::Applied;
use bytes::Bytes;
use http::Request;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long to wait for an upstream (the app, another instance's inbound port) to
/// accept a TCP connection. A live peer accepts at once; hanging here means it is
/// wedged or gone.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Responses carry either the upstream's streamed body or a small local one.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// One request as the layers of a proxy see it: the request itself and what the
/// proxy knows about it. Generic over the body so that a layer can be tested with
/// an in-memory body.
pub struct Call<B = Incoming> {
    pub req: Request<B>,
    pub peer: SocketAddr,
    /// When the request head arrived: latencies and durations count from here.
    pub started: Instant,
    /// The applied snapshot, loaded once per request by [`snapshot::LoadSnapshot`]:
    /// every layer below enforces the same one. `None` until something is applied.
    pub applied: Option<Arc<Applied>>,
}

impl<B> Call<B> {
    pub fn new(req: Request<B>, peer: SocketAddr) -> Self {
        Call {
            req,
            peer,
            started: Instant::now(),
            applied: None,
        }
    }
}

/// Why the proxy answered a request itself. Set as a response extension by
/// [`respond::local`] (only on those rare answers), read by the layers that count
/// or log them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// Refused by the rate limiter; the upstream never saw the request.
    RateLimited,
    /// The upstream could not be reached or failed mid-exchange.
    UpstreamFailed,
    /// Refused before any upstream was chosen (bad request, CONNECT, unknown service,
    /// no healthy instance).
    Refused,
    /// The client broke its own request (aborted or malformed body, a body that
    /// stalled): answered `400`/`408` and counted against no upstream.
    ClientFault,
}

impl Local {
    /// Whether an upstream was contacted for this answer (so an access record names it).
    pub fn reached_upstream(self) -> bool {
        matches!(self, Local::UpstreamFailed | Local::ClientFault)
    }
}

/// The innermost cause of `e`: for a broken request body, what was wrong with it,
/// without the HTTP client's wrapping.
pub fn root_cause(e: &(dyn StdError + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Displays an error with its sources, `a: b: c`, for one-line logs.
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
