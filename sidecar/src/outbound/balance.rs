//! Endpoint selection: power of two choices on outstanding requests weighted by a
//! decaying failure score (so a fast-failing instance does not win by being idle),
//! skipping endpoints ejected by passive outlier detection (consecutive failures).
//!
//! Endpoint state survives snapshot updates (it is carried over by address), so a
//! new endpoint list does not re-admit a failing instance or forget load.
//! [`BalanceLayer`] applies this to each attempt and feeds its outcome back.

use super::endpoint::{EndpointState, InFlight};
use super::{Attempt, Clock, Dispatch, Outcome, Refused, Tried};
use crate::state::SidecarState;
use http::uri::Scheme;
use http::Uri;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tower::{Layer, Service};
use tracing::warn;

/// Picks an endpoint by power of two choices: two random candidates that are not
/// ejected (nor `avoid`, the one a retry just failed on, when there is a choice),
/// the one with fewer requests in flight wins. When every endpoint is ejected, all
/// are candidates again: a degraded answer beats none (a panic threshold, as Envoy's).
pub fn pick<'a>(
    endpoints: &'a [Arc<EndpointState>],
    now_ms: u64,
    avoid: Option<&EndpointState>,
    rng: &mut impl rand::Rng,
) -> Option<&'a Arc<EndpointState>> {
    let usable = |e: &EndpointState| !e.is_ejected(now_ms) && !avoid.is_some_and(|a| std::ptr::eq(a, e));
    let mut n = endpoints.iter().filter(|e| usable(e)).count();
    let panic_mode = n == 0;
    if panic_mode {
        n = endpoints.len();
    }
    if n == 0 {
        return None;
    }
    let nth = |k: usize| endpoints.iter().filter(|e| panic_mode || usable(e)).nth(k);
    if n == 1 {
        return nth(0);
    }
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    let (ea, eb) = (nth(a)?, nth(b)?);
    Some(if eb.cost(now_ms) < ea.cost(now_ms) { eb } else { ea })
}

/// Picks the endpoint of each attempt, counts it in flight while the attempt runs,
/// and records the outcome in its failure score and ejection state (counting
/// ejections in the sidecar's metrics).
#[derive(Clone)]
pub struct BalanceLayer {
    clock: Clock,
    state: Arc<SidecarState>,
}

impl BalanceLayer {
    pub fn new(clock: Clock, state: Arc<SidecarState>) -> Self {
        Self { clock, state }
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Balance {
            clock: self.clock,
            state: Arc::clone(&self.state),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Balance<S> {
    clock: Clock,
    state: Arc<SidecarState>,
    inner: S,
}

impl<S, B, RB> Service<Attempt<B>> for Balance<S>
where
    S: Service<Dispatch<B>, Response = Outcome<RB>, Error = std::convert::Infallible>,
{
    type Response = Tried<RB>;
    type Error = Refused;
    type Future = BalanceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, attempt: Attempt<B>) -> Self::Future {
        let Attempt {
            mut req,
            path,
            endpoints,
            avoid,
            timer,
            progress,
            on_client,
        } = attempt;
        let now_ms = self.clock.now_ms();
        let Some(endpoint) = pick(&endpoints, now_ms, avoid.as_deref(), &mut rand::rng()).cloned() else {
            return BalanceFuture::NoInstance;
        };
        tracing::Span::current().record("pod", &*endpoint.pod);
        let mut uri = http::uri::Parts::default();
        // mTLS to an instance with an identity, once this sidecar holds one too; the
        // scheme keeps the two kinds of connection in separate pools.
        uri.scheme = Some(if endpoint.identity.is_some() && self.state.identity.load().is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        uri.authority = Some(endpoint.authority.clone());
        uri.path_and_query = Some(path);
        // Unreachable fallback: scheme, authority and path are all set.
        *req.uri_mut() = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("http://127.0.0.1/"));
        let in_flight = endpoint.start();
        BalanceFuture::Sent {
            inner: self.inner.call(Dispatch {
                req,
                timer,
                progress,
                on_client,
            }),
            endpoint: Some((endpoint, in_flight)),
            clock: self.clock,
            state: Arc::clone(&self.state),
        }
    }
}

pin_project! {
    #[project = Projected]
    pub enum BalanceFuture<F> {
        NoInstance,
        Sent {
            #[pin]
            inner: F,
            endpoint: Option<(Arc<EndpointState>, InFlight)>,
            clock: Clock,
            state: Arc<SidecarState>,
        },
    }
}

impl<F, RB> Future for BalanceFuture<F>
where
    F: Future<Output = Result<Outcome<RB>, std::convert::Infallible>>,
{
    type Output = Result<Tried<RB>, Refused>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (inner, endpoint, clock, state) = match self.project() {
            Projected::NoInstance => return Poll::Ready(Err(Refused::NoInstance)),
            Projected::Sent {
                inner,
                endpoint,
                clock,
                state,
            } => (inner, endpoint, clock, state),
        };
        let Ok(outcome) = ready!(inner.poll(cx));
        // Polled again after completion: a caller bug, answered without panicking.
        let Some((endpoint, in_flight)) = endpoint.take() else {
            return Poll::Ready(Err(Refused::NoInstance));
        };
        drop(in_flight);
        match &outcome {
            Outcome::Answered(_) => endpoint.record_success(clock.now_ms()),
            // The caller broke its own request: the instance did nothing either way,
            // so its count of consecutive failures and its score stay as they were.
            Outcome::ClientFault(_) => {}
            Outcome::ServerError(_) | Outcome::Timeout | Outcome::ConnectFailure(_) | Outcome::Reset(_) => {
                if endpoint.record_failure(clock.now_ms()) {
                    state.metrics.record_ejection();
                    warn!(service = %endpoint.stats.service, pod = %endpoint.pod, "ejecting an instance after consecutive failures");
                }
            }
        }
        Poll::Ready(Ok(Tried { outcome, endpoint }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::endpoint::{BASE_EJECTION_MS, EJECT_AFTER_FAILURES};
    use super::super::stats::SubsetStats;
    use super::*;

    fn endpoints(n: usize) -> Vec<Arc<EndpointState>> {
        let stats = Arc::new(SubsetStats::new("web", "v1"));
        (0..n)
            .map(|i| {
                Arc::new(EndpointState::new(
                    format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                    "v1",
                    &format!("p{i}"),
                    stats.clone(),
                ))
            })
            .collect()
    }

    #[test]
    fn two_choices_avoid_the_busy_endpoint() {
        let eps = endpoints(2);
        let _busy: Vec<_> = (0..10).map(|_| eps[0].start()).collect();
        let mut rng = rand::rng();
        for _ in 0..100 {
            assert_eq!(pick(&eps, 0, None, &mut rng).unwrap().pod.as_ref(), "p1");
        }
    }

    #[test]
    fn consecutive_failures_eject_and_time_readmits() {
        let eps = endpoints(3);
        for i in 0..EJECT_AFTER_FAILURES {
            assert_eq!(eps[0].record_failure(1000), i + 1 == EJECT_AFTER_FAILURES);
        }
        let mut rng = rand::rng();
        for _ in 0..200 {
            assert_ne!(pick(&eps, 1000, None, &mut rng).unwrap().pod.as_ref(), "p0");
        }
        assert!(!eps[0].is_ejected(1000 + BASE_EJECTION_MS));
        // A success resets the count; failures must be consecutive.
        for _ in 0..EJECT_AFTER_FAILURES - 1 {
            eps[1].record_failure(0);
        }
        eps[1].record_success(0);
        assert!(!eps[1].record_failure(0));
    }

    #[test]
    fn a_failing_endpoint_loses_the_comparison_until_its_score_decays() {
        let eps = endpoints(2);
        // Half of its requests fail: never five in a row, so it is not ejected.
        for i in 0..20 {
            if i % 2 == 0 {
                eps[0].record_failure(0);
            } else {
                eps[0].record_success(0);
            }
        }
        assert!(!eps[0].is_ejected(0));
        let mut rng = rand::rng();
        for _ in 0..100 {
            assert_eq!(pick(&eps, 0, None, &mut rng).unwrap().pod.as_ref(), "p1");
        }
        assert_eq!(eps[0].failure_score(60_000), 0, "forgiven after a minute");
    }

    #[test]
    fn all_ejected_falls_back_to_all() {
        let eps = endpoints(2);
        for e in &eps {
            for _ in 0..EJECT_AFTER_FAILURES {
                e.record_failure(0);
            }
        }
        assert!(pick(&eps, 1, None, &mut rand::rng()).is_some());
    }

    #[test]
    fn a_retry_avoids_the_endpoint_that_just_failed() {
        let eps = endpoints(2);
        for _ in 0..50 {
            let p = pick(&eps, 0, Some(&eps[0]), &mut rand::rng()).unwrap();
            assert_eq!(p.pod.as_ref(), "p1");
        }
        assert_eq!(
            pick(&eps[..1], 0, Some(&eps[0]), &mut rand::rng())
                .unwrap()
                .pod
                .as_ref(),
            "p0"
        );
    }

    mod layer {
        use super::super::super::testing::{attempt, destination};
        use super::super::*;
        use super::EJECT_AFTER_FAILURES;
        use bytes::Bytes;
        use http_body_util::Empty;
        use std::convert::Infallible;
        use std::time::Duration;
        use tower::{service_fn, ServiceExt};

        /// An inner stack whose attempts all time out, recording where they went.
        fn timing_out(
            seen: Arc<std::sync::Mutex<Vec<String>>>,
        ) -> impl Service<Dispatch<Empty<Bytes>>, Response = Outcome<()>, Error = Infallible> + Clone {
            service_fn(move |d: Dispatch<Empty<Bytes>>| {
                seen.lock().unwrap().push(d.req.uri().to_string());
                async { Ok(Outcome::Timeout) }
            })
        }

        #[tokio::test]
        async fn failed_attempts_eject_the_endpoint_they_went_to() {
            let dest = destination(1);
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let state = Arc::new(SidecarState::new());
            let balance = BalanceLayer::new(Clock::new(), Arc::clone(&state)).layer(timing_out(Arc::clone(&seen)));
            for _ in 0..EJECT_AFTER_FAILURES {
                let tried = balance
                    .clone()
                    .oneshot(attempt(&dest, Empty::new(), Duration::from_secs(1)))
                    .await
                    .unwrap();
                assert_eq!(&*tried.endpoint.pod, "web-0");
            }
            assert_eq!(*seen.lock().unwrap(), vec!["http://127.0.0.1:10000/x"; 5]);
            assert!(dest.all[0].is_ejected(Clock::new().now_ms()));
            assert_eq!(dest.all[0].outstanding(), 0, "nothing is left in flight");
            assert_eq!(state.metrics.ejections_total(), 1);
        }

        #[tokio::test]
        async fn no_endpoint_is_refused_without_calling_inward() {
            let dest = destination(0);
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let balance =
                BalanceLayer::new(Clock::new(), Arc::new(SidecarState::new())).layer(timing_out(Arc::clone(&seen)));
            let refused = balance
                .oneshot(attempt(&dest, Empty::new(), Duration::from_secs(1)))
                .await;
            assert!(matches!(refused, Err(Refused::NoInstance)));
            assert!(seen.lock().unwrap().is_empty());
        }
    }
}
