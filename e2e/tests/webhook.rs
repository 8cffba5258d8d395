//! The injection webhook and `outriderctl inject` with the real binaries: a control
//! plane with `--webhook-addr` answering AdmissionReviews of Pods from well-known
//! charts (`e2e/fixtures/k8s/`) over TLS verified with the CA bundle, the patches
//! applied as the API server applies them, and the results checked against the
//! Kubernetes 1.30 and 1.33 schemas (`kubernetes-validate`, in the test virtualenv).

mod common;
use base64::Engine as _;
use common::*;
use outrider_testkit::{free_port, wait_until};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const IMAGE: &str = "registry.example/outrider:e2e";
const HOST: &str = "outrider-webhook.outrider.svc";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/k8s").join(name)
}

fn review(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// A control plane serving the webhook on a port of its own.
struct Webhook {
    cp: ControlPlane,
    addr: SocketAddr,
    client: reqwest::Client,
}

impl Webhook {
    async fn start(dir: &Path) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cp = ControlPlane::start_with(
            &dir.join("cp"),
            None,
            vec![
                ("OUTRIDER_WEBHOOK_ADDR".into(), addr.to_string()),
                ("OUTRIDER_SIDECAR_IMAGE".into(), IMAGE.into()),
            ],
        )
        .await;
        // While it runs, on its store: what `install` puts in the webhook configuration.
        let pem = ca_bundle(&dir.join("cp"), &dir.join("bundle.pem"));
        let client = tls_client(pem.as_bytes(), Some((HOST, addr)));
        let wh = Self { cp, addr, client };
        let up = wait_until(SOON, || async {
            wh.client
                .get(wh.url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        if up.is_err() {
            wh.cp.proc.print_log_tail(40);
            panic!("the webhook never answered /healthz over TLS for {HOST}");
        }
        wh
    }

    fn url(&self, path: &str) -> String {
        format!("https://{HOST}:{}{path}", self.addr.port())
    }

    /// POSTs `body`; returns (status, answer).
    async fn post(&self, body: String) -> (u16, Value) {
        let r = self
            .client
            .post(self.url("/inject"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// The AdmissionResponse to `review`, checked to allow and echo the uid.
    async fn respond(&self, review: &Value) -> Value {
        let (status, answer) = self.post(review.to_string()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = answer["response"].clone();
        assert_eq!(response["uid"], review["request"]["uid"]);
        assert_eq!(response["allowed"], true, "the mesh never blocks a Pod: {response}");
        response
    }
}

/// The patch of `response`, decoded; `None` when there is none.
fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    let b64 = response.get("patch")?.as_str().unwrap();
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} {name} in {pod}"))
}

/// The sidecar's env `name`: its literal value, or its fieldRef path.
fn env(pod: &Value, name: &str) -> String {
    let sidecar = container(pod, "initContainers", "outrider-sidecar");
    let e = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap();
    e.get("value")
        .or_else(|| e.pointer("/valueFrom/fieldRef/fieldPath"))
        .and_then(Value::as_str)
        .unwrap()
        .to_owned()
}

/// `kubernetes-validate --strict` for Kubernetes 1.30 and 1.33 on `files`; `None`
/// when the test virtualenv is absent (outside CI).
fn validate(files: &[PathBuf]) -> Option<()> {
    let python = test_python()?;
    for version in ["1.30", "1.33"] {
        let out = std::process::Command::new(&python)
            .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k", version])
            .args(files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes {version} schema: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(())
}

#[tokio::test]
async fn pods_of_well_known_charts_are_injected_by_a_patch_that_validates_and_injecting_again_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wh = Webhook::start(dir.path()).await;
    // (fixture, OUTRIDER_SERVICE, OUTRIDER_VERSION, OUTRIDER_APP_PORT, extra init flags)
    let cases = [
        (
            "nginx-deployment-pod.json",
            "metadata.labels['app.kubernetes.io/name']",
            "v1",
            "8080",
            vec![],
        ),
        (
            "redis-statefulset-pod.json",
            "metadata.labels['app.kubernetes.io/name']",
            "v1",
            "6379",
            vec!["--exclude-outbound-ports", "26379"],
        ),
        (
            "postgres-bitnami-pod.json",
            "metadata.labels['app.kubernetes.io/name']",
            "metadata.annotations['outrider.io/version']",
            "5432",
            vec!["--exclude-outbound-cidrs", "169.254.169.254/32"],
        ),
        (
            "named-ports-probes-pod.json",
            "metadata.labels['app']",
            "metadata.labels['version']",
            "8080",
            vec!["--inbound-ports", "8080"],
        ),
    ];
    let mut files = Vec::new();
    for (name, service, version, app_port, flags) in cases {
        let mut review = review(name);
        let pod = review["request"]["object"].clone();
        let response = wh.respond(&review).await;
        let patch = patch_of(&response).unwrap_or_else(|| panic!("{name}: no patch: {response}"));
        let mut injected = pod.clone();
        json_patch::patch(&mut injected, &patch).unwrap_or_else(|e| panic!("{name}: {e}"));

        // The capture container and the native sidecar come first, then the chart's own.
        let names: Vec<&str> = injected["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        let theirs: Vec<&str> = pod["spec"]["initContainers"]
            .as_array()
            .map(|l| l.iter().map(|c| c["name"].as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(names[..2], ["outrider-init", "outrider-sidecar"], "{name}");
        assert_eq!(names[2..], theirs[..], "{name}");
        let sidecar = container(&injected, "initContainers", "outrider-sidecar");
        assert_eq!(sidecar["image"], IMAGE);
        assert_eq!(sidecar["restartPolicy"], "Always");
        assert_eq!(env(&injected, "OUTRIDER_SERVICE"), service, "{name}");
        assert_eq!(env(&injected, "OUTRIDER_VERSION"), version, "{name}");
        assert_eq!(env(&injected, "OUTRIDER_APP_PORT"), app_port, "{name}");
        let init = container(&injected, "initContainers", "outrider-init");
        let mut command = vec!["outrider-sidecar", "init", "--proxy-uid", "2102"];
        command.extend(flags);
        assert_eq!(init["command"], json!(command), "{name}");
        // The chart's containers keep everything and gain the config mount; their
        // HTTP probes move to the sidecar's health port, which is given the originals.
        let sidecar_env = container(&injected, "initContainers", "outrider-sidecar")["env"].clone();
        let app_probes: Value = sidecar_env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "OUTRIDER_APP_PROBES")
            .map(|e| serde_json::from_str(e["value"].as_str().unwrap()).unwrap())
            .unwrap_or_else(|| json!({}));
        let mut moved = 0;
        for (before, after) in pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .zip(injected["spec"]["containers"].as_array().unwrap())
        {
            let mut after = after.clone();
            for (field, kind) in [
                ("livenessProbe", "livez"),
                ("readinessProbe", "readyz"),
                ("startupProbe", "startupz"),
            ] {
                let Some(probe) = before.get(field) else { continue };
                let key = format!("{}/{kind}", before["name"].as_str().unwrap());
                let original = &app_probes[&key];
                if let Some(get) = probe.get("httpGet") {
                    assert_eq!(original["path"], get["path"], "{name} {key}");
                    assert_eq!(
                        original["httpHeaders"],
                        get.get("httpHeaders").cloned().unwrap_or_else(|| json!([])),
                        "{name} {key}"
                    );
                } else if probe.get("tcpSocket").is_some() {
                    assert_eq!(original["scheme"], "TCP", "{name} {key}");
                } else {
                    assert_eq!(&after[field], probe, "{name} {field}: an exec probe stays");
                    continue;
                }
                assert_eq!(
                    after[field]["httpGet"],
                    json!({"path": format!("/app-health/{key}"), "port": 15020, "scheme": "HTTP"}),
                    "{name} {field}"
                );
                assert!(
                    original["port"].is_u64(),
                    "{name} {key}: named ports are resolved: {original}"
                );
                assert_eq!(
                    original["timeoutSeconds"],
                    probe.get("timeoutSeconds").cloned().unwrap_or_else(|| json!(1)),
                    "{name} {key}"
                );
                after[field] = probe.clone();
                moved += 1;
            }
            let mounts = after["volumeMounts"].as_array_mut().unwrap();
            let config = mounts.pop().unwrap();
            assert_eq!(config["name"], "outrider-config");
            if mounts.is_empty() && before.get("volumeMounts").is_none() {
                after.as_object_mut().unwrap().remove("volumeMounts");
            }
            assert_eq!(&after, before, "{name}");
        }
        assert_eq!(app_probes.as_object().unwrap().len(), moved, "{name}: {app_probes}");
        if name == "named-ports-probes-pod.json" {
            assert_eq!(moved, 3);
            assert_eq!(app_probes["checkout/readyz"]["port"], 8080, "the named port http");
        }
        if name == "nginx-deployment-pod.json" {
            assert_eq!(moved, 2, "its two tcpSocket probes: {app_probes}");
        }

        // The patched Pod again (a reinvocation, or a Pod injected offline): no patch.
        review["request"]["object"] = injected.clone();
        let again = wh.respond(&review).await;
        assert!(patch_of(&again).is_none(), "{name}: {again}");

        let file = dir.path().join(name);
        std::fs::write(&file, serde_json::to_string_pretty(&injected).unwrap()).unwrap();
        files.push(file);
    }
    validate(&files);
}

#[tokio::test]
async fn an_opted_out_pod_and_a_non_pod_are_allowed_unchanged_and_a_malformed_review_is_a_400_problem() {
    let dir = tempfile::tempdir().unwrap();
    let wh = Webhook::start(dir.path()).await;

    let mut opted_out = review("nginx-deployment-pod.json");
    opted_out["request"]["object"]["metadata"]["labels"]["outrider.io/inject"] = json!("disabled");
    let response = wh.respond(&opted_out).await;
    assert!(patch_of(&response).is_none(), "{response}");

    let mut deployment = review("nginx-deployment-pod.json");
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let response = wh.respond(&deployment).await;
    assert!(patch_of(&response).is_none(), "{response}");
    assert!(
        response["warnings"][0].as_str().unwrap().contains("only Pods"),
        "{response}"
    );

    // A Pod the webhook cannot inject is still created: allowed, with the reason.
    let mut nameless = review("named-ports-probes-pod.json");
    nameless["request"]["object"]["metadata"]["labels"] = json!({});
    let response = wh.respond(&nameless).await;
    assert!(patch_of(&response).is_none(), "{response}");
    assert!(
        response["warnings"][0].as_str().unwrap().contains("no service name"),
        "{response}"
    );

    for body in [
        "{}",
        "not json",
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    ] {
        let (status, problem) = wh.post(body.into()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(problem["status"], 400, "{problem}");
    }
    let (status, _) = wh.post(" ".repeat(5 * 1024 * 1024)).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn outriderctl_inject_injects_every_workload_kind_offline_and_its_output_validates() {
    let dir = tempfile::tempdir().unwrap();
    let file = fixture("workloads.yaml");
    let path = file.display().to_string();
    // No control plane anywhere: --server points at nothing.
    let (ok, yaml, stderr) = outriderctl(&["--server", "http://127.0.0.1:9", "inject", "-f", &path], None);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("Pod/debug: not injected"), "{stderr}");
    let (ok, from_stdin, _) = outriderctl(&["inject", "-f", "-"], Some(&std::fs::read(&file).unwrap()));
    assert!(ok);
    assert_eq!(from_stdin, yaml, "stdin and a file give the same output");

    let (ok, json, stderr) = outriderctl(&["inject", "-f", &path, "-o", "json"], None);
    assert!(ok, "{stderr}");
    let list: Value = serde_json::from_str(&json).unwrap();
    let items = list["items"].as_array().unwrap();
    let template = |kind: &str| {
        let item = items.iter().find(|i| i["kind"] == kind).unwrap();
        let pointer = if kind == "CronJob" {
            "/spec/jobTemplate/spec/template"
        } else {
            "/spec/template"
        };
        item.pointer(pointer).unwrap().clone()
    };
    for kind in ["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"] {
        let t = template(kind);
        assert_eq!(
            container(&t, "initContainers", "outrider-sidecar")["restartPolicy"],
            "Always",
            "{kind}"
        );
        assert_eq!(
            env(&t, "OUTRIDER_CONTROL_PLANE"),
            "https://outrider-control-plane.outrider.svc:18000",
            "{kind}: the default install renders"
        );
    }
    assert_eq!(env(&template("Job"), "OUTRIDER_APP_PORT"), "9000");
    for kind in ["Namespace", "Service", "ConfigMap", "Pod"] {
        let item = items.iter().find(|i| i["kind"] == kind).unwrap();
        assert!(item.pointer("/spec/initContainers").is_none(), "{kind} passes through");
    }

    // Injecting the output again changes nothing.
    let (ok, twice, _) = outriderctl(&["inject", "-f", "-"], Some(yaml.as_bytes()));
    assert!(ok);
    assert_eq!(twice, yaml);

    let out = dir.path().join("injected.yaml");
    std::fs::write(&out, &yaml).unwrap();
    validate(&[out]);
}

/// As `outriderctl install` runs it: both ports over TLS from the control plane's CA
/// (`--tls-san`) and an `https://` injected control plane. The injected sidecar gets
/// the bundle inline (`OUTRIDER_CA_PEM`), and a real sidecar given only that variable
/// connects and gets its snapshot.
#[tokio::test]
async fn behind_tls_the_injected_sidecar_gets_the_bundle_inline_and_connects_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let pem = ca_bundle(&data, &dir.path().join("bundle.pem"));
    let (grpc, http, hook) = (free_port(), free_port(), free_port());
    let grpc_url = format!("https://127.0.0.1:{grpc}");
    let cp = outrider_testkit::Proc::spawn(
        outrider_testkit::bin_path("outrider-control-plane"),
        &[
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--data-dir",
            &data.display().to_string(),
        ],
        &[
            ("OUTRIDER_TLS_SAN", "127.0.0.1,localhost"),
            ("OUTRIDER_WEBHOOK_ADDR", &format!("127.0.0.1:{hook}")),
            ("OUTRIDER_INJECTED_CONTROL_PLANE", &grpc_url),
            ("OUTRIDER_SIDECAR_IMAGE", IMAGE),
        ],
    );
    let addr: SocketAddr = format!("127.0.0.1:{hook}").parse().unwrap();
    let client = tls_client(pem.as_bytes(), Some((HOST, addr)));
    let url = format!("https://{HOST}:{hook}/inject");
    let mut review = review("named-ports-probes-pod.json");
    let answered = wait_until(SOON, || async {
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(review.to_string())
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    if answered.is_err() {
        cp.print_log_tail(40);
        panic!("the webhook never answered over TLS");
    }
    let answer: Value = client
        .post(&url)
        .header("content-type", "application/json")
        .body(review.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let patch = patch_of(&answer["response"]).expect("a patch");
    json_patch::patch(&mut review["request"]["object"], &patch).unwrap();
    let injected = &review["request"]["object"];
    assert_eq!(env(injected, "OUTRIDER_CONTROL_PLANE"), grpc_url);
    let inline = env(injected, "OUTRIDER_CA_PEM");
    assert_eq!(inline.trim(), pem.trim(), "the control plane's own bundle");

    // A sidecar with nothing but that variable to trust the control plane by.
    let app_port = free_port();
    let _app = outrider_testkit::echo(app_port);
    let sidecar = Sidecar::start_with(
        &grpc_url,
        "checkout",
        "checkout-0",
        "v2",
        app_port,
        &dir.path().join("checkout"),
        &[("OUTRIDER_CA_PEM", inline.as_str())],
    )
    .await;
    let ready = outrider_testkit::wait_for_http_ok(&format!("{}/readyz", sidecar.admin()), SOON).await;
    if let Err(e) = ready {
        sidecar.proc.print_log_tail(40);
        panic!("the sidecar never got a snapshot over TLS: {e}");
    }
}
