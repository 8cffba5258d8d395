//! Property tests: every valid document of each kind survives serialize → parse →
//! validate unchanged and without a field error. The store keeps the canonical JSON
//! and the sidecar parses it again, so a value that changed (a float off by one
//! unit in the last place, a duration printed in a form the parser reads
//! differently) would be a policy nobody wrote.

use outrider_policy::{
    AccessLog, AppLog, Backend, Compression, Duration, LogFormat, LogParser, LoggingPolicy, Policy, RateLimitKey,
    RateLimitPolicy, RateLimitRule, RetryOn, RetryPolicy, Route, RouteMatch, RoutingPolicy, Scope, Sink, SinkFormat,
    SinkType,
};
use proptest::collection::{btree_map, hash_set, vec};
use proptest::prelude::*;
use proptest::sample::select;

/// A lower-case RFC 9110 token, as header names are kept.
fn header_name() -> impl Strategy<Value = String> {
    "[a-z0-9!#$%&'*+.^_`|~-]{1,20}"
}

/// Route and rule names: 1-63 bytes of printable ASCII, not blank.
fn item_names(max: usize) -> impl Strategy<Value = Vec<String>> {
    hash_set("[!-~][ -~]{0,62}", 1..=max).prop_map(|s| s.into_iter().collect())
}

fn route_match() -> impl Strategy<Value = RouteMatch> {
    (
        proptest::option::of("/[ -~]{0,30}"),
        btree_map(header_name(), "[ -~]{0,20}", 0..3),
    )
        .prop_map(|(path_prefix, headers)| RouteMatch { path_prefix, headers })
}

/// A duration in `(0, max_ms]`, sometimes with sub-millisecond parts, which print
/// in humantime's long form rather than as `ms` or `s`.
fn duration(max_ms: u64) -> impl Strategy<Value = Duration> {
    prop_oneof![
        (1..=max_ms).prop_map(Duration::from_millis),
        (1..=max_ms / 1000).prop_map(|s| Duration::from_millis(s * 1000)),
        (0..max_ms, 1..1_000_000u32).prop_map(|(ms, ns)| Duration(
            std::time::Duration::from_millis(ms) + std::time::Duration::from_nanos(u64::from(ns))
        )),
    ]
}

const HOUR_MS: u64 = 3_600_000;

/// Weights of `n` backends that add up to 100.
fn weights(n: usize) -> impl Strategy<Value = Vec<u32>> {
    vec(0..=100u32, n - 1).prop_map(move |cuts| {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let mut out = Vec::with_capacity(n);
        let mut last = 0;
        for c in cuts {
            out.push(c - last);
            last = c;
        }
        out.push(100 - last);
        out
    })
}

fn backends() -> impl Strategy<Value = Vec<Backend>> {
    hash_set("[a-z][a-z0-9-]{0,8}", 1..=4).prop_flat_map(|subsets| {
        let subsets: Vec<String> = subsets.into_iter().collect();
        weights(subsets.len()).prop_map(move |w| {
            subsets
                .iter()
                .zip(w)
                .map(|(subset, weight)| Backend {
                    subset: subset.clone(),
                    weight,
                })
                .collect()
        })
    })
}

fn retries() -> impl Strategy<Value = RetryPolicy> {
    (
        0..=10u32,
        proptest::option::of(duration(HOUR_MS)),
        vec(
            select(vec![RetryOn::ServerError, RetryOn::ConnectFailure, RetryOn::Reset]),
            0..4,
        ),
    )
        .prop_map(|(attempts, per_try_timeout, on)| RetryPolicy {
            attempts,
            per_try_timeout,
            on,
        })
}

fn routing_policy() -> impl Strategy<Value = RoutingPolicy> {
    item_names(4).prop_flat_map(|names| {
        let n = names.len();
        (
            Just(names),
            vec(
                (
                    route_match(),
                    backends(),
                    proptest::option::of(duration(HOUR_MS)),
                    proptest::option::of(retries()),
                ),
                n,
            ),
        )
            .prop_map(|(names, parts)| RoutingPolicy {
                routes: names
                    .into_iter()
                    .zip(parts)
                    .map(|(name, (matches, backends, timeout, retries))| Route {
                        name,
                        matches,
                        backends,
                        timeout,
                        retries,
                    })
                    .collect(),
            })
    })
}

/// Any float in `[lo, hi]`, including ones with long decimal expansions.
fn float_in(lo: f64, hi: f64) -> impl Strategy<Value = f64> {
    prop_oneof![
        lo..=hi,
        // Log-uniform, so small rates are as likely as large ones.
        (lo.ln()..=hi.ln()).prop_map(move |l| l.exp().clamp(lo, hi)),
        (lo.ceil() as u64..=hi.floor() as u64).prop_map(|n| n as f64),
    ]
}

fn rate_limit_key() -> impl Strategy<Value = RateLimitKey> {
    prop_oneof![
        Just(RateLimitKey::None),
        Just(RateLimitKey::ClientIp),
        header_name().prop_map(RateLimitKey::Header),
    ]
}

fn rate_limit_policy() -> impl Strategy<Value = RateLimitPolicy> {
    item_names(5).prop_flat_map(|names| {
        let n = names.len();
        (
            Just(names),
            vec(
                (
                    route_match(),
                    rate_limit_key(),
                    float_in(1.0 / 3600.0, 1e9),
                    proptest::option::of(float_in(1.0, 1e9)),
                    select(vec![Scope::Instance, Scope::Service]),
                ),
                n,
            ),
        )
            .prop_map(|(names, parts)| RateLimitPolicy {
                rules: names
                    .into_iter()
                    .zip(parts)
                    .map(
                        |(name, (matches, key, requests_per_second, burst, scope))| RateLimitRule {
                            name,
                            matches,
                            key,
                            requests_per_second,
                            burst,
                            scope,
                        },
                    )
                    .collect(),
            })
    })
}

fn app_log() -> impl Strategy<Value = AppLog> {
    (
        "/[a-z]{1,8}(/[a-z]{1,8}){0,2}/(\\*|[a-z]{1,8})\\.log",
        select(vec![LogParser::Json, LogParser::Regex, LogParser::Plain]),
        select(vec!["(?P<level>\\w+) (?P<msg>.*)", "^(?P<ts>\\S+)\\s"]),
        proptest::option::of(select(vec!["^\\d{4}-", "^\\S"])),
    )
        .prop_map(|(path, parser, pattern, multiline)| AppLog {
            path,
            parser,
            // A pattern is required for `regex`, allowed (and checked) otherwise.
            pattern: (parser == LogParser::Regex).then(|| pattern.to_owned()),
            multiline_start: multiline.map(str::to_owned),
        })
}

fn sink() -> impl Strategy<Value = Sink> {
    (
        select(vec![SinkType::Stdout, SinkType::File, SinkType::Http]),
        "[a-z]{1,8}",
        proptest::option::of(select(vec![
            SinkFormat::Ndjson,
            SinkFormat::ElasticsearchBulk,
            SinkFormat::Loki,
        ])),
        1..=100_000u32,
        outrider_policy::BATCH_BYTES_RANGE,
        duration(24 * HOUR_MS),
        select(vec![Compression::None, Compression::Gzip]),
    )
        .prop_map(
            |(kind, word, format, batch_size, batch_bytes, flush_interval, compression)| Sink {
                kind,
                path: (kind == SinkType::File).then(|| format!("/var/lib/outrider/{word}.ndjson")),
                url: (kind == SinkType::Http).then(|| format!("http://{word}:9880/ingest")),
                format,
                batch_size,
                batch_bytes,
                flush_interval,
                compression,
            },
        )
}

fn logging_policy() -> impl Strategy<Value = LoggingPolicy> {
    (
        any::<bool>(),
        0.0..=1.0f64,
        select(vec![LogFormat::Json, LogFormat::Common]),
        vec(header_name(), 0..3),
        vec(app_log(), 0..3),
        sink(),
    )
        .prop_map(
            |(enabled, sample_rate, format, redact_headers, app_logs, sink)| LoggingPolicy {
                access_log: AccessLog {
                    enabled,
                    sample_rate,
                    format,
                    redact_headers,
                },
                app_logs,
                sink,
            },
        )
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        routing_policy().prop_map(Policy::Routing),
        rate_limit_policy().prop_map(Policy::RateLimit),
        logging_policy().prop_map(Policy::Logging),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// What the REST API stores: the canonical JSON, read back as bytes.
    #[test]
    fn a_valid_document_parses_back_to_the_same_value(p in policy()) {
        let bytes = serde_json::to_vec(&p.to_json()).unwrap();
        let back = Policy::parse(p.kind(), &bytes);
        prop_assert_eq!(back, Ok(p));
    }

    /// What the CLI sends after reading YAML: an already-parsed JSON value.
    #[test]
    fn a_valid_document_survives_the_value_path(p in policy()) {
        let back = Policy::from_value(p.kind(), p.to_json());
        prop_assert_eq!(back.as_ref(), Ok(&p));
        // And its canonical form is a fixed point.
        prop_assert_eq!(back.unwrap().to_json(), p.to_json());
    }
}
