//! Connections redirected to the outbound port (`outrider-sidecar init`'s iptables
//! rules): where the app meant to connect (`SO_ORIGINAL_DST`) and what it speaks.
//!
//! A connection whose original destination is the listener's own address (or that
//! has none) was not redirected: the app called the outbound port itself (explicit
//! mode). A redirected one is told apart by its first bytes, peeked (not read): an
//! HTTP/1 request line (`GET `, `POST `…) or the HTTP/2 preface (`PRI * HTTP/2.0`) is
//! served as HTTP, with the original destination on every request
//! ([`OriginalDst`]); anything else, or nothing within `proxy::sniff::DETECT_TIMEOUT` (a protocol
//! where the server speaks first, such as MySQL or SMTP), is opaque and spliced by
//! [`Passthrough::splice`].

use super::passthrough::Passthrough;
use crate::proxy::redirect::original_dst;
use crate::proxy::sniff::{sniff, Sniffed};
use crate::proxy::{Accept, Accepted, ConnInfo, OriginalDst};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// The outbound listener's [`Accept`]: explicit connections as they are, redirected
/// ones by what they speak.
#[derive(Clone)]
pub struct Transparent {
    passthrough: Arc<Passthrough>,
}

impl Transparent {
    pub fn new(passthrough: Arc<Passthrough>) -> Self {
        Transparent { passthrough }
    }
}

impl Accept for Transparent {
    async fn accept(&self, stream: TcpStream, _: SocketAddr) -> Option<Accepted> {
        let Some(dst) = original_dst(&stream) else {
            return Some(Accepted::plain(stream));
        };
        match sniff(&stream).await {
            Ok(Sniffed::Http) => Some(Accepted {
                io: Either::Left(stream),
                info: ConnInfo {
                    original_dst: Some(OriginalDst(dst)),
                    ..ConnInfo::default()
                },
            }),
            Ok(Sniffed::Opaque) => {
                self.passthrough.splice(stream, dst).await;
                None
            }
            Ok(Sniffed::Closed) | Err(_) => None,
        }
    }
}
