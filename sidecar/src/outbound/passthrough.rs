//! Traffic for no mesh service (`OUTRIDER_OUTBOUND_POLICY`, see `docs/reference.md`).
//!
//! Under `allow-any` (the default) it goes where the app meant it to go, outside the
//! mesh's balancing, retries and routes: a redirected HTTP request to its connection's
//! original destination (the `Host` is kept), a redirected connection that is not HTTP
//! spliced byte for byte to its original destination, and a request sent to the
//! outbound port explicitly (absolute-form or `Host`) forwarded to the host it names,
//! resolved with the system resolver, as a forward proxy does. Under `registry-only`
//! the request gets `502` problem+json naming the host and the connection is closed.
//!
//! A forward proxy on loopback must not become a way in to what only loopback
//! reaches: explicit forwarding never dials a loopback or unspecified address, the
//! cloud metadata address (`169.254.169.254`, `fd00:ec2::254`) or this listener's own
//! port, whatever the name resolves to (checked on the resolved addresses, so a name
//! cannot point there either). Redirected traffic is not checked: it goes only where
//! the app's own connection was going.

use crate::metrics::{PassthroughKind, Refusal};
use crate::proxy::headers::{remove_hop_by_hop, target_host};
use crate::proxy::respond::local;
use crate::proxy::{client, upgrade, Call, Local, OriginalDst, ProxyBody};
use crate::state::SidecarState;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Body;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tower::Service;
use tracing::debug;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a pass-through request sends: the caller's body, whatever it was.
pub type PassBody = BoxBody<Bytes, BoxError>;

/// A destination outside the mesh is on the internet, or a database in another
/// network: given longer to accept than a mesh instance ([`crate::proxy::CONNECT_TIMEOUT`]).
pub const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A name the system resolver cannot answer within this is unknown.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// `OUTRIDER_OUTBOUND_POLICY`: where traffic for no mesh service may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutboundPolicy {
    /// To its original destination (redirected), or the host it names (explicit).
    #[default]
    AllowAny,
    /// Nowhere: only mesh services are reachable.
    RegistryOnly,
}

impl OutboundPolicy {
    /// Reads the variable's value; the error names the variable.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "allow-any" => Ok(OutboundPolicy::AllowAny),
            "registry-only" => Ok(OutboundPolicy::RegistryOnly),
            other => Err(format!(
                "OUTRIDER_OUTBOUND_POLICY must be allow-any or registry-only, not {other:?}"
            )),
        }
    }
}

/// Whether explicit forwarding must never dial `ip`: loopback, unspecified (which
/// reaches loopback), the metadata service, in any spelling (IPv4-mapped too).
pub fn forbidden(ip: IpAddr) -> bool {
    const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
    const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified() || ip == IpAddr::V4(METADATA_V4) || ip == IpAddr::V6(METADATA_V6)
}

/// The pass-through paths of one outbound proxy: its policy and its clients.
pub struct Passthrough {
    policy: OutboundPolicy,
    state: Arc<SidecarState>,
    /// The outbound listener's address, once it serves: explicit forwarding never
    /// dials it (a request to itself would loop).
    listener: Arc<OnceLock<SocketAddr>>,
    /// To original destinations, as given.
    direct_h1: Client<HttpConnector, PassBody>,
    direct_h2: Client<HttpConnector, PassBody>,
    /// To hosts named in explicit requests, through [`Guarded`] resolution.
    forward: Client<HttpConnector<Guarded>, PassBody>,
}

impl Passthrough {
    pub fn new(state: Arc<SidecarState>, policy: OutboundPolicy) -> Self {
        let listener = Arc::new(OnceLock::new());
        let direct = || client::connector_via(HttpConnector::new(), PASSTHROUGH_CONNECT_TIMEOUT);
        Passthrough {
            policy,
            state,
            direct_h1: client::pooled_via(direct(), false),
            direct_h2: client::pooled_via(direct(), true),
            forward: client::pooled_via(
                client::connector_via(HttpConnector::new_with_resolver(Guarded), PASSTHROUGH_CONNECT_TIMEOUT),
                false,
            ),
            listener,
        }
    }

    pub fn policy(&self) -> OutboundPolicy {
        self.policy
    }

    /// Notes the outbound listener's own address (see [`Passthrough::listener`]).
    pub fn serving_on(&self, addr: SocketAddr) {
        let _ = self.listener.set(addr);
    }

    fn is_self(&self, addr: SocketAddr) -> bool {
        is_listener(self.listener.get(), addr)
    }

    fn count(&self, kind: PassthroughKind) {
        self.state.metrics.passthrough.passed(kind);
    }

    fn refuse(&self, kind: PassthroughKind, why: Refusal) {
        self.state.metrics.passthrough.refused(kind, why);
    }

    /// Whether a redirected connection that is not HTTP may go to `dst`: anywhere
    /// under `allow-any`, only to a mesh instance under `registry-only`.
    pub fn admits_opaque(&self, dst: SocketAddr) -> bool {
        self.policy == OutboundPolicy::AllowAny
            || self
                .state
                .applied
                .load()
                .as_ref()
                .is_some_and(|a| a.destinations.at_address(dst.ip(), Some(dst.port())).is_some())
    }

    /// Splices a redirected connection that is not HTTP to its original destination,
    /// both ways until each side has closed its half; refused under `registry-only`
    /// unless `dst` is a mesh instance.
    pub async fn splice(&self, mut stream: TcpStream, dst: SocketAddr) {
        if !self.admits_opaque(dst) {
            self.refuse(PassthroughKind::Tcp, Refusal::RegistryOnly);
            debug!(%dst, "registry-only: connection for no mesh service closed");
            return;
        }
        let mut upstream = match tokio::time::timeout(PASSTHROUGH_CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(error)) => {
                self.refuse(PassthroughKind::Tcp, Refusal::Unreachable);
                debug!(%dst, %error, "pass-through connect failed");
                return;
            }
            Err(_) => {
                self.refuse(PassthroughKind::Tcp, Refusal::Unreachable);
                debug!(%dst, "pass-through connect timed out");
                return;
            }
        };
        self.count(PassthroughKind::Tcp);
        let _ = upstream.set_nodelay(true);
        // copy_bidirectional shuts each write half down when the other side's read
        // half ends, so a half-close travels through.
        if let Err(error) = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
            debug!(%dst, %error, "pass-through connection ended with an error");
        }
    }

    /// Answers a request for no mesh service: sent on under `allow-any`, `502`
    /// problem+json under `registry-only`.
    pub fn http<B>(self: &Arc<Self>, call: Call<B>) -> impl Future<Output = Response<ProxyBody>> + Send + 'static
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let this = Arc::clone(self);
        async move { this.send(call).await }
    }

    async fn send<B>(&self, call: Call<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let host = target_host(&call.req).unwrap_or_default().to_owned();
        if self.policy == OutboundPolicy::RegistryOnly {
            self.refuse(PassthroughKind::Http, Refusal::RegistryOnly);
            return registry_only(&host);
        }
        let original = call.req.extensions().get::<OriginalDst>().copied();
        let mut req = call.req;
        let on_client = upgrade::is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let asked = on_client
            .as_ref()
            .and_then(|_| req.headers().get(header::UPGRADE).cloned());
        let (mut parts, body) = req.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        upgrade::restore_upgrade_headers(&mut parts.headers, asked);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or(PathAndQuery::from_static("/"));
        // Which pool: the original destination's (as given), or the named host's.
        let (authority, direct, version) = match original {
            // Where the app's connection was going, in the protocol it spoke there.
            Some(OriginalDst(dst)) => {
                let client = if parts.version == Version::HTTP_2 {
                    &self.direct_h2
                } else {
                    &self.direct_h1
                };
                let version = if parts.version == Version::HTTP_2 {
                    Version::HTTP_2
                } else {
                    Version::HTTP_11
                };
                match Authority::try_from(dst.to_string()) {
                    Ok(a) => (a, Some(client), version),
                    Err(_) => return bad_target(&host),
                }
            }
            // The host it names, over HTTP/1.1 (what any server speaks).
            None => {
                if parts.uri.scheme().is_some_and(|s| *s != Scheme::HTTP) {
                    self.refuse(PassthroughKind::Http, Refusal::ForbiddenAddress);
                    return local(
                        StatusCode::BAD_REQUEST,
                        format!("only http:// is forwarded to hosts outside the mesh, not {host:?}\n"),
                        Local::Refused,
                    );
                }
                let Ok(authority) = Authority::try_from(host.as_str()) else {
                    return bad_target(&host);
                };
                let port = authority.port_u16().unwrap_or(80);
                let literal = authority
                    .host()
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<IpAddr>();
                if let Ok(ip) = literal {
                    if forbidden(ip) || self.is_self(SocketAddr::new(ip, port)) {
                        self.refuse(PassthroughKind::Http, Refusal::ForbiddenAddress);
                        return forbidden_target(&host);
                    }
                }
                (authority, None, Version::HTTP_11)
            }
        };
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = Some(path);
        parts.uri = match Uri::from_parts(uri) {
            Ok(u) => u,
            Err(_) => return bad_target(&host),
        };
        parts.version = version;
        if version != Version::HTTP_2 && !host.is_empty() && !parts.headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(&host) {
                parts.headers.insert(header::HOST, v);
            }
        }
        let req = http::Request::from_parts(parts, body.map_err(Into::into).boxed());
        let sent = match direct {
            Some(client) => client.request(req),
            None => self.forward.request(req),
        };
        match sent.await {
            Ok(mut response) => {
                self.count(PassthroughKind::Http);
                let agreed = (response.status() == StatusCode::SWITCHING_PROTOCOLS)
                    .then(|| response.headers().get(header::UPGRADE).cloned())
                    .flatten();
                if let (Some(on_client), Some(_)) = (on_client, &agreed) {
                    upgrade::splice(on_client, hyper::upgrade::on(&mut response));
                }
                let (mut parts, body) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                upgrade::restore_upgrade_headers(&mut parts.headers, agreed);
                Response::from_parts(parts, Either::Left(body))
            }
            Err(error) => self.failed(&host, &error),
        }
    }

    /// The proxy's answer when a pass-through request got no response.
    fn failed(&self, host: &str, error: &hyper_util::client::legacy::Error) -> Response<ProxyBody> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            if let Some(r) = e.downcast_ref::<Resolution>() {
                return match r {
                    Resolution::Forbidden => {
                        self.refuse(PassthroughKind::Http, Refusal::ForbiddenAddress);
                        forbidden_target(host)
                    }
                    Resolution::Unknown(_) => {
                        self.refuse(PassthroughKind::Http, Refusal::Unresolvable);
                        local(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("unknown service {host:?}: not in the mesh, and no host of that name resolves\n"),
                            Local::Refused,
                        )
                    }
                };
            }
            source = e.source();
        }
        self.refuse(PassthroughKind::Http, Refusal::Unreachable);
        debug!(host, error = %crate::proxy::ErrorChain(error), "pass-through failed");
        let why = if error.is_connect() {
            "could not be reached".to_owned()
        } else {
            format!("failed: {}", crate::proxy::root_cause(error))
        };
        local(
            StatusCode::BAD_GATEWAY,
            format!("{host} (outside the mesh) {why}\n"),
            Local::UpstreamFailed,
        )
    }
}

fn is_listener(listener: Option<&SocketAddr>, addr: SocketAddr) -> bool {
    listener.is_some_and(|l| {
        l.port() == addr.port() && (l.ip().is_unspecified() || l.ip().to_canonical() == addr.ip().to_canonical())
    })
}

/// A problem+json answer of the proxy's own.
fn problem(status: StatusCode, detail: String, extra: (&str, &str)) -> Response<ProxyBody> {
    let mut response = local(status, format!("{detail}\n"), Local::Refused);
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
    });
    body[extra.0] = extra.1.into();
    *response.body_mut() = Either::Right(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// `502` under `registry-only`, naming the host.
fn registry_only(host: &str) -> Response<ProxyBody> {
    problem(
        StatusCode::BAD_GATEWAY,
        format!(
            "{host:?} is not a mesh service and OUTRIDER_OUTBOUND_POLICY is registry-only: only mesh services are reachable"
        ),
        ("host", host),
    )
}

fn forbidden_target(host: &str) -> Response<ProxyBody> {
    problem(
        StatusCode::FORBIDDEN,
        format!("the outbound proxy does not forward to {host:?}: loopback, unspecified and metadata addresses and its own port are refused"),
        ("host", host),
    )
}

fn bad_target(host: &str) -> Response<ProxyBody> {
    local(
        StatusCode::BAD_REQUEST,
        format!("{host:?} is not a host to forward to\n"),
        Local::Refused,
    )
}

/// Why a name was not resolved to anything explicit forwarding may dial.
#[derive(Debug, thiserror::Error)]
enum Resolution {
    #[error("resolves only to addresses the outbound proxy never forwards to")]
    Forbidden,
    #[error("does not resolve: {0}")]
    Unknown(String),
}

/// The system resolver (`getaddrinfo`, on the blocking pool), bounded in time, with
/// the addresses explicit forwarding must never dial taken out of the answer. (The
/// listener's own port is checked on literal addresses only: a resolver is not told
/// the port.)
#[derive(Clone, Default)]
pub struct Guarded;

impl Service<Name> for Guarded {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    // One allocation per new connection, not per request.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move {
            // The port is set by the connector afterwards; 0 keeps lookup_host happy.
            let lookup = tokio::net::lookup_host((name.as_str().to_owned(), 0));
            let found: Vec<SocketAddr> = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(found)) => found.collect(),
                Ok(Err(e)) => return Err(Resolution::Unknown(e.to_string()).into()),
                Err(_) => return Err(Resolution::Unknown("the resolver did not answer in time".into()).into()),
            };
            if found.is_empty() {
                return Err(Resolution::Unknown("no address".into()).into());
            }
            let allowed: Vec<SocketAddr> = found.into_iter().filter(|a| !forbidden(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Resolution::Forbidden.into());
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_unspecified_and_metadata_addresses_are_never_forwarded_to() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
        ] {
            assert!(forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["192.0.2.2", "10.0.0.1", "169.254.1.1", "2001:db8::1"] {
            assert!(!forbidden(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_listener_itself_is_never_a_target() {
        let on_all: SocketAddr = "0.0.0.0:15001".parse().unwrap();
        let on_one: SocketAddr = "10.0.0.5:15001".parse().unwrap();
        assert!(is_listener(Some(&on_all), "10.0.0.5:15001".parse().unwrap()));
        assert!(is_listener(Some(&on_one), "10.0.0.5:15001".parse().unwrap()));
        assert!(!is_listener(Some(&on_one), "10.0.0.6:15001".parse().unwrap()));
        assert!(!is_listener(Some(&on_all), "10.0.0.5:80".parse().unwrap()));
        assert!(!is_listener(None, "10.0.0.5:15001".parse().unwrap()));
    }

    #[test]
    fn the_policy_is_one_of_two_and_a_typo_names_the_variable() {
        assert_eq!(OutboundPolicy::parse("allow-any"), Ok(OutboundPolicy::AllowAny));
        assert_eq!(OutboundPolicy::parse("registry-only"), Ok(OutboundPolicy::RegistryOnly));
        let err = OutboundPolicy::parse("registry_only").unwrap_err();
        assert!(err.contains("OUTRIDER_OUTBOUND_POLICY"), "{err}");
    }

    #[tokio::test]
    async fn a_name_that_resolves_only_to_loopback_is_refused() {
        let mut guarded = Guarded;
        let err = guarded.call("localhost".parse().unwrap()).await.unwrap_err();
        assert!(
            matches!(err.downcast_ref::<Resolution>(), Some(Resolution::Forbidden)),
            "{err}"
        );
        let err = guarded.call("nope.invalid".parse().unwrap()).await.unwrap_err();
        assert!(
            matches!(err.downcast_ref::<Resolution>(), Some(Resolution::Unknown(_))),
            "{err}"
        );
    }
}
