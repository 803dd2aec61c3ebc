//! f32 matrix products `C = X · Wᵀ` (tokens × weight rows) for forward passes over many tokens, on
//! the decoding [`Team`], without repacking the weights.
//!
//! `gemm` (behind candle's matmul) copies all of `W` into its panel layout on every call; for a
//! 128-token prefill that copy was a fifth of the time. Here only `X` is packed (16 tokens per
//! panel, step by step along `k`), and a 6 × 16 AVX2 micro-kernel broadcasts each weight straight
//! from six rows of `W` against two vectors of 8 tokens, keeping its 96 sums in twelve registers.
//! Every output is summed in the same order (along `k`, in fixed blocks) wherever it falls in the
//! tiling, so a token's result never depends on the other tokens of the batch. Threads share out
//! chunks of weight rows. Without AVX2 the caller uses candle's product instead.
//!
//! [`Team`]: super::team::Team

use super::team::{SharedOut, Team};

/// Weight rows per micro-tile (broadcast operands).
const MR: usize = 6;
/// Tokens per micro-tile (two vectors of 8).
const NT: usize = 16;
/// Largest block along `k`: a packed token panel (16 × KC) stays in L1.
const KC: usize = 256;
/// Weight rows per chunk of work (16 tiles; 96 KiB at `KC`, kept in L2 across token panels).
const CHUNK: usize = 16 * MR;

/// Tokens up to which [`matmul`] beats candle's product here (best of 10, two threads: 1.2–1.5×
/// at 128 tokens, 1.06–1.1× at 256–512, 0.8–0.9× at 1024, where repacking `W` costs little next to
/// the product).
pub(super) const MAX_ROWS: usize = 512;

/// Whether [`matmul`] can run here (AVX2 and FMA).
pub(super) fn available() -> bool {
    super::q4_1::has_avx2()
}

/// `x · wᵀ` for `x` (m × k) and `w` (n × k), both row-major; returns m × n. Needs [`available`].
pub(super) fn matmul(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    assert!(available() && x.len() >= m * k && w.len() >= n * k);
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    let blocks = k.div_ceil(KC);
    let kc = k.div_ceil(blocks);
    let panels = m.div_ceil(NT);
    let xp = pack_x(x, m, k, kc);
    let dst = SharedOut(out.as_mut_ptr());
    let units = n.div_ceil(CHUNK);
    let work = |_: &mut (), u: usize| {
        let (j0, j1) = (u * CHUNK, ((u + 1) * CHUNK).min(n));
        for k0 in (0..k).step_by(kc) {
            let depth = kc.min(k - k0);
            let block = &xp[panels * NT * k0..panels * NT * (k0 + depth)];
            for (i, panel) in block.chunks_exact(NT * depth).enumerate() {
                let tokens = NT.min(m - i * NT);
                for j in (j0..j1).step_by(MR) {
                    let rows = MR.min(j1 - j);
                    // SAFETY: AVX2/FMA are available (asserted above); rows j..j + rows of `w`
                    // hold columns k0..k0 + depth; the tile (tokens i·NT.., columns j..) of
                    // `out` lies inside m × n and belongs to this chunk alone.
                    unsafe {
                        let c = dst.at(i * NT * n + j);
                        let wr = &w[j * k + k0..(j + rows - 1) * k + k0 + depth];
                        kernel(depth, panel, wr, k, rows, c, n, tokens, k0 > 0);
                    }
                }
            }
        }
    };
    Team::global().share(units, || (), work);
    out
}

/// `x` (m × k) as, per `k` block of width `kc` (the last may be shorter), all its 16-token panels,
/// each laid out step by step along `k` (16 values per step, zero past token `m`).
fn pack_x(x: &[f32], m: usize, k: usize, kc: usize) -> Vec<f32> {
    let panels = m.div_ceil(NT);
    let mut out = vec![0f32; panels * NT * k];
    let mut at = 0;
    for k0 in (0..k).step_by(kc) {
        let depth = kc.min(k - k0);
        for i in 0..panels {
            let panel = &mut out[at..at + NT * depth];
            for t in 0..NT.min(m - i * NT) {
                let row = &x[(i * NT + t) * k + k0..(i * NT + t) * k + k0 + depth];
                for (l, &v) in row.iter().enumerate() {
                    panel[l * NT + t] = v;
                }
            }
            at += NT * depth;
        }
    }
    out
}

/// The micro-kernel: `c[t·ldc + r] (+)= Σ_l w[r·k + l] · a[l·16 + t]` for `r < rows`, `t < tokens`,
/// summing along `l` in order; adds to `c` when `accumulate`, else overwrites.
///
/// # Safety
/// AVX2 and FMA are available; `a` holds `depth · 16` values; `w` holds rows `0..rows` (stride
/// `k`) of `depth` values; `c` points at `(tokens − 1) · ldc + rows` values, of which no other
/// thread touches the tile's elements; 1 ≤ rows ≤ 6.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    depth: usize,
    a: &[f32],
    w: &[f32],
    k: usize,
    rows: usize,
    c: *mut f32,
    ldc: usize,
    tokens: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= depth * NT && (1..=MR).contains(&rows));
    debug_assert!(w.len() >= (rows - 1) * k + depth);
    // Missing rows of an edge tile repeat the last one; their sums are not stored.
    let wp: [*const f32; MR] = std::array::from_fn(|r| w.as_ptr().add(r.min(rows - 1) * k));
    let mut acc = [_mm256_setzero_ps(); 2 * MR];
    let ap = a.as_ptr();
    for l in 0..depth {
        let x0 = _mm256_loadu_ps(ap.add(l * NT));
        let x1 = _mm256_loadu_ps(ap.add(l * NT + 8));
        for r in 0..MR {
            let wr = _mm256_broadcast_ss(&*wp[r].add(l));
            acc[2 * r] = _mm256_fmadd_ps(wr, x0, acc[2 * r]);
            acc[2 * r + 1] = _mm256_fmadd_ps(wr, x1, acc[2 * r + 1]);
        }
    }
    let mut tile = [[0f32; NT]; MR];
    for (r, row) in tile.iter_mut().enumerate() {
        _mm256_storeu_ps(row.as_mut_ptr(), acc[2 * r]);
        _mm256_storeu_ps(row.as_mut_ptr().add(8), acc[2 * r + 1]);
    }
    for t in 0..tokens {
        for (r, row) in tile.iter().enumerate().take(rows) {
            let o = c.add(t * ldc + r);
            *o = if accumulate { *o + row[t] } else { row[t] };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    _: usize,
    _: &[f32],
    _: &[f32],
    _: usize,
    _: usize,
    _: *mut f32,
    _: usize,
    _: usize,
    _: bool,
) {
    unreachable!("the gemm kernel needs AVX2 (`available` is false here)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| x[i * k + l] * w[j * k + l]).sum();
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let hash = |i: usize| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000;
        (0..len).map(|i| hash(i) as f32 / 500.0 - 1.0).collect()
    }

    #[test]
    fn matches_a_naive_product_on_ragged_shapes() {
        if !available() {
            return;
        }
        // Edges in every direction: tokens not a multiple of 16, weight rows not of 6 or 96, and
        // k split into several blocks.
        for &(m, k, n) in &[(1, 5, 3), (7, 64, 17), (17, 600, 150), (40, 257, 260)] {
            let (x, w) = (values(m * k, 1), values(n * k, 7));
            let got = matmul(&x, m, k, &w, n);
            let want = naive(&x, m, k, &w, n);
            for (a, b) in got.iter().zip(&want) {
                let tol = 1e-5 * k as f32;
                assert!((a - b).abs() <= tol, "{m}x{k}x{n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_the_other_rows() {
        if !available() {
            return;
        }
        let (k, n) = (300, 70);
        let (x, w) = (values(21 * k, 3), values(n * k, 5));
        let all = matmul(&x, 21, k, &w, n);
        for i in 0..21 {
            let alone = matmul(&x[i * k..(i + 1) * k], 1, k, &w, n);
            assert_eq!(alone, all[i * n..(i + 1) * n], "row {i}");
        }
    }
}
