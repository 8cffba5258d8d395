//! A typed client of the REST API (`docs/reference.md`): one method per call, answers
//! read into the `outrider-api` types; failures and problem+json become [`CliError`]s.
//!
//! It builds URLs segment by segment, sends the bearer token, and says what to do
//! when the server cannot be reached or answers something it cannot read.

use crate::error::{one_line, ApiError, CliError};
use outrider_api::{
    CanaryWeightRequest, ConfigMeta, DryRunReport, PolicyDeleted, PolicyRecord, RevisionDetail, RevisionSummary,
    RolloutRequest, RolloutStatus, SecretDeleted, SecretMeta, ServiceDetail, ServiceSummary, Sidecar,
};
use outrider_policy::{FieldError, PolicyKind};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;
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
    /// `ca_file`: PEM certificates that verify an `https://` server instead of the
    /// system roots (`--ca-file`).
    pub fn new(server: &str, token: Option<&str>, ca_file: Option<&Path>) -> Result<Self, CliError> {
        let bad = |reason: &str| CliError::BadServer {
            server: server.to_owned(),
            reason: reason.to_owned(),
        };
        let base = Url::parse(server).map_err(|e| bad(&format!("{e}; expected e.g. http://127.0.0.1:18080")))?;
        match base.scheme() {
            "http" | "https" => {}
            other => {
                return Err(bad(&format!(
                    "unsupported scheme {other:?}; expected http://host:port or https://host:port"
                )))
            }
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(bad("expected http://host:port or https://host:port"));
        }
        let mut builder = reqwest::Client::builder().use_rustls_tls();
        if let Some(path) = ca_file {
            // The operator's CA replaces the system roots: a control plane with a
            // private certificate is verified against that CA alone.
            builder = extra_roots(path)?.into_iter().fold(
                builder.tls_built_in_root_certs(false),
                reqwest::ClientBuilder::add_root_certificate,
            );
        }
        let http = builder
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

    /// `GET /services`.
    pub async fn list_services(&self) -> Result<Vec<ServiceSummary>, CliError> {
        self.get(&api(&["services"]), &[]).await
    }

    /// `GET /services/{service}`: its policies, configs, instances and traffic.
    pub async fn service(&self, service: &str) -> Result<ServiceDetail, CliError> {
        self.get(&api(&["services", service]), &[]).await
    }

    /// `GET /sidecars` page after page (following each `rel="next"` link's cursor)
    /// until the last one, or until `want.limit` sidecars are in.
    pub async fn list_sidecars(&self, want: &SidecarsWanted<'_>) -> Result<Vec<Sidecar>, CliError> {
        let mut all: Vec<Sidecar> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let remaining = want.limit.map_or(u32::MAX, |l| l - all.len() as u32);
            let page_size = want.chunk_size.min(remaining).to_string();
            let mut query: Vec<(&str, &str)> = vec![("limit", &page_size)];
            query.extend(want.service.map(|s| ("service", s)));
            query.extend(want.status.map(|s| ("status", s)));
            query.extend(after.as_deref().map(|a| ("after", a)));
            let resp = self
                .send(Method::GET, self.url(&api(&["sidecars"]), &query), None)
                .await?;
            let next = resp
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_cursor);
            let page: Vec<Sidecar> = self.read(resp).await?;
            all.extend(page);
            match next {
                Some(cursor) if want.limit.is_none_or(|l| (all.len() as u32) < l) => after = Some(cursor),
                _ => return Ok(all),
            }
        }
    }

    /// `GET …/policies/{kind}`; a missing policy is the server's 404.
    pub async fn policy(&self, service: &str, kind: PolicyKind) -> Result<PolicyRecord, CliError> {
        self.get(&policy_path(service, kind), &[]).await
    }

    /// Like [`Client::policy`], with `None` for a service that has no such policy.
    pub async fn find_policy(&self, service: &str, kind: PolicyKind) -> Result<Option<PolicyRecord>, CliError> {
        not_found_is_none(self.policy(service, kind).await)
    }

    /// `PUT …/policies/{kind}`: stores `document` (already validated by the caller).
    pub async fn put_policy(&self, service: &str, kind: PolicyKind, document: Value) -> Result<PolicyRecord, CliError> {
        self.json(
            Method::PUT,
            &policy_path(service, kind),
            &[],
            Some(Body::Json(document)),
        )
        .await
    }

    /// `PUT …/policies/{kind}?dryRun=true`: validates and reports, stores nothing.
    pub async fn dry_run_policy(
        &self,
        service: &str,
        kind: PolicyKind,
        document: Value,
    ) -> Result<DryRunReport, CliError> {
        self.json(
            Method::PUT,
            &policy_path(service, kind),
            DRY_RUN,
            Some(Body::Json(document)),
        )
        .await
    }

    /// `DELETE …/policies/{kind}`.
    pub async fn delete_policy(&self, service: &str, kind: PolicyKind) -> Result<PolicyDeleted, CliError> {
        self.json(Method::DELETE, &policy_path(service, kind), &[], None).await
    }

    /// `GET …/config/{name}` as it is, 404 included: the caller compares bytes.
    pub async fn config(&self, service: &str, name: &str) -> Result<RawResponse, CliError> {
        self.raw(&api(&["services", service, "config", name])).await
    }

    /// `PUT …/config/{name}` with the document in its own content type.
    pub async fn put_config(
        &self,
        service: &str,
        name: &str,
        content_type: &str,
        content: &[u8],
    ) -> Result<ConfigMeta, CliError> {
        let body = Body::bytes(content_type, content);
        self.json(
            Method::PUT,
            &api(&["services", service, "config", name]),
            &[],
            Some(body),
        )
        .await
    }

    /// `PUT …/config/{name}?dryRun=true`.
    pub async fn dry_run_config(
        &self,
        service: &str,
        name: &str,
        content_type: &str,
        content: &[u8],
    ) -> Result<DryRunReport, CliError> {
        let body = Body::bytes(content_type, content);
        self.json(
            Method::PUT,
            &api(&["services", service, "config", name]),
            DRY_RUN,
            Some(body),
        )
        .await
    }

    /// `GET …/secrets`: metadata only.
    pub async fn list_secrets(&self, service: &str) -> Result<Vec<SecretMeta>, CliError> {
        self.get(&api(&["services", service, "secrets"]), &[]).await
    }

    /// `PUT …/secrets/{name}` with the raw value (`dry_run`: `?dryRun=true`).
    pub async fn put_secret<T: DeserializeOwned>(
        &self,
        service: &str,
        name: &str,
        value: &[u8],
        dry_run: bool,
    ) -> Result<T, CliError> {
        let body = Body::bytes("application/octet-stream", value);
        let query = if dry_run { DRY_RUN } else { &[] };
        self.json(
            Method::PUT,
            &api(&["services", service, "secrets", name]),
            query,
            Some(body),
        )
        .await
    }

    /// `DELETE …/secrets/{name}`.
    pub async fn delete_secret(&self, service: &str, name: &str) -> Result<SecretDeleted, CliError> {
        self.json(Method::DELETE, &api(&["services", service, "secrets", name]), &[], None)
            .await
    }

    /// `GET /revisions`, newest first.
    pub async fn revisions(&self, service: Option<&str>, limit: u32) -> Result<Vec<RevisionSummary>, CliError> {
        let limit = limit.to_string();
        let mut query = vec![("limit", limit.as_str())];
        if let Some(s) = service {
            query.push(("service", s));
        }
        self.get(&api(&["revisions"]), &query).await
    }

    /// `POST /revisions/{n}/revert`: the new revision that undoes `n`.
    pub async fn revert(&self, revision: u64) -> Result<RevisionDetail, CliError> {
        let n = revision.to_string();
        self.json(Method::POST, &api(&["revisions", &n, "revert"]), &[], None)
            .await
    }

    /// `GET …/canary`: the latest rollout, `None` when the service never had one.
    pub async fn rollout(&self, service: &str) -> Result<Option<RolloutStatus>, CliError> {
        not_found_is_none(self.get(&rollout_path(service), &[]).await)
    }

    /// `POST …/canary`: starts a rollout that the control plane drives.
    pub async fn start_rollout(&self, service: &str, request: &RolloutRequest) -> Result<RolloutStatus, CliError> {
        let body = serde_json::to_value(request).map_err(|e| CliError::Invalid(e.to_string()))?;
        self.json(Method::POST, &rollout_path(service), &[], Some(Body::Json(body)))
            .await
    }

    /// `PUT …/canary/weight`: a manual canary weight, checked by the control plane
    /// (unknown service, a subset without healthy instances, an active rollout).
    pub async fn set_canary_weight(
        &self,
        service: &str,
        request: &CanaryWeightRequest,
    ) -> Result<PolicyRecord, CliError> {
        let body = serde_json::to_value(request).map_err(|e| CliError::Invalid(e.to_string()))?;
        self.json(
            Method::PUT,
            &api(&["services", service, "canary", "weight"]),
            &[],
            Some(Body::Json(body)),
        )
        .await
    }

    /// `POST …/canary/promote`: the canary becomes the stable subset with 100%.
    pub async fn promote_canary(&self, service: &str) -> Result<PolicyRecord, CliError> {
        self.json(
            Method::POST,
            &api(&["services", service, "canary", "promote"]),
            &[],
            None,
        )
        .await
    }

    /// `DELETE …/canary`: stops a running rollout; `None` when none was running.
    pub async fn abort_rollout(&self, service: &str) -> Result<Option<RolloutStatus>, CliError> {
        not_found_is_none(self.json(Method::DELETE, &rollout_path(service), &[], None).await)
    }

    async fn get<T: DeserializeOwned>(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<T, CliError> {
        self.json(Method::GET, segments, query, None).await
    }

    /// Any answer, error statuses included; only transport failures are errors
    /// (`/healthz`, `/readyz`, config documents).
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

    /// Sends a request and reads the answer as `T`, or the error answer as an
    /// [`ApiError`].
    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Body>,
    ) -> Result<T, CliError> {
        let resp = self.send(method, self.url(segments, query), body).await?;
        self.read(resp).await
    }

    /// A success answer as `T`, or the error answer as an [`ApiError`].
    async fn read<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T, CliError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return Err(problem(status, &bytes).into());
        }
        serde_json::from_slice(&bytes).map_err(|e| CliError::Transport {
            server: self.server(),
            reason: unreadable(&e),
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

/// The certificates of `--ca-file`: at least one, or an error naming the file.
fn extra_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, CliError> {
    let bad = |reason: String| CliError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no certificate (expected -----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(certs)
}

/// What `get sidecars` asks for: filters, a cap, and the page size it reads with.
#[derive(Debug, Clone, Copy, Default)]
pub struct SidecarsWanted<'a> {
    pub service: Option<&'a str>,
    pub status: Option<&'a str>,
    pub limit: Option<u32>,
    pub chunk_size: u32,
}

/// The `after` cursor of a `Link: <…?…&after=CURSOR>; rel="next"` header. The CLI
/// sends its own request with it rather than the link's path, which would lose a path
/// prefix that `--server` has (a proxy in front of the control plane).
fn next_cursor(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        if !params.split(';').any(|p| p.trim() == "rel=\"next\"") {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let url = Url::parse("http://link.invalid").ok()?.join(target).ok()?;
        url.query_pairs()
            .find(|(k, _)| k == "after")
            .map(|(_, v)| v.into_owned())
    })
}

enum Body {
    Json(Value),
    Bytes { content_type: String, bytes: Vec<u8> },
}

impl Body {
    fn bytes(content_type: &str, bytes: &[u8]) -> Self {
        Body::Bytes {
            content_type: content_type.to_owned(),
            bytes: bytes.to_vec(),
        }
    }
}

const DRY_RUN: &[(&str, &str)] = &[("dryRun", "true")];

fn policy_path(service: &str, kind: PolicyKind) -> Vec<&str> {
    api(&["services", service, "policies", kind.as_str()])
}

fn rollout_path(service: &str) -> Vec<&str> {
    api(&["services", service, "canary"])
}

/// A 404 answer as `None`: the resource does not exist, which is no failure here.
fn not_found_is_none<T>(r: Result<T, CliError>) -> Result<Option<T>, CliError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(CliError::Api(e)) if e.status == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why a success answer could not be read: not JSON at all (something else listens
/// at --server), or JSON of another shape (a control plane of another version).
fn unreadable(e: &serde_json::Error) -> String {
    if e.is_data() {
        format!("the answer is not what this outriderctl expects ({e}); is the control plane the same version?")
    } else {
        format!("the answer is not JSON ({e}); is --server the control plane's HTTP address?")
    }
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

/// The parts of a problem+json body the CLI shows. Every field is optional: a proxy
/// in between may send problem details with less than the control plane's
/// [`outrider_api::Problem`], and they should still read.
#[derive(Deserialize)]
struct ProblemBody {
    title: Option<String>,
    detail: Option<String>,
    #[serde(default)]
    errors: Vec<ProblemField>,
}

#[derive(Deserialize)]
struct ProblemField {
    #[serde(default)]
    field: String,
    #[serde(default)]
    message: String,
}

/// Reads an error answer: `application/problem+json` when the control plane sent it,
/// the status and the start of the body otherwise (a proxy in between, say).
pub fn problem(status: StatusCode, body: &[u8]) -> ApiError {
    let title = status.canonical_reason().unwrap_or("error").to_owned();
    match serde_json::from_slice::<ProblemBody>(body) {
        Ok(p) => ApiError {
            status: status.as_u16(),
            title: p.title.unwrap_or(title),
            detail: p.detail,
            errors: p
                .errors
                .into_iter()
                .map(|e| FieldError::new(e.field, e.message))
                .collect(),
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
        let c = Client::new("http://cp:18080/outrider/", None, None).unwrap();
        let u = c.url(&["api", "v1", "services", "a/b"], &[("dryRun", "true")]);
        assert_eq!(u.as_str(), "http://cp:18080/outrider/api/v1/services/a%2Fb?dryRun=true");
    }

    #[test]
    fn the_next_cursor_is_read_from_the_rel_next_link_only() {
        let link = r#"</api/v1/sidecars?service=web&limit=2&after=eyJz%3D>; rel="next""#;
        assert_eq!(next_cursor(link).as_deref(), Some("eyJz="));
        assert_eq!(
            next_cursor(r#"</x?after=a>; rel="prev", </x?after=b>; rel="next""#).as_deref(),
            Some("b")
        );
        assert_eq!(next_cursor(r#"</x?after=a>; rel="prev""#), None);
        assert_eq!(next_cursor("garbage"), None);
    }

    #[test]
    fn bad_server_addresses_are_usage_like_errors() {
        assert!(Client::new("127.0.0.1:18080", None, None).is_err());
        let e = Client::new("ftp://cp", None, None).err().unwrap().to_string();
        assert!(e.contains("--server") && e.contains("https://"), "{e}");
        assert!(Client::new("https://cp", None, None).is_ok());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "no certificate here\n").unwrap();
        let e = Client::new("https://cp", None, Some(&path)).err().unwrap().to_string();
        assert!(
            e.contains("--ca-file") && e.contains("ca.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = Client::new("https://cp", None, Some(&dir.path().join("gone.pem")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--ca-file") && e.contains("gone.pem"), "{e}");
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
