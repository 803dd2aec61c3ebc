//! f32 matrix products `C = X · Wᵀ` (tokens × weight rows) for CPU forward passes, on the
//! [`Team`], and the 6 × 16 AVX2 tile kernel they share with attention.
//!
//! Threads share out chunks of 96 weight rows. For each block of 256 along `k`, a thread packs its
//! chunk's block into six panels of 16 rows (step by step along `k`, 16 values per step: 96 KiB,
//! kept in L2), then runs the tile kernel over six tokens at a time: six values of `X` broadcast
//! (straight from its rows) against two vectors of 16 weight rows, 96 sums in twelve registers,
//! added into `C` with vector stores. The packing is one pass over `W` per call, next to `m / 6`
//! passes of the kernel over the packed block. Every output is summed in the same order (along
//! `k`, in fixed blocks) wherever it falls in the tiling, so a token's result never depends on the
//! other tokens of the batch. Without AVX2 the callers use candle's product instead.
//!
//! [`Team`]: super::team::Team

use candle_core::{DType, Tensor};

use super::matvec::with_f32_slice;
use super::team::{SharedOut, Team};
use crate::Result;

/// Rows of a micro-tile (broadcast operands: tokens, or queries in attention).
pub(crate) const MR: usize = 6;
/// Columns of a micro-tile (two vectors of 8: weight rows, keys or value dimensions).
pub(crate) const NT: usize = 16;
/// Largest block along `k`: a chunk's packed block (96 × KC) stays in L2 while the tokens stream.
const KC: usize = 256;
/// Weight rows per chunk of work.
const CHUNK: usize = 6 * NT;

/// Whether [`matmul`] can run here (AVX2 and FMA).
pub(crate) fn available() -> bool {
    super::cpu::has_avx2()
}

/// How the weight operand of [`matmul`] is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `n × k` row-major (a linear map's `W`, as `x · Wᵀ`).
    Rows,
    /// `k × n` row-major (an SAE's `W_enc`, as `x · W`).
    Cols,
}

/// [`matmul`] on a 2-D `x` and a weight tensor laid out as `layout` says, when it applies: f32
/// CPU tensors, `w` contiguous, no autograd tracking, AVX2. `None` otherwise (use candle's).
pub(crate) fn matmul_tensors(x: &Tensor, w: &Tensor, layout: Layout) -> Result<Option<Tensor>> {
    let applies = available()
        && x.device().is_cpu()
        && w.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && w.is_contiguous()
        && !x.track_op()
        && !w.track_op();
    if !applies {
        return Ok(None);
    }
    let (m, k) = x.dims2()?;
    let n = match layout {
        Layout::Rows => w.dim(0)?,
        Layout::Cols => w.dim(1)?,
    };
    let x = x.contiguous()?;
    let y = with_f32_slice(&x, |xs| {
        with_f32_slice(w, |ws| matmul(xs, m, k, ws, layout, n))
    })??;
    Ok(Some(Tensor::from_vec(y, (m, n), x.device())?))
}

/// `x · wᵀ` for `x` (m × k) and `w` (n × k, or k × n with [`Layout::Cols`], then `x · w`), both
/// row-major; returns m × n. Needs [`available`].
pub(crate) fn matmul(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    layout: Layout,
    n: usize,
) -> Vec<f32> {
    assert!(available() && x.len() >= m * k && w.len() >= n * k);
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    let blocks = k.div_ceil(KC);
    let kc = k.div_ceil(blocks);
    let dst = SharedOut(out.as_mut_ptr());
    let work = |packed: &mut Vec<f32>, u: usize| {
        let (j0, j1) = (u * CHUNK, ((u + 1) * CHUNK).min(n));
        for k0 in (0..k).step_by(kc) {
            let depth = kc.min(k - k0);
            match layout {
                Layout::Rows => pack_w(&w[j0 * k..j1 * k], k, k0, depth, packed),
                Layout::Cols => pack_cols(w, n, j0..j1, k0, depth, packed),
            }
            for t0 in (0..m).step_by(MR) {
                let rows = MR.min(m - t0);
                for (p, panel) in packed.chunks_exact(NT * depth).enumerate() {
                    let j = j0 + p * NT;
                    // SAFETY: AVX2/FMA are available (asserted above); token rows t0.. hold
                    // columns k0..k0 + depth; the panel holds `depth` steps of 16; the tile
                    // (tokens t0.., columns j..) of `out` lies inside m × n and belongs to this
                    // chunk alone.
                    unsafe {
                        let b = std::array::from_fn(|r| {
                            x.as_ptr().add((t0 + r.min(rows - 1)) * k + k0)
                        });
                        let out = TileOut {
                            c: dst.at(t0 * n + j),
                            ldc: n,
                            rows,
                            cols: NT.min(j1 - j),
                            accumulate: k0 > 0,
                        };
                        tile(depth, panel.as_ptr(), NT, &b, &out);
                    }
                }
            }
        }
    };
    Team::global().share(n.div_ceil(CHUNK), Vec::new, work);
    out
}

/// Columns `k0..k0 + depth` of the weight rows `w` (row length `k`) as panels of 16 rows, each laid
/// out step by step along `k` (16 values per step, zero past the last row), into `packed`.
fn pack_w(w: &[f32], k: usize, k0: usize, depth: usize, packed: &mut Vec<f32>) {
    let rows = w.len() / k;
    assert!(k0 + depth <= k);
    // Every value is overwritten below but the lanes past the last row, which stay zero.
    packed.resize(rows.div_ceil(NT) * NT * depth, 0.0);
    if !rows.is_multiple_of(NT) {
        let last = &mut packed[rows / NT * NT * depth..];
        last.chunks_exact_mut(NT)
            .for_each(|step| step[rows % NT..].fill(0.0));
    }
    let full = rows / 8 * 8;
    debug_assert!(available(), "only `matmul`, which needs AVX2, packs");
    // SAFETY: AVX2 is available (`matmul` asserts it); the bounds are checked above.
    unsafe { pack_w_avx2(w, k, k0, depth, full, packed) };
    pack_rows(w, k, k0, depth, full..rows, 0..depth, packed);
}

/// [`pack_w`] for a `k × n` weight: columns `cols`, steps `k0..k0 + depth`, as the same panels
/// (a step of a panel is 16 contiguous values of one row of `w`).
fn pack_cols(
    w: &[f32],
    n: usize,
    cols: std::ops::Range<usize>,
    k0: usize,
    depth: usize,
    packed: &mut Vec<f32>,
) {
    let width = cols.len();
    packed.clear();
    packed.resize(width.div_ceil(NT) * NT * depth, 0.0);
    for (p, panel) in packed.chunks_exact_mut(NT * depth).enumerate() {
        let (c0, c1) = (
            cols.start + p * NT,
            (cols.start + (p + 1) * NT).min(cols.end),
        );
        for (l, step) in panel.chunks_exact_mut(NT).enumerate() {
            let row = (k0 + l) * n;
            step[..c1 - c0].copy_from_slice(&w[row + c0..row + c1]);
        }
    }
}

/// [`pack_w`] for rows `rows` and steps `steps` (relative to `k0`), one value at a time.
fn pack_rows(
    w: &[f32],
    k: usize,
    k0: usize,
    depth: usize,
    rows: std::ops::Range<usize>,
    steps: std::ops::Range<usize>,
    packed: &mut [f32],
) {
    for r in rows {
        let panel = &mut packed[r / NT * NT * depth..];
        for l in steps.clone() {
            panel[l * NT + r % NT] = w[r * k + k0 + l];
        }
    }
}

/// [`pack_w`] for rows `0..rows` (a multiple of 8): eight rows by eight steps at a time through a
/// register transpose, the steps past the last multiple of 8 one value at a time.
///
/// # Safety
/// AVX2 is available; `w` holds `rows` rows of `k ≥ k0 + depth` values; `packed` holds the panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_w_avx2(
    w: &[f32],
    k: usize,
    k0: usize,
    depth: usize,
    rows: usize,
    packed: &mut [f32],
) {
    let steps = depth / 8 * 8;
    for r in (0..rows).step_by(8) {
        // SAFETY: AVX2 is available (the caller's contract). Rows `r..r + 8 ≤ rows` of `w` hold
        // `k ≥ k0 + depth` values, so the 8 × 8 source blocks at steps `l + 8 ≤ depth` are in
        // bounds; their destination (8 steps of 16, from lane `r % NT ≤ 8` of panel `r / NT`) lies
        // inside the panels `packed` holds.
        unsafe {
            let src = w.as_ptr().add(r * k + k0);
            let dst = packed.as_mut_ptr().add(r / NT * NT * depth + r % NT);
            for l in (0..steps).step_by(8) {
                transpose8(src.add(l), k, dst.add(l * NT), NT);
            }
        }
    }
    pack_rows(w, k, k0, depth, 0..rows, steps..depth, packed);
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_w_avx2(_: &[f32], _: usize, _: usize, _: usize, _: usize, _: &mut [f32]) {
    unreachable!("needs AVX2")
}

/// Writes the transpose of the 8 × 8 block at `src` (rows `lds` apart) to `dst` (rows `ldd` apart).
///
/// # Safety
/// AVX2 is available; both blocks are in bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn transpose8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the eight rows of eight values at `src`, `lds` apart, are
    // readable.
    let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(i * lds)) });
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    let out = [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ];
    for (i, v) in out.iter().enumerate() {
        // SAFETY: the caller guarantees the eight rows of eight values at `dst`, `ldd` apart, are
        // writable.
        unsafe { _mm256_storeu_ps(dst.add(i * ldd), *v) };
    }
}

/// Where a micro-tile's sums go: `rows` × `cols` of them, element `(r, t)` at `c[r·ldc + t]`;
/// added to what is there when `accumulate`.
pub(crate) struct TileOut {
    pub c: *mut f32,
    pub ldc: usize,
    pub rows: usize,
    pub cols: usize,
    pub accumulate: bool,
}

/// The micro-kernel: sums `s[r][t] = Σ_l b[r][l] · a[l·lda + t]` for six rows `b[r]` (broadcast,
/// contiguous along `l`) and sixteen columns of `a` (two vectors), summing along `l` in order, and
/// stores rows `0..out.rows`, columns `0..out.cols` as `out` says. Serves the products here
/// (tokens against a weight panel) and attention (queries against key panels, probabilities
/// against value rows).
///
/// # Safety
/// AVX2 and FMA are available; `a` points at `depth` rows of 16 readable values, `lda` apart; each
/// `b[r]` at `depth` values; `out` addresses a tile no other thread touches during the call, with
/// `1 ≤ rows ≤ 6` and `cols ≤ 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn tile(
    depth: usize,
    a: *const f32,
    lda: usize,
    b: &[*const f32; MR],
    out: &TileOut,
) {
    use std::arch::x86_64::*;
    debug_assert!((1..=MR).contains(&out.rows) && out.cols <= NT);
    let mut acc = [_mm256_setzero_ps(); 2 * MR];
    // SAFETY (every block of `step`): `l < depth`, and the caller guarantees that `a` points at
    // `depth` rows of 16 readable values, `lda` apart, and each `b[r]` at `depth` values.
    let mut step = |l: usize| {
        let x0 = unsafe { _mm256_loadu_ps(a.add(l * lda)) };
        let x1 = unsafe { _mm256_loadu_ps(a.add(l * lda + 8)) };
        for r in 0..MR {
            let br = _mm256_broadcast_ss(unsafe { &*b[r].add(l) });
            acc[2 * r] = _mm256_fmadd_ps(br, x0, acc[2 * r]);
            acc[2 * r + 1] = _mm256_fmadd_ps(br, x1, acc[2 * r + 1]);
        }
    };
    // Four steps per round: fewer loop branches between the FMAs.
    let mut l = 0;
    while l + 4 <= depth {
        (0..4).for_each(|u| step(l + u));
        l += 4;
    }
    (l..depth).for_each(&mut step);
    if out.cols == NT {
        for r in 0..out.rows {
            // SAFETY: `r < out.rows` and the tile is 16 wide: the caller guarantees these 16
            // values `ldc` apart are in bounds and touched by no other thread during the call.
            unsafe {
                let c = out.c.add(r * out.ldc);
                let (mut lo, mut hi) = (acc[2 * r], acc[2 * r + 1]);
                if out.accumulate {
                    lo = _mm256_add_ps(_mm256_loadu_ps(c), lo);
                    hi = _mm256_add_ps(_mm256_loadu_ps(c.add(8)), hi);
                }
                _mm256_storeu_ps(c, lo);
                _mm256_storeu_ps(c.add(8), hi);
            }
        }
        return;
    }
    let mut sums = [[0f32; NT]; MR];
    for (r, row) in sums.iter_mut().enumerate() {
        // SAFETY: `row` holds 16 values, two vectors.
        unsafe {
            _mm256_storeu_ps(row.as_mut_ptr(), acc[2 * r]);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), acc[2 * r + 1]);
        }
    }
    for (r, row) in sums.iter().enumerate().take(out.rows) {
        for (t, &v) in row.iter().enumerate().take(out.cols) {
            // SAFETY: `r < out.rows` and `t < out.cols`: inside the tile the caller gives this call
            // alone.
            unsafe {
                let o = out.c.add(r * out.ldc + t);
                *o = if out.accumulate { *o + v } else { v };
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn tile(_: usize, _: *const f32, _: usize, _: &[*const f32; MR], _: &TileOut) {
    unreachable!("the f32 tile kernel needs AVX2 (`available` is false here)")
}

/// Deterministic test values in [−1, 1), for the kernel tests here and in `attend`.
#[cfg(test)]
pub(crate) fn values(len: usize, seed: u32) -> Vec<f32> {
    let hash = |i: usize| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000;
    (0..len).map(|i| hash(i) as f32 / 500.0 - 1.0).collect()
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

    #[test]
    fn matches_a_naive_product_on_ragged_shapes() {
        if !available() {
            return;
        }
        // Edges in every direction: tokens not a multiple of 16, weight rows not of 6 or 96, and
        // k split into several blocks.
        for &(m, k, n) in &[(1, 5, 3), (7, 64, 17), (17, 600, 150), (40, 257, 260)] {
            let (x, w) = (values(m * k, 1), values(n * k, 7));
            let got = matmul(&x, m, k, &w, Layout::Rows, n);
            let want = naive(&x, m, k, &w, n);
            for (a, b) in got.iter().zip(&want) {
                let tol = 1e-5 * k as f32;
                assert!((a - b).abs() <= tol, "{m}x{k}x{n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn a_transposed_weight_gives_the_same_bits() {
        if !available() {
            return;
        }
        let (m, k, n) = (13, 300, 37);
        let (x, w) = (values(m * k, 2), values(n * k, 9));
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        assert_eq!(
            matmul(&x, m, k, &w, Layout::Rows, n),
            matmul(&x, m, k, &wt, Layout::Cols, n)
        );
    }

    #[test]
    fn a_row_does_not_depend_on_the_other_rows() {
        if !available() {
            return;
        }
        let (k, n) = (300, 70);
        let (x, w) = (values(21 * k, 3), values(n * k, 5));
        let all = matmul(&x, 21, k, &w, Layout::Rows, n);
        for i in 0..21 {
            let alone = matmul(&x[i * k..(i + 1) * k], 1, k, &w, Layout::Rows, n);
            assert_eq!(alone, all[i * n..(i + 1) * n], "row {i}");
        }
    }
}
