//! The one hookable decoder: embeddings → blocks → final norm → logits, with hook points at every block.
//!
//! Inputs are batches of token rows, right-padded; a row's results never depend on the other rows
//! (padding is masked out of attention, positions are per row). A [`KvCache`] carries keys and values
//! across calls for generation.

use candle_core::{DType, Device, IndexOp, Tensor};

use super::attention::{Attention, RopeTables, Ropes};
use super::block::{Block, Execution};
use super::config::{ModelConfig, Positions};
use super::hooks::{HookContext, HookPoint, Hooks, Site};
use super::kv::KvCache;
use super::layers::{Linear, Mlp, Norm};
use super::lora::DropoutRng;
use super::weights::WeightSource;
use crate::kernels::gemm;
use crate::{Error, Result};

/// A batch of token rows, right-padded into one `(batch, seq)` tensor.
pub struct Batch {
    rows: Vec<Vec<u32>>,
    ids: Tensor,
    lengths: Vec<usize>,
    evidence: Option<Vec<Vec<bool>>>,
}

impl Batch {
    /// Pads `rows` (each non-empty) to the longest one.
    pub fn new(rows: Vec<Vec<u32>>, device: &Device) -> Result<Self> {
        if rows.is_empty() || rows.iter().any(Vec::is_empty) {
            return Err(Error::Invalid(
                "a batch needs at least one non-empty row".into(),
            ));
        }
        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        let max = *lengths.iter().max().expect("non-empty");
        let mut flat = Vec::with_capacity(rows.len() * max);
        for r in &rows {
            flat.extend_from_slice(r);
            flat.extend(std::iter::repeat_n(0u32, max - r.len()));
        }
        let ids = Tensor::from_vec(flat, (rows.len(), max), device)?;
        Ok(Batch {
            rows,
            ids,
            lengths,
            evidence: None,
        })
    }

    /// The same batch with, per row and token, whether the token is evidence for a gate (say,
    /// written by the user rather than by the chat template); hooks read it as
    /// [`HookContext::evidence`]. Without it every token is evidence.
    pub fn with_evidence(mut self, evidence: Vec<Vec<bool>>) -> Result<Self> {
        if evidence.len() != self.rows.len()
            || evidence
                .iter()
                .zip(&self.rows)
                .any(|(e, r)| e.len() != r.len())
        {
            return Err(Error::Invalid(format!(
                "evidence flags for {} rows of lengths {:?}, but the batch has {} rows of lengths {:?}",
                evidence.len(),
                evidence.iter().map(Vec::len).collect::<Vec<_>>(),
                self.rows.len(),
                self.lengths
            )));
        }
        self.evidence = Some(evidence);
        Ok(self)
    }

    /// One row.
    pub fn single(row: Vec<u32>, device: &Device) -> Result<Self> {
        Self::new(vec![row], device)
    }

    /// The unpadded rows.
    pub fn rows(&self) -> &[Vec<u32>] {
        &self.rows
    }

    /// Real length of each row.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Always false: a batch has at least one row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Padded length.
    pub fn seq_len(&self) -> usize {
        self.ids.dim(1).unwrap_or(0)
    }

    /// The padded token ids, (batch, seq).
    pub(super) fn ids(&self) -> &Tensor {
        &self.ids
    }
}

/// Which logits to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Logits {
    /// None (e.g. for activation collection).
    None,
    /// The last real token of each row: (batch, vocab).
    #[default]
    Last,
    /// Every position: (batch, seq, vocab).
    All,
}

/// Options of one forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions {
    /// Which logits to return.
    pub logits: Logits,
    /// Stop after this block (its `hook_resid_post` is the last hook visited); no logits then.
    pub stop_after: Option<usize>,
    /// Use quantised weights where the model has them (GGUF), as llama.cpp does.
    pub quantized: bool,
}

/// Result of a forward pass.
pub struct ForwardOutput {
    /// Logits as requested.
    pub logits: Option<Tensor>,
    /// The residual stream after the last block run (before the final norm), (batch, seq, d_model).
    pub residual: Tensor,
}

/// What one pass's executions share: the batch, the options, the hook context, the positions of
/// queries and keys, and the rotary tables.
pub(super) struct PassInputs<'a> {
    pub(super) batch: &'a Batch,
    pub(super) opts: &'a ForwardOptions,
    pub(super) ctx: &'a HookContext<'a>,
    /// Per row, the position of each new token.
    pub(super) query_pos: &'a [Vec<usize>],
    /// Per row, the position of each key column (cached ones first, then the new tokens), `None`
    /// for padding.
    pub(super) key_pos: &'a [Vec<Option<usize>>],
    pub(super) rope: Ropes<'a>,
}

/// A decoder-only transformer with hook points. `Send + Sync`: many threads may run it at once, each
/// with its own hooks and cache.
pub struct Model {
    pub(super) cfg: ModelConfig,
    pub(super) embed: Tensor,
    pub(super) pos_embed: Option<Tensor>,
    pub(super) blocks: Vec<Block>,
    pub(super) final_norm: Norm,
    pub(super) lm_head: Linear,
    device: Device,
    execution: Execution,
    /// The random source of LoRA dropout (off unless training).
    pub(super) lora_rng: DropoutRng,
}

impl Model {
    /// Builds the model from a weight source whose tensors follow Hugging Face naming.
    pub fn load(cfg: ModelConfig, src: &WeightSource, device: &Device) -> Result<Self> {
        cfg.validate(src.path())?;
        let gpt2 = cfg.positions == Positions::Learned;
        let (d, v) = (cfg.d_model, cfg.vocab_size);
        let base = if gpt2 {
            gpt2_prefix(src)
        } else {
            "model.".to_string()
        };
        let embed_name = if gpt2 {
            format!("{base}wte.weight")
        } else {
            "model.embed_tokens.weight".into()
        };
        let embed = src.tensor(&embed_name, &[v, d], device)?;
        let pos_embed = if gpt2 {
            Some(src.tensor(
                &format!("{base}wpe.weight"),
                &[cfg.max_positions, d],
                device,
            )?)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            blocks.push(if gpt2 {
                let p = format!("{base}h.{i}");
                Block {
                    attn_norm: Norm::load(src, &format!("{p}.ln_1"), &cfg, device)?,
                    attn: Attention::load(src, &format!("{p}.attn"), &cfg, device)?,
                    post_attn_norm: None,
                    mlp_norm: Norm::load(src, &format!("{p}.ln_2"), &cfg, device)?,
                    mlp: Mlp::load(src, &format!("{p}.mlp"), &cfg, device)?,
                    post_mlp_norm: None,
                    window: cfg.layer_windows[i],
                }
            } else {
                let p = format!("model.layers.{i}");
                let norm = |n: &str| Norm::load(src, &format!("{p}.{n}"), &cfg, device);
                let (mlp_norm, post_attn_norm, post_mlp_norm) = if cfg.sandwich_norms {
                    (
                        norm("pre_feedforward_layernorm")?,
                        Some(norm("post_attention_layernorm")?),
                        Some(norm("post_feedforward_layernorm")?),
                    )
                } else {
                    (norm("post_attention_layernorm")?, None, None)
                };
                Block {
                    attn_norm: norm("input_layernorm")?,
                    attn: Attention::load(src, &format!("{p}.self_attn"), &cfg, device)?,
                    post_attn_norm,
                    mlp_norm,
                    mlp: Mlp::load(src, &format!("{p}.mlp"), &cfg, device)?,
                    post_mlp_norm,
                    window: cfg.layer_windows[i],
                }
            });
        }
        let final_norm = if gpt2 {
            Norm::load(src, &format!("{base}ln_f"), &cfg, device)?
        } else {
            Norm::load(src, "model.norm", &cfg, device)?
        };
        let lm_head = if !cfg.tie_embeddings && src.has("lm_head.weight") {
            Linear::load(src, "lm_head", v, d, false, device)?
        } else if cfg.tie_embeddings {
            Linear::new(embed.clone(), None).with_quantized(src.qtensor(&embed_name, device)?)?
        } else {
            return Err(Error::missing(
                src.path(),
                "tensor `lm_head.weight` (the config says tie_word_embeddings = false)",
            ));
        };
        Ok(Model {
            cfg,
            embed,
            pos_embed,
            blocks,
            final_norm,
            lm_head,
            device: device.clone(),
            execution: Execution::default(),
            lora_rng: DropoutRng::default(),
        })
    }

    /// Turns LoRA dropout on, drawing from a generator seeded with `seed`, or off (`None`, the default).
    pub fn set_lora_dropout_seed(&self, seed: Option<u64>) {
        use rand::SeedableRng;
        *self.lora_rng.lock().expect("dropout rng poisoned") =
            seed.map(rand::rngs::StdRng::seed_from_u64);
    }

    /// The architecture and sizes the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Chooses how passes run (default [`Execution::VectorPass`], which falls back to
    /// [`Execution::TensorOps`] where it cannot run; see [`Execution`]).
    pub fn set_execution(&mut self, execution: Execution) {
        self.execution = execution;
    }

    /// How passes run, as set.
    pub fn execution(&self) -> Execution {
        self.execution
    }

    /// Whether the weights have quantised copies usable with [`ForwardOptions::quantized`].
    pub fn has_quantized(&self) -> bool {
        self.lm_head.has_quantized()
    }

    /// Every hook point of this model, in visiting order.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        (0..self.cfg.n_layers)
            .flat_map(|layer| {
                Site::ALL
                    .into_iter()
                    .map(move |site| HookPoint { layer, site })
            })
            .collect()
    }

    /// Runs the model on `batch`, visiting `hooks`, extending `cache` if given.
    pub fn forward(
        &self,
        batch: &Batch,
        opts: &ForwardOptions,
        hooks: &mut dyn Hooks,
        mut cache: Option<&mut KvCache>,
    ) -> Result<ForwardOutput> {
        let (b, l) = batch.ids.dims2()?;
        let cached = cache.as_ref().map(|c| c.row_lengths());
        let past = cached.iter().flatten().copied().max().unwrap_or(0);
        self.cfg.check_context(
            "sequence length",
            format!("{} positions", past + l),
            past + l,
        )?;
        let vocab = self.cfg.vocab_size as u32;
        if let Some(bad) = batch.rows.iter().flatten().find(|&&t| t >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        if let Some(stop) = opts.stop_after {
            if stop >= self.cfg.n_layers {
                return Err(Error::Invalid(format!(
                    "stop_after block {stop}, but the model has {} blocks",
                    self.cfg.n_layers
                )));
            }
        }
        let starts: Vec<usize> = match &cache {
            Some(c) => {
                if c.key_pos.len() != b {
                    return Err(Error::Invalid(format!(
                        "cache holds {} rows, batch has {b}",
                        c.key_pos.len()
                    )));
                }
                c.row_lengths()
            }
            None => vec![0; b],
        };
        let query_pos: Vec<Vec<usize>> = starts.iter().map(|&s| (s..s + l).collect()).collect();
        let mut key_pos: Vec<Vec<Option<usize>>> = match &cache {
            Some(c) => c.key_pos.clone(),
            None => vec![Vec::new(); b],
        };
        for (row, kp) in key_pos.iter_mut().enumerate() {
            let len = batch.lengths[row];
            kp.extend((0..l).map(|i| (i < len).then_some(starts[row] + i)));
        }
        let tables = |f: &[f32], style| RopeTables::new(f, style, &starts, l, &self.device);
        let (rope, local_rope) = match &self.cfg.positions {
            Positions::Rope {
                inv_freq,
                local_inv_freq,
                style,
            } => (
                Some(tables(inv_freq, *style)?),
                local_inv_freq
                    .as_deref()
                    .map(|f| tables(f, *style))
                    .transpose()?,
            ),
            Positions::Learned => (None, None),
        };
        let ctx = HookContext {
            lengths: &batch.lengths,
            start_positions: &starts,
            tokens: &batch.rows,
            evidence: batch.evidence.as_deref(),
        };
        let inputs = PassInputs {
            batch,
            opts,
            ctx: &ctx,
            query_pos: &query_pos,
            key_pos: &key_pos,
            rope: Ropes {
                global: rope.as_ref(),
                local: local_rope.as_ref(),
            },
        };
        let out = if self.runs_vector_pass(l) {
            self.vector_pass(&inputs, hooks, cache.as_deref_mut())?
        } else {
            self.tensor_pass(&inputs, hooks, cache.as_deref_mut())?
        };
        if let Some(c) = cache {
            c.key_pos = key_pos;
        }
        Ok(out)
    }

    /// Whether a pass of `l` tokens per row runs as the vector pass: asked for, on the CPU, with f32
    /// weights, and for more than one token per row only where dsg's tile kernels run (AVX2).
    fn runs_vector_pass(&self, l: usize) -> bool {
        self.execution == Execution::VectorPass
            && self.device.is_cpu()
            && self.embed.dtype() == DType::F32
            && (l == 1 || gemm::available())
    }

    /// The residual stream after block `layer` (`blocks.{layer}.hook_resid_post`), running only blocks
    /// `0..=layer`.
    pub fn forward_until(
        &self,
        batch: &Batch,
        layer: usize,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let opts = ForwardOptions {
            logits: Logits::None,
            stop_after: Some(layer),
            quantized: false,
        };
        Ok(self.forward(batch, &opts, hooks, None)?.residual)
    }

    /// Final norm, output head and soft-cap applied to a residual stream (..., d_model).
    pub fn logits_of(&self, residual: &Tensor, quantized: bool) -> Result<Tensor> {
        let h = self.final_norm.forward(residual, self.execution)?;
        let logits = self.lm_head.forward(&h, quantized)?;
        Ok(match self.cfg.final_softcap {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }

    /// Log-probability of each next token: for each row, `len - 1` values `log p(x[t+1] | x[..=t])`.
    /// Logits are computed a chunk of positions at a time to bound memory on long rows.
    pub fn token_logprobs(&self, batch: &Batch, hooks: &mut dyn Hooks) -> Result<Vec<Vec<f32>>> {
        let opts = ForwardOptions {
            logits: Logits::None,
            stop_after: None,
            quantized: false,
        };
        let out = self.forward(batch, &opts, hooks, None)?;
        let mut result = Vec::with_capacity(batch.len());
        for (r, row) in batch.rows.iter().enumerate() {
            let n = row.len() - 1;
            let mut lp = Vec::with_capacity(n);
            const CHUNK: usize = 256;
            for start in (0..n).step_by(CHUNK) {
                let m = CHUNK.min(n - start);
                let h = out.residual.i((r, start..start + m))?;
                let logits = self.logits_of(&h, false)?;
                let logp = candle_nn::ops::log_softmax(&logits, 1)?;
                let targets =
                    Tensor::from_slice(&row[start + 1..start + 1 + m], (m, 1), &self.device)?;
                let picked = logp.gather(&targets, 1)?.squeeze(1)?;
                lp.extend(picked.to_dtype(DType::F32)?.to_vec1::<f32>()?);
            }
            result.push(lp);
        }
        Ok(result)
    }
}

/// GPT-2 checkpoints name tensors `h.0…` or `transformer.h.0…` depending on how they were saved.
fn gpt2_prefix(src: &WeightSource) -> String {
    if src.has("transformer.wte.weight") {
        "transformer.".into()
    } else {
        String::new()
    }
}

/// Shows `t` to the hooks at `(layer, site)` if they want it; returns their replacement (checked to
/// have the same shape) or `t`.
pub(super) fn visit_site(
    hooks: &mut dyn Hooks,
    ctx: &HookContext,
    layer: usize,
    site: Site,
    t: Tensor,
) -> Result<Tensor> {
    let point = HookPoint { layer, site };
    if !hooks.wants(point) {
        return Ok(t);
    }
    match hooks.visit(point, ctx, &t)? {
        Some(new) if new.dims() != t.dims() => Err(Error::Invalid(format!(
            "hook at {point} returned shape {:?}, expected {:?}",
            new.dims(),
            t.dims()
        ))),
        Some(new) => Ok(new),
        None => Ok(t),
    }
}
