//! ggml tensor types and exact dequantization of the ones ponder imports.
use anyhow::{bail, Result};
use half::{bf16, f16};
use rayon::prelude::*;

/// A ggml tensor type id. Only ids ggml defines are accepted when a file is opened, since
/// the size of a tensor of an unknown type cannot be computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType(pub u32);

/// (id, name, elements per block, bytes per block), as in ggml's type_traits.
const GGML_TYPES: &[(u32, &str, usize, usize)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const BF16: GgmlType = GgmlType(30);

    fn traits(self) -> Option<&'static (u32, &'static str, usize, usize)> {
        GGML_TYPES.iter().find(|t| t.0 == self.0)
    }

    /// ggml's name for the type, or "type N" for an id ggml does not define.
    pub fn name(self) -> String {
        self.traits()
            .map_or_else(|| format!("type {}", self.0), |t| t.1.to_string())
    }

    /// (elements per block, bytes per block).
    pub fn block_layout(self) -> Option<(usize, usize)> {
        self.traits().map(|t| (t.2, t.3))
    }

    pub fn can_dequantize(self) -> bool {
        [
            Self::F32,
            Self::F16,
            Self::BF16,
            Self::Q8_0,
            Self::Q4_0,
            Self::Q4_1,
        ]
        .contains(&self)
    }
}

/// Decodes `n` values of type `ty` from `bytes` exactly as ggml's dequantize_row_* does.
pub fn dequantize_bytes(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    if !ty.can_dequantize() {
        bail!(
            "has type {}, which ponder cannot dequantize (it reads F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
            ty.name()
        );
    }
    let Some((block, block_bytes)) = ty.block_layout() else {
        bail!("unknown tensor type {}", ty.0);
    };
    if !n.is_multiple_of(block) || (n / block).checked_mul(block_bytes) != Some(bytes.len()) {
        bail!(
            "{} bytes do not hold exactly {n} values of type {}",
            bytes.len(),
            ty.name()
        );
    }
    let mut out = vec![0f32; n];
    match ty {
        GgmlType::F32 => blocks::<1, 4>(bytes, &mut out, |b, o| o[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => blocks::<1, 2>(bytes, &mut out, |b, o| {
            o[0] = f16::from_le_bytes(*b).to_f32()
        }),
        GgmlType::BF16 => blocks::<1, 2>(bytes, &mut out, |b, o| {
            o[0] = bf16::from_le_bytes(*b).to_f32()
        }),
        GgmlType::Q8_0 => blocks::<32, 34>(bytes, &mut out, |b, o| {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            for (o, &q) in o.iter_mut().zip(&b[2..]) {
                *o = f32::from(q as i8) * d;
            }
        }),
        GgmlType::Q4_0 => blocks::<32, 18>(bytes, &mut out, |b, o| {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            let (lo, hi) = o.split_at_mut(16);
            for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..]) {
                *l = f32::from(i16::from(q & 0x0f) - 8) * d;
                *h = f32::from(i16::from(q >> 4) - 8) * d;
            }
        }),
        GgmlType::Q4_1 => blocks::<32, 20>(bytes, &mut out, |b, o| {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
            let (lo, hi) = o.split_at_mut(16);
            for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[4..]) {
                *l = f32::from(q & 0x0f) * d + m;
                *h = f32::from(q >> 4) * d + m;
            }
        }),
        _ => bail!("type {} has no dequantizer", ty.name()),
    }
    Ok(out)
}

/// Runs `f` over every (block, output block) pair in parallel; the lengths were checked by
/// the caller, so the chunkings line up exactly.
fn blocks<const E: usize, const B: usize>(
    src: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; B], &mut [f32; E]) + Sync,
) {
    let (src, _) = src.as_chunks::<B>();
    let (out, _) = out.as_chunks_mut::<E>();
    // Small blocks make per-item scheduling costly; a few thousand blocks per task amortise it.
    out.par_iter_mut()
        .zip(src.par_iter())
        .with_min_len(4096 / E.max(1) + 1)
        .for_each(|(o, b)| f(b, o));
}
