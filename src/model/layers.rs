//! The sublayers of the decoder: linear maps, norms, MLP, attention with rotary embeddings.
//!
//! Each has a `load` from a [`WeightSource`] and a `forward`. Kernels come in two flavours: fused
//! (fast, no gradient) for inference, and differentiable (plain tensor ops) for training through
//! candle's autograd; [`Kernels`] picks one.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};

use super::config::{MlpActivation, ModelConfig, NormKind, RopeStyle};
use super::q4_1::Q41Matrix;
use super::softmax::masked_softmax;
use super::weights::WeightSource;
use crate::Result;

/// Which kernel flavour the forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// Fused CPU/GPU kernels (no backward pass).
    #[default]
    Fused,
    /// Plain tensor ops that candle can differentiate.
    Differentiable,
}

/// A quantised copy of a weight matrix.
enum QuantWeight {
    /// Any ggml type with a candle kernel (Q8_0, Q4_0, k-quants).
    Candle(QMatMul),
    /// Q4_1, with dsg's own kernel.
    Q41(Q41Matrix),
}

/// A linear map `y = x·Wᵀ + b`, optionally with a quantised copy of `W` for fast decoding.
pub struct Linear {
    /// Weight, (out, in), f32.
    pub weight: Tensor,
    /// Bias, (out).
    pub bias: Option<Tensor>,
    quantized: Option<QuantWeight>,
}

impl Linear {
    /// Wraps existing tensors.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            quantized: None,
        }
    }

    /// Loads `{prefix}.weight` (out, in) and, if `bias`, `{prefix}.bias`.
    pub fn load(
        src: &WeightSource,
        prefix: &str,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
        device: &Device,
    ) -> Result<Self> {
        let name = format!("{prefix}.weight");
        let weight = src.tensor(&name, &[out_dim, in_dim], device)?;
        let bias = if bias {
            Some(src.tensor(&format!("{prefix}.bias"), &[out_dim], device)?)
        } else {
            None
        };
        Linear::new(weight, bias).with_quantized(src.qtensor(&name, device)?)
    }

    /// Adds a quantised copy of the weight, used by forward passes that ask for it. Q4_1 keeps its
    /// blocks (dsg's kernel); Q4_0 and Q8_0 use candle's; other types without a SIMD kernel here are
    /// re-quantised from the f32 weight to Q8_0 (within about 0.4% of the stored values).
    pub fn with_quantized(mut self, q: Option<QTensor>) -> Result<Self> {
        self.quantized = match q {
            None => None,
            Some(q) if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) => {
                None
            }
            Some(q) if matches!(q.dtype(), GgmlDType::Q4_0 | GgmlDType::Q8_0) => {
                Some(QuantWeight::Candle(QMatMul::from_qtensor(q)?))
            }
            Some(q) => match Q41Matrix::from_qtensor(&q)? {
                Some(m) => Some(QuantWeight::Q41(m)),
                None => Some(Self::q8_0(&self.weight)?),
            },
        };
        Ok(self)
    }

    fn q8_0(weight: &Tensor) -> Result<QuantWeight> {
        Ok(QuantWeight::Candle(QMatMul::from_qtensor(
            QTensor::quantize(weight, GgmlDType::Q8_0)?,
        )?))
    }

    /// Stacks maps that read the same input into one (outputs concatenated), so one matrix product
    /// replaces several. Missing biases count as zero; a quantised copy is made (Q8_0) if any part had one.
    pub fn concat(parts: &[Linear]) -> Result<Self> {
        let ws: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let weight = Tensor::cat(&ws, 0)?;
        let bias = if parts.iter().any(|p| p.bias.is_some()) {
            let bs = parts
                .iter()
                .map(|p| match &p.bias {
                    Some(b) => Ok(b.clone()),
                    None => Tensor::zeros(p.weight.dim(0)?, DType::F32, p.weight.device()),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Some(Tensor::cat(&bs, 0)?)
        } else {
            None
        };
        let q41: Vec<&Q41Matrix> = parts
            .iter()
            .filter_map(|p| match &p.quantized {
                Some(QuantWeight::Q41(m)) => Some(m),
                _ => None,
            })
            .collect();
        let quantized = if q41.len() == parts.len() {
            Q41Matrix::concat(&q41).map(QuantWeight::Q41)
        } else if parts.iter().any(|p| p.quantized.is_some()) {
            Some(Self::q8_0(&weight)?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            quantized,
        })
    }

    /// Whether a quantised copy of the weight is available.
    pub fn has_quantized(&self) -> bool {
        match &self.quantized {
            Some(QuantWeight::Candle(q)) => matches!(q, QMatMul::QTensor(_)),
            Some(QuantWeight::Q41(_)) => true,
            None => false,
        }
    }

    /// Applies the map to `x` of shape (..., in); `quantized` uses the stored quantised weight when present.
    pub fn forward(&self, x: &Tensor, quantized: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let y = match (&self.quantized, quantized) {
            (Some(QuantWeight::Candle(q)), true) => q.forward(&x2)?,
            (Some(QuantWeight::Q41(m)), true) if x2.device().is_cpu() => {
                let xs = x2.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                Tensor::from_vec(m.matmul(&xs, rows), (rows, m.rows()), x2.device())?
            }
            _ => x2.matmul(&self.weight.t()?)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty dims") = y.dim(1)?;
        Ok(y.reshape(out_dims)?)
    }
}

/// A normalisation layer.
pub struct Norm {
    kind: NormKind,
    /// Scale (for Gemma already `1 + w`).
    scale: Tensor,
    bias: Option<Tensor>,
    eps: f32,
}

impl Norm {
    /// Loads `{prefix}.weight` (and `.bias` for LayerNorm).
    pub fn load(
        src: &WeightSource,
        prefix: &str,
        cfg: &ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        let d = cfg.d_model;
        let w = src.tensor(&format!("{prefix}.weight"), &[d], device)?;
        let scale = match cfg.norm {
            NormKind::RmsPlusOne => (w + 1.0)?,
            _ => w,
        };
        let bias = match cfg.norm {
            NormKind::Layer => Some(src.tensor(&format!("{prefix}.bias"), &[d], device)?),
            _ => None,
        };
        Ok(Norm {
            kind: cfg.norm,
            scale,
            bias,
            eps: cfg.norm_eps as f32,
        })
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        use candle_nn::ops;
        let y = match (&self.bias, kernels) {
            (Some(b), Kernels::Fused) => ops::layer_norm(x, &self.scale, b, self.eps)?,
            (Some(b), Kernels::Differentiable) => {
                ops::layer_norm_slow(x, &self.scale, b, self.eps)?
            }
            (None, Kernels::Fused) => ops::rms_norm(x, &self.scale, self.eps)?,
            (None, Kernels::Differentiable) => ops::rms_norm_slow(x, &self.scale, self.eps)?,
        };
        debug_assert!(self.kind == NormKind::Layer || self.bias.is_none());
        Ok(y)
    }
}

/// The feed-forward sublayer: gated (gate and up fused into one map, then down) or plain (fc/proj).
pub struct Mlp {
    /// `[gate; up]` stacked (gated MLPs) or GPT-2's `c_fc`.
    up: Linear,
    down: Linear,
    gated: bool,
    activation: MlpActivation,
}

impl Mlp {
    /// Loads a gated MLP (`{prefix}.gate_proj/up_proj/down_proj`) or GPT-2's (`c_fc/c_proj`).
    pub fn load(
        src: &WeightSource,
        prefix: &str,
        cfg: &ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let lin = |name: &str, out: usize, inp: usize| {
            Linear::load(src, &format!("{prefix}.{name}"), out, inp, false, device)
        };
        Ok(if cfg.gated_mlp {
            Mlp {
                up: Linear::concat(&[lin("gate_proj", f, d)?, lin("up_proj", f, d)?])?,
                down: lin("down_proj", d, f)?,
                gated: true,
                activation: cfg.activation,
            }
        } else {
            Mlp {
                up: conv1d(src, &format!("{prefix}.c_fc"), d, f, device)?,
                down: conv1d(src, &format!("{prefix}.c_proj"), f, d, device)?,
                gated: false,
                activation: cfg.activation,
            }
        })
    }

    /// Applies the MLP.
    pub fn forward(&self, x: &Tensor, quantized: bool) -> Result<Tensor> {
        let act = |t: &Tensor| -> Result<Tensor> {
            Ok(match self.activation {
                MlpActivation::Silu => candle_nn::ops::silu(t)?,
                MlpActivation::GeluTanh => t.gelu()?,
            })
        };
        let h = self.up.forward(x, quantized)?;
        let h = if self.gated {
            let f = h.dim(D::Minus1)? / 2;
            (act(&h.narrow(D::Minus1, 0, f)?)? * h.narrow(D::Minus1, f, f)?)?
        } else {
            act(&h)?
        };
        self.down.forward(&h, quantized)
    }
}

/// GPT-2's Conv1D stores the weight as (in, out); transpose it into a [`Linear`].
pub fn conv1d(
    src: &WeightSource,
    prefix: &str,
    in_dim: usize,
    out_dim: usize,
    device: &Device,
) -> Result<Linear> {
    let w = src.tensor(&format!("{prefix}.weight"), &[in_dim, out_dim], device)?;
    let b = src.tensor(&format!("{prefix}.bias"), &[out_dim], device)?;
    Ok(Linear::new(w.t()?.contiguous()?, Some(b)))
}

/// Rotary embedding tables for a batch: cos and sin of shape (batch, seq, head_dim/2), or (seq, head_dim/2)
/// when every row starts at the same position.
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl RopeTables {
    /// Tables for rows whose first new token sits at `starts[b]`, each `seq` tokens long.
    pub fn new(
        inv_freq: &[f32],
        style: RopeStyle,
        starts: &[usize],
        seq: usize,
        device: &Device,
    ) -> Result<Self> {
        let half = inv_freq.len();
        let same = starts.iter().all(|&s| s == starts[0]);
        let rows: Vec<usize> = if same {
            vec![starts[0]]
        } else {
            starts.to_vec()
        };
        let mut cos = Vec::with_capacity(rows.len() * seq * half);
        let mut sin = Vec::with_capacity(rows.len() * seq * half);
        for &start in &rows {
            for t in 0..seq {
                let pos = (start + t) as f32;
                for &f in inv_freq {
                    let angle = pos * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape: Vec<usize> = if same {
            vec![seq, half]
        } else {
            vec![rows.len(), seq, half]
        };
        Ok(RopeTables {
            cos: Tensor::from_vec(cos, shape.clone(), device)?,
            sin: Tensor::from_vec(sin, shape, device)?,
            style,
        })
    }

    /// Rotates `x` of shape (batch, heads, seq, head_dim).
    pub fn apply(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        use candle_nn::rotary_emb as re;
        let x = x.contiguous()?;
        Ok(match (self.style, kernels) {
            (RopeStyle::HalfSplit, Kernels::Fused) => re::rope(&x, &self.cos, &self.sin)?,
            (RopeStyle::Interleaved, Kernels::Fused) => re::rope_i(&x, &self.cos, &self.sin)?,
            (RopeStyle::HalfSplit, Kernels::Differentiable) => {
                re::rope_slow(&x, &self.cos, &self.sin)?
            }
            (RopeStyle::Interleaved, Kernels::Differentiable) => {
                re::rope_i_slow(&x, &self.cos, &self.sin)?
            }
        })
    }
}

/// Multi-head (grouped-query) self-attention.
pub struct Attention {
    /// `[q; k; v]` stacked into one map.
    qkv: Linear,
    o: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
}

/// Queries attended at once: bounds the score matrix on long inputs and lets each chunk skip the keys
/// after its last query.
const QUERY_CHUNK: usize = 128;

impl Attention {
    /// Loads `{prefix}.{q,k,v,o}_proj` (or GPT-2's fused `c_attn` / `c_proj`).
    pub fn load(
        src: &WeightSource,
        prefix: &str,
        cfg: &ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        let (d, hd) = (cfg.d_model, cfg.head_dim);
        let (qd, kvd) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
        let (qkv, o) = if cfg.gated_mlp {
            let lin = |name: &str, out: usize, inp: usize, bias: bool| {
                Linear::load(src, &format!("{prefix}.{name}"), out, inp, bias, device)
            };
            (
                Linear::concat(&[
                    lin("q_proj", qd, d, cfg.qkv_bias)?,
                    lin("k_proj", kvd, d, cfg.qkv_bias)?,
                    lin("v_proj", kvd, d, cfg.qkv_bias)?,
                ])?,
                lin("o_proj", d, qd, cfg.out_bias)?,
            )
        } else {
            (
                conv1d(src, &format!("{prefix}.c_attn"), d, 3 * d, device)?,
                conv1d(src, &format!("{prefix}.c_proj"), d, d, device)?,
            )
        };
        Ok(Attention {
            qkv,
            o,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: hd,
            scale: cfg.attn_scale,
            softcap: cfg.attn_softcap,
        })
    }

    /// Projects `x` (batch, seq, d) to q (batch, heads, seq, hd) and k, v (batch, kv_heads, seq, hd),
    /// with rotary embeddings applied when `rope` is given.
    pub fn qkv(
        &self,
        x: &Tensor,
        rope: Option<&RopeTables>,
        kernels: Kernels,
        quantized: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l, _) = x.dims3()?;
        let split = |t: Tensor, heads: usize| -> Result<Tensor> {
            Ok(t.reshape((b, l, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (qd, kvd) = (
            self.n_heads * self.head_dim,
            self.n_kv_heads * self.head_dim,
        );
        let all = self.qkv.forward(x, quantized)?;
        let q = split(all.narrow(2, 0, qd)?, self.n_heads)?;
        let k = split(all.narrow(2, qd, kvd)?, self.n_kv_heads)?;
        let v = split(all.narrow(2, qd + kvd, kvd)?, self.n_kv_heads)?;
        match rope {
            Some(r) => Ok((r.apply(&q, kernels)?, r.apply(&k, kernels)?, v)),
            None => Ok((q, k, v)),
        }
    }

    /// Attends `q` (batch, heads, seq, hd) over all keys `k`, `v` (batch, kv_heads, keys, hd) under the
    /// additive `mask` (batch, seq, keys) and applies the output projection: (batch, seq, d).
    pub fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        kernels: Kernels,
        quantized: bool,
    ) -> Result<Tensor> {
        let (b, h, l, hd) = q.dims4()?;
        let keys = k.dim(2)?;
        let g = h / self.n_kv_heads;
        // Group the query heads that share a kv head, so k and v need no repeat.
        let qg = (q.reshape((b, self.n_kv_heads, g, l, hd))? * self.scale)?;
        // Queries are taken in chunks; a chunk only needs the keys up to its last query (cached keys
        // come first, then the new tokens in order), which skips most of the causally masked work.
        let cached = keys - l;
        let chunk = if l <= QUERY_CHUNK { l } else { QUERY_CHUNK };
        let mut outs = Vec::with_capacity(l.div_ceil(chunk));
        for start in (0..l).step_by(chunk) {
            let n = chunk.min(l - start);
            let visible = cached + start + n;
            let qc = qg
                .narrow(3, start, n)?
                .reshape((b, self.n_kv_heads, g * n, hd))?;
            let kc = k.narrow(2, 0, visible)?;
            let vc = v.narrow(2, 0, visible)?;
            let scores = qc.matmul(&kc.t()?)?; // (b, kvh, g*n, visible)
            let m = mask.narrow(1, start, n)?.narrow(2, 0, visible)?;
            let probs = masked_softmax(&scores, &m, self.softcap, kernels)?;
            let o = probs.matmul(&vc.contiguous()?)?; // (b, kvh, g*n, hd)
            outs.push(o.reshape((b, self.n_kv_heads, g, n, hd))?);
        }
        let out = if outs.len() == 1 {
            outs.pop().expect("one chunk")
        } else {
            Tensor::cat(&outs, 3)?
        };
        let out = out
            .reshape((b, h, l, hd))?
            .transpose(1, 2)?
            .reshape((b, l, h * hd))?;
        self.o.forward(&out, quantized)
    }
}

/// Builds the additive attention mask (batch, seq, keys): 0 where query `i` of row `b` may see key `j`,
/// a large negative number elsewhere. Keys are visible when valid, not in the future, and within the
/// sliding window if any.
pub fn attention_mask(
    query_pos: &[Vec<usize>],
    key_pos: &[Vec<Option<usize>>],
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    const MASKED: f32 = -1e30;
    let b = query_pos.len();
    let l = query_pos[0].len();
    let t = key_pos[0].len();
    let mut data = Vec::with_capacity(b * l * t);
    for (qs, ks) in query_pos.iter().zip(key_pos) {
        for &qp in qs {
            data.extend(ks.iter().map(|kp| match kp {
                Some(kp) if *kp <= qp && window.is_none_or(|w| qp - kp < w) => 0.0,
                _ => MASKED,
            }));
        }
    }
    Ok(Tensor::from_vec(data, (b, l, t), device)?.to_dtype(DType::F32)?)
}
