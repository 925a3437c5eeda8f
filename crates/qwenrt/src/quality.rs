//! How much a weight precision changes a model's predictions: logit cosine similarity and top-1
//! agreement against a reference (usually the f32 model), position by position.

use crate::error::Result;
use crate::model::Model;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// Positions compared.
    pub positions: usize,
    pub mean_cosine: f64,
    pub min_cosine: f64,
    /// Fraction of positions whose most likely next token is the same.
    pub top1: f64,
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
}

/// Runs `tokens` through both models and compares the logits at every position.
pub fn compare_logits(reference: &Model, candidate: &Model, tokens: &[u32]) -> Result<Agreement> {
    let vocab = reference.vocab_size();
    let mut want = vec![0.0f32; tokens.len() * vocab];
    let mut state = reference.new_state();
    reference.forward_all(&mut state, tokens, |pos, logits| {
        want[pos * vocab..(pos + 1) * vocab].copy_from_slice(logits)
    })?;
    let mut state = candidate.new_state();
    let (mut sum, mut min, mut same) = (0.0f64, f64::INFINITY, 0usize);
    candidate.forward_all(&mut state, tokens, |pos, logits| {
        let w = &want[pos * vocab..(pos + 1) * vocab];
        let c = cosine(logits, w);
        sum += c;
        min = min.min(c);
        if crate::generate::argmax(logits) == crate::generate::argmax(w) {
            same += 1;
        }
    })?;
    let n = tokens.len();
    Ok(Agreement { positions: n, mean_cosine: sum / n as f64, min_cosine: min, top1: same as f64 / n as f64 })
}
