//! Sidecar injection, shared by the control plane's admission webhook and
//! `outriderctl inject`: a Pod (or a workload's pod template) in, the injected Pod and
//! the RFC 6902 JSONPatch that makes it out. Plain Rust on `serde_json::Value`, no I/O.
//!
//! Objects stay untyped on purpose: a Pod spec round-trips through this crate with
//! every field it does not know (newer Kubernetes fields included) left as it was,
//! which typed structs would only do with a catch-all on every level; and the webhook
//! and the CLI need no Kubernetes type crate (a large, slow build tied to one
//! Kubernetes version) for the few paths read here.
//!
//! What is injected and how each value is chosen is `docs/reference.md`'s
//! "Injection": [`resolve`] picks service, subset, app port and the capture overrides
//! from labels and annotations, [`containers`] builds `outrider-init` and the native
//! sidecar `outrider-sidecar`, [`probes`] moves the app's HTTP and TCP probes to the sidecar's
//! health port, [`workload`] finds the pod template of each workload kind.

mod containers;
pub mod probes;
pub mod resolve;
pub mod workload;

use serde_json::{json, Map, Value};

/// The label (or annotation) that opts a Pod or namespace in (`enabled`) or out
/// (`disabled`).
pub const INJECT: &str = "outrider.io/inject";
/// The annotation an injected Pod carries, so injecting twice changes nothing.
pub const INJECTED: &str = "outrider.io/injected";
/// Names of what is injected.
pub const SIDECAR_CONTAINER: &str = "outrider-sidecar";
pub const INIT_CONTAINER: &str = "outrider-init";
/// Default proxy UID: the sidecar runs as it, and capture exempts its traffic.
pub const DEFAULT_PROXY_UID: u32 = 2102;
/// The image `outriderctl install` deploys (one image holds every binary).
pub const DEFAULT_IMAGE: &str = concat!("outrider:", env!("CARGO_PKG_VERSION"));
/// The control stream of the control plane `outriderctl install` renders.
/// (TLS: the control plane serves a certificate from its CA for its Service's names.)
pub const DEFAULT_CONTROL_PLANE: &str = "https://outrider-control-plane.outrider.svc:18000";
/// The Secret (in the Pod's namespace) whose key `token` is the sidecar's
/// `OUTRIDER_TOKEN`; a Pod's annotation `outrider.io/token-secret` names another.
pub const DEFAULT_TOKEN_SECRET: &str = "outrider-registration";

/// Requests and limits of a container (Kubernetes quantities).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

/// What the control plane (`--sidecar-image`, `--proxy-uid`,
/// `--injected-control-plane`) or `outriderctl inject`'s flags decide for every Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub image: String,
    pub proxy_uid: u32,
    /// `OUTRIDER_CONTROL_PLANE` of injected sidecars.
    pub control_plane: String,
    /// `OUTRIDER_CA_PEM` of injected sidecars: the certificates that verify an
    /// `https://` control plane (the control plane's own trust bundle). A Pod has no
    /// file of ours to point `OUTRIDER_CA_FILE` at, so the PEM travels in the spec.
    pub ca_pem: Option<String>,
    pub token_secret: String,
    pub sidecar_resources: Resources,
    pub init_resources: Resources,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.into(),
            proxy_uid: DEFAULT_PROXY_UID,
            control_plane: DEFAULT_CONTROL_PLANE.into(),
            ca_pem: None,
            token_secret: DEFAULT_TOKEN_SECRET.into(),
            // A proxy that is CPU-throttled adds latency to every request: no CPU limit
            // would be kinder, but namespaces with a LimitRange or quota demand one.
            sidecar_resources: Resources {
                cpu_request: "100m".into(),
                memory_request: "64Mi".into(),
                cpu_limit: "2".into(),
                memory_limit: "512Mi".into(),
            },
            init_resources: Resources {
                cpu_request: "10m".into(),
                memory_request: "16Mi".into(),
                cpu_limit: "100m".into(),
                memory_limit: "64Mi".into(),
            },
        }
    }
}

/// What is known about the Pod's namespace.
#[derive(Debug, Clone, Copy)]
pub enum Namespace<'a> {
    /// Its labels: a Pod not labelled itself is injected only when the namespace is
    /// labelled `outrider.io/inject=enabled`.
    Labels(&'a Map<String, Value>),
    /// Unknown, and already decided by whoever handed the Pod over: the webhook
    /// configuration's selectors (the API server sends only Pods to inject), or
    /// `outriderctl inject`, which injects whatever is not labelled `disabled`.
    Selected,
}

/// Why a Pod was left as it is (the webhook's warning, the CLI's note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Labelled or annotated `outrider.io/inject: disabled`.
    OptedOut,
    /// Injected before (the annotation, or a container of the sidecar's name).
    AlreadyInjected,
    /// Neither it nor its namespace is labelled `outrider.io/inject=enabled`.
    NotSelected,
    /// `hostNetwork: true`: capture would rewrite the node's own firewall.
    HostNetwork,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::OptedOut => "the pod is labelled outrider.io/inject: disabled",
            Skip::AlreadyInjected => "the pod has the outrider sidecar already",
            Skip::NotSelected => "neither the pod nor its namespace is labelled outrider.io/inject=enabled",
            Skip::HostNetwork => "the pod uses the host's network (hostNetwork: true); it is never injected",
        })
    }
}

/// A Pod that cannot be injected, and why (naming the field or annotation at fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("{0} has the wrong JSON type")]
    Shape(&'static str),
    #[error("spec.containers: a pod needs at least one container")]
    NoContainers,
    #[error("no service name: set annotation outrider.io/service, or label app.kubernetes.io/name or app")]
    NoService,
    #[error("no app port: set annotation outrider.io/app-port, or give the first container a containerPort")]
    NoAppPort,
    /// A label or annotation value that cannot be used.
    #[error("{field} {value:?}: {reason}")]
    Bad {
        field: String,
        value: String,
        reason: String,
    },
    /// `outriderctl inject`: the error of one object of a file.
    #[error("{object}: {source}")]
    In { object: String, source: Box<InjectError> },
    /// Something of the sidecar's name is there already but the pod is not marked.
    #[error("{0}")]
    Clash(String),
}

/// The result of offering a Pod for injection.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `patch` (only `add` operations, paths relative to the Pod) turns the Pod
    /// given into `pod`.
    Injected {
        pod: Value,
        patch: json_patch::Patch,
    },
    Skipped(Skip),
}

impl Outcome {
    /// The patch as JSON: an empty array when the Pod is left alone.
    pub fn patch_json(&self) -> Value {
        match self {
            Outcome::Injected { patch, .. } => serde_json::to_value(patch).unwrap_or_else(|_| json!([])),
            Outcome::Skipped(_) => json!([]),
        }
    }
}

/// Offers `pod` (a Pod, or a pod template: an object with `metadata` and `spec`) for
/// injection.
pub fn inject(pod: &Value, namespace: Namespace<'_>, settings: &Settings) -> Result<Outcome, InjectError> {
    let obj = pod.as_object().ok_or(InjectError::Shape("the pod"))?;
    let metadata = object_at(obj, "metadata", "metadata")?;
    let spec = object_at(obj, "spec", "spec")?.ok_or(InjectError::Shape("spec"))?;
    let labels = metadata
        .map(|m| object_at(m, "labels", "metadata.labels"))
        .transpose()?
        .flatten();
    let annotations = metadata
        .map(|m| object_at(m, "annotations", "metadata.annotations"))
        .transpose()?
        .flatten();
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let annotation = |k: &str| annotations.and_then(|a| a.get(k)).and_then(Value::as_str);

    if label(INJECT) == Some("disabled") || annotation(INJECT) == Some("disabled") {
        return Ok(Outcome::Skipped(Skip::OptedOut));
    }
    let containers = array_at(spec, "containers", "spec.containers")?.ok_or(InjectError::NoContainers)?;
    let init_containers = array_at(spec, "initContainers", "spec.initContainers")?;
    let named = |list: Option<&Vec<Value>>, name: &str| {
        list.is_some_and(|l| l.iter().any(|c| c.get("name").and_then(Value::as_str) == Some(name)))
    };
    if annotation(INJECTED).is_some()
        || named(Some(containers), SIDECAR_CONTAINER)
        || named(init_containers, SIDECAR_CONTAINER)
    {
        return Ok(Outcome::Skipped(Skip::AlreadyInjected));
    }
    let selected = match namespace {
        Namespace::Selected => true,
        Namespace::Labels(ns) => {
            label(INJECT) == Some("enabled") || ns.get(INJECT).and_then(Value::as_str) == Some("enabled")
        }
    };
    if !selected {
        return Ok(Outcome::Skipped(Skip::NotSelected));
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(Skip::HostNetwork));
    }
    if containers.is_empty() {
        return Err(InjectError::NoContainers);
    }
    if named(init_containers, INIT_CONTAINER) {
        return Err(InjectError::Clash(format!(
            "spec.initContainers: a container named {INIT_CONTAINER} exists but the pod is not marked {INJECTED}"
        )));
    }
    let volumes = array_at(spec, "volumes", "spec.volumes")?;
    for v in containers::VOLUMES {
        if named(volumes, v) {
            return Err(InjectError::Clash(format!(
                "spec.volumes: a volume named {v} exists already"
            )));
        }
    }

    let plan = resolve::Plan::of(labels, annotations, containers)?;
    let mut ops = Vec::new();
    // The marker first: a reader of the patch sees at once what it is.
    match (metadata, annotations) {
        (None, _) => ops.push(add("/metadata", json!({"annotations": {INJECTED: "true"}}))),
        (Some(_), None) => ops.push(add("/metadata/annotations", json!({INJECTED: "true"}))),
        (Some(_), Some(_)) => ops.push(add(
            &format!("/metadata/annotations/{}", escape(INJECTED)),
            json!("true"),
        )),
    }
    // Capture, then the proxy, before any init container of the app: those then run
    // with their traffic captured and the proxy up (a native sidecar started).
    let probes = probes::rewrites(containers, annotations, containers::HEALTH_PORT);
    let init = containers::init(&plan, settings);
    let sidecar = containers::sidecar(&plan, settings, probes.env_value());
    match init_containers {
        None => ops.push(add("/spec/initContainers", json!([init, sidecar]))),
        Some(_) => {
            ops.push(add("/spec/initContainers/0", init));
            ops.push(add("/spec/initContainers/1", sidecar));
        }
    }
    let new_volumes = containers::volumes();
    match volumes {
        None => ops.push(add("/spec/volumes", Value::Array(new_volumes))),
        Some(_) => ops.extend(new_volumes.into_iter().map(|v| add("/spec/volumes/-", v))),
    }
    // The app reads the config documents its sidecar writes.
    for (i, c) in containers.iter().enumerate() {
        let mount = containers::app_config_mount();
        match c.get("volumeMounts") {
            Some(Value::Array(_)) => ops.push(add(&format!("/spec/containers/{i}/volumeMounts/-"), mount)),
            _ => ops.push(add(&format!("/spec/containers/{i}/volumeMounts"), json!([mount]))),
        }
    }
    // Kubelet's HTTP and TCP probes go to the sidecar's health port, which makes them from
    // inside the Pod (see `probes`).
    ops.extend(probes.ops.into_iter().map(|(path, value)| add(&path, value)));

    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops)).map_err(|e| InjectError::Clash(format!("internal: {e}")))?;
    let mut injected = pod.clone();
    json_patch::patch(&mut injected, &patch).map_err(|e| InjectError::Clash(format!("cannot apply: {e}")))?;
    Ok(Outcome::Injected { pod: injected, patch })
}

fn add(path: &str, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

/// A key as one JSON Pointer segment (RFC 6901: `~` → `~0`, `/` → `~1`).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// `obj[key]` as an object; absent or null is `None`, anything else an error.
fn object_at<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<&'a Map<String, Value>>, InjectError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(InjectError::Shape(field)),
    }
}

fn array_at<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<&'a Vec<Value>>, InjectError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => Err(InjectError::Shape(field)),
    }
}

#[cfg(test)]
mod tests;
