//! What a Pod's labels and annotations decide: its service and subset, the app's
//! port, and the capture overrides, each checked here so that an injected sidecar
//! never fails at start on a value the Pod gave it.

use crate::InjectError;
use serde_json::{json, Map, Value};

pub const SERVICE: &str = "outrider.io/service";
pub const VERSION: &str = "outrider.io/version";
pub const APP_PORT: &str = "outrider.io/app-port";
pub const INBOUND_PORTS: &str = "outrider.io/inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "outrider.io/skip-outbound-ports";
pub const SKIP_OUTBOUND_CIDRS: &str = "outrider.io/skip-outbound-cidrs";
pub const TOKEN_SECRET: &str = "outrider.io/token-secret";

/// Where an environment value comes from: a literal, or the Pod's own metadata
/// through the Downward API (so the variable always says what the Pod says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Literal(String),
    Label(String),
    Annotation(String),
}

impl Source {
    /// The `env` entry named `name`.
    pub fn env(&self, name: &str) -> Value {
        match self {
            Source::Literal(v) => json!({"name": name, "value": v}),
            Source::Label(k) => field_ref(name, &format!("metadata.labels['{k}']")),
            Source::Annotation(k) => field_ref(name, &format!("metadata.annotations['{k}']")),
        }
    }
}

pub fn field_ref(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// Everything about one Pod that its sidecar and capture depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub service: Source,
    pub version: Source,
    pub app_port: u16,
    /// `outrider-sidecar init` flags from the overrides, in a fixed order.
    pub init_args: Vec<String>,
    /// The Secret holding `OUTRIDER_TOKEN`, when the Pod names one.
    pub token_secret: Option<String>,
}

type Meta<'a> = Option<&'a Map<String, Value>>;

fn text<'a>(m: Meta<'a>, key: &str) -> Option<&'a str> {
    m.and_then(|m| m.get(key)).and_then(Value::as_str)
}

impl Plan {
    pub fn of(labels: Meta<'_>, annotations: Meta<'_>, containers: &[Value]) -> Result<Plan, InjectError> {
        let service = [
            (annotations, SERVICE, false),
            (labels, "app.kubernetes.io/name", true),
            (labels, "app", true),
        ]
        .into_iter()
        .find_map(|(m, key, is_label)| text(m, key).map(|v| (key, v, is_label)))
        .ok_or(InjectError::NoService)?;
        check(service, outrider_policy::validate_service_name)?;
        let service = source(service);

        let version = match [(annotations, VERSION, false), (labels, "version", true)]
            .into_iter()
            .find_map(|(m, key, is_label)| text(m, key).map(|v| (key, v, is_label)))
        {
            Some(found) => {
                check(found, validate_subset)?;
                source(found)
            }
            None => Source::Literal("v1".into()),
        };

        let app_port = match text(annotations, APP_PORT) {
            Some(v) => app_port_annotation(v, containers)?,
            None => first_container_port(containers).ok_or(InjectError::NoAppPort)?,
        };
        if SIDECAR_PORTS.contains(&app_port) {
            return Err(bad(
                "app port",
                &app_port.to_string(),
                "is one of the sidecar's own ports (15000, 15001, 15006, 15020); set annotation outrider.io/app-port"
                    .into(),
            ));
        }

        let mut init_args = Vec::new();
        for (key, flag, check) in [
            (
                INBOUND_PORTS,
                "--inbound-ports",
                inbound_list as fn(&str) -> Result<String, String>,
            ),
            (SKIP_OUTBOUND_PORTS, "--exclude-outbound-ports", port_list),
            (SKIP_OUTBOUND_CIDRS, "--exclude-outbound-cidrs", cidr_list),
        ] {
            if let Some(v) = text(annotations, key) {
                let normal = check(v).map_err(|reason| bad(&format!("annotation {key}"), v, reason))?;
                if !normal.is_empty() {
                    init_args.push(flag.to_owned());
                    init_args.push(normal);
                }
            }
        }
        let token_secret = match text(annotations, TOKEN_SECRET) {
            Some(v) if is_dns_subdomain(v) => Some(v.to_owned()),
            Some(v) => {
                return Err(bad(
                    &format!("annotation {TOKEN_SECRET}"),
                    v,
                    "not a Secret name (lowercase letters, digits, '-' and '.', at most 253)".into(),
                ))
            }
            None => None,
        };
        Ok(Plan {
            service,
            version,
            app_port,
            init_args,
            token_secret,
        })
    }
}

fn bad(field: &str, value: &str, reason: String) -> InjectError {
    InjectError::Bad {
        field: field.to_owned(),
        value: value.to_owned(),
        reason,
    }
}

/// (key, value, whether a label) → its checked value.
fn check(found: (&str, &str, bool), f: impl Fn(&str) -> Result<(), String>) -> Result<(), InjectError> {
    let (key, value, is_label) = found;
    let field = if is_label {
        format!("label {key}")
    } else {
        format!("annotation {key}")
    };
    f(value).map_err(|reason| bad(&field, value, reason))
}

fn source((key, _, is_label): (&str, &str, bool)) -> Source {
    if is_label {
        Source::Label(key.to_owned())
    } else {
        Source::Annotation(key.to_owned())
    }
}

/// A subset name as the sidecar and routing policies take it.
fn validate_subset(v: &str) -> Result<(), String> {
    outrider_policy::validate_service_name(v).map_err(|_| {
        "not a subset name: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'".into()
    })
}

/// A port number, or the name of a `containerPort` of any container.
fn app_port_annotation(v: &str, containers: &[Value]) -> Result<u16, InjectError> {
    let field = format!("annotation {APP_PORT}");
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return port(v).map_err(|reason| bad(&field, v, reason));
    }
    ports(containers)
        .find(|p| p.get("name").and_then(Value::as_str) == Some(v))
        .and_then(container_port)
        .ok_or_else(|| {
            bad(
                &field,
                v,
                "neither a port number nor the name of a containerPort".into(),
            )
        })
}

fn ports(containers: &[Value]) -> impl Iterator<Item = &Value> {
    containers
        .iter()
        .filter_map(|c| c.get("ports").and_then(Value::as_array))
        .flatten()
}

fn container_port(p: &Value) -> Option<u16> {
    p.get("containerPort")
        .and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0)
}

fn first_container_port(containers: &[Value]) -> Option<u16> {
    containers
        .first()?
        .get("ports")?
        .as_array()?
        .first()
        .and_then(container_port)
}

/// The ports the sidecar itself listens on: capture must never point at them.
pub const SIDECAR_PORTS: [u16; 4] = [15000, 15001, 15006, 15020];

fn port(v: &str) -> Result<u16, String> {
    match v.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{:?} is not a port (1-65535)", v.trim())),
        Ok(p) => Ok(p),
    }
}

/// `P,P,...` (spaces allowed) → the same list, normalised.
fn port_list(v: &str) -> Result<String, String> {
    let list = items(v).map(port).collect::<Result<Vec<_>, _>>()?;
    Ok(list.iter().map(u16::to_string).collect::<Vec<_>>().join(","))
}

/// Inbound ports to capture: never the sidecar's own.
fn inbound_list(v: &str) -> Result<String, String> {
    let ports = items(v).map(port).collect::<Result<Vec<_>, _>>()?;
    if let Some(p) = ports.iter().find(|p| SIDECAR_PORTS.contains(p)) {
        return Err(format!(
            "{p} is one of the sidecar's own ports (15000, 15001, 15006, 15020)"
        ));
    }
    port_list(v)
}

/// `CIDR,CIDR,...` of IPv4 or IPv6 networks.
fn cidr_list(v: &str) -> Result<String, String> {
    let list = items(v)
        .map(|c| {
            let (ip, len) = c.split_once('/').unwrap_or((c, ""));
            let ip: std::net::IpAddr = ip
                .parse()
                .map_err(|_| format!("{c:?} is not a CIDR (address/length)"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match len.parse::<u8>() {
                Ok(n) if n <= max => Ok(format!("{ip}/{n}")),
                _ => Err(format!("{c:?} is not a CIDR: the prefix length must be 0-{max}")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(list.join(","))
}

fn items(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// An RFC 1123 subdomain, as Secret names are.
fn is_dns_subdomain(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
