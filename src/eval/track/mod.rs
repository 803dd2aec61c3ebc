//! The forgetting tracks: one command each, writing `results/forgetting/<track>/`.
//!
//! * [`knowledge`]: Track K, knowledge the default model has (ARC-Easy life science, MMLU).
//! * [`topics`]: the keyword rule that gives ARC questions a science topic.

pub mod knowledge;
pub mod topics;
