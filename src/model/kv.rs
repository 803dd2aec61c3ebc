//! The KV cache of generation: per layer, the keys and values of earlier tokens (a key/value
//! buffer of the kernels), plus where each cached column sits in its row.

use crate::kernels::kv::LayerKv;

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
}
