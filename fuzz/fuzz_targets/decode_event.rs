//! Decodes arbitrary bytes as a `uffd_msg`: must never panic; an unknown event code must be
//! `Error::UnrecognizedEvent` with that code, and a fork message with a negative descriptor
//! `Error::ForkWithoutDescriptor`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use userfaultfd::{decode_untrusted, Error, FeatureFlags};

fuzz_target!(|input: &[u8]| {
    let Some((features, msg)) = input.split_first_chunk::<8>() else {
        return;
    };
    let Some(msg) = msg.first_chunk::<32>() else {
        return;
    };
    let features = FeatureFlags::from_bits_retain(u64::from_le_bytes(*features));
    match decode_untrusted(msg, features) {
        Ok(()) => assert!((18..=22).contains(&msg[0]), "code {:#x} decoded", msg[0]),
        Err(Error::UnrecognizedEvent(code)) => assert_eq!(code, msg[0]),
        Err(Error::ForkWithoutDescriptor(fd)) => {
            assert_eq!(msg[0], 19, "not a fork message");
            assert!(fd < 0, "descriptor {fd}");
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
});
