//! Process-wide settings that the CLI, tests, benches and library users share: the thread
//! configuration and where the shared benchmark data lives.

use std::path::{Path, PathBuf};
use std::sync::Once;

use crate::{Error, Result};

/// Configures threads once per process; call it before the first model pass (the CLI, tests and
/// benches all do).
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
    });
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
