//! Merging records of several runs into one.

use std::collections::HashMap;

use super::{WorkingSet, WorkingSetError};

/// The union of `records` (of one snapshot and page size), each page at the earliest
/// position it holds in *any* record: pages are ordered by that position, ties by the record
/// that holds it there (the earlier record first). So a page that some run touched early is
/// prefetched early, whichever run it was and wherever the other runs had it:
/// `merge([[1, 2, 3, 4, 5], [5]])` is `[1, 5, 2, 3, 4]` (5 is first in the second run).
///
/// Positions are absolute, not relative to a record's length: a short record (the pages a
/// replaying run missed, which [`ServerBuilder::record`](crate::serve::ServerBuilder::record)
/// gives) interleaves with the front of a long one, page for page, rather than being spread
/// over it — its pages were faulted on, which is what replay exists to prevent, so they
/// come early.
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
            // The earliest position wins, whichever record comes first in `records`.
            let key = first_seen.entry(page).or_insert((position, record));
            *key = (*key).min((position, record));
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

    #[test]
    fn an_earlier_position_in_a_later_record_wins() {
        let id = SnapshotId::new(1 << 20, 7);
        let long = WorkingSet::new(id, 4096, vec![1, 2, 3, 4, 5]).unwrap();
        let short = WorkingSet::new(id, 4096, vec![5]).unwrap();
        assert_eq!(
            merge(&[long.clone(), short.clone()]).unwrap().order(),
            &[1, 5, 2, 3, 4]
        );
        // The order of the records decides ties only.
        assert_eq!(
            merge(&[short, long.clone()]).unwrap().order(),
            &[5, 1, 2, 3, 4]
        );
        let reversed = WorkingSet::new(id, 4096, vec![5, 4, 3, 2, 1]).unwrap();
        // Ties at every position: the first record's page first.
        assert_eq!(merge(&[long, reversed]).unwrap().order(), &[1, 5, 2, 4, 3]);
    }
}
