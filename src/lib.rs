//! # dsg: Dynamic SAE Guardrails
//!
//! Inference-time precision unlearning for LLMs (Muhamed et al., 2025). Data flows through the modules in
//! order: [`model`] (hookable decoder, loaders, tokenizer) and [`data`] (every data file format, the
//! canonical split, token rows) → [`sae`] (sparse autoencoders) → [`stats`]
//! (per-feature statistics over corpora) → [`guard`] (selection, gate, clamp, guardrail files) →
//! [`eval`] / [`generate`] / [`serve`].

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod assets;
pub mod data;
pub mod error;
pub mod eval;
pub mod generate;
pub mod guard;
mod kernels;
pub mod model;
pub mod output;
pub mod runtime;
pub mod sae;
pub mod serve;
pub mod stats;
pub mod train;

pub use error::{Error, Result};
