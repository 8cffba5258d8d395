//! `outriderctl apply -f`'s document parser (YAML or JSON envelopes, several
//! documents) on any text: it must never panic, and every policy it accepts must
//! survive its canonical JSON, which is what the CLI sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_policy::Policy;
use outriderctl::envelope::{parse_documents, Document};

fuzz_target!(|text: &str| {
    let Ok(docs) = parse_documents(text) else {
        return;
    };
    for doc in docs {
        let _ = doc.describe();
        if let Document::Policy { policy, .. } = doc {
            let back = Policy::from_value(policy.kind(), policy.to_json()).expect("canonical JSON parses back");
            assert_eq!(back, policy);
        }
    }
});
