use super::*;

fn ok(p: &KvPool) {
    p.check_invariants().unwrap();
}

#[test]
fn append_across_page_boundary() {
    let mut p = KvPool::new(4, 4);
    let s = p.create();
    assert_eq!(p.len(s), Ok(0));
    assert!(p.pages(s).unwrap().is_empty());
    let (c, slots) = p.append(s, 3).unwrap();
    assert!(c.is_empty());
    assert_eq!(slots, vec![(0, 0), (0, 1), (0, 2)]);
    let (c, slots) = p.append(s, 3).unwrap();
    assert!(c.is_empty());
    assert_eq!(slots, vec![(0, 3), (1, 0), (1, 1)]);
    assert_eq!(p.len(s), Ok(6));
    assert_eq!(p.pages(s).unwrap(), &[0, 1]);
    assert_eq!(p.free_pages(), 2);
    ok(&p);
}

#[test]
fn reserve_slots_commit() {
    let mut p = KvPool::new(4, 4);
    let s = p.create();
    assert!(matches!(p.slots(s, 1), Err(KvError::NotReserved { .. })));
    assert!(matches!(p.commit(s, 1), Err(KvError::NotReserved { .. })));
    assert!(p.reserve(s, 5).unwrap().is_empty());
    assert_eq!(p.len(s), Ok(0));
    assert_eq!(p.capacity(s), Ok(5));
    assert_eq!(p.pages(s).unwrap().len(), 2);
    ok(&p);
    // A smaller reservation keeps the larger one.
    p.reserve(s, 2).unwrap();
    assert_eq!(p.capacity(s), Ok(5));
    assert_eq!(p.slots(s, 5).unwrap().len(), 5);
    assert!(p.slots(s, 6).is_err());
    p.commit(s, 2).unwrap();
    assert_eq!(p.slots(s, 3).unwrap(), vec![(0, 2), (0, 3), (1, 0)]);
    assert!(p.commit(s, 4).is_err());
    ok(&p);
    // Truncating to the current length hands back the unused reservation.
    p.truncate(s, 2).unwrap();
    assert_eq!(p.capacity(s), Ok(2));
    assert_eq!(p.free_pages(), 3);
    ok(&p);
}

#[test]
fn fork_shares_full_pages_and_copies_partial() {
    let mut p = KvPool::new(16, 4);
    let s = p.create();
    p.append(s, 10).unwrap(); // pages 0, 1 full; page 2 holds 2 tokens
    let (kids, copies) = p.fork(s, 2).unwrap();
    assert_eq!(kids.len(), 2);
    assert_eq!(p.live_seqs(), 3);
    assert_eq!(
        copies,
        vec![
            PageCopy {
                src: 2,
                dst: 3,
                len: 2
            },
            PageCopy {
                src: 2,
                dst: 4,
                len: 2
            }
        ]
    );
    assert_eq!(p.refcount(0), 3);
    assert_eq!(p.refcount(1), 3);
    assert_eq!(p.refcount(2), 1);
    assert_eq!(p.pages(kids[0]).unwrap(), &[0, 1, 3]);
    assert_eq!(p.pages(kids[1]).unwrap(), &[0, 1, 4]);
    for k in &kids {
        assert_eq!(p.len(*k), Ok(10));
        // The child writes into its own copy without further copies.
        let (c, slots) = p.append(*k, 1).unwrap();
        assert!(c.is_empty());
        assert_eq!(p.refcount(slots[0].0), 1);
    }
    ok(&p);
}

#[test]
fn fork_page_aligned_copies_nothing() {
    let mut p = KvPool::new(8, 4);
    let s = p.create();
    p.append(s, 8).unwrap();
    let free = p.free_pages();
    let (kids, copies) = p.fork(s, 3).unwrap();
    assert!(copies.is_empty());
    assert_eq!(p.free_pages(), free);
    assert_eq!(p.refcount(0), 4);
    assert_eq!(p.refcount(1), 4);
    // Appending starts a fresh page for each, still without copies.
    for k in &kids {
        let (c, slots) = p.append(*k, 1).unwrap();
        assert!(c.is_empty());
        assert_eq!(slots[0].1, 0);
    }
    ok(&p);
    // Forking an empty sequence is fine too.
    let e = p.create();
    let (kids, copies) = p.fork(e, 2).unwrap();
    assert!(copies.is_empty());
    assert_eq!(p.len(kids[1]), Ok(0));
    ok(&p);
}

#[test]
fn truncate_and_free_return_pages() {
    let mut p = KvPool::new(8, 4);
    let s = p.create();
    p.append(s, 9).unwrap();
    assert_eq!(p.free_pages(), 5);
    p.truncate(s, 5).unwrap();
    assert_eq!(p.free_pages(), 6);
    assert_eq!(p.len(s), Ok(5));
    p.truncate(s, 4).unwrap();
    assert_eq!(p.free_pages(), 7);
    assert_eq!(
        p.truncate(s, 5),
        Err(KvError::BadTruncate {
            seq: s,
            len: 4,
            new_len: 5
        })
    );
    let (kids, _) = p.fork(s, 1).unwrap();
    p.free(s).unwrap();
    assert_eq!(p.refcount(0), 1, "the child still holds the shared page");
    assert_eq!(p.free_pages(), 7);
    p.free(kids[0]).unwrap();
    assert_eq!(p.free_pages(), 8);
    assert_eq!(p.live_seqs(), 0);
    ok(&p);
}

#[test]
fn unknown_seq_is_an_error() {
    let mut p = KvPool::new(4, 4);
    let s = p.create();
    p.free(s).unwrap();
    let e = Err(KvError::UnknownSeq(s));
    assert_eq!(p.len(s), e.clone().map(|()| 0));
    assert_eq!(p.free(s), e.clone());
    assert_eq!(p.truncate(s, 0), e.clone());
    assert_eq!(p.commit(s, 0), e.clone());
    assert!(p.pages(s).is_err());
    assert!(p.reserve(s, 1).is_err());
    assert!(p.slots(s, 0).is_err());
    assert!(p.append(s, 1).is_err());
    assert!(p.fork(s, 1).is_err());
    // Ids are not reused, so the stale one stays unknown.
    assert_ne!(p.create(), s);
    assert_eq!(p.refcount(1000), 0);
    ok(&p);
}

#[test]
fn out_of_pages_changes_nothing() {
    let mut p = KvPool::new(3, 4);
    let s = p.create();
    p.append(s, 6).unwrap();
    let before = (
        p.free_pages(),
        p.pages(s).unwrap().to_vec(),
        p.len(s),
        p.capacity(s),
    );
    assert_eq!(
        p.reserve(s, 7),
        Err(KvError::OutOfPages {
            needed: 2,
            free: 1,
            total: 3
        })
    );
    assert_eq!(
        p.reserve(s, usize::MAX).unwrap_err(),
        p.reserve(s, usize::MAX).unwrap_err()
    );
    assert!(p.append(s, 100).is_err());
    let after = (
        p.free_pages(),
        p.pages(s).unwrap().to_vec(),
        p.len(s),
        p.capacity(s),
    );
    assert_eq!(before, after);
    ok(&p);
    // Fork needs one page per child for the partial page: 2 children, 1 free page.
    let live = p.live_seqs();
    assert_eq!(
        p.fork(s, 2),
        Err(KvError::OutOfPages {
            needed: 2,
            free: 1,
            total: 3
        })
    );
    assert_eq!(p.live_seqs(), live);
    assert_eq!(p.free_pages(), 1);
    assert_eq!(p.refcount(0), 1);
    ok(&p);
}

#[test]
fn copy_on_write_after_truncating_into_shared_page() {
    let mut p = KvPool::new(8, 4);
    let s = p.create();
    p.append(s, 8).unwrap();
    let (kids, _) = p.fork(s, 1).unwrap();
    let k = kids[0];
    // Cut into the middle of shared page 1: it stays shared.
    p.truncate(k, 6).unwrap();
    assert_eq!(p.pages(k).unwrap(), &[0, 1]);
    assert_eq!(p.refcount(1), 2);
    ok(&p);
    // Reserving copies the two live slots of page 1 before anything is written.
    let copies = p.reserve(k, 1).unwrap();
    assert_eq!(
        copies,
        vec![PageCopy {
            src: 1,
            dst: 2,
            len: 2
        }]
    );
    assert_eq!(p.refcount(1), 1);
    assert_eq!(p.refcount(2), 1);
    assert_eq!(p.slots(k, 1).unwrap(), vec![(2, 2)]);
    ok(&p);
    // A second reserve with the reservation in place must not copy again.
    assert!(p.reserve(k, 3).unwrap().is_empty());
    p.commit(k, 3).unwrap();
    ok(&p);
    // Out of pages during copy-on-write leaves the shared page shared.
    let mut p = KvPool::new(2, 4);
    let s = p.create();
    p.append(s, 8).unwrap();
    let k = p.fork(s, 1).unwrap().0[0];
    p.truncate(k, 7).unwrap();
    assert_eq!(
        p.reserve(k, 1),
        Err(KvError::OutOfPages {
            needed: 1,
            free: 0,
            total: 2
        })
    );
    assert_eq!(p.refcount(1), 2);
    ok(&p);
}

#[test]
fn bad_config() {
    assert!(KvPool::try_new(4, 0).is_err());
    let p = KvPool::try_new(0, 4).unwrap();
    assert_eq!(p.free_pages(), 0);
    ok(&p);
}

#[test]
fn fork_of_full_pages_takes_no_free_page() {
    let mut p = KvPool::new(3, 4);
    let s = p.create();
    p.append(s, 6).unwrap();
    // One free page: too few for two copies of the partial page, enough for nothing else.
    let filler = p.create();
    p.append(filler, 4).unwrap();
    assert_eq!(p.free_pages(), 0);
    let kids = p.fork_full_pages(s, 2).unwrap();
    assert_eq!(p.free_pages(), 0);
    for &k in &kids {
        assert_eq!(p.len(k), Ok(4), "rounded down to the full page");
        assert_eq!(p.pages(k).unwrap(), &p.pages(s).unwrap()[..1]);
    }
    assert_eq!(p.refcount(p.pages(s).unwrap()[0]), 3);
    ok(&p);
    // A child grows by copy-on-write of nothing: its next page is its own.
    p.free(filler).unwrap();
    p.append(kids[0], 3).unwrap();
    assert_eq!(p.len(kids[0]), Ok(7));
    assert_eq!(p.len(s), Ok(6), "the parent is untouched");
    ok(&p);
    for k in kids {
        p.free(k).unwrap();
    }
    p.free(s).unwrap();
    assert_eq!(p.free_pages(), 3);
    ok(&p);
}
