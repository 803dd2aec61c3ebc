//! The guardrail: choose features, calibrate a gate, clamp at inference, and store it all.
//!
//! * [`percentile`]: NumPy-exact percentiles.
//! * [`select`]: feature selection rules (§1.4 of the spec and the Farrell et al. baseline).
//! * [`gate`]: the per-row decision, ρ > τ and its dilution-robust variants (§2).
//! * [`calibrate`]: the gate threshold from retain-corpus scores.
//! * [`clamp`]: the residual edit at clamped tokens (§3).
//! * [`file`]: the self-describing guardrail file.
//! * [`fit`]: statistics → selection → calibration → guardrail file.
//! * [`hook`]: the guardrail applied inside the model's forward pass.

pub mod calibrate;
pub mod clamp;
pub mod file;
pub mod fit;
pub mod gate;
pub mod hook;
pub mod percentile;
pub mod select;

use std::path::{Path, PathBuf};

pub use calibrate::{calibrate, Calibration, CalibrationSummary};
pub use clamp::{clamp_mask, clamp_residual, ClampSpec};
pub use file::GuardrailFile;
pub use fit::{fit, FitConfig};
pub use gate::{Gate, GateDecision, GateStream};
pub use hook::{Guardrail, PassRecord, RowRecord};
pub use percentile::{percentile, percentiles};
pub use select::{PercentileRule, Ranking, SelectionRule};

/// The WMDP-bio guardrail that ships with dsg for the default model and SAE, relative to the
/// crate root (how it was fitted and how it scores: `EVALUATION.md`).
pub const DEFAULT_GUARD_FILE: &str = "assets/guards/wmdp-bio-smollm2-135m-L3.json";

/// Absolute path of [`DEFAULT_GUARD_FILE`].
pub fn default_guard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_GUARD_FILE)
}
