//! The Kubernetes side of `outriderctl check`: runs `kubectl` as a subprocess (its
//! current context is the cluster), and judges its JSON in pure functions, one per
//! check, each giving one [`CheckLine`] with a hint when it fails.

use crate::install::{CONTROL_PLANE, WEBHOOK_CONFIGURATION};
use outrider_api::{Sidecar, SidecarStatus};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest Kubernetes with native sidecars (init containers with
/// `restartPolicy: Always`) on by default (beta); they are GA from 1.33.
pub const MIN_MINOR: u64 = 29;
const GA_MINOR: u64 = 33;

/// One line of `check`: `✓ name: detail` or `✗ name: detail (hint: …)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckLine {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl CheckLine {
    pub fn pass(name: &str, detail: impl Into<String>) -> Self {
        CheckLine {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn fail(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        CheckLine {
            name: name.into(),
            ok: false,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn new(name: &str, ok: bool, detail: String) -> Self {
        CheckLine {
            name: name.into(),
            ok,
            detail,
            hint: None,
        }
    }

    pub fn render(&self) -> String {
        let mark = if self.ok { '✓' } else { '✗' };
        match &self.hint {
            Some(h) if !self.ok => format!("{mark} {}: {} (hint: {h})\n", self.name, self.detail),
            _ => format!("{mark} {}: {}\n", self.name, self.detail),
        }
    }
}

/// What one kubectl run gave: its stdout, or a one-line reason it failed.
pub type Run = Result<String, String>;

/// `kubectl` at a path, with a request timeout so a dead API server cannot hang `check`.
pub struct Kubectl {
    path: PathBuf,
}

impl Kubectl {
    pub fn new(path: &Path) -> Self {
        Kubectl { path: path.to_owned() }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(&self.path)
            .args(args)
            .arg("--request-timeout=10s")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.path.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let out = String::from_utf8_lossy(&out.stdout);
            let text = if err.trim().is_empty() { out } else { err };
            Err(crate::error::one_line(&text))
        }
    }

    fn json(&self, args: &[&str]) -> Result<Value, String> {
        let text = self.run(args)?;
        serde_json::from_str(&text).map_err(|e| format!("kubectl {} printed no JSON: {e}", args.join(" ")))
    }
}

/// Objects `install` creates, as `kubectl auth can-i create` names them, and whether
/// each lives in the control plane's namespace.
pub const INSTALL_RESOURCES: &[(&str, bool)] = &[
    ("namespaces", false),
    ("serviceaccounts", true),
    ("secrets", true),
    ("services", true),
    ("deployments.apps", true),
    ("poddisruptionbudgets.policy", true),
    ("clusterroles.rbac.authorization.k8s.io", false),
    ("clusterrolebindings.rbac.authorization.k8s.io", false),
    ("mutatingwebhookconfigurations.admissionregistration.k8s.io", false),
];

/// `check --pre`: kubectl, the cluster's version, the user's rights, and a free namespace.
pub fn pre_checks(k: &Kubectl, ns: &str) -> Vec<CheckLine> {
    let mut lines = cluster_checks(k);
    if !lines.iter().all(|l| l.ok) {
        return lines;
    }
    for (resource, namespaced) in INSTALL_RESOURCES {
        let mut args = vec!["auth", "can-i", "create", resource];
        if *namespaced {
            args.extend(["--namespace", ns]);
        }
        lines.push(can_i(resource, k.run(&args)));
    }
    lines.push(namespace_free(ns, k.run(&["get", "namespace", ns, "-o", "name"])));
    lines
}

/// `check --kubernetes`: the cluster, then the installation in `ns`. Whether the
/// injected Pods' sidecars registered needs the control plane's list: [`injected_pods`].
pub fn install_checks(k: &Kubectl, ns: &str) -> Vec<CheckLine> {
    let mut lines = cluster_checks(k);
    if !lines.iter().all(|l| l.ok) {
        return lines;
    }
    lines.push(deployment(
        ns,
        k.json(&["get", "deployment", CONTROL_PLANE, "--namespace", ns, "-o", "json"]),
    ));
    lines.push(webhook(
        ns,
        k.json(&[
            "get",
            "mutatingwebhookconfiguration",
            WEBHOOK_CONFIGURATION,
            "-o",
            "json",
        ]),
    ));
    lines
}

/// Injected Pods of every namespace (`kubectl get pods --all-namespaces`).
pub fn pods(k: &Kubectl) -> Result<Value, String> {
    k.json(&["get", "pods", "--all-namespaces", "-o", "json"])
}

/// kubectl itself, then the API server and its version.
fn cluster_checks(k: &Kubectl) -> Vec<CheckLine> {
    let client = k.json(&["version", "--client", "-o", "json"]);
    let Ok(client) = client else {
        return vec![CheckLine::fail(
            "kubectl",
            client.unwrap_err(),
            "install kubectl or pass --kubectl PATH",
        )];
    };
    let client_version = client["clientVersion"]["gitVersion"].as_str().unwrap_or("unknown");
    vec![
        CheckLine::pass("kubectl", format!("kubectl {client_version}")),
        server_version(k.json(&["version", "-o", "json"])),
    ]
}

/// `kubectl version -o json`: reachable, and new enough for native sidecars.
pub fn server_version(v: Result<Value, String>) -> CheckLine {
    const NAME: &str = "Kubernetes version";
    let v = match v {
        Ok(v) => v,
        Err(e) => {
            return CheckLine::fail(
                NAME,
                format!("cannot reach the API server: {e}"),
                "check `kubectl config current-context` and that the cluster is up",
            )
        }
    };
    let server = &v["serverVersion"];
    let git = server["gitVersion"].as_str().unwrap_or("");
    let Some((major, minor)) = parse_version(server) else {
        return CheckLine::fail(
            NAME,
            format!("cannot read the server version from {server}"),
            "check `kubectl version`",
        );
    };
    if (major, minor) < (1, MIN_MINOR) {
        return CheckLine::fail(
            NAME,
            format!("{git}: injected sidecars need native sidecar containers (1.{MIN_MINOR} or newer)"),
            format!("upgrade the cluster to 1.{MIN_MINOR}+ (1.{GA_MINOR}+ has native sidecars GA)"),
        );
    }
    let stage = if minor >= GA_MINOR { "GA" } else { "beta, on by default" };
    CheckLine::pass(NAME, format!("{git} (native sidecars: {stage})"))
}

/// (major, minor) from `major`/`minor` ("1", "29+" on some providers) or `gitVersion`.
fn parse_version(server: &Value) -> Option<(u64, u64)> {
    let digits = |s: &str| -> Option<u64> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    if let (Some(ma), Some(mi)) = (server["major"].as_str(), server["minor"].as_str()) {
        if let (Some(ma), Some(mi)) = (digits(ma), digits(mi)) {
            return Some((ma, mi));
        }
    }
    let git = server["gitVersion"].as_str()?.trim_start_matches('v');
    let mut parts = git.split('.');
    Some((digits(parts.next()?)?, digits(parts.next()?)?))
}

/// `kubectl auth can-i create RESOURCE`: `yes` and exit 0, or `no` and exit 1.
pub fn can_i(resource: &str, run: Run) -> CheckLine {
    let name = format!("can create {resource}");
    match run {
        Ok(out) if out.trim() == "yes" => CheckLine::pass(&name, "yes"),
        Ok(out) => CheckLine::fail(
            &name,
            out.trim().to_owned(),
            "install needs a user allowed to create it",
        ),
        Err(e) if e.trim() == "no" || e.starts_with("no ") || e.starts_with("no -") => CheckLine::fail(
            &name,
            "no",
            "install needs a user allowed to create it (a cluster administrator's, once)",
        ),
        Err(e) => CheckLine::fail(&name, e, "check `kubectl auth can-i create` by hand"),
    }
}

/// `kubectl get namespace NS`: before installing, it must not exist yet.
pub fn namespace_free(ns: &str, run: Run) -> CheckLine {
    let name = format!("namespace {ns}");
    match run {
        Ok(_) => CheckLine::fail(
            &name,
            "already exists",
            "an installation is there already: run `outriderctl check --kubernetes`, or pick --namespace",
        ),
        Err(e) if e.contains("NotFound") || e.contains("not found") => CheckLine::pass(&name, "does not exist yet"),
        Err(e) => CheckLine::fail(&name, e, "check that you may read namespaces"),
    }
}

/// The control plane Deployment: present, and with every replica available.
pub fn deployment(ns: &str, v: Result<Value, String>) -> CheckLine {
    const NAME: &str = "control plane Deployment";
    let v = match v {
        Ok(v) => v,
        Err(e) => {
            return CheckLine::fail(
                NAME,
                e,
                format!("install it: outriderctl install --namespace {ns} | kubectl apply -f -"),
            )
        }
    };
    let want = v["spec"]["replicas"].as_u64().unwrap_or(1);
    let available = v["status"]["availableReplicas"].as_u64().unwrap_or(0);
    let condition = v["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Available");
    let available_condition = condition.is_some_and(|c| c["status"] == "True");
    let detail = format!("{available}/{want} replicas available");
    if available_condition && available >= want {
        CheckLine::pass(NAME, detail)
    } else {
        let why = condition
            .and_then(|c| c["message"].as_str())
            .map(|m| format!("{detail}: {m}"))
            .unwrap_or(detail);
        CheckLine::fail(
            NAME,
            why,
            format!("kubectl --namespace {ns} describe deployment {CONTROL_PLANE}; kubectl --namespace {ns} logs deployment/{CONTROL_PLANE}"),
        )
    }
}

/// The webhook configuration: present, pointing at this namespace, and with a CA
/// bundle the API server can verify the webhook's certificate with.
pub fn webhook(ns: &str, v: Result<Value, String>) -> CheckLine {
    const NAME: &str = "injection webhook";
    let reinstall = format!("outriderctl install --namespace {ns} | kubectl apply -f -");
    let v = match v {
        Ok(v) => v,
        Err(e) => return CheckLine::fail(NAME, e, reinstall),
    };
    let hooks = v["webhooks"].as_array().map(Vec::as_slice).unwrap_or_default();
    if hooks.is_empty() {
        return CheckLine::fail(NAME, format!("{WEBHOOK_CONFIGURATION} has no webhooks"), reinstall);
    }
    for h in hooks {
        let name = h["name"].as_str().unwrap_or("?");
        let service_ns = h["clientConfig"]["service"]["namespace"].as_str().unwrap_or("");
        if service_ns != ns {
            return CheckLine::fail(
                NAME,
                format!("{name} calls a service in namespace {service_ns:?}, not {ns:?}"),
                "pass the --namespace the control plane was installed in",
            );
        }
        if h["clientConfig"]["caBundle"]
            .as_str()
            .is_none_or(|b| b.trim().is_empty())
        {
            return CheckLine::fail(
                NAME,
                format!("{name} has no caBundle: the API server cannot call it, so no Pod is injected"),
                "set it to the Secret outrider-ca's ca.crt (base64), or re-run install with --ca-cert/--ca-key",
            );
        }
    }
    CheckLine::pass(
        NAME,
        format!("{WEBHOOK_CONFIGURATION}: {} webhooks with a CA bundle", hooks.len()),
    )
}

/// Running Pods with the injected sidecar, each with a connected sidecar in the
/// control plane's list (matched by namespace and Pod name).
pub fn injected_pods(pods: Result<Value, String>, sidecars: &[Sidecar]) -> CheckLine {
    const NAME: &str = "injected sidecars";
    let pods = match pods {
        Ok(p) => p,
        Err(e) => return CheckLine::fail(NAME, format!("cannot list Pods: {e}"), "check that you may list Pods"),
    };
    let registered: HashSet<(&str, &str)> = sidecars
        .iter()
        .filter(|s| s.status != SidecarStatus::Disconnected)
        .map(|s| (s.namespace.as_str(), s.pod.as_str()))
        .collect();
    let mut injected = 0;
    let mut missing = Vec::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        let has_sidecar = pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == "outrider-sidecar");
        if !has_sidecar || pod["status"]["phase"] != "Running" {
            continue;
        }
        injected += 1;
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = pod["metadata"]["name"].as_str().unwrap_or("");
        if !registered.contains(&(ns, name)) {
            missing.push(format!("{ns}/{name}"));
        }
    }
    if missing.is_empty() {
        return CheckLine::pass(NAME, format!("{injected} running injected Pods, every one registered"));
    }
    let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
    let more = missing.len().saturating_sub(shown.len());
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    CheckLine::fail(
        NAME,
        format!(
            "{} of {injected} running injected Pods have no connected sidecar: {}{more}",
            missing.len(),
            shown.join(", ")
        ),
        "kubectl logs POD -c outrider-sidecar --namespace NS (its token and control plane address)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_from_providers_with_a_plus_and_from_git_versions() {
        assert_eq!(parse_version(&json!({"major": "1", "minor": "29+"})), Some((1, 29)));
        assert_eq!(parse_version(&json!({"gitVersion": "v1.33.1-eks-1"})), Some((1, 33)));
        assert_eq!(
            parse_version(&json!({"major": "", "minor": "", "gitVersion": "v1.30.0"})),
            Some((1, 30))
        );
        assert_eq!(parse_version(&json!({})), None);
    }

    #[test]
    fn old_clusters_fail_and_new_ones_say_how_sidecars_stand() {
        let v = |g: &str| Ok(json!({"serverVersion": {"gitVersion": g}}));
        let old = server_version(v("v1.28.9"));
        assert!(!old.ok && old.detail.contains("native sidecar"), "{old:?}");
        assert!(server_version(v("v1.29.0")).detail.contains("beta"));
        assert!(server_version(v("v1.33.0")).detail.contains("GA"));
        assert!(!server_version(Err("connection refused".into())).ok);
    }

    #[test]
    fn a_free_namespace_passes_and_an_existing_one_fails() {
        let e = r#"Error from server (NotFound): namespaces "outrider" not found"#;
        assert!(namespace_free("outrider", Err(e.into())).ok);
        assert!(!namespace_free("outrider", Ok("namespace/outrider".into())).ok);
        assert!(!namespace_free("outrider", Err("Unauthorized".into())).ok);
    }

    #[test]
    fn can_i_reads_yes_and_no() {
        assert!(can_i("secrets", Ok("yes\n".into())).ok);
        let no = can_i("secrets", Err("no".into()));
        assert!(!no.ok && no.hint.is_some(), "{no:?}");
    }

    #[test]
    fn a_deployment_is_healthy_only_when_every_replica_is_available() {
        let d = |avail: u64, status: &str| {
            Ok(json!({"spec": {"replicas": 2}, "status": {"availableReplicas": avail,
                "conditions": [{"type": "Available", "status": status, "message": "m"}]}}))
        };
        assert!(deployment("o", d(2, "True")).ok);
        assert!(!deployment("o", d(1, "True")).ok);
        assert!(!deployment("o", d(2, "False")).ok);
    }

    #[test]
    fn a_webhook_without_ca_bundle_fails() {
        let hook = |bundle: Option<&str>| {
            let mut cc = json!({"service": {"namespace": "o"}});
            if let Some(b) = bundle {
                cc["caBundle"] = json!(b);
            }
            Ok(json!({"webhooks": [{"name": "a", "clientConfig": cc}]}))
        };
        assert!(webhook("o", hook(Some("Zm9v"))).ok);
        let l = webhook("o", hook(None));
        assert!(!l.ok && l.detail.contains("caBundle"), "{l:?}");
        assert!(!webhook("other", hook(Some("Zm9v"))).ok);
    }

    #[test]
    fn lines_render_with_a_mark_and_the_hint_only_on_failure() {
        assert_eq!(CheckLine::pass("a", "b").render(), "✓ a: b\n");
        assert_eq!(CheckLine::fail("a", "b", "c").render(), "✗ a: b (hint: c)\n");
    }
}
