//! The containers and volumes an injected Pod gains.

use crate::resolve::{field_ref, Plan, Source};
use crate::{Resources, Settings, INIT_CONTAINER, SIDECAR_CONTAINER};
use serde_json::{json, Value};

pub const STATE_VOLUME: &str = "outrider-state";
pub const CONFIG_VOLUME: &str = "outrider-config";
pub const SECRETS_VOLUME: &str = "outrider-secrets";
pub const VOLUMES: [&str; 3] = [STATE_VOLUME, CONFIG_VOLUME, SECRETS_VOLUME];

pub const STATE_DIR: &str = "/var/lib/outrider";
pub const CONFIG_DIR: &str = "/etc/outrider/config";
pub const SECRETS_DIR: &str = "/var/run/outrider/secrets";

pub const HEALTH_PORT: u16 = 15020;
const INBOUND_PORT: u16 = 15006;

fn resources(r: &Resources) -> Value {
    json!({
        "requests": {"cpu": r.cpu_request, "memory": r.memory_request},
        "limits": {"cpu": r.cpu_limit, "memory": r.memory_limit},
    })
}

/// `outrider-init`: writes the Pod's iptables rules and exits. iptables needs root
/// and NET_ADMIN/NET_RAW; every other capability is dropped. Its root file system
/// stays writable because iptables takes its lock file under `/run`.
pub fn init(plan: &Plan, s: &Settings) -> Value {
    let mut command = vec![
        "outrider-sidecar".to_owned(),
        "init".to_owned(),
        "--proxy-uid".to_owned(),
        s.proxy_uid.to_string(),
    ];
    command.extend(plan.init_args.iter().cloned());
    json!({
        "name": INIT_CONTAINER,
        "image": s.image,
        "command": command,
        "resources": resources(&s.init_resources),
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": false,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    })
}

/// `outrider-sidecar` as a native sidecar (an init container with
/// `restartPolicy: Always`): started before the app's containers and stopped after
/// them. Every setting through the Downward API or a literal.
/// `app_probes` is `OUTRIDER_APP_PROBES`: the app's probes it makes for the kubelet.
pub fn sidecar(plan: &Plan, s: &Settings, app_probes: Option<String>) -> Value {
    let token_secret = plan.token_secret.as_deref().unwrap_or(&s.token_secret);
    let mut env = vec![
        plan.service.env("OUTRIDER_SERVICE"),
        plan.version.env("OUTRIDER_VERSION"),
        field_ref("OUTRIDER_NAMESPACE", "metadata.namespace"),
        field_ref("OUTRIDER_POD_NAME", "metadata.name"),
        field_ref("OUTRIDER_POD_IP", "status.podIP"),
        Source::Literal(plan.app_port.to_string()).env("OUTRIDER_APP_PORT"),
        Source::Literal(s.control_plane.clone()).env("OUTRIDER_CONTROL_PLANE"),
        // Optional: without the Secret the sidecar starts and registers where the
        // control plane asks for no token (a loopback or --insecure one).
        json!({"name": "OUTRIDER_TOKEN", "valueFrom": {"secretKeyRef":
            {"name": token_secret, "key": "token", "optional": true}}}),
        Source::Literal(format!("0.0.0.0:{INBOUND_PORT}")).env("OUTRIDER_INBOUND_ADDR"),
        Source::Literal(format!("0.0.0.0:{HEALTH_PORT}")).env("OUTRIDER_HEALTH_ADDR"),
        Source::Literal(STATE_DIR.into()).env("OUTRIDER_STATE_DIR"),
        Source::Literal(CONFIG_DIR.into()).env("OUTRIDER_CONFIG_DIR"),
        Source::Literal(SECRETS_DIR.into()).env("OUTRIDER_SECRETS_DIR"),
    ];
    if let Some(pem) = &s.ca_pem {
        env.push(Source::Literal(pem.clone()).env("OUTRIDER_CA_PEM"));
    }
    if let Some(probes) = app_probes {
        env.push(Source::Literal(probes).env("OUTRIDER_APP_PROBES"));
    }
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": HEALTH_PORT},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 1,
        })
    };
    json!({
        "name": SIDECAR_CONTAINER,
        "image": s.image,
        "command": ["outrider-sidecar"],
        "restartPolicy": "Always",
        "env": env,
        "ports": [
            {"name": "outrider-in", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "outrider-health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
        ],
        // The app's containers start once this passes, so they never send a request
        // before the proxy that captures it listens.
        "startupProbe": probe("/livez", 1, 60),
        "livenessProbe": probe("/livez", 10, 3),
        "readinessProbe": probe("/readyz", 5, 3),
        "resources": resources(&s.sidecar_resources),
        "securityContext": {
            "runAsUser": s.proxy_uid,
            "runAsGroup": s.proxy_uid,
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": STATE_VOLUME, "mountPath": STATE_DIR},
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR},
            {"name": SECRETS_VOLUME, "mountPath": SECRETS_DIR},
        ],
    })
}

/// The Pod's new volumes: all scratch space that lives as long as the Pod; secrets
/// in memory only.
pub fn volumes() -> Vec<Value> {
    vec![
        json!({"name": STATE_VOLUME, "emptyDir": {}}),
        json!({"name": CONFIG_VOLUME, "emptyDir": {}}),
        json!({"name": SECRETS_VOLUME, "emptyDir": {"medium": "Memory"}}),
    ]
}

/// Each app container reads its service's config documents, read-only, where the
/// sidecar writes them.
pub fn app_config_mount() -> Value {
    json!({"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": true})
}
