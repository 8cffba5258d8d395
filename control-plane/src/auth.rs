//! Who is calling the REST API and what they may do.
//!
//! Bearer tokens carry a role (`viewer` < `editor` < `admin`). Named tokens live in the
//! store as SHA-256 hashes; `OUTRIDER_API_TOKEN` is a bootstrap admin token named
//! `admin`. When neither exists the API is open (the server refuses non-loopback
//! listeners in that case), and the caller is `anonymous`.

use crate::store::{Role, Store, StoreError};
use axum::http::{header, HeaderMap, Method};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Name recorded for the bootstrap token (`OUTRIDER_API_TOKEN`).
pub const BOOTSTRAP_NAME: &str = "admin";
/// Name recorded when no token is configured at all.
pub const ANONYMOUS: &str = "anonymous";

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// Why a request is refused before it reaches a handler.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A fresh token: 256 random bits, hex, with a prefix that secret scanners can spot.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let mut s = String::with_capacity(5 + 64);
    s.push_str("ortk_");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// What the store keeps of a token. SHA-256 without salt or stretching is enough
/// because tokens are 256 random bits (nothing to guess), and it lets a request find
/// its token by an indexed equality lookup; a password KDF would cost tens of
/// milliseconds on every API call and buy nothing here.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Token names appear in the history as actors: short, printable, unambiguous.
pub fn validate_token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err("may contain only letters, digits, '-', '_', '.' and '@'".into());
    }
    if name == BOOTSTRAP_NAME || name == ANONYMOUS {
        return Err(format!("{name:?} is reserved"));
    }
    Ok(())
}

/// The least role a request needs: reads are for everyone with a token, changes for
/// editors, token management for admins. Decided by method and path so that a new
/// route is protected without anyone remembering to.
pub fn required_role(method: &Method, path: &str) -> Role {
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if ["/tokens", "/join-tokens"]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
    {
        Role::Admin
    } else if !read && is_secrets_path(path) {
        // Whoever sets a secret decides what a service's sidecars hold; reading
        // the metadata (never a value) is a viewer's.
        Role::Admin
    } else if read {
        Role::Viewer
    } else {
        Role::Editor
    }
}

/// `/services/{service}/secrets` and everything below it.
fn is_secrets_path(path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').split('/');
    parts.next() == Some("services") && parts.next().is_some() && parts.next() == Some("secrets")
}

/// Identifies the caller from the `Authorization` header. `bootstrap` is
/// `OUTRIDER_API_TOKEN`, if set.
pub async fn authenticate(
    store: &Store,
    bootstrap: Option<&str>,
    authorization: Option<&str>,
) -> Result<Principal, AuthError> {
    let given = authorization.and_then(bearer).filter(|t| !t.is_empty());
    let Some(given) = given else {
        // No token: fine only while no token exists anywhere.
        if bootstrap.is_some() || store.has_tokens().await? {
            return Err(AuthError::Unauthorized);
        }
        return Ok(Principal {
            name: ANONYMOUS.into(),
            role: Role::Admin,
        });
    };
    if let Some(bootstrap) = bootstrap {
        if crate::secret::constant_time_eq(given.as_bytes(), bootstrap.as_bytes()) {
            return Ok(Principal {
                name: BOOTSTRAP_NAME.into(),
                role: Role::Admin,
            });
        }
    }
    match store.token_by_hash(&hash_token(given)).await? {
        Some(t) => Ok(Principal {
            name: t.name,
            role: t.role,
        }),
        None => Err(AuthError::Unauthorized),
    }
}

/// The token of an `Authorization: Bearer …` value. The scheme is case-insensitive
/// (RFC 9110 §11.1), so `bearer x` and `BEARER x` work like `Bearer x`.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Failed authentications per client address, as a GCRA bucket each: a client may
/// fail `burst` times in a row, then once per `period / burst`; past that its failed
/// requests are answered 429 with `Retry-After`. Only failures are counted and a
/// valid token is always checked first, so a throttled address still gets in with a
/// good token. Tokens are 256 random bits, so this is not what stops guessing: it
/// sheds a misbehaving client's load and makes it visible (a metric, a log line).
pub struct AuthThrottle {
    /// Time between two failures a client is allowed, once its burst is spent.
    interval: Duration,
    /// How far ahead of now a client's theoretical arrival time may run.
    tolerance: Duration,
    /// Theoretical arrival time of each client's next allowed failure.
    clients: Mutex<HashMap<IpAddr, Instant>>,
}

/// How many addresses are tracked at most; past that, expired entries are dropped,
/// and if none has expired every address shares one bucket, so the map stays bounded
/// under a flood of sources.
const MAX_TRACKED_CLIENTS: usize = 10_000;

impl AuthThrottle {
    /// `burst` failures per `period` (both at least 1).
    pub fn new(burst: u32, period: Duration) -> Self {
        let burst = burst.max(1);
        let interval = (period / burst).max(Duration::from_millis(1));
        Self {
            interval,
            tolerance: interval * (burst - 1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failed authentication from `ip`. `None` while the client is within
    /// its allowance; otherwise how long until its next failure would be allowed.
    pub fn failed(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if clients.len() >= MAX_TRACKED_CLIENTS && !clients.contains_key(&ip) {
            clients.retain(|_, tat| *tat > now);
        }
        let key = if clients.len() >= MAX_TRACKED_CLIENTS && !clients.contains_key(&ip) {
            IpAddr::from([0, 0, 0, 0])
        } else {
            ip
        };
        let tat = clients.get(&key).copied().unwrap_or(now).max(now);
        let allowed_from = tat.checked_sub(self.tolerance).unwrap_or(now);
        if allowed_from > now {
            return Some(allowed_from - now);
        }
        clients.insert(key, tat + self.interval);
        None
    }
}

impl Default for AuthThrottle {
    /// Ten failures a minute per address.
    fn default() -> Self {
        Self::new(10, Duration::from_secs(60))
    }
}

/// Authenticates, then checks the role the request (method, path below `/api/v1`) needs.
pub async fn authorize(
    store: &Store,
    bootstrap: Option<&str>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Principal, AuthError> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let p = authenticate(store, bootstrap, auth).await?;
    let need = required_role(method, path);
    if p.role < need {
        return Err(AuthError::Forbidden(format!(
            "token {:?} has role {}; this needs {need}",
            p.name, p.role
        )));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_a_viewer_changes_an_editor_and_tokens_an_admin() {
        assert_eq!(required_role(&Method::GET, "/services"), Role::Viewer);
        assert_eq!(
            required_role(&Method::PUT, "/services/web/policies/rate-limit"),
            Role::Editor
        );
        assert_eq!(required_role(&Method::DELETE, "/services/web/config/a"), Role::Editor);
        assert_eq!(required_role(&Method::POST, "/revisions/3/revert"), Role::Editor);
        assert_eq!(required_role(&Method::GET, "/tokens"), Role::Admin);
        assert_eq!(required_role(&Method::DELETE, "/tokens/alice"), Role::Admin);
    }

    #[test]
    fn secrets_are_written_by_admins_and_their_metadata_read_by_viewers() {
        assert_eq!(required_role(&Method::PUT, "/services/web/secrets/db"), Role::Admin);
        assert_eq!(required_role(&Method::DELETE, "/services/web/secrets/db"), Role::Admin);
        assert_eq!(required_role(&Method::POST, "/services/web/secrets"), Role::Admin);
        assert_eq!(required_role(&Method::GET, "/services/web/secrets"), Role::Viewer);
        assert_eq!(required_role(&Method::GET, "/services/web/secrets/db"), Role::Viewer);
        // A config document that happens to be called "secrets" is still an editor's.
        assert_eq!(
            required_role(&Method::PUT, "/services/web/config/secrets"),
            Role::Editor
        );
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_is_throttled_after_its_burst_of_failures_and_recovers_with_time() {
        let throttle = AuthThrottle::new(3, Duration::from_secs(60));
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        for _ in 0..3 {
            assert_eq!(throttle.failed(a), None);
        }
        let wait = throttle.failed(a).expect("the fourth failure in a row is throttled");
        assert!(wait <= Duration::from_secs(20), "{wait:?}");
        assert_eq!(throttle.failed(b), None, "another address has its own bucket");
        tokio::time::advance(wait).await;
        assert_eq!(
            throttle.failed(a),
            None,
            "one more failure is allowed once the interval passed"
        );
        assert!(throttle.failed(a).is_some());
    }

    #[test]
    fn generated_tokens_are_distinct_and_hash_to_64_hex_digits() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with("ortk_") && a.len() == 69);
        let h = hash_token(&a);
        assert_eq!(h.len(), 64);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(h, hash_token(&b));
        // The SHA-256 test vector, so the stored hashes stay readable by other tools.
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn token_names_are_checked_and_bootstrap_names_reserved() {
        assert!(validate_token_name("alice@ops").is_ok());
        assert!(validate_token_name("").is_err());
        assert!(validate_token_name("a b").is_err());
        assert!(validate_token_name("admin").is_err());
        assert!(validate_token_name("anonymous").is_err());
    }
}
