//! What each command does: the REST calls, in order, and what is printed.

use crate::args::{Apply, Cli, Command, Delete, Get, Global};
use crate::client::{api, Body, Client};
use crate::envelope::{parse_documents, Document};
use crate::error::{one_line, CliError};
use crate::format::Output;
use crate::output::{self, emit, Table};
use clap::CommandFactory;
use outrider_policy::PolicyKind;
use serde_json::{json, Value};
use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let Global { server, token, output } = cli.global;
    if let Command::Completions { shell } = cli.command {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "outriderctl", &mut buf);
        return output::write_stdout(&String::from_utf8_lossy(&buf));
    }
    let client = Client::new(&server, token.as_deref())?;
    match cli.command {
        Command::Get(Get::Services) => {
            let v = client.get(&api(&["services"]), &[]).await?;
            emit(output, &v, "No services found.", output::services_table)
        }
        Command::Get(Get::Sidecars { service }) => {
            let query: Vec<(&str, &str)> = service.as_deref().map(|s| ("service", s)).into_iter().collect();
            let v = client.get(&api(&["sidecars"]), &query).await?;
            emit(output, &v, "No sidecars found.", |v| {
                output::sidecars_table(v, SystemTime::now())
            })
        }
        Command::Get(Get::Policy { service, kind }) => get_policy(&client, output, &service, kind).await,
        Command::Apply(a) => apply(&client, output, &a).await,
        Command::Delete(Delete::Policy { service, kind }) => {
            check_service(&service)?;
            let v = client
                .delete(&api(&["services", &service, "policies", kind.as_str()]))
                .await?;
            let line = format!("deleted the {kind} policy of {service} (revision {})\n", v["revision"]);
            print_or_line(output, &v, &line)
        }
        Command::History { service, limit } => {
            let limit = limit.to_string();
            let mut query = vec![("limit", limit.as_str())];
            if let Some(s) = &service {
                query.push(("service", s));
            }
            let v = client.get(&api(&["revisions"]), &query).await?;
            emit(output, &v, "No revisions found.", output::history_table)
        }
        Command::Revert { revision } => {
            let n = revision.to_string();
            let v = client.post(&api(&["revisions", &n, "revert"])).await?;
            let service = v["service"].as_str().unwrap_or("?");
            let target = match (v["kind"].as_str(), v["name"].as_str()) {
                (Some("config"), Some(name)) => format!("config document {name} of {service}"),
                (Some(kind), _) => format!("{kind} policy of {service}"),
                _ => format!("document of {service}"),
            };
            let verb = if v["operation"] == "delete" {
                "removes"
            } else {
                "restores"
            };
            let line = format!(
                "reverted revision {revision}: revision {} {verb} the {target}\n",
                v["revision"]
            );
            print_or_line(output, &v, &line)
        }
        Command::Canary(c) => crate::canary::run(&client, output, c).await,
        Command::Check => check(&client, output).await,
        Command::Completions { .. } => unreachable!("handled above"),
    }
}

fn print_or_line(format: Output, v: &Value, line: &str) -> Result<(), CliError> {
    match output::structured(format, v)? {
        Some(s) => output::write_stdout(&s),
        None => output::write_stdout(line),
    }
}

fn check_service(service: &str) -> Result<(), CliError> {
    outrider_policy::validate_service_name(service).map_err(CliError::Invalid)
}

async fn get_policy(client: &Client, format: Output, service: &str, kind: Option<PolicyKind>) -> Result<(), CliError> {
    check_service(service)?;
    let list = match kind {
        Some(kind) => {
            let v = client
                .get(&api(&["services", service, "policies", kind.as_str()]), &[])
                .await?;
            if format != Output::Table {
                return print_or_line(format, &v, "");
            }
            json!([v])
        }
        None => {
            let svc = client.get(&api(&["services", service]), &[]).await?;
            let policies: Vec<Value> = PolicyKind::ALL
                .iter()
                .filter_map(|k| svc["policies"].get(k.as_str()).cloned())
                .collect();
            Value::Array(policies)
        }
    };
    emit(
        format,
        &list,
        &format!("Service {service} has no policies."),
        output::policies_table,
    )
}

/// Reads the whole `apply` input: a file, or stdin for `-`.
fn read_input(path: &Path) -> Result<(String, String), CliError> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Input {
                source_name: "stdin".into(),
                message: format!("cannot read: {e}"),
            })?;
        return Ok(("stdin".into(), text));
    }
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CliError::Input {
        source_name: name.clone(),
        message: format!("cannot read: {}", one_line(&e.to_string())),
    })?;
    Ok((name, text))
}

async fn apply(client: &Client, format: Output, a: &Apply) -> Result<(), CliError> {
    let (name, text) = read_input(&a.file)?;
    // Every document is checked before the first request: a bad file changes nothing.
    let docs = parse_documents(&text).map_err(|e| CliError::Input {
        source_name: name,
        message: one_line(&e.to_string()),
    })?;
    let mut results = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        let outcome = if a.dry_run {
            dry_run_one(client, doc).await
        } else {
            apply_one(client, doc).await
        };
        let (value, line) = outcome.map_err(|e| CliError::Apply {
            what: format!("document {} ({})", i + 1, doc.describe()),
            applied: if a.dry_run { 0 } else { i },
            source: Box::new(e),
        })?;
        if format == Output::Table {
            // Say each result as it happens, so a failure later still shows what was done.
            output::write_stdout(&format!("{line}\n"))?;
        }
        results.push(value);
    }
    match output::structured(format, &Value::Array(results))? {
        Some(s) => output::write_stdout(&s),
        None => Ok(()),
    }
}

/// Writes one document unless the server already has exactly it, so re-applying a
/// file adds no revisions. Returns the API's JSON and a line for people.
async fn apply_one(client: &Client, doc: &Document) -> Result<(Value, String), CliError> {
    let what = doc.describe();
    match doc {
        Document::Policy { service, policy } => {
            let path = api(&["services", service, "policies", policy.kind().as_str()]);
            let document = policy.to_json();
            let current = match client.get(&path, &[]).await {
                Ok(v) => Some(v),
                Err(CliError::Api(e)) if e.status == 404 => None,
                Err(e) => return Err(e),
            };
            if let Some(cur) = current.as_ref().filter(|c| c["document"] == document) {
                return Ok((cur.clone(), format!("{what} unchanged (revision {})", cur["revision"])));
            }
            let v = client.put(&path, &[], Body::Json(document)).await?;
            let verb = if current.is_some() { "configured" } else { "created" };
            let line = format!("{what} {verb} (revision {})", v["revision"]);
            Ok((v, line))
        }
        Document::Config {
            service,
            name,
            content_type,
            content,
        } => {
            let path = api(&["services", service, "config", name]);
            let current = client.raw(&path).await?;
            let exists = current.status.is_success();
            if exists && current.body == content.as_bytes() && current.content_type.as_deref() == Some(content_type) {
                let revision = current.etag.as_deref().and_then(|r| r.parse::<u64>().ok());
                let v = json!({"service": service, "name": name, "contentType": content_type,
                               "size": content.len(), "revision": revision});
                let line = format!("{what} unchanged (revision {})", v["revision"]);
                return Ok((v, line));
            }
            let body = Body::Bytes {
                content_type: content_type.clone(),
                bytes: content.clone().into_bytes(),
            };
            let v = client.put(&path, &[], body).await?;
            let verb = if exists { "configured" } else { "created" };
            let line = format!("{what} {verb} (revision {})", v["revision"]);
            Ok((v, line))
        }
    }
}

/// `?dryRun=true`: the server validates and says which sidecars would get a new
/// snapshot. The answer is tagged with the target so a list of them reads alone.
async fn dry_run_one(client: &Client, doc: &Document) -> Result<(Value, String), CliError> {
    let query = [("dryRun", "true")];
    let mut v = match doc {
        Document::Policy { service, policy } => {
            let path = api(&["services", service, "policies", policy.kind().as_str()]);
            let mut v = client.put(&path, &query, Body::Json(policy.to_json())).await?;
            v["kind"] = json!(policy.kind().as_str());
            v
        }
        Document::Config {
            service,
            name,
            content_type,
            content,
        } => {
            let path = api(&["services", service, "config", name]);
            let body = Body::Bytes {
                content_type: content_type.clone(),
                bytes: content.clone().into_bytes(),
            };
            let mut v = client.put(&path, &query, body).await?;
            v["kind"] = json!("config");
            v["name"] = json!(name);
            v
        }
    };
    v["service"] = json!(doc.service());
    let sidecars: Vec<&str> = v["sidecars"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let what = doc.describe();
    let line = if v["changed"] == false {
        format!("{what} valid, unchanged (dry run)")
    } else if sidecars.is_empty() {
        format!("{what} valid, would change; no connected sidecars would be updated (dry run)")
    } else {
        let n = sidecars.len();
        let plural = if n == 1 { "" } else { "s" };
        format!(
            "{what} valid, would update {n} sidecar{plural}: {} (dry run)",
            sidecars.join(", ")
        )
    };
    Ok((v, line))
}

/// `check`: the control plane's liveness and readiness (which includes its store),
/// then the fleet: sidecar status, NACKs, sidecars behind their target revision.
async fn check(client: &Client, format: Output) -> Result<(), CliError> {
    let mut checks: Vec<(String, bool, String)> = Vec::new();
    let healthz = client.raw(&["healthz"]).await?;
    checks.push((
        "control plane".into(),
        healthz.status.is_success(),
        format!("{} answered {} on /healthz", client.server(), healthz.status.as_u16()),
    ));
    let readyz = client.raw(&["readyz"]).await?;
    let ready_text = one_line(&String::from_utf8_lossy(&readyz.body));
    checks.push((
        "store".into(),
        readyz.status.is_success(),
        format!("/readyz: {ready_text}"),
    ));

    let mut report = json!({"server": client.server()});
    match client.get(&api(&["sidecars"]), &[]).await {
        Ok(sidecars) => fleet_checks(&sidecars, &mut checks, &mut report),
        Err(e) => checks.push(("sidecars".into(), false, format!("cannot list sidecars: {e}"))),
    }
    let problems: Vec<String> = checks
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(name, _, detail)| format!("{name}: {detail}"))
        .collect();
    report["healthy"] = json!(problems.is_empty());
    report["checks"] = json!(checks
        .iter()
        .map(|(n, ok, d)| json!({"name": n, "ok": ok, "detail": d}))
        .collect::<Vec<_>>());
    match output::structured(format, &report)? {
        Some(s) => output::write_stdout(&s)?,
        None => {
            let mut t = Table::new(&["CHECK", "STATUS", "DETAIL"]);
            for (name, ok, detail) in &checks {
                t.row(vec![
                    name.clone(),
                    if *ok { "ok" } else { "FAIL" }.into(),
                    detail.clone(),
                ]);
            }
            output::write_stdout(&t.render())?;
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let n = problems.len();
        Err(CliError::Unhealthy(format!(
            "{n} problem{}: {}",
            if n == 1 { "" } else { "s" },
            problems.join("; ")
        )))
    }
}

fn fleet_checks(sidecars: &Value, checks: &mut Vec<(String, bool, String)>, report: &mut Value) {
    let list = sidecars.as_array().map(Vec::as_slice).unwrap_or_default();
    let count = |st: &str| list.iter().filter(|s| s["status"] == st).count();
    let (healthy, unhealthy, disconnected) = (count("healthy"), count("unhealthy"), count("disconnected"));
    checks.push((
        "sidecars".into(),
        unhealthy == 0,
        format!(
            "{} total: {healthy} healthy, {unhealthy} unhealthy, {disconnected} disconnected",
            list.len()
        ),
    ));
    let connected = list.iter().filter(|s| s["status"] != "disconnected");
    let nacks: Vec<&Value> = connected.clone().filter(|s| !s["lastNack"].is_null()).collect();
    let behind: Vec<&Value> = connected
        .filter(|s| s["lastNack"].is_null() && s["inSync"] == false)
        .collect();
    let mut sync_detail: Vec<String> = nacks
        .iter()
        .map(|s| {
            format!(
                "{} NACK at revision {}: {}",
                s["id"].as_str().unwrap_or("?"),
                s["lastNack"]["revision"],
                one_line(s["lastNack"]["error"].as_str().unwrap_or(""))
            )
        })
        .collect();
    sync_detail.extend(behind.iter().map(|s| {
        format!(
            "{} behind (applied {}, target {})",
            s["id"].as_str().unwrap_or("?"),
            s["appliedRevision"],
            s["targetRevision"]
        )
    }));
    let in_sync = sync_detail.is_empty();
    checks.push((
        "config sync".into(),
        in_sync,
        if in_sync {
            "every connected sidecar runs its latest revision".into()
        } else {
            sync_detail.join("; ")
        },
    ));
    report["sidecars"] =
        json!({"total": list.len(), "healthy": healthy, "unhealthy": unhealthy, "disconnected": disconnected});
    report["nacks"] = json!(nacks
        .iter()
        .map(|s| json!({"id": s["id"], "revision": s["lastNack"]["revision"], "error": s["lastNack"]["error"]}))
        .collect::<Vec<_>>());
    report["behind"] = json!(behind
        .iter()
        .map(|s| json!({"id": s["id"], "appliedRevision": s["appliedRevision"], "targetRevision": s["targetRevision"]}))
        .collect::<Vec<_>>());
}
