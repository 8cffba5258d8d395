//! `outriderctl inject`: the webhook's injection, offline, on a file of Kubernetes
//! objects (multi-document YAML or JSON). Workloads get the sidecar in their pod
//! template unless labelled `outrider.io/inject: disabled`; every other object is
//! printed back as it was read.

use crate::args::Inject;
use crate::error::CliError;
use crate::format::Output;
use outrider_inject::workload::{inject_object, Change};
use outrider_inject::Settings;
use serde::Deserialize;
use serde_json::Value;

/// The objects of `text`, injected, rendered in `format` (YAML unless JSON is asked
/// for: one object as itself, several as a `List`), and a note per object not
/// injected, for stderr.
pub fn inject_text(
    source_name: &str,
    text: &str,
    args: &Inject,
    format: Output,
) -> Result<(String, Vec<String>), CliError> {
    let ca_pem = match &args.injected_ca_file {
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(|e| CliError::Input {
                source_name: format!("--injected-ca-file {}", path.display()),
                message: e.to_string(),
            })?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(CliError::Input {
                    source_name: format!("--injected-ca-file {}", path.display()),
                    message: "holds no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
                });
            }
            Some(pem)
        }
        None => None,
    };
    let mut notes = Vec::new();
    if ca_pem.is_none() && args.injected_control_plane.starts_with("https://") {
        notes.push(format!(
            "no --injected-ca-file: injected sidecars verify {} with the system roots (give the outrider-ca Secret's ca.crt)",
            args.injected_control_plane
        ));
    }
    let settings = Settings {
        image: args.sidecar_image.clone(),
        proxy_uid: args.proxy_uid,
        control_plane: args.injected_control_plane.clone(),
        ca_pem,
        token_secret: args.token_secret.clone(),
        ..Settings::default()
    };
    let input = |i: usize, message: String| CliError::Input {
        source_name: format!("{source_name}: document {}", i + 1),
        message,
    };
    let mut objects = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| input(i, format!("not YAML or JSON: {e}")))?;
        // An empty document (a trailing `---`) is nothing, not an object.
        if !value.is_null() {
            objects.push((i, value));
        }
    }
    for (i, object) in &mut objects {
        for (name, change) in inject_object(object, &settings).map_err(|e| input(*i, e.to_string()))? {
            if let Change::Skipped(why) = change {
                notes.push(format!("{name}: not injected: {why}"));
            }
        }
    }
    let objects: Vec<Value> = objects.into_iter().map(|(_, v)| v).collect();
    let rendered = match format {
        Output::Json => {
            let out = match <[Value; 1]>::try_from(objects) {
                Ok([one]) => one,
                Err(many) => serde_json::json!({"apiVersion": "v1", "kind": "List", "items": many}),
            };
            let mut s = serde_json::to_string_pretty(&out).map_err(|e| CliError::Output(e.to_string()))?;
            s.push('\n');
            s
        }
        Output::Yaml | Output::Table => {
            let mut s = String::new();
            for (n, object) in objects.iter().enumerate() {
                if n > 0 {
                    s.push_str("---\n");
                }
                s.push_str(&serde_yaml_ng::to_string(object).map_err(|e| CliError::Output(e.to_string()))?);
            }
            s
        }
    };
    Ok((rendered, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args() -> Inject {
        match crate::Cli::parse_from(["outriderctl", "inject", "-f", "-"]).command {
            crate::args::Command::Inject(i) => i,
            _ => unreachable!(),
        }
    }

    const FILE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: web:1, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, targetPort: 8080}], selector: {app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: tools, labels: {app: tools, outrider.io/inject: disabled}}
spec: {containers: [{name: sh, image: busybox}]}
---
"#;

    #[test]
    fn workloads_are_injected_other_objects_pass_through_and_opted_out_pods_are_noted() {
        let (yaml, notes) = inject_text("f.yaml", FILE, &args(), Output::Table).unwrap();
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&yaml)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 3);
        let init = &docs[0]["spec"]["template"]["spec"]["initContainers"];
        assert_eq!(init[1]["name"], "outrider-sidecar");
        assert_eq!(init[1]["image"], outrider_inject::DEFAULT_IMAGE);
        let before: Vec<Value> = serde_yaml_ng::Deserializer::from_str(FILE)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs[1], before[1], "a Service passes through unchanged");
        assert_eq!(docs[2], before[2], "an opted-out Pod too");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("no --injected-ca-file"), "{notes:?}");
        assert!(notes[1].starts_with("Pod/tools: not injected"), "{notes:?}");

        // Injecting the output again changes nothing.
        let (again, _) = inject_text("f.yaml", &yaml, &args(), Output::Table).unwrap();
        assert_eq!(again, yaml);
    }

    #[test]
    fn the_injected_ca_file_becomes_the_sidecars_inline_bundle_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(&ca, pem).unwrap();
        let mut a = args();
        a.injected_ca_file = Some(ca.clone());
        let (yaml, notes) = inject_text("f.yaml", FILE, &a, Output::Json).unwrap();
        assert_eq!(notes.len(), 1, "only the opted-out Pod: {notes:?}");
        let list: Value = serde_json::from_str(&yaml).unwrap();
        let env = &list["items"][0]["spec"]["template"]["spec"]["initContainers"][1]["env"];
        let inline = env.as_array().unwrap().iter().find(|e| e["name"] == "OUTRIDER_CA_PEM");
        assert_eq!(inline.map(|e| e["value"].clone()), Some(Value::from(pem)));

        std::fs::write(&ca, "nothing\n").unwrap();
        let err = inject_text("f.yaml", FILE, &a, Output::Json).unwrap_err().to_string();
        assert!(
            err.starts_with("--injected-ca-file") && err.contains("no certificate"),
            "{err}"
        );
    }

    #[test]
    fn a_workload_that_cannot_be_injected_fails_naming_the_document_and_object() {
        let file = "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a}]}\n";
        let err = inject_text("f.yaml", file, &args(), Output::Yaml)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("f.yaml: document 1: Pod/p: no service name"), "{err}");
        let err = inject_text("f.yaml", "a: [", &args(), Output::Yaml)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("f.yaml: document 1: not YAML"), "{err}");
    }

    #[test]
    fn json_output_is_the_object_itself_or_a_list() {
        let (json, _) = inject_text("f", FILE, &args(), Output::Json).unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["kind"], "List");
        assert_eq!(v["items"].as_array().unwrap().len(), 3);
    }
}
