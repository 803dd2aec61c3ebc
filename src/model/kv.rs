//! The KV cache of generation: per layer, the keys and values of earlier tokens (a key/value
//! buffer of the kernels), plus where each cached column sits in its row.

use crate::kernels::kv::LayerKv;
use crate::{Error, Result};

/// Keys and values of earlier tokens, per layer, plus where each cached column sits in its row.
pub struct KvCache {
    pub(super) layers: Vec<LayerKv>,
    /// Per row, per cached column: the token's position, or `None` for padding.
    pub(super) key_pos: Vec<Vec<Option<usize>>>,
}

impl KvCache {
    /// An empty cache for `batch` rows of a model with `n_layers` blocks.
    pub fn new(n_layers: usize, batch: usize) -> Self {
        KvCache {
            layers: vec![LayerKv::default(); n_layers],
            key_pos: vec![Vec::new(); batch],
        }
    }

    /// Number of real tokens cached for each row.
    pub fn row_lengths(&self) -> Vec<usize> {
        self.key_pos
            .iter()
            .map(|r| r.iter().filter(|p| p.is_some()).count())
            .collect()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.key_pos.len()
    }

    /// Adds `other`'s rows after this cache's (continuous batching: a request prefilled alone
    /// joins the running batch). Each row keeps its columns; the shorter side is padded with
    /// columns no query sees, so every row attends exactly what it attended before.
    pub fn append_rows(&mut self, other: KvCache) -> Result<()> {
        if other.layers.len() != self.layers.len() {
            return Err(Error::Mismatch(format!(
                "joining a cache of {} layers to one of {}",
                other.layers.len(),
                self.layers.len()
            )));
        }
        if self.rows() == 0 {
            *self = other;
            return Ok(());
        }
        for (mine, theirs) in self.layers.iter_mut().zip(&other.layers) {
            *mine = mine.concat_rows(theirs);
        }
        self.key_pos.extend(other.key_pos);
        let columns = self.layers.first().map_or(0, LayerKv::len);
        for row in &mut self.key_pos {
            row.resize(columns, None);
        }
        Ok(())
    }

    /// Keeps the rows where `keep` is true (in order) and drops the columns that are padding in
    /// every row kept.
    pub fn retain_rows(&mut self, keep: &[bool]) -> Result<()> {
        if keep.len() != self.rows() {
            return Err(Error::Mismatch(format!(
                "{} row flags for a cache of {} rows",
                keep.len(),
                self.rows()
            )));
        }
        let kept: Vec<Vec<Option<usize>>> = self
            .key_pos
            .iter()
            .zip(keep)
            .filter(|(_, &k)| k)
            .map(|(r, _)| r.clone())
            .collect();
        let columns = self.key_pos.first().map_or(0, Vec::len);
        let used: Vec<bool> = (0..columns)
            .map(|c| kept.iter().any(|r| r[c].is_some()))
            .collect();
        for layer in &mut self.layers {
            *layer = layer.select(keep, &used);
        }
        self.key_pos = kept
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .zip(&used)
                    .filter(|(_, &u)| u)
                    .map(|(p, _)| p)
                    .collect()
            })
            .collect();
        Ok(())
    }
}
