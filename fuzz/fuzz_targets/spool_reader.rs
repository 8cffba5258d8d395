//! The log spool's batch-file reader on any bytes (a torn write, a foreign file in
//! `OUTRIDER_STATE_DIR/log-spool/`): it must never panic; a file it cannot read is
//! `None` and is dropped by the shipper.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_sidecar::logship::spool::decode;

fuzz_target!(|data: &[u8]| {
    if let Some(batch) = decode(data) {
        let _ = batch.bytes();
    }
});
