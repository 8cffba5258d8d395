//! The proxy's own answers (429, 502, 503, 504, 400, 405): small plain-text bodies,
//! marked with why the proxy answered so that the metrics and access-log layers
//! can tell them from the upstream's; to a gRPC caller the same answer in gRPC form.

use super::{Call, Local, ProxyBody};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower::{Layer, Service};

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The text of a local answer, kept beside its body so that [`GrpcFormLayer`] can
/// say it as a `grpc-message`.
#[derive(Clone)]
struct Explanation(Bytes);

/// A local answer with `status` and a plain-text `body` (`&'static str` bodies are
/// not copied), marked with `why`.
pub fn local(status: StatusCode, body: impl Into<Bytes>, why: Local) -> Response<ProxyBody> {
    let body = body.into();
    let mut response = Response::new(Either::Right(Full::new(body.clone())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.extensions_mut().insert(why);
    response.extensions_mut().insert(Explanation(body));
    response
}

/// Why the proxy answered `response` itself, or `None` when the upstream did.
pub fn local_reason<B>(response: &Response<B>) -> Option<Local> {
    response.extensions().get::<Local>().copied()
}

/// Whether a request is a gRPC call (`application/grpc`, `application/grpc+proto`…).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status a local answer with this HTTP status means.
pub fn grpc_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 | 405 | 501 => 12, // UNIMPLEMENTED
        413 | 429 | 431 => 8,  // RESOURCE_EXHAUSTED
        502 | 503 => 14,       // UNAVAILABLE
        504 => 4,              // DEADLINE_EXCEEDED
        _ => 2,                // UNKNOWN
    }
}

/// Turns a local answer into a gRPC "trailers-only" response: HTTP 200 with
/// `grpc-status` and the explanation as a percent-encoded `grpc-message`, no body.
/// Other headers (`Retry-After`, `RateLimit`…) and the [`Local`] mark stay, so the
/// layers outside still tell it from the app's answer.
pub fn into_grpc_form(response: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, _) = response.into_parts();
    let code = grpc_status(parts.status);
    let message = parts
        .extensions
        .get::<Explanation>()
        .map(|e| percent_encode(e.0.trim_ascii()))
        .unwrap_or_default();
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code)));
    if let Ok(m) = HeaderValue::from_str(&message) {
        h.insert(GRPC_MESSAGE.clone(), m);
    }
    Response::from_parts(parts, Either::Right(Full::new(Bytes::new())))
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII but `%` as is, every
/// other byte (UTF-8 included) as `%XX`.
fn percent_encode(text: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What a layer does to the inner service's response on its way out (adds headers,
/// notes an extension).
pub trait OnResponse {
    fn on_response(self, response: &mut Response<ProxyBody>);
}

pin_project! {
    /// A layer's future: its own answer, ready at once, or the inner service's
    /// response with `after` applied to it.
    #[project = AnswerProjected]
    pub enum AnswerOr<F, A> {
        Answered { response: Option<Response<ProxyBody>> },
        Inner { #[pin] inner: F, after: Option<A> },
    }
}

impl<F, A> AnswerOr<F, A> {
    pub fn answered(response: Response<ProxyBody>) -> Self {
        AnswerOr::Answered {
            response: Some(response),
        }
    }
}

impl<F, A, E> Future for AnswerOr<F, A>
where
    F: Future<Output = Result<Response<ProxyBody>, E>>,
    A: OnResponse,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnswerProjected::Answered { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after completion: a caller bug, answered without panicking.
                None => Poll::Pending,
            },
            AnswerProjected::Inner { inner, after } => {
                let mut result = ready!(inner.poll(cx));
                if let (Ok(response), Some(after)) = (&mut result, after.take()) {
                    after.on_response(response);
                }
                Poll::Ready(result)
            }
        }
    }
}

/// Puts the proxy's own answers to gRPC callers in gRPC form (a gRPC client reads
/// `grpc-status`, not the HTTP status). Outermost, so that metrics and access logs
/// below it still record the HTTP status and reason.
#[derive(Clone, Copy, Default)]
pub struct GrpcFormLayer;

impl<S> Layer<S> for GrpcFormLayer {
    type Service = GrpcForm<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcForm { inner }
    }
}

#[derive(Clone)]
pub struct GrpcForm<S> {
    inner: S,
}

impl<S, B> Service<Call<B>> for GrpcForm<S>
where
    S: Service<Call<B>, Response = Response<ProxyBody>>,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = GrpcFormFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<B>) -> Self::Future {
        let grpc = is_grpc(&call.req);
        GrpcFormFuture {
            inner: self.inner.call(call),
            grpc,
        }
    }
}

pin_project! {
    pub struct GrpcFormFuture<F> {
        #[pin]
        inner: F,
        grpc: bool,
    }
}

impl<F, E> Future for GrpcFormFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(if *this.grpc && local_reason(&response).is_some() {
            into_grpc_form(response)
        } else {
            response
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_local_answer_in_grpc_form_keeps_its_reason_and_headers() {
        let mut limited = local(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limited: 100% ünder\n",
            Local::RateLimited,
        );
        limited
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        let grpc = into_grpc_form(limited);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "8");
        assert_eq!(grpc.headers()["grpc-message"], "rate limited: 100%25 %C3%BCnder");
        assert_eq!(grpc.headers()["content-type"], "application/grpc");
        assert_eq!(grpc.headers()["retry-after"], "1");
        assert_eq!(local_reason(&grpc), Some(Local::RateLimited));
        assert!(grpc.into_body().collect().await.unwrap().to_bytes().is_empty());
    }

    #[test]
    fn http_statuses_map_to_grpc_codes() {
        let map: Vec<u8> = [429, 503, 504, 502, 400, 403]
            .iter()
            .map(|s| grpc_status(StatusCode::from_u16(*s).unwrap()))
            .collect();
        assert_eq!(map, [8, 14, 4, 14, 13, 7]);
    }
}
