//! The threads behind every parallel matrix product and per-head loop.
//!
//! Decode makes a couple of hundred parallel calls per token, each only a few hundred
//! microseconds long, so what matters is how fast a call starts and ends. A general work-stealing
//! pool hands each call to sleeping workers and puts the caller to sleep until they finish; here
//! the caller works on its own call, the helpers spin on a generation counter between calls
//! (parking only after a millisecond without work), and tasks are claimed from one atomic
//! counter. A call made while the pool is busy (from a task, or from a second thread such as a
//! server's embedding worker) runs on its caller alone instead of waiting.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins before parking.
const SPIN: Duration = Duration::from_millis(1);

/// The call being run: its closure (type-erased, borrowed from the caller's stack) and how many
/// tasks it has.
#[derive(Clone, Copy)]
struct Job {
    run: *const (dyn Fn(usize) + Sync),
    tasks: usize,
}

struct Shared {
    /// Bumped (after `job` is written) to publish a call.
    generation: AtomicU64,
    /// Written only by the caller holding `busy`, before bumping `generation`; read by helpers
    /// after they see the new generation, until they report done.
    job: UnsafeCell<Job>,
    next_task: AtomicUsize,
    /// Helpers that finished the current call.
    helpers_done: AtomicUsize,
    panicked: AtomicBool,
    busy: AtomicBool,
    sleepers: AtomicUsize,
    wake: (Mutex<()>, Condvar),
}

// SAFETY: `job` is only written while no helper reads it (see the protocol above), and the
// closure it points to is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    helpers: usize,
}

static POOL: OnceLock<Pool> = OnceLock::new();

const NO_TASKS: &(dyn Fn(usize) + Sync) = &|_| {};

/// Sets the number of threads (the caller plus `threads - 1` helpers). Call once, before the
/// first parallel call; returns an error message afterwards.
pub fn set_threads(threads: usize) -> Result<(), String> {
    let threads = threads.max(1);
    let mut outcome = None;
    POOL.get_or_init(|| {
        let (pool, failure) = Pool::new(threads);
        outcome = Some(failure);
        pool
    });
    match outcome {
        Some(None) => Ok(()),
        // The pool runs with the helpers that did start.
        Some(Some(failure)) => Err(failure),
        None => Err(format!("the thread pool already runs {} threads", threads_in_use())),
    }
}

/// Threads a parallel call uses.
pub fn threads_in_use() -> usize {
    pool().helpers + 1
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| Pool::new(std::thread::available_parallelism().map_or(1, |n| n.get())).0)
}

/// Runs `f(0)`, …, `f(tasks - 1)` on the pool's threads (the caller included) and returns when
/// all have finished. A panic in any task is re-raised here.
pub fn for_each_task(tasks: usize, f: impl Fn(usize) + Sync) {
    pool().run(tasks, &f)
}

/// Calls `f(i, &mut items[i])` for every item, in parallel.
pub fn for_each_mut<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    let base = SendPtr(items.as_mut_ptr());
    // SAFETY: every index is claimed by exactly one task, so the `&mut` are disjoint.
    for_each_task(items.len(), |i| f(i, unsafe { &mut *base.get().add(i) }));
}

/// Calls `f(i, &mut items[i], &mut chunks[i * chunk..(i + 1) * chunk])` for every item, in
/// parallel (`chunks` holds at least `items.len()` chunks).
pub fn for_each_mut_with_chunks<T: Send, U: Send>(
    items: &mut [T],
    chunks: &mut [U],
    chunk: usize,
    f: impl Fn(usize, &mut T, &mut [U]) + Sync,
) {
    assert!(chunks.len() >= items.len() * chunk, "for_each_mut_with_chunks: too few chunks");
    let (a, b) = (SendPtr(items.as_mut_ptr()), SendPtr(chunks.as_mut_ptr()));
    // SAFETY: every index is claimed by exactly one task, so the `&mut` are disjoint and the
    // chunks lie inside `chunks`.
    for_each_task(items.len(), |i| unsafe {
        f(i, &mut *a.get().add(i), std::slice::from_raw_parts_mut(b.get().add(i * chunk), chunk))
    });
}

/// Calls `f(i, &mut data[i * chunk..])` for every chunk of `chunk` items (the last may be
/// shorter), in parallel.
pub fn for_each_chunk_mut<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    assert!(chunk > 0, "for_each_chunk_mut: empty chunks");
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    // SAFETY: every chunk index is claimed by exactly one task, so the ranges are disjoint, and
    // each lies inside `data`.
    for_each_task(len.div_ceil(chunk), |i| unsafe {
        let start = i * chunk;
        f(i, std::slice::from_raw_parts_mut(base.get().add(start), chunk.min(len - start)))
    });
}

struct SendPtr<T>(*mut T);

impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

// SAFETY: used only to hand disjoint elements of one slice of `Send` values to tasks.
unsafe impl<T: Send> Sync for SendPtr<T> {}
unsafe impl<T: Send> Send for SendPtr<T> {}

impl Pool {
    /// A pool of `threads - 1` helpers, or of as many as could be started, with the reason the
    /// next one could not.
    fn new(threads: usize) -> (Pool, Option<String>) {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(Job { run: NO_TASKS, tasks: 0 }),
            next_task: AtomicUsize::new(0),
            helpers_done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            wake: (Mutex::new(()), Condvar::new()),
        });
        let mut helpers = 0;
        let mut failure = None;
        while helpers + 1 < threads {
            let shared = Arc::clone(&shared);
            let started = std::thread::Builder::new()
                .name(format!("qwenrt-worker-{}", helpers + 1))
                .spawn(move || helper(&shared));
            if let Err(e) = started {
                failure = Some(format!("started {} of {threads} threads: {e}", helpers + 1));
                break;
            }
            helpers += 1;
        }
        (Pool { shared, helpers }, failure)
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        if tasks <= 1 || self.helpers == 0 || s.busy.swap(true, Ordering::Acquire) {
            (0..tasks).for_each(f);
            return;
        }
        // SAFETY: `busy` is ours and every helper reported done for the previous call, so no
        // one reads `job` now. The lifetime is erased because this function does not return
        // before every helper reports done with this call.
        unsafe {
            let run: *const (dyn Fn(usize) + Sync + '_) = f;
            *s.job.get() = Job {
                run: std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                    run,
                ),
                tasks,
            };
        }
        s.next_task.store(0, Ordering::Relaxed);
        s.helpers_done.store(0, Ordering::Relaxed);
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.1.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| claim_tasks(s, f, tasks)));
        let mut spins = 0u32;
        while s.helpers_done.load(Ordering::Acquire) < self.helpers {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                // A helper was descheduled: let it run.
                std::thread::yield_now();
            }
        }
        let helper_panicked = s.panicked.swap(false, Ordering::Relaxed);
        s.busy.store(false, Ordering::Release);
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if helper_panicked {
            panic!("a parallel task panicked on a worker thread");
        }
    }
}

fn claim_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync), tasks: usize) {
    loop {
        let i = s.next_task.fetch_add(1, Ordering::Relaxed);
        if i >= tasks {
            return;
        }
        f(i);
    }
}

fn helper(s: &Shared) {
    let mut seen = 0u64;
    loop {
        seen = wait_for_call(s, seen);
        // SAFETY: the caller wrote `job` before publishing this generation and keeps the
        // closure alive until this helper reports done below.
        let job = unsafe { *s.job.get() };
        let result: Result<(), Box<dyn Any + Send>> =
            catch_unwind(AssertUnwindSafe(|| claim_tasks(s, unsafe { &*job.run }, job.tasks)));
        if result.is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.helpers_done.fetch_add(1, Ordering::Release);
    }
}

/// Returns the generation of the next call after `seen`: spinning first, then parked.
fn wait_for_call(s: &Shared, seen: u64) -> u64 {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let now = s.generation.load(Ordering::Acquire);
        if now != seen {
            return now;
        }
        spins += 1;
        if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
            break;
        }
        std::hint::spin_loop();
    }
    let mut guard = s.wake.0.lock().unwrap_or_else(|e| e.into_inner());
    s.sleepers.fetch_add(1, Ordering::SeqCst);
    loop {
        let now = s.generation.load(Ordering::SeqCst);
        if now != seen {
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            return now;
        }
        guard = s.wake.1.wait(guard).unwrap_or_else(|e| e.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_once() {
        for tasks in [0, 1, 2, 3, 17, 1000] {
            let counts: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
            for_each_task(tasks, |i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{tasks} tasks");
        }
    }

    #[test]
    fn nested_and_concurrent_calls_complete() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    for _ in 0..200 {
                        for_each_task(4, |_| {
                            for_each_task(3, |_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            })
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 200 * 4 * 3);
    }

    #[test]
    fn mutable_items_and_chunks_are_handed_out_once() {
        let mut items = vec![0usize; 37];
        let mut chunks = vec![0usize; 37 * 3 + 2];
        for_each_mut_with_chunks(&mut items, &mut chunks, 3, |i, item, chunk| {
            *item += i;
            chunk.iter_mut().for_each(|c| *c += i + 1);
        });
        for_each_mut(&mut items, |i, item| *item += i);
        assert!(items.iter().enumerate().all(|(i, &v)| v == 2 * i));
        assert!(chunks[..37 * 3].iter().enumerate().all(|(j, &c)| c == j / 3 + 1));
        assert_eq!(&chunks[37 * 3..], &[0, 0]);
    }

    #[test]
    fn chunks_cover_the_slice_once_and_the_last_may_be_short() {
        for (len, chunk) in [(0, 4), (1, 4), (12, 4), (13, 4), (1000, 7), (5, 100)] {
            let mut data = vec![0usize; len];
            let calls = AtomicUsize::new(0);
            for_each_chunk_mut(&mut data, chunk, |i, part| {
                calls.fetch_add(1, Ordering::Relaxed);
                assert!(!part.is_empty() && part.len() <= chunk);
                part.iter_mut().enumerate().for_each(|(j, v)| *v += i * chunk + j + 1);
            });
            assert_eq!(calls.into_inner(), len.div_ceil(chunk), "{len} in chunks of {chunk}");
            assert!(data.iter().enumerate().all(|(k, &v)| v == k + 1), "{len} in chunks of {chunk}");
        }
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_survives() {
        for _ in 0..20 {
            let result = catch_unwind(|| for_each_task(8, |i| assert!(i != 5, "task five")));
            assert!(result.is_err());
        }
        let ran = AtomicUsize::new(0);
        for_each_task(8, |_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn a_parked_helper_wakes_up() {
        let ran = AtomicUsize::new(0);
        for_each_task(2, |_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        std::thread::sleep(SPIN * 5);
        for_each_task(64, |_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 66);
    }
}
