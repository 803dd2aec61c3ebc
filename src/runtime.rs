//! Process-wide settings that the CLI, tests, benches and library users share: the thread
//! configuration and where the shared benchmark data lives.

use std::path::{Path, PathBuf};
use std::sync::Once;

use crate::{Error, Result};

/// Configures threads (and, on Linux with glibc, the allocator) once per process; call it before
/// the first model pass (the CLI, tests and benches all do).
///
/// candle's barrier-pool workers spin for a while after each parallel op; next to rayon's own workers
/// that oversubscribes small machines and made quantised decoding up to 10x slower here. Unless the
/// user chose a value, they park at once. candle also counts the physical cores (reading
/// /proc/cpuinfo) on every matrix product unless `RAYON_NUM_THREADS` is set: it is set once to that
/// count, which rayon and dsg's thread team then use too. Values the user set are kept.
pub fn configure_threads() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
        }
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            let n = candle_core::utils::get_num_threads();
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
        keep_freed_memory();
    });
}

/// Makes glibc's allocator keep freed blocks of up to 32 MiB in the heap, and the heap itself, instead
/// of returning them to the system (trimming off: a process keeps its peak heap). A training step allocates and frees hundreds of activation and gradient buffers of a
/// few MiB; by default each came back from `mmap` as fresh pages the kernel had to zero, which took a
/// quarter of the step's time and halved training throughput. Variables the user set
/// (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`) win.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let settings = [
            ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 32 << 20),
            ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, -1),
            ("MALLOC_TOP_PAD_", libc::M_TOP_PAD, 64 << 20),
        ];
        for (var, param, value) in settings {
            if std::env::var_os(var).is_none() {
                // SAFETY: mallopt only changes allocator parameters; it is called before the
                // process's threads start allocating in earnest, and any value is memory-safe.
                unsafe {
                    libc::mallopt(param, value);
                }
            }
        }
    }
}

/// The environment variable naming the shared data folder.
pub const SHARED_DATA_ENV: &str = "DSG_SHARED_DATA";

/// The shared benchmark data folder: `explicit` (a `--data` option), else `$DSG_SHARED_DATA`, else
/// `../shared/data` beside the source tree this binary was built from. Errors name both ways of
/// setting it when the folder does not exist.
pub fn shared_data_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    let (dir, how) = match (explicit, std::env::var_os(SHARED_DATA_ENV)) {
        (Some(p), _) => (p.to_path_buf(), "--data"),
        (None, Some(v)) => (PathBuf::from(v), SHARED_DATA_ENV),
        (None, None) => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
            "the default beside the source tree",
        ),
    };
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(Error::missing(
            &dir,
            format!("shared data folder (from {how}); pass --data DIR or set {SHARED_DATA_ENV}"),
        ))
    }
}
