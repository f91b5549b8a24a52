//! Randomized test of the KV page pool against a plain model: storage is simulated as one
//! `Vec<u64>` per page, every copy the pool asks for is performed and every slot it hands out
//! gets a unique value, and each live sequence read back through its page table must give
//! exactly the tokens the model says it holds.

use std::collections::BTreeMap;

use ponder::kv::{KvError, KvPool, PageCopy, PageId, SeqId};

/// splitmix64: tiny, seeded, good enough to drive a test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Free pages, live sequences, and each sequence's (id, pages, len, capacity).
type Snapshot = (usize, usize, Vec<(SeqId, Vec<PageId>, usize, usize)>);

struct Sim {
    pool: KvPool,
    /// What the backend's storage would hold, one Vec per page.
    store: Vec<Vec<u64>>,
    /// The plain model: the tokens each live sequence holds.
    model: BTreeMap<SeqId, Vec<u64>>,
    /// Sequences that were freed, to check they stay unknown.
    dead: Vec<SeqId>,
    next_token: u64,
    failures: usize,
}

impl Sim {
    fn new(n_pages: usize, page_size: usize) -> Self {
        Sim {
            pool: KvPool::new(n_pages, page_size),
            store: vec![vec![u64::MAX; page_size]; n_pages],
            model: BTreeMap::new(),
            dead: Vec::new(),
            next_token: 0,
            failures: 0,
        }
    }

    fn copy(&mut self, copies: &[PageCopy]) {
        for c in copies {
            assert_ne!(c.src, c.dst);
            assert!(c.len > 0 && c.len < self.pool.page_size(), "{c:?}");
            assert_eq!(
                self.pool.refcount(c.dst),
                1,
                "copy into a shared page {c:?}"
            );
            let src = self.store[c.src as usize][..c.len].to_vec();
            self.store[c.dst as usize][..c.len].copy_from_slice(&src);
        }
    }

    fn write(&mut self, s: SeqId, slots: &[(PageId, usize)]) {
        for &(p, off) in slots {
            assert_eq!(self.pool.refcount(p), 1, "slot in a shared page {p}");
            assert!(off < self.pool.page_size());
            self.store[p as usize][off] = self.next_token;
            self.model.get_mut(&s).unwrap().push(self.next_token);
            self.next_token += 1;
        }
    }

    fn pick(&mut self, rng: &mut Rng) -> Option<SeqId> {
        if self.model.is_empty() {
            return None;
        }
        let i = rng.below(self.model.len());
        self.model.keys().nth(i).copied()
    }

    /// Checks that a failed op left everything as it was.
    fn snapshot(&self) -> Snapshot {
        let seqs = self
            .model
            .keys()
            .map(|&s| {
                let p = &self.pool;
                (
                    s,
                    p.pages(s).unwrap().to_vec(),
                    p.len(s).unwrap(),
                    p.capacity(s).unwrap(),
                )
            })
            .collect();
        (self.pool.free_pages(), self.pool.live_seqs(), seqs)
    }

    fn out_of_pages(&mut self, e: KvError, before: &Snapshot) {
        match e {
            KvError::OutOfPages {
                needed,
                free,
                total,
            } => {
                assert!(needed > free);
                assert_eq!(total, self.pool.n_pages());
            }
            e => panic!("unexpected error {e}"),
        }
        assert_eq!(&self.snapshot(), before, "a failed op changed the pool");
        self.failures += 1;
    }

    fn step(&mut self, rng: &mut Rng) {
        let ps = self.pool.page_size();
        match rng.below(100) {
            0..=9 => {
                let s = self.pool.create();
                assert!(self.model.insert(s, Vec::new()).is_none());
            }
            10..=44 => {
                let Some(s) = self.pick(rng) else { return };
                let n = 1 + rng.below(2 * ps + 1);
                let before = self.snapshot();
                match self.pool.append(s, n) {
                    Ok((copies, slots)) => {
                        assert_eq!(slots.len(), n);
                        self.copy(&copies);
                        self.write(s, &slots);
                    }
                    Err(e) => self.out_of_pages(e, &before),
                }
            }
            45..=59 => {
                // Reserve more than is used, as a batch that stops early would.
                let Some(s) = self.pick(rng) else { return };
                let n = 1 + rng.below(2 * ps + 1);
                let before = self.snapshot();
                match self.pool.reserve(s, n) {
                    Ok(copies) => {
                        self.copy(&copies);
                        self.pool.check_invariants().unwrap();
                        let used = rng.below(n + 1);
                        let slots = self.pool.slots(s, used).unwrap();
                        self.write(s, &slots);
                        self.pool.commit(s, used).unwrap();
                        let room = self.pool.capacity(s).unwrap() - self.pool.len(s).unwrap();
                        assert!(room >= n - used);
                        assert!(self.pool.slots(s, room).is_ok());
                        assert!(self.pool.slots(s, room + 1).is_err());
                        if rng.below(2) == 0 {
                            let len = self.pool.len(s).unwrap();
                            self.pool.truncate(s, len).unwrap();
                        }
                    }
                    Err(e) => self.out_of_pages(e, &before),
                }
            }
            60..=71 => {
                let Some(s) = self.pick(rng) else { return };
                let n = rng.below(4);
                let before = self.snapshot();
                match self.pool.fork(s, n) {
                    Ok((kids, copies)) => {
                        assert_eq!(kids.len(), n);
                        self.copy(&copies);
                        let toks = self.model[&s].clone();
                        let want_copies = if toks.len().is_multiple_of(ps) { 0 } else { n };
                        assert_eq!(copies.len(), want_copies);
                        for k in kids {
                            assert!(self.model.insert(k, toks.clone()).is_none());
                        }
                    }
                    Err(e) => self.out_of_pages(e, &before),
                }
            }
            72..=86 => {
                let Some(s) = self.pick(rng) else { return };
                let len = self.model[&s].len();
                let new_len = if rng.below(4) == 0 {
                    len
                } else {
                    rng.below(len + 1)
                };
                self.pool.truncate(s, new_len).unwrap();
                self.model.get_mut(&s).unwrap().truncate(new_len);
                assert_eq!(
                    self.pool.truncate(s, new_len + 1),
                    Err(KvError::BadTruncate {
                        seq: s,
                        len: new_len,
                        new_len: new_len + 1
                    })
                );
            }
            87..=96 => {
                let Some(s) = self.pick(rng) else { return };
                self.pool.free(s).unwrap();
                self.model.remove(&s);
                self.dead.push(s);
            }
            _ => {
                if let Some(&s) = self.dead.get(rng.below(self.dead.len().max(1))) {
                    assert_eq!(self.pool.len(s), Err(KvError::UnknownSeq(s)));
                    assert_eq!(self.pool.append(s, 1).unwrap_err(), KvError::UnknownSeq(s));
                    assert_eq!(self.pool.fork(s, 1).unwrap_err(), KvError::UnknownSeq(s));
                    assert_eq!(self.pool.free(s), Err(KvError::UnknownSeq(s)));
                }
            }
        }
    }

    fn check(&self) {
        self.pool.check_invariants().unwrap();
        assert_eq!(self.pool.live_seqs(), self.model.len());
        let ps = self.pool.page_size();
        for (&s, toks) in &self.model {
            assert_eq!(self.pool.len(s).unwrap(), toks.len());
            let pages = self.pool.pages(s).unwrap();
            let read: Vec<u64> = (0..toks.len())
                .map(|i| self.store[pages[i / ps] as usize][i % ps])
                .collect();
            assert_eq!(&read, toks, "sequence {s:?} reads back wrong");
        }
    }
}

fn run(seed: u64, n_pages: usize, page_size: usize, ops: usize) -> Sim {
    let mut rng = Rng(seed);
    let mut sim = Sim::new(n_pages, page_size);
    for i in 0..ops {
        sim.step(&mut rng);
        sim.check();
        // Empty the pool now and then, so that runs see both scarcity and plenty.
        if i % 997 == 996 {
            for s in sim.model.keys().copied().collect::<Vec<_>>() {
                sim.pool.free(s).unwrap();
            }
            sim.model.clear();
            assert_eq!(sim.pool.free_pages(), n_pages);
        }
    }
    sim
}

#[test]
fn randomized_against_plain_model() {
    let mut failures = 0;
    let mut tokens = 0;
    for seed in 0..12u64 {
        let (n_pages, page_size) = [(24, 4), (40, 3), (16, 1), (64, 8)][seed as usize % 4];
        let sim = run(
            seed.wrapping_mul(0x1234_5678_9abc_def1) ^ 0x5eed,
            n_pages,
            page_size,
            4000,
        );
        failures += sim.failures;
        tokens += sim.next_token;
    }
    // The pools are small on purpose: make sure the out-of-pages paths were exercised.
    assert!(failures > 100, "only {failures} out-of-pages failures");
    assert!(tokens > 10_000, "only {tokens} tokens written");
}
