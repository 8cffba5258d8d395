//! The HTTP port's defences against pages in a browser, as layers over the whole app:
//! DNS rebinding (`Host`), cross-site writes (`Origin`), form and other CORS-simple
//! bodies (`Content-Type`), and `nosniff` on every answer.
//!
//! A page on any site can make a browser send a form or a `text/plain` POST to
//! `http://127.0.0.1:18080` without asking anyone first (CORS "simple" requests), and
//! a rebound DNS name can make the control plane look same-origin. So a write must
//! carry a JSON type where it takes JSON and never a form type, a write whose `Origin`
//! is another site is refused, and a loopback listener answers only loopback names.

use super::error::ApiError;
use axum::body::HttpBody;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use std::net::IpAddr;
use std::sync::Arc;

/// The routes whose body is not JSON: config documents keep their own type, and a
/// secret's value is whatever bytes it is.
pub const CONFIG_ROUTE: &str = "/api/v1/services/{service}/config/{name}";
pub const SECRET_ROUTE: &str = "/api/v1/services/{service}/secrets/{name}";

/// A value of `--allowed-origins` or `--allowed-hosts` that cannot be one.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("--allowed-origins: {0:?} is not an origin (scheme://host[:port], e.g. https://ops.example.com)")]
    Origin(String),
    #[error("--allowed-hosts: {0:?} is not a host name or address")]
    Host(String),
}

/// Which `Host` and `Origin` values the HTTP port accepts.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// The listener is on a loopback address, so only loopback names may reach it.
    loopback_only: bool,
    /// Normalised origins (`scheme://host[:port]`, lower case, default port dropped).
    allowed_origins: Vec<String>,
    /// Host names (lower case, no port) accepted besides loopback ones.
    allowed_hosts: Vec<String>,
}

impl Guard {
    /// `loopback_only` when the HTTP listener is bound to a loopback address. The
    /// hosts of `allowed_origins` are allowed hosts too, so one flag is enough for a
    /// dashboard reached through a name.
    pub fn new(loopback_only: bool, allowed_origins: &[String], allowed_hosts: &[String]) -> Result<Self, GuardError> {
        let mut guard = Guard {
            loopback_only,
            ..Guard::default()
        };
        for o in allowed_origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
            let origin = normalize_origin(o).ok_or_else(|| GuardError::Origin(o.to_owned()))?;
            let host = host_name(origin.split_once("://").map_or("", |(_, a)| a)).to_owned();
            guard.allowed_hosts.push(host);
            guard.allowed_origins.push(origin);
        }
        for h in allowed_hosts.iter().map(|h| h.trim()).filter(|h| !h.is_empty()) {
            let valid = h.parse::<axum::http::uri::Authority>().is_ok() && !h.contains('@');
            if !valid {
                return Err(GuardError::Host(h.to_owned()));
            }
            guard.allowed_hosts.push(host_name(h).to_ascii_lowercase());
        }
        Ok(guard)
    }

    fn host_allowed(&self, host: &str) -> bool {
        if !self.loopback_only {
            return true;
        }
        let name = host_name(host).to_ascii_lowercase();
        is_loopback_name(&name) || self.allowed_hosts.contains(&name)
    }

    /// Refuses what a browser page elsewhere could have sent (see the module doc).
    fn check(&self, method: &Method, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()));
        if let Some(host) = host.filter(|h| !self.host_allowed(h)) {
            return Err(ApiError::Forbidden(format!(
                "Host {host:?} is not a loopback name: a control plane listening on loopback answers only \
                 localhost, 127.0.0.1 and [::1] (and the hosts of --allowed-hosts or --allowed-origins), \
                 so that a rebound DNS name cannot reach it"
            )));
        }
        if !is_write(method) {
            return Ok(());
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            // Either scheme: behind a proxy that terminates TLS, the page's origin is
            // `https://` + the Host this port sees.
            let own = |o: &str| {
                host.is_some_and(|h| {
                    ["http", "https"]
                        .iter()
                        .any(|scheme| normalize_origin(&format!("{scheme}://{h}")).as_deref() == Some(o))
                })
            };
            let allowed = normalize_origin(origin).is_some_and(|o| own(&o) || self.allowed_origins.contains(&o));
            if !allowed {
                return Err(ApiError::Forbidden(format!(
                    "a write from origin {origin:?} is refused: only the control plane's own origin \
                     and those in --allowed-origins may change anything"
                )));
            }
        }
        if let Some(ct) = media_type(headers) {
            if matches!(ct.as_str(), "application/x-www-form-urlencoded" | "multipart/form-data") {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "content-type {ct} is not accepted: send application/json (config documents: their own type)"
                )));
            }
        }
        Ok(())
    }
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `Content-Type` without its parameters, in lower case.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().unwrap_or("invalid");
    Some(v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// The host of a `host[:port]` (`[::1]:80` → `[::1]`).
fn host_name(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// `localhost` and its subdomains (which browsers resolve to loopback themselves),
/// and loopback addresses.
fn is_loopback_name(name: &str) -> bool {
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let ip = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `scheme://host[:port]` in lower case without a default port, or `None` when the
/// value is not an origin (`null`, a path, no scheme).
fn normalize_origin(origin: &str) -> Option<String> {
    let uri: Uri = origin.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() || authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host().to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    Some(match authority.port_u16() {
        Some(p) if Some(p) != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// The layer over the whole app: `Host`, `Origin` and form types (see [`Guard`]).
pub async fn browser_guard(Extension(guard): Extension<Arc<Guard>>, req: Request, next: Next) -> Response {
    match guard.check(req.method(), req.headers(), req.uri()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The layer on the API's routes: a write to a JSON route that carries a body must
/// say `application/json`, so no CORS-simple type (`text/plain`) gets in. Config
/// documents ([`CONFIG_ROUTE`]) and secrets ([`SECRET_ROUTE`]) keep their own type.
pub async fn json_writes(req: Request, next: Next) -> Response {
    let config = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|m| m.as_str() == CONFIG_ROUTE || m.as_str() == SECRET_ROUTE);
    if is_write(req.method()) && !config {
        // Known empty only with `content-length: 0` or no body framing at all.
        let has_body = req.body().size_hint().exact() != Some(0);
        let detail = match media_type(req.headers()) {
            Some(ct) if ct != "application/json" => Some(format!(
                "content-type {ct} is not accepted here: this route takes application/json"
            )),
            None if has_body => Some("a body needs content-type: application/json".to_owned()),
            _ => None,
        };
        if let Some(detail) = detail {
            return ApiError::UnsupportedMediaType(detail).into_response();
        }
    }
    next.run(req).await
}

/// Every answer says `X-Content-Type-Options: nosniff`, so a browser never runs a
/// body as anything but its declared type.
pub async fn nosniff(mut resp: Response) -> Response {
    resp.headers_mut()
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_compared_without_case_or_default_ports() {
        assert_eq!(
            normalize_origin("HTTP://Example.com:80").as_deref(),
            Some("http://example.com")
        );
        assert_eq!(
            normalize_origin("https://a.b:8443").as_deref(),
            Some("https://a.b:8443")
        );
        assert_eq!(normalize_origin("null"), None);
        assert_eq!(normalize_origin("http://a.b/path"), None);
    }

    #[test]
    fn a_loopback_listener_answers_only_loopback_names_and_the_allowed_hosts() {
        let g = Guard::new(true, &["https://ops.example.com".into()], &["cp.internal:18080".into()]).unwrap();
        for ok in [
            "localhost",
            "localhost:18080",
            "127.0.0.1:1",
            "[::1]:18080",
            "app.localhost",
            "ops.example.com",
            "cp.internal",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example", "10.0.0.1:18080", "127.0.0.1.evil.example", "[::2]"] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        assert!(Guard::new(false, &[], &[]).unwrap().host_allowed("evil.example"));
    }

    #[test]
    fn bad_allowed_values_are_refused_naming_the_flag() {
        let e = Guard::new(true, &["ops.example.com".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("--allowed-origins"), "{e}");
        let e = Guard::new(true, &[], &["a b".into()]).unwrap_err();
        assert!(e.to_string().contains("--allowed-hosts"), "{e}");
    }
}
