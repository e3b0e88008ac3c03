//! Parses arbitrary bytes as a working-set file: must never panic nor allocate more than the
//! input justifies; whatever parses must re-encode to a file that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use userfaultfd::serve::WorkingSet;

fuzz_target!(|input: &[u8]| {
    if let Ok(ws) = WorkingSet::decode(input) {
        let again = WorkingSet::decode(&ws.encode()).expect("a re-encoded working set parses");
        assert_eq!(again, ws);
    }
});
