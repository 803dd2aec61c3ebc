//! Evaluation harnesses driven through the library: perplexity (more to come: MCQ scoring, gate metrics).

pub mod perplexity;
pub mod speed;
