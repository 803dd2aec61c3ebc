//! Matrix products `x·Wᵀ` for training, with backward passes on dsg's tile kernel: candle's own
//! matmul computes (and keeps) the gradient of both operands and runs on its generic kernel.
//!
//! * [`FrozenMatmul`]: `W` frozen (LoRA's base weights): only `x` gets a gradient.
//! * [`TrainedMatmul`]: `W` trained too (full fine-tuning): `dx = g·W`, `dW = gᵀ·x`.

use candle_core::{CpuStorage, Layout, Shape, Tensor};

use crate::kernels::gemm;
use crate::kernels::matvec::with_f32_slice;

/// `x·Wᵀ` for a frozen weight `W` (out, in): differentiable in `x` only. The CPU runs dsg's tile kernel
/// both ways when it can.
pub(super) struct FrozenMatmul {
    /// The weight, (out, in), contiguous.
    pub(super) weight: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = layout.shape().dims2()?;
        let n = self.weight.dim(0)?;
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-matmul needs a contiguous input")
        };
        let x = &storage.as_slice::<f32>()?[a..b];
        let y = product(x, m, k, &self.weight, gemm::Layout::Rows, n)?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // d(x·Wᵀ)/dx applied to the gradient: grad · W, (m, out)·(out, in).
        let (m, n) = grad.dims2()?;
        let k = self.weight.dim(1)?;
        let g = grad.contiguous()?;
        let gs = g.flatten_all()?.to_vec1::<f32>()?;
        let dx = product(&gs, m, n, &self.weight, gemm::Layout::Cols, k)?;
        Ok(Some(Tensor::from_vec(dx, (m, k), grad.device())?))
    }
}

/// `x (m × k) · w` as `layout` reads `w`, with dsg's tile kernel where available, candle's otherwise.
fn product(
    x: &[f32],
    m: usize,
    k: usize,
    w: &Tensor,
    layout: gemm::Layout,
    n: usize,
) -> candle_core::Result<Vec<f32>> {
    let err = |e: crate::Error| candle_core::Error::Msg(e.to_string());
    if gemm::available() {
        return with_f32_slice(w, |ws| gemm::matmul(x, m, k, ws, layout, n)).map_err(err);
    }
    let xt = Tensor::from_slice(x, (m, k), w.device())?;
    let y = match layout {
        gemm::Layout::Rows => xt.matmul(&w.t()?)?,
        gemm::Layout::Cols => xt.matmul(w)?,
    };
    y.flatten_all()?.to_vec1::<f32>()
}

/// `x·Wᵀ` for a trained weight: differentiable in both operands.
pub(super) struct TrainedMatmul;

impl candle_core::CustomOp2 for TrainedMatmul {
    fn name(&self) -> &'static str {
        "trained-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, k2) = wl.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("trained-matmul: x is (m, {k}), W is ({n}, {k2})")
        }
        let (Some((a, b)), Some((c, d))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            candle_core::bail!("trained-matmul needs contiguous operands")
        };
        let x = &xs.as_slice::<f32>()?[a..b];
        let w = &ws.as_slice::<f32>()?[c..d];
        Ok((
            CpuStorage::F32(gemm::matmul(x, m, k, w, gemm::Layout::Rows, n)),
            Shape::from((m, n)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (m, k) = x.dims2()?;
        let n = w.dim(0)?;
        let dev = grad.device();
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let ws = w.detach().contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let xs = x.detach().contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        // dx = g (m × n) · W (n × k); dW = gᵀ (n × m) · x (m × k).
        let dx = gemm::matmul(&g, m, n, &ws, gemm::Layout::Cols, k);
        let gt = grad.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let dw = gemm::matmul(&gt, n, m, &xs, gemm::Layout::Cols, k);
        Ok((
            Some(Tensor::from_vec(dx, (m, k), dev)?),
            Some(Tensor::from_vec(dw, (n, k), dev)?),
        ))
    }
}
