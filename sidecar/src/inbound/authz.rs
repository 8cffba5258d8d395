//! The inbound authorization layer: removes any client-sent `x-outrider-peer-identity`
//! and sets it from the connection's proven identity, then enforces the service's
//! AuthorizationPolicy (a denial is a `403` problem+json naming the rule; gRPC callers
//! get PERMISSION_DENIED from the gRPC form layer above). In dry-run mode it lets the
//! request through, counting and (rate-limited) logging what would have been denied.

use crate::authz::{AuthzDecision, Verdict, MTLS_STRICT};
use crate::proxy::identity::{PeerIdentity, PEER_IDENTITY_HEADER};
use crate::proxy::respond::{local, AnswerOr, OnResponse};
use crate::proxy::{Call, Local, ProxyBody};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tracing::{debug, info};

#[derive(Clone, Copy, Default)]
pub struct AuthzLayer;

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authz { inner }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
}

impl OnResponse for AuthzDecision {
    fn on_response(self, response: &mut Response<ProxyBody>) {
        response.extensions_mut().insert(self);
    }
}

/// A denial, or the app's response carrying the decision for its access record.
pub type AuthzFuture<F> = AnswerOr<F, AuthzDecision>;

impl<S, B> Service<Call<B>> for Authz<S>
where
    S: Service<Call<B>, Response = Response<ProxyBody>>,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = AuthzFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call<B>) -> Self::Future {
        // Only the proxy says who calls: a client's own claim never reaches the app,
        // with or without a policy.
        let peer = PeerIdentity::of(&call.req).cloned();
        let headers = call.req.headers_mut();
        headers.remove(&PEER_IDENTITY_HEADER);
        if let Some(p) = &peer {
            headers.insert(PEER_IDENTITY_HEADER.clone(), p.header_value());
        }
        // No snapshot, or no AuthorizationPolicy in it: permissive, allow all.
        let Some(applied) = call.applied.as_ref() else {
            return self.allow(call, None);
        };
        let Some(authz) = applied.authz.as_deref() else {
            return self.allow(call, None);
        };
        // The decision rides on the response only for an access record: inserting an
        // extension costs an allocation the request path otherwise does without.
        let logged = applied.logging.as_ref().is_some_and(|l| l.access_log.enabled);
        let verdict = authz.decide(
            call.req.method(),
            call.req.uri().path(),
            call.req.headers(),
            peer.as_ref().map(PeerIdentity::as_str),
        );
        let decision = match verdict {
            Verdict::Allow => AuthzDecision {
                outcome: "allow",
                rule: None,
            },
            Verdict::Deny(denier) if !authz.dry_run => {
                debug!(rule = &*denier.name, "denied by authorization policy");
                let mut response = forbidden(&denier.name);
                response.extensions_mut().insert(AuthzDecision {
                    outcome: "deny",
                    rule: Some(Arc::clone(&denier.name)),
                });
                return AnswerOr::answered(response);
            }
            Verdict::Deny(denier) => {
                if authz.may_log(call.started) {
                    info!(
                        rule = &*denier.name,
                        method = %call.req.method(),
                        path = call.req.uri().path(),
                        peer = peer.as_ref().map_or("plaintext", PeerIdentity::as_str),
                        "authorization dry run: this request would be denied (more within a second are only counted)"
                    );
                }
                AuthzDecision {
                    outcome: "would-deny",
                    rule: Some(Arc::clone(&denier.name)),
                }
            }
        };
        let decision = logged.then_some(decision);
        self.allow(call, decision)
    }
}

impl<S> Authz<S> {
    fn allow<B>(&mut self, call: Call<B>, decision: Option<AuthzDecision>) -> AuthzFuture<S::Future>
    where
        S: Service<Call<B>, Response = Response<ProxyBody>>,
    {
        AnswerOr::Inner {
            inner: self.inner.call(call),
            after: decision,
        }
    }
}

/// `403` problem+json whose `rule` names who denied (a rule, `defaultAction`); a
/// plaintext caller refused by `mtls: strict` gets `rule: "mtls"`. The text form
/// (the gRPC message) says the same.
fn forbidden(rule: &str) -> Response<ProxyBody> {
    let detail = if rule == MTLS_STRICT {
        "this service takes only mTLS callers (mtls: strict)".to_owned()
    } else {
        format!("denied by the authorization policy (rule {rule:?})")
    };
    let mut response = local(StatusCode::FORBIDDEN, format!("{detail}\n"), Local::Refused);
    let problem = serde_json::json!({
        "type": "about:blank",
        "title": "Forbidden",
        "status": 403,
        "detail": detail,
        "rule": rule,
    });
    *response.body_mut() = Either::Right(Full::new(Bytes::from(problem.to_string())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::respond::{into_grpc_form, local_reason};
    use crate::state::{SidecarState, Source};
    use http::Request;
    use http_body_util::{BodyExt, Empty};
    use outrider_proto::v1::Snapshot;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use tower::{service_fn, ServiceExt};

    /// The headers each request reached the app with.
    type Seen = Arc<Mutex<Vec<http::HeaderMap>>>;

    fn app(
        seen: &Seen,
    ) -> impl Service<Call<Empty<Bytes>>, Response = Response<ProxyBody>, Error = Infallible> + Clone {
        let seen = Arc::clone(seen);
        service_fn(move |call: Call<Empty<Bytes>>| {
            seen.lock().unwrap().push(call.req.headers().clone());
            async { Ok::<_, Infallible>(Response::new(Either::Right(Full::new(Bytes::new())))) }
        })
    }

    fn state_with(authorization: &str) -> SidecarState {
        let state = SidecarState::new();
        let snapshot = Snapshot {
            revision: 1,
            nonce: "n".into(),
            service: "web".into(),
            authorization: authorization.into(),
            ..Default::default()
        };
        state.apply(&snapshot, Source::ControlPlane).unwrap();
        state
    }

    fn call(state: &SidecarState, method: &str, path: &str, peer: Option<&str>) -> Call<Empty<Bytes>> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(
                "x-outrider-peer-identity",
                "spiffe://outrider.local/ns/default/svc/forged",
            )
            .body(Empty::new())
            .unwrap();
        if let Some(p) = peer {
            req.extensions_mut().insert(PeerIdentity::new(p).unwrap());
        }
        let mut call = Call::new(req, ([127, 0, 0, 1], 9).into());
        call.applied = state.applied.load_full();
        call
    }

    async fn problem(response: Response<ProxyBody>) -> serde_json::Value {
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn a_denied_request_gets_a_403_problem_naming_the_rule_and_never_reaches_the_app() {
        let state = state_with(
            r#"{"defaultAction": "deny", "rules": [
              {"name": "no-admin", "match": {"pathPrefix": "/admin"}, "action": "deny"},
              {"name": "reads", "match": {"methods": ["GET"]}, "action": "allow"}]}"#,
        );
        let seen = Seen::default();
        let svc = AuthzLayer.layer(app(&seen));
        let ok = svc.clone().oneshot(call(&state, "GET", "/api", None)).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let denied = svc.clone().oneshot(call(&state, "POST", "/api", None)).await.unwrap();
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
        assert_eq!(local_reason(&denied), Some(Local::Refused));
        let body = problem(denied).await;
        assert_eq!(
            (body["status"].clone(), body["rule"].clone()),
            (403.into(), "defaultAction".into())
        );
        let named = svc.oneshot(call(&state, "GET", "/admin", None)).await.unwrap();
        assert_eq!(problem(named).await["rule"], "no-admin");
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "only the allowed request reached the app"
        );
    }

    #[tokio::test]
    async fn a_denial_in_grpc_form_is_permission_denied() {
        let state = state_with(r#"{"defaultAction": "deny"}"#);
        let svc = AuthzLayer.layer(app(&Seen::default()));
        let denied = svc.oneshot(call(&state, "POST", "/pkg.Svc/Call", None)).await.unwrap();
        let grpc = into_grpc_form(denied);
        assert_eq!(grpc.headers()["grpc-status"], "7");
    }

    #[tokio::test]
    async fn a_client_sent_identity_is_removed_and_a_proven_one_is_set() {
        let state = state_with(r#"{}"#);
        let seen = Seen::default();
        let svc = AuthzLayer.layer(app(&seen));
        svc.clone().oneshot(call(&state, "GET", "/", None)).await.unwrap();
        let proven = "spiffe://outrider.local/ns/default/svc/frontend";
        svc.oneshot(call(&state, "GET", "/", Some(proven))).await.unwrap();
        let seen = seen.lock().unwrap();
        assert!(
            !seen[0].contains_key("x-outrider-peer-identity"),
            "plaintext callers get none"
        );
        let values: Vec<_> = seen[1].get_all("x-outrider-peer-identity").iter().collect();
        assert_eq!(values, [proven]);
    }

    #[tokio::test]
    async fn a_forged_identity_is_removed_even_without_a_policy_or_a_snapshot() {
        let seen = Seen::default();
        let svc = AuthzLayer.layer(app(&seen));
        svc.oneshot(call(&SidecarState::new(), "GET", "/", None)).await.unwrap();
        assert!(!seen.lock().unwrap()[0].contains_key("x-outrider-peer-identity"));
    }

    #[tokio::test]
    async fn strict_mode_refuses_plaintext_and_admits_a_proven_caller() {
        let state = state_with(r#"{"mtls": "strict"}"#);
        let seen = Seen::default();
        let svc = AuthzLayer.layer(app(&seen));
        let refused = svc.clone().oneshot(call(&state, "GET", "/", None)).await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(problem(refused).await["rule"], "mtls");
        let admitted = svc
            .oneshot(call(
                &state,
                "GET",
                "/",
                Some("spiffe://outrider.local/ns/default/svc/a"),
            ))
            .await
            .unwrap();
        assert_eq!(admitted.status(), StatusCode::OK);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_decision_rides_on_the_response_for_the_access_record_when_access_logs_are_on() {
        let state = SidecarState::new();
        let snapshot = Snapshot {
            revision: 1,
            nonce: "n".into(),
            service: "web".into(),
            authorization: r#"{"defaultAction": "deny", "dryRun": true,
              "rules": [{"name": "reads", "match": {"methods": ["GET"]}, "action": "allow"}]}"#
                .into(),
            logging: r#"{"accessLog": {"enabled": true}, "sink": {"type": "stdout"}}"#.into(),
            ..Default::default()
        };
        state.apply(&snapshot, Source::ControlPlane).unwrap();
        let svc = AuthzLayer.layer(app(&Seen::default()));
        let allowed = svc.clone().oneshot(call(&state, "GET", "/", None)).await.unwrap();
        let would = svc.oneshot(call(&state, "POST", "/", None)).await.unwrap();
        let decision = |r: &Response<ProxyBody>| r.extensions().get::<AuthzDecision>().cloned();
        assert_eq!(
            decision(&allowed),
            Some(AuthzDecision {
                outcome: "allow",
                rule: None
            })
        );
        assert_eq!(
            decision(&would),
            Some(AuthzDecision {
                outcome: "would-deny",
                rule: Some("defaultAction".into())
            })
        );
        // Without access logs nothing is attached (no allocation for nobody to read).
        let plain = state_with(r#"{"defaultAction": "deny", "dryRun": true}"#);
        let svc = AuthzLayer.layer(app(&Seen::default()));
        let r = svc.oneshot(call(&plain, "POST", "/", None)).await.unwrap();
        assert_eq!(decision(&r), None);
    }

    #[tokio::test]
    async fn a_dry_run_lets_everything_through_and_counts_what_it_would_deny() {
        let state = state_with(r#"{"defaultAction": "deny", "dryRun": true}"#);
        let seen = Seen::default();
        let svc = AuthzLayer.layer(app(&seen));
        for _ in 0..3 {
            let r = svc.clone().oneshot(call(&state, "POST", "/", None)).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
        assert_eq!(seen.lock().unwrap().len(), 3);
        let text = state.metrics.render();
        assert!(
            text.contains(r#"outrider_authz_denied_total{dry_run="true",rule="defaultAction"} 3"#),
            "{text}"
        );
    }
}
