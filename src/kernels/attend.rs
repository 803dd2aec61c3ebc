//! Attention of many new queries per row straight from a [`LayerKv`]: the CPU forward pass's
//! kernel when more than one token per row is new (a prefill, a scoring pass).
//!
//! For each (row, kv head) the keys are first packed into panels of 16, transposed (a vector holds
//! one dimension of 16 keys), and the values padded to a multiple of 16 columns. Each unit of work,
//! a block of queries of one head, then runs the f32 tile kernel of [`gemm`] twice: six queries
//! against a key panel for the scores, and six rows of probabilities against value columns for the
//! output. Keys a query cannot see are never used: its scores are soft-capped, masked and
//! normalised only over its visible range, and a tile of six queries only computes the key panels
//! that one of them sees, so the causally masked half of the scores is skipped. Units go to the
//! [`Team`], longest first.
//!
//! Visibility is the same rule as the tensor pass's mask: a real key, not after the query, within
//! the window. Within a row, keys are cached in position order (padding in between), so each query
//! sees one contiguous range of columns, minus padding.
//!
//! [`gemm`]: super::gemm
//! [`Team`]: super::team::Team

use super::gemm::{self, tile, TileOut, MR, NT};
use super::kv::LayerKv;
use super::softmax::softmax_in_place;
use super::team::{SharedOut, Team};

/// Score rows held per unit of work, in values: keeps a unit's scores within a core's L2.
const SCORE_BUDGET: usize = 32 * 1024;
/// Most queries per unit of work.
const MAX_QUERIES: usize = 8 * MR;

/// Where each row's queries and keys sit, for [`attend`].
pub(crate) struct Positions<'a> {
    /// Per row, the position of each new query.
    pub query: &'a [Vec<usize>],
    /// Per row, the position of each cached column (the new tokens included), `None` for padding.
    pub key: &'a [Vec<Option<usize>>],
    /// The sliding window of this layer, if any.
    pub window: Option<usize>,
}

/// Attends the queries `q` — `(batch, l, n_heads, dim)`, already scaled — over every column of
/// `kv`, each query seeing the columns `pos` allows, with scores soft-capped at `softcap` if given.
/// Returns `(batch, l, n_heads, dim)`; a query that sees no key gets zeros. Needs
/// [`gemm::available`].
pub(crate) fn attend(
    kv: &LayerKv,
    q: &[f32],
    n_heads: usize,
    softcap: Option<f32>,
    pos: &Positions,
) -> Vec<f32> {
    assert!(gemm::available(), "attend needs AVX2 and FMA");
    let (b, kvh, dim) = kv.shape();
    let (keys, l) = (kv.len(), pos.query[0].len());
    debug_assert_eq!(q.len(), b * l * n_heads * dim);
    let group = n_heads / kvh;
    let mut out = vec![0f32; q.len()];
    if keys == 0 || l == 0 {
        return out;
    }
    let ld = keys.next_multiple_of(NT);
    let ldv = dim.next_multiple_of(NT);
    let (packed_k, padded_v) = pack(kv, ld, ldv);
    let ranges: Vec<Vec<(usize, usize)>> = (0..b).map(|row| visible_ranges(pos, row)).collect();
    let bias: Vec<Vec<f32>> = pos
        .key
        .iter()
        .map(|kp| {
            let real = |p: &Option<usize>| if p.is_some() { 0.0 } else { f32::NEG_INFINITY };
            kp.iter().map(real).collect()
        })
        .collect();

    let nq = (SCORE_BUDGET / ld / MR * MR).clamp(MR, MAX_QUERIES);
    let blocks = l.div_ceil(nq);
    let heads = b * n_heads;
    let dst = SharedOut(out.as_mut_ptr());
    let work = |scores: &mut Vec<f32>, u: usize| {
        // The last query blocks see the most keys: hand them out first.
        let (blk, bh) = (blocks - 1 - u / heads, u % heads);
        let (row, head) = (bh / n_heads, bh % n_heads);
        let kvi = row * kvh + head / group;
        let kp = &packed_k[kvi * dim * ld..(kvi + 1) * dim * ld];
        let vp = &padded_v[kvi * keys * ldv..(kvi + 1) * keys * ldv];
        let (i0, i1) = (blk * nq, ((blk + 1) * nq).min(l));
        for r0 in (i0..i1).step_by(MR) {
            let rows = MR.min(i1 - r0);
            let seen = &ranges[row][r0..r0 + rows];
            let Some(lo) = seen.iter().filter(|(a, z)| a < z).map(|r| r.0).min() else {
                continue; // no query of the tile sees a key: its outputs stay zero
            };
            let hi = seen.iter().map(|r| r.1).max().expect("rows ≥ 1");
            let s = &mut scores[..rows * ld];
            let q_at = |r: usize| ((row * l + r0 + r.min(rows - 1)) * n_heads + head) * dim;
            // SAFETY: AVX2/FMA are available (asserted); each query row holds `dim` values; a key
            // panel holds `dim` rows of 16; the score tile (rows × 16 at column p·16 < ld) lies in
            // `s`, which this thread alone uses.
            unsafe {
                let qs = std::array::from_fn(|r| q.as_ptr().add(q_at(r)));
                for p in lo / NT..hi.div_ceil(NT) {
                    let out = TileOut {
                        c: s.as_mut_ptr().add(p * NT),
                        ldc: ld,
                        rows,
                        cols: NT,
                        accumulate: false,
                    };
                    tile(dim, kp.as_ptr().add(p * NT * dim), NT, &qs, &out);
                }
            }
            for (r, &(a, z)) in seen.iter().enumerate() {
                let sr = &mut s[r * ld..(r + 1) * ld];
                if a < z {
                    softmax_in_place(&mut sr[a..z], &bias[row][a..z], softcap);
                    sr[lo..a].fill(0.0);
                    sr[z..hi].fill(0.0);
                } else {
                    sr[lo..hi].fill(0.0);
                }
            }
            // SAFETY: as above; value rows lo..hi hold `ldv` ≥ d0 + 16 values each; the output
            // tile (queries r0.., columns d0..) belongs to this unit alone, and `out` outlives the
            // job.
            unsafe {
                let ps = std::array::from_fn(|r| s.as_ptr().add(r.min(rows - 1) * ld + lo));
                for d0 in (0..dim).step_by(NT) {
                    let out = TileOut {
                        c: dst.at(((row * l + r0) * n_heads + head) * dim + d0),
                        ldc: n_heads * dim,
                        rows,
                        cols: NT.min(dim - d0),
                        accumulate: false,
                    };
                    tile(hi - lo, vp.as_ptr().add(lo * ldv + d0), ldv, &ps, &out);
                }
            }
        }
    };
    Team::global().share(blocks * heads, || vec![0f32; nq * ld], work);
    out
}

/// Per (row, kv head): the keys as panels of 16 columns, each `dim` rows of 16 (zero past the last
/// key), `ld / 16` panels; and the values with rows padded to `ldv` (zeros).
fn pack(kv: &LayerKv, ld: usize, ldv: usize) -> (Vec<f32>, Vec<f32>) {
    let (b, kvh, dim) = kv.shape();
    let keys = kv.len();
    let mut pk = vec![0f32; b * kvh * dim * ld];
    let mut pv = vec![0f32; b * kvh * keys * ldv];
    let (dk, dv) = (SharedOut(pk.as_mut_ptr()), SharedOut(pv.as_mut_ptr()));
    Team::global().share(
        b * kvh,
        || (),
        |_, u| {
            let (k, v) = kv.head(u / kvh, u % kvh);
            // SAFETY: unit `u` owns its (row, kv head) slices of both buffers, which outlive the job.
            let (pk, pv) = unsafe {
                (
                    dk.slice(u * dim * ld, dim * ld),
                    dv.slice(u * keys * ldv, keys * ldv),
                )
            };
            for (j, key) in k.chunks_exact(dim).enumerate() {
                let panel = &mut pk[j / NT * NT * dim..];
                for (d, &x) in key.iter().enumerate() {
                    panel[d * NT + j % NT] = x;
                }
            }
            for (dst, src) in pv.chunks_exact_mut(ldv).zip(v.chunks_exact(dim)) {
                dst[..dim].copy_from_slice(src);
            }
        },
    );
    (pk, pv)
}

/// For each query of `row`, the columns `lo..hi` it may see (padding inside the range is masked
/// separately): those whose position is at most the query's and, with a window `w`, above
/// `query − w`.
fn visible_ranges(pos: &Positions, row: usize) -> Vec<(usize, usize)> {
    // Each column's position, padding taking the one before it: non-decreasing along the row.
    let mut last = -1i64;
    let ordered: Vec<i64> = pos.key[row]
        .iter()
        .map(|p| {
            if let Some(p) = p {
                last = *p as i64;
            }
            last
        })
        .collect();
    pos.query[row]
        .iter()
        .map(|&qp| {
            let qp = qp as i64;
            let hi = ordered.partition_point(|&p| p <= qp);
            let lo = pos
                .window
                .map_or(0, |w| ordered.partition_point(|&p| p <= qp - w as i64));
            (lo, hi.max(lo))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::gemm::values;
    use super::*;

    /// Attention by the definition, one query at a time.
    fn naive(
        kv: &LayerKv,
        q: &[f32],
        n_heads: usize,
        cap: Option<f32>,
        pos: &Positions,
    ) -> Vec<f32> {
        let (b, kvh, dim) = kv.shape();
        let l = pos.query[0].len();
        let mut out = vec![0f32; q.len()];
        for row in 0..b {
            for i in 0..l {
                let qp = pos.query[row][i];
                for h in 0..n_heads {
                    let (k, v) = kv.head(row, h / (n_heads / kvh));
                    let at = ((row * l + i) * n_heads + h) * dim;
                    let qv = &q[at..at + dim];
                    let scores: Vec<Option<f32>> = pos.key[row]
                        .iter()
                        .enumerate()
                        .map(|(j, kp)| {
                            let seen = kp.is_some_and(|kp| {
                                kp <= qp && pos.window.is_none_or(|w| qp - kp < w)
                            });
                            seen.then(|| {
                                let s: f32 = (0..dim).map(|d| qv[d] * k[j * dim + d]).sum();
                                cap.map_or(s, |c| (s / c).tanh() * c)
                            })
                        })
                        .collect();
                    let max = scores
                        .iter()
                        .flatten()
                        .fold(f32::NEG_INFINITY, |a, &s| a.max(s));
                    let sum: f32 = scores.iter().flatten().map(|s| (s - max).exp()).sum();
                    for (j, s) in scores.iter().enumerate() {
                        if let Some(s) = s {
                            let p = (s - max).exp() / sum;
                            for d in 0..dim {
                                out[at + d] += p * v[j * dim + d];
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_attention_by_the_definition() {
        if !gemm::available() {
            return;
        }
        // (rows, kv heads, group, dim, cached, new, window, soft-cap): ragged dims, GQA, a cache
        // with padding in it, a window shorter than the input, long enough for several units.
        let cases = [
            (1, 1, 1, 8, 0, 5, None, None),
            (2, 2, 3, 20, 7, 40, None, None),
            (2, 1, 2, 64, 0, 130, Some(17), Some(5.0)),
            (1, 3, 3, 32, 300, 200, None, None),
        ];
        for (b, kvh, group, dim, cached, new, window, cap) in cases {
            let n_heads = kvh * group;
            let mut kv = LayerKv::default();
            let total = cached + new;
            kv.append(
                b,
                kvh,
                dim,
                &values(b * kvh * total * dim, 1),
                &values(b * kvh * total * dim, 2),
            );
            // Row 1 has three padding columns among its cached ones and is shorter by 4 new tokens.
            let mut key = Vec::new();
            let mut query = Vec::new();
            for row in 0..b {
                let pad = |j: usize| row == 1 && cached > 3 && [1, 2, cached - 1].contains(&j);
                let mut kp = Vec::new();
                let mut start = 0;
                for j in 0..cached {
                    kp.push((!pad(j)).then_some(start));
                    start += usize::from(!pad(j));
                }
                let len = if row == 1 { new - 4 } else { new };
                kp.extend((0..new).map(|i| (i < len).then_some(start + i)));
                key.push(kp);
                query.push((start..start + new).collect());
            }
            let pos = Positions {
                query: &query,
                key: &key,
                window,
            };
            let q = values(b * new * n_heads * dim, 3);
            let got = attend(&kv, &q, n_heads, cap, &pos);
            let want = naive(&kv, &q, n_heads, cap, &pos);
            for (i, (a, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - w).abs() <= 1e-5,
                    "case {b}×{kvh}×{group}×{dim}: {i}: {a} vs {w}"
                );
            }
        }
    }
}
