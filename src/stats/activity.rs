//! Which features are active at which tokens: the input of the gate statistic ρ (§2 of the spec).
//!
//! Two paths:
//!
//! * **Fixed set** ([`token_activity`]): when the selected features are known (at inference, or in
//!   a second pass over a calibration corpus), reduce `(batch, seq, N)` latents of the selected
//!   features to one "any selected feature > 0" flag per token.
//! * **Record now, select later** ([`RowActivity`]): while the statistics that drive selection are
//!   still being accumulated, keep for every token the sorted ids of its active features (within a
//!   pool, by default every feature). Afterwards the per-token flags for *any* selected set inside
//!   the pool, in particular every prefix `N ≤ K` of a ranking, follow exactly, with no second pass.
//!
//! Both apply the reference's calibration conventions: position 0 of a row that starts with BOS
//! is never active (the reference zeroes it), every other real token may be active (EOS included),
//! and padding is dropped.

use std::path::Path;

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use super::latents::{as_batch, tokens_per_piece};
use super::store::{self, Column, StoredFile};
use crate::{Error, Result};

/// The columns `features` of latents `(…, d_sae)`, i.e. the `(…, N)` activations of a selected set.
pub fn select_features(latents: &Tensor, features: &[u32]) -> Result<Tensor> {
    let d_sae = latents.dim(D::Minus1)?;
    if let Some(&f) = features.iter().find(|&&f| f as usize >= d_sae) {
        return Err(Error::Invalid(format!(
            "feature {f} is out of range for an SAE with {d_sae} features"
        )));
    }
    let ids = Tensor::from_slice(features, features.len(), latents.device())?;
    Ok(latents.index_select(&ids, latents.rank() - 1)?)
}

/// Per-token "any of these features is > 0" flags for each row of right-padded latents
/// `(seq, N)` or `(batch, seq, N)` holding only the selected features' columns. Row `b` gets
/// `lengths[b]` flags; when `starts_with_bos` its position 0 is inactive.
pub fn token_activity(
    selected: &Tensor,
    lengths: &[usize],
    starts_with_bos: bool,
) -> Result<Vec<Vec<bool>>> {
    let selected = as_batch(selected, lengths)?;
    // Some selected feature is > 0 iff the largest one is (reduced in f32, which every backend has).
    let any = if selected.dim(2)? == 0 {
        Tensor::zeros(selected.dims()[..2].to_vec(), DType::U8, selected.device())?
    } else {
        selected.max(2)?.gt(0f32)?
    };
    let any = any.to_vec2::<u8>()?;
    Ok(any
        .into_iter()
        .zip(lengths)
        .map(|(row, &len)| {
            let mut flags: Vec<bool> = row[..len].iter().map(|&v| v != 0).collect();
            if starts_with_bos {
                if let Some(first) = flags.first_mut() {
                    *first = false;
                }
            }
            flags
        })
        .collect())
}

/// The active features of every token of every row, as sorted id lists (compressed sparse rows).
///
/// Memory: 8 bytes per row, 8 bytes per token and 4 bytes per (token, active pooled feature) pair,
/// i.e. about `4·ℓ0 + 8` bytes per token with the full pool. For Gemma Scope's layer-3 ℓ0-142 SAE
/// and the reference's 275 rows × 1024 tokens that is ≈ 162 MB per corpus; a pool of `K` features
/// bounds it by `4·K + 8` bytes per token. It is independent of `d_sae`, unlike the reference,
/// which keeps the dense activations (≈ 18 GB per corpus).
#[derive(Debug, Clone, PartialEq)]
pub struct RowActivity {
    d_sae: usize,
    pool: Option<Vec<u32>>,
    row_starts: Vec<u64>,
    token_starts: Vec<u64>,
    ids: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format_version: u32,
    d_sae: usize,
    pool_len: Option<usize>,
    n_rows: usize,
    n_tokens: usize,
    n_ids: usize,
}

const HEADER_KEY: &str = "dsg.row_activity";
const FORMAT_VERSION: u32 = 1;

impl RowActivity {
    /// An empty record for an SAE with `d_sae` features, keeping only features in `pool` (sorted,
    /// distinct ids) or every feature when `pool` is `None`.
    pub fn new(d_sae: usize, pool: Option<Vec<u32>>) -> Result<Self> {
        if let Some(pool) = &pool {
            if pool.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::Invalid(
                    "activity pool must be sorted and distinct".into(),
                ));
            }
            if pool.last().is_some_and(|&f| f as usize >= d_sae) {
                return Err(Error::Invalid(format!(
                    "activity pool holds features beyond d_sae = {d_sae}"
                )));
            }
        }
        Ok(RowActivity {
            d_sae,
            pool,
            row_starts: vec![0],
            token_starts: vec![0],
            ids: Vec::new(),
        })
    }

    /// Number of rows recorded.
    pub fn n_rows(&self) -> usize {
        self.row_starts.len() - 1
    }

    /// Length (real tokens) of row `row`.
    pub fn row_len(&self, row: usize) -> usize {
        (self.row_starts[row + 1] - self.row_starts[row]) as usize
    }

    /// Bytes held by the record.
    pub fn memory_bytes(&self) -> usize {
        8 * (self.row_starts.len() + self.token_starts.len())
            + 4 * (self.ids.len() + self.pool.as_ref().map_or(0, Vec::len))
    }

    /// The features recorded: the pool, or `0..d_sae`.
    fn recorded(&self) -> Vec<u32> {
        self.pool
            .clone()
            .unwrap_or_else(|| (0..self.d_sae as u32).collect())
    }

    fn push_token(&mut self, active: impl Iterator<Item = u32>) {
        self.ids.extend(active);
        self.token_starts.push(self.ids.len() as u64);
    }

    fn end_row(&mut self) {
        self.row_starts.push(self.token_starts.len() as u64 - 1);
    }

    /// Records one row given as a row-major `(len, d_sae)` slice.
    pub fn push_row(&mut self, acts: &[f32], starts_with_bos: bool) -> Result<()> {
        let d = self.d_sae;
        if d == 0 || !acts.len().is_multiple_of(d) {
            return Err(Error::Invalid(format!(
                "row of {} values is not a whole number of {d}-feature tokens",
                acts.len()
            )));
        }
        let recorded = self.recorded();
        for (t, token) in acts.chunks_exact(d).enumerate() {
            let skip = t == 0 && starts_with_bos;
            self.push_token(
                recorded
                    .iter()
                    .copied()
                    .filter(|&f| !skip && token[f as usize] > 0.0),
            );
        }
        self.end_row();
        Ok(())
    }

    /// Records a right-padded batch `(seq, d_sae)` or `(batch, seq, d_sae)` with the rows' valid
    /// lengths; the pool's columns are gathered and thresholded on the tensor's device.
    pub fn push_batch(
        &mut self,
        acts: &Tensor,
        lengths: &[usize],
        starts_with_bos: bool,
    ) -> Result<()> {
        let acts = as_batch(acts, lengths)?;
        if acts.dim(2)? != self.d_sae {
            return Err(Error::Mismatch(format!(
                "latents have {} features, activity record has {}",
                acts.dim(2)?,
                self.d_sae
            )));
        }
        let recorded = self.recorded();
        let columns = match &self.pool {
            Some(pool) => Some(Tensor::from_slice(pool, pool.len(), acts.device())?),
            None => None,
        };
        let piece = tokens_per_piece(recorded.len());
        for (b, &len) in lengths.iter().enumerate() {
            let mut row = acts.get(b)?.narrow(0, 0, len)?;
            if let Some(columns) = &columns {
                row = row.index_select(columns, 1)?;
            }
            for start in (0..len).step_by(piece) {
                let fires = row.narrow(0, start, piece.min(len - start))?.gt(0f32)?;
                for (offset, token) in fires.to_vec2::<u8>()?.into_iter().enumerate() {
                    let skip = start + offset == 0 && starts_with_bos;
                    self.push_token(
                        token
                            .iter()
                            .zip(&recorded)
                            .filter(|(&fire, _)| !skip && fire != 0)
                            .map(|(_, &f)| f),
                    );
                }
            }
            self.end_row();
        }
        Ok(())
    }

    /// Appends `other`'s rows (same SAE width and pool).
    pub fn append(&mut self, other: &RowActivity) -> Result<()> {
        if self.d_sae != other.d_sae || self.pool != other.pool {
            return Err(Error::Mismatch(
                "cannot append activity recorded for another SAE width or pool".into(),
            ));
        }
        let (token_base, id_base) = (self.token_starts.len() as u64 - 1, self.ids.len() as u64);
        self.ids.extend(&other.ids);
        self.token_starts
            .extend(other.token_starts[1..].iter().map(|s| s + id_base));
        self.row_starts
            .extend(other.row_starts[1..].iter().map(|s| s + token_base));
        Ok(())
    }

    /// Per-token "any feature of `selected` is active" flags of every row. Exact for any
    /// `selected` inside the pool; a feature outside it is an error, since its activity was not
    /// kept.
    pub fn activity(&self, selected: &[u32]) -> Result<Vec<Vec<bool>>> {
        let mut is_selected = vec![false; self.d_sae];
        for &f in selected {
            let kept = match &self.pool {
                Some(pool) => pool.binary_search(&f).is_ok(),
                None => (f as usize) < self.d_sae,
            };
            if !kept {
                return Err(Error::Invalid(format!(
                    "feature {f} is not in the recorded activity pool"
                )));
            }
            is_selected[f as usize] = true;
        }
        Ok((0..self.n_rows())
            .map(|row| {
                let tokens = self.row_starts[row] as usize..self.row_starts[row + 1] as usize;
                tokens
                    .map(|t| {
                        let ids = self.token_starts[t] as usize..self.token_starts[t + 1] as usize;
                        self.ids[ids].iter().any(|&f| is_selected[f as usize])
                    })
                    .collect()
            })
            .collect())
    }

    /// Writes the record to a safetensors file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let header = Header {
            format_version: FORMAT_VERSION,
            d_sae: self.d_sae,
            pool_len: self.pool.as_ref().map(Vec::len),
            n_rows: self.n_rows(),
            n_tokens: self.token_starts.len() - 1,
            n_ids: self.ids.len(),
        };
        let pool = self.pool.clone().unwrap_or_default();
        store::write(
            path.as_ref(),
            HEADER_KEY,
            &header,
            &[
                ("pool", Column::U32(&pool)),
                ("row_starts", Column::U64(&self.row_starts)),
                ("token_starts", Column::U64(&self.token_starts)),
                ("ids", Column::U32(&self.ids)),
            ],
        )
    }

    /// Reads a record written by [`RowActivity::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = StoredFile::open(path)?;
        let h: Header = file.header(HEADER_KEY)?;
        if h.format_version != FORMAT_VERSION {
            return Err(Error::format(
                path,
                "format_version",
                FORMAT_VERSION.to_string(),
                h.format_version.to_string(),
            ));
        }
        let pool = file.u32s("pool", h.pool_len.unwrap_or(0))?;
        let mut activity = RowActivity::new(h.d_sae, h.pool_len.map(|_| pool)).map_err(|e| {
            Error::format(path, "pool", "sorted distinct feature ids", e.to_string())
        })?;
        activity.row_starts = file.u64s("row_starts", h.n_rows + 1)?;
        activity.token_starts = file.u64s("token_starts", h.n_tokens + 1)?;
        activity.ids = file.u32s("ids", h.n_ids)?;
        let consistent = activity.row_starts.last() == Some(&(h.n_tokens as u64))
            && activity.token_starts.last() == Some(&(h.n_ids as u64))
            && activity.ids.iter().all(|&f| (f as usize) < h.d_sae);
        if !consistent {
            return Err(Error::format(
                path,
                "row_starts/token_starts/ids",
                "consistent offsets and in-range ids",
                "inconsistent arrays",
            ));
        }
        Ok(activity)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// Two rows over 4 features: row 0 has 3 tokens, row 1 has 2.
    fn rows() -> Vec<Vec<f32>> {
        vec![
            vec![
                5.0, 5.0, 5.0, 5.0, // BOS
                0.0, 1.0, 0.0, 0.0, //
                0.0, 0.0, 0.0, 2.0,
            ],
            vec![
                0.0, 0.0, 3.0, 0.0, //
                0.0, 0.0, 0.0, 0.0,
            ],
        ]
    }

    #[test]
    fn activity_of_any_subset_after_the_fact() {
        let mut rec = RowActivity::new(4, None).unwrap();
        for row in rows() {
            rec.push_row(&row, true).unwrap();
        }
        assert_eq!(rec.n_rows(), 2);
        assert_eq!((rec.row_len(0), rec.row_len(1)), (3, 2));
        let got = rec.activity(&[1]).unwrap();
        assert_eq!(got, vec![vec![false, true, false], vec![false, false]]);
        let got = rec.activity(&[3, 2]).unwrap();
        assert_eq!(got, vec![vec![false, false, true], vec![false, false]]);
        assert!(rec.activity(&[4]).is_err());
    }

    #[test]
    fn continuation_rows_keep_position_zero() {
        let mut rec = RowActivity::new(4, None).unwrap();
        rec.push_row(&rows()[1], false).unwrap();
        assert_eq!(rec.activity(&[2]).unwrap(), vec![vec![true, false]]);
    }

    #[test]
    fn pool_restricts_what_is_kept() {
        let mut rec = RowActivity::new(4, Some(vec![1, 3])).unwrap();
        for row in rows() {
            rec.push_row(&row, true).unwrap();
        }
        assert_eq!(
            rec.activity(&[1, 3]).unwrap(),
            vec![vec![false, true, true], vec![false, false]]
        );
        assert!(rec.activity(&[2]).is_err());
        assert!(RowActivity::new(4, Some(vec![3, 1])).is_err());
        assert!(RowActivity::new(4, Some(vec![4])).is_err());
    }

    #[test]
    fn tensor_batches_match_slices_and_fixed_set_path() {
        let mut by_slices = RowActivity::new(4, Some(vec![0, 2, 3])).unwrap();
        for row in rows() {
            by_slices.push_row(&row, true).unwrap();
        }
        let mut padded = rows()[0].clone();
        padded.extend(&rows()[1]);
        padded.extend([9.0; 4]);
        let batch = Tensor::from_vec(padded, (2, 3, 4), &Device::Cpu).unwrap();
        let mut by_tensor = RowActivity::new(4, Some(vec![0, 2, 3])).unwrap();
        by_tensor.push_batch(&batch, &[3, 2], true).unwrap();
        assert_eq!(by_tensor, by_slices);

        let selected = select_features(&batch, &[2, 3]).unwrap();
        let direct = token_activity(&selected, &[3, 2], true).unwrap();
        assert_eq!(direct, by_slices.activity(&[2, 3]).unwrap());
    }

    #[test]
    fn append_and_save_load_round_trip() {
        let mut first = RowActivity::new(4, None).unwrap();
        let mut second = RowActivity::new(4, None).unwrap();
        let mut both = RowActivity::new(4, None).unwrap();
        first.push_row(&rows()[0], true).unwrap();
        second.push_row(&rows()[1], true).unwrap();
        for row in rows() {
            both.push_row(&row, true).unwrap();
        }
        first.append(&second).unwrap();
        assert_eq!(first, both);

        let path =
            std::env::temp_dir().join(format!("dsg-activity-{}.safetensors", std::process::id()));
        both.save(&path).unwrap();
        let back = RowActivity::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back, both);
    }
}
