//! The guardrail: choose features, calibrate a gate, clamp at inference, and store it all.
//!
//! * [`percentile`]: NumPy-exact percentiles.
//! * [`select`]: feature selection rules (§1.4 of the spec and the Farrell et al. baseline).
//! * [`gate`]: the per-row decision, ρ > τ and its dilution-robust variants (§2).
//! * [`calibrate`]: τ from retain-corpus scores.
//! * [`clamp`]: the residual edit at clamped tokens (§3).
//! * [`file`]: the self-describing guardrail file.

pub mod percentile;
