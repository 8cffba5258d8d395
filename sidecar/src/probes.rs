//! The app's kubelet probes, made by the sidecar: the injector rewrites each app
//! container's HTTP or TCP probe to `GET /app-health/<container>/<livez|readyz|startupz>`
//! on the health port and hands the originals over in `OUTRIDER_APP_PROBES`. Captured,
//! the kubelet's own HTTP request would reach the app through the inbound as plaintext,
//! which `mtls: strict` refuses, and its TCP connection would be accepted by the
//! sidecar's listener whether the app listens or not; from here the probe goes to the
//! app on localhost, out of capture (the sidecar's own traffic), and the kubelet gets
//! the app's answer.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

/// The longest a probe may wait for the app: the kubelet's own limit is far lower.
const MAX_TIMEOUT_SECONDS: u64 = 600;

/// One probe as the Pod spec had it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppProbe {
    pub port: u16,
    /// A TCP probe: a connection that opens passes; nothing else is sent.
    pub tcp: bool,
    pub path: String,
    pub https: bool,
    pub headers: HeaderMap,
    pub timeout: Duration,
}

/// `<container>/<kind>` → its probe. Empty: no probe is served.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppProbes(Arc<HashMap<String, AppProbe>>);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw {
    port: u16,
    path: Option<String>,
    #[serde(default = "http")]
    scheme: String,
    #[serde(default)]
    http_headers: Vec<RawHeader>,
    #[serde(default = "one")]
    timeout_seconds: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value: String,
}

fn http() -> String {
    "HTTP".into()
}

fn one() -> u64 {
    1
}

impl AppProbes {
    /// `OUTRIDER_APP_PROBES`: a JSON object of `<container>/<livez|readyz|startupz>` →
    /// `{"port", "path", "scheme" (HTTP, HTTPS, TCP), "httpHeaders", "timeoutSeconds"}`
    /// (a TCP probe has no path); empty is none.
    pub fn parse(text: &str) -> Result<AppProbes, String> {
        if text.trim().is_empty() {
            return Ok(AppProbes::default());
        }
        let raw: HashMap<String, Raw> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON object of probes: {e}"))?;
        let mut probes = HashMap::with_capacity(raw.len());
        for (key, r) in raw {
            let kind = key.split_once('/').map(|(_, k)| k);
            if !matches!(kind, Some("livez" | "readyz" | "startupz")) || key.matches('/').count() != 1 {
                return Err(format!("{key:?}: keys are <container>/<livez|readyz|startupz>"));
            }
            if r.port == 0 {
                return Err(format!("{key}.port: 0 is not a port"));
            }
            let (tcp, https) = match r.scheme.to_ascii_uppercase().as_str() {
                "HTTP" => (false, false),
                "HTTPS" => (false, true),
                "TCP" => (true, false),
                _ => return Err(format!("{key}.scheme: {:?} is none of HTTP, HTTPS, TCP", r.scheme)),
            };
            let path = match (tcp, r.path) {
                (true, None) => String::new(),
                (true, Some(_)) => return Err(format!("{key}.path: a TCP probe has none")),
                (false, None) => return Err(format!("{key}.path: an HTTP probe needs one")),
                (false, Some(p)) if p.starts_with('/') && p.parse::<http::uri::PathAndQuery>().is_ok() => p,
                (false, Some(p)) => return Err(format!("{key}.path: {p:?} is not an absolute path")),
            };
            if !(1..=MAX_TIMEOUT_SECONDS).contains(&r.timeout_seconds) {
                return Err(format!("{key}.timeoutSeconds: 1 to {MAX_TIMEOUT_SECONDS}"));
            }
            let mut headers = HeaderMap::new();
            for h in r.http_headers {
                let name = HeaderName::try_from(h.name.as_str())
                    .map_err(|_| format!("{key}.httpHeaders: {:?} is not a header name", h.name))?;
                let value = HeaderValue::try_from(h.value.as_str())
                    .map_err(|_| format!("{key}.httpHeaders: the value of {:?} is not a header value", h.name))?;
                headers.append(name, value);
            }
            probes.insert(
                key,
                AppProbe {
                    port: r.port,
                    tcp,
                    path,
                    https,
                    headers,
                    timeout: Duration::from_secs(r.timeout_seconds),
                },
            );
        }
        Ok(AppProbes(Arc::new(probes)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone)]
struct Prober {
    probes: AppProbes,
    client: reqwest::Client,
}

/// `/app-health/{container}/{kind}` for the health port.
pub fn router(probes: AppProbes) -> Router {
    // Like the kubelet: a redirect is an answer (2xx and 3xx pass), an HTTPS app's
    // certificate is not checked, and no connection is kept between probes.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .pool_max_idle_per_host(0)
        .user_agent(concat!("outrider-sidecar/", env!("CARGO_PKG_VERSION"), " (app probe)"))
        .build()
        .unwrap_or_default();
    Router::new()
        .route("/app-health/{container}/{kind}", get(probe))
        .with_state(Prober { probes, client })
}

async fn probe(State(p): State<Prober>, Path((container, kind)): Path<(String, String)>) -> Response {
    let key = format!("{container}/{kind}");
    let Some(probe) = p.probes.0.get(&key) else {
        return (StatusCode::NOT_FOUND, format!("no app probe {key}\n")).into_response();
    };
    if probe.tcp {
        let connect = tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, probe.port));
        return match tokio::time::timeout(probe.timeout, connect).await {
            Ok(Ok(_)) => (StatusCode::OK, format!("app probe {key}: port {} open\n", probe.port)).into_response(),
            Ok(Err(error)) => {
                debug!(probe = %key, port = probe.port, %error, "app probe failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("app probe {key}: port {} closed\n", probe.port),
                )
                    .into_response()
            }
            Err(_) => (StatusCode::SERVICE_UNAVAILABLE, format!("app probe {key}: timed out\n")).into_response(),
        };
    }
    let scheme = if probe.https { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{}{}", probe.port, probe.path);
    let sent = p
        .client
        .get(&url)
        .headers(probe.headers.clone())
        .timeout(probe.timeout)
        .send()
        .await;
    match sent {
        Ok(answer) => {
            let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, format!("app probe {key}: {status}\n")).into_response()
        }
        Err(error) => {
            debug!(probe = %key, %url, error = %error, "app probe failed");
            let why = if error.is_timeout() {
                "timed out".to_owned()
            } else {
                "no answer from the app".to_owned()
            };
            (StatusCode::SERVICE_UNAVAILABLE, format!("app probe {key}: {why}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    /// An app on a real socket answering `/ready` with 200 when the probe's header is
    /// there, 500 otherwise, and `/moved` with a redirect.
    async fn app() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route(
                "/ready",
                get(|h: HeaderMap| async move {
                    if h.get("x-probe").is_some_and(|v| v == "kubelet") {
                        StatusCode::OK
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                }),
            )
            .route(
                "/moved",
                get(|| async { (StatusCode::FOUND, [("location", "http://elsewhere.example/")]) }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    async fn call(r: &Router, path: &str) -> (StatusCode, String) {
        let answer = r
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = answer.status();
        let body = axum::body::to_bytes(answer.into_body(), 4096).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_probe_is_made_to_the_app_and_answers_with_its_status() {
        let port = app().await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let probes = AppProbes::parse(&format!(
            r#"{{"web/readyz": {{"port": {port}, "path": "/ready", "httpHeaders": [{{"name": "X-Probe", "value": "kubelet"}}]}},
                "web/livez": {{"port": {port}, "path": "/ready"}},
                "web/startupz": {{"port": {port}, "path": "/moved", "scheme": "HTTP", "timeoutSeconds": 2}},
                "side/livez": {{"port": {closed}, "path": "/"}},
                "tcp/livez": {{"port": {port}, "scheme": "TCP"}},
                "side/readyz": {{"port": {closed}, "scheme": "TCP"}}}}"#
        ))
        .unwrap();
        let r = router(probes);
        assert_eq!(call(&r, "/app-health/web/readyz").await.0, StatusCode::OK);
        // Without the Pod's header the app says 500, and so does the probe.
        assert_eq!(
            call(&r, "/app-health/web/livez").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        // A redirect is passed on, not followed (the kubelet counts 3xx as success).
        assert_eq!(call(&r, "/app-health/web/startupz").await.0, StatusCode::FOUND);
        let (status, body) = call(&r, "/app-health/side/livez").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(call(&r, "/app-health/web/other").await.0, StatusCode::NOT_FOUND);
        // TCP: the app's port open is a pass, closed a failure (not the sidecar's word).
        assert_eq!(call(&r, "/app-health/tcp/livez").await.0, StatusCode::OK);
        assert_eq!(
            call(&r, "/app-health/side/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn a_bad_probe_list_is_refused_naming_the_probe_and_field() {
        assert!(AppProbes::parse("").unwrap().is_empty());
        for (text, names) in [
            ("[]", "not a JSON object"),
            (r#"{"web": {"port": 1, "path": "/"}}"#, "\"web\""),
            (r#"{"web/ready": {"port": 1, "path": "/"}}"#, "\"web/ready\""),
            (r#"{"web/livez": {"port": 0, "path": "/"}}"#, "web/livez.port"),
            (r#"{"web/livez": {"port": 1, "path": "x"}}"#, "web/livez.path"),
            (
                r#"{"web/livez": {"port": 1, "path": "/", "scheme": "UDP"}}"#,
                "web/livez.scheme",
            ),
            (
                r#"{"web/livez": {"port": 1, "path": "/", "scheme": "TCP"}}"#,
                "web/livez.path",
            ),
            (r#"{"web/livez": {"port": 1}}"#, "web/livez.path"),
            (
                r#"{"web/livez": {"port": 1, "path": "/", "timeoutSeconds": 0}}"#,
                "web/livez.timeoutSeconds",
            ),
            (
                r#"{"web/livez": {"port": 1, "path": "/", "httpHeaders": [{"name": "a b", "value": "x"}]}}"#,
                "web/livez.httpHeaders",
            ),
            (r#"{"web/livez": {"port": 1, "path": "/", "extra": 1}}"#, "extra"),
        ] {
            let err = AppProbes::parse(text).unwrap_err();
            assert!(err.contains(names), "{text}: {err}");
        }
    }
}
