//! The sublayers of the decoder: linear maps, norms, MLP (attention is in [`super::attention`]).
//!
//! Each has a `load` from a [`WeightSource`], a `forward` on tensors (fused ops, or plain ones candle
//! can differentiate under [`Execution::Autograd`]) and a `forward_rows` on plain vectors for the
//! CPU vector pass, which calls dsg's kernels.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};

use super::block::Execution;
use super::config::{MlpActivation, ModelConfig, NormKind};
use super::lora::{add_updates, LoraPart};
use super::train_ops::{FrozenMatmul, TrainedMatmul};
use super::weights::WeightSource;
use crate::kernels::gemm;
use crate::kernels::matvec::{matmul_f32, with_f32_slice};
use crate::kernels::quant::AnyQuantMatrix;
use crate::kernels::vexp::silu_mul;
use crate::Result;

/// A quantised copy of a weight matrix.
enum QuantWeight {
    /// Q4_0, or a tensor dsg's kernels do not take (not 2-D), with candle's kernel.
    Candle(QMatMul),
    /// Q4_1, Q8_0, Q5_0, Q4_K, Q5_K or Q6_K blocks, with dsg's own kernels.
    Dsg(AnyQuantMatrix),
}

/// A linear map `y = x·Wᵀ + b`, optionally with a quantised copy of `W` for fast decoding and low-rank
/// (LoRA) updates applied on the fly.
pub struct Linear {
    /// Weight, (out, in), f32.
    pub weight: Tensor,
    /// Bias, (out).
    pub bias: Option<Tensor>,
    quantized: Option<QuantWeight>,
    /// LoRA updates, each over a range of the outputs.
    pub(super) lora: Vec<LoraPart>,
}

impl Linear {
    /// Wraps existing tensors.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            quantized: None,
            lora: Vec::new(),
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

    /// Adds a quantised copy of the weight, used by forward passes that ask for it. Q4_1, Q8_0,
    /// Q5_0, Q4_K, Q5_K and Q6_K keep their blocks (dsg's kernels; the K-quants regrouped into
    /// blocks of 32 that dequantise to the same values); Q4_0 uses candle's kernel; other types
    /// are re-quantised from the f32 weight to Q8_0 (within about 0.4% of the stored values).
    pub fn with_quantized(mut self, q: Option<QTensor>) -> Result<Self> {
        self.quantized = match q {
            None => None,
            Some(q) if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) => {
                None
            }
            Some(q) if q.dtype() == GgmlDType::Q4_0 => {
                Some(QuantWeight::Candle(QMatMul::from_qtensor(q)?))
            }
            Some(q) => match AnyQuantMatrix::from_qtensor(&q)? {
                Some(m) => Some(QuantWeight::Dsg(m)),
                None if q.dtype() == GgmlDType::Q8_0 => {
                    Some(QuantWeight::Candle(QMatMul::from_qtensor(q)?))
                }
                None => Some(Self::q8_0(&self.weight)?),
            },
        };
        Ok(self)
    }

    /// The weight re-quantised to Q8_0: dsg's kernel for 2-D matrices, candle's otherwise.
    fn q8_0(weight: &Tensor) -> Result<QuantWeight> {
        let q = QTensor::quantize(weight, GgmlDType::Q8_0)?;
        Ok(match AnyQuantMatrix::from_qtensor(&q)? {
            Some(m) => QuantWeight::Dsg(m),
            None => QuantWeight::Candle(QMatMul::from_qtensor(q)?),
        })
    }

    /// Stacks maps that read the same input into one (outputs concatenated), so one matrix product
    /// replaces several. Missing biases count as zero. If all parts have blocks of one format with
    /// dsg's kernel (and the same input size), the blocks are stacked; otherwise a quantised copy
    /// is made (Q8_0) if any part had one.
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
        let blocks: Option<Vec<&AnyQuantMatrix>> = parts
            .iter()
            .map(|p| match &p.quantized {
                Some(QuantWeight::Dsg(m)) => Some(m),
                _ => None,
            })
            .collect();
        let quantized = match blocks.and_then(|b| AnyQuantMatrix::concat(&b)) {
            Some(m) => Some(QuantWeight::Dsg(m)),
            None if parts.iter().any(|p| p.quantized.is_some()) => Some(Self::q8_0(&weight)?),
            None => None,
        };
        Ok(Linear {
            weight,
            bias,
            quantized,
            lora: Vec::new(),
        })
    }

    /// Adds `part`'s update to the weight (`W[rows] += scale·B·A`) instead of applying it on the fly.
    /// A quantised copy is re-quantised from the merged weight (Q8_0, within about 0.4%).
    pub(super) fn merge(&mut self, part: &LoraPart) -> Result<()> {
        let delta = part.weight_delta()?;
        let (out, _) = self.weight.dims2()?;
        let mut pieces = Vec::with_capacity(3);
        if part.rows.start > 0 {
            pieces.push(self.weight.narrow(0, 0, part.rows.start)?);
        }
        pieces.push((self.weight.narrow(0, part.rows.start, part.rows.len())? + delta)?);
        if part.rows.end < out {
            pieces.push(self.weight.narrow(0, part.rows.end, out - part.rows.end)?);
        }
        self.weight = Tensor::cat(&pieces, 0)?.contiguous()?;
        if self.quantized.is_some() {
            self.quantized = Some(Self::q8_0(&self.weight)?);
        }
        Ok(())
    }

    /// Drops the quantised copy (its weight is being trained, so the copy would go stale).
    pub(super) fn drop_quantized(&mut self) {
        self.quantized = None;
    }

    /// Rows (outputs) and columns (inputs) of the weight.
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(self.weight.dims2()?)
    }

    /// Whether a quantised copy of the weight is available.
    pub fn has_quantized(&self) -> bool {
        match &self.quantized {
            Some(QuantWeight::Candle(q)) => matches!(q, QMatMul::QTensor(_)),
            Some(QuantWeight::Dsg(_)) => true,
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
            (Some(QuantWeight::Dsg(m)), true) if x2.device().is_cpu() => {
                let xs = x2.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                Tensor::from_vec(m.matmul(&xs, rows), (rows, m.rows()), x2.device())?
            }
            // Training through a frozen weight: only the input needs a gradient.
            _ if x2.track_op() && !self.weight.track_op() && x2.device().is_cpu() => {
                let frozen = FrozenMatmul {
                    weight: self.weight.clone(),
                };
                x2.contiguous()?.apply_op1(frozen)?
            }
            // Training the weight itself (full fine-tuning).
            _ if self.weight.track_op()
                && x2.device().is_cpu()
                && gemm::available()
                && self.weight.dtype() == DType::F32 =>
            {
                x2.contiguous()?.apply_op2(&self.weight, TrainedMatmul)?
            }
            _ => match gemm::matmul_tensors(&x2, &self.weight, gemm::Layout::Rows)? {
                Some(y) => y,
                None => x2.matmul(&self.weight.t()?)?,
            },
        };
        let y = if self.lora.is_empty() {
            y
        } else {
            add_updates(&self.lora, &x2, y)?
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

/// Rows from which [`Linear::forward_rows`] uses the f32 tile kernel instead of dot products.
const GEMM_MIN_ROWS: usize = 8;

impl Linear {
    /// [`Linear::forward`] on the CPU for `m` rows held in a slice (m × in), on the team without a
    /// tensor op (the CPU pass's path). Returns m × out.
    pub(super) fn forward_rows(&self, x: &[f32], m: usize, quantized: bool) -> Result<Vec<f32>> {
        let mut y = match (&self.quantized, quantized) {
            (Some(QuantWeight::Dsg(w)), true) => w.matmul(x, m),
            (Some(QuantWeight::Candle(w)), true) => {
                let xt = Tensor::from_slice(x, (m, x.len() / m), self.weight.device())?;
                w.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?
            }
            // Past a few rows the tile kernel's reuse of each weight wins over one dot per row.
            _ if m >= GEMM_MIN_ROWS && gemm::available() => {
                let (n, k) = self.weight.dims2()?;
                with_f32_slice(&self.weight, |w| {
                    gemm::matmul(x, m, k, w, gemm::Layout::Rows, n)
                })?
            }
            _ => matmul_f32(&self.weight, x, m)?,
        };
        if !self.lora.is_empty() {
            let dev = self.weight.device();
            let (n, k) = self.weight.dims2()?;
            let xt = Tensor::from_slice(x, (m, k), dev)?;
            let yt = Tensor::from_vec(y, (m, n), dev)?;
            y = add_updates(&self.lora, &xt, yt)?
                .flatten_all()?
                .to_vec1::<f32>()?;
        }
        if let Some(b) = &self.bias {
            with_f32_slice(b, |b| {
                y.chunks_mut(b.len())
                    .for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b))
            })?;
        }
        Ok(y)
    }
}

/// A normalisation layer.
pub struct Norm {
    kind: NormKind,
    /// Scale (for Gemma already `1 + w`).
    scale: Tensor,
    bias: Option<Tensor>,
    eps: f32,
    /// `scale` and `bias` as vectors, for [`Norm::forward_rows`].
    scale_raw: Vec<f32>,
    bias_raw: Option<Vec<f32>>,
}

impl Norm {
    /// Loads `{prefix}.weight` (and `.bias` for LayerNorm) over the residual stream (`d_model`).
    pub fn load(
        src: &WeightSource,
        prefix: &str,
        cfg: &ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        Self::load_width(src, prefix, cfg, cfg.d_model, device)
    }

    /// [`Norm::load`] for a norm over `d` values (Gemma 3's per-head q/k norms: `head_dim`).
    pub fn load_width(
        src: &WeightSource,
        prefix: &str,
        cfg: &ModelConfig,
        d: usize,
        device: &Device,
    ) -> Result<Self> {
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
            scale_raw: scale.to_vec1::<f32>()?,
            bias_raw: bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?,
            scale,
            bias,
            eps: cfg.norm_eps as f32,
        })
    }

    /// The scale and bias tensors, for training.
    pub(super) fn tensors_mut(&mut self) -> (&mut Tensor, Option<&mut Tensor>) {
        (&mut self.scale, self.bias.as_mut())
    }

    /// The weight as Hugging Face stores it (Gemma's `w` of its `1 + w` scale), and the bias.
    pub(super) fn hf_tensors(&self) -> Result<(Tensor, Option<Tensor>)> {
        let w = match self.kind {
            NormKind::RmsPlusOne => (&self.scale - 1.0)?,
            _ => self.scale.clone(),
        };
        Ok((w, self.bias.clone()))
    }

    /// Re-reads the vectors the CPU pass uses from the (trained) tensors.
    pub(super) fn sync(&mut self) -> Result<()> {
        self.scale_raw = self.scale.to_vec1::<f32>()?;
        self.bias_raw = self.bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;
        Ok(())
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor, exec: Execution) -> Result<Tensor> {
        use candle_nn::ops;
        let autograd = exec == Execution::Autograd;
        let y = match (&self.bias, autograd) {
            (Some(b), false) => ops::layer_norm(x, &self.scale, b, self.eps)?,
            (Some(b), true) => ops::layer_norm_slow(x, &self.scale, b, self.eps)?,
            (None, false) => ops::rms_norm(x, &self.scale, self.eps)?,
            (None, true) => ops::rms_norm_slow(x, &self.scale, self.eps)?,
        };
        debug_assert!(self.kind == NormKind::Layer || self.bias.is_none());
        Ok(y)
    }

    /// [`Norm::forward`] (fused) on rows held in a slice, each `scale.len()` long.
    pub(super) fn forward_rows(&self, x: &[f32]) -> Vec<f32> {
        let mut out = x.to_vec();
        out.chunks_mut(self.scale_raw.len())
            .for_each(|row| self.normalize(row));
        out
    }

    /// Normalises one row of `scale.len()` values in place, as [`Norm::forward_rows`] does.
    pub(super) fn normalize(&self, row: &mut [f32]) {
        let n = row.len() as f32;
        match &self.bias_raw {
            Some(bias) => {
                let mean = row.iter().sum::<f32>() / n;
                let var = row.iter().map(|v| v * v).sum::<f32>() / n - mean * mean;
                let inv = 1.0 / (var + self.eps).sqrt();
                let it = row.iter_mut().zip(&self.scale_raw).zip(bias);
                it.for_each(|((v, s), b)| *v = (*v - mean) * inv * s + b);
            }
            None => {
                let rms = (row.iter().map(|v| v * v).sum::<f32>() / n + self.eps).sqrt();
                let it = row.iter_mut().zip(&self.scale_raw);
                it.for_each(|(v, s)| *v = *v / rms * s);
            }
        }
    }
}

/// The feed-forward sublayer: gated (gate and up fused into one map, then down) or plain (fc/proj).
pub struct Mlp {
    /// `[gate; up]` stacked (gated MLPs) or GPT-2's `c_fc`.
    pub(super) up: Linear,
    pub(super) down: Linear,
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
    pub fn forward(&self, x: &Tensor, exec: Execution, quantized: bool) -> Result<Tensor> {
        let act = |t: &Tensor| -> Result<Tensor> {
            Ok(match self.activation {
                MlpActivation::Silu => candle_nn::ops::silu(t)?,
                MlpActivation::GeluTanh => t.gelu()?,
            })
        };
        let h = self.up.forward(x, quantized)?;
        let fused_silu = self.gated
            && self.activation == MlpActivation::Silu
            && exec != Execution::Autograd
            && h.device().is_cpu()
            && h.dtype() == DType::F32;
        let h = if fused_silu {
            h.contiguous()?.apply_op1_no_bwd(&GatedSilu)?
        } else if self.gated {
            let f = h.dim(D::Minus1)? / 2;
            (act(&h.narrow(D::Minus1, 0, f)?)? * h.narrow(D::Minus1, f, f)?)?
        } else {
            act(&h)?
        };
        self.down.forward(&h, quantized)
    }

    /// [`Mlp::forward`] on `m` rows held in a slice (the single-token step's path).
    pub(super) fn forward_rows(&self, x: &[f32], m: usize, quantized: bool) -> Result<Vec<f32>> {
        let act = |v: f32| match self.activation {
            MlpActivation::Silu => v / (1.0 + (-v).exp()),
            MlpActivation::GeluTanh => {
                const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
                0.5 * v * (1.0 + (SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)).tanh())
            }
        };
        let mut h = self.up.forward_rows(x, m, quantized)?;
        if self.gated {
            let f = h.len() / m / 2;
            let mut g = vec![0f32; m * f];
            for (row, out) in h.chunks(2 * f).zip(g.chunks_mut(f)) {
                let (gate, up) = row.split_at(f);
                match self.activation {
                    MlpActivation::Silu => silu_mul(gate, up, out),
                    MlpActivation::GeluTanh => {
                        let pairs = gate.iter().zip(up);
                        out.iter_mut()
                            .zip(pairs)
                            .for_each(|(o, (&a, &u))| *o = act(a) * u);
                    }
                }
            }
            h = g;
        } else {
            h.iter_mut().for_each(|v| *v = act(*v));
        }
        self.down.forward_rows(&h, m, quantized)
    }
}

/// `silu(gate) · up` of `[gate; up]` rows (last dimension `2f` → `f`) in one pass on the CPU, with
/// the vectorised `exp`; candle's ops take three passes and a libm `exp` per value.
struct GatedSilu;

impl candle_core::CustomOp1 for GatedSilu {
    fn name(&self) -> &'static str {
        "gated-silu"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("gated-silu needs a contiguous input")
        };
        let h = &storage.as_slice::<f32>()?[a..b];
        let mut dims = layout.dims().to_vec();
        let width = *dims.last().expect("rank >= 1");
        let f = width / 2;
        let mut out = vec![0f32; h.len() / 2];
        out.par_chunks_mut(f)
            .zip(h.par_chunks(width))
            .for_each(|(o, row)| silu_mul(&row[..f], &row[f..], o));
        *dims.last_mut().expect("rank >= 1") = f;
        Ok((candle_core::CpuStorage::F32(out), dims.into()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A (rows, 512) map holding `dtype` blocks of a random weight, its f32 weight those blocks
    /// dequantised.
    fn quantized_linear(rows: usize, dtype: GgmlDType) -> Linear {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (rows, 512), &dev).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let weight = q.dequantize(&dev).unwrap();
        Linear::new(weight, None).with_quantized(Some(q)).unwrap()
    }

    fn input(m: usize) -> Vec<f32> {
        let x = Tensor::randn(0f32, 1.0, (m, 512), &Device::Cpu).unwrap();
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Within 1% of the output range (the 8-bit activations' error).
    fn assert_close(got: &[f32], expected: &[f32]) {
        let scale = expected.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert_eq!(got.len(), expected.len());
        for (a, b) in got.iter().zip(expected) {
            assert!((a - b).abs() <= 0.01 * scale, "{a} vs {b}");
        }
    }

    #[test]
    fn gemma_q4_k_m_formats_keep_their_blocks() {
        use GgmlDType::{Q4K, Q5K, Q5_0, Q6K};
        let x = input(2);
        for dtype in [Q5_0, Q4K, Q5K, Q6K] {
            let lin = quantized_linear(48, dtype);
            assert!(
                matches!(lin.quantized, Some(QuantWeight::Dsg(_))),
                "{dtype:?}"
            );
            let q = lin.forward_rows(&x, 2, true).unwrap();
            assert_close(&q, &lin.forward_rows(&x, 2, false).unwrap());
            let xt = Tensor::from_slice(&x, (2, 512), &Device::Cpu).unwrap();
            let t = lin.forward(&xt, true).unwrap().flatten_all().unwrap();
            assert_eq!(t.to_vec1::<f32>().unwrap(), q, "{dtype:?}");
        }
    }

    #[test]
    fn concat_stacks_blocks_of_one_format_and_requantises_mixed_ones() {
        let x = input(1);
        let (a, b) = (
            quantized_linear(32, GgmlDType::Q6K),
            quantized_linear(16, GgmlDType::Q6K),
        );
        let expected = [
            a.forward_rows(&x, 1, true).unwrap(),
            b.forward_rows(&x, 1, true).unwrap(),
        ];
        let both = Linear::concat(&[a, b]).unwrap();
        assert_eq!(both.forward_rows(&x, 1, true).unwrap(), expected.concat());
        let mixed = [
            quantized_linear(32, GgmlDType::Q5_0),
            quantized_linear(16, GgmlDType::Q4K),
        ];
        let mixed = Linear::concat(&mixed).unwrap();
        let requantised = matches!(
            mixed.quantized,
            Some(QuantWeight::Dsg(AnyQuantMatrix::Q8_0(_)))
        );
        assert!(requantised);
        let f32 = mixed.forward_rows(&x, 1, false).unwrap();
        assert_close(&mixed.forward_rows(&x, 1, true).unwrap(), &f32);
    }
}
