//! # dsg: Dynamic SAE Guardrails
//!
//! Inference-time precision unlearning for LLMs (Muhamed et al., 2025). Data flows through the modules in
//! order: [`model`] (hookable decoder, loaders, tokenizer) → [`sae`] (sparse autoencoders) → [`stats`]
//! (per-feature statistics over corpora) → [`guard`] (selection, gate, clamp, guardrail files) →
//! [`eval`] / [`generate`].

pub mod error;
pub mod eval;
pub mod generate;
pub mod guard;
mod kernels;
pub mod model;
pub mod output;
pub mod runtime;
pub mod sae;
pub mod stats;

pub use error::{Error, Result};
