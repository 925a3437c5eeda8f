//! How close the decode kernels come to the machine's read bandwidth: one token times a
//! 248320 × 1024 matrix (the Qwen3.5-0.8B LM head) in each storage, against a plain read.
//! `cargo run --release -p qwenrt-kernels --example matvec_bandwidth`

use std::time::Instant;

use qwenrt_kernels::quant::{quantize_q4, quantize_q8};
use qwenrt_kernels::{matmul, FloatFormat, Weights};
use rayon::prelude::*;

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let (n, k) = (248_320usize, 1024usize);
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5).collect();
    let x: Vec<f32> = (0..k).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
    let mut out = vec![0.0f32; n];
    let bf16: Vec<u8> = w.par_iter().flat_map_iter(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
    let q8 = quantize_q8(&w).unwrap();
    let q4 = quantize_q4(&w).unwrap();
    drop(w);

    let plain: Vec<u64> = vec![1; n * k / 8];
    let secs = best_of(5, || {
        let s: u64 = plain.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b))).sum();
        std::hint::black_box(s);
    });
    println!("plain read     {:>8.2} GB/s", (plain.len() * 8) as f64 / secs / 1e9);

    for (name, weights, bytes) in [
        ("bf16", Weights::Float(&bf16, FloatFormat::Bf16), bf16.len()),
        ("q8", Weights::Q8(&q8), std::mem::size_of_val(&q8[..])),
        ("q4", Weights::Q4(&q4), std::mem::size_of_val(&q4[..])),
    ] {
        let secs = best_of(5, || matmul(&x, weights, &mut out, 1, k, n));
        println!("{name:<5} matvec   {:>8.2} GB/s  ({:.2} ms)", bytes as f64 / secs / 1e9, secs * 1e3);
    }
}
