//! `Linear`: a weight matrix and the product with it, whatever the storage format.
//!
//! Model code only calls [`Linear::forward`] and [`Linear::row`]; how the weights are stored
//! (today f32, later bf16, int8 and int4 blocks) is this module's business alone.

use std::sync::Arc;

use crate::error::Result;
use crate::weights::WeightStore;

#[derive(Clone)]
enum Storage {
    F32(Arc<[f32]>),
}

/// A `[out_features, in_features]` weight matrix, as `nn.Linear` stores it (no bias).
#[derive(Clone)]
pub struct Linear {
    out_features: usize,
    in_features: usize,
    storage: Storage,
}

impl Linear {
    /// Loads `name` from the store, checking it is `[out_features, in_features]`.
    pub fn load(store: &WeightStore, name: &str, out_features: usize, in_features: usize) -> Result<Self> {
        let t = store.get(name, &[out_features, in_features])?;
        Ok(Self::from_f32(t.to_f32(), out_features, in_features))
    }

    pub fn from_f32(data: Vec<f32>, out_features: usize, in_features: usize) -> Self {
        assert_eq!(data.len(), out_features * in_features, "Linear: data is not [out, in]");
        Linear { out_features, in_features, storage: Storage::F32(data.into()) }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// `out[t, :] = x[t, :] @ W.T` for `x: [t, in_features]`, `out: [t, out_features]`.
    pub fn forward(&self, x: &[f32], t: usize, out: &mut [f32]) {
        match &self.storage {
            Storage::F32(w) => qwenrt_kernels::matmul_f32(x, w, out, t, self.in_features, self.out_features),
        }
    }

    /// Copies row `i` (one output neuron, or one embedding vector) into `out` as f32.
    pub fn row(&self, i: usize, out: &mut [f32]) {
        let k = self.in_features;
        match &self.storage {
            Storage::F32(w) => out.copy_from_slice(&w[i * k..(i + 1) * k]),
        }
    }

    /// Bytes the weights occupy in memory.
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(w) => w.len() * 4,
        }
    }

    pub fn dtype_name(&self) -> &'static str {
        match &self.storage {
            Storage::F32(_) => "f32",
        }
    }
}

/// Loads a 1-D f32 vector (norm weights, biases, per-head scalars), checking its length.
pub fn load_vector(store: &WeightStore, name: &str, len: usize) -> Result<Vec<f32>> {
    Ok(store.get(name, &[len])?.to_f32())
}
