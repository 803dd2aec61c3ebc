//! One layer's cached keys and values in f32 buffers laid out (batch, kv_heads, capacity, head_dim),
//! and attention of one new query per row straight from them.
//!
//! A forward pass writes its new columns in place and the capacity doubles when full, so a decoding
//! step copies only its own token instead of concatenating the whole cache.

use candle_core::{Device, Tensor};

use super::matvec::dot_f32;
use super::team::{SharedOut, Team};
use crate::Result;

/// Smallest capacity allocated, in columns.
const MIN_CAPACITY: usize = 64;

/// One layer's cached keys and values.
#[derive(Clone, Default)]
pub(crate) struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
    batch: usize,
    heads: usize,
    dim: usize,
    cap: usize,
    len: usize,
}

impl LayerKv {
    /// Number of cached columns.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Forgets the cached columns, keeping the buffers for reuse.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Rows, heads and head dimension of the cached columns.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.batch, self.heads, self.dim)
    }

    /// The cached keys and values of batch row `row`, kv head `head`: each `len × dim`, row-major.
    pub fn head(&self, row: usize, head: usize) -> (&[f32], &[f32]) {
        let base = (row * self.heads + head) * self.cap * self.dim;
        let n = self.len * self.dim;
        (&self.k[base..base + n], &self.v[base..base + n])
    }

    /// Appends `k` and `v`, each (batch, heads, l, dim) contiguous, as `l` new columns.
    pub fn append(&mut self, batch: usize, heads: usize, dim: usize, k: &[f32], v: &[f32]) {
        let l = k.len() / (batch * heads * dim);
        let same_shape = (self.batch, self.heads, self.dim) == (batch, heads, dim);
        debug_assert!(
            same_shape || self.len == 0,
            "appending another shape to a cache"
        );
        if self.len + l > self.cap || !same_shape {
            let cap = (self.len + l).max(2 * self.cap).max(MIN_CAPACITY);
            self.grow(batch, heads, dim, cap);
        }
        let n = l * dim;
        for bh in 0..batch * heads {
            let dst = (bh * self.cap + self.len) * dim;
            self.k[dst..dst + n].copy_from_slice(&k[bh * n..(bh + 1) * n]);
            self.v[dst..dst + n].copy_from_slice(&v[bh * n..(bh + 1) * n]);
        }
        self.len += l;
    }

    /// Appends (batch, heads, l, dim) key and value tensors.
    pub fn append_tensors(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let (b, h, _, d) = k.dims4()?;
        let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        self.append(b, h, d, &flat(k)?, &flat(v)?);
        Ok(())
    }

    /// A zero-filled buffer of `batch` rows, `cap` columns of room and `len` of them in use.
    fn zeroed(batch: usize, heads: usize, dim: usize, cap: usize, len: usize) -> LayerKv {
        LayerKv {
            k: vec![0f32; batch * heads * cap * dim],
            v: vec![0f32; batch * heads * cap * dim],
            batch,
            heads,
            dim,
            cap,
            len,
        }
    }

    fn grow(&mut self, batch: usize, heads: usize, dim: usize, cap: usize) {
        let mut k = vec![0f32; batch * heads * cap * dim];
        let mut v = vec![0f32; batch * heads * cap * dim];
        let n = self.len * dim;
        for bh in 0..batch * heads {
            let (src, dst) = (bh * self.cap * dim, bh * cap * dim);
            k[dst..dst + n].copy_from_slice(&self.k[src..src + n]);
            v[dst..dst + n].copy_from_slice(&self.v[src..src + n]);
        }
        (self.k, self.v) = (k, v);
        (self.batch, self.heads, self.dim, self.cap) = (batch, heads, dim, cap);
    }

    /// Rows `self` then `other`, over `max(len)` columns: each row's columns keep their index, and
    /// columns past a row's own length hold zeros (the caller marks them as padding). Both sides
    /// must share heads and head dimension unless one is empty.
    pub fn concat_rows(&self, other: &LayerKv) -> LayerKv {
        if self.batch == 0 {
            return other.clone();
        }
        if other.batch == 0 {
            return self.clone();
        }
        debug_assert_eq!((self.heads, self.dim), (other.heads, other.dim));
        let (heads, dim) = (self.heads, self.dim);
        let len = self.len.max(other.len);
        let cap = len.max(MIN_CAPACITY);
        let batch = self.batch + other.batch;
        let mut out = LayerKv::zeroed(batch, heads, dim, cap, len);
        for (offset, part) in [(0, self), (self.batch, other)] {
            let n = part.len * dim;
            for bh in 0..part.batch * heads {
                let (src, dst) = (bh * part.cap * dim, (offset * heads + bh) * cap * dim);
                out.k[dst..dst + n].copy_from_slice(&part.k[src..src + n]);
                out.v[dst..dst + n].copy_from_slice(&part.v[src..src + n]);
            }
        }
        out
    }

    /// Keeps the rows where `keep_row` is true and, of their columns, those where `keep_col` is
    /// true (in order).
    pub fn select(&self, keep_row: &[bool], keep_col: &[bool]) -> LayerKv {
        let rows: Vec<usize> = (0..self.batch).filter(|&r| keep_row[r]).collect();
        let cols: Vec<usize> = (0..self.len).filter(|&c| keep_col[c]).collect();
        let (heads, dim) = (self.heads, self.dim);
        let (batch, len) = (rows.len(), cols.len());
        let cap = len.max(MIN_CAPACITY);
        let mut out = LayerKv::zeroed(batch, heads, dim, cap, len);
        for (new_row, &row) in rows.iter().enumerate() {
            for h in 0..heads {
                let src_base = (row * heads + h) * self.cap * dim;
                let dst_base = (new_row * heads + h) * cap * dim;
                for (j, &c) in cols.iter().enumerate() {
                    let (src, dst) = (src_base + c * dim, dst_base + j * dim);
                    out.k[dst..dst + dim].copy_from_slice(&self.k[src..src + dim]);
                    out.v[dst..dst + dim].copy_from_slice(&self.v[src..src + dim]);
                }
            }
        }
        out
    }

    /// The cached keys and values as (batch, heads, len, dim) tensors.
    pub fn tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let shape = (self.batch, self.heads, self.cap, self.dim);
        let view = |buf: &[f32]| -> Result<Tensor> {
            Ok(Tensor::from_slice(buf, shape, device)?
                .narrow(2, 0, self.len)?
                .contiguous()?)
        };
        Ok((view(&self.k)?, view(&self.v)?))
    }

    /// Attends one query per row (`q`: batch × n_heads × dim) over the cached columns each row's
    /// `visible` allows; returns batch × n_heads × dim. (Row, head) pairs are shared out over the
    /// decoding team.
    pub fn attend_one(
        &self,
        q: &[f32],
        n_heads: usize,
        scale: f32,
        softcap: Option<f32>,
        visible: &[Vec<bool>],
    ) -> Vec<f32> {
        let (dim, group) = (self.dim, n_heads / self.heads);
        let mut out = vec![0f32; q.len()];
        let dst = SharedOut(out.as_mut_ptr());
        let units = q.len() / dim;
        let scratch = || (vec![0f32; self.len], vec![0f32; dim]);
        let work = |(scores, o): &mut (Vec<f32>, Vec<f32>), bh: usize| {
            let qh = &q[bh * dim..(bh + 1) * dim];
            let (row, head) = (bh / n_heads, bh % n_heads);
            let base = (row * self.heads + head / group) * self.cap * dim;
            let keys = self.k[base..base + self.len * dim].chunks(dim);
            let mut max = f32::NEG_INFINITY;
            for ((s, key), &seen) in scores.iter_mut().zip(keys).zip(&visible[row]) {
                *s = if seen {
                    let x = dot_f32(qh, key) * scale;
                    let x = softcap.map_or(x, |c| (x / c).tanh() * c);
                    max = max.max(x);
                    x
                } else {
                    f32::NEG_INFINITY
                };
            }
            o.iter_mut().for_each(|a| *a = 0.0);
            let values = self.v[base..base + self.len * dim].chunks(dim);
            let mut sum = 0f32;
            for (s, value) in scores.iter().zip(values) {
                if *s > f32::NEG_INFINITY {
                    let p = (s - max).exp();
                    sum += p;
                    o.iter_mut().zip(value).for_each(|(a, v)| *a += p * v);
                }
            }
            let inv = 1.0 / sum;
            for (j, a) in o.iter().enumerate() {
                // SAFETY: unit `bh` owns out[bh·dim..(bh+1)·dim]; `out` outlives the job.
                unsafe { dst.write(bh * dim + j, a * inv) };
            }
        };
        Team::global().share(units, scratch, work);
        out
    }
}
