//! Header rules both proxies apply: hop-by-hop headers stay on their hop, the
//! forwarding headers an app expects (`X-Forwarded-For`, `Via`), request ids, and the
//! name a request was sent to.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;
use std::net::IpAddr;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Connection-scoped headers (RFC 9110 §7.6.1) must not be forwarded: the
/// `Connection` header itself, every header it names, and the classic list. `TE`
/// survives only as `trailers`, which asks about the end-to-end body. `Trailer` is
/// end-to-end (RFC 9110 §6.6.2) and must stay: HTTP/1.1 sends trailers only for the
/// fields it announces.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Fast path: most requests carry none of these.
    let has_connection = headers.contains_key(header::CONNECTION);
    if has_connection {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            // `Connection: te` must not take `te: trailers` away from the app, but
            // everything else it lists goes.
            if name != header::TE {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    headers.remove(&HTTP2_SETTINGS);
    if let Some(te) = headers.get(header::TE) {
        let trailers_only = te
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
        if trailers_only {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// Appends the peer to `X-Forwarded-For` (RFC 7239's de-facto predecessor): the app
/// sees the whole chain, the peer last.
pub fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    let peer = peer.to_canonical();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => HeaderValue::from_str(&format!("{existing}, {peer}")),
        _ => HeaderValue::from_str(&peer.to_string()),
    };
    if let Ok(value) = value {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

/// Appends this proxy to `Via` (RFC 9110 §7.6.3) as `<version> outrider`, where
/// version is the protocol the message was received with.
pub fn append_via(headers: &mut HeaderMap, received: Version) {
    let ours = match received {
        Version::HTTP_2 => "2 outrider",
        Version::HTTP_10 => "1.0 outrider",
        Version::HTTP_3 => "3 outrider",
        _ => "1.1 outrider",
    };
    // Several Via lines form one list; a single new one keeps the value static.
    if headers.contains_key(header::VIA) {
        if let Ok(v) = HeaderValue::from_str(ours) {
            headers.append(header::VIA, v);
        }
    } else {
        headers.insert(header::VIA, HeaderValue::from_static(ours));
    }
}

/// HTTP/2 may split `Cookie` into one field per cookie; HTTP/1.1 allows only one
/// line, so the fields are joined with `; ` (RFC 9113 §8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    // Fast path: no cookie, or exactly one.
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// A random UUID v4, hex-encoded straight into a stack buffer.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Version nibble 4 and variant bits 10 (RFC 9562).
    let bits = (rand::random::<u128>() & !(0xf000_u128 << 64) & !(0xc000_u128 << 48))
        | (0x4000_u128 << 64)
        | (0x8000_u128 << 48);
    let mut id = [b'-'; 36];
    let mut nibble = 0;
    for (i, slot) in id.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        *slot = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
        nibble += 1;
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

/// The authority a request names: that of an absolute-form (or HTTP/2) URI, else
/// the `Host` header.
pub fn target_host<B>(req: &http::Request<B>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str()).filter(|h| !h.is_empty());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::trim)
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-private, te"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("secret"));
        h.insert("te", HeaderValue::from_static("gzip, trailers"));
        h.insert("http2-settings", HeaderValue::from_static("AAMAAABkAAQAoAAAAAIAAAAA"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        h.insert("trailer", HeaderValue::from_static("x-checksum"));
        remove_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["te", "trailer", "x-end-to-end"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn via_names_the_received_version_and_appends_to_an_existing_one() {
        let mut h = HeaderMap::new();
        append_via(&mut h, Version::HTTP_2);
        assert_eq!(h["via"], "2 outrider");
        append_via(&mut h, Version::HTTP_11);
        let all: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(all, ["2 outrider", "1.1 outrider"]);
    }

    #[test]
    fn split_cookies_are_joined_into_one_field() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; b=2"]);
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(new_request_id(), new_request_id());
    }
}
