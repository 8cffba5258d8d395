//! What each command does: the REST calls, in order, and what is printed.
//! Answers arrive typed from `client`; `output` turns them into tables or JSON/YAML.

use crate::args::{Apply, Check, Cli, Command, Delete, Get, Global, Install};
use crate::client::{Client, SidecarsWanted};
use crate::envelope::{parse_documents, Document, SecretSource, MAX_SECRET_BYTES};
use crate::error::{one_line, CliError};
use crate::format::Output;
use crate::install::{InstallSettings, Store};
use crate::kubecheck::{self, CheckLine, Kubectl};
use crate::output::{self, emit, value_or_line};
use clap::CommandFactory;
use outrider_api::{ConfigMeta, DryRunReport, PolicyRecord, SecretMeta, Sidecar, SidecarStatus};
use outrider_policy::PolicyKind;
use serde::Serialize;
use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let Global {
        server,
        token,
        ca_file,
        output,
    } = cli.global;
    if let Command::Completions { shell } = cli.command {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "outriderctl", &mut buf);
        return output::write_stdout(&String::from_utf8_lossy(&buf));
    }
    if let Command::Install(args) = &cli.command {
        // No control plane is asked: everything comes from the flags.
        return install(output, args);
    }
    if let Command::Inject(args) = &cli.command {
        // Offline: no control plane is asked anything.
        let (name, text) = read_input(&args.file)?;
        let (rendered, notes) = crate::inject::inject_text(&name, &text, args, output)?;
        for note in notes {
            eprintln!("{note}");
        }
        return output::write_stdout(&rendered);
    }
    let client = Client::new(&server, token.as_deref(), ca_file.as_deref())?;
    match cli.command {
        Command::Get(Get::Services) => {
            let services = client.list_services().await?;
            emit(output, &services, "No services found.", |s| output::services_table(s))
        }
        Command::Get(Get::Sidecars {
            service,
            status,
            limit,
            chunk_size,
        }) => {
            let want = SidecarsWanted {
                service: service.as_deref(),
                status: status.as_deref(),
                limit,
                chunk_size,
            };
            // One merged array, so `-o json` reads as the server's JSON of one listing.
            let sidecars = client.list_sidecars(&want).await?;
            emit(output, &sidecars, "No sidecars found.", |s| {
                output::sidecars_table(s, SystemTime::now())
            })
        }
        Command::Get(Get::Policy { service, kind }) => get_policy(&client, output, &service, kind).await,
        Command::Get(Get::Secrets { service }) => {
            check_service(&service)?;
            let secrets = client.list_secrets(&service).await?;
            emit(output, &secrets, &format!("Service {service} has no secrets."), |s| {
                output::secrets_table(s)
            })
        }
        Command::Apply(a) => apply(&client, output, &a).await,
        Command::Delete(Delete::Policy { service, kind }) => {
            check_service(&service)?;
            let deleted = client.delete_policy(&service, kind).await?;
            let line = format!(
                "deleted the {kind} policy of {service} (revision {})\n",
                deleted.revision
            );
            value_or_line(output, &deleted, &line)
        }
        Command::Delete(Delete::Secret { service, name }) => {
            check_service(&service)?;
            let deleted = client.delete_secret(&service, &name).await?;
            let line = format!("deleted secret {name} of {service} (revision {})\n", deleted.revision);
            value_or_line(output, &deleted, &line)
        }
        Command::History { service, limit } => {
            let revisions = client.revisions(service.as_deref(), limit).await?;
            emit(output, &revisions, "No revisions found.", |r| output::history_table(r))
        }
        Command::Revert { revision } => {
            let r = client.revert(revision).await?;
            let target = match (r.kind.as_str(), r.name.as_deref()) {
                ("config", Some(name)) => format!("config document {name} of {}", r.service),
                ("", _) => format!("document of {}", r.service),
                (kind, _) => format!("{kind} policy of {}", r.service),
            };
            let verb = if r.operation == "delete" { "removes" } else { "restores" };
            let line = format!(
                "reverted revision {revision}: revision {} {verb} the {target}\n",
                r.revision
            );
            value_or_line(output, &r, &line)
        }
        Command::Canary(c) => crate::canary::run(&client, output, c).await,
        Command::Check(args) => check(&client, output, &args).await,
        Command::Install(_) | Command::Inject(_) | Command::Completions { .. } => unreachable!("handled above"),
    }
}

fn check_service(service: &str) -> Result<(), CliError> {
    outrider_policy::validate_service_name(service).map_err(CliError::Invalid)
}

async fn get_policy(client: &Client, format: Output, service: &str, kind: Option<PolicyKind>) -> Result<(), CliError> {
    check_service(service)?;
    let list: Vec<PolicyRecord> = match kind {
        Some(kind) => {
            let record = client.policy(service, kind).await?;
            // One policy prints as itself, not as a list of one.
            if format != Output::Table {
                return value_or_line(format, &record, "");
            }
            vec![record]
        }
        None => {
            let mut svc = client.service(service).await?;
            PolicyKind::ALL
                .iter()
                .filter_map(|k| svc.policies.remove(k.as_str()))
                .collect()
        }
    };
    emit(format, &list, &format!("Service {service} has no policies."), |l| {
        output::policies_table(l)
    })
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

/// What `apply` reports per document under `-o json|yaml`: the API's answer, as the
/// server sent it (untagged, so each prints as its own object).
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Applied {
    Policy(PolicyRecord),
    Config(ConfigMeta),
    Secret(SecretMeta),
    /// A config document the server already had: what its GET said, without a write.
    SameConfig(SameConfig),
    DryRun(TaggedDryRun),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SameConfig {
    service: String,
    name: String,
    content_type: String,
    size: usize,
    /// From the ETag; `null` if the server sent none.
    revision: Option<u64>,
}

/// A dry-run report tagged with its target, so a list of them reads alone.
#[derive(Debug, Serialize)]
struct TaggedDryRun {
    #[serde(flatten)]
    report: DryRunReport,
    kind: String,
    service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

async fn apply(client: &Client, format: Output, a: &Apply) -> Result<(), CliError> {
    let (name, text) = read_input(&a.file)?;
    // Every document is checked before the first request: a bad file changes nothing.
    let docs = parse_documents(&text).map_err(|e| CliError::Input {
        source_name: name,
        message: one_line(&e.to_string()),
    })?;
    // Secret files too are read before the first request.
    let base = a.file.parent().filter(|_| a.file != Path::new("-"));
    let values = docs
        .iter()
        .map(|d| secret_value(d, base))
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Vec::with_capacity(docs.len());
    for (i, (doc, value)) in docs.iter().zip(&values).enumerate() {
        let outcome = match (value, a.dry_run) {
            (Some(value), dry_run) => apply_secret(client, doc, value, dry_run).await,
            (None, true) => dry_run_one(client, doc).await,
            (None, false) => apply_one(client, doc).await,
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
    match output::structured(format, &results)? {
        Some(s) => output::write_stdout(&s),
        None => Ok(()),
    }
}

/// A Secret envelope's value: inline, or the file it names (relative to `base`, the
/// applied file's directory). `None` for every other kind.
fn secret_value(doc: &Document, base: Option<&Path>) -> Result<Option<Vec<u8>>, CliError> {
    let Document::Secret { source, .. } = doc else {
        return Ok(None);
    };
    let bytes = match source {
        SecretSource::Value(v) => v.as_bytes().to_vec(),
        SecretSource::File(path) => {
            let path = match base {
                Some(base) if path.is_relative() => base.join(path),
                _ => path.clone(),
            };
            let input = |message: String| CliError::Input {
                source_name: path.display().to_string(),
                message,
            };
            let bytes =
                std::fs::read(&path).map_err(|e| input(format!("cannot read: {}", one_line(&e.to_string()))))?;
            if bytes.len() > MAX_SECRET_BYTES {
                return Err(input(format!(
                    "{} bytes is over the limit of {MAX_SECRET_BYTES} bytes for a secret ({})",
                    bytes.len(),
                    doc.describe()
                )));
            }
            bytes
        }
    };
    Ok(Some(bytes))
}

/// Writes a secret (every time: its value cannot be read back to compare), or with
/// `dry_run` asks the server what the write would do.
async fn apply_secret(
    client: &Client,
    doc: &Document,
    value: &[u8],
    dry_run: bool,
) -> Result<(Applied, String), CliError> {
    let Document::Secret { service, name, .. } = doc else {
        unreachable!("only Secret envelopes have a value");
    };
    let what = doc.describe();
    if dry_run {
        let report: DryRunReport = client.put_secret(service, name, value, true).await?;
        let line = dry_run_line(&what, &report);
        let tagged = TaggedDryRun {
            report,
            kind: "secret".into(),
            service: service.clone(),
            name: Some(name.clone()),
        };
        return Ok((Applied::DryRun(tagged), line));
    }
    let stored: SecretMeta = client.put_secret(service, name, value, false).await?;
    let line = format!("{what} set ({} bytes, revision {})", stored.size, stored.revision);
    Ok((Applied::Secret(stored), line))
}

/// Writes one document unless the server already has exactly it, so re-applying a
/// file adds no revisions. Returns the API's answer and a line for people.
async fn apply_one(client: &Client, doc: &Document) -> Result<(Applied, String), CliError> {
    let what = doc.describe();
    match doc {
        Document::Policy { service, policy } => {
            let kind = policy.kind();
            let document = policy.to_json();
            let current = client.find_policy(service, kind).await?;
            if let Some(cur) = current.as_ref().filter(|c| c.document == document) {
                let line = format!("{what} unchanged (revision {})", cur.revision);
                return Ok((Applied::Policy(cur.clone()), line));
            }
            let stored = client.put_policy(service, kind, document).await?;
            let verb = if current.is_some() { "configured" } else { "created" };
            let line = format!("{what} {verb} (revision {})", stored.revision);
            Ok((Applied::Policy(stored), line))
        }
        Document::Config {
            service,
            name,
            content_type,
            content,
        } => {
            let current = client.config(service, name).await?;
            let exists = current.status.is_success();
            if exists && current.body == content.as_bytes() && current.content_type.as_deref() == Some(content_type) {
                let revision = current.etag.as_deref().and_then(|r| r.parse::<u64>().ok());
                let line = format!(
                    "{what} unchanged (revision {})",
                    revision.map_or_else(|| "null".into(), |r| r.to_string())
                );
                let same = SameConfig {
                    service: service.clone(),
                    name: name.clone(),
                    content_type: content_type.clone(),
                    size: content.len(),
                    revision,
                };
                return Ok((Applied::SameConfig(same), line));
            }
            let stored = client
                .put_config(service, name, content_type, content.as_bytes())
                .await?;
            let verb = if exists { "configured" } else { "created" };
            let line = format!("{what} {verb} (revision {})", stored.revision);
            Ok((Applied::Config(stored), line))
        }
        Document::Secret { .. } => unreachable!("secrets are applied by apply_secret"),
    }
}

/// `?dryRun=true`: the server validates and says which sidecars would get a new
/// snapshot.
async fn dry_run_one(client: &Client, doc: &Document) -> Result<(Applied, String), CliError> {
    let tagged = match doc {
        Document::Policy { service, policy } => TaggedDryRun {
            report: client.dry_run_policy(service, policy.kind(), policy.to_json()).await?,
            kind: policy.kind().as_str().into(),
            service: service.clone(),
            name: None,
        },
        Document::Config {
            service,
            name,
            content_type,
            content,
        } => TaggedDryRun {
            report: client
                .dry_run_config(service, name, content_type, content.as_bytes())
                .await?,
            kind: "config".into(),
            service: service.clone(),
            name: Some(name.clone()),
        },
        Document::Secret { .. } => unreachable!("secrets are applied by apply_secret"),
    };
    let line = dry_run_line(&doc.describe(), &tagged.report);
    Ok((Applied::DryRun(tagged), line))
}

fn dry_run_line(what: &str, report: &DryRunReport) -> String {
    let sidecars = &report.sidecars;
    if !report.changed {
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
    }
}

/// `check -o json|yaml`. The fleet part is absent when the sidecars could not be listed.
#[derive(Debug, Serialize)]
struct CheckReport {
    server: String,
    healthy: bool,
    checks: Vec<CheckLine>,
    #[serde(flatten)]
    fleet: Option<FleetReport>,
}

#[derive(Debug, Default, PartialEq, Serialize)]
struct FleetReport {
    sidecars: FleetCounts,
    nacks: Vec<NackLine>,
    behind: Vec<BehindLine>,
}

#[derive(Debug, Default, PartialEq, Serialize)]
struct FleetCounts {
    total: usize,
    healthy: usize,
    unhealthy: usize,
    disconnected: usize,
}

#[derive(Debug, PartialEq, Serialize)]
struct NackLine {
    id: String,
    revision: Option<u64>,
    error: String,
}

#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct BehindLine {
    id: String,
    applied_revision: u64,
    target_revision: u64,
}

/// `check`: with `--pre`, only the cluster before an installation; else the control
/// plane's liveness and readiness (which includes its store), then the fleet: sidecar
/// status, NACKs, sidecars behind their target revision; with `--kubernetes`, the
/// installation in the cluster as well.
async fn check(client: &Client, format: Output, args: &Check) -> Result<(), CliError> {
    let kubectl = Kubectl::new(&args.kubectl);
    let mut checks: Vec<CheckLine>;
    let mut fleet = None;
    if args.pre {
        checks = kubecheck::pre_checks(&kubectl, &args.namespace);
    } else if args.kubernetes {
        checks = kubecheck::install_checks(&kubectl, &args.namespace);
        if checks.iter().all(|c| c.ok) {
            // In a cluster the control plane is reached by a port-forward; without
            // one its part is a failed line with that hint, not the end of `check`.
            match control_plane_checks(client).await {
                Ok((lines, sidecars)) => {
                    checks.extend(lines);
                    if let Some((report, sidecars)) = sidecars {
                        checks.push(kubecheck::injected_pods(kubecheck::pods(&kubectl), &sidecars));
                        fleet = Some(report);
                    }
                }
                Err(e) => checks.push(CheckLine::fail(
                    "control plane",
                    e.to_string(),
                    format!(
                        "kubectl --namespace {ns} port-forward service/{cp} 18080, then --server https://127.0.0.1:18080 \
                         --ca-file ca.crt (kubectl --namespace {ns} get secret {ca} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > ca.crt)",
                        ns = args.namespace,
                        cp = crate::install::CONTROL_PLANE,
                        ca = crate::install::CA_SECRET,
                    ),
                )),
            }
        }
    } else {
        let (lines, sidecars) = control_plane_checks(client).await?;
        checks = lines;
        fleet = sidecars.map(|(report, _)| report);
    }
    let problems: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    let report = CheckReport {
        server: client.server(),
        healthy: problems.is_empty(),
        checks,
        fleet,
    };
    match output::structured(format, &report)? {
        Some(s) => output::write_stdout(&s)?,
        None => output::write_stdout(&report.checks.iter().map(CheckLine::render).collect::<String>())?,
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

/// The control plane's own lines, and the fleet with its sidecars when they could be
/// listed. An unreachable control plane is an error, not a line.
async fn control_plane_checks(
    client: &Client,
) -> Result<(Vec<CheckLine>, Option<(FleetReport, Vec<Sidecar>)>), CliError> {
    let mut checks: Vec<CheckLine> = Vec::new();
    let healthz = client.raw(&["healthz"]).await?;
    checks.push(CheckLine::new(
        "control plane",
        healthz.status.is_success(),
        format!("{} answered {} on /healthz", client.server(), healthz.status.as_u16()),
    ));
    let readyz = client.raw(&["readyz"]).await?;
    let ready_text = one_line(&String::from_utf8_lossy(&readyz.body));
    checks.push(CheckLine::new(
        "store",
        readyz.status.is_success(),
        format!("/readyz: {ready_text}"),
    ));

    let every = SidecarsWanted {
        chunk_size: outrider_api::MAX_SIDECAR_PAGE,
        ..SidecarsWanted::default()
    };
    let fleet = match client.list_sidecars(&every).await {
        Ok(sidecars) => {
            let (fleet, lines) = fleet_checks(&sidecars);
            checks.extend(lines);
            Some((fleet, sidecars))
        }
        Err(e) => {
            checks.push(CheckLine::new("sidecars", false, format!("cannot list sidecars: {e}")));
            None
        }
    };
    Ok((checks, fleet))
}

/// `install`: the objects as YAML documents, or `-o json` as one `v1` `List`.
fn install(format: Output, a: &Install) -> Result<(), CliError> {
    let store = match a.embedded_store.as_deref() {
        None => Store::Postgres {
            secret: a.database_url_secret.clone(),
        },
        Some("pvc") => Store::EmbeddedPvc {
            size: a.data_size.clone(),
        },
        Some(_) => Store::EmbeddedEmptyDir,
    };
    let settings = InstallSettings {
        namespace: a.namespace.clone(),
        replicas: a.replicas,
        image: a.image.clone(),
        sidecar_image: a.sidecar_image.clone().unwrap_or_else(|| a.image.clone()),
        proxy_uid: a.proxy_uid,
        trust_domain: a.trust_domain.clone(),
        store,
        registration_token: a.registration_token.clone(),
        api_token: a.api_token.clone(),
    };
    settings.validate()?;
    outrider_policy::validate_trust_domain(&settings.trust_domain)
        .map_err(|e| CliError::Invalid(format!("--trust-domain: {e}")))?;
    let root = match (&a.ca_cert, &a.ca_key) {
        (Some(cert), Some(key)) => crate::install::read_root(cert, key)?,
        _ => crate::install::new_root(&settings.trust_domain)?,
    };
    let objects = crate::install::objects(&settings, Some(&root));
    match format {
        Output::Table | Output::Yaml => output::write_stdout(&crate::install::render(&objects)?),
        Output::Json => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
            value_or_line(format, &list, "")
        }
    }
}

/// The fleet's part of `check`: counts by status, then whether every connected
/// sidecar runs its latest revision (NACKs and laggards named).
fn fleet_checks(list: &[Sidecar]) -> (FleetReport, Vec<CheckLine>) {
    let count = |st: SidecarStatus| list.iter().filter(|s| s.status == st).count();
    let counts = FleetCounts {
        total: list.len(),
        healthy: count(SidecarStatus::Healthy),
        unhealthy: count(SidecarStatus::Unhealthy),
        disconnected: count(SidecarStatus::Disconnected),
    };
    let mut lines = vec![CheckLine::new(
        "sidecars",
        counts.unhealthy == 0,
        format!(
            "{} total: {} healthy, {} unhealthy, {} disconnected",
            counts.total, counts.healthy, counts.unhealthy, counts.disconnected
        ),
    )];
    let connected = || list.iter().filter(|s| s.status != SidecarStatus::Disconnected);
    let nacks: Vec<NackLine> = connected()
        .filter_map(|s| {
            s.last_nack.as_ref().map(|n| NackLine {
                id: s.id.clone(),
                revision: n.revision,
                error: n.error.clone(),
            })
        })
        .collect();
    let behind: Vec<BehindLine> = connected()
        .filter(|s| s.last_nack.is_none() && !s.in_sync)
        .map(|s| BehindLine {
            id: s.id.clone(),
            applied_revision: s.applied_revision,
            target_revision: s.target_revision,
        })
        .collect();
    let mut sync_detail: Vec<String> = nacks
        .iter()
        .map(|n| {
            let revision = n.revision.map_or_else(|| "null".into(), |r| r.to_string());
            format!("{} NACK at revision {revision}: {}", n.id, one_line(&n.error))
        })
        .collect();
    sync_detail.extend(behind.iter().map(|b| {
        format!(
            "{} behind (applied {}, target {})",
            b.id, b.applied_revision, b.target_revision
        )
    }));
    let in_sync = sync_detail.is_empty();
    lines.push(CheckLine::new(
        "config sync",
        in_sync,
        if in_sync {
            "every connected sidecar runs its latest revision".into()
        } else {
            sync_detail.join("; ")
        },
    ));
    (
        FleetReport {
            sidecars: counts,
            nacks,
            behind,
        },
        lines,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_api::LastNack;
    use serde_json::json;

    fn sidecar(id: &str, status: SidecarStatus, applied: u64, nack: Option<(Option<u64>, &str)>) -> Sidecar {
        Sidecar {
            id: id.into(),
            service: "web".into(),
            version: "v1".into(),
            namespace: "default".into(),
            pod: id.into(),
            address: "10.0.0.1".into(),
            inbound_port: 15006,
            admin_port: 15000,
            status,
            applied_revision: applied,
            target_revision: 7,
            in_sync: applied == 7 && nack.is_none(),
            last_nack: nack.map(|(revision, error)| LastNack {
                revision,
                error: error.into(),
            }),
            last_seen: "2026-01-01T00:00:00Z".into(),
            connected_at: "2026-01-01T00:00:00Z".into(),
            replica: "cp-1".into(),
            build_version: "0.1.0".into(),
            health: None,
            identity: None,
            certificate_expiry: None,
        }
    }

    #[test]
    fn fleet_check_names_nacks_and_laggards_but_not_disconnected_sidecars() {
        let list = [
            sidecar("a", SidecarStatus::Healthy, 7, None),
            sidecar("b", SidecarStatus::Healthy, 6, Some((Some(7), "bad\nroute"))),
            sidecar("c", SidecarStatus::Unhealthy, 5, None),
            sidecar("d", SidecarStatus::Disconnected, 1, None),
        ];
        let (report, lines) = fleet_checks(&list);
        assert_eq!(lines[0].name, "sidecars");
        assert!(!lines[0].ok, "an unhealthy sidecar fails the check");
        assert_eq!(lines[0].detail, "4 total: 2 healthy, 1 unhealthy, 1 disconnected");
        assert_eq!(lines[1].name, "config sync");
        assert_eq!(
            lines[1].detail,
            "b NACK at revision 7: bad route; c behind (applied 5, target 7)"
        );
        assert_eq!(report.nacks.len(), 1);
        assert_eq!(report.behind.len(), 1);
    }

    #[test]
    fn an_empty_fleet_is_in_sync() {
        let (report, lines) = fleet_checks(&[]);
        assert!(lines.iter().all(|l| l.ok));
        assert_eq!(lines[1].detail, "every connected sidecar runs its latest revision");
        assert_eq!(report, FleetReport::default());
    }

    #[test]
    fn check_report_json_keeps_its_shape() {
        let (fleet, lines) = fleet_checks(&[sidecar("b", SidecarStatus::Healthy, 6, Some((None, "x")))]);
        let report = CheckReport {
            server: "http://cp".into(),
            healthy: false,
            checks: lines,
            fleet: Some(fleet),
        };
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(
            v["sidecars"],
            json!({"total": 1, "healthy": 1, "unhealthy": 0, "disconnected": 0})
        );
        assert_eq!(v["nacks"], json!([{"id": "b", "revision": null, "error": "x"}]));
        assert_eq!(v["behind"], json!([]));
        assert_eq!(v["checks"][1]["ok"], false);
        let without_fleet = CheckReport { fleet: None, ..report };
        let v = serde_json::to_value(&without_fleet).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["checks", "healthy", "server"]);
    }

    #[test]
    fn dry_run_lines_say_what_would_change() {
        let report = |changed: bool, sidecars: &[&str]| DryRunReport {
            dry_run: true,
            valid: true,
            changed,
            sidecars: sidecars.iter().map(|s| (*s).to_owned()).collect(),
            document: json!({}),
        };
        let what = "RateLimitPolicy web";
        assert_eq!(
            dry_run_line(what, &report(false, &[])),
            "RateLimitPolicy web valid, unchanged (dry run)"
        );
        assert_eq!(
            dry_run_line(what, &report(true, &[])),
            "RateLimitPolicy web valid, would change; no connected sidecars would be updated (dry run)"
        );
        assert_eq!(
            dry_run_line(what, &report(true, &["default/web-1", "default/web-2"])),
            "RateLimitPolicy web valid, would update 2 sidecars: default/web-1, default/web-2 (dry run)"
        );
    }

    #[test]
    fn a_tagged_dry_run_prints_the_report_with_its_target() {
        let tagged = Applied::DryRun(TaggedDryRun {
            report: DryRunReport {
                dry_run: true,
                valid: true,
                changed: true,
                sidecars: vec![],
                document: json!({"name": "app.yaml", "size": 5}),
            },
            kind: "config".into(),
            service: "web".into(),
            name: Some("app.yaml".into()),
        });
        assert_eq!(
            serde_json::to_value(&tagged).unwrap(),
            json!({"dryRun": true, "valid": true, "changed": true, "sidecars": [],
                   "document": {"name": "app.yaml", "size": 5},
                   "kind": "config", "service": "web", "name": "app.yaml"})
        );
    }
}
