//! Decode attention over a long cache, per cache format: time per call and cache bytes read per
//! second, on one thread (the model runs one KV head per thread).
//!
//! `cargo run --release -p qwenrt-kernels --example attention_bench -- [span] [reps]`
//!
//! The shape is one KV head of Qwen3.5-0.8B's attention: 4 query heads of 256 values over that
//! head's own cache rows. Default span 8192 (the cache fits in L3; a span of 131072 is read from
//! memory), best of 20.

use std::time::Instant;

use qwenrt_kernels::attention::{attend_cached, encode_cache, CacheFormat};
use qwenrt_kernels::testing::data;
use qwenrt_kernels::FloatFormat;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let span = args.first().copied().unwrap_or(8192);
    let reps = args.get(1).copied().unwrap_or(20);
    let (group, hd, stride) = (4, 256, 256);
    let q = data(group * hd, 1);
    let (keys, values) = (data(span * stride, 2), data(span * stride, 3));
    println!("span {span}, {group} query heads × {hd}, best of {reps}");
    for format in
        [CacheFormat::Float(FloatFormat::F32), CacheFormat::Float(FloatFormat::F16), CacheFormat::Q8]
    {
        let encode = |v: &[f32]| {
            let mut out = vec![0; format.bytes_for(v.len())];
            encode_cache(format, v, &mut out);
            out
        };
        let (k, v) = (encode(&keys), encode(&values));
        let (mut scores, mut out) = (vec![0.0; group * span], vec![0.0; group * hd]);
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let start = Instant::now();
            attend_cached(format, &q, hd, &k, &v, stride, span, &mut scores, &mut out);
            best = best.min(start.elapsed().as_secs_f64());
        }
        // Keys and values.
        let bytes = 2.0 * format.bytes_for(span * hd) as f64;
        println!(
            "{:>12}: {:8.3} ms  {:6.1} GB/s of cache",
            format!("{format:?}").replace("Float(", "").replace(')', ""),
            best * 1e3,
            bytes / best / 1e9
        );
    }
}
