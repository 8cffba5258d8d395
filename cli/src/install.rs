//! `outriderctl install`: every Kubernetes object the control plane needs, rendered
//! from [`InstallSettings`] as plain values. No cluster is contacted; the only inputs
//! besides the settings are the random source and clock of the generated Secrets and
//! the operator's `--ca-cert`/`--ca-key` files.
//!
//! `deploy/kubernetes/` holds the same objects with the defaults, minus the Secrets and
//! the webhook's `caBundle` (e2e/tests/install.rs keeps the two equal).

use crate::error::CliError;
use base64::Engine as _;
use serde_json::{json, Value};

/// The container port of the admission webhook; its Service answers on 443.
pub const WEBHOOK_PORT: u16 = 18443;
/// Cluster-scoped names (one installation per cluster).
pub const WEBHOOK_CONFIGURATION: &str = "outrider-sidecar-injector";
pub const CONTROL_PLANE: &str = "outrider-control-plane";
pub const WEBHOOK_SERVICE: &str = "outrider-webhook";
/// Secrets `install` renders, in the control plane's namespace.
pub const CA_SECRET: &str = "outrider-ca";
pub const API_SECRET: &str = "outrider-api";
pub const REGISTRATION_SECRET: &str = "outrider-registration";
/// Where the control plane finds the CA Secret's files.
const CA_DIR: &str = "/etc/outrider/ca";
const DATA_DIR: &str = "/var/lib/outrider";
/// The embedded store's PersistentVolumeClaim (`--embedded-store pvc`).
const CONTROL_PLANE_DATA: &str = "outrider-data";
/// The UID and GID the image runs as (deploy/Dockerfile), also the sidecar's proxy UID.
pub const OUTRIDER_UID: u32 = 2102;
/// Years a root made by `install` lasts, as the control plane's own first-start root.
const ROOT_YEARS: i64 = 10;

/// Where the control plane keeps its store.
#[derive(Debug, Clone, PartialEq)]
pub enum Store {
    /// PostgreSQL, its URL in this Secret under key `database-url` (the operator's).
    Postgres { secret: String },
    /// The embedded SQLite file on a PersistentVolumeClaim of this size (one replica).
    EmbeddedPvc { size: String },
    /// The embedded SQLite file on an emptyDir: lost with the Pod (trials only).
    EmbeddedEmptyDir,
}

/// A token given on the command line, or one `install` makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    Given(String),
    Generated,
}

impl Token {
    pub fn parse(s: &str) -> Result<Token, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("a token cannot be empty (pass `generated` to have one made)".into());
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("a token has no spaces or control characters".into());
        }
        Ok(if s == "generated" {
            Token::Generated
        } else {
            Token::Given(s.to_owned())
        })
    }

    fn value(&self) -> String {
        match self {
            Token::Given(t) => t.clone(),
            Token::Generated => {
                let bytes: [u8; 32] = rand::random();
                bytes.iter().map(|b| format!("{b:02x}")).collect()
            }
        }
    }
}

/// The root the control plane issues from, PEM.
#[derive(Debug, Clone)]
pub struct CaRoot {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, Clone)]
pub struct InstallSettings {
    pub namespace: String,
    pub replicas: u32,
    pub image: String,
    pub sidecar_image: String,
    pub proxy_uid: u32,
    pub trust_domain: String,
    pub store: Store,
    pub registration_token: Token,
    pub api_token: Token,
}

impl InstallSettings {
    /// The defaults `deploy/kubernetes/` is rendered with.
    pub fn defaults() -> Self {
        let image = default_image();
        InstallSettings {
            namespace: "outrider".into(),
            replicas: 2,
            sidecar_image: image.clone(),
            image,
            proxy_uid: OUTRIDER_UID,
            trust_domain: "outrider.local".into(),
            store: Store::Postgres {
                secret: "outrider-database".into(),
            },
            registration_token: Token::Generated,
            api_token: Token::Generated,
        }
    }

    /// Refuses settings that would render a broken installation, naming the flag.
    pub fn validate(&self) -> Result<(), CliError> {
        let bad = |m: String| Err(CliError::Invalid(m));
        if !is_dns_label(&self.namespace) {
            return bad(format!(
                "--namespace {:?}: a namespace is a DNS label (lower-case letters, digits and '-', at most 63)",
                self.namespace
            ));
        }
        if self.replicas == 0 {
            return bad("--replicas must be at least 1".into());
        }
        if self.replicas > 1 && !matches!(self.store, Store::Postgres { .. }) {
            return bad(format!(
                "--replicas {}: several replicas share a PostgreSQL store; the embedded store needs --replicas 1",
                self.replicas
            ));
        }
        if let Store::Postgres { secret } = &self.store {
            if !is_dns_subdomain(secret) {
                return bad(format!("--database-url-secret {secret:?} is not a Secret name"));
            }
        }
        for (flag, image) in [("--image", &self.image), ("--sidecar-image", &self.sidecar_image)] {
            if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
                return bad(format!("{flag} {image:?} is not an image reference"));
            }
        }
        Ok(())
    }
}

/// `outrider:<this CLI's version>`: the image built from deploy/Dockerfile.
pub fn default_image() -> String {
    format!("outrider:{}", env!("CARGO_PKG_VERSION"))
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A self-signed ECDSA P-256 root for the trust domain, as the control plane makes
/// on first start (the same subject), so `install` can put its bundle in the webhook
/// configuration before the control plane runs.
pub fn new_root(trust_domain: &str) -> Result<CaRoot, CliError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let err = |e: rcgen::Error| CliError::Invalid(format!("cannot make the root CA: {e}"));
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::OrganizationName, "Outrider");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Outrider root CA {trust_domain}"));
    let now = time::OffsetDateTime::now_utc();
    // A minute back, for clocks a little behind this machine's.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(365 * ROOT_YEARS);
    params.serial_number = Some(rand::random::<[u8; 16]>().map(|b| b & 0x7f).to_vec().into());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(CaRoot {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The operator's root from `--ca-cert`/`--ca-key`, checked to be PEM.
pub fn read_root(cert: &std::path::Path, key: &std::path::Path) -> Result<CaRoot, CliError> {
    let read = |p: &std::path::Path, flag: &str| {
        std::fs::read_to_string(p).map_err(|e| CliError::Invalid(format!("{flag} {}: {e}", p.display())))
    };
    let (cert_pem, key_pem) = (read(cert, "--ca-cert")?, read(key, "--ca-key")?);
    if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(CliError::Invalid(format!(
            "--ca-cert {}: no PEM CERTIFICATE block",
            cert.display()
        )));
    }
    rcgen::KeyPair::from_pem(&key_pem)
        .map_err(|e| CliError::Invalid(format!("--ca-key {}: not a PEM PKCS #8 key: {e}", key.display())))?;
    Ok(CaRoot { cert_pem, key_pem })
}

/// The objects in the order `kubectl apply` should create them. With `secrets`
/// `None`, the Secrets and the webhook's `caBundle` are left out (the kustomize base).
pub fn objects(s: &InstallSettings, secrets: Option<&CaRoot>) -> Vec<Value> {
    let ns = s.namespace.as_str();
    let mut out = vec![
        namespace(ns),
        service_account(ns),
        cluster_role(),
        cluster_role_binding(ns),
    ];
    if let Some(root) = secrets {
        out.push(secret(
            ns,
            CA_SECRET,
            json!({"ca.crt": root.cert_pem, "ca.key": root.key_pem}),
        ));
        out.push(secret(ns, API_SECRET, json!({"token": s.api_token.value()})));
        out.push(secret(
            ns,
            REGISTRATION_SECRET,
            json!({"token": s.registration_token.value()}),
        ));
    }
    if let Store::EmbeddedPvc { size } = &s.store {
        out.push(json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": meta(CONTROL_PLANE_DATA, Some(ns)),
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
        }));
    }
    out.push(deployment(s));
    out.push(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(CONTROL_PLANE, Some(ns)),
        // One at a time, whatever the replica count: a single replica can still be
        // drained (a minAvailable of 1 would block every node drain forever).
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector()}},
    }));
    out.push(service(
        ns,
        CONTROL_PLANE,
        json!([
            // Both ports serve TLS (OUTRIDER_TLS_SAN on the Deployment).
            {"name": "grpc", "port": 18000, "targetPort": "grpc", "appProtocol": "https"},
            {"name": "http", "port": 18080, "targetPort": "http", "appProtocol": "https"},
        ]),
    ));
    out.push(service(
        ns,
        WEBHOOK_SERVICE,
        json!([{"name": "https", "port": 443, "targetPort": "webhook"}]),
    ));
    out.push(webhook_configuration(ns, secrets.map(|r| r.cert_pem.as_str())));
    out
}

/// Multi-document YAML of `objects`, after a comment naming the command.
pub fn render(objects: &[Value]) -> Result<String, CliError> {
    let mut out = format!(
        "# The Outrider control plane, rendered by outriderctl install {}.\n",
        env!("CARGO_PKG_VERSION")
    );
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(o).map_err(|e| CliError::Output(e.to_string()))?);
    }
    Ok(out)
}

fn labels() -> Value {
    json!({"app.kubernetes.io/name": CONTROL_PLANE, "app.kubernetes.io/part-of": "outrider"})
}

fn selector() -> Value {
    json!({"app.kubernetes.io/name": CONTROL_PLANE})
}

fn meta(name: &str, namespace: Option<&str>) -> Value {
    let mut m = json!({"name": name, "labels": labels()});
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    m
}

fn namespace(ns: &str) -> Value {
    let mut m = meta(ns, None);
    // The control plane passes the restricted Pod Security Standard; the label makes
    // the API server hold every Pod here to it. Injection never applies here.
    m["labels"]["pod-security.kubernetes.io/enforce"] = json!("restricted");
    m["labels"]["outrider.io/inject"] = json!("disabled");
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": m})
}

fn service_account(ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(CONTROL_PLANE, Some(ns))})
}

/// Read-only access to namespaces, nothing else: the injector reads a namespace's
/// labels (`outrider.io/inject`), which an AdmissionReview does not carry. No
/// Secrets, no Pods, no writes.
fn cluster_role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta(CONTROL_PLANE, None),
        "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}],
    })
}

fn cluster_role_binding(ns: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": meta(CONTROL_PLANE, None),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CONTROL_PLANE},
        "subjects": [{"kind": "ServiceAccount", "name": CONTROL_PLANE, "namespace": ns}],
    })
}

fn secret(ns: &str, name: &str, data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(name, Some(ns)),
        "type": "Opaque",
        "stringData": data,
    })
}

fn service(ns: &str, name: &str, ports: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, Some(ns)),
        "spec": {"type": "ClusterIP", "selector": selector(), "ports": ports},
    })
}

fn secret_env(name: &str, secret: &str, key: &str) -> Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
}

fn deployment(s: &InstallSettings) -> Value {
    let ns = s.namespace.as_str();
    let mut env = vec![
        secret_env("OUTRIDER_API_TOKEN", API_SECRET, "token"),
        secret_env("OUTRIDER_REGISTRATION_TOKEN", REGISTRATION_SECRET, "token"),
        json!({"name": "OUTRIDER_CA_CERT", "value": format!("{CA_DIR}/ca.crt")}),
        json!({"name": "OUTRIDER_CA_KEY", "value": format!("{CA_DIR}/ca.key")}),
        json!({"name": "OUTRIDER_TRUST_DOMAIN", "value": s.trust_domain}),
        json!({"name": "OUTRIDER_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        json!({"name": "OUTRIDER_LOG_FORMAT", "value": "json"}),
        // Both ports over TLS with a certificate from the CA above, for the names Pods
        // and a port-forward reach them by: join tokens and secrets never cross the
        // Pod network in the clear, and injected sidecars verify it with the bundle
        // the webhook gives them.
        json!({"name": "OUTRIDER_TLS_SAN", "value": format!(
            "{CONTROL_PLANE}.{ns}.svc,{CONTROL_PLANE}.{ns}.svc.cluster.local,{CONTROL_PLANE}.{ns},{CONTROL_PLANE},localhost,127.0.0.1"
        )}),
    ];
    let mut mounts = vec![
        json!({"name": "ca", "mountPath": CA_DIR, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    let mut volumes = vec![
        // Group-readable by the fsGroup only: the key never leaves this Pod's user.
        json!({"name": "ca", "secret": {"secretName": CA_SECRET, "defaultMode": 0o440}}),
        json!({"name": "tmp", "emptyDir": {}}),
    ];
    let data_volume = match &s.store {
        Store::Postgres { secret } => {
            env.insert(0, secret_env("OUTRIDER_DATABASE_URL", secret, "database-url"));
            None
        }
        Store::EmbeddedPvc { .. } => Some(json!({"persistentVolumeClaim": {"claimName": CONTROL_PLANE_DATA}})),
        Store::EmbeddedEmptyDir => Some(json!({"emptyDir": {}})),
    };
    if let Some(source) = data_volume {
        env.insert(0, json!({"name": "OUTRIDER_DATA_DIR", "value": DATA_DIR}));
        mounts.push(json!({"name": "data", "mountPath": DATA_DIR}));
        let mut v = source;
        v["name"] = json!("data");
        volumes.push(v);
    }
    // A volume one node mounts at a time cannot be handed from the old Pod to the
    // new one in a rolling update; PostgreSQL replicas roll one at a time.
    let strategy = match s.store {
        Store::EmbeddedPvc { .. } => json!({"type": "Recreate"}),
        _ => json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
    };
    let args = json!([
        "--webhook-addr",
        format!("0.0.0.0:{WEBHOOK_PORT}"),
        "--sidecar-image",
        s.sidecar_image,
        "--proxy-uid",
        s.proxy_uid.to_string(),
        "--injected-control-plane",
        format!("https://{CONTROL_PLANE}.{ns}.svc:18000"),
    ]);
    let spread = |key: &str| {
        json!({
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector()},
            // Spread each ReplicaSet's Pods, so a rolling update is not skewed by
            // the old Pods it is about to remove.
            "matchLabelKeys": ["pod-template-hash"],
        })
    };
    let mut pod_labels = labels();
    pod_labels["outrider.io/inject"] = json!("disabled");
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(CONTROL_PLANE, Some(ns)),
        "spec": {
            "replicas": s.replicas,
            "selector": {"matchLabels": selector()},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": CONTROL_PLANE,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": OUTRIDER_UID,
                        "runAsGroup": OUTRIDER_UID,
                        "fsGroup": OUTRIDER_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "topologySpreadConstraints": [
                        spread("kubernetes.io/hostname"),
                        spread("topology.kubernetes.io/zone"),
                    ],
                    "containers": [{
                        "name": "control-plane",
                        "image": s.image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["outrider-control-plane"],
                        "args": args,
                        "env": env,
                        "ports": [
                            {"name": "grpc", "containerPort": 18000, "protocol": "TCP"},
                            {"name": "http", "containerPort": 18080, "protocol": "TCP"},
                            {"name": "webhook", "containerPort": WEBHOOK_PORT, "protocol": "TCP"},
                        ],
                        "livenessProbe": {
                            "httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTPS"},
                            "periodSeconds": 10,
                            "failureThreshold": 3,
                        },
                        "readinessProbe": {
                            "httpGet": {"path": "/readyz", "port": "http", "scheme": "HTTPS"},
                            "periodSeconds": 5,
                            "failureThreshold": 2,
                        },
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "128Mi"},
                            "limits": {"memory": "512Mi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    })
}

/// Two webhooks, because the API server ANDs a webhook's selectors and injection is
/// an OR: every Pod of a namespace labelled `enabled` (unless the Pod says
/// `disabled`), and Pods labelled `enabled` anywhere else. Neither reaches the control
/// plane's own namespace, and the two never both match one Pod.
fn webhook_configuration(ns: &str, ca_pem: Option<&str>) -> Value {
    let not_ours = json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [ns]});
    let label = |op: &str, values: &[&str]| json!({"key": "outrider.io/inject", "operator": op, "values": values});
    let webhook = |name: &str, namespaces: Value, objects: Value| {
        let mut client = json!({"service": {"name": WEBHOOK_SERVICE, "namespace": ns, "path": "/inject", "port": 443}});
        if let Some(pem) = ca_pem {
            client["caBundle"] = json!(base64::engine::general_purpose::STANDARD.encode(pem));
        }
        json!({
            "name": name,
            "clientConfig": client,
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            "namespaceSelector": {"matchExpressions": namespaces},
            "objectSelector": {"matchExpressions": objects},
            // A control plane that is down never blocks Pod creation: Pods start
            // without a sidecar instead (`outriderctl check` names them).
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
            "matchPolicy": "Equivalent",
            "reinvocationPolicy": "Never",
        })
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": meta(WEBHOOK_CONFIGURATION, None),
        "webhooks": [
            webhook(
                "namespace.inject.outrider.io",
                json!([label("In", &["enabled"]), not_ours]),
                json!([label("NotIn", &["disabled"])]),
            ),
            webhook(
                "object.inject.outrider.io",
                json!([label("NotIn", &["enabled"]), not_ours]),
                json!([label("In", &["enabled"])]),
            ),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> CaRoot {
        CaRoot {
            cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            key_pem: "k".into(),
        }
    }

    fn kinds(objects: &[Value]) -> Vec<String> {
        objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
        objects.iter().find(|o| o["kind"] == kind).unwrap()
    }

    #[test]
    fn the_namespace_comes_first_and_the_webhook_last() {
        let o = objects(&InstallSettings::defaults(), Some(&root()));
        let k = kinds(&o);
        assert_eq!(k.first().unwrap(), "Namespace/outrider");
        assert_eq!(
            k.last().unwrap(),
            "MutatingWebhookConfiguration/outrider-sidecar-injector"
        );
        for s in [
            "Secret/outrider-ca",
            "Secret/outrider-api",
            "Secret/outrider-registration",
        ] {
            assert!(k.contains(&s.to_owned()), "{k:?}");
        }
    }

    #[test]
    fn without_secrets_there_is_no_secret_and_no_ca_bundle() {
        let o = objects(&InstallSettings::defaults(), None);
        assert!(o.iter().all(|o| o["kind"] != "Secret"));
        let hooks = &find(&o, "MutatingWebhookConfiguration")["webhooks"];
        assert!(hooks[0]["clientConfig"].get("caBundle").is_none());
    }

    #[test]
    fn the_ca_bundle_is_the_root_in_base64() {
        let r = root();
        let o = objects(&InstallSettings::defaults(), Some(&r));
        for hook in find(&o, "MutatingWebhookConfiguration")["webhooks"].as_array().unwrap() {
            let b64 = hook["clientConfig"]["caBundle"].as_str().unwrap();
            let pem = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
            assert_eq!(pem, r.cert_pem.as_bytes());
            assert_eq!(hook["clientConfig"]["service"]["namespace"], "outrider");
        }
    }

    #[test]
    fn the_control_plane_flags_name_its_own_namespace() {
        let s = InstallSettings {
            namespace: "mesh".into(),
            sidecar_image: "reg/outrider:9".into(),
            ..InstallSettings::defaults()
        };
        let o = objects(&s, None);
        let args = &find(&o, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"];
        let args: Vec<&str> = args.as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--webhook-addr",
                "0.0.0.0:18443",
                "--sidecar-image",
                "reg/outrider:9",
                "--proxy-uid",
                "2102",
                "--injected-control-plane",
                "https://outrider-control-plane.mesh.svc:18000"
            ]
        );
    }

    #[test]
    fn postgres_comes_from_the_named_secret_and_the_embedded_store_from_a_volume() {
        let o = objects(&InstallSettings::defaults(), None);
        let c = &find(&o, "Deployment")["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["env"][0]["name"], "OUTRIDER_DATABASE_URL");
        assert_eq!(c["env"][0]["valueFrom"]["secretKeyRef"]["name"], "outrider-database");

        let s = InstallSettings {
            replicas: 1,
            store: Store::EmbeddedPvc { size: "2Gi".into() },
            ..InstallSettings::defaults()
        };
        s.validate().unwrap();
        let o = objects(&s, None);
        let d = find(&o, "Deployment");
        assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["env"][0]["value"], "/var/lib/outrider");
        assert_eq!(
            find(&o, "PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"],
            "2Gi"
        );
    }

    #[test]
    fn several_replicas_need_postgres() {
        let s = InstallSettings {
            store: Store::EmbeddedEmptyDir,
            ..InstallSettings::defaults()
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("--replicas 2") && e.contains("PostgreSQL"), "{e}");
    }

    #[test]
    fn bad_names_are_refused_naming_the_flag() {
        let s = InstallSettings {
            namespace: "Outrider_1".into(),
            ..InstallSettings::defaults()
        };
        assert!(s.validate().unwrap_err().to_string().contains("--namespace"));
        assert_eq!(Token::parse(" generated "), Ok(Token::Generated));
        assert!(Token::parse("  ").is_err());
        assert!(Token::parse("two words").is_err());
    }

    #[test]
    fn generated_tokens_differ_and_given_ones_are_kept() {
        assert_ne!(Token::Generated.value(), Token::Generated.value());
        assert_eq!(Token::Generated.value().len(), 64);
        assert_eq!(Token::Given("t".into()).value(), "t");
    }

    #[test]
    fn a_made_root_is_a_ca_the_control_plane_accepts() {
        let r = new_root("example.org").unwrap();
        assert!(r.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(rcgen::KeyPair::from_pem(&r.key_pem).is_ok());
        let params = rcgen::CertificateParams::from_ca_cert_pem(&r.cert_pem).unwrap();
        assert!(matches!(params.is_ca, rcgen::IsCa::Ca(_)));
    }
}
