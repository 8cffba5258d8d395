//! `outriderctl install`, the kustomize base in `deploy/kubernetes/` and `outriderctl
//! check --pre|--kubernetes`, with the real binaries.
//!
//! - Every object `install` prints (and the kustomize render) passes the Kubernetes
//!   1.30 and 1.33 schemas, strictly (`kubernetes-validate` from the virtualenv that
//!   `.ci/run` makes; `OUTRIDER_TEST_PYTHON`).
//! - The kustomize base is `install`'s defaults without Secrets and caBundle, object
//!   for object, so the two cannot drift (`kubectl kustomize`, else our own reading).
//! - The root CA and tokens `install` makes start a real control plane.
//! - `check` runs a fake `kubectl` on PATH that prints canned JSON: the real thing
//!   needs a cluster, and what is tested here is how its answers are judged.

mod common;
use base64::prelude::*;
use common::*;
use outrider_testkit::{bin_path, echo, free_port, wait_until};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn outriderctl(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let out: Output = Command::new(bin_path("outriderctl"))
        .args(args)
        .env_remove("OUTRIDER_TOKEN")
        .env_remove("OUTRIDER_SERVER")
        .envs(envs.iter().copied())
        .output()
        .expect("outriderctl runs");
    Run {
        code: out.status.code().expect("outriderctl exited by itself"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `run` printed `text` (on stdout), or the test fails showing what it printed.
fn has(run: &Run, text: &str) {
    assert!(run.stdout.contains(text), "no {text:?} in:\n{}", run.stdout);
}

fn install(args: &[&str]) -> String {
    let mut all = vec!["install"];
    all.extend_from_slice(args);
    let run = outriderctl(&all, &[]);
    assert_eq!(run.code, 0, "install {args:?}: {}", run.stderr);
    run.stdout
}

/// Every document of a multi-document YAML text, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML parses"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn key(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn by_key(objects: Vec<Value>) -> BTreeMap<String, Value> {
    objects.into_iter().map(|o| (key(&o), o)).collect()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl kustomize deploy/kubernetes`, or (without kubectl, outside CI) the
/// kustomization's resources read in order, each checked to exist and parse.
fn kustomize_base() -> Vec<Value> {
    let base = repo().join("deploy/kubernetes");
    match Command::new("kubectl").arg("kustomize").arg(&base).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "kubectl kustomize: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            documents(&String::from_utf8_lossy(&out.stdout))
        }
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have kubectl (.ci/run installs it): {e}"
            );
            eprintln!("no kubectl ({e}): reading the kustomization's resources myself");
            let k = documents(&std::fs::read_to_string(base.join("kustomization.yaml")).unwrap());
            k[0]["resources"]
                .as_array()
                .expect("a resources list")
                .iter()
                .flat_map(|r| {
                    let path = base.join(r.as_str().unwrap());
                    documents(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
                })
                .collect()
        }
    }
}

/// `kubernetes-validate` beside the test virtualenv's Python, or `None` (outside CI) to skip.
fn kubernetes_validate() -> Option<PathBuf> {
    let found = pyclient("kubernetes-validate");
    if found.is_none() {
        eprintln!("skipped: no kubernetes-validate (run the virtualenv step of .ci/run)");
    }
    found
}

/// Validates `yaml` strictly against each schema version; the report on failure.
fn validate(tool: &Path, dir: &Path, name: &str, yaml: &str) -> Result<(), String> {
    let file = dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    for version in ["1.30.0", "1.33.0"] {
        let out = Command::new(tool)
            .args(["--strict", "--quiet", "-k", version])
            .arg(&file)
            .output()
            .expect("kubernetes-validate runs");
        if !out.status.success() {
            return Err(format!(
                "{name} against {version}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

#[test]
fn what_install_prints_and_the_kustomize_base_pass_the_kubernetes_schemas() {
    let Some(tool) = kubernetes_validate() else { return };
    let dir = tempfile::tempdir().unwrap();
    let renders = [
        ("default.yaml", install(&[])),
        ("pvc.yaml", install(&["--replicas", "1", "--embedded-store", "pvc"])),
        (
            "empty-dir.yaml",
            install(&[
                "--replicas",
                "1",
                "--embedded-store",
                "empty-dir",
                "--namespace",
                "mesh",
            ]),
        ),
    ];
    for (name, yaml) in &renders {
        validate(&tool, dir.path(), name, yaml).unwrap();
    }
    let base: String = kustomize_base()
        .iter()
        .map(|o| format!("---\n{}", serde_yaml_ng::to_string(o).unwrap()))
        .collect();
    validate(&tool, dir.path(), "kustomize.yaml", &base).unwrap();
    let example = std::fs::read_to_string(repo().join("deploy/kubernetes/examples/web.yaml")).unwrap();
    validate(&tool, dir.path(), "example.yaml", &example).unwrap();

    // The validator can fail: a misspelt field in the Deployment is caught.
    let broken = renders[0].1.replace("readinessProbe:", "readynessProbe:");
    let err = validate(&tool, dir.path(), "broken.yaml", &broken).unwrap_err();
    assert!(err.contains("readynessProbe"), "{err}");
}

#[test]
fn the_kustomize_base_is_what_install_renders_without_its_secrets() {
    let mut rendered = by_key(documents(&install(&[])));
    let secrets: Vec<String> = rendered.keys().filter(|k| k.starts_with("Secret/")).cloned().collect();
    assert_eq!(
        secrets,
        [
            "Secret/outrider-api",
            "Secret/outrider-ca",
            "Secret/outrider-registration"
        ]
    );
    for s in &secrets {
        rendered.remove(s);
    }
    let hooks = rendered
        .get_mut("MutatingWebhookConfiguration/outrider-sidecar-injector")
        .expect("a webhook configuration");
    for h in hooks["webhooks"].as_array_mut().unwrap() {
        assert!(h["clientConfig"]["caBundle"].is_string(), "install renders the bundle");
        h["clientConfig"].as_object_mut().unwrap().remove("caBundle");
    }
    let base = by_key(kustomize_base());
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        rendered.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (k, want) in &rendered {
        assert_eq!(
            &base[k],
            want,
            "{k} differs: deploy/kubernetes must be `outriderctl install` with the defaults; it renders\n{}",
            serde_yaml_ng::to_string(want).unwrap()
        );
    }
}

#[tokio::test]
async fn the_root_and_tokens_install_makes_start_a_control_plane() {
    let objects = by_key(documents(&install(&[
        "--namespace",
        "mesh",
        "--trust-domain",
        "example.org",
    ])));
    let ca = &objects["Secret/outrider-ca"]["stringData"];
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    std::fs::write(&cert, ca["ca.crt"].as_str().unwrap()).unwrap();
    std::fs::write(&key, ca["ca.key"].as_str().unwrap()).unwrap();
    let token = objects["Secret/outrider-api"]["stringData"]["token"].as_str().unwrap();
    assert_eq!(token.len(), 64, "a generated token: {token}");
    assert_ne!(
        token, objects["Secret/outrider-registration"]["stringData"]["token"],
        "each token is its own"
    );

    let env = vec![
        ("OUTRIDER_CA_CERT".to_owned(), cert.display().to_string()),
        ("OUTRIDER_CA_KEY".to_owned(), key.display().to_string()),
        ("OUTRIDER_TRUST_DOMAIN".to_owned(), "example.org".to_owned()),
        ("OUTRIDER_API_TOKEN".to_owned(), token.to_owned()),
    ];
    let cp = ControlPlane::start_with(&dir.path().join("data"), None, env).await;
    let run = outriderctl(&["--server", &cp.base(), "--token", token, "get", "services"], &[]);
    assert_eq!(run.code, 0, "the API token works: {}", run.stderr);

    // The trust bundle is the root whose base64 the webhook configuration carries.
    let bundle = Command::new(bin_path("outrider-control-plane"))
        .args(["--data-dir"])
        .arg(dir.path().join("data"))
        .args(["ca", "bundle"])
        .env("OUTRIDER_CA_CERT", &cert)
        .env("OUTRIDER_CA_KEY", &key)
        .output()
        .unwrap();
    assert!(bundle.status.success(), "{}", String::from_utf8_lossy(&bundle.stderr));
    let hooks = &objects["MutatingWebhookConfiguration/outrider-sidecar-injector"]["webhooks"];
    let ca_bundle = hooks[0]["clientConfig"]["caBundle"].as_str().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&bundle.stdout).trim(),
        String::from_utf8(BASE64_STANDARD.decode(ca_bundle).unwrap())
            .unwrap()
            .trim()
    );
    assert_eq!(hooks[0]["clientConfig"]["service"]["namespace"], "mesh");
}

#[test]
fn install_prints_the_same_text_again_given_the_same_secrets() {
    let first = by_key(documents(&install(&[])));
    let ca = &first["Secret/outrider-ca"]["stringData"];
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    std::fs::write(&cert, ca["ca.crt"].as_str().unwrap()).unwrap();
    std::fs::write(&key, ca["ca.key"].as_str().unwrap()).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let args = [
        "--ca-cert",
        &cert,
        "--ca-key",
        &key,
        "--api-token",
        "api",
        "--registration-token",
        "reg",
    ];
    let again = install(&args);
    assert_eq!(again, install(&args), "nothing but the secrets varies");
    let again = by_key(documents(&again));
    assert_eq!(
        again["Secret/outrider-ca"], first["Secret/outrider-ca"],
        "the given root is kept"
    );
    assert_eq!(again["Secret/outrider-api"]["stringData"]["token"], "api");
    assert_eq!(
        again["MutatingWebhookConfiguration/outrider-sidecar-injector"],
        first["MutatingWebhookConfiguration/outrider-sidecar-injector"],
        "its bundle with it"
    );
}

#[test]
fn install_refuses_settings_that_cannot_work_in_one_line() {
    for (args, expect) in [
        (&["install", "--embedded-store", "pvc"][..], "--replicas 2"),
        (&["install", "--namespace", "Not_A_Label"][..], "--namespace"),
        (&["install", "--registration-token", " "][..], "cannot be empty"),
        (&["install", "--trust-domain", "bad domain"][..], "--trust-domain"),
    ] {
        let run = outriderctl(args, &[]);
        assert_ne!(run.code, 0, "{args:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(expect), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?} printed nothing: {}", run.stdout);
    }
}

/// A `kubectl` that answers each command line starting with a prefix with canned
/// output and exit code (stdout on 0, stderr otherwise); anything else fails loudly.
struct FakeKubectl {
    dir: tempfile::TempDir,
}

impl FakeKubectl {
    fn new(answers: &[(&str, i32, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut script = String::from("#!/bin/sh\necho \"$*\" >> \"$(dirname \"$0\")/calls\"\ncase \"$*\" in\n");
        for (i, (prefix, code, text)) in answers.iter().enumerate() {
            let file = dir.path().join(format!("answer{i}"));
            std::fs::write(&file, text).unwrap();
            let to = if *code == 0 { "" } else { " >&2" };
            script.push_str(&format!(
                "  \"{prefix}\"*) cat '{}'{to}; exit {code};;\n",
                file.display()
            ));
        }
        script.push_str("  *) echo \"fake kubectl: unexpected: $*\" >&2; exit 99;;\nesac\n");
        let path = dir.path().join("kubectl");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeKubectl { dir }
    }

    /// PATH with this kubectl first, so `check` finds it by its default name.
    fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("calls")).unwrap_or_default()
    }
}

fn versions(server: &str) -> Vec<(&'static str, i32, String)> {
    vec![
        (
            "version --client -o json",
            0,
            json!({"clientVersion": {"gitVersion": "v1.32.4"}}).to_string(),
        ),
        (
            "version -o json",
            0,
            json!({"clientVersion": {"gitVersion": "v1.32.4"},
                   "serverVersion": {"major": "1", "minor": server, "gitVersion": format!("v1.{server}.2")}})
            .to_string(),
        ),
    ]
}

#[test]
fn check_pre_passes_on_a_cluster_ready_for_install() {
    let mut answers = versions("30");
    answers.push(("auth can-i create", 0, "yes\n".into()));
    answers.push((
        "get namespace outrider",
        1,
        "Error from server (NotFound): namespaces \"outrider\" not found\n".into(),
    ));
    let kubectl = FakeKubectl::new(&answers);
    let run = outriderctl(&["check", "--pre"], &[("PATH", &kubectl.path_env())]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    has(&run, "✓ Kubernetes version: v1.30.2 (native sidecars: beta");
    has(&run, "✓ can create mutatingwebhookconfigurations");
    has(&run, "✓ namespace outrider: does not exist yet");
    assert!(!run.stdout.contains('✗'), "{}", run.stdout);
    // Namespaced rights are asked in the namespace install creates.
    assert!(
        kubectl
            .calls()
            .contains("auth can-i create secrets --namespace outrider"),
        "{}",
        kubectl.calls()
    );
}

#[test]
fn check_pre_names_each_problem_with_a_hint_and_fails() {
    let mut answers = versions("28");
    answers.push(("auth can-i create clusterroles", 1, "no\n".into()));
    answers.push(("auth can-i create", 0, "yes\n".into()));
    answers.push(("get namespace outrider", 0, "namespace/outrider\n".into()));
    let kubectl = FakeKubectl::new(&answers);
    let path = kubectl.path_env();
    let run = outriderctl(&["check", "--pre"], &[("PATH", &path)]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let version = run.stdout.lines().find(|l| l.contains("Kubernetes version")).unwrap();
    assert!(
        version.starts_with('✗') && version.contains("hint: upgrade"),
        "{version}"
    );
    // A cluster too old for native sidecars stops there: nothing else is asked.
    assert!(!kubectl.calls().contains("auth can-i"), "{}", kubectl.calls());

    let mut answers = versions("33");
    answers.extend([
        ("auth can-i create clusterroles", 1, "no\n".into()),
        ("auth can-i create", 0, "yes\n".into()),
        ("get namespace outrider", 0, "namespace/outrider\n".into()),
    ]);
    let kubectl = FakeKubectl::new(&answers);
    let run = outriderctl(&["check", "--pre"], &[("PATH", &kubectl.path_env())]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    has(&run, "✓ Kubernetes version: v1.33.2 (native sidecars: GA)");
    has(&run, "✗ can create clusterroles.rbac.authorization.k8s.io: no (hint:");
    has(&run, "✗ namespace outrider: already exists (hint:");
    assert!(run.stderr.contains("2 problems"), "{}", run.stderr);

    // No kubectl at all: one line saying so, and the flag to point at one.
    let run = outriderctl(&["check", "--pre", "--kubectl", "/nonexistent/kubectl"], &[]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.starts_with("✗ kubectl: cannot run /nonexistent/kubectl"),
        "{}",
        run.stdout
    );
    has(&run, "--kubectl");
}

fn available_deployment() -> String {
    json!({"spec": {"replicas": 2}, "status": {"availableReplicas": 2,
        "conditions": [{"type": "Available", "status": "True"}]}})
    .to_string()
}

fn webhook_configuration(ns: &str) -> String {
    let client = json!({"service": {"name": "outrider-webhook", "namespace": ns}, "caBundle": "Zm9v"});
    json!({"webhooks": [{"name": "namespace.inject.outrider.io", "clientConfig": client},
                        {"name": "object.inject.outrider.io", "clientConfig": client}]})
    .to_string()
}

fn pod(ns: &str, name: &str, injected: bool, phase: &str) -> Value {
    let init = if injected {
        json!([{"name": "outrider-init"}, {"name": "outrider-sidecar", "restartPolicy": "Always"}])
    } else {
        json!([])
    };
    json!({"metadata": {"namespace": ns, "name": name},
           "spec": {"initContainers": init, "containers": [{"name": "app"}]},
           "status": {"phase": phase}})
}

fn installation(pods: &[Value]) -> Vec<(&'static str, i32, String)> {
    let mut answers = versions("31");
    answers.extend([
        (
            "get deployment outrider-control-plane --namespace outrider",
            0,
            available_deployment(),
        ),
        (
            "get mutatingwebhookconfiguration outrider-sidecar-injector",
            0,
            webhook_configuration("outrider"),
        ),
        ("get pods --all-namespaces", 0, json!({"items": pods}).to_string()),
    ]);
    answers
}

#[tokio::test]
async fn check_kubernetes_finds_injected_pods_whose_sidecar_never_registered() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let _sc = Sidecar::start_with(
        &cp.grpc(),
        "web",
        "web-1",
        "v1",
        app_port,
        &dir.path().join("sc"),
        &[("OUTRIDER_NAMESPACE", "shop")],
    )
    .await;
    wait_until(SOON, || async {
        cp.get_json("/sidecars").await.as_array().is_some_and(|list| {
            list.iter()
                .any(|s| s["id"] == "shop/web-1" && s["status"] == "healthy" && s["inSync"] == true)
        })
    })
    .await
    .expect("the sidecar is healthy and in sync");

    // web-1 runs in shop and registered; web-2 is injected and running but never
    // registered; the others are not injected or not running, and do not count.
    let pods = [
        pod("shop", "web-1", true, "Running"),
        pod("shop", "web-2", true, "Running"),
        pod("shop", "web-3", true, "Pending"),
        pod("default", "web-1", false, "Running"),
    ];
    let kubectl = FakeKubectl::new(&installation(&pods));
    let server = cp.base();
    let run = outriderctl(
        &["--server", &server, "check", "--kubernetes"],
        &[("PATH", &kubectl.path_env())],
    );
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    has(&run, "✓ control plane Deployment: 2/2 replicas available");
    has(&run, "✓ injection webhook");
    has(&run, "✓ control plane:");
    let line = run.stdout.lines().find(|l| l.contains("injected sidecars")).unwrap();
    assert!(
        line.starts_with('✗') && line.contains("1 of 2 running injected Pods") && line.contains("shop/web-2"),
        "{line}"
    );
    assert!(!line.contains("web-1"), "{line}");

    let kubectl = FakeKubectl::new(&installation(&pods[..1]));
    let run = outriderctl(
        &["--server", &server, "check", "--kubernetes", "-o", "json"],
        &[("PATH", &kubectl.path_env())],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["healthy"], true);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"injected sidecars") && names.contains(&"store"),
        "{names:?}"
    );
}

#[test]
fn check_kubernetes_without_a_control_plane_says_how_to_reach_it() {
    let kubectl = FakeKubectl::new(&installation(&[]));
    let server = format!("http://127.0.0.1:{}", free_port());
    let run = outriderctl(
        &["--server", &server, "check", "--kubernetes"],
        &[("PATH", &kubectl.path_env())],
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    let line = run.stdout.lines().last().unwrap();
    assert!(
        line.starts_with("✗ control plane: cannot reach")
            && line.contains("port-forward service/outrider-control-plane"),
        "{line}"
    );

    // An installation without its Deployment, or a webhook without caBundle, fails.
    let mut answers = versions("31");
    answers.extend([
        (
            "get deployment outrider-control-plane",
            1,
            "Error from server (NotFound): deployments.apps \"outrider-control-plane\" not found\n".into(),
        ),
        (
            "get mutatingwebhookconfiguration",
            0,
            json!({"webhooks": [{"name": "a", "clientConfig": {"service": {"namespace": "outrider"}}}]}).to_string(),
        ),
    ]);
    let kubectl = FakeKubectl::new(&answers);
    let run = outriderctl(
        &["--server", &server, "check", "--kubernetes"],
        &[("PATH", &kubectl.path_env())],
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    has(&run, "✗ control plane Deployment: Error from server (NotFound)");
    has(&run, "✗ injection webhook: a has no caBundle");
}
