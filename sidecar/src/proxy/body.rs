//! A request body that reports how its sending goes: when its last byte was handed to
//! the upstream connection (the moment the timers on a response head start), when the
//! previous frame came, and whether the client's side broke (an abort, a malformed
//! chunk), so that the proxy can tell a client's fault from an upstream's.
//!
//! The body is polled by the upstream connection's task and the timers live in the
//! request's task; they share one [`Progress`] of atomics, and the body wakes the
//! request's task when the request has been sent or has failed.

use futures::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// `sent_ms` before the request has been sent in full.
const NOT_YET: u64 = u64::MAX;

/// How the sending of one request body goes, shared by the body and its timers.
pub struct Progress {
    /// Millisecond times below are counted from here (the body's creation).
    base: Instant,
    sent_ms: AtomicU64,
    last_frame_ms: AtomicU64,
    /// The body's last poll found nothing from the client (as opposed to the upstream
    /// not asking for more), so a stall there is the client's.
    waiting_on_client: AtomicBool,
    client_failed: AtomicBool,
    waker: AtomicWaker,
}

impl Progress {
    fn new() -> Self {
        Progress {
            base: Instant::now(),
            sent_ms: AtomicU64::new(NOT_YET),
            last_frame_ms: AtomicU64::new(0),
            waiting_on_client: AtomicBool::new(false),
            client_failed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        // Saturates after 584 million years; below NOT_YET for any real run.
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(NOT_YET - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn mark_sent(&self) {
        let now = self.now_ms();
        if self
            .sent_ms
            .compare_exchange(NOT_YET, now, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// When the whole request had been handed to the upstream connection.
    pub fn sent_at(&self) -> Option<Instant> {
        match self.sent_ms.load(Ordering::Acquire) {
            NOT_YET => None,
            ms => Some(self.at(ms)),
        }
    }

    /// Whether the client's body failed (aborted, malformed) before it ended.
    pub fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Acquire)
    }

    /// When the body last yielded a frame (its creation before the first).
    pub fn last_frame_at(&self) -> Instant {
        self.at(self.last_frame_ms.load(Ordering::Relaxed))
    }

    /// Whether the body is waiting for the client (rather than for the upstream to
    /// take what it already has).
    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Relaxed)
    }

    /// Wakes `waker` when the request has been sent in full or its body failed.
    /// Register before reading [`Self::sent_at`], so that no change is missed.
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }
}

pin_project! {
    /// `B`, reporting to a [`Progress`].
    pub struct Watched<B> {
        #[pin]
        inner: B,
        progress: Arc<Progress>,
    }
}

impl<B: Body> Watched<B> {
    /// Wraps `inner`; a body that is already at its end counts as sent at once (the
    /// upstream connection never polls it).
    pub fn new(inner: B) -> (Self, Arc<Progress>) {
        let progress = Arc::new(Progress::new());
        if inner.is_end_stream() {
            progress.mark_sent();
        }
        let watched = Watched {
            inner,
            progress: Arc::clone(&progress),
        };
        (watched, progress)
    }
}

impl<B: Body> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let progress = &**this.progress;
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Pending => progress.waiting_on_client.store(true, Ordering::Relaxed),
            Poll::Ready(None) => progress.mark_sent(),
            Poll::Ready(Some(Err(_))) => {
                progress.client_failed.store(true, Ordering::Release);
                progress.waker.wake();
            }
            Poll::Ready(Some(Ok(_))) => {
                progress.waiting_on_client.store(false, Ordering::Relaxed);
                progress.last_frame_ms.store(progress.now_ms(), Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            // The connection stops polling a body that says it is done, so its last
            // frame is the moment it was sent.
            self.progress.mark_sent();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};

    #[tokio::test]
    async fn a_body_counts_as_sent_after_its_last_frame() {
        let (mut body, progress) = Watched::new(Full::new(Bytes::from_static(b"abc")));
        assert!(progress.sent_at().is_none());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        // Full knows it is done after its one frame: the connection asks, not polls.
        assert!(body.is_end_stream());
        assert!(progress.sent_at().is_some());
        assert!(!progress.client_failed());
    }

    #[test]
    fn an_empty_body_is_sent_at_once() {
        let (_body, progress) = Watched::new(Empty::<Bytes>::new());
        assert!(progress.sent_at().is_some());
    }

    #[tokio::test]
    async fn a_failing_body_is_the_clients_fault_and_never_sent() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err(std::io::ErrorKind::UnexpectedEof.into()),
        ];
        let (body, progress) = Watched::new(StreamBody::new(futures::stream::iter(frames)));
        assert!(body.collect().await.is_err());
        assert!(progress.client_failed());
        assert!(progress.sent_at().is_none());
    }
}
