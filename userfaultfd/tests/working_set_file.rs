//! The working-set file parser against seeded random corruption: every mutated file either
//! parses to a valid working set or fails with a `Corrupt`/`Version` error, never a panic.
//! Mutations are checked twice: as is (the checksum catches them) and with the checksum
//! recomputed (so the structural checks behind it are exercised too).

use userfaultfd::serve::{SnapshotId, WorkingSet, WorkingSetError};

/// xorshift64*: a fixed seed gives the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= 8 {
        let body = bytes.len() - 8;
        let sum = fnv(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum.to_le_bytes());
    }
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 | 1 => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            2 => {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
            3 => {
                // A header field set to an extreme value.
                let field = 16 + 8 * rng.below(4);
                let v = [0, 1, u64::MAX, u64::MAX / 2, 1 << 40][rng.below(5)];
                if bytes.len() >= field + 8 {
                    bytes[field..field + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
            4 => {
                let n = rng.below(bytes.len());
                bytes.truncate(n.max(1));
            }
            _ => {
                let i = rng.below(bytes.len());
                bytes.insert(i, rng.next() as u8);
            }
        }
    }
}

fn check(bytes: &[u8]) -> bool {
    match WorkingSet::decode(bytes) {
        Ok(ws) => {
            // Whatever parses is a valid working set: it re-encodes to a file that parses to
            // itself.
            assert_eq!(WorkingSet::decode(&ws.encode()).unwrap(), ws);
            true
        }
        Err(WorkingSetError::Corrupt(why)) => {
            assert!(!why.is_empty());
            false
        }
        Err(WorkingSetError::Version(_)) => false,
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
}

#[test]
fn seeded_random_corruption() {
    let id = SnapshotId::new(64 << 20, 0xfeed);
    let order: Vec<u64> = (0..600u64).map(|k| (k * 7919 + 5) % 16384).collect();
    let original = WorkingSet::new(id, 4096, order).unwrap().encode();
    let mut rng = Rng(0x5eed_0f0b_adf1_1e00);
    let (mut parsed, mut resealed_parsed) = (0, 0);
    for _ in 0..20_000 {
        let mut bytes = original.clone();
        mutate(&mut rng, &mut bytes);
        if bytes == original {
            continue;
        }
        parsed += usize::from(check(&bytes));
        reseal(&mut bytes);
        resealed_parsed += usize::from(check(&bytes));
    }
    eprintln!("parsed: {parsed} as is, {resealed_parsed} resealed, of 20000");
    // Without resealing the checksum refuses them all (a bit flip always changes FNV-1a).
    assert_eq!(parsed, 0);
}

#[test]
fn record_of_another_snapshot_is_refused() {
    let ws = WorkingSet::new(SnapshotId::new(1 << 20, 1), 4096, vec![3, 1]).unwrap();
    let e = ws
        .check_applies_to(SnapshotId::new(1 << 20, 2), 4096)
        .unwrap_err();
    assert!(matches!(e, WorkingSetError::OtherSnapshot { .. }));
    assert!(e.to_string().contains("another snapshot"), "{e}");
    assert!(ws
        .check_applies_to(SnapshotId::new(1 << 20, 1), 4096)
        .is_ok());
    assert!(matches!(
        ws.check_applies_to(SnapshotId::new(1 << 20, 1), 2 << 20),
        Err(WorkingSetError::PageSize { .. })
    ));
}

#[test]
fn save_and_load() {
    // The temporary directory, or /dev/shm where it is not writable (ci/unprivileged runs the
    // tests as a user that may not write there).
    let name = format!("uffd-ws-{}", std::process::id());
    let dir = [std::env::temp_dir(), "/dev/shm".into()]
        .into_iter()
        .map(|d| d.join(&name))
        .find(|d| std::fs::create_dir_all(d).is_ok())
        .expect("no writable temporary directory (TMPDIR, /dev/shm)");
    let path = dir.join("run.ws");
    let ws = WorkingSet::new(SnapshotId::new(1 << 20, 1), 4096, vec![3, 1, 200]).unwrap();
    ws.save(&path).unwrap();
    assert_eq!(WorkingSet::load(&path).unwrap(), ws);
    let e = WorkingSet::load(dir.join("missing.ws")).unwrap_err();
    assert!(e.to_string().contains("missing.ws"), "{e}");

    // What is not a regular file is refused before reading: /dev/zero would be read for
    // ever, a FIFO would wait for a writer.
    for special in ["/dev/zero".into(), dir.clone()] {
        let e = WorkingSet::load(&special).unwrap_err();
        assert!(matches!(e, WorkingSetError::Io { .. }), "{special:?}: {e}");
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
    let fifo = dir.join("fifo.ws");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = WorkingSet::load(&fifo).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");

    // A file longer than its header allows is refused before it is read.
    let mut long = ws.encode();
    long.resize(long.len() + (1 << 20), 0);
    std::fs::write(&path, &long).unwrap();
    let e = WorkingSet::load(&path).unwrap_err();
    assert!(e.to_string().contains("its header allows at most"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A working set of a snapshot whose identity claims 2^64 bytes is refused, not allocated
/// for (its file's bitmap would be 2^49 bytes); up to the limit, checking costs what the list
/// costs.
#[test]
fn a_huge_snapshot_identity_is_refused_not_allocated() {
    let e = WorkingSet::new(SnapshotId::new(u64::MAX, 1), 4096, vec![3]).unwrap_err();
    assert!(matches!(e, WorkingSetError::Invalid(_)), "{e}");
    assert!(e.to_string().contains("at most"), "{e}");
    let id = SnapshotId::new(userfaultfd::serve::working_set::MAX_SNAPSHOT_LEN, 1);
    let ws = WorkingSet::new(id, 4096, vec![1 << 30, 3, 7]).unwrap();
    assert_eq!(ws.order(), &[1 << 30, 3, 7]);
    let e = WorkingSet::new(id, 4096, vec![3, 1 << 30, 3]).unwrap_err();
    assert!(e.to_string().contains("page 3 is listed twice"), "{e}");
    // A file whose header claims such a snapshot: refused before anything is allocated.
    let mut bytes = WorkingSet::new(SnapshotId::new(1 << 20, 1), 4096, vec![3])
        .unwrap()
        .encode();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = WorkingSet::decode(&bytes).unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
}
