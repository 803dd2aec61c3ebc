//! The TopK SAE loss and its gradients computed by hand on the CPU, touching only the `n · k`
//! selected (row, latent) pairs: `O(n · k · d_in)` work and no `(n, k, d_in)` intermediate.
//!
//! The autograd formulation in [`super::train`] gathers every selected encoder and decoder row into
//! `(n, k, d_in)` tensors: at d_sae 8192, k 64 and 1024 tokens that is 150 MB per tensor, allocated
//! and freed several times a step, so a step cost ~1.3 s, most of it page faults. Here each row's
//! reconstruction and input gradient are computed in parallel over rows, and the encoder and
//! decoder gradients in parallel over latents (each latent's (row, value) pairs grouped first), so
//! no two threads write one place. The unit test checks value and gradients against autograd.
//!
//! Notation (all in the trainer's scaled input space): `xc = x − b_dec`,
//! `pre = xc·W_encᵀ + b_enc`, `f = ReLU(pre)` at the selected latents, `x̂ = f·W_dec + b_dec`,
//! `fvu = Σ‖x̂ − x‖² / Σ‖x − x̄‖²`; AuxK reconstructs the constant `e = x − x̂` from the dead
//! latents' `ReLU(pre)` as `ê` (no `b_dec`, input detached): `aux = Σ‖ê − e‖² / Σ‖e − ē‖²`.

use rayon::prelude::*;

use crate::kernels::matvec::dot_f32 as dot;

/// The SAE's weights as flat row-major slices.
pub(super) struct Weights<'a> {
    /// `(d_sae, d_in)`: the encoder, transposed.
    pub w_enc_t: &'a [f32],
    /// `(d_sae, d_in)`: the decoder.
    pub w_dec: &'a [f32],
    /// `(d_in)`: the decoder bias.
    pub b_dec: &'a [f32],
    /// Width of the input.
    pub d_in: usize,
}

/// Latents chosen per row: `idx[r · k + j]`.
#[derive(Clone, Copy)]
pub(super) struct Selection<'a> {
    /// Row-major `(n, k)` latent indices.
    pub idx: &'a [u32],
    /// Latents per row.
    pub k: usize,
}

/// Loss values and gradients of `fvu + aux_coef · aux` for each parameter, flat row-major.
pub(super) struct Grads {
    pub fvu: f64,
    pub aux: f64,
    pub w_enc_t: Vec<f32>,
    pub b_enc: Vec<f32>,
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
}

/// The loss and gradients for a batch: `x` and `xc` are `(n, d_in)`, `pre` is the full
/// `(n, d_sae)` pre-activation matrix; `aux` is the AuxK selection (dead latents) and coefficient.
pub(super) fn loss_and_grads(
    w: &Weights,
    x: &[f32],
    xc: &[f32],
    pre: &[f32],
    main: Selection,
    aux: Option<(Selection, f64)>,
) -> Grads {
    let d = w.d_in;
    let d_sae = w.w_dec.len() / d;
    let mut g = Grads {
        fvu: 0.0,
        aux: 0.0,
        w_enc_t: vec![0.0; d_sae * d],
        b_enc: vec![0.0; d_sae],
        w_dec: vec![0.0; d_sae * d],
        b_dec: vec![0.0; d],
    };
    // Reconstruction and its error gradient 2(x̂ − x)/V.
    let recon = decode(w.w_dec, pre, main, d_sae, d, Some(w.b_dec));
    let resid: Vec<f32> = recon.iter().zip(x).map(|(r, x)| r - x).collect();
    let var_x = centred_sq_sum(x, d);
    g.fvu = sq_sum(&resid) / var_x;
    let grad_recon: Vec<f32> = resid.iter().map(|e| (2.0 / var_x) as f32 * e).collect();
    for row in grad_recon.chunks(d) {
        add(&mut g.b_dec, 1.0, row);
    }
    let main_pre = backprop(&mut g, w, xc, pre, &grad_recon, main, d_sae, true);
    if let Some((sel, coef)) = aux {
        // e = x − x̂ is a constant target; only the dead latents' own weights move.
        let target: Vec<f32> = resid.iter().map(|e| -e).collect();
        let e_hat = decode(w.w_dec, pre, sel, d_sae, d, None);
        let aux_resid: Vec<f32> = e_hat.iter().zip(&target).map(|(a, b)| a - b).collect();
        let var_e = centred_sq_sum(&target, d);
        g.aux = sq_sum(&aux_resid) / var_e;
        let scale = (coef * 2.0 / var_e) as f32;
        let grad_aux: Vec<f32> = aux_resid.iter().map(|e| scale * e).collect();
        backprop(&mut g, w, xc, pre, &grad_aux, sel, d_sae, false);
    }
    // The main path's pre-activations depend on b_dec through xc = x − b_dec.
    for row in main_pre.chunks(d) {
        add(&mut g.b_dec, -1.0, row);
    }
    g
}

/// `Σ_j ReLU(pre[r, idx_j]) · W_dec[idx_j]` (+ `bias`) for every row, in parallel over rows.
fn decode(
    w_dec: &[f32],
    pre: &[f32],
    sel: Selection,
    d_sae: usize,
    d: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let n = pre.len() / d_sae;
    let mut out = vec![0f32; n * d];
    out.par_chunks_mut(d).enumerate().for_each(|(r, row)| {
        if let Some(b) = bias {
            row.copy_from_slice(b);
        }
        for &i in &sel.idx[r * sel.k..(r + 1) * sel.k] {
            let f = pre[r * d_sae + i as usize];
            if f > 0.0 {
                add(row, f, &w_dec[i as usize * d..(i as usize + 1) * d]);
            }
        }
    });
    out
}

/// Back-propagates `grad_out` (the gradient at the decoder's output, `(n, d)`) through the selected
/// latents into `g`'s encoder and decoder gradients; returns the gradient at `xc` when `want_xc`
/// (else an empty vector).
#[allow(clippy::too_many_arguments)]
fn backprop(
    g: &mut Grads,
    w: &Weights,
    xc: &[f32],
    pre: &[f32],
    grad_out: &[f32],
    sel: Selection,
    d_sae: usize,
    want_xc: bool,
) -> Vec<f32> {
    let d = w.d_in;
    let n = xc.len() / d;
    // Per row: d pre[r, i] = grad_out_r · W_dec[i] where the latent is active, and the input gradient.
    let mut dpre = vec![0f32; n * sel.k];
    let mut dxc = vec![0f32; if want_xc { n * d } else { 0 }];
    let dxc_rows: Vec<&mut [f32]> = if want_xc {
        dxc.chunks_mut(d).collect()
    } else {
        (0..n).map(|_| <&mut [f32]>::default()).collect()
    };
    dpre.par_chunks_mut(sel.k)
        .zip(dxc_rows)
        .enumerate()
        .for_each(|(r, (dp, dx))| {
            let go = &grad_out[r * d..(r + 1) * d];
            for (j, &i) in sel.idx[r * sel.k..(r + 1) * sel.k].iter().enumerate() {
                let i = i as usize;
                if pre[r * d_sae + i] > 0.0 {
                    dp[j] = dot(go, &w.w_dec[i * d..(i + 1) * d]);
                    if !dx.is_empty() {
                        add(dx, dp[j], &w.w_enc_t[i * d..(i + 1) * d]);
                    }
                }
            }
        });
    // Group the active (row, slot) pairs by latent, then accumulate each latent's rows alone.
    let mut count = vec![0usize; d_sae + 1];
    for (p, &i) in sel.idx.iter().enumerate() {
        if pre[(p / sel.k) * d_sae + i as usize] > 0.0 {
            count[i as usize + 1] += 1;
        }
    }
    for i in 0..d_sae {
        count[i + 1] += count[i];
    }
    let mut fill = count.clone();
    let mut pairs = vec![0u32; count[d_sae]];
    for (p, &i) in sel.idx.iter().enumerate() {
        if pre[(p / sel.k) * d_sae + i as usize] > 0.0 {
            pairs[fill[i as usize]] = p as u32;
            fill[i as usize] += 1;
        }
    }
    g.w_dec
        .par_chunks_mut(d)
        .zip(g.w_enc_t.par_chunks_mut(d))
        .zip(g.b_enc.par_iter_mut())
        .enumerate()
        .for_each(|(i, ((gd, ge), gb))| {
            for &p in &pairs[count[i]..count[i + 1]] {
                let p = p as usize;
                let r = p / sel.k;
                let f = pre[r * d_sae + i];
                add(gd, f, &grad_out[r * d..(r + 1) * d]);
                add(ge, dpre[p], &xc[r * d..(r + 1) * d]);
                *gb += dpre[p];
            }
        });
    dxc
}

/// `Σ ‖row − mean row‖²` over `(n, d)` rows, at least 1e-12 (as the autograd loss clamps it).
fn centred_sq_sum(x: &[f32], d: usize) -> f64 {
    let n = (x.len() / d) as f64;
    let mut mean = vec![0f64; d];
    for row in x.chunks(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let s: f64 = x
        .chunks(d)
        .map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&v, m)| (v as f64 - m).powi(2))
                .sum::<f64>()
        })
        .sum();
    s.max(1e-12)
}

fn sq_sum(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum()
}

/// `out += a · v`.
fn add(out: &mut [f32], a: f32, v: &[f32]) {
    for (o, &v) in out.iter_mut().zip(v) {
        *o += a * v;
    }
}
