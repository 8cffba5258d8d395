//! The proxy's own answers (429, 502, 503, 504, 400): small plain-text bodies,
//! marked with why the proxy answered so that the metrics and access-log layers
//! can tell them from the upstream's.

use super::{Local, ProxyBody};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

/// A local answer with `status` and a plain-text `body` (`&'static str` bodies are
/// not copied), marked with `why`.
pub fn local(status: StatusCode, body: impl Into<Bytes>, why: Local) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.extensions_mut().insert(why);
    response
}

/// Why the proxy answered `response` itself, or `None` when the upstream did.
pub fn local_reason<B>(response: &Response<B>) -> Option<Local> {
    response.extensions().get::<Local>().copied()
}
