//! A fixed team of worker threads for dsg's own kernels (decoding, and f32 products over up to 512
//! tokens), in which the calling thread takes part.
//!
//! A decoding step runs about 120 matrix-vector products of a few hundred microseconds each. Handing
//! each to rayon cost a wake-up of a parked worker per product, and rayon's idle workers competed
//! with the thread that had to run the small serial work in between. Here the caller runs part 0 of
//! every job itself, and the workers spin on an epoch counter for a short while after each job, so
//! the next product of the same step starts without a wake-up; workers that stay idle longer park.
//! Waits yield the time slice after a while, so an oversubscribed machine degrades instead of
//! stalling on a descheduled thread.
//!
//! One team serves the whole process. Jobs from several threads at once (a server decoding several
//! requests) do not queue: a caller that finds the team busy runs its whole job alone.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(500);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Incremented once per job; workers run a job when they see it change.
    epoch: AtomicUsize,
    /// The current job, valid while a job's epoch is current and `done` has not reached the workers.
    job: UnsafeCell<Option<*const Job>>,
    /// Workers finished with the current job.
    done: AtomicUsize,
    /// Whether some worker's job panicked.
    panicked: AtomicBool,
    /// Worker handles, to unpark parked workers.
    threads: Mutex<Vec<Thread>>,
    /// Per worker: whether it is parked (or about to park).
    parked: Vec<AtomicBool>,
}

// SAFETY: `job` is written only by the thread holding the team's lock, before the epoch is released,
// and read by workers only after they acquired that epoch; the pointee is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A team of `size` threads: the caller plus `size - 1` workers.
pub struct Team {
    shared: Arc<Shared>,
    /// Held while a job runs.
    busy: Mutex<()>,
    size: usize,
}

impl Team {
    /// A team of `size` threads in all (at least 1); workers start now.
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        let workers = size - 1;
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            threads: Mutex::new(Vec::with_capacity(workers)),
            parked: (0..workers).map(|_| AtomicBool::new(false)).collect(),
        });
        for w in 0..workers {
            let s = Arc::clone(&shared);
            let handle = thread::Builder::new()
                .name(format!("dsg-team-{}", w + 1))
                .spawn(move || worker(&s, w))
                .expect("spawning a decoding worker thread");
            shared
                .threads
                .lock()
                .expect("team lock")
                .push(handle.thread().clone());
        }
        Team {
            shared,
            busy: Mutex::new(()),
            size,
        }
    }

    /// The process-wide team: `RAYON_NUM_THREADS` threads if set, else one per available core.
    pub fn global() -> &'static Team {
        static TEAM: OnceLock<Team> = OnceLock::new();
        TEAM.get_or_init(|| {
            let n = std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()));
            Team::new(n)
        })
    }

    /// Runs `job(i)` for every `i` in `0..size`, at once, one per thread (`i = 0` on the caller),
    /// and returns when all have finished. If another thread is running a job, runs every part here,
    /// in order. A panic in a part is raised again here.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let guard = match self.busy.try_lock() {
            Ok(g) if self.size > 1 => g,
            _ => {
                (0..self.size).for_each(job);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for the duration of this call: we wait below until
        // every worker is done with the job before returning.
        let ptr =
            unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const Job>(job) };
        // SAFETY: we hold `busy`; no worker reads `job` until the epoch below changes.
        unsafe { *s.job.get() = Some(ptr) };
        s.done.store(0, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        for (w, parked) in s.parked.iter().enumerate() {
            if parked.load(Ordering::SeqCst) {
                s.threads.lock().expect("team lock")[w].unpark();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        let workers = self.size - 1;
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < workers {
            spin_or_yield(&mut spins);
        }
        drop(guard);
        if let Err(e) = mine {
            std::panic::resume_unwind(e);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a decoding worker thread panicked");
        }
    }
}

impl Team {
    /// Runs `work(&mut scratch, u)` for every unit `u` in `0..units`, each once, the team's threads
    /// taking the next unit as they finish one; each thread makes its `scratch` once per call. With
    /// one unit or one thread, runs them all here.
    pub fn share<S>(
        &self,
        units: usize,
        scratch: impl Fn() -> S + Sync,
        work: impl Fn(&mut S, usize) + Sync,
    ) {
        if units <= 1 || self.size == 1 {
            let mut s = scratch();
            (0..units).for_each(|u| work(&mut s, u));
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(&|_| {
            let mut s = scratch();
            loop {
                let u = next.fetch_add(1, Ordering::Relaxed);
                if u >= units {
                    break;
                }
                work(&mut s, u);
            }
        });
    }
}

/// Worker `w` (part `w + 1` of each job): waits for a new epoch, spinning for [`SPIN`] and then
/// parking, runs its part, reports done.
fn worker(s: &Shared, w: usize) {
    let mut seen = 0usize;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            if (spins.is_multiple_of(64) || spins > 2000) && start.elapsed() > SPIN {
                s.parked[w].store(true, Ordering::SeqCst);
                // Re-check after announcing, so a job published meanwhile is not missed.
                if s.epoch.load(Ordering::SeqCst) == seen {
                    thread::park_timeout(Duration::from_millis(100));
                }
                s.parked[w].store(false, Ordering::SeqCst);
            } else {
                spin_or_yield(&mut spins);
            }
        };
        seen = epoch;
        // SAFETY: the epoch was published (Release) after `job` was written, and the caller keeps
        // the job alive until `done` counts this worker.
        let job = unsafe { (*s.job.get()).expect("a job is set before its epoch") };
        let ok = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(w + 1) })).is_ok();
        if !ok {
            s.panicked.store(true, Ordering::Release);
        }
        s.done.fetch_add(1, Ordering::AcqRel);
    }
}

/// One round of a wait: a spin hint, or after `YIELD_AFTER` rounds a yield of the time slice, so
/// that on an oversubscribed machine a waiting thread lets the one it waits for run.
fn spin_or_yield(spins: &mut u32) {
    const YIELD_AFTER: u32 = 2000;
    *spins = spins.saturating_add(1);
    if *spins > YIELD_AFTER {
        thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Weight rows per chunk of work handed to a team thread by [`for_row_chunks`].
const ROWS_PER_CHUNK: usize = 32;

/// Runs `work(r0, r1)` over `0..rows` in chunks of at most `ROWS_PER_CHUNK` rows, on the
/// global [`Team`], each chunk once: the split every matrix product of the decoding step uses.
pub(crate) fn for_row_chunks(rows: usize, work: impl Fn(usize, usize) + Sync) {
    let chunks = rows.div_ceil(ROWS_PER_CHUNK);
    Team::global().share(
        chunks,
        || (),
        |_, c| {
            let r0 = c * ROWS_PER_CHUNK;
            work(r0, (r0 + ROWS_PER_CHUNK).min(rows));
        },
    );
}

/// A raw pointer to an output buffer that team threads write disjoint parts of.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub *mut f32);

impl SharedOut {
    /// The pointer `i` elements on.
    ///
    /// # Safety
    /// `i` is in bounds.
    pub unsafe fn at(&self, i: usize) -> *mut f32 {
        // SAFETY: the caller guarantees `i` is in bounds of the buffer.
        unsafe { self.0.add(i) }
    }

    /// The `len` elements from offset `at`, to write.
    ///
    /// # Safety
    /// The range is in bounds and no other thread touches it during the job.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, at: usize, len: usize) -> &mut [f32] {
        // SAFETY: the caller guarantees the range is in bounds and not touched by any other thread
        // while the returned slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }

    /// Writes `v` at offset `i`.
    ///
    /// # Safety
    /// `i` is in bounds and no other thread writes or reads offset `i` during the job.
    pub unsafe fn write(&self, i: usize, v: f32) {
        // SAFETY: the caller guarantees `i` is in bounds and that no other thread accesses it.
        unsafe { *self.0.add(i) = v };
    }
}

// SAFETY: users write disjoint ranges only, and the buffer outlives the job (`Team::run` blocks).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_per_job() {
        let team = Team::new(3);
        for _ in 0..200 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            team.run(&|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        // After the workers parked, a job still reaches them.
        thread::sleep(Duration::from_millis(5));
        let sum = AtomicUsize::new(0);
        team.run(&|i| {
            sum.fetch_add(i + 1, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn share_runs_every_unit_once_with_per_thread_scratch() {
        let team = Team::new(2);
        for units in [0, 1, 7, 300] {
            let hits: Vec<AtomicUsize> = (0..units).map(|_| AtomicUsize::new(0)).collect();
            let scratches = AtomicUsize::new(0);
            team.share(
                units,
                || scratches.fetch_add(1, Ordering::Relaxed),
                |_, u| {
                    hits[u].fetch_add(1, Ordering::Relaxed);
                },
            );
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            assert!(scratches.load(Ordering::Relaxed) <= 2);
        }
    }

    #[test]
    fn concurrent_callers_each_get_every_part() {
        let team = Arc::new(Team::new(2));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let team = Arc::clone(&team);
                thread::spawn(move || {
                    for _ in 0..100 {
                        let n = AtomicUsize::new(0);
                        team.run(&|_| {
                            n.fetch_add(1, Ordering::Relaxed);
                        });
                        assert_eq!(n.load(Ordering::Relaxed), 2);
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
    }

    #[test]
    fn a_panicking_part_is_raised_in_the_caller() {
        let team = Team::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            team.run(&|i| assert_ne!(i, 1, "part one fails"));
        }));
        assert!(r.is_err());
        // The team still works afterwards.
        let n = AtomicUsize::new(0);
        team.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
