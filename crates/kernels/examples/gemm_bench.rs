//! Matrix × matrix throughput (prefill-like shapes) per weight storage, on 1 and 2 threads.
//!
//! `cargo run --release -p qwenrt-kernels --example gemm_bench -- [options]`
//!
//! Options (all optional):
//! * `--shapes T:K:N,...`   default: the projections of a 0.6B–0.8B text model at 512 tokens and
//!   of the vision tower at 1024 patches;
//! * `--dtypes f32,bf16,f16,q8,q4,local` (default: all but `local`, which is f32 through
//!   `matmul_f32_local`: one thread whatever the pool, as DeltaNet chunks and vision attention
//!   heads call it);
//! * `--threads 1,2` (default: 1 and 2);
//! * `--reps N` timed repetitions per case, the median is printed (default 5).
//!
//! GFLOP/s counts `2·t·k·n` operations per product, whatever the storage. Each column shows the
//! median over wall-clock time and, after the slash, over the CPU time of the process (all its
//! threads): on a machine shared with other jobs the second stays meaningful when the first
//! does not (with several threads it counts idle spinning too, so it is a lower bound).

use std::time::Instant;

use qwenrt_kernels::quant::{quantize_q4, quantize_q8};
use qwenrt_kernels::testing::data;
use qwenrt_kernels::{matmul, matmul_f32_local, FloatFormat, Weights};

const DEFAULT_SHAPES: &[(usize, usize, usize)] =
    &[(512, 1024, 3584), (512, 3584, 1024), (512, 1024, 6144), (1024, 768, 2304), (1024, 3072, 768)];

/// CPU time consumed so far by all threads of this process, in seconds.
fn process_cpu_secs() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Median wall-clock and median process-CPU seconds of `reps` runs of `f`.
fn median_secs(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f(); // warm-up: page faults, thread start, scratch buffers
    let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = (0..reps)
        .map(|_| {
            let (start, cpu_start) = (Instant::now(), process_cpu_secs());
            f();
            (start.elapsed().as_secs_f64(), process_cpu_secs() - cpu_start)
        })
        .unzip();
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (wall[reps / 2], cpu[reps / 2])
}

fn list<T>(arg: &str, parse: impl Fn(&str) -> T) -> Vec<T> {
    arg.split(',').filter(|s| !s.is_empty()).map(parse).collect()
}

fn main() {
    let mut shapes = DEFAULT_SHAPES.to_vec();
    let mut dtypes: Vec<String> = ["f32", "bf16", "f16", "q8", "q4"].map(String::from).to_vec();
    let mut threads = vec![1usize, 2];
    let mut reps = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--shapes" => {
                shapes = list(&value, |s| {
                    let d: Vec<usize> = s.split(':').map(|v| v.parse().expect("T:K:N")).collect();
                    assert_eq!(d.len(), 3, "a shape is T:K:N");
                    (d[0], d[1], d[2])
                })
            }
            "--dtypes" => dtypes = list(&value, |s| s.to_string()),
            "--threads" => threads = list(&value, |s| s.parse().expect("thread count")),
            "--reps" => reps = value.parse().expect("repetitions"),
            _ => panic!("unknown option {flag}"),
        }
    }
    let pools: Vec<rayon::ThreadPool> = threads
        .iter()
        .map(|&n| rayon::ThreadPoolBuilder::new().num_threads(n).build().expect("thread pool"))
        .collect();

    print!("{:<18} {:<5}", "t×k×n", "dtype");
    for n in &threads {
        print!(" {:>13}", format!("{n}T GF/s"));
    }
    println!();
    for &(t, k, n) in &shapes {
        let x = data(t * k, 1);
        let wf = data(n * k, 2);
        for dtype in &dtypes {
            let bytes: Vec<u8>;
            let q8;
            let q4;
            let weights = match dtype.as_str() {
                "f32" | "local" => {
                    bytes = wf.iter().flat_map(|v| v.to_le_bytes()).collect();
                    Weights::Float(&bytes, FloatFormat::F32)
                }
                "bf16" => {
                    bytes = wf.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
                    Weights::Float(&bytes, FloatFormat::Bf16)
                }
                "f16" => {
                    bytes = wf.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
                    Weights::Float(&bytes, FloatFormat::F16)
                }
                "q8" => {
                    q8 = quantize_q8(&wf).expect("k is a multiple of 32");
                    Weights::Q8(&q8)
                }
                "q4" => {
                    q4 = quantize_q4(&wf).expect("k is a multiple of 32");
                    Weights::Q4(&q4)
                }
                other => panic!("unknown dtype {other}"),
            };
            let mut out = vec![0.0f32; t * n];
            print!("{:<18} {:<5}", format!("{t}×{k}×{n}"), dtype);
            for pool in &pools {
                let (wall, cpu) = median_secs(reps, || {
                    pool.install(|| {
                        if dtype == "local" {
                            matmul_f32_local(&x, &wf, &mut out, t, k, n)
                        } else {
                            matmul(&x, weights, &mut out, t, k, n)
                        }
                    })
                });
                let gflop = 2.0 * (t * k * n) as f64 / 1e9;
                print!(" {:>13}", format!("{:.1}/{:.1}", gflop / wall, gflop / cpu));
            }
            println!();
        }
    }
}
