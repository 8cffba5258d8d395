//! A thin client of the REST API (`docs/reference.md`): builds URLs, sends the bearer token,
//! and turns transport failures and `application/problem+json` answers into
//! [`CliError`]s that say what to do.

use crate::error::{one_line, ApiError, CliError};
use outrider_policy::FieldError;
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use std::time::Duration;

const API: [&str; 2] = ["api", "v1"];

/// The path segments of a REST resource: `/api/v1` followed by `rest`.
pub fn api<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    API.iter().copied().chain(rest.iter().copied()).collect()
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

/// A non-JSON answer, for `/healthz`, `/readyz` and config documents.
pub struct RawResponse {
    pub status: StatusCode,
    pub content_type: Option<String>,
    /// The `ETag` without quotes: the revision, for documents.
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

impl Client {
    pub fn new(server: &str, token: Option<&str>) -> Result<Self, CliError> {
        let bad = |reason: &str| CliError::BadServer {
            server: server.to_owned(),
            reason: reason.to_owned(),
        };
        let base = Url::parse(server).map_err(|e| bad(&format!("{e}; expected e.g. http://127.0.0.1:18080")))?;
        match base.scheme() {
            "http" => {}
            "https" => {
                return Err(bad(
                    "this build of outriderctl speaks plain HTTP only; use an http:// address \
                                (for example through a port-forward)",
                ))
            }
            other => return Err(bad(&format!("unsupported scheme {other:?}; expected http://host:port"))),
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(bad("expected http://host:port"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("outriderctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Transport {
                server: server.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            http,
            base,
            token: token.filter(|t| !t.is_empty()).map(str::to_owned),
        })
    }

    /// The server address as the user should recognise it.
    pub fn server(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    /// `base` + the segments, each percent-encoded, so a user-typed name cannot
    /// change the path.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in new: http URLs have paths")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Value, CliError> {
        self.json(Method::GET, segments, query, None).await
    }

    pub async fn put(&self, segments: &[&str], query: &[(&str, &str)], body: Body) -> Result<Value, CliError> {
        self.json(Method::PUT, segments, query, Some(body)).await
    }

    pub async fn delete(&self, segments: &[&str]) -> Result<Value, CliError> {
        self.json(Method::DELETE, segments, &[], None).await
    }

    pub async fn post(&self, segments: &[&str]) -> Result<Value, CliError> {
        self.json(Method::POST, segments, &[], None).await
    }

    pub async fn post_json(&self, segments: &[&str], body: Value) -> Result<Value, CliError> {
        self.json(Method::POST, segments, &[], Some(Body::Json(body))).await
    }

    /// Any answer, error statuses included; only transport failures are errors.
    pub async fn raw(&self, segments: &[&str]) -> Result<RawResponse, CliError> {
        let resp = self.send(Method::GET, self.url(segments, &[]), None).await?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_start_matches("W/").trim_matches('"').to_owned());
        let body = resp.bytes().await.map_err(|e| self.transport(e))?.to_vec();
        Ok(RawResponse {
            status,
            content_type,
            etag,
            body,
        })
    }

    async fn json(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Body>,
    ) -> Result<Value, CliError> {
        let resp = self.send(method, self.url(segments, query), body).await?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return Err(problem(status, &bytes).into());
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| CliError::Transport {
            server: self.server(),
            reason: format!("the answer is not JSON ({e}); is --server the control plane's HTTP address?"),
        })
    }

    async fn send(&self, method: Method, url: Url, body: Option<Body>) -> Result<reqwest::Response, CliError> {
        let mut req = self.http.request(method, url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        req = match body {
            None => req,
            Some(Body::Json(v)) => req.json(&v),
            Some(Body::Bytes { content_type, bytes }) => {
                req.header(reqwest::header::CONTENT_TYPE, content_type).body(bytes)
            }
        };
        req.send().await.map_err(|e| self.transport(e))
    }

    fn transport(&self, e: reqwest::Error) -> CliError {
        let server = self.server();
        if e.is_timeout() {
            let secs = if e.is_connect() {
                CONNECT_TIMEOUT
            } else {
                REQUEST_TIMEOUT
            }
            .as_secs();
            return CliError::Timeout { server, secs };
        }
        let reason = root_cause(&e);
        if e.is_connect() {
            CliError::Unreachable { server, reason }
        } else {
            CliError::Transport { server, reason }
        }
    }
}

pub enum Body {
    Json(Value),
    Bytes { content_type: String, bytes: Vec<u8> },
}

/// The innermost cause, which says "connection refused" where reqwest's own message
/// says only "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if let Some(io) = cur.downcast_ref::<std::io::Error>() {
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
            std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
            _ => {}
        }
    }
    one_line(&cur.to_string())
}

/// Reads an error answer: `application/problem+json` when the control plane sent it,
/// the status and the start of the body otherwise (a proxy in between, say).
pub fn problem(status: StatusCode, body: &[u8]) -> ApiError {
    let title = status.canonical_reason().unwrap_or("error").to_owned();
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => ApiError {
            status: status.as_u16(),
            title: v["title"].as_str().map(str::to_owned).unwrap_or(title),
            detail: v["detail"].as_str().map(str::to_owned),
            errors: v["errors"]
                .as_array()
                .map(|errs| {
                    errs.iter()
                        .map(|e| {
                            FieldError::new(
                                e["field"].as_str().unwrap_or_default(),
                                e["message"].as_str().unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        },
        _ => {
            let text = one_line(&String::from_utf8_lossy(body));
            let snippet: String = text.chars().take(200).collect();
            ApiError {
                status: status.as_u16(),
                title: title.clone(),
                detail: Some(if snippet.is_empty() {
                    format!("the server answered {} {title}", status.as_u16())
                } else {
                    format!("the server answered {} {title}: {snippet}", status.as_u16())
                }),
                errors: vec![],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_segments_are_encoded_and_base_paths_kept() {
        let c = Client::new("http://cp:18080/outrider/", None).unwrap();
        let u = c.url(&["api", "v1", "services", "a/b"], &[("dryRun", "true")]);
        assert_eq!(u.as_str(), "http://cp:18080/outrider/api/v1/services/a%2Fb?dryRun=true");
    }

    #[test]
    fn bad_server_addresses_are_usage_like_errors() {
        assert!(Client::new("127.0.0.1:18080", None).is_err());
        let e = Client::new("https://cp", None).err().unwrap().to_string();
        assert!(e.contains("plain HTTP"), "{e}");
    }

    #[test]
    fn problem_json_fields_are_read() {
        let body = br#"{"title":"Invalid document","status":422,"detail":"x","errors":[{"field":"rules[0].burst","message":"too small"}]}"#;
        let e = problem(StatusCode::UNPROCESSABLE_ENTITY, body);
        assert_eq!(e.errors, vec![FieldError::new("rules[0].burst", "too small")]);
        assert_eq!(e.to_string(), "invalid document: rules[0].burst: too small");
    }

    #[test]
    fn non_json_errors_show_status_and_body() {
        let e = problem(StatusCode::BAD_GATEWAY, b"<html>\nupstream down</html>");
        assert_eq!(
            e.to_string(),
            "the server answered 502 Bad Gateway: <html> upstream down</html>"
        );
    }
}
