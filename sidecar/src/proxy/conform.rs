//! The HTTP conformance layer both proxies run before anything is routed or limited:
//! it refuses what must never be forwarded (CONNECT, HTTP/1.1 without exactly one
//! `Host`), makes the name a request was sent to unambiguous, drops `Upgrade: h2c`
//! (a tunnel past every layer), adds `Via` both ways, and refuses response heads
//! past the limit.

use super::client::{head_too_large, HEADERS_TOO_LARGE};
use super::headers::{append_via, join_cookies, HTTP2_SETTINGS};
use super::respond::{local, local_reason};
use super::{Call, Local, ProxyBody};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower::{Layer, Service};

const CONNECT_REFUSED: &str =
    "CONNECT is not supported: the mesh routes requests, not tunnels; call the service by name (`Host: <service>` or `http://<service>/...`)\n";
const NO_HOST: &str = "an HTTP/1.1 request needs a Host header (RFC 9112 §3.2)\n";
const TWO_HOSTS: &str = "a request may carry only one Host header (RFC 9112 §3.2)\n";

#[derive(Clone, Copy, Default)]
pub struct ConformLayer;

impl<S> Layer<S> for ConformLayer {
    type Service = Conform<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Conform { inner }
    }
}

#[derive(Clone)]
pub struct Conform<S> {
    inner: S,
}

impl<S, B> Service<Call<B>> for Conform<S>
where
    S: Service<Call<B>, Response = Response<ProxyBody>>,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = ConformFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call<B>) -> Self::Future {
        match conform(&mut call.req) {
            Ok(()) => ConformFuture::Inner {
                inner: self.inner.call(call),
            },
            Err((status, why)) => ConformFuture::Refused {
                response: Some(local(status, why, Local::Refused)),
            },
        }
    }
}

/// Checks and normalises a request in place, or says why it is refused.
pub fn conform<B>(req: &mut Request<B>) -> Result<(), (StatusCode, &'static str)> {
    if req.method() == Method::CONNECT {
        return Err((StatusCode::METHOD_NOT_ALLOWED, CONNECT_REFUSED));
    }
    let version = req.version();
    match version {
        Version::HTTP_10 | Version::HTTP_11 => {
            let mut hosts = req.headers().get_all(header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (_, Some(_)) => return Err((StatusCode::BAD_REQUEST, TWO_HOSTS)),
                (None, None) if version == Version::HTTP_11 => return Err((StatusCode::BAD_REQUEST, NO_HOST)),
                _ => {}
            }
            // Absolute form: the URI's authority is the target and a different Host
            // is ignored, so the next hop must not see it (RFC 9112 §3.2.2).
            if let Some(authority) = req.uri().authority() {
                let same = req
                    .headers()
                    .get(header::HOST)
                    .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()));
                if !same {
                    if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                        req.headers_mut().insert(header::HOST, v);
                    }
                }
            }
            if asks_for_h2c(req) {
                // The app would switch the connection to HTTP/2 behind the proxy's
                // back: every later request on it would skip limits, metrics and logs.
                req.headers_mut().remove(header::UPGRADE);
                req.headers_mut().remove(&HTTP2_SETTINGS);
            }
        }
        Version::HTTP_2 => {
            join_cookies(req.headers_mut());
            // The name the caller used travels in `Host` on the mesh's own hops, whose
            // :authority is the instance the request is sent to.
            if !req.headers().contains_key(header::HOST) {
                if let Some(v) = req
                    .uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
        }
        _ => {}
    }
    append_via(req.headers_mut(), version);
    Ok(())
}

fn asks_for_h2c<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("h2c"))
}

pin_project! {
    #[project = Projected]
    pub enum ConformFuture<F> {
        Refused { response: Option<Response<ProxyBody>> },
        Inner { #[pin] inner: F },
    }
}

impl<F, E> Future for ConformFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after completion: a caller bug, answered without panicking.
                None => Poll::Pending,
            },
            Projected::Inner { inner } => {
                let mut response = ready!(inner.poll(cx))?;
                if local_reason(&response).is_none() && head_too_large(response.headers()) {
                    return Poll::Ready(Ok(local(
                        StatusCode::BAD_GATEWAY,
                        HEADERS_TOO_LARGE,
                        Local::UpstreamFailed,
                    )));
                }
                // The proxy's own answers did not pass through it.
                if local_reason(&response).is_none() {
                    let version = response.version();
                    append_via(response.headers_mut(), version);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(builder: http::request::Builder) -> Request<()> {
        builder.body(()).unwrap()
    }

    #[test]
    fn connect_is_refused_with_a_reason() {
        let mut r = req(Request::builder()
            .method("CONNECT")
            .uri("web:80")
            .header("host", "web:80"));
        let (status, why) = conform(&mut r).unwrap_err();
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(why.contains("call the service by name"), "{why}");
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        let mut none = req(Request::get("/"));
        assert_eq!(conform(&mut none).unwrap_err().0, StatusCode::BAD_REQUEST);
        let mut two = req(Request::get("/").header("host", "a").header("host", "b"));
        assert_eq!(conform(&mut two).unwrap_err().0, StatusCode::BAD_REQUEST);
        let mut old = req(Request::get("/").version(Version::HTTP_10));
        assert!(conform(&mut old).is_ok(), "HTTP/1.0 may omit Host");
    }

    #[test]
    fn absolute_form_authority_replaces_a_conflicting_host() {
        let mut r = req(Request::get("http://web/x").header("host", "other"));
        conform(&mut r).unwrap();
        assert_eq!(r.headers()["host"], "web");
        assert_eq!(r.headers()["via"], "1.1 outrider");
    }

    #[test]
    fn an_h2c_upgrade_is_dropped_but_websocket_stays() {
        let mut h2c = req(Request::get("/")
            .header("host", "web")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"));
        conform(&mut h2c).unwrap();
        assert!(!h2c.headers().contains_key("upgrade"));
        assert!(!h2c.headers().contains_key("http2-settings"));
        let mut ws = req(Request::get("/")
            .header("host", "web")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket"));
        conform(&mut ws).unwrap();
        assert_eq!(ws.headers()["upgrade"], "websocket");
    }

    #[test]
    fn http2_keeps_its_authority_as_host_and_joins_cookies() {
        let mut r = req(Request::get("http://web.default:8080/x")
            .version(Version::HTTP_2)
            .header("cookie", "a=1")
            .header("cookie", "b=2"));
        conform(&mut r).unwrap();
        assert_eq!(r.headers()["host"], "web.default:8080");
        assert_eq!(r.headers()["cookie"], "a=1; b=2");
        assert_eq!(r.headers()["via"], "2 outrider");
    }
}
