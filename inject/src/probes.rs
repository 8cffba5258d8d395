//! Kubelet's HTTP and TCP probes of the app, moved to the sidecar's health port.
//!
//! Captured like any inbound traffic, a probe from the kubelet reaches the app through
//! the sidecar's inbound, in plaintext: under `mtls: strict` an HTTP probe is refused
//! and the Pod never gets ready, and a TCP probe is answered by the sidecar's listener
//! whether the app listens or not. So each app container's `httpGet` or `tcpSocket`
//! probe is rewritten to `GET /app-health/<container>/<livez|readyz|startupz>` on port
//! 15020, and the sidecar (given the originals in `OUTRIDER_APP_PROBES`) makes the
//! probe itself, from inside the Pod, and answers with the app's status. Other probes
//! (exec, grpc) and probes of another host stay as they are.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// `outrider.io/rewrite-probes: "false"` keeps a Pod's probes as they are.
pub const REWRITE_PROBES: &str = "outrider.io/rewrite-probes";

/// A probe field of a container and the name of its rewritten path.
const KINDS: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// What the rewrite changes in a Pod.
#[derive(Debug, Default)]
pub struct Rewrites {
    /// (JSON Pointer of a probe, the whole probe as rewritten: its handler replaced,
    /// every other field kept; a whole object, so the patch stays `add`-only).
    pub ops: Vec<(String, Value)>,
    /// `OUTRIDER_APP_PROBES`: `<container>/<kind>` → the original probe.
    pub originals: BTreeMap<String, Value>,
}

impl Rewrites {
    /// `OUTRIDER_APP_PROBES`, when any probe moved.
    pub fn env_value(&self) -> Option<String> {
        (!self.originals.is_empty()).then(|| json!(self.originals).to_string())
    }
}

/// The rewrites of `containers`' probes, unless the Pod's annotations say not to.
pub fn rewrites(containers: &[Value], annotations: Option<&Map<String, Value>>, health_port: u16) -> Rewrites {
    let mut out = Rewrites::default();
    let off = annotations
        .and_then(|a| a.get(REWRITE_PROBES))
        .and_then(Value::as_str)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
    if off {
        return out;
    }
    for (i, c) in containers.iter().enumerate() {
        let Some(name) = c.get("name").and_then(Value::as_str) else {
            continue;
        };
        for (field, kind) in KINDS {
            let Some(probe) = c.get(field).and_then(Value::as_object) else {
                continue;
            };
            let Some((handler, original)) = original(probe, c) else {
                continue;
            };
            let key = format!("{name}/{kind}");
            let mut original = original;
            original["timeoutSeconds"] = json!(probe.get("timeoutSeconds").and_then(Value::as_u64).unwrap_or(1));
            out.originals.insert(key.clone(), original);
            let mut moved = probe.clone();
            moved.remove(handler);
            moved.insert(
                "httpGet".into(),
                json!({"path": format!("/app-health/{key}"), "port": health_port, "scheme": "HTTP"}),
            );
            out.ops
                .push((format!("/spec/containers/{i}/{field}"), Value::Object(moved)));
        }
    }
    out
}

/// The probe's handler (`httpGet` or `tcpSocket`) and what the sidecar needs to make
/// it; `None` for a probe that stays (another kind, another host, a port not found).
fn original(probe: &Map<String, Value>, container: &Value) -> Option<(&'static str, Value)> {
    // A probe of another host does not come through this Pod's capture.
    let local = |h: &Map<String, Value>| h.get("host").and_then(Value::as_str).is_none_or(str::is_empty);
    if let Some(get) = probe.get("httpGet").and_then(Value::as_object) {
        if !local(get) {
            return None;
        }
        let port = get.get("port").and_then(|p| resolve_port(p, container))?;
        let scheme = match get.get("scheme").and_then(Value::as_str) {
            None => "HTTP",
            Some(s) if s.eq_ignore_ascii_case("http") => "HTTP",
            Some(s) if s.eq_ignore_ascii_case("https") => "HTTPS",
            Some(_) => return None,
        };
        let path = get.get("path").and_then(Value::as_str).unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        let headers = get.get("httpHeaders").cloned().unwrap_or_else(|| json!([]));
        return Some((
            "httpGet",
            json!({"port": port, "path": path, "scheme": scheme, "httpHeaders": headers}),
        ));
    }
    let tcp = probe.get("tcpSocket").and_then(Value::as_object)?;
    if !local(tcp) {
        return None;
    }
    let port = tcp.get("port").and_then(|p| resolve_port(p, container))?;
    Some(("tcpSocket", json!({"port": port, "scheme": "TCP"})))
}

/// A probe's `port`: a number, or the name of one of the container's own ports (the
/// kubelet resolves names within the container).
fn resolve_port(port: &Value, container: &Value) -> Option<u16> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).ok().filter(|n| *n != 0);
    }
    let name = port.as_str()?;
    if let Ok(n) = name.parse::<u16>() {
        return (n != 0).then_some(n);
    }
    container
        .get("ports")?
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
        .get("containerPort")?
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
}
