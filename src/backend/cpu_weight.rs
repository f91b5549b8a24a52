//! How the CPU backend holds a weight: f32 as loaded, or bf16 bits for a matrix from a bf16
//! checkpoint or a synthetic model. bf16 halves the memory (Mistral-7B in ~14.5 GB instead of
//! ~29 GB) and loses nothing: `linear` and `embed` widen rows just before use, and widening is
//! exact, so every product is the one the f32 copy of the same values gives.
use super::cpu::F32;
use super::WeightData;
use anyhow::{bail, Result};

/// Where a weight's values live, in the dtype they were loaded in: f32, or bf16 bits for a
/// matrix from a bf16 checkpoint or a synthetic model (half the memory; `linear` and `embed`
/// widen rows just before use, exactly, so the results are those of the same values as f32).
pub enum CpuStore {
    Mapped(crate::model::weights::MappedF32),
    Owned(Vec<f32>),
    MappedBf16(crate::model::weights::MappedBf16),
    OwnedBf16(Vec<u16>),
}

/// A store's values, borrowed.
#[derive(Clone, Copy)]
pub(super) enum Vals<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

impl Vals<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Vals::F32(v) => v.len(),
            Vals::Bf16(v) => v.len(),
        }
    }
}

pub struct CpuWeight {
    pub shape: Vec<usize>,
    /// Row blocks in order: one for an ordinary weight, several for a stacked projection
    /// (Backend::stacked_weight), whose memory-mapped parts stay in the map.
    pub(super) parts: Vec<CpuStore>,
}

impl CpuStore {
    pub(super) fn vals(&self) -> Vals<'_> {
        match self {
            CpuStore::Mapped(m) => Vals::F32(m.as_slice()),
            CpuStore::Owned(v) => Vals::F32(v),
            CpuStore::MappedBf16(m) => Vals::Bf16(m.as_slice()),
            CpuStore::OwnedBf16(v) => Vals::Bf16(v),
        }
    }
}

impl CpuWeight {
    /// The values of a weight held in one f32 block: the vectors (norms, biases), which are
    /// always f32. Matrices are read by `linear` (through `blocks`) and `embed` only.
    pub fn data(&self) -> Result<&[f32]> {
        match &self.parts[..] {
            [one] => match one.vals() {
                Vals::F32(v) => Ok(v),
                Vals::Bf16(_) => {
                    bail!("a weight held as bf16 is an operand of linear and embed only")
                }
            },
            _ => bail!("a stacked weight is an operand of linear only"),
        }
    }
    /// The row blocks, in order.
    pub(super) fn blocks(&self) -> Vec<Vals<'_>> {
        self.parts.iter().map(CpuStore::vals).collect()
    }
    /// Bytes per value (4 for f32, 2 for bf16), for the ledger's byte counts.
    pub(super) fn value_bytes(&self) -> u64 {
        match self.parts.first().map(CpuStore::vals) {
            Some(Vals::Bf16(_)) => 2,
            _ => F32,
        }
    }
    pub(super) fn rows_cols(&self) -> (usize, usize) {
        match self.shape[..] {
            [r, c] => (r, c),
            [c] => (1, c),
            _ => (0, 0),
        }
    }
}

/// Holds `data` as loaded, except that a bf16 vector is widened (norms and biases are
/// read by f32 loops, and are small).
pub(super) fn store(data: WeightData, matrix: bool) -> CpuStore {
    match data {
        WeightData::Mapped(m) => CpuStore::Mapped(m),
        WeightData::Host(c) => CpuStore::Owned(c.into_owned()),
        WeightData::MappedBf16(m) if matrix => CpuStore::MappedBf16(m),
        WeightData::HostBf16(c) if matrix => CpuStore::OwnedBf16(c.into_owned()),
        other => CpuStore::Owned(other.to_f32().into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::backend::Backend;
    use std::borrow::Cow;

    /// Random bf16 bits of moderate magnitude (never NaN or infinite).
    fn bits(n: usize, seed: u64) -> Vec<u16> {
        let v = crate::rng::fill_uniform(seed, n, 2.0);
        crate::backend::round_to_bf16_bits(&v)
    }

    /// The f32 copy, by half's conversion (independent of the backend's widen_bf16).
    fn widened(b: &[u16]) -> Vec<f32> {
        b.iter()
            .map(|x| half::bf16::from_bits(*x).to_f32())
            .collect()
    }

    #[test]
    fn widening_is_halfs_conversion_for_every_bf16() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let mut out = vec![0.0; all.len()];
        crate::backend::widen_bf16(&mut out, &all);
        for (b, o) in all.iter().zip(&out) {
            let want = half::bf16::from_bits(*b).to_f32();
            assert!(
                want.to_bits() == o.to_bits() || (want.is_nan() && o.is_nan()),
                "{b:#06x}"
            );
        }
    }

    #[test]
    fn a_bf16_weight_gives_the_bits_of_its_f32_copy() {
        let be = Cpu::new();
        // k not a multiple of the SIMD width, m with a remainder past the quads and more than
        // one task block (64 rows), n through every row grouping and past one tile (32 rows).
        let (k, parts) = (37, [70usize, 5, 11]);
        let m: usize = parts.iter().sum();
        let wb: Vec<Vec<u16>> = parts
            .iter()
            .enumerate()
            .map(|(i, r)| bits(r * k, i as u64))
            .collect();
        let held = |bf: bool| {
            let ps = wb.iter().zip(parts).map(|(b, r)| {
                let d = if bf {
                    WeightData::HostBf16(Cow::Borrowed(&b[..]))
                } else {
                    WeightData::Host(Cow::Owned(widened(b)))
                };
                (r, d)
            });
            be.stacked_weight(k, ps.collect()).unwrap()
        };
        let (wf, wh) = (held(false), held(true));
        assert!(matches!(wh.blocks()[0], Vals::Bf16(_)), "held as bf16");
        for n in [1, 2, 3, 4, 5, 7, 33, 70] {
            let x = be
                .tensor(n, k, &widened(&bits(n * k, 99 + n as u64)))
                .unwrap();
            let (a, b) = (be.linear(&x, &wf).unwrap(), be.linear(&x, &wh).unwrap());
            assert_eq!((a.rows, a.cols), (n, m));
            let same = a
                .data
                .iter()
                .zip(&b.data)
                .all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "n = {n}: bf16-held linear differs from f32-held");
        }
        // embed reads a bf16 table row by row, widened; a vector is always held as f32.
        let table = bits(m * k, 7);
        let tf = be
            .weight(&[m, k], WeightData::Host(Cow::Owned(widened(&table))))
            .unwrap();
        let th = be
            .weight(&[m, k], WeightData::HostBf16(Cow::Borrowed(&table)))
            .unwrap();
        let ids = [0u32, 83, 5, 5];
        assert_eq!(
            be.embed(&tf, &ids).unwrap().data,
            be.embed(&th, &ids).unwrap().data
        );
        assert!(
            be.embed(&th, &[m as u32]).is_err(),
            "an id past the table is refused"
        );
        let v = be
            .weight(&[k], WeightData::HostBf16(Cow::Borrowed(&table[..k])))
            .unwrap();
        assert_eq!(v.data().unwrap(), &widened(&table[..k])[..]);
        let e = th.data().unwrap_err().to_string();
        assert!(e.contains("bf16"), "{e}");
    }
}
