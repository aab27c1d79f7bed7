//! A SenML pack (RFC 8428, `application/senml+json`) as ingest receives it over HTTP:
//! `lentera_protocol::senml::parse`.
//!
//! Properties: no panic; an error names a record that exists; every resolved reading is
//! well formed and round-trips (`check_reading`), lists the records it came from, and no
//! two readings share a device and an instant (they would have been merged).
#![no_main]

use std::collections::BTreeSet;

use lentera_fuzz::{check_error, check_reading, now};
use lentera_protocol::senml;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(pack) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let records = pack.as_array().map_or(0, Vec::len);
    match senml::parse(&pack, now()) {
        Ok(resolved) => {
            assert!(pack.is_array());
            // Each record makes at most one metric of one reading.
            let metrics: usize = resolved.iter().map(|r| r.reading.metrics.len()).sum();
            assert_eq!(metrics, records, "every record is one metric");
            let mut keys = BTreeSet::new();
            for r in &resolved {
                check_reading(&r.reading);
                assert!(
                    keys.insert((r.reading.device.clone(), r.reading.ts)),
                    "two readings of one device at one instant"
                );
                assert_eq!(
                    r.records.keys().collect::<Vec<_>>(),
                    r.reading.metrics.keys().collect::<Vec<_>>()
                );
                assert!(r.records.values().all(|i| *i < records));
            }
        }
        Err((i, e)) => {
            check_error(&e, data.len());
            assert!(i < records.max(1), "error at record {i} of {records}");
        }
    }
});
