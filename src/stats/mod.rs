//! Corpus statistics of SAE latents: what feature selection and gate calibration read.
//!
//! * [`FeatureStats`]: per-feature masked means, mean squares and firing frequencies, streaming
//!   and mergeable (§1.3 of the spec).
//! * [`RowActivity`] and [`token_activity`]: per-token activity of selected features, the input of
//!   the gate statistic ρ (§2).
//!
//! * [`collect`]: the model + SAE pass that accumulates the statistics over token rows
//!   ([`crate::data::rows`]) or prompts ([`prompts`]: the chat-formatted MCQ prompt of §5.1).
//! * [`shard`]: one pass split across processes (the shard from `i/n` or a scheduler's
//!   environment), and the checks that a set of shards is whole before it is merged.
//!
//! Latents arrive as right-padded `(batch, seq, d_sae)` (or `(seq, d_sae)`) tensors with each
//! row's valid length, or as plain row-major slices.

pub mod activity;
pub mod collect;
pub mod features;
mod latents;
pub mod prompts;
pub mod shard;
mod store;

pub use activity::{select_features, token_activity, RowActivity};
pub use features::{counted_tokens, FeatureStats, StatsProvenance};
