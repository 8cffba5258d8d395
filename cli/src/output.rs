//! Rendering: aligned tables for people, the API's JSON (or the same as YAML) for
//! scripts. Table builders are pure functions of the API's JSON so they can be tested
//! without a server.

use crate::error::CliError;
use crate::format::Output;
use serde_json::Value;
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
pub fn structured(format: Output, value: &Value) -> Result<Option<String>, CliError> {
    match format {
        Output::Table => Ok(None),
        Output::Json => {
            let mut s = serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.to_string()))?;
            s.push('\n');
            Ok(Some(s))
        }
        Output::Yaml => serde_yaml_ng::to_string(value)
            .map(Some)
            .map_err(|e| CliError::Output(e.to_string())),
    }
}

/// Prints `value` as asked; for tables, `table()` builds the table and `empty` is
/// what to say when it has no rows.
pub fn emit(format: Output, value: &Value, empty: &str, table: impl FnOnce(&Value) -> Table) -> Result<(), CliError> {
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

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        // Policy numbers are floats in the model; `10` reads better than `10.0`.
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        v => v.to_string(),
    }
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// `GET /services`.
pub fn services_table(v: &Value) -> Table {
    let mut t = Table::new(&["NAME", "REVISION", "INSTANCES", "SUBSETS", "POLICIES", "CONFIGS"]);
    for svc in items(v) {
        let inst = &svc["instances"];
        let subsets = inst["subsets"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(name, c)| format!("{name} {}/{}", s(&c["healthy"]), s(&c["total"])))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|x| !x.is_empty())
            .unwrap_or_else(|| "-".into());
        let policies: Vec<String> = items(&svc["policies"]).iter().map(s).collect();
        t.row(vec![
            s(&svc["name"]),
            s(&svc["revision"]),
            format!("{}/{} healthy", s(&inst["healthy"]), s(&inst["total"])),
            subsets,
            if policies.is_empty() {
                "-".into()
            } else {
                policies.join(",")
            },
            s(&svc["configs"]),
        ]);
    }
    t
}

/// `GET /sidecars`.
pub fn sidecars_table(v: &Value, now: SystemTime) -> Table {
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
    for sc in items(v) {
        let sync = if !sc["lastNack"].is_null() {
            format!("NACK: {}", s(&sc["lastNack"]["error"]))
        } else if sc["inSync"].as_bool() == Some(true) {
            "synced".into()
        } else {
            "behind".into()
        };
        t.row(vec![
            s(&sc["id"]),
            s(&sc["service"]),
            s(&sc["version"]),
            format!("{}:{}", s(&sc["address"]), s(&sc["inboundPort"])),
            s(&sc["status"]),
            format!("{}/{}", s(&sc["appliedRevision"]), s(&sc["targetRevision"])),
            sync,
            sc["lastSeen"]
                .as_str()
                .map(|t| age(t, now))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t
}

/// A list of policies in the API's form (`{service, kind, revision, updatedAt, document}`).
pub fn policies_table(v: &Value) -> Table {
    let mut t = Table::new(&["SERVICE", "KIND", "REVISION", "UPDATED", "SUMMARY"]);
    for p in items(v) {
        let kind = p["kind"].as_str().unwrap_or_default();
        t.row(vec![
            s(&p["service"]),
            s(&p["kind"]),
            s(&p["revision"]),
            s(&p["updatedAt"]),
            policy_summary(kind, &p["document"]),
        ]);
    }
    t
}

/// One line about a policy document, so the table says more than "it exists".
pub fn policy_summary(kind: &str, doc: &Value) -> String {
    let named = |list: &[Value], what: &str, detail: &dyn Fn(&Value) -> String| {
        let parts: Vec<String> = list
            .iter()
            .map(|x| format!("{} {}", s(&x["name"]), detail(x)))
            .collect();
        let noun = if list.len() == 1 {
            what.to_owned()
        } else {
            format!("{what}s")
        };
        format!("{} {noun}: {}", list.len(), parts.join(", "))
    };
    match kind {
        "rate-limit" => named(items(&doc["rules"]), "rule", &|r| {
            let burst = if r["burst"].is_null() {
                String::new()
            } else {
                format!(" burst {}", s(&r["burst"]))
            };
            let scope = r["scope"].as_str().unwrap_or("instance");
            format!("{}/s{burst} ({scope})", s(&r["requestsPerSecond"]))
        }),
        "routing" => named(items(&doc["routes"]), "route", &|r| {
            let backends: Vec<String> = items(&r["backends"])
                .iter()
                .map(|b| format!("{}={}", s(&b["subset"]), s(&b["weight"])))
                .collect();
            format!("[{}]", backends.join(" "))
        }),
        "logging" => {
            let access = if doc["accessLog"]["enabled"].as_bool() == Some(true) {
                "on"
            } else {
                "off"
            };
            format!(
                "access log {access}, {} app log(s), sink {}",
                items(&doc["appLogs"]).len(),
                s(&doc["sink"]["type"])
            )
        }
        _ => "-".into(),
    }
}

/// `GET /revisions`.
pub fn history_table(v: &Value) -> Table {
    let mut t = Table::new(&["REVISION", "TIME", "ACTOR", "SERVICE", "KIND", "OPERATION"]);
    for r in items(v) {
        let mut kind = s(&r["kind"]);
        if let Some(name) = r["name"].as_str().filter(|n| !n.is_empty()) {
            kind = format!("{kind} {name}");
        }
        let mut op = s(&r["operation"]);
        if let Some(n) = r["reverts"].as_u64() {
            op = format!("{op} (reverts {n})");
        }
        t.row(vec![
            s(&r["revision"]),
            s(&r["time"]),
            s(&r["actor"]),
            s(&r["service"]),
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
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn columns_are_aligned_and_lines_not_padded() {
        let mut t = Table::new(&["NAME", "REVISION"]);
        t.row(vec!["checkout".into(), "7".into()]);
        t.row(vec!["web".into(), "12".into()]);
        assert_eq!(t.render(), "NAME       REVISION\ncheckout   7\nweb        12\n");
    }

    #[test]
    fn services_table_shows_health_and_subsets() {
        let v = json!([{"name": "web", "revision": 4, "policies": ["rate-limit", "routing"], "configs": 1,
            "instances": {"total": 3, "healthy": 2, "unhealthy": 1, "disconnected": 0,
                          "subsets": {"v1": {"total": 2, "healthy": 2}, "v2": {"total": 1, "healthy": 0}}}}]);
        let out = services_table(&v).render();
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
    fn sidecars_table_flags_nacks_and_lag() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let seen = humantime::format_rfc3339_millis(now - Duration::from_secs(90)).to_string();
        let v = json!([
            {"id": "default/web-1", "service": "web", "version": "v1", "address": "10.0.0.1", "inboundPort": 15006,
             "status": "healthy", "appliedRevision": 5, "targetRevision": 5, "inSync": true, "lastNack": null, "lastSeen": seen},
            {"id": "default/web-2", "service": "web", "version": "v2", "address": "10.0.0.2", "inboundPort": 15006,
             "status": "healthy", "appliedRevision": 4, "targetRevision": 5, "inSync": false,
             "lastNack": {"revision": 5, "error": "bad route"}, "lastSeen": seen},
        ]);
        let out = sidecars_table(&v, now).render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1],
            "default/web-1   web       v1        10.0.0.1:15006   healthy   5/5        synced            1m"
        );
        assert_eq!(
            lines[2],
            "default/web-2   web       v2        10.0.0.2:15006   healthy   4/5        NACK: bad route   1m"
        );
    }

    #[test]
    fn policy_summaries_name_rules_and_backends() {
        let rl = json!({"rules": [{"name": "all", "requestsPerSecond": 10.0, "burst": 20, "scope": "instance"}]});
        assert_eq!(
            policy_summary("rate-limit", &rl),
            "1 rule: all 10/s burst 20 (instance)"
        );
        let rl = json!({"rules": [{"name": "a", "requestsPerSecond": 2.5}, {"name": "b", "requestsPerSecond": 1, "scope": "service"}]});
        assert_eq!(
            policy_summary("rate-limit", &rl),
            "2 rules: a 2.5/s (instance), b 1/s (service)"
        );
        let rt = json!({"routes": [{"name": "default", "backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}]}]});
        assert_eq!(policy_summary("routing", &rt), "1 route: default [v1=90 v2=10]");
    }

    #[test]
    fn history_marks_reverts_and_config_names() {
        let v = json!([{"revision": 9, "time": "t", "actor": "admin", "kind": "config", "service": "web",
                        "name": "app.yaml", "operation": "put", "reverts": 7}]);
        let out = history_table(&v).render();
        assert!(out.contains("config app.yaml   put (reverts 7)"), "{out}");
    }

    #[test]
    fn empty_table_is_detected() {
        assert!(services_table(&json!([])).is_empty());
    }
}
