//! Event decoding never panics, whatever the bytes: a million seeded random messages.
//!
//! The kernel only ever writes well-formed messages, but the decoder is the one place where
//! bytes from outside become Rust values, so it is held to "any input": known event codes
//! decode, every other code is `Error::UnrecognizedEvent(code)`, a fork message whose
//! descriptor is negative is `Error::ForkWithoutDescriptor` (adopting -1 would panic in
//! `OwnedFd::from_raw_fd`), nothing panics, and a fork message's descriptor number is never
//! acted on (`decode_untrusted` does not adopt it).
//! The cargo-fuzz target in fuzz/ explores the same function without a fixed seed.
//!
//! `decode_untrusted` exists only with the cargo feature `fuzzing` (Cargo.toml makes this test
//! require it; ci/test runs the tests with `--all-features`).

use userfaultfd::sys::{
    UFFD_EVENT_FORK, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMAP, UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP,
};
use userfaultfd::{decode_untrusted, Error, FeatureFlags};

const KNOWN: [u8; 5] = [
    UFFD_EVENT_PAGEFAULT,
    UFFD_EVENT_FORK,
    UFFD_EVENT_REMAP,
    UFFD_EVENT_REMOVE,
    UFFD_EVENT_UNMAP,
];

/// Whether `msg`, with a known event code, is a fork message with a negative descriptor (its
/// `ufd`, a 32-bit field at offset 8).
fn fork_without_descriptor(msg: &[u8; 32]) -> bool {
    msg[0] == UFFD_EVENT_FORK && fork_descriptor(msg) < 0
}

/// A fork message's descriptor: the message is read in the machine's byte order.
fn fork_descriptor(msg: &[u8; 32]) -> i32 {
    i32::from_ne_bytes(msg[8..12].try_into().unwrap())
}

/// Checks the outcome for a message with a known event code.
fn check_known(msg: &[u8; 32], result: Result<(), Error>) {
    if fork_without_descriptor(msg) {
        assert!(
            matches!(result, Err(Error::ForkWithoutDescriptor(fd)) if fd == fork_descriptor(msg)),
            "fork without a descriptor: {result:?}"
        );
    } else {
        assert!(result.is_ok(), "code {:#x}: {result:?}", msg[0]);
    }
}

/// splitmix64: a tiny, well-mixed generator; the seed makes every run identical.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[test]
fn a_million_random_messages_decode_or_are_unrecognized() {
    let mut rng = SplitMix(0x75ff_d000_2026_1123);
    let (mut known, mut unknown) = (0u32, 0u32);
    for _ in 0..1_000_000 {
        let mut msg = [0u8; 32];
        for chunk in msg.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        // Half the messages carry a known event code, so the payload decoders run too.
        if rng.next() & 1 == 0 {
            msg[0] = KNOWN[(rng.next() % KNOWN.len() as u64) as usize];
        }
        let features = FeatureFlags::from_bits_retain(rng.next());
        let result = decode_untrusted(&msg, features);
        if KNOWN.contains(&msg[0]) {
            check_known(&msg, result);
            known += 1;
        } else {
            assert!(
                matches!(result, Err(Error::UnrecognizedEvent(code)) if code == msg[0]),
                "code {:#x}: {result:?}",
                msg[0]
            );
            unknown += 1;
        }
    }
    // Both paths were exercised many times.
    assert!(
        known > 400_000 && unknown > 400_000,
        "{known} known, {unknown} unknown"
    );
}

#[test]
fn every_code_outside_the_five_events_is_unrecognized() {
    for code in 0..=u8::MAX {
        let mut msg = [0xffu8; 32];
        msg[0] = code;
        let result = decode_untrusted(&msg, FeatureFlags::all());
        if KNOWN.contains(&code) {
            check_known(&msg, result);
        } else {
            assert!(
                matches!(result, Err(Error::UnrecognizedEvent(c)) if c == code),
                "code {code:#x}: {result:?}"
            );
        }
    }
}

#[test]
fn a_fork_message_with_a_negative_descriptor_is_an_error() {
    for (ufd, ok) in [
        (-1i32, false),
        (i32::MIN, false),
        (0, true),
        (i32::MAX, true),
    ] {
        let mut msg = [0u8; 32];
        msg[0] = UFFD_EVENT_FORK;
        msg[8..12].copy_from_slice(&ufd.to_ne_bytes());
        let result = decode_untrusted(&msg, FeatureFlags::all());
        if ok {
            assert!(result.is_ok(), "ufd {ufd}: {result:?}");
        } else {
            assert!(
                matches!(result, Err(Error::ForkWithoutDescriptor(fd)) if fd == ufd),
                "ufd {ufd}: {result:?}"
            );
        }
    }
}
