//! Inbound rate limiting (`RateLimitPolicy` in `docs/reference.md`): a policy compiled into
//! lock-free token buckets that the inbound proxy checks on every request.
//!
//! Each bucket is one `AtomicU64` run as GCRA (the "generic cell rate algorithm"): it
//! stores the *theoretical arrival time* (TAT) in nanoseconds since the bucket map's
//! base `Instant`, and a request is admitted with one compare-and-swap. GCRA is
//! exactly a token bucket of capacity `burst` refilled at `rate`, but needs no refill
//! timer and no lock. Per-key buckets (`client-ip`, `header:<name>`) live in a sharded
//! `DashMap` whose size is bounded per rule; buckets that have refilled completely
//! carry no information and are the ones evicted.
//!
//! Response headers follow draft-ietf-httpapi-ratelimit-headers (structured fields):
//! `RateLimit-Policy: "<rule>";q=<quota>;w=<window>` and
//! `RateLimit: "<rule>";r=<remaining>;t=<seconds>`, plus `Retry-After` on a denial.

use crate::matcher::RequestMatcher;
use bytes::{BufMut, BytesMut};
use dashmap::DashMap;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::HeaderMap;
use outrider_policy::{RateLimitKey, RateLimitPolicy, RateLimitRule, Scope};
use std::borrow::Borrow;
use std::fmt::Write as _;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Upper bound on distinct keys (client IPs, header values) tracked per rule. At
/// roughly 100 bytes an entry (plus the key itself, see [`MAX_KEY_LEN`]) this keeps a
/// rule under a few tens of MiB even when every request carries a fresh key.
pub const DEFAULT_MAX_KEYS_PER_RULE: usize = 100_000;

/// Header values longer than this are not tracked one by one: they share the rule's
/// overflow bucket. Otherwise a client could pin `MAX_KEYS × 64 KiB` of memory with
/// long random values; sharing a bucket still limits such clients, collectively.
pub const MAX_KEY_LEN: usize = 256;

/// When a key map is full, idle buckets are swept out at most this often, so that a
/// flood of new keys cannot turn every request into a full scan of the map.
const SWEEP_INTERVAL_NS: u64 = 100_000_000;

const NANOS_PER_SEC: f64 = 1e9;

/// Caps the GCRA parameters so that `TAT + T` and `now + τ` never overflow `u64`
/// (about 146 years in nanoseconds; a bucket slower than that is "never refills").
const MAX_INTERVAL_NS: u64 = u64::MAX / 4;

pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// A compiled `RateLimitPolicy`. Cheap to check; immutable once built, except for
/// the bucket contents.
#[derive(Default)]
pub struct RateLimiter {
    rules: Box<[CompiledRule]>,
}

/// What the headers of a response say about one rule, and the rule itself.
#[derive(Debug)]
pub struct RuleInfo {
    name: Box<str>,
    key: RateLimitKey,
    /// `burst` after the service share, at least 1 (see [`RateLimiter::compile`]).
    burst: f64,
    /// `requestsPerSecond` after the service share.
    rate: f64,
    /// Precomputed `RateLimit-Policy` value: it only changes with the policy.
    policy_header: HeaderValue,
    /// `"<name>";r=` — the constant prefix of the `RateLimit` value.
    state_prefix: Box<[u8]>,
}

impl RuleInfo {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Effective requests per second of this instance's bucket.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Effective bucket size of this instance.
    pub fn burst(&self) -> f64 {
        self.burst
    }
}

/// The state of one rule's bucket as seen by one request.
#[derive(Debug, Clone, Copy)]
pub struct Quota<'a> {
    pub rule: &'a RuleInfo,
    /// Whole requests that would still be admitted right now.
    pub remaining: u64,
    /// Seconds until the bucket is full again (0 when it already is).
    pub reset_secs: u64,
}

/// The outcome of [`RateLimiter::check`].
#[derive(Debug, Clone, Copy)]
pub enum Decision<'a> {
    /// Admitted. Carries the most restrictive matching rule (fewest remaining
    /// requests), or `None` when no rule matched the request.
    Allow(Option<Quota<'a>>),
    /// Refused by `quota.rule`; the client may retry after `retry_after_secs` (≥ 1).
    Deny { quota: Quota<'a>, retry_after_secs: u64 },
}

impl Decision<'_> {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Decision::Allow(_) => None,
            Decision::Deny { retry_after_secs, .. } => Some(*retry_after_secs),
        }
    }

    /// The response headers this decision calls for, detached from the limiter so
    /// that they can be kept across an `.await` on the upstream.
    pub fn headers(&self) -> Option<RateLimitHeaders> {
        let (quota, retry_after) = match self {
            Decision::Allow(None) => return None,
            Decision::Allow(Some(q)) => (q, None),
            Decision::Deny {
                quota,
                retry_after_secs,
            } => (quota, Some(*retry_after_secs)),
        };
        Some(RateLimitHeaders {
            policy: quota.rule.policy_header.clone(),
            state: state_header(quota),
            retry_after: retry_after.map(HeaderValue::from),
        })
    }

    /// Writes `RateLimit-Policy`, `RateLimit` and (on denial) `Retry-After`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        if let Some(h) = self.headers() {
            h.write_to(headers);
        }
    }
}

/// Owned `RateLimit-Policy` / `RateLimit` / `Retry-After` values for one response.
#[derive(Debug, Clone)]
pub struct RateLimitHeaders {
    policy: HeaderValue,
    /// `None` only if the value could not be encoded (it always can: the prefix is
    /// sanitised at compile time); then the header is left out rather than panicking.
    state: Option<HeaderValue>,
    retry_after: Option<HeaderValue>,
}

impl RateLimitHeaders {
    pub fn write_to(self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY.clone(), self.policy);
        if let Some(state) = self.state {
            headers.insert(RATELIMIT.clone(), state);
        }
        if let Some(retry_after) = self.retry_after {
            headers.insert(RETRY_AFTER, retry_after);
        }
    }
}

/// `"<name>";r=<remaining>;t=<reset>`, built with a single small allocation.
fn state_header(q: &Quota<'_>) -> Option<HeaderValue> {
    let prefix = &q.rule.state_prefix;
    let mut buf = BytesMut::with_capacity(prefix.len() + 2 * 20 + 3);
    buf.put_slice(prefix);
    // Writing into a BytesMut cannot fail.
    let _ = write!(buf, "{};t={}", q.remaining, q.reset_secs);
    HeaderValue::from_maybe_shared(buf.freeze()).ok()
}

struct CompiledRule {
    info: RuleInfo,
    matcher: RequestMatcher,
    /// GCRA emission interval `T = 1 / rate`, in nanoseconds.
    interval_ns: u64,
    /// GCRA tolerance `τ = burst × T`: how far the TAT may run ahead of now.
    tolerance_ns: u64,
    buckets: Arc<Buckets>,
}

impl RateLimiter {
    /// A limiter that admits everything; `check` returns at once.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Compiles `policy` for this instance.
    ///
    /// `scope: service` rules get `requestsPerSecond × service_share` and
    /// `burst × service_share` (share in (0, 1], 1 / healthy instances). A fractional
    /// burst is kept as such (burst 5 over two instances admits 2 at once per
    /// instance) but never drops below 1: a bucket smaller than one request would
    /// refuse everything forever, while the rate alone still splits correctly.
    ///
    /// Buckets of a rule in `previous` with the same name and key are reused (the
    /// same `Arc`), so that a re-split or an unrelated policy change does not hand
    /// every client a fresh burst. The TAT is a point in time, so a drained bucket
    /// stays drained for as long as the debt takes to repay at the new rate.
    pub fn compile(
        policy: Option<&RateLimitPolicy>,
        service_share: f64,
        previous: Option<&RateLimiter>,
    ) -> RateLimiter {
        Self::compile_with_max_keys(policy, service_share, previous, DEFAULT_MAX_KEYS_PER_RULE)
    }

    /// [`compile`](Self::compile) with an explicit bound on keys per rule (only for
    /// newly created bucket maps; carried-over maps keep theirs).
    pub fn compile_with_max_keys(
        policy: Option<&RateLimitPolicy>,
        service_share: f64,
        previous: Option<&RateLimiter>,
        max_keys: usize,
    ) -> RateLimiter {
        let Some(policy) = policy else {
            return Self::empty();
        };
        let share = if service_share.is_finite() && service_share > 0.0 {
            service_share.min(1.0)
        } else {
            1.0
        };
        let rules = policy
            .rules
            .iter()
            .map(|rule| {
                let carried = previous
                    .and_then(|p| {
                        p.rules
                            .iter()
                            .find(|r| *r.info.name == *rule.name && r.info.key == rule.key)
                    })
                    .map(|r| Arc::clone(&r.buckets));
                CompiledRule::new(rule, share, carried, max_keys)
            })
            .collect();
        RateLimiter { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The compiled rules, in policy order.
    pub fn rules(&self) -> impl Iterator<Item = &RuleInfo> {
        self.rules.iter().map(|r| &r.info)
    }

    /// Number of per-key buckets a rule currently tracks (`None` for an unknown rule).
    pub fn key_count(&self, rule: &str) -> Option<usize> {
        self.rules
            .iter()
            .find(|r| &*r.info.name == rule)
            .map(|r| r.buckets.key_count())
    }

    /// Checks one request against every matching rule, in policy order.
    ///
    /// All matching rules must admit the request. When rule *n* refuses, the tokens
    /// already taken from rules *1..n* are handed back, so a refused request costs
    /// nothing anywhere (a concurrent request may briefly see those buckets lower;
    /// GCRA updates commute, so the refund is exact). The denial names the first
    /// refusing rule.
    pub fn check(&self, path: &str, headers: &HeaderMap, client_ip: IpAddr, now: Instant) -> Decision<'_> {
        self.check_from(path, headers, client_ip, None, now)
    }

    /// [`check`](Self::check) for a caller whose mTLS identity is `peer` (`None`: a
    /// plaintext caller), which `key: peer-identity` rules are keyed by. Plaintext
    /// callers share one bucket, as requests missing a key header do: an address would
    /// let one client spread over many buckets behind a proxy, and no identity is proven.
    pub fn check_from(
        &self,
        path: &str,
        headers: &HeaderMap,
        client_ip: IpAddr,
        peer: Option<&str>,
        now: Instant,
    ) -> Decision<'_> {
        if self.rules.is_empty() {
            return Decision::Allow(None);
        }
        let mut tightest: Option<Quota<'_>> = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matches(path, headers) {
                continue;
            }
            let key = rule.key_of(headers, client_ip, peer);
            match rule.acquire(&key, now) {
                Ok(quota) => {
                    let tighter = tightest.is_none_or(|t| {
                        (quota.remaining, std::cmp::Reverse(quota.reset_secs))
                            < (t.remaining, std::cmp::Reverse(t.reset_secs))
                    });
                    if tighter {
                        tightest = Some(quota);
                    }
                }
                Err((quota, retry_after_secs)) => {
                    for earlier in self.rules[..i].iter().filter(|r| r.matches(path, headers)) {
                        earlier.refund(&earlier.key_of(headers, client_ip, peer), now);
                    }
                    return Decision::Deny {
                        quota,
                        retry_after_secs,
                    };
                }
            }
        }
        Decision::Allow(tightest)
    }
}

/// A request's bucket key for one rule, borrowed from the request.
enum Key<'r> {
    Single,
    Ip(IpAddr),
    Header(&'r [u8]),
    MissingHeader,
    /// A caller's SPIFFE ID.
    Peer(&'r [u8]),
    /// A plaintext caller of a `peer-identity` rule.
    NoPeer,
}

impl CompiledRule {
    fn new(rule: &RateLimitRule, share: f64, carried: Option<Arc<Buckets>>, max_keys: usize) -> Self {
        let (mut rate, mut burst) = (rule.requests_per_second, rule.burst());
        if rule.scope == Scope::Service {
            rate *= share;
            burst *= share;
        }
        // The policy crate has validated these; the guards keep arithmetic sane
        // even if a future caller skips validation.
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            f64::MIN_POSITIVE
        };
        let burst = if burst.is_finite() { burst.max(1.0) } else { 1.0 };
        let interval = (NANOS_PER_SEC / rate).round().clamp(1.0, MAX_INTERVAL_NS as f64);
        // τ from the *rounded* T so that an integral burst admits exactly `burst`
        // requests at once (B·T ≤ τ holds with equality, no rounding surprise).
        let tolerance = (burst * interval).round().min(MAX_INTERVAL_NS as f64);
        let (interval_ns, tolerance_ns) = (interval as u64, tolerance as u64);

        let sf_name = sf_string(&rule.name);
        let quota = burst.floor().max(1.0) as u64;
        let window = ceil_secs(tolerance_ns).max(1);
        let policy_header = HeaderValue::from_maybe_shared(format!("{sf_name};q={quota};w={window}"))
            .unwrap_or_else(|_| HeaderValue::from_static("\"invalid\""));
        let state_prefix = format!("{sf_name};r=").into_bytes().into_boxed_slice();

        let key_header = match &rule.key {
            RateLimitKey::Header(name) => HeaderName::from_bytes(name.as_bytes()).ok(),
            _ => None,
        };
        let buckets = carried.unwrap_or_else(|| Arc::new(Buckets::new(&rule.key, key_header, max_keys)));
        CompiledRule {
            info: RuleInfo {
                name: rule.name.as_str().into(),
                key: rule.key.clone(),
                burst,
                rate,
                policy_header,
                state_prefix,
            },
            matcher: RequestMatcher::compile(&rule.matches),
            interval_ns,
            tolerance_ns,
            buckets,
        }
    }

    fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        self.matcher.matches(path, headers)
    }

    fn key_of<'r>(&self, headers: &'r HeaderMap, client_ip: IpAddr, peer: Option<&'r str>) -> Key<'r> {
        match &self.buckets.keyed {
            Keyed::Single => Key::Single,
            Keyed::Peer(_) => peer.map_or(Key::NoPeer, |p| Key::Peer(p.as_bytes())),
            Keyed::Ip(_) => Key::Ip(client_ip.to_canonical()),
            Keyed::Header(name, _) => match name.as_ref().and_then(|n| headers.get(n)) {
                Some(v) => Key::Header(v.as_bytes()),
                None => Key::MissingHeader,
            },
        }
    }

    /// Takes one token, or says how long until one is available.
    fn acquire(&self, key: &Key<'_>, now: Instant) -> Result<Quota<'_>, (Quota<'_>, u64)> {
        let now_ns = self.buckets.nanos(now);
        let (t, tau) = (self.interval_ns, self.tolerance_ns);
        self.buckets.with_slot(key, now_ns, |slot| {
            let mut tat = slot.load(Ordering::Acquire);
            loop {
                let new_tat = tat.max(now_ns).saturating_add(t);
                let ahead = new_tat - now_ns;
                if ahead > tau {
                    let quota = Quota {
                        rule: &self.info,
                        remaining: 0,
                        reset_secs: ceil_secs(tat.saturating_sub(now_ns)),
                    };
                    return Err((quota, ceil_secs(ahead - tau).max(1)));
                }
                match slot.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        let quota = Quota {
                            rule: &self.info,
                            remaining: (tau - ahead) / t,
                            reset_secs: ceil_secs(ahead),
                        };
                        return Ok(quota);
                    }
                    Err(current) => tat = current,
                }
            }
        })
    }

    /// Gives back a token taken by [`acquire`](Self::acquire) for a refused request.
    fn refund(&self, key: &Key<'_>, now: Instant) {
        let now_ns = self.buckets.nanos(now);
        let t = self.interval_ns;
        self.buckets.with_existing_slot(key, |slot| {
            // Never move the TAT below `now`: that would bank extra burst.
            let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                (tat > now_ns).then(|| tat.saturating_sub(t).max(now_ns))
            });
        });
    }
}

/// The buckets of one rule, shared across recompilations (see `compile`).
struct Buckets {
    base: Instant,
    /// The bucket of a `none` rule, or of requests missing the key header.
    single: AtomicU64,
    keyed: Keyed,
}

enum Keyed {
    Single,
    Ip(KeyMap<IpAddr>),
    /// `None` if the configured name is not a valid header name: every request then
    /// counts as missing the header.
    Header(Option<HeaderName>, KeyMap<Box<[u8]>>),
    /// By the caller's SPIFFE ID; plaintext callers share `single`.
    Peer(KeyMap<Box<[u8]>>),
}

impl Buckets {
    fn new(key: &RateLimitKey, header: Option<HeaderName>, max_keys: usize) -> Self {
        let keyed = match key {
            RateLimitKey::None => Keyed::Single,
            RateLimitKey::ClientIp => Keyed::Ip(KeyMap::new(max_keys)),
            RateLimitKey::Header(_) => Keyed::Header(header, KeyMap::new(max_keys)),
            RateLimitKey::PeerIdentity => Keyed::Peer(KeyMap::new(max_keys)),
        };
        Buckets {
            base: Instant::now(),
            single: AtomicU64::new(0),
            keyed,
        }
    }

    /// Nanoseconds since `base`. A TAT of 0 means "full", which `max(TAT, now)` makes
    /// work without special cases.
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX / 2)
    }

    fn key_count(&self) -> usize {
        match &self.keyed {
            Keyed::Single => 0,
            Keyed::Ip(m) => m.len.load(Ordering::Relaxed),
            Keyed::Header(_, m) | Keyed::Peer(m) => m.len.load(Ordering::Relaxed),
        }
    }

    fn with_slot<R>(&self, key: &Key<'_>, now_ns: u64, f: impl FnOnce(&AtomicU64) -> R) -> R {
        match (key, &self.keyed) {
            (Key::Ip(ip), Keyed::Ip(map)) => map.with_slot(ip, |ip| *ip, now_ns, f),
            (Key::Header(v), Keyed::Header(_, map)) if v.len() <= MAX_KEY_LEN => {
                map.with_slot(*v, |v| Box::from(v), now_ns, f)
            }
            (Key::Header(_), Keyed::Header(_, map)) => f(&map.overflow),
            (Key::Peer(v), Keyed::Peer(map)) if v.len() <= MAX_KEY_LEN => {
                map.with_slot(*v, |v| Box::from(v), now_ns, f)
            }
            (Key::Peer(_), Keyed::Peer(map)) => f(&map.overflow),
            _ => f(&self.single),
        }
    }

    fn with_existing_slot(&self, key: &Key<'_>, f: impl FnOnce(&AtomicU64)) {
        match (key, &self.keyed) {
            (Key::Ip(ip), Keyed::Ip(map)) => map.with_existing_slot(ip, f),
            (Key::Header(v), Keyed::Header(_, map)) if v.len() <= MAX_KEY_LEN => map.with_existing_slot(*v, f),
            (Key::Header(_), Keyed::Header(_, map)) => f(&map.overflow),
            (Key::Peer(v), Keyed::Peer(map)) if v.len() <= MAX_KEY_LEN => map.with_existing_slot(*v, f),
            (Key::Peer(_), Keyed::Peer(map)) => f(&map.overflow),
            _ => f(&self.single),
        }
    }
}

/// Per-key buckets of one rule, bounded to `max` entries.
struct KeyMap<K: Eq + Hash> {
    map: DashMap<K, AtomicU64>,
    /// Tracked beside the map: `DashMap::len` would lock every shard.
    len: AtomicUsize,
    max: usize,
    next_sweep_ns: AtomicU64,
    /// Shared by keys that cannot get a bucket of their own (map full of active
    /// buckets, or an over-long key): they are still limited, just together.
    overflow: AtomicU64,
}

impl<K: Eq + Hash> KeyMap<K> {
    fn new(max: usize) -> Self {
        KeyMap {
            map: DashMap::new(),
            len: AtomicUsize::new(0),
            max,
            next_sweep_ns: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
        }
    }

    /// Runs `f` on the key's bucket, creating it if needed. Looking up an existing
    /// key borrows `key` and does not allocate; `to_owned` runs only on insertion.
    fn with_slot<Q, R>(
        &self,
        key: &Q,
        to_owned: impl FnOnce(&Q) -> K,
        now_ns: u64,
        f: impl FnOnce(&AtomicU64) -> R,
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(slot) = self.map.get(key) {
            return f(&slot);
        }
        if self.len.load(Ordering::Relaxed) >= self.max {
            self.sweep(now_ns);
            if self.len.load(Ordering::Relaxed) >= self.max {
                return f(&self.overflow);
            }
        }
        let slot = self
            .map
            .entry(to_owned(key))
            .or_insert_with(|| {
                self.len.fetch_add(1, Ordering::Relaxed);
                AtomicU64::new(0)
            })
            .downgrade();
        f(&slot)
    }

    fn with_existing_slot<Q>(&self, key: &Q, f: impl FnOnce(&AtomicU64))
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(slot) = self.map.get(key) {
            f(&slot);
        }
    }

    /// Drops buckets that have refilled completely: a fresh bucket is identical, so
    /// forgetting them loses nothing. Throttled by [`SWEEP_INTERVAL_NS`].
    fn sweep(&self, now_ns: u64) {
        let due = self.next_sweep_ns.load(Ordering::Relaxed);
        if now_ns < due
            || self
                .next_sweep_ns
                .compare_exchange(
                    due,
                    now_ns.saturating_add(SWEEP_INTERVAL_NS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        self.map.retain(|_, tat| {
            let keep = tat.load(Ordering::Acquire) > now_ns;
            if !keep {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
    }
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// Renders `s` as a structured-field string (RFC 8941 §3.3.3): printable ASCII only,
/// `"` and `\` escaped. Other characters become `?`, since rule names are free text.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn policy(json: &str) -> RateLimitPolicy {
        outrider_policy::parse_document(json.as_bytes()).expect("valid policy")
    }

    fn limiter(json: &str, share: f64) -> RateLimiter {
        RateLimiter::compile(Some(&policy(json)), share, None)
    }

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

    fn allowed(l: &RateLimiter, n: usize, headers: &HeaderMap, ip: IpAddr, now: Instant) -> usize {
        (0..n).filter(|_| l.check("/", headers, ip, now).is_allowed()).count()
    }

    fn with_header(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn thirty_immediate_requests_at_rps5_burst5_admit_exactly_five() {
        let l = limiter(r#"{"rules":[{"name":"all","requestsPerSecond":5,"burst":5}]}"#, 1.0);
        assert_eq!(allowed(&l, 30, &HeaderMap::new(), IP, Instant::now()), 5);
    }

    #[test]
    fn bucket_refills_at_the_rate() {
        let l = limiter(r#"{"rules":[{"name":"all","requestsPerSecond":5,"burst":5}]}"#, 1.0);
        let t0 = Instant::now();
        assert_eq!(allowed(&l, 10, &HeaderMap::new(), IP, t0), 5);
        // 1 s at 5 rps refills the whole bucket, and no more.
        assert_eq!(allowed(&l, 10, &HeaderMap::new(), IP, t0 + Duration::from_secs(1)), 5);
        assert_eq!(
            allowed(&l, 10, &HeaderMap::new(), IP, t0 + Duration::from_millis(1200)),
            1
        );
    }

    #[test]
    fn separate_header_values_have_separate_buckets() {
        let l = limiter(
            r#"{"rules":[{"name":"per-client","key":"header:X-Client-Id","requestsPerSecond":1,"burst":2}]}"#,
            1.0,
        );
        let now = Instant::now();
        assert_eq!(allowed(&l, 5, &with_header("x-client-id", "a"), IP, now), 2);
        assert_eq!(allowed(&l, 5, &with_header("x-client-id", "b"), IP, now), 2);
        // Requests without the header share one bucket of their own.
        assert_eq!(allowed(&l, 5, &HeaderMap::new(), IP, now), 2);
        assert_eq!(l.key_count("per-client"), Some(2));
    }

    #[test]
    fn separate_client_ips_have_separate_buckets() {
        let l = limiter(
            r#"{"rules":[{"name":"ip","key":"client-ip","requestsPerSecond":1,"burst":1}]}"#,
            1.0,
        );
        let now = Instant::now();
        let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(allowed(&l, 3, &HeaderMap::new(), IP, now), 1);
        assert_eq!(allowed(&l, 3, &HeaderMap::new(), other, now), 1);
        // An IPv4-mapped IPv6 peer is the same client as its IPv4 form.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(allowed(&l, 3, &HeaderMap::new(), mapped, now), 0);
    }

    #[test]
    fn service_share_of_half_halves_the_burst() {
        let json = r#"{"rules":[{"name":"all","requestsPerSecond":10,"burst":5,"scope":"service"}]}"#;
        let l = limiter(json, 0.5);
        // 2.5 tokens: two whole requests.
        assert_eq!(allowed(&l, 10, &HeaderMap::new(), IP, Instant::now()), 2);
        assert_eq!(l.rules().next().unwrap().rate(), 5.0);
        // `scope: instance` ignores the share.
        let l = limiter(r#"{"rules":[{"name":"all","requestsPerSecond":10,"burst":5}]}"#, 0.5);
        assert_eq!(allowed(&l, 10, &HeaderMap::new(), IP, Instant::now()), 5);
    }

    #[test]
    fn tiny_share_still_admits_one_request() {
        let json = r#"{"rules":[{"name":"all","requestsPerSecond":1,"burst":1,"scope":"service"}]}"#;
        let l = limiter(json, 0.1);
        assert_eq!(allowed(&l, 5, &HeaderMap::new(), IP, Instant::now()), 1);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let l = limiter(r#"{"rules":[{"name":"fast","requestsPerSecond":1000,"burst":1}]}"#, 1.0);
        let now = Instant::now();
        assert!(l.check("/", &HeaderMap::new(), IP, now).is_allowed());
        let d = l.check("/", &HeaderMap::new(), IP, now);
        assert_eq!(d.retry_after_secs(), Some(1));

        let slow = limiter(r#"{"rules":[{"name":"slow","requestsPerSecond":0.1,"burst":1}]}"#, 1.0);
        assert!(slow.check("/", &HeaderMap::new(), IP, now).is_allowed());
        assert_eq!(slow.check("/", &HeaderMap::new(), IP, now).retry_after_secs(), Some(10));
    }

    #[test]
    fn carry_over_keeps_a_drained_bucket_drained() {
        let json = r#"{"rules":[{"name":"all","requestsPerSecond":5,"burst":5,"scope":"service"}]}"#;
        let p = policy(json);
        let first = RateLimiter::compile(Some(&p), 1.0, None);
        let now = Instant::now();
        assert_eq!(allowed(&first, 10, &HeaderMap::new(), IP, now), 5);
        // The service gains an instance: same rule, new share.
        let second = RateLimiter::compile(Some(&p), 0.5, Some(&first));
        assert_eq!(allowed(&second, 10, &HeaderMap::new(), IP, now), 0);
        // A renamed rule is a new rule with fresh buckets.
        let renamed = limiter(r#"{"rules":[{"name":"other","requestsPerSecond":5,"burst":5}]}"#, 1.0);
        let third = RateLimiter::compile(
            Some(&policy(
                r#"{"rules":[{"name":"other","requestsPerSecond":5,"burst":5}]}"#,
            )),
            1.0,
            Some(&renamed),
        );
        assert_eq!(allowed(&third, 10, &HeaderMap::new(), IP, now), 5);
    }

    #[test]
    fn key_eviction_bounds_memory() {
        let p = policy(r#"{"rules":[{"name":"ip","key":"client-ip","requestsPerSecond":1,"burst":1}]}"#);
        let l = RateLimiter::compile_with_max_keys(Some(&p), 1.0, None, 8);
        let t0 = Instant::now();
        for i in 0..100u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            l.check("/", &HeaderMap::new(), ip, t0);
        }
        assert_eq!(l.key_count("ip"), Some(8));
        // Once the buckets have refilled they are idle and make room for new keys.
        let later = t0 + Duration::from_secs(5);
        let fresh = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1));
        assert!(l.check("/", &HeaderMap::new(), fresh, later).is_allowed());
        assert_eq!(l.key_count("ip"), Some(1));
    }

    #[test]
    fn peer_identity_keys_a_bucket_per_caller_and_plaintext_callers_share_one() {
        let l = limiter(
            r#"{"rules":[{"name":"p","key":"peer-identity","requestsPerSecond":1,"burst":1}]}"#,
            1.0,
        );
        let now = Instant::now();
        let h = HeaderMap::new();
        let web = Some("spiffe://outrider.local/ns/default/svc/web");
        let api = Some("spiffe://outrider.local/ns/default/svc/api");
        assert!(l.check_from("/", &h, IP, web, now).is_allowed());
        assert!(!l.check_from("/", &h, IP, web, now).is_allowed());
        assert!(
            l.check_from("/", &h, IP, api, now).is_allowed(),
            "another caller has its own bucket"
        );
        let other_ip = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9));
        assert!(l.check_from("/", &h, IP, None, now).is_allowed());
        assert!(
            !l.check_from("/", &h, other_ip, None, now).is_allowed(),
            "plaintext callers share one bucket whatever their address"
        );
        assert_eq!(l.key_count("p"), Some(2));
    }

    #[test]
    fn over_long_header_values_share_the_overflow_bucket() {
        let l = limiter(
            r#"{"rules":[{"name":"h","key":"header:x-k","requestsPerSecond":1,"burst":1}]}"#,
            1.0,
        );
        let now = Instant::now();
        let mut h = HeaderMap::new();
        h.insert("x-k", HeaderValue::from_str(&"a".repeat(MAX_KEY_LEN + 1)).unwrap());
        assert!(l.check("/", &h, IP, now).is_allowed());
        h.insert("x-k", HeaderValue::from_str(&"b".repeat(MAX_KEY_LEN + 1)).unwrap());
        assert!(!l.check("/", &h, IP, now).is_allowed());
        assert_eq!(l.key_count("h"), Some(0));
    }

    #[test]
    fn rules_match_on_path_prefix_and_exact_headers() {
        let l = limiter(
            r#"{"rules":[{"name":"api","match":{"pathPrefix":"/api","headers":{"X-Tier":"free"}},
                "requestsPerSecond":1,"burst":1}]}"#,
            1.0,
        );
        let now = Instant::now();
        let free = with_header("x-tier", "free");
        assert!(l.check("/api/a", &free, IP, now).is_allowed());
        assert!(!l.check("/api/b", &free, IP, now).is_allowed());
        // Not matched: other path, other header value, no header.
        assert!(matches!(l.check("/web", &free, IP, now), Decision::Allow(None)));
        assert!(matches!(
            l.check("/api", &with_header("x-tier", "paid"), IP, now),
            Decision::Allow(None)
        ));
        assert!(matches!(
            l.check("/api", &HeaderMap::new(), IP, now),
            Decision::Allow(None)
        ));
    }

    #[test]
    fn a_refused_request_takes_no_token_from_other_rules() {
        let l = limiter(
            r#"{"rules":[{"name":"wide","requestsPerSecond":1,"burst":3},
                         {"name":"narrow","match":{"pathPrefix":"/x"},"requestsPerSecond":1,"burst":1}]}"#,
            1.0,
        );
        let now = Instant::now();
        assert!(l.check("/x", &HeaderMap::new(), IP, now).is_allowed());
        for _ in 0..5 {
            let d = l.check("/x", &HeaderMap::new(), IP, now);
            assert!(matches!(d, Decision::Deny { quota, .. } if quota.rule.name() == "narrow"));
        }
        // "wide" lost only the one admitted request.
        assert_eq!(allowed(&l, 5, &HeaderMap::new(), IP, now), 2);
    }

    #[test]
    fn headers_describe_the_tightest_rule() {
        let l = limiter(
            r#"{"rules":[{"name":"big","requestsPerSecond":100,"burst":100},
                         {"name":"small","requestsPerSecond":5,"burst":10}]}"#,
            1.0,
        );
        let now = Instant::now();
        let mut h = HeaderMap::new();
        l.check("/", &HeaderMap::new(), IP, now).write_headers(&mut h);
        assert_eq!(h["ratelimit-policy"], "\"small\";q=10;w=2");
        assert_eq!(h["ratelimit"], "\"small\";r=9;t=1");
        assert!(h.get("retry-after").is_none());

        let l = limiter(r#"{"rules":[{"name":"a \"q\"","requestsPerSecond":1,"burst":1}]}"#, 1.0);
        l.check("/", &HeaderMap::new(), IP, now);
        let mut h = HeaderMap::new();
        l.check("/", &HeaderMap::new(), IP, now).write_headers(&mut h);
        assert_eq!(h["ratelimit-policy"], r#""a \"q\"";q=1;w=1"#);
        assert_eq!(h["ratelimit"], r#""a \"q\"";r=0;t=1"#);
        assert_eq!(h["retry-after"], "1");
    }

    #[test]
    fn empty_limiter_allows_without_headers() {
        let l = RateLimiter::compile(None, 1.0, None);
        assert!(l.is_empty());
        let d = l.check("/", &HeaderMap::new(), IP, Instant::now());
        assert!(matches!(d, Decision::Allow(None)));
        assert!(d.headers().is_none());
    }

    #[test]
    fn concurrent_checks_never_over_admit() {
        let l = Arc::new(limiter(
            r#"{"rules":[{"name":"all","requestsPerSecond":1,"burst":100}]}"#,
            1.0,
        ));
        let now = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || allowed(&l, 100, &HeaderMap::new(), IP, now))
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 100);
    }
}

/// Property tests of the GCRA arithmetic itself, over random sequences of waits,
/// admissions and refunds, on the private pieces (`acquire`, `refund`, the compiled
/// interval and tolerance) so that each bound is stated in the limiter's own units.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use std::time::Duration;

    #[derive(Debug, Clone, Copy)]
    enum Op {
        /// Time passes: this many sixteenths of the emission interval `T`.
        Wait(u64),
        /// A request takes a token (or is refused).
        Acquire,
        /// A request takes a token that a later rule's refusal hands back.
        AcquireRefunded,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..64u64).prop_map(Op::Wait),
            4 => Just(Op::Acquire),
            2 => Just(Op::AcquireRefunded),
        ]
    }

    /// One rule keyed by `x-k`, for any valid rate and burst, possibly a
    /// `scope: service` rule split over several instances.
    #[derive(Debug, Clone)]
    struct Limit {
        rule: RateLimitRule,
        share: f64,
    }

    impl Limit {
        fn compile(&self) -> RateLimiter {
            let policy = RateLimitPolicy {
                rules: vec![self.rule.clone()],
            };
            RateLimiter::compile(Some(&policy), self.share, None)
        }
    }

    fn limit() -> impl Strategy<Value = Limit> {
        (
            // Log-uniform rates from the slowest a policy allows to 1e6/s.
            ((1.0f64 / 3600.0).ln()..=1e6f64.ln()).prop_map(f64::exp),
            // Bursts log-uniform too, so that most runs drain the bucket.
            (0.0..1000.0f64.ln()).prop_map(f64::exp),
            any::<bool>(),
            0.01..=1.0f64,
        )
            .prop_map(|(rate, burst, service, share)| Limit {
                rule: RateLimitRule {
                    name: "p".into(),
                    matches: Default::default(),
                    key: RateLimitKey::Header("x-k".into()),
                    requests_per_second: rate,
                    burst: Some(burst),
                    scope: if service { Scope::Service } else { Scope::Instance },
                },
                share,
            })
    }

    /// What a caller can observe of one decision: admitted, remaining, reset, retry.
    fn summary(r: Result<Quota<'_>, (Quota<'_>, u64)>) -> (bool, u64, u64, u64) {
        match r {
            Ok(q) => (true, q.remaining, q.reset_secs, 0),
            Err((q, retry)) => (false, q.remaining, q.reset_secs, retry),
        }
    }

    fn advance(now: &mut Instant, t: u64, sixteenths: u64) {
        *now += Duration::from_nanos(t.saturating_mul(sixteenths) / 16);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Over any window of length `w` the bucket admits at most `burst + rate × w`
        /// requests: exactly `n·T ≤ w + τ` in the limiter's nanoseconds, and in the
        /// policy's terms up to the rounding of `T` and `τ` to whole nanoseconds.
        /// Refunded requests are not admissions.
        #[test]
        fn admissions_in_any_window_stay_within_burst_plus_rate_times_the_window(
            limit in limit(),
            ops in vec(op(), 1..200),
        ) {
            let l = limit.compile();
            let rule = &l.rules[0];
            let (t, tau) = (rule.interval_ns, rule.tolerance_ns);
            let (rate, burst) = (rule.info.rate, rule.info.burst);
            let key = Key::Header(&b"client"[..]);
            let start = Instant::now();
            let mut now = start;
            let mut admitted: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Wait(n) => advance(&mut now, t, n),
                    Op::Acquire => {
                        if rule.acquire(&key, now).is_ok() {
                            admitted.push(now.duration_since(start).as_nanos() as u64);
                        }
                    }
                    Op::AcquireRefunded => {
                        if rule.acquire(&key, now).is_ok() {
                            rule.refund(&key, now);
                        }
                    }
                }
            }
            for i in 0..admitted.len() {
                for j in i..admitted.len() {
                    let n = (j - i + 1) as u64;
                    let w = admitted[j] - admitted[i];
                    prop_assert!(
                        u128::from(n) * u128::from(t) <= u128::from(w) + u128::from(tau),
                        "{n} admitted in {w} ns with T = {t} ns, τ = {tau} ns"
                    );
                    // T is rounded to the nearest nanosecond (so 1/T may exceed
                    // rate/1e9 by a factor 1/(1 - rate/2e9)) and τ likewise (+0.5/T).
                    let bound = burst + rate * (w as f64 / NANOS_PER_SEC) / (1.0 - rate / 2e9) + 0.5 / t as f64;
                    prop_assert!(
                        n as f64 <= bound * (1.0 + 1e-12),
                        "{n} admitted in {w} ns at rate {rate}/s, burst {burst}"
                    );
                }
            }
        }

        /// A request refunded after a later rule refused it leaves the bucket as if
        /// it had never come: a bucket that also saw those requests admits and
        /// refuses exactly what a bucket that did not see them does, with the same
        /// remaining count and reset time.
        #[test]
        fn a_refund_restores_exactly_the_capacity_taken(limit in limit(), ops in vec(op(), 1..200)) {
            let l = limit.compile();
            let rule = &l.rules[0];
            let t = rule.interval_ns;
            let (plain, refunded) = (Key::Header(&b"plain"[..]), Key::Header(&b"refunded"[..]));
            let mut now = Instant::now();
            for op in ops {
                match op {
                    Op::Wait(n) => advance(&mut now, t, n),
                    Op::Acquire => {
                        prop_assert_eq!(
                            summary(rule.acquire(&plain, now)),
                            summary(rule.acquire(&refunded, now))
                        );
                    }
                    Op::AcquireRefunded => {
                        if rule.acquire(&refunded, now).is_ok() {
                            rule.refund(&refunded, now);
                        }
                    }
                }
            }
        }
    }
}
