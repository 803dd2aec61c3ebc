//! Throughput measurements of the forward pass (prefill) and of KV-cached decoding, for `dsg bench`.

use std::time::{Duration, Instant};

use candle_core::Tensor;

use crate::generate::{generate, GenerateOptions};
use crate::model::{Batch, ForwardOptions, HookContext, HookPoint, Hooks, Logits, Model};
use crate::{Error, Result};

/// One measured configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Throughput {
    /// What was measured (`prefill` or `decode`).
    pub phase: String,
    /// Prompt length for prefill; number of generated tokens for decode.
    pub tokens: usize,
    /// Median seconds over the repetitions.
    pub median_secs: f64,
    /// Tokens per second at the median.
    pub tokens_per_sec: f64,
    /// Timed runs the median is taken over.
    pub reps: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The batch-1 pass over the first `len` of `tokens` that the timings run, with last-position
/// logits.
fn single_pass(
    model: &Model,
    tokens: &[u32],
    len: usize,
    reps: usize,
) -> Result<(Batch, ForwardOptions)> {
    if tokens.len() < len || reps == 0 {
        return Err(Error::Invalid(format!(
            "timing {len} tokens needs that many tokens ({} given) and reps > 0",
            tokens.len()
        )));
    }
    let batch = Batch::single(tokens[..len].to_vec(), model.device())?;
    let opts = ForwardOptions {
        logits: Logits::Last,
        ..Default::default()
    };
    Ok((batch, opts))
}

/// Prefill throughput: one forward pass over the first `len` of `tokens` (last-position logits), median
/// of `reps` runs after one warm-up, with `hooks` active.
pub fn prefill(
    model: &Model,
    tokens: &[u32],
    len: usize,
    reps: usize,
    hooks: &mut dyn Hooks,
) -> Result<Throughput> {
    let (batch, opts) = single_pass(model, tokens, len, reps)?;
    model.forward(&batch, &opts, hooks, None)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        model.forward(&batch, &opts, hooks, None)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let m = median(times);
    Ok(Throughput {
        phase: "prefill".into(),
        tokens: len,
        median_secs: m,
        tokens_per_sec: len as f64 / m,
        reps,
    })
}

/// Decode throughput: greedy generation of `n_new` tokens after `prompt` (no stop tokens), timing the
/// steps after the first token; median of `reps` runs.
pub fn decode(
    model: &Model,
    prompt: &[u32],
    n_new: usize,
    quantized: bool,
    reps: usize,
    hooks: &mut dyn Hooks,
) -> Result<Throughput> {
    let opts = GenerateOptions {
        max_new_tokens: n_new,
        quantized_decode: quantized,
        ..Default::default()
    };
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let g = generate(model, prompt, &opts, hooks, |_| {})?;
        times.push(g.decode_secs / (g.tokens.len().max(2) - 1) as f64);
    }
    let per_token = median(times);
    Ok(Throughput {
        phase: if quantized {
            "decode (quantised)"
        } else {
            "decode (f32)"
        }
        .into(),
        tokens: n_new,
        median_secs: per_token * (n_new.max(2) - 1) as f64,
        tokens_per_sec: 1.0 / per_token,
        reps: reps.max(1),
    })
}

/// The cost of a hook on a forward pass: plain and hooked medians over interleaved runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Overhead {
    /// Prompt length.
    pub tokens: usize,
    /// Median seconds without the hook under test.
    pub plain_secs: f64,
    /// Median seconds with it.
    pub hooked_secs: f64,
    /// `100 · (hooked / plain − 1)`: below the spread of single passes on a busy machine.
    pub overhead_pct: f64,
    /// Median seconds spent inside the hooks under test per pass (their own work, timed around
    /// each visit, so the rest of the pass's noise does not enter it).
    pub in_hook_secs: f64,
    /// `100 · in_hook / plain`.
    pub in_hook_pct: f64,
    /// Runs of each.
    pub reps: usize,
}

/// Times one forward pass (batch 1, last-position logits) over the first `len` of `tokens` with
/// `plain` hooks and with `hooked` ones, alternating the two `reps` times after a warm-up of
/// each, so that drifts of the machine's speed affect both alike.
pub fn hook_overhead(
    model: &Model,
    tokens: &[u32],
    len: usize,
    reps: usize,
    plain: &mut dyn Hooks,
    hooked: &mut dyn Hooks,
) -> Result<Overhead> {
    let (batch, opts) = single_pass(model, tokens, len, reps)?;
    let time = |hooks: &mut dyn Hooks| -> Result<f64> {
        let t = Instant::now();
        model.forward(&batch, &opts, hooks, None)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let mut hooked = Timed {
        inner: hooked,
        spent: Duration::ZERO,
    };
    time(plain)?;
    time(&mut hooked)?;
    let (mut p, mut h, mut inside) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        p.push(time(plain)?);
        hooked.spent = Duration::ZERO;
        h.push(time(&mut hooked)?);
        inside.push(hooked.spent.as_secs_f64());
    }
    let (plain_secs, hooked_secs, in_hook_secs) = (median(p), median(h), median(inside));
    Ok(Overhead {
        tokens: len,
        plain_secs,
        hooked_secs,
        overhead_pct: 100.0 * (hooked_secs / plain_secs - 1.0),
        in_hook_secs,
        in_hook_pct: 100.0 * in_hook_secs / plain_secs,
        reps,
    })
}

/// Hooks that add up the time spent in their visits.
struct Timed<'a> {
    inner: &'a mut dyn Hooks,
    spent: Duration,
}

impl Hooks for Timed<'_> {
    fn wants(&self, point: HookPoint) -> bool {
        self.inner.wants(point)
    }

    fn visit(
        &mut self,
        point: HookPoint,
        ctx: &HookContext,
        act: &Tensor,
    ) -> Result<Option<Tensor>> {
        let t = Instant::now();
        let out = self.inner.visit(point, ctx, act);
        self.spent += t.elapsed();
        out
    }
}
