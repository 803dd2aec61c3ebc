//! Self-attention: rotary embeddings, the additive mask, grouped-query attention over a batch as
//! tensor ops, and the CPU pass's attention on plain vectors, which attends straight from the
//! [`KvCache`](super::KvCache) buffers.

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

use super::block::Execution;
use super::config::{ModelConfig, RopeStyle};
use super::layers::{conv1d, Linear, Norm};
use super::weights::WeightSource;
use crate::kernels::attend::{attend, Positions};
use crate::kernels::kv::LayerKv;
use crate::kernels::softmax::masked_softmax_cpu;
use crate::Result;

/// Rotary embedding tables for a batch: cos and sin of shape (batch, seq, head_dim/2), or (seq, head_dim/2)
/// when every row starts at the same position.
pub struct RopeTables {
    style: RopeStyle,
    /// The tables as flat vectors, for [`RopeTables::rotate`].
    cos_raw: Vec<f32>,
    sin_raw: Vec<f32>,
    same: bool,
    seq: usize,
    /// The same tables as tensors of this shape, made on first use by [`RopeTables::apply`] (the
    /// tensor pass).
    shape: Vec<usize>,
    tensors: OnceLock<(Tensor, Tensor)>,
    device: Device,
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
        let shape = if same {
            vec![seq, half]
        } else {
            vec![rows.len(), seq, half]
        };
        Ok(RopeTables {
            style,
            cos_raw: cos,
            sin_raw: sin,
            same,
            seq,
            shape,
            tensors: OnceLock::new(),
            device: device.clone(),
        })
    }

    /// cos and sin as tensors: (seq, half), or (batch, seq, half) when rows start apart.
    fn tensors(&self) -> Result<&(Tensor, Tensor)> {
        if let Some(t) = self.tensors.get() {
            return Ok(t);
        }
        let shape = self.shape.as_slice();
        let made = (
            Tensor::from_slice(&self.cos_raw, shape, &self.device)?,
            Tensor::from_slice(&self.sin_raw, shape, &self.device)?,
        );
        Ok(self.tensors.get_or_init(|| made))
    }

    /// Rotates in place one head vector `x` of token `t` of batch row `row`, as [`RopeTables::apply`]
    /// does.
    pub fn rotate(&self, row: usize, t: usize, x: &mut [f32]) {
        let half = x.len() / 2;
        let at = (if self.same { 0 } else { row } * self.seq + t) * half;
        let (cos, sin) = (&self.cos_raw[at..at + half], &self.sin_raw[at..at + half]);
        let turn = |a: &mut f32, b: &mut f32, c: f32, s: f32| {
            (*a, *b) = (*a * c - *b * s, *a * s + *b * c);
        };
        match self.style {
            RopeStyle::HalfSplit => {
                let (lo, hi) = x.split_at_mut(half);
                for (((a, b), &c), &s) in lo.iter_mut().zip(hi).zip(cos).zip(sin) {
                    turn(a, b, c, s);
                }
            }
            RopeStyle::Interleaved => {
                for ((pair, &c), &s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
                    let (a, b) = pair.split_at_mut(1);
                    turn(&mut a[0], &mut b[0], c, s);
                }
            }
        }
    }

    /// Rotates `x` of shape (batch, heads, seq, head_dim).
    pub fn apply(&self, x: &Tensor, exec: Execution) -> Result<Tensor> {
        use candle_nn::rotary_emb as re;
        let x = x.contiguous()?;
        let (cos, sin) = self.tensors()?;
        Ok(match (self.style, exec == Execution::Autograd) {
            (RopeStyle::HalfSplit, false) => re::rope(&x, cos, sin)?,
            (RopeStyle::Interleaved, false) => re::rope_i(&x, cos, sin)?,
            (RopeStyle::HalfSplit, true) => re::rope_slow(&x, cos, sin)?,
            (RopeStyle::Interleaved, true) => re::rope_i_slow(&x, cos, sin)?,
        })
    }
}

/// The rotary tables of one pass: the global ones, and those of the sliding-window layers where
/// they differ (Gemma 3's local base).
#[derive(Clone, Copy, Default)]
pub struct Ropes<'a> {
    /// Tables of every layer without local ones (`None`: no rotary embeddings).
    pub global: Option<&'a RopeTables>,
    /// Tables of the sliding-window layers, if they have their own.
    pub local: Option<&'a RopeTables>,
}

impl<'a> Ropes<'a> {
    /// The tables of a layer whose sliding window is `window`.
    pub fn for_window(&self, window: Option<usize>) -> Option<&'a RopeTables> {
        match (window, self.local) {
            (Some(_), Some(local)) => Some(local),
            _ => self.global,
        }
    }
}

/// Multi-head (grouped-query) self-attention.
pub struct Attention {
    /// `[q; k; v]` stacked into one map.
    pub(super) qkv: Linear,
    pub(super) o: Linear,
    /// Gemma 3's norms over each query and each key head, before RoPE.
    pub(super) q_norm: Option<Norm>,
    pub(super) k_norm: Option<Norm>,
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
    /// Loads `{prefix}.{q,k,v,o}_proj` (or GPT-2's fused `c_attn` / `c_proj`), and
    /// `{prefix}.{q,k}_norm` where the config has per-head q/k norms.
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
        let head_norm = |name: &str| {
            cfg.qk_norm
                .then(|| Norm::load_width(src, &format!("{prefix}.{name}"), cfg, hd, device))
                .transpose()
        };
        Ok(Attention {
            qkv,
            o,
            q_norm: head_norm("q_norm")?,
            k_norm: head_norm("k_norm")?,
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
        exec: Execution,
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
        let mut q = split(all.narrow(2, 0, qd)?, self.n_heads)?;
        let mut k = split(all.narrow(2, qd, kvd)?, self.n_kv_heads)?;
        let v = split(all.narrow(2, qd + kvd, kvd)?, self.n_kv_heads)?;
        if let Some(n) = &self.q_norm {
            q = n.forward(&q, exec)?;
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k, exec)?;
        }
        match rope {
            Some(r) => Ok((r.apply(&q, exec)?, r.apply(&k, exec)?, v)),
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
        exec: Execution,
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
            let probs = probabilities(&scores, &m, self.softcap, exec)?;
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

    /// [`Attention::qkv`] + [`Attention::attend`] on the CPU without a tensor op: `x` holds `l`
    /// tokens per row of `b` rows (row-major, b·l × d). Their keys and values are appended to
    /// `cache`, their queries attend over all its columns as `pos` allows, and the output projection
    /// is applied: b·l × d. One token per row (a decoding step) attends with dot products straight
    /// from the cache; more go through the many-query kernel, [`attend`].
    pub(super) fn forward_rows(
        &self,
        x: &[f32],
        b: usize,
        rope: Option<&RopeTables>,
        cache: &mut LayerKv,
        pos: &Positions,
        quantized: bool,
    ) -> Result<Vec<f32>> {
        let (h, kvh, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let l = pos.query[0].len();
        let mut all = self.qkv.forward_rows(x, b * l, quantized)?;
        let width = (h + 2 * kvh) * hd;
        let mut q = Vec::with_capacity(b * l * h * hd);
        let (mut k, mut v) = (vec![0f32; b * kvh * l * hd], vec![0f32; b * kvh * l * hd]);
        for (at, proj) in all.chunks_mut(width).enumerate() {
            let (row, t) = (at / l, at % l);
            let (qs, ks) = proj.split_at_mut(h * hd);
            if let Some(n) = &self.q_norm {
                qs.chunks_mut(hd).for_each(|x| n.normalize(x));
            }
            if let Some(n) = &self.k_norm {
                ks[..kvh * hd].chunks_mut(hd).for_each(|x| n.normalize(x));
            }
            if let Some(r) = rope {
                proj[..(h + kvh) * hd]
                    .chunks_mut(hd)
                    .for_each(|x| r.rotate(row, t, x));
            }
            let (qr, rest) = proj.split_at(h * hd);
            let (kr, vr) = rest.split_at(kvh * hd);
            q.extend_from_slice(qr);
            // The cache takes (batch, kv_heads, l, hd).
            for g in 0..kvh {
                let dst = ((row * kvh + g) * l + t) * hd;
                k[dst..dst + hd].copy_from_slice(&kr[g * hd..(g + 1) * hd]);
                v[dst..dst + hd].copy_from_slice(&vr[g * hd..(g + 1) * hd]);
            }
        }
        drop(all);
        cache.append(b, kvh, hd, &k, &v);
        let softcap = self.softcap.map(|c| c as f32);
        let out = if l == 1 {
            let visible = step_visibility(pos.query, pos.key, pos.window);
            cache.attend_one(&q, h, self.scale as f32, softcap, &visible)
        } else {
            // Scaled before the product, as the tensor pass does.
            let scale = self.scale as f32;
            q.iter_mut().for_each(|v| *v *= scale);
            attend(cache, &q, h, softcap, pos)
        };
        self.o.forward_rows(&out, b * l, quantized)
    }
}

/// `softmax(softcap(scores) + mask)` over the last dimension: `scores` (batch, kv_heads, group·n,
/// keys), `mask` (batch, n, keys), shared by all heads. dsg's one-pass kernel on the CPU (f32),
/// candle's ops elsewhere and, differentiably, under [`Execution::Autograd`].
fn probabilities(
    scores: &Tensor,
    mask: &Tensor,
    softcap: Option<f64>,
    exec: Execution,
) -> Result<Tensor> {
    let autograd = exec == Execution::Autograd;
    if !autograd {
        if let Some(p) = masked_softmax_cpu(scores, mask, softcap)? {
            return Ok(p);
        }
    }
    let (b, kvh, gn, keys) = scores.dims4()?;
    let n = mask.dim(1)?;
    let mut s = scores.clone();
    if let Some(cap) = softcap {
        s = ((s / cap)?.tanh()? * cap)?;
    }
    let g = gn / n;
    let s = s
        .reshape((b, kvh, g, n, keys))?
        .broadcast_add(&mask.unsqueeze(1)?.unsqueeze(1)?)?
        .reshape((b, kvh, gn, keys))?;
    Ok(if autograd {
        candle_nn::ops::softmax(&s, candle_core::D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&s)?
    })
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
            data.extend(
                ks.iter()
                    .map(|&kp| if visible(qp, kp, window) { 0.0 } else { MASKED }),
            );
        }
    }
    Ok(Tensor::from_vec(data, (b, l, t), device)?.to_dtype(DType::F32)?)
}

/// For a decoding step (one query per row), which keys each row's query may see; the same rule as
/// [`attention_mask`].
fn step_visibility(
    query_pos: &[Vec<usize>],
    key_pos: &[Vec<Option<usize>>],
    window: Option<usize>,
) -> Vec<Vec<bool>> {
    query_pos
        .iter()
        .zip(key_pos)
        .map(|(qs, ks)| ks.iter().map(|&kp| visible(qs[0], kp, window)).collect())
        .collect()
}

/// Whether a query at `qp` sees a key at `kp`: a real token, not in the future, within the window.
fn visible(qp: usize, kp: Option<usize>, window: Option<usize>) -> bool {
    kp.is_some_and(|kp| kp <= qp && window.is_none_or(|w| qp - kp < w))
}
