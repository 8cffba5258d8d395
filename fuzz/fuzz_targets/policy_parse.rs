//! Every policy kind through `outrider_policy`'s parsing and validation, as the REST
//! API and the sidecar run it on untrusted bytes: it must never panic, and a document
//! it accepts must read back as the same value from its canonical JSON (what the
//! store keeps and the sidecar parses again). Accepted routing policies also go
//! through the canary edits, which rewrite them.
//!
//! Input: the first byte picks the kind, the rest is the document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_policy::{canary, Policy, PolicyKind};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, doc)) = data.split_first() else {
        return;
    };
    let kind = PolicyKind::ALL[usize::from(selector) % PolicyKind::ALL.len()];
    if let Ok(policy) = Policy::parse(kind, doc) {
        let canonical = serde_json::to_vec(&policy.to_json()).expect("canonical JSON serializes");
        let back = Policy::parse(kind, &canonical).expect("canonical JSON parses back");
        assert_eq!(back, policy, "the canonical JSON changed the document");
        if let Policy::Routing(routing) = &policy {
            let _ = canary::weights(routing);
            let _ = canary::set_weight(Some(routing), "canary", 10, None);
            let _ = canary::promote(Some(routing));
            let _ = canary::abort(Some(routing), None);
        }
    }
    // The JSON-value path (YAML in the CLI) and the name checks take the same text.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(doc) {
        let _ = Policy::from_value(kind, value);
    }
    if let Ok(text) = std::str::from_utf8(doc) {
        let _ = outrider_policy::validate_service_name(text);
        let _ = outrider_policy::validate_config_name(text);
        let _ = text.parse::<PolicyKind>();
    }
});
