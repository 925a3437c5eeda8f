//! `Linear`: a weight matrix and the product with it, whatever the storage format.
//!
//! Model code only calls [`Linear::forward`] and [`Linear::row`]; how the weights are held —
//! f32, bf16 or f16 (memory-mapped without a copy when the file already has that type), or
//! int8/int4 blocks quantized at load — is this module's business alone.

use std::str::FromStr;
use std::sync::Arc;

use qwenrt_kernels::quant::{self, BlockQ4, BlockQ8, QK};
use qwenrt_kernels::{FloatFormat, Weights};
use rayon::prelude::*;

use crate::error::Result;
use crate::weights::{widen, MappedBytes, StoredDtype, TensorRef, WeightStore};

/// The precision weight matrices are held in while running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightDtype {
    /// The exactness mode: numerically the reference implementation's f32 forward pass.
    F32,
    Bf16,
    F16,
    /// 8-bit blocks of 32 with an f16 scale (Q8_0 layout), activations quantized to 8 bits.
    #[default]
    Int8,
    /// 4-bit blocks of 32 with an f16 scale (Q4_0 layout); the tied embedding / LM head stays
    /// int8, whose quality is worth its bytes.
    Int4,
}

impl WeightDtype {
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::F16 => "f16",
            WeightDtype::Int8 => "int8",
            WeightDtype::Int4 => "int4",
        }
    }
}

impl FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "f32" => WeightDtype::F32,
            "bf16" => WeightDtype::Bf16,
            "f16" => WeightDtype::F16,
            "int8" | "q8" => WeightDtype::Int8,
            "int4" | "q4" => WeightDtype::Int4,
            other => return Err(format!("unknown dtype `{other}`; expected f32, bf16, f16, int8 or int4")),
        })
    }
}

/// How to load weights.
#[derive(Clone, Default)]
pub struct LoadOptions {
    pub dtype: WeightDtype,
    /// Called after each weight matrix with (bytes done, bytes total) of the checkpoint's matrices.
    pub progress: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
}

impl LoadOptions {
    pub fn with_dtype(dtype: WeightDtype) -> Self {
        LoadOptions { dtype, progress: None }
    }
}

#[derive(Clone)]
enum Bytes {
    Mapped(MappedBytes),
    Owned(Arc<[u8]>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(o) => o,
        }
    }
}

#[derive(Clone)]
enum Storage {
    Float(Bytes, FloatFormat),
    Q8(Arc<[BlockQ8]>),
    Q4(Arc<[BlockQ4]>),
}

/// A `[out_features, in_features]` weight matrix, as `nn.Linear` stores it (no bias).
#[derive(Clone)]
pub struct Linear {
    out_features: usize,
    in_features: usize,
    storage: Storage,
}

fn stored_format(dtype: StoredDtype) -> FloatFormat {
    match dtype {
        StoredDtype::F32 => FloatFormat::F32,
        StoredDtype::BF16 => FloatFormat::Bf16,
        StoredDtype::F16 => FloatFormat::F16,
    }
}

fn encode(values: &[f32], format: FloatFormat) -> Arc<[u8]> {
    match format {
        FloatFormat::F32 => values.par_iter().flat_map_iter(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
        FloatFormat::Bf16 => values
            .par_iter()
            .flat_map_iter(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect::<Vec<u8>>()
            .into(),
        FloatFormat::F16 => values
            .par_iter()
            .flat_map_iter(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect::<Vec<u8>>()
            .into(),
    }
}

impl Linear {
    /// Loads `name` from the store, checking it is `[out_features, in_features]`, and converts it
    /// to `dtype`. Matrices whose rows are not a whole number of 32-value blocks cannot be
    /// quantized and keep their stored precision.
    pub fn load(
        store: &WeightStore,
        name: &str,
        out_features: usize,
        in_features: usize,
        dtype: WeightDtype,
    ) -> Result<Self> {
        let t = store.get(name, &[out_features, in_features])?;
        Self::from_tensor(&t, out_features, in_features, dtype)
    }

    /// Every value is checked to be finite: while quantizing or converting, or by a scan of the
    /// stored bits for weights used in place from the mapping.
    fn from_tensor(
        t: &TensorRef,
        out_features: usize,
        in_features: usize,
        dtype: WeightDtype,
    ) -> Result<Self> {
        let stored = stored_format(t.dtype);
        let quantizable = in_features.is_multiple_of(QK);
        let storage = match dtype {
            WeightDtype::Int8 | WeightDtype::Int4 if !quantizable => {
                t.check_finite()?;
                Storage::Float(Bytes::Mapped(t.mapped()), stored)
            }
            WeightDtype::Int8 => Storage::Q8(quantize_rows(t, in_features, quant::quantize_q8_into)?.into()),
            WeightDtype::Int4 => Storage::Q4(quantize_rows(t, in_features, quant::quantize_q4_into)?.into()),
            float => {
                let want = match float {
                    WeightDtype::F32 => FloatFormat::F32,
                    WeightDtype::Bf16 => FloatFormat::Bf16,
                    _ => FloatFormat::F16,
                };
                if want == stored {
                    t.check_finite()?;
                    Storage::Float(Bytes::Mapped(t.mapped()), stored)
                } else {
                    let converted = encode(&t.to_finite_f32()?, want);
                    t.mapped().release_pages();
                    Storage::Float(Bytes::Owned(converted), want)
                }
            }
        };
        Ok(Linear { out_features, in_features, storage })
    }

    pub fn from_f32(data: Vec<f32>, out_features: usize, in_features: usize) -> Self {
        assert_eq!(data.len(), out_features * in_features, "Linear: data is not [out, in]");
        Linear {
            out_features,
            in_features,
            storage: Storage::Float(Bytes::Owned(encode(&data, FloatFormat::F32)), FloatFormat::F32),
        }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    fn weights(&self) -> Weights<'_> {
        match &self.storage {
            Storage::Float(bytes, format) => Weights::Float(bytes, *format),
            Storage::Q8(b) => Weights::Q8(b),
            Storage::Q4(b) => Weights::Q4(b),
        }
    }

    /// `out[t, :] = x[t, :] @ W.T` for `x: [t, in_features]`, `out: [t, out_features]`.
    pub fn forward(&self, x: &[f32], t: usize, out: &mut [f32]) {
        qwenrt_kernels::matmul(x, self.weights(), out, t, self.in_features, self.out_features)
    }

    /// [`forward`](Self::forward) for the output features `rows` only (a contiguous run of the
    /// matrix's rows): `out: [t, rows.len()]`.
    pub fn forward_rows(&self, x: &[f32], t: usize, rows: std::ops::Range<usize>, out: &mut [f32]) {
        let k = self.in_features;
        let nb = k / QK;
        let weights = match &self.storage {
            Storage::Float(bytes, format) => {
                let b = k * format.bytes();
                Weights::Float(&bytes[rows.start * b..rows.end * b], *format)
            }
            Storage::Q8(blocks) => Weights::Q8(&blocks[rows.start * nb..rows.end * nb]),
            Storage::Q4(blocks) => Weights::Q4(&blocks[rows.start * nb..rows.end * nb]),
        };
        qwenrt_kernels::matmul(x, weights, out, t, k, rows.len())
    }

    /// Copies row `i` (one output neuron, or one embedding vector) into `out` as f32.
    pub fn row(&self, i: usize, out: &mut [f32]) {
        let k = self.in_features;
        let nb = k / QK;
        match &self.storage {
            Storage::Float(bytes, format) => {
                let row = &bytes[i * k * format.bytes()..(i + 1) * k * format.bytes()];
                for (j, o) in out.iter_mut().enumerate() {
                    *o = format.get(row, j);
                }
            }
            Storage::Q8(b) => quant::dequantize_q8(&b[i * nb..(i + 1) * nb], out),
            Storage::Q4(b) => quant::dequantize_q4(&b[i * nb..(i + 1) * nb], out),
        }
    }

    /// Bytes the weights occupy (memory-mapped ones included).
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::Float(b, _) => b.len(),
            Storage::Q8(b) => std::mem::size_of_val(&b[..]),
            Storage::Q4(b) => std::mem::size_of_val(&b[..]),
        }
    }

    /// Whether the weights are read straight from the memory-mapped file (no copy).
    pub fn is_mapped(&self) -> bool {
        matches!(&self.storage, Storage::Float(Bytes::Mapped(_), _))
    }

    pub fn dtype_name(&self) -> &'static str {
        match &self.storage {
            Storage::Float(_, FloatFormat::F32) => "f32",
            Storage::Float(_, FloatFormat::Bf16) => "bf16",
            Storage::Float(_, FloatFormat::F16) => "f16",
            Storage::Q8(_) => "int8",
            Storage::Q4(_) => "int4",
        }
    }
}

/// Quantizes a `[n, k]` tensor row by row on all threads, widening one row at a time and writing
/// into a buffer of the final size, and lets the file mapping's pages go every few MiB: peak
/// memory stays the quantized size plus one piece of the source (the embedding alone is 0.5 GB
/// of bf16 in Qwen3.5-0.8B).
fn quantize_rows<B: Send + Clone + Default, E: std::fmt::Debug>(
    t: &TensorRef,
    k: usize,
    quantize: impl Fn(&[f32], &mut [B]) -> std::result::Result<(), E> + Sync,
) -> Result<Vec<B>> {
    const PIECE_BYTES: usize = 16 << 20;
    let row_bytes = k * t.element_bytes();
    let rows = t.bytes.len() / row_bytes;
    let rows_per_piece = (PIECE_BYTES / row_bytes).max(1);
    let mut blocks = vec![B::default(); rows * (k / QK)];
    let pieces = blocks.chunks_mut(rows_per_piece * (k / QK)).zip(t.bytes.chunks(rows_per_piece * row_bytes));
    let mapped = t.mapped();
    let finite = std::sync::atomic::AtomicBool::new(true);
    for (i, (out, bytes)) in pieces.enumerate() {
        out.par_chunks_mut(k / QK).zip(bytes.par_chunks(row_bytes)).for_each_init(
            || vec![0.0f32; k],
            |row, (out, bytes)| {
                widen(t.dtype, bytes, row);
                if !row.iter().all(|v| v.is_finite()) {
                    finite.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                quantize(row, out).expect("k is a multiple of the block size");
            },
        );
        let start = i * rows_per_piece * row_bytes;
        mapped.release_pages_of(start..start + bytes.len());
        if !finite.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(t.non_finite());
        }
    }
    Ok(blocks)
}

/// Loads a 1-D f32 vector (norm weights, biases, per-head scalars), checking its length.
pub fn load_vector(store: &WeightStore, name: &str, len: usize) -> Result<Vec<f32>> {
    store.get(name, &[len])?.to_finite_f32()
}
