//! `outriderctl canary`: canary releases as edits of the service's RoutingPolicy
//! (`set`, `promote`, `abort`), their figures (`status`), and automated rollouts that
//! the control plane drives (`run`), so they survive this CLI exiting.

use crate::args::{CanaryCommand, Run};
use crate::client::{api, Body, Client};
use crate::error::CliError;
use crate::format::Output;
use crate::output::{self, Table};
use outrider_policy::canary::{self, CanaryError};
use outrider_policy::RoutingPolicy;
use serde_json::{json, Value};
use std::time::Duration;

fn policy_path(service: &str) -> Vec<&str> {
    api(&["services", service, "policies", "routing"])
}

/// The current RoutingPolicy, `None` when the service has none.
async fn current(client: &Client, service: &str) -> Result<Option<RoutingPolicy>, CliError> {
    match client.get(&policy_path(service), &[]).await {
        Ok(v) => outrider_policy::from_value(v["document"].clone())
            .map(Some)
            .map_err(|e| CliError::Invalid(format!("the stored routing policy of {service} is invalid: {e}"))),
        Err(CliError::Api(e)) if e.status == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

async fn write(client: &Client, service: &str, p: &RoutingPolicy) -> Result<Value, CliError> {
    let doc = serde_json::to_value(p).map_err(|e| CliError::Invalid(e.to_string()))?;
    client.put(&policy_path(service), &[], Body::Json(doc)).await
}

fn canary_err(e: CanaryError) -> CliError {
    CliError::Invalid(e.to_string())
}

fn weights_line(p: &RoutingPolicy) -> String {
    match canary::weights(p) {
        Some(w) => match w.canary {
            Some((c, cw)) => format!("{} {}%, {} {}%", w.stable.0, w.stable.1, c, cw),
            None => format!("{} {}%", w.stable.0, w.stable.1),
        },
        None => "no catch-all route".into(),
    }
}

pub async fn run(client: &Client, format: Output, cmd: CanaryCommand) -> Result<(), CliError> {
    match cmd {
        CanaryCommand::Set {
            service,
            subset,
            weight,
            stable,
        } => {
            check(&service)?;
            // Checked before anything is read or written: a bad weight changes nothing.
            if weight > 100 {
                return Err(canary_err(CanaryError::Weight(weight)));
            }
            let p = current(client, &service).await?;
            let next = canary::set_weight(p.as_ref(), &subset, weight, stable.as_deref()).map_err(canary_err)?;
            let v = write(client, &service, &next).await?;
            done(
                format,
                &v,
                &format!("{service}: {} (revision {})\n", weights_line(&next), v["revision"]),
            )
        }
        CanaryCommand::Promote { service } => {
            check(&service)?;
            let p = current(client, &service).await?;
            let next = canary::promote(p.as_ref()).map_err(canary_err)?;
            let v = write(client, &service, &next).await?;
            done(
                format,
                &v,
                &format!(
                    "{service}: promoted, {} (revision {})\n",
                    weights_line(&next),
                    v["revision"]
                ),
            )
        }
        CanaryCommand::Abort { service, stable } => {
            check(&service)?;
            // Stop an automated rollout first so it cannot step the weight up again.
            match client.delete(&api(&["services", &service, "canary"])).await {
                Ok(_) => {}
                Err(CliError::Api(e)) if e.status == 404 => {}
                Err(e) => return Err(e),
            }
            let p = current(client, &service).await?;
            let next = canary::abort(p.as_ref(), stable.as_deref()).map_err(canary_err)?;
            let v = write(client, &service, &next).await?;
            done(
                format,
                &v,
                &format!(
                    "{service}: aborted, {} (revision {})\n",
                    weights_line(&next),
                    v["revision"]
                ),
            )
        }
        CanaryCommand::Status { service } => status(client, format, &service).await,
        CanaryCommand::Run(r) => run_rollout(client, format, r).await,
    }
}

fn check(service: &str) -> Result<(), CliError> {
    outrider_policy::validate_service_name(service).map_err(CliError::Invalid)
}

fn done(format: Output, v: &Value, line: &str) -> Result<(), CliError> {
    match output::structured(format, v)? {
        Some(s) => output::write_stdout(&s),
        None => output::write_stdout(line),
    }
}

async fn rollout(client: &Client, service: &str) -> Result<Option<Value>, CliError> {
    match client.get(&api(&["services", service, "canary"]), &[]).await {
        Ok(v) => Ok(Some(v)),
        Err(CliError::Api(e)) if e.status == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

async fn status(client: &Client, format: Output, service: &str) -> Result<(), CliError> {
    check(service)?;
    let svc = client.get(&api(&["services", service]), &[]).await?;
    let policy: Option<RoutingPolicy> = svc["policies"]["routing"]
        .get("document")
        .and_then(|d| outrider_policy::from_value(d.clone()).ok());
    let rollout = rollout(client, service).await?;
    let weights = policy.as_ref().and_then(canary::weights);
    let report = json!({
        "service": service,
        "weights": weights.as_ref().map(|w| {
            let mut m = serde_json::Map::new();
            m.insert(w.stable.0.clone(), json!(w.stable.1));
            if let Some((c, cw)) = &w.canary { m.insert(c.clone(), json!(cw)); }
            Value::Object(m)
        }),
        "stable": weights.as_ref().map(|w| w.stable.0.clone()),
        "traffic": svc["traffic"],
        "rollout": rollout,
    });
    if let Some(s) = output::structured(format, &report)? {
        return output::write_stdout(&s);
    }
    let mut out = match &policy {
        Some(p) => format!("{service}: {}\n", weights_line(p)),
        None => format!("{service}: no routing policy (traffic spreads over all healthy instances)\n"),
    };
    let mut t = Table::new(&["SUBSET", "WEIGHT", "REQUESTS", "SUCCESS", "P50", "P99"]);
    let weight_of = |s: &str| -> String {
        weights
            .as_ref()
            .and_then(|w| {
                std::iter::once(&w.stable)
                    .chain(w.canary.as_ref())
                    .find(|(n, _)| n == s)
                    .map(|(_, x)| format!("{x}%"))
            })
            .unwrap_or_else(|| "-".into())
    };
    for f in svc["traffic"].as_array().into_iter().flatten() {
        let subset = f["subset"].as_str().unwrap_or("?");
        t.row(vec![
            subset.to_owned(),
            weight_of(subset),
            f["requests"].to_string(),
            format!("{:.2}%", f["successRate"].as_f64().unwrap_or(1.0) * 100.0),
            format!("{:.1}ms", f["p50Ms"].as_f64().unwrap_or(0.0)),
            format!("{:.1}ms", f["p99Ms"].as_f64().unwrap_or(0.0)),
        ]);
    }
    if t.is_empty() {
        out.push_str("no traffic figures yet\n");
    } else {
        out.push_str(&t.render());
    }
    if let Some(r) = rollout {
        out.push_str(&rollout_line(&r));
    }
    output::write_stdout(&out)
}

fn rollout_line(r: &Value) -> String {
    let reason = r["reason"].as_str().filter(|s| !s.is_empty());
    format!(
        "rollout of {}: {} at step {}/{} ({}% to {}){}\n",
        r["subset"].as_str().unwrap_or("?"),
        r["state"].as_str().unwrap_or("?"),
        r["step"].as_u64().unwrap_or(0) + 1,
        r["steps"].as_array().map_or(0, Vec::len),
        r["weight"],
        r["subset"].as_str().unwrap_or("?"),
        reason.map(|s| format!(": {s}")).unwrap_or_default(),
    )
}

async fn run_rollout(client: &Client, format: Output, r: Run) -> Result<(), CliError> {
    check(&r.service)?;
    if let Some(bad) = r.steps.iter().find(|w| **w > 100) {
        return Err(canary_err(CanaryError::Weight(*bad)));
    }
    let mut body = json!({
        "subset": r.subset, "steps": r.steps, "interval": r.interval, "maxErrorRate": r.max_error_rate,
    });
    if let Some(s) = &r.stable {
        body["stable"] = json!(s);
    }
    if let Some(p) = &r.max_p99 {
        body["maxP99"] = json!(p);
    }
    let path = api(&["services", &r.service, "canary"]);
    let mut v = client.post_json(&path, body).await?;
    if r.detach {
        return done(format, &v, &rollout_line(&v));
    }
    let mut last = String::new();
    loop {
        let line = rollout_line(&v);
        if line != last && format == Output::Table {
            output::write_stdout(&line)?;
            last = line;
        }
        match v["state"].as_str() {
            Some("running") => {}
            Some("succeeded") => return done_structured(format, &v),
            _ => {
                let _ = done_structured(format, &v);
                return Err(CliError::Invalid(format!(
                    "rollout of {} {}: {}",
                    r.subset,
                    v["state"].as_str().unwrap_or("ended"),
                    v["reason"].as_str().unwrap_or("no reason given")
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        v = client.get(&path, &[]).await?;
    }
}

fn done_structured(format: Output, v: &Value) -> Result<(), CliError> {
    match output::structured(format, v)? {
        Some(s) => output::write_stdout(&s),
        None => Ok(()),
    }
}
