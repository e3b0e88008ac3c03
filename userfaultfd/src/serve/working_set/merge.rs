//! Merging records of several runs into one.

use std::collections::HashMap;

use super::{WorkingSet, WorkingSetError};

/// The union of `records` (of one snapshot and page size), ordered by first appearance: a
/// page comes at the earliest position it holds in any record (ties go to the earlier
/// record). So a page that some run touched early is prefetched early, whichever run it was.
///
/// # Errors
///
/// [`WorkingSetError::Invalid`] when there is no record, or they were made on different
/// snapshots or with different page sizes.
pub fn merge(records: &[WorkingSet]) -> Result<WorkingSet, WorkingSetError> {
    let Some(first) = records.first() else {
        return Err(WorkingSetError::Invalid("no record to merge".into()));
    };
    for (i, r) in records.iter().enumerate() {
        if r.snapshot != first.snapshot || r.page_size != first.page_size {
            return Err(WorkingSetError::Invalid(format!(
                "record {i} was made on snapshot {} with pages of {} bytes, record 0 on {} with \
                 pages of {} bytes: records of different snapshots cannot be merged",
                r.snapshot, r.page_size, first.snapshot, first.page_size
            )));
        }
    }
    // The earliest (position, record) of each page.
    let mut first_seen: HashMap<u64, (usize, usize)> = HashMap::new();
    for (record, r) in records.iter().enumerate() {
        for (position, &page) in r.order.iter().enumerate() {
            first_seen.entry(page).or_insert((position, record));
        }
    }
    let mut pages: Vec<(u64, (usize, usize))> = first_seen.into_iter().collect();
    pages.sort_unstable_by_key(|&(_, key)| key);
    Ok(WorkingSet {
        snapshot: first.snapshot,
        page_size: first.page_size,
        order: pages.into_iter().map(|(page, _)| page).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::SnapshotId;
    use super::*;

    #[test]
    fn union_by_first_appearance() {
        let id = SnapshotId::new(1 << 20, 7);
        let a = WorkingSet::new(id, 4096, vec![5, 1, 9]).unwrap();
        let b = WorkingSet::new(id, 4096, vec![2, 5, 3, 8]).unwrap();
        let m = merge(&[a.clone(), b]).unwrap();
        // Positions: 5 (0,a) 2 (0,b) 1 (1,a) 9 (2,a) 3 (2,b) 8 (3,b).
        assert_eq!(m.order(), &[5, 2, 1, 9, 3, 8]);
        assert_eq!(merge(std::slice::from_ref(&a)).unwrap(), a);
        let other = WorkingSet::new(SnapshotId::new(1 << 20, 8), 4096, vec![1]).unwrap();
        assert!(merge(&[a, other]).is_err());
        assert!(merge(&[]).is_err());
    }
}
