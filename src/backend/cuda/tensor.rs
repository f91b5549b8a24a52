//! Device storage of the CUDA backend: activations (f32, or bf16 where they only feed a GEMM),
//! parameters (bf16) and the paged KV cache (bf16). bf16 travels as raw u16 bits.
use super::super::KvShape;
use super::device::DSlice;

/// Element type of a device activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    Bf16,
}

impl DType {
    pub fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::Bf16 => 2,
        }
    }
}

pub enum DBuf {
    F32(DSlice<f32>),
    Bf16(DSlice<u16>),
}

/// A row-major [rows, cols] activation on the device.
pub struct CudaTensor {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) buf: DBuf,
}

impl CudaTensor {
    pub fn dtype(&self) -> DType {
        match self.buf {
            DBuf::F32(_) => DType::F32,
            DBuf::Bf16(_) => DType::Bf16,
        }
    }
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes of the whole tensor.
    pub fn bytes(&self) -> u64 {
        self.len() as u64 * self.dtype().size()
    }
    /// Raw device address (kernels get plain pointers; everything runs on one stream, and
    /// buffers are freed stream-ordered, so a pointer stays valid for the launches queued
    /// while its owner lives).
    pub fn ptr(&self) -> u64 {
        match &self.buf {
            DBuf::F32(b) => b.ptr(),
            DBuf::Bf16(b) => b.ptr(),
        }
    }
}

/// A parameter: bf16 on the device.
pub struct CudaWeight {
    pub(crate) shape: Vec<usize>,
    pub(crate) buf: DSlice<u16>,
}

impl CudaWeight {
    pub fn rows_cols(&self) -> (usize, usize) {
        match self.shape[..] {
            [r, c] => (r, c),
            [c] => (1, c),
            _ => (0, 0),
        }
    }
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Paged K and V (bf16), each laid out [layer][page][slot in page][kv head][head dim], as the
/// CPU backend's (so that page copies and slots mean the same on both).
pub struct CudaKv {
    pub(crate) shape: KvShape,
    pub(crate) k: DSlice<u16>,
    pub(crate) v: DSlice<u16>,
}

impl CudaKv {
    /// Element offset of a layer's first slot, in units of (kv heads · head dim) rows.
    pub fn layer_off(&self, layer: usize) -> i64 {
        (layer * self.shape.pages * self.shape.page_size) as i64
    }
}
