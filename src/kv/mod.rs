//! Paged KV cache bookkeeping.
//!
//! The backend owns the storage, shaped `[n_pages][page_size][...]` per layer for K and V; this
//! module only decides which page and slot every token of every sequence lives in, and which
//! page copies the backend must perform before writing. Keeping the metadata free of tensors
//! lets it be tested exhaustively on the host and shared by every backend.
//!
//! Pages are reference counted so that forked sequences share their common prefix. The one rule
//! everything else serves: a page with refcount > 1 is never written. [`KvPool::slots`] only
//! hands out slots in pages the sequence owns alone, and [`KvPool::reserve`] establishes that by
//! copying a shared, partly filled last page (copy-on-write) before any slot in it is handed out.
//!
//! Capacity: each sequence has a committed length `len` (tokens the backend has written) and a
//! reserved length `reserved >= len` (room made by `reserve` but not yet committed). Its page
//! table holds exactly `ceil(reserved / page_size)` pages; every page holding a slot in
//! `len..reserved` has refcount 1. `truncate` (even to the current length) drops the reservation,
//! which is how a caller hands back pages it reserved but will not use.
//!
//! Sequence ids are monotonic (wrapping after 2^32 creations, skipping ids still live) rather
//! than a reused slab index: a stale id of a freed sequence then reports `UnknownSeq` instead of
//! silently aliasing a newer sequence, which matters when a scheduler holds ids across steps.

use std::collections::HashMap;

#[cfg(test)]
mod tests;

pub type PageId = u32;

/// Where one token goes: (page, offset within the page).
pub type Slot = (PageId, usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u32);

/// A copy the backend must perform on its K and V storage (all layers): copy the first `len`
/// token slots of page `src` into page `dst`. Perform copies in order, before writing any slot
/// and before further pool calls: once `src` is released it may be handed out and overwritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageCopy {
    pub src: PageId,
    pub dst: PageId,
    pub len: usize,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KvError {
    #[error("KV cache out of pages: need {needed}, {free} free of {total}")]
    OutOfPages {
        needed: usize,
        free: usize,
        total: usize,
    },
    #[error("unknown sequence {0:?}")]
    UnknownSeq(SeqId),
    #[error(
        "sequence {seq:?} has {reserved} token slots reserved, not the {wanted} asked for; \
         call reserve first"
    )]
    NotReserved {
        seq: SeqId,
        wanted: usize,
        reserved: usize,
    },
    #[error("cannot truncate sequence {seq:?} of length {len} to {new_len}")]
    BadTruncate {
        seq: SeqId,
        len: usize,
        new_len: usize,
    },
    #[error("invalid KV pool: {n_pages} pages of {page_size} tokens")]
    BadConfig { n_pages: usize, page_size: usize },
}

#[derive(Clone, Debug, Default)]
struct Seq {
    /// Tokens written and committed.
    len: usize,
    /// Tokens there is room for; `len <= reserved`, `pages.len() == ceil(reserved / page_size)`.
    reserved: usize,
    pages: Vec<PageId>,
}

#[derive(Clone, Debug)]
pub struct KvPool {
    page_size: usize,
    refcount: Vec<u32>,
    /// A stack, so that recently freed (likely still cached) pages are reused first.
    free: Vec<PageId>,
    seqs: HashMap<u32, Seq>,
    next_id: u32,
}

impl KvPool {
    /// # Panics
    /// If `page_size` is 0 or `n_pages` does not fit a [`PageId`]; see [`KvPool::try_new`].
    pub fn new(n_pages: usize, page_size: usize) -> Self {
        match Self::try_new(n_pages, page_size) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn try_new(n_pages: usize, page_size: usize) -> Result<Self, KvError> {
        // Page ids must fit PageId, and n_pages itself is reported as a count, so cap at u32::MAX.
        if page_size == 0 || n_pages > u32::MAX as usize {
            return Err(KvError::BadConfig { n_pages, page_size });
        }
        // Reversed so that pops hand out pages 0, 1, 2, ...: deterministic and easy to read.
        let free = (0..n_pages as PageId).rev().collect();
        Ok(KvPool {
            page_size,
            refcount: vec![0; n_pages],
            free,
            seqs: HashMap::new(),
            next_id: 0,
        })
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    pub fn n_pages(&self) -> usize {
        self.refcount.len()
    }

    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    pub fn live_seqs(&self) -> usize {
        self.seqs.len()
    }

    pub fn contains(&self, s: SeqId) -> bool {
        self.seqs.contains_key(&s.0)
    }

    /// Live sequence ids, in no particular order.
    pub fn seq_ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().map(|&k| SeqId(k))
    }

    /// Refcount of page `p`; 0 for a free page and for an id outside the pool.
    pub fn refcount(&self, p: PageId) -> u32 {
        self.refcount.get(p as usize).copied().unwrap_or(0)
    }

    /// An empty sequence. Holds no pages until the first `reserve`.
    pub fn create(&mut self) -> SeqId {
        // Skipping live ids only matters after the counter wraps; it ends because fewer than
        // 2^32 sequences can be live at once in any realistic pool.
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if let std::collections::hash_map::Entry::Vacant(e) = self.seqs.entry(id) {
                e.insert(Seq::default());
                return SeqId(id);
            }
        }
    }

    pub fn len(&self, s: SeqId) -> Result<usize, KvError> {
        Ok(self.seq(s)?.len)
    }

    /// Tokens there is room for (committed plus reserved).
    pub fn capacity(&self, s: SeqId) -> Result<usize, KvError> {
        Ok(self.seq(s)?.reserved)
    }

    /// The page table: token at position `i` lives at slot `i % page_size` of `pages[i / page_size]`.
    pub fn pages(&self, s: SeqId) -> Result<&[PageId], KvError> {
        Ok(&self.seq(s)?.pages)
    }

    /// Makes room for `n` more tokens at the end of `s`, allocating pages as needed. If the
    /// next slot lies in a partly filled page shared with another sequence, that page is first
    /// copied (copy-on-write) and the copy is returned; the backend must perform it before
    /// writing. Atomic: on `OutOfPages` nothing changes. Does not change `len`. Reserving less
    /// than is already reserved is a no-op.
    pub fn reserve(&mut self, s: SeqId, n: usize) -> Result<Vec<PageCopy>, KvError> {
        let ps = self.page_size;
        let seq = self.seq(s)?;
        let (len, reserved, have) = (seq.len, seq.reserved, seq.pages.len());
        let total = self.n_pages();
        let Some(target) = len.checked_add(n) else {
            return Err(KvError::OutOfPages {
                needed: usize::MAX,
                free: self.free.len(),
                total,
            });
        };
        if target <= reserved {
            return Ok(Vec::new());
        }
        // Slots in len..reserved are exclusively owned by invariant, so a shared page can only
        // be in the way when nothing is reserved yet and the last committed page is partial.
        let cow = if reserved == len && len % ps != 0 {
            let p = seq.pages[len / ps];
            (self.refcount[p as usize] > 1).then_some(p)
        } else {
            None
        };
        let needed = target.div_ceil(ps) - have + cow.is_some() as usize;
        if needed > self.free.len() {
            return Err(KvError::OutOfPages {
                needed,
                free: self.free.len(),
                total,
            });
        }
        let mut copies = Vec::new();
        if let Some(src) = cow {
            let dst = self.alloc();
            self.refcount[src as usize] -= 1;
            copies.push(PageCopy {
                src,
                dst,
                len: len % ps,
            });
            self.seqs.get_mut(&s.0).expect("checked above").pages[len / ps] = dst;
        }
        let new: Vec<PageId> = (have..target.div_ceil(ps)).map(|_| self.alloc()).collect();
        let seq = self.seqs.get_mut(&s.0).expect("checked above");
        seq.pages.extend(new);
        seq.reserved = target;
        Ok(copies)
    }

    /// Slots `(page, offset in page)` for the next `n` tokens, positions `len..len + n`. They
    /// must have been reserved; call `commit` once the backend has written them.
    pub fn slots(&self, s: SeqId, n: usize) -> Result<Vec<Slot>, KvError> {
        let seq = self.seq(s)?;
        self.check_reserved(s, seq, n)?;
        let ps = self.page_size;
        Ok((seq.len..seq.len + n)
            .map(|i| (seq.pages[i / ps], i % ps))
            .collect())
    }

    /// Advances `len` by `n`, after the backend wrote those (reserved) slots.
    pub fn commit(&mut self, s: SeqId, n: usize) -> Result<(), KvError> {
        let seq = self.seq(s)?;
        self.check_reserved(s, seq, n)?;
        self.seqs.get_mut(&s.0).expect("checked above").len += n;
        Ok(())
    }

    /// `reserve`, `slots` and `commit` in one call: returns the copies to perform first and the
    /// slots to write. Only for callers that cannot fail between reserving and writing.
    pub fn append(&mut self, s: SeqId, n: usize) -> Result<(Vec<PageCopy>, Vec<Slot>), KvError> {
        let copies = self.reserve(s, n)?;
        let slots = self.slots(s, n)?;
        self.commit(s, n)?;
        Ok((copies, slots))
    }

    /// `n` children of `s`, each of `s`'s length: every full page of `s` is shared (refcount
    /// incremented) and each child gets its own copy of the partly filled last page, if any, so
    /// that children can append right away without a later copy. Reserved, uncommitted room
    /// of `s` is not inherited. Atomic on `OutOfPages`.
    pub fn fork(&mut self, s: SeqId, n: usize) -> Result<(Vec<SeqId>, Vec<PageCopy>), KvError> {
        self.fork_inner(s, n, true)
    }

    /// `n` children of `s` that share only its full pages: each is `s`'s length rounded down
    /// to a page, so the fork takes no free page (the partial last page's tokens are fed
    /// again by whoever extends a child). The fallback when the pool is too short for `fork`.
    pub fn fork_full_pages(&mut self, s: SeqId, n: usize) -> Result<Vec<SeqId>, KvError> {
        Ok(self.fork_inner(s, n, false)?.0)
    }

    fn fork_inner(
        &mut self,
        s: SeqId,
        n: usize,
        copy_partial: bool,
    ) -> Result<(Vec<SeqId>, Vec<PageCopy>), KvError> {
        let ps = self.page_size;
        let seq = self.seq(s)?;
        let full = seq.len / ps;
        let len = if copy_partial { seq.len } else { full * ps };
        let partial = (len % ps != 0).then(|| seq.pages[full]);
        let needed = if partial.is_some() { n } else { 0 };
        if needed > self.free.len() {
            let (free, total) = (self.free.len(), self.n_pages());
            return Err(KvError::OutOfPages {
                needed,
                free,
                total,
            });
        }
        let shared: Vec<PageId> = seq.pages[..full].to_vec();
        let (mut kids, mut copies) = (Vec::with_capacity(n), Vec::new());
        for _ in 0..n {
            let mut pages = shared.clone();
            for &p in &shared {
                self.refcount[p as usize] += 1;
            }
            if let Some(src) = partial {
                let dst = self.alloc();
                copies.push(PageCopy {
                    src,
                    dst,
                    len: len % ps,
                });
                pages.push(dst);
            }
            let kid = self.create();
            *self.seqs.get_mut(&kid.0).expect("just created") = Seq {
                len,
                reserved: len,
                pages,
            };
            kids.push(kid);
        }
        Ok((kids, copies))
    }

    /// Drops tokens past `new_len` (`new_len <= len`) and any reservation, releasing pages no
    /// longer needed. Cutting into the middle of a shared page is fine: it stays shared and the
    /// next `reserve` copies it.
    pub fn truncate(&mut self, s: SeqId, new_len: usize) -> Result<(), KvError> {
        let ps = self.page_size;
        let seq = self.seqs.get_mut(&s.0).ok_or(KvError::UnknownSeq(s))?;
        if new_len > seq.len {
            return Err(KvError::BadTruncate {
                seq: s,
                len: seq.len,
                new_len,
            });
        }
        seq.len = new_len;
        seq.reserved = new_len;
        let dropped = seq.pages.split_off(new_len.div_ceil(ps));
        for p in dropped {
            self.release(p);
        }
        Ok(())
    }

    /// Releases all pages of `s` and forgets it; its id is not reused until the ids wrap.
    pub fn free(&mut self, s: SeqId) -> Result<(), KvError> {
        let seq = self.seqs.remove(&s.0).ok_or(KvError::UnknownSeq(s))?;
        for p in seq.pages {
            self.release(p);
        }
        Ok(())
    }

    /// Checks the bookkeeping from scratch (O(pages + page-table entries)), for tests:
    /// - every page's refcount equals the number of page-table entries naming it, and no page
    ///   appears twice in one table;
    /// - the free list holds exactly the pages with refcount 0, each once;
    /// - each sequence has `len <= reserved` and exactly `ceil(reserved / page_size)` pages, so
    ///   reserved room shows as extra pages past `ceil(len / page_size)`;
    /// - every page holding a reserved, uncommitted slot has refcount 1 (it is safe to write).
    pub fn check_invariants(&self) -> Result<(), String> {
        let ps = self.page_size;
        let n = self.n_pages();
        let mut refs = vec![0u64; n];
        // Index of the last sequence that named each page, to spot a page twice in one table.
        let mut last_seen = vec![usize::MAX; n];
        for (i, (&id, seq)) in self.seqs.iter().enumerate() {
            if seq.len > seq.reserved {
                return Err(format!(
                    "seq {id}: len {} > reserved {}",
                    seq.len, seq.reserved
                ));
            }
            if seq.pages.len() != seq.reserved.div_ceil(ps) {
                return Err(format!(
                    "seq {id}: {} pages for {} reserved tokens (len {}, page size {ps})",
                    seq.pages.len(),
                    seq.reserved,
                    seq.len
                ));
            }
            for &p in &seq.pages {
                let Some(r) = refs.get_mut(p as usize) else {
                    return Err(format!("seq {id}: page {p} out of range (pool has {n})"));
                };
                if last_seen[p as usize] == i {
                    return Err(format!("seq {id}: page {p} appears twice in its table"));
                }
                last_seen[p as usize] = i;
                *r += 1;
            }
            if seq.reserved > seq.len {
                for &p in &seq.pages[seq.len / ps..] {
                    if self.refcount[p as usize] != 1 {
                        return Err(format!(
                            "seq {id}: page {p} holds reserved slots but has refcount {}",
                            self.refcount[p as usize]
                        ));
                    }
                }
            }
        }
        for (p, (&want, &have)) in refs.iter().zip(&self.refcount).enumerate() {
            if want != have as u64 {
                return Err(format!(
                    "page {p}: refcount {have}, but {want} page-table references"
                ));
            }
        }
        let mut in_free = vec![false; n];
        for &p in &self.free {
            match in_free.get_mut(p as usize) {
                None => return Err(format!("free list holds out-of-range page {p}")),
                Some(true) => return Err(format!("free list holds page {p} twice")),
                Some(f) => *f = true,
            }
            if self.refcount[p as usize] != 0 {
                return Err(format!(
                    "free page {p} has refcount {}",
                    self.refcount[p as usize]
                ));
            }
        }
        if let Some(p) = (0..n).find(|&p| self.refcount[p] == 0 && !in_free[p]) {
            return Err(format!(
                "page {p} has refcount 0 but is not on the free list (leaked)"
            ));
        }
        Ok(())
    }

    fn seq(&self, s: SeqId) -> Result<&Seq, KvError> {
        self.seqs.get(&s.0).ok_or(KvError::UnknownSeq(s))
    }

    fn check_reserved(&self, s: SeqId, seq: &Seq, n: usize) -> Result<(), KvError> {
        match seq.len.checked_add(n) {
            Some(end) if end <= seq.reserved => Ok(()),
            _ => Err(KvError::NotReserved {
                seq: s,
                wanted: n,
                reserved: seq.reserved - seq.len,
            }),
        }
    }

    /// Callers check `free_pages()` first, so that failures leave no half-done work behind.
    fn alloc(&mut self) -> PageId {
        let p = self
            .free
            .pop()
            .expect("caller checked that enough pages are free");
        self.refcount[p as usize] = 1;
        p
    }

    fn release(&mut self, p: PageId) {
        let r = &mut self.refcount[p as usize];
        *r -= 1;
        if *r == 0 {
            self.free.push(p);
        }
    }
}
