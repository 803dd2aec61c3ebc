//! Text generation with a KV cache: greedy or temperature/top-p sampling, stop tokens, hooks active on
//! the prompt pass and on every decoding step.

pub mod guarded;

pub use crate::stats::prompts::{user_prompt, Prompt};
pub use guarded::{answer, GuardedAnswer};

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};

use crate::model::{Batch, ForwardOptions, Hooks, KvCache, Logits, Model};
use crate::{Error, Result};

/// How to pick tokens and when to stop.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// 0 for greedy decoding; otherwise the softmax temperature.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
    /// Token ids that end generation (included in the output).
    pub stop_tokens: Vec<u32>,
    /// Decode with quantised weights when the model has them (llama.cpp-style); the prompt pass is f32.
    pub quantized_decode: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_tokens: Vec::new(),
            quantized_decode: true,
        }
    }
}

impl GenerateOptions {
    /// Checks every option's range; errors name the field and its CLI option.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(Error::out_of_range(
                "max_new_tokens (--max-tokens)",
                0,
                "at least 1 new token",
            ));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::out_of_range(
                "temperature (--temperature)",
                self.temperature,
                "a finite number >= 0 (0 = greedy)",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::out_of_range(
                "top_p (--top-p)",
                self.top_p,
                "a number in (0, 1]",
            ));
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StopReason {
    /// A stop token was produced.
    StopToken,
    /// `max_new_tokens` was reached.
    Length,
}

/// The generated continuation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New token ids.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub stop: StopReason,
    /// Seconds spent on the prompt pass.
    pub prefill_secs: f64,
    /// Seconds spent decoding after the first token.
    pub decode_secs: f64,
}

/// Picks the next token from a logits vector.
pub struct Sampler {
    temperature: f64,
    top_p: f64,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    /// A sampler with the given temperature (0 = greedy), top-p and seed.
    pub fn new(temperature: f64, top_p: f64, seed: u64) -> Self {
        Sampler {
            temperature,
            top_p,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    /// Chooses a token from `logits` (vocab).
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.iter().any(|x| x.is_nan()) {
            return Err(Error::Invalid("logits contain NaN".into()));
        }
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
                    if x > best.1 {
                        (i, x)
                    } else {
                        best
                    }
                })
                .0 as u32
        };
        if self.temperature <= 0.0 {
            return Ok(argmax());
        }
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as u32, ((x as f64 - max) / self.temperature).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut kept = 0.0;
        let mut cut = probs.len();
        for (i, p) in probs.iter().enumerate() {
            kept += p.1;
            if kept >= self.top_p {
                cut = i + 1;
                break;
            }
        }
        probs.truncate(cut);
        let mass: f64 = probs.iter().map(|p| p.1).sum();
        let mut u = self.rng.random::<f64>() * mass;
        for (id, p) in &probs {
            if u < *p {
                return Ok(*id);
            }
            u -= p;
        }
        Ok(probs.last().map(|p| p.0).unwrap_or_else(argmax))
    }
}

fn last_logits(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// Generates a continuation of `prompt` (token ids, BOS/template already applied). `hooks` see the prompt
/// pass and every decoding step; `on_token` is called with each new id as it is produced.
///
/// Before any work, checks the options ([`GenerateOptions::validate`]) and that the prompt plus
/// `max_new_tokens` fits the model's context.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    opts: &GenerateOptions,
    hooks: &mut dyn Hooks,
    on_token: impl FnMut(u32),
) -> Result<Generation> {
    generate_marked(model, prompt, None, opts, hooks, on_token)
}

/// [`generate`] with, per prompt id, whether it is evidence for gates (the user's text; see
/// [`crate::model::Batch::with_evidence`]); generated tokens are always evidence.
pub fn generate_marked(
    model: &Model,
    prompt: &[u32],
    evidence: Option<&[bool]>,
    opts: &GenerateOptions,
    hooks: &mut dyn Hooks,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    opts.validate()?;
    let total = prompt.len().saturating_add(opts.max_new_tokens);
    model.config().check_context(
        "prompt + max_new_tokens (--max-tokens)",
        format!(
            "{} + {} = {total} tokens",
            prompt.len(),
            opts.max_new_tokens
        ),
        total,
    )?;
    let device = model.device();
    let mut cache = KvCache::new(model.config().n_layers, 1);
    let mut sampler = Sampler::new(opts.temperature, opts.top_p, opts.seed);
    let t0 = std::time::Instant::now();
    let prefill = ForwardOptions {
        logits: Logits::Last,
        stop_after: None,
        quantized: false,
    };
    let mut batch = Batch::single(prompt.to_vec(), device)?;
    if let Some(e) = evidence {
        batch = batch.with_evidence(vec![e.to_vec()])?;
    }
    let out = model.forward(&batch, &prefill, hooks, Some(&mut cache))?;
    let mut logits = last_logits(out.logits.as_ref().expect("asked for logits"))?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let step = ForwardOptions {
        quantized: opts.quantized_decode && model.has_quantized(),
        ..prefill
    };
    let mut tokens = Vec::new();
    let mut stop = StopReason::Length;
    while tokens.len() < opts.max_new_tokens {
        let next = sampler.sample(&logits)?;
        tokens.push(next);
        on_token(next);
        if opts.stop_tokens.contains(&next) {
            stop = StopReason::StopToken;
            break;
        }
        if tokens.len() == opts.max_new_tokens {
            break;
        }
        let out = model.forward(
            &Batch::single(vec![next], device)?,
            &step,
            hooks,
            Some(&mut cache),
        )?;
        logits = last_logits(out.logits.as_ref().expect("asked for logits"))?;
    }
    Ok(Generation {
        tokens,
        stop,
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
    })
}
