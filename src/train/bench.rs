//! Training throughput: tokens per second of optimiser steps on random token ids (every position
//! predicted), and the process's peak memory, as `scripts/bench_train_torch.py` measures PyTorch.

use std::time::Instant;

use serde::Serialize;

use super::examples::Example;
use super::run::{TrainConfig, Trainer};
use crate::data::rng::SplitMix64;
use crate::model::{Model, NoHooks};
use crate::{Error, Result};

/// One training-throughput measurement.
#[derive(Debug, Clone, Serialize)]
pub struct TrainThroughput {
    /// `lora` or `full`.
    pub mode: String,
    /// Rows per step.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Timed steps.
    pub steps: usize,
    /// batch · seq · steps / time of the timed steps.
    pub tokens_per_s: f64,
    /// Median seconds per timed step.
    pub s_per_step_median: f64,
    /// Loss of the first and last step.
    pub loss_first: f64,
    /// Loss of the last step.
    pub loss_last: f64,
    /// Trained parameters.
    pub trainable_params: usize,
    /// Peak resident memory of the process so far (VmHWM), MiB.
    pub peak_rss_mib: Option<f64>,
}

/// The process's peak resident set (VmHWM in /proc/self/status), MiB, where the system reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resets the process's peak resident memory (Linux: `5` to `/proc/self/clear_refs`), so that
/// [`peak_rss_mib`] afterwards reports the peak of what runs next; false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Times `steps` optimiser steps (after `warmup` untimed ones) of `cfg` (its batch size; one
/// micro-batch per step) on `model`, each on a fresh batch of `seq` random ids from a seeded generator.
pub fn training_throughput(
    model: &mut Model,
    cfg: TrainConfig,
    mode: &str,
    seq: usize,
    steps: usize,
    warmup: usize,
) -> Result<TrainThroughput> {
    if steps == 0 || seq < 2 {
        return Err(Error::Invalid(format!(
            "training benchmark: need at least 1 timed step and 2 tokens a row (got {steps} steps, {seq} tokens)"
        )));
    }
    let vocab = model.config().vocab_size;
    let mut rng = SplitMix64::new(cfg.seed);
    let rows = cfg.batch_size * cfg.grad_accum * (steps + warmup);
    let examples: Vec<Example> = (0..rows)
        .map(|_| Example::text((0..seq).map(|_| rng.below(vocab) as u32).collect()))
        .collect();
    let cfg = TrainConfig {
        epochs: 1,
        max_steps: Some(steps + warmup),
        ..cfg
    };
    let batch = cfg.batch_size * cfg.grad_accum;
    let mut trainer = Trainer::new(model, cfg, &examples)?;
    let trainable_params = trainer
        .parameters()
        .iter()
        .map(|(_, t)| t.elem_count())
        .sum();
    let mut times = Vec::new();
    let mut last = Instant::now();
    trainer.run(model, &examples, &mut NoHooks, &mut |t, _| {
        if t.step_count() > warmup {
            times.push(last.elapsed().as_secs_f64());
        }
        last = Instant::now();
        Ok(())
    })?;
    let total: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    let log = &trainer.log;
    Ok(TrainThroughput {
        mode: mode.to_string(),
        batch,
        seq,
        steps,
        tokens_per_s: (batch * seq * steps) as f64 / total,
        s_per_step_median: times[times.len() / 2],
        loss_first: log.first().map_or(f64::NAN, |l| l.loss),
        loss_last: log.last().map_or(f64::NAN, |l| l.loss),
        trainable_params,
        peak_rss_mib: peak_rss_mib(),
    })
}
