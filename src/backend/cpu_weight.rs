//! How the CPU backend holds a weight: f32 as loaded, or a matrix from a bf16 checkpoint or a
//! synthetic model as bf16 bits, one from an f16 checkpoint as f16. Two bytes a value halve the
//! memory (Mistral-7B in ~14.5 GB instead of ~29 GB) and lose nothing: `linear` and `embed`
//! widen rows just before use, and widening is exact, so every product is the one the f32
//! copy of the same values gives.
use super::cpu::F32;
use super::cpu_math::Weight;
use super::WeightData;
use anyhow::{bail, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Where a weight's values live, in the dtype they were loaded in: f32, or for a matrix bf16
/// bits or f16 (half the memory; `linear` and `embed` widen rows just before use, exactly, so
/// the results are those of the same values as f32).
pub enum CpuStore {
    Mapped(crate::model::weights::MappedF32),
    Owned(Vec<f32>),
    MappedBf16(crate::model::weights::MappedBf16),
    OwnedBf16(Vec<u16>),
    MappedF16(crate::model::weights::MappedF16),
    OwnedF16(Vec<f16>),
}

/// A store's values, borrowed.
#[derive(Clone, Copy)]
pub(super) enum Vals<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
    F16(&'a [f16]),
}

impl<'a> Vals<'a> {
    pub(super) fn len(&self) -> usize {
        match self {
            Vals::F32(v) => v.len(),
            Vals::Bf16(v) => v.len(),
            Vals::F16(v) => v.len(),
        }
    }

    /// Values `r` of the same dtype.
    pub(super) fn slice(self, r: std::ops::Range<usize>) -> Vals<'a> {
        match self {
            Vals::F32(v) => Vals::F32(&v[r]),
            Vals::Bf16(v) => Vals::Bf16(&v[r]),
            Vals::F16(v) => Vals::F16(&v[r]),
        }
    }

    /// `out[i]` = value i as f32 (exact for every dtype); `out` is as long as the values.
    pub(super) fn widen_into(self, out: &mut [f32]) {
        match self {
            Vals::F32(v) => out.copy_from_slice(v),
            Vals::Bf16(v) => super::widen_bf16(out, v),
            Vals::F16(v) => v.convert_to_f32_slice(out),
        }
    }
}

/// A weight type the CPU holds, so that code generic over `Weight` can find its values.
pub(super) trait Held: Weight {
    fn of(v: Vals<'_>) -> Option<&[Self]>;
}

impl Held for f32 {
    fn of(v: Vals<'_>) -> Option<&[f32]> {
        match v {
            Vals::F32(v) => Some(v),
            _ => None,
        }
    }
}

impl Held for u16 {
    fn of(v: Vals<'_>) -> Option<&[u16]> {
        match v {
            Vals::Bf16(v) => Some(v),
            _ => None,
        }
    }
}

impl Held for f16 {
    fn of(v: Vals<'_>) -> Option<&[f16]> {
        match v {
            Vals::F16(v) => Some(v),
            _ => None,
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
            CpuStore::MappedF16(m) => Vals::F16(m.as_slice()),
            CpuStore::OwnedF16(v) => Vals::F16(v),
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
                _ => bail!("a weight held as bf16 or f16 is an operand of linear and embed only"),
            },
            _ => bail!("a stacked weight is an operand of linear only"),
        }
    }
    /// The row blocks, in order.
    pub(super) fn blocks(&self) -> Vec<Vals<'_>> {
        self.parts.iter().map(CpuStore::vals).collect()
    }
    /// Bytes per value (4 for f32, 2 for bf16 and f16), for the ledger's byte counts.
    pub(super) fn value_bytes(&self) -> u64 {
        match self.parts.first().map(CpuStore::vals) {
            Some(Vals::Bf16(_) | Vals::F16(_)) => 2,
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

/// Holds `data` as loaded when `keep`, else (a vector: norms and biases are read by f32 loops,
/// and are small) a 16-bit one widened to f32.
pub(super) fn store(data: WeightData, keep: bool) -> CpuStore {
    match data {
        WeightData::Mapped(m) => CpuStore::Mapped(m),
        WeightData::Host(c) => CpuStore::Owned(c.into_owned()),
        WeightData::MappedBf16(m) if keep => CpuStore::MappedBf16(m),
        WeightData::HostBf16(c) if keep => CpuStore::OwnedBf16(c.into_owned()),
        WeightData::MappedF16(m) if keep => CpuStore::MappedF16(m),
        WeightData::HostF16(c) if keep => CpuStore::OwnedF16(c.into_owned()),
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

    /// Random f16 values of moderate magnitude, some of them subnormal.
    fn halves(n: usize, seed: u64) -> Vec<f16> {
        let v = crate::rng::fill_uniform(seed, n, 2.0);
        v.iter().map(|x| f16::from_f32(x * x * x * 1e-2)).collect()
    }

    /// A 16-bit store of `parts` (bf16 bits of seed i for part i, or f16), and its f32 copy.
    fn data(bf: bool, n: usize, seed: u64) -> (WeightData<'static>, Vec<f32>) {
        if bf {
            let b = bits(n, seed);
            let f = widened(&b);
            (WeightData::HostBf16(Cow::Owned(b)), f)
        } else {
            let h = halves(n, seed);
            let f = h.iter().map(|x| x.to_f32()).collect();
            (WeightData::HostF16(Cow::Owned(h)), f)
        }
    }

    #[test]
    fn a_16_bit_weight_gives_the_bits_of_its_f32_copy() {
        for bf in [true, false] {
            held_16_bit_gives_f32_bits(bf);
        }
    }

    fn held_16_bit_gives_f32_bits(bf: bool) {
        let be = Cpu::new();
        let name = if bf { "bf16" } else { "f16" };
        // k not a multiple of the SIMD width, m with a remainder past the quads and more than
        // one task block (64 rows), n through every row grouping, past one tile (32 rows) and
        // past WIDEN_ONCE.
        let (k, parts) = (37, [70usize, 5, 11]);
        let m: usize = parts.iter().sum();
        let stores: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(i, r)| data(bf, r * k, i as u64))
            .collect();
        let (wh, wf) = {
            let ps = |f32_copy: bool| {
                stores
                    .iter()
                    .zip(parts)
                    .map(|((d, f), r)| {
                        let d = match (f32_copy, d) {
                            (true, _) => WeightData::Host(Cow::Borrowed(&f[..])),
                            (false, WeightData::HostBf16(b)) => WeightData::HostBf16(b.clone()),
                            (false, WeightData::HostF16(h)) => WeightData::HostF16(h.clone()),
                            _ => unreachable!("data() makes host 16-bit stores"),
                        };
                        (r, d)
                    })
                    .collect()
            };
            let wh = be.stacked_weight(k, ps(false)).unwrap();
            let wf = be.stacked_weight(k, ps(true)).unwrap();
            (wh, wf)
        };
        assert_eq!(wh.value_bytes(), 2, "{name} held as 16 bits");
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
            assert!(same, "n = {n}: {name}-held linear differs from f32-held");
        }
        // embed reads a 16-bit table row by row, widened; a vector is always held as f32.
        let (table, tf32) = data(bf, m * k, 7);
        let tf = be
            .weight(&[m, k], WeightData::Host(Cow::Borrowed(&tf32)))
            .unwrap();
        let th = be.weight(&[m, k], table).unwrap();
        let ids = [0u32, 83, 5, 5];
        assert_eq!(
            be.embed(&tf, &ids).unwrap().data,
            be.embed(&th, &ids).unwrap().data
        );
        assert!(
            be.embed(&th, &[m as u32]).is_err(),
            "an id past the table is refused"
        );
        let (vector, vf32) = data(bf, k, 8);
        let v = be.weight(&[k], vector).unwrap();
        assert_eq!(v.data().unwrap(), &vf32[..]);
        let e = th.data().unwrap_err().to_string();
        assert!(e.contains("bf16 or f16"), "{e}");
    }

    #[test]
    fn a_stack_of_mixed_dtypes_is_widened() {
        let be = Cpu::new();
        let (a, af) = data(true, 3 * 8, 1);
        let (b, bf) = data(false, 2 * 8, 2);
        let w = be.stacked_weight(8, vec![(3, a), (2, b)]).unwrap();
        assert_eq!(w.value_bytes(), 4, "one dtype for every block");
        let x = be
            .tensor(1, 8, &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
            .unwrap();
        let y = be.linear(&x, &w).unwrap().data;
        let col0: Vec<f32> = af.chunks(8).chain(bf.chunks(8)).map(|r| r[0]).collect();
        assert_eq!(y, col0);
    }
}
