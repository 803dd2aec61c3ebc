//! Training the language model itself through candle's autograd on dsg's own decoder (hooks
//! included): full fine-tuning or LoRA, AdamW with decoupled weight decay, gradient accumulation and
//! clipping, warm-up with cosine or linear decay, loss on answer tokens only, and checkpoints from
//! which a run resumes exactly. LoRA runs write PEFT adapters ([`crate::model::Adapter`]).

pub mod bench;
pub mod examples;
pub mod objective;
pub mod optim;
pub mod output;
pub mod params;
pub mod rmu;
pub mod run;
pub mod schedule;

pub use examples::{batch_nll, mean_nll, row_nll, Example};
pub use objective::Objective;
pub use optim::{AdamW, AdamWConfig};
pub use output::{train_to_dir, RunOptions, RunSummary};
pub use params::{LoraSpec, Method};
pub use run::{StepLog, TrainConfig, Trainer};
pub use schedule::Decay;
