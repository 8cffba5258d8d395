//! Rendering: aligned tables for people, the API's JSON (or the same as YAML) for
//! scripts. Table builders are pure functions of the typed answers, testable without a server.

use crate::error::CliError;
use crate::format::Output;
use outrider_api::{PolicyRecord, RevisionSummary, SecretMeta, ServiceSummary, Sidecar, SidecarStatus};
use outrider_policy::{Action, MtlsMode, Policy, PolicyKind, Scope, SinkType};
use serde::Serialize;
use std::io::Write;
use std::time::SystemTime;

/// Columns padded to their widest cell, separated by three spaces.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if i + 1 < columns {
                    line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 3));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
pub fn write_stdout(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(e.to_string())),
        _ => Ok(()),
    }
}

/// JSON or YAML of `value`; `None` for table output, which each command renders itself.
///
/// The value goes through `serde_json::Value` first, so objects print with their keys
/// sorted, exactly as the API's JSON printed before it was typed: scripts that read
/// `-o json` see the same text.
pub fn structured<T: Serialize + ?Sized>(format: Output, value: &T) -> Result<Option<String>, CliError> {
    if format == Output::Table {
        return Ok(None);
    }
    let value = serde_json::to_value(value).map_err(|e| CliError::Output(e.to_string()))?;
    match format {
        Output::Table => Ok(None),
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&value).map_err(|e| CliError::Output(e.to_string()))?;
            s.push('\n');
            Ok(Some(s))
        }
        Output::Yaml => serde_yaml_ng::to_string(&value)
            .map(Some)
            .map_err(|e| CliError::Output(e.to_string())),
    }
}

/// Prints `value` as asked; for tables, `table()` builds the table and `empty` is
/// what to say when it has no rows.
pub fn emit<T: Serialize + ?Sized>(
    format: Output,
    value: &T,
    empty: &str,
    table: impl FnOnce(&T) -> Table,
) -> Result<(), CliError> {
    if let Some(s) = structured(format, value)? {
        return write_stdout(&s);
    }
    let t = table(value);
    if t.is_empty() {
        eprintln!("{empty}");
        return Ok(());
    }
    write_stdout(&t.render())
}

/// Prints `value` as JSON/YAML when asked, else the line for people.
pub fn value_or_line<T: Serialize + ?Sized>(format: Output, value: &T, line: &str) -> Result<(), CliError> {
    match structured(format, value)? {
        Some(s) => write_stdout(&s),
        None => write_stdout(line),
    }
}

/// A cell: `-` for an empty text, so a column never looks shifted.
fn cell(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// Policy numbers are floats in the model; `10` reads better than `10.0`.
fn number(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

/// The wire name of a sidecar's status (`healthy`, `unhealthy`, `disconnected`).
pub fn status_name(s: SidecarStatus) -> &'static str {
    match s {
        SidecarStatus::Healthy => "healthy",
        SidecarStatus::Unhealthy => "unhealthy",
        SidecarStatus::Disconnected => "disconnected",
    }
}

/// `GET /services`.
pub fn services_table(services: &[ServiceSummary]) -> Table {
    let mut t = Table::new(&["NAME", "REVISION", "INSTANCES", "SUBSETS", "POLICIES", "CONFIGS"]);
    for svc in services {
        let inst = &svc.instances;
        let subsets: Vec<String> = inst
            .subsets
            .iter()
            .map(|(name, c)| format!("{name} {}/{}", c.healthy, c.total))
            .collect();
        t.row(vec![
            cell(&svc.name),
            svc.revision.to_string(),
            format!("{}/{} healthy", inst.healthy, inst.total),
            if subsets.is_empty() {
                "-".into()
            } else {
                subsets.join(", ")
            },
            if svc.policies.is_empty() {
                "-".into()
            } else {
                svc.policies.iter().map(|p| cell(p)).collect::<Vec<_>>().join(",")
            },
            svc.configs.to_string(),
        ]);
    }
    t
}

/// `GET /sidecars`.
pub fn sidecars_table(sidecars: &[Sidecar], now: SystemTime) -> Table {
    let mut t = Table::new(&[
        "ID",
        "SERVICE",
        "VERSION",
        "ADDRESS",
        "STATUS",
        "REVISION",
        "SYNC",
        "LAST SEEN",
    ]);
    for sc in sidecars {
        let sync = match &sc.last_nack {
            Some(nack) => format!("NACK: {}", cell(&nack.error)),
            None if sc.in_sync => "synced".into(),
            None => "behind".into(),
        };
        t.row(vec![
            cell(&sc.id),
            cell(&sc.service),
            cell(&sc.version),
            format!("{}:{}", cell(&sc.address), sc.inbound_port),
            status_name(sc.status).into(),
            format!("{}/{}", sc.applied_revision, sc.target_revision),
            sync,
            age(&sc.last_seen, now),
        ]);
    }
    t
}

/// A list of stored policies (`get policy`).
pub fn policies_table(policies: &[PolicyRecord]) -> Table {
    let mut t = Table::new(&["SERVICE", "KIND", "REVISION", "UPDATED", "SUMMARY"]);
    for p in policies {
        t.row(vec![
            cell(&p.service),
            cell(&p.kind),
            p.revision.to_string(),
            cell(&p.updated_at),
            record_summary(p),
        ]);
    }
    t
}

/// A service's secrets: what is known about each, never a value.
pub fn secrets_table(secrets: &[SecretMeta]) -> Table {
    let mut t = Table::new(&["NAME", "SIZE", "REVISION", "UPDATED"]);
    for s in secrets {
        t.row(vec![
            cell(&s.name),
            s.size.to_string(),
            s.revision.to_string(),
            cell(&s.updated_at),
        ]);
    }
    t
}

/// The summary of a stored policy, read through the policy model; `-` for a kind or
/// a document this CLI does not know (a newer server's).
fn record_summary(p: &PolicyRecord) -> String {
    p.kind
        .parse::<PolicyKind>()
        .ok()
        .and_then(|kind| Policy::from_value(kind, p.document.clone()).ok())
        .map_or_else(|| "-".into(), |policy| policy_summary(&policy))
}

/// One line about a policy document, so the table says more than "it exists".
pub fn policy_summary(policy: &Policy) -> String {
    fn named<T>(list: &[T], what: &str, describe: impl Fn(&T) -> String) -> String {
        let parts: Vec<String> = list.iter().map(describe).collect();
        let noun = if list.len() == 1 {
            what.to_owned()
        } else {
            format!("{what}s")
        };
        format!("{} {noun}: {}", list.len(), parts.join(", "))
    }
    match policy {
        Policy::RateLimit(p) => named(&p.rules, "rule", |r| {
            let burst = r.burst.map(|b| format!(" burst {}", number(b))).unwrap_or_default();
            let scope = match r.scope {
                Scope::Instance => "instance",
                Scope::Service => "service",
            };
            format!("{} {}/s{burst} ({scope})", cell(&r.name), number(r.requests_per_second))
        }),
        Policy::Routing(p) => named(&p.routes, "route", |r| {
            let backends: Vec<String> = r
                .backends
                .iter()
                .map(|b| format!("{}={}", cell(&b.subset), b.weight))
                .collect();
            format!("{} [{}]", cell(&r.name), backends.join(" "))
        }),
        Policy::Logging(p) => {
            let access = if p.access_log.enabled { "on" } else { "off" };
            let sink = match p.sink.kind {
                SinkType::Stdout => "stdout",
                SinkType::File => "file",
                SinkType::Http => "http",
            };
            format!("access log {access}, {} app log(s), sink {sink}", p.app_logs.len())
        }
        Policy::Authorization(p) => {
            let word = |a: Action| match a {
                Action::Allow => "allow",
                Action::Deny => "deny",
            };
            let mtls = match p.mtls {
                MtlsMode::Permissive => "permissive",
                MtlsMode::Strict => "strict",
            };
            let dry = if p.dry_run { ", DRY RUN" } else { "" };
            let rules = named(&p.rules, "rule", |r| format!("{} {}", cell(&r.name), word(r.action)));
            format!("mtls {mtls}, default {}{dry}, {rules}", word(p.default_action))
        }
    }
}

/// `GET /revisions`.
pub fn history_table(revisions: &[RevisionSummary]) -> Table {
    let mut t = Table::new(&["REVISION", "TIME", "ACTOR", "SERVICE", "KIND", "OPERATION"]);
    for r in revisions {
        let mut kind = cell(&r.kind);
        if let Some(name) = r.name.as_deref().filter(|n| !n.is_empty()) {
            kind = format!("{kind} {name}");
        }
        let mut op = cell(&r.operation);
        if let Some(n) = r.reverts {
            op = format!("{op} (reverts {n})");
        }
        t.row(vec![
            r.revision.to_string(),
            cell(&r.time),
            cell(&r.actor),
            cell(&r.service),
            kind,
            op,
        ]);
    }
    t
}

/// `5s`, `3m`, `2h`, `4d`: how long ago an RFC 3339 time was.
pub fn age(rfc3339: &str, now: SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(rfc3339) else {
        return rfc3339.to_owned();
    };
    let secs = now.duration_since(then).map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_api::{InstanceSummary, LastNack, SubsetInstances};
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    fn policy(kind: PolicyKind, doc: serde_json::Value) -> Policy {
        Policy::from_value(kind, doc).unwrap()
    }

    fn sidecar(id: &str, version: &str, applied: u64, nack: Option<&str>, last_seen: &str) -> Sidecar {
        Sidecar {
            id: id.into(),
            service: "web".into(),
            version: version.into(),
            namespace: "default".into(),
            pod: id.rsplit('/').next().unwrap_or_default().into(),
            address: "10.0.0.1".into(),
            inbound_port: 15006,
            admin_port: 15000,
            status: SidecarStatus::Healthy,
            applied_revision: applied,
            target_revision: 5,
            in_sync: applied == 5 && nack.is_none(),
            last_nack: nack.map(|e| LastNack {
                revision: Some(5),
                error: e.into(),
            }),
            last_seen: last_seen.into(),
            connected_at: last_seen.into(),
            replica: "cp-1".into(),
            build_version: "0.1.0".into(),
            health: None,
            identity: None,
            certificate_expiry: None,
        }
    }

    #[test]
    fn columns_are_aligned_and_lines_not_padded() {
        let mut t = Table::new(&["NAME", "REVISION"]);
        t.row(vec!["checkout".into(), "7".into()]);
        t.row(vec!["web".into(), "12".into()]);
        assert_eq!(t.render(), "NAME       REVISION\ncheckout   7\nweb        12\n");
    }

    #[test]
    fn services_table_shows_health_and_subsets() {
        let services = [ServiceSummary {
            name: "web".into(),
            revision: 4,
            policies: vec!["rate-limit".into(), "routing".into()],
            configs: 1,
            instances: InstanceSummary {
                total: 3,
                healthy: 2,
                unhealthy: 1,
                disconnected: 0,
                subsets: [
                    ("v1".to_owned(), SubsetInstances { total: 2, healthy: 2 }),
                    ("v2".to_owned(), SubsetInstances { total: 1, healthy: 0 }),
                ]
                .into(),
            },
        }];
        let out = services_table(&services).render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "NAME   REVISION   INSTANCES     SUBSETS          POLICIES             CONFIGS"
        );
        assert_eq!(
            lines[1],
            "web    4          2/3 healthy   v1 2/2, v2 0/1   rate-limit,routing   1"
        );
    }

    #[test]
    fn a_service_without_instances_or_policies_shows_dashes() {
        let services = [ServiceSummary {
            name: "idle".into(),
            revision: 1,
            policies: vec![],
            configs: 0,
            instances: InstanceSummary::default(),
        }];
        let out = services_table(&services).render();
        assert_eq!(
            out.lines().nth(1),
            Some("idle   1          0/0 healthy   -         -          0")
        );
    }

    #[test]
    fn sidecars_table_flags_nacks_and_lag() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let seen = humantime::format_rfc3339_millis(now - Duration::from_secs(90)).to_string();
        let mut behind = sidecar("default/web-3", "v2", 4, None, &seen);
        behind.status = SidecarStatus::Disconnected;
        behind.version = String::new();
        let list = [
            sidecar("default/web-1", "v1", 5, None, &seen),
            sidecar("default/web-2", "v2", 4, Some("bad route"), &seen),
            behind,
        ];
        let out = sidecars_table(&list, now).render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1],
            "default/web-1   web       v1        10.0.0.1:15006   healthy        5/5        synced            1m"
        );
        assert_eq!(
            lines[2],
            "default/web-2   web       v2        10.0.0.1:15006   healthy        4/5        NACK: bad route   1m"
        );
        assert_eq!(
            lines[3],
            "default/web-3   web       -         10.0.0.1:15006   disconnected   4/5        behind            1m"
        );
    }

    #[test]
    fn policy_summaries_name_rules_and_backends() {
        let rl = json!({"rules": [{"name": "all", "requestsPerSecond": 10.0, "burst": 20, "scope": "instance"}]});
        assert_eq!(
            policy_summary(&policy(PolicyKind::RateLimit, rl)),
            "1 rule: all 10/s burst 20 (instance)"
        );
        let rl = json!({"rules": [{"name": "a", "requestsPerSecond": 2.5}, {"name": "b", "requestsPerSecond": 1, "scope": "service"}]});
        assert_eq!(
            policy_summary(&policy(PolicyKind::RateLimit, rl)),
            "2 rules: a 2.5/s (instance), b 1/s (service)"
        );
        let rt = json!({"routes": [{"name": "default", "backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}]}]});
        assert_eq!(
            policy_summary(&policy(PolicyKind::Routing, rt)),
            "1 route: default [v1=90 v2=10]"
        );
        let lg = json!({"accessLog": {"enabled": true}, "sink": {"type": "stdout"}});
        assert_eq!(
            policy_summary(&policy(PolicyKind::Logging, lg)),
            "access log on, 0 app log(s), sink stdout"
        );
    }

    #[test]
    fn policies_table_reads_the_stored_document() {
        let record = PolicyRecord {
            service: "web".into(),
            kind: "rate-limit".into(),
            revision: 3,
            updated_at: "2026-01-02T03:04:05.000Z".into(),
            document: json!({"rules": [{"name": "all", "requestsPerSecond": 5, "burst": null, "scope": "instance"}]}),
        };
        let mut unknown = record.clone();
        unknown.kind = "quota".into();
        let out = policies_table(&[record, unknown]).render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "SERVICE   KIND         REVISION   UPDATED                    SUMMARY"
        );
        assert_eq!(
            lines[1],
            "web       rate-limit   3          2026-01-02T03:04:05.000Z   1 rule: all 5/s (instance)"
        );
        assert!(lines[2].ends_with("   -"), "{out}");
    }

    #[test]
    fn history_marks_reverts_and_config_names() {
        let revisions = [RevisionSummary {
            revision: 9,
            time: "t".into(),
            actor: "admin".into(),
            kind: "config".into(),
            service: "web".into(),
            name: Some("app.yaml".into()),
            operation: "put".into(),
            reverts: Some(7),
            propagation: None,
        }];
        let out = history_table(&revisions).render();
        assert!(out.contains("config app.yaml   put (reverts 7)"), "{out}");
    }

    #[test]
    fn structured_output_prints_keys_sorted_as_the_api_json_did() {
        let revision: RevisionSummary = serde_json::from_value(json!({"revision": 2, "time": "t", "actor": "a",
            "kind": "routing", "service": "web", "operation": "put",
            "propagation": {"applied": 1, "pending": 0, "lastAckSeconds": null}}))
        .unwrap();
        let out = structured(Output::Json, &revision).unwrap().unwrap();
        let keys: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("  \""))
            .map(|l| l.trim().split('"').nth(1).unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "actor",
                "kind",
                "operation",
                "propagation",
                "revision",
                "service",
                "time"
            ]
        );
        assert!(structured(Output::Table, &revision).unwrap().is_none());
        let yaml = structured(Output::Yaml, &revision).unwrap().unwrap();
        assert!(yaml.starts_with("actor: a\n"), "{yaml}");
    }

    #[test]
    fn empty_table_is_detected() {
        assert!(services_table(&[]).is_empty());
    }
}
