//! Pooled HTTP clients to upstreams (the app, other instances): one builder, so both
//! proxies connect with the same timeouts and socket options.

use super::{CONNECT_TIMEOUT, MAX_HEADER_BYTES};
use http::Uri;
use hyper::body::Body;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tower::Service;

/// Idle pooled connections are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How many header fields an upstream's HTTP/1.1 response head may have (hyper's
/// default, as for requests): past it the proxy answers 502 with that reason.
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// A pooled client speaking HTTP/1.1, or HTTP/2 with prior knowledge when `http2`.
/// Response heads (and HTTP/2 trailers, such as a long `grpc-message`) may be as large
/// as the request heads the proxy accepts; hyper's HTTP/2 default is only 16 KiB.
pub fn pooled<B>(http2: bool) -> Client<HttpConnector, B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pooled_via(connector(), http2)
}

/// A pooled client like [`pooled`] that dials through `connector` (the outbound's
/// mTLS one).
pub fn pooled_via<C, B>(connector: C, http2: bool) -> Client<C, B>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    builder(http2).build(connector)
}

/// TCP with the proxies' connect timeout and `TCP_NODELAY`.
pub fn connector() -> HttpConnector {
    connector_via(HttpConnector::new(), CONNECT_TIMEOUT)
}

/// `connector` (its own resolver) with `TCP_NODELAY` and `timeout` to connect.
pub fn connector_via<R>(mut connector: HttpConnector<R>, timeout: Duration) -> HttpConnector<R> {
    connector.set_connect_timeout(Some(timeout));
    connector.set_nodelay(true);
    connector
}

fn builder(http2: bool) -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .http2_only(http2)
        .http2_max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        .http1_max_buf_size(MAX_HEADER_BYTES.max(8192))
        .http1_max_headers(MAX_RESPONSE_HEADERS);
    builder
}

/// A connector that dials one address whatever the request's URI names, so that the
/// URI's authority can be the name the caller used (HTTP/2 sends it as
/// `:authority`) while the connection goes to the app.
#[derive(Clone)]
pub struct FixedConnector {
    inner: HttpConnector,
    target: Uri,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    // One allocation per new connection, not per request.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let connecting = self.inner.call(self.target.clone());
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// A pooled client like [`pooled`] whose connections all go to `target`.
pub fn pooled_to<B>(target: SocketAddr, http2: bool) -> Client<FixedConnector, B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let target = Uri::builder()
        .scheme("http")
        .authority(target.to_string())
        .path_and_query("/")
        .build()
        .unwrap_or_else(|_| Uri::from_static("http://127.0.0.1/"));
    builder(http2).build(FixedConnector {
        inner: connector(),
        target,
    })
}

/// The proxy's 502 for a response head past the limits.
pub const HEADERS_TOO_LARGE: &str = "the response headers are too many or too large (at most 100 fields, 64 KiB)\n";

/// Whether a response head that arrived is larger than [`MAX_HEADER_BYTES`]. hyper's
/// HTTP/1.1 client bounds the head only by its read buffer, which can hold more.
pub fn head_too_large(headers: &http::HeaderMap) -> bool {
    let mut bytes = 0;
    for (name, value) in headers {
        // "name: value\r\n"
        bytes += name.as_str().len() + value.len() + 4;
        if bytes > MAX_HEADER_BYTES {
            return true;
        }
    }
    false
}

/// What went wrong with an upstream's answer, when it is the answer's fault rather
/// than the connection's: said in the proxy's 502 instead of "unreachable".
pub fn failure_reason(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                return Some(HEADERS_TOO_LARGE);
            }
            if h.is_parse() {
                return Some("the app's response is not valid HTTP\n");
            }
        }
        source = e.source();
    }
    None
}
