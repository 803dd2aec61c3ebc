//! The guardrail: choose features, calibrate a gate, clamp at inference, and store it all.
//!
//! * [`percentile`](mod@percentile): NumPy-exact percentiles.
//! * [`select`]: feature selection rules (§1.4 of the spec and the Farrell et al. baseline).
//! * [`gate`]: the per-row decision, ρ > τ and its dilution-robust variants (§2).
//! * [`calibrate`](mod@calibrate): the gate threshold from retain-corpus scores.
//! * [`clamp`]: the residual edit at clamped tokens (§3).
//! * [`file`](mod@file): the self-describing guardrail file.
//! * [`fit`](mod@fit): statistics → selection → calibration → guardrail file.
//! * [`hook`]: the guardrail applied inside the model's forward pass.
//! * [`intervention`]: what a fired gate leads to: a clamp, or a refusal.
//! * [`probe`], [`logistic`], [`probe_fit`], [`probe_request`]: a logistic-regression probe on the
//!   residual (or the SAE's latents) as the gate, its solver, fitting a probe-gated guardrail, and
//!   `dsg guard probe`'s prompts.
//! * [`load`]: a guardrail file and its SAE loaded for a model, with the identity checks.
//! * [`stats_files`]: the statistics stored beside a guardrail, and merging shards of them.
//! * [`recipe`]: the shipped guardrail's fit and the demo's questions.

pub mod calibrate;
pub mod clamp;
pub mod file;
pub mod fit;
pub mod gate;
pub mod hook;
pub mod intervention;
pub mod load;
pub mod logistic;
pub mod percentile;
pub mod probe;
pub mod probe_fit;
pub mod probe_request;
pub mod recipe;
pub mod select;
pub mod stats_files;

pub use calibrate::{calibrate, Calibration, CalibrationSummary};
pub use clamp::{clamp_mask, clamp_residual, ClampSpec};
pub use file::{ArtifactIdentity, Evidence, GuardrailFile};
pub use fit::{fit, FitConfig, FitObserver, FitOutcome, FitRequest};
pub use gate::{Gate, GateDecision, GateStream, TokenSignal};
pub use hook::{Guardrail, PassRecord, RowRecord};
pub use intervention::{Intervention, REFUSAL};
pub use load::load_sae;
pub use percentile::{percentile, percentiles};
pub use probe::{Probe, ProbeInput};
pub use select::{PercentileRule, Ranking, SelectionRule};
pub use stats_files::{merge_shards, StatsFiles};
