//! Workloads: where each kind keeps its pod template, and injecting a whole object
//! (what `outriderctl inject` does to each document it reads).

use crate::{inject, InjectError, Namespace, Outcome, Settings, Skip};
use serde_json::Value;

/// The JSON Pointer of `kind`'s pod template (`""`: the object is a Pod), or `None`
/// for kinds that have none (they pass through unchanged).
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            Some("/spec/template")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// What happened to one object (or, for a `List`, to each item with a template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Injected,
    Skipped(Skip),
    /// A kind without a pod template, or no Kubernetes object at all.
    PassedThrough,
}

/// Injects `object` in place: its pod template, or every item of a `List`. On an
/// error the object is left as it was; the error names `kind/name`.
pub fn inject_object(object: &mut Value, settings: &Settings) -> Result<Vec<(String, Change)>, InjectError> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("").to_owned();
    if kind == "List" {
        let mut changes = Vec::new();
        if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
            let mut injected = items.clone();
            for item in &mut injected {
                changes.extend(inject_object(item, settings)?);
            }
            *items = injected;
        }
        return Ok(changes);
    }
    let name = format!(
        "{kind}/{}",
        object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>")
    );
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(vec![(name, Change::PassedThrough)]);
    };
    let Some(template) = object.pointer_mut(pointer) else {
        return Err(named(&name, InjectError::Shape("the pod template")));
    };
    match inject(template, Namespace::Selected, settings).map_err(|e| named(&name, e))? {
        Outcome::Injected { pod, .. } => {
            *template = pod;
            Ok(vec![(name, Change::Injected)])
        }
        Outcome::Skipped(why) => Ok(vec![(name, Change::Skipped(why))]),
    }
}

/// The error with the object it is about in front.
fn named(name: &str, e: InjectError) -> InjectError {
    InjectError::In {
        object: name.to_owned(),
        source: Box::new(e),
    }
}
