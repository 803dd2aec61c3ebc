//! Streaming, mergeable per-feature statistics over a corpus (§1.3 of the spec).
//!
//! For every SAE feature `i` the accumulator keeps, over the *counted* tokens of the corpus, the
//! number of tokens, `Σ a_i`, `Σ a_i²` and the firing count `#{a_i > 0}`. Memory is `O(d_sae)`
//! whatever the corpus length. Counted tokens are the reference's mask: real (non-padding) tokens
//! that are not BOS, EOS or PAD; the caller passes the mask, e.g. from [`counted_tokens`].
//!
//! Sums are f64. Within one call the device reduces each row in f64; across calls and in
//! [`FeatureStats::merge`] the partial sums are added, so a merged result equals the sequential one
//! up to the order of f64 additions (exactly, for values whose sums are representable).

use std::path::Path;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::latents::{as_batch, tokens_per_piece};
use super::shard::ShardTag;
use super::store::{self, Column, StoredFile};
use crate::model::HookPoint;
use crate::{Error, Result};

/// Where a set of statistics comes from; kept with the numbers and checked when merging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsProvenance {
    /// Free-text description of the corpus (dataset, split, filters, sampling).
    pub corpus: String,
    /// The hook point whose activations the SAE encoded.
    pub hook_point: HookPoint,
    /// The SAE's identity, e.g. the sha256 of its weights file.
    pub sae_id: String,
}

/// Per-feature sums over the counted tokens of a corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    /// Where the numbers come from.
    pub provenance: StatsProvenance,
    /// Which shard of which pass these are, when written by a sharded pass (`None` for a whole
    /// pass, a merge, and files written before shards were recorded).
    pub shard: Option<ShardTag>,
    counts: Counts,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    fire_count: Vec<u64>,
}

/// Corpus-level counts, stored as the file header together with the provenance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counts {
    n_rows: u64,
    n_tokens: u64,
    n_counted: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format_version: u32,
    d_sae: usize,
    provenance: StatsProvenance,
    /// Absent in whole-pass files and in files written before shards were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<ShardTag>,
    #[serde(flatten)]
    counts: Counts,
}

const HEADER_KEY: &str = "dsg.feature_stats";
const FORMAT_VERSION: u32 = 1;

/// The reference's counted-token mask: `false` at BOS, EOS and PAD tokens (`special_ids`).
pub fn counted_tokens(tokens: &[u32], special_ids: &[u32]) -> Vec<bool> {
    tokens.iter().map(|t| !special_ids.contains(t)).collect()
}

impl FeatureStats {
    /// Empty statistics for an SAE with `d_sae` features.
    pub fn new(d_sae: usize, provenance: StatsProvenance) -> Self {
        FeatureStats {
            provenance,
            shard: None,
            counts: Counts::default(),
            sum: vec![0.0; d_sae],
            sum_sq: vec![0.0; d_sae],
            fire_count: vec![0; d_sae],
        }
    }

    /// Number of SAE features.
    pub fn d_sae(&self) -> usize {
        self.sum.len()
    }

    /// Rows seen.
    pub fn n_rows(&self) -> u64 {
        self.counts.n_rows
    }

    /// Real (non-padding) tokens seen, counted or not.
    pub fn n_tokens(&self) -> u64 {
        self.counts.n_tokens
    }

    /// Tokens that entered the statistics.
    pub fn n_counted(&self) -> u64 {
        self.counts.n_counted
    }

    /// Adds one row given as a row-major `(len, d_sae)` slice; `counted[t]` says whether token `t`
    /// enters the statistics (`counted.len()` is the row's length).
    pub fn add_row(&mut self, acts: &[f32], counted: &[bool]) -> Result<()> {
        let d = self.d_sae();
        if acts.len() != counted.len() * d {
            return Err(Error::Invalid(format!(
                "row of {} values is not {} tokens × {d} features",
                acts.len(),
                counted.len()
            )));
        }
        for (token, _) in acts.chunks_exact(d.max(1)).zip(counted).filter(|(_, &c)| c) {
            for (i, &a) in token.iter().enumerate() {
                let a = f64::from(a);
                self.sum[i] += a;
                self.sum_sq[i] += a * a;
                self.fire_count[i] += u64::from(a > 0.0);
            }
        }
        self.count_row(counted);
        Ok(())
    }

    /// Adds a right-padded batch of latents, `(seq, d_sae)` or `(batch, seq, d_sae)`, reducing on
    /// the tensor's device. `counted[b]` is row `b`'s counted-token mask; its length is the row's
    /// valid length and later positions are padding.
    pub fn add_batch(&mut self, acts: &Tensor, counted: &[Vec<bool>]) -> Result<()> {
        let lengths: Vec<usize> = counted.iter().map(Vec::len).collect();
        let acts = as_batch(acts, &lengths)?;
        let d = acts.dim(2)?;
        if d != self.d_sae() {
            return Err(Error::Mismatch(format!(
                "latents have {d} features, statistics have {}",
                self.d_sae()
            )));
        }
        for (b, mask) in counted.iter().enumerate() {
            let positions: Vec<u32> = (0..mask.len() as u32)
                .filter(|&t| mask[t as usize])
                .collect();
            let row = acts.get(b)?;
            for piece in positions.chunks(tokens_per_piece(d)) {
                let ids = Tensor::from_slice(piece, piece.len(), acts.device())?;
                let x = row.index_select(&ids, 0)?.to_dtype(DType::F64)?;
                let sum = x.sum(0)?.to_vec1::<f64>()?;
                let sum_sq = x.sqr()?.sum(0)?.to_vec1::<f64>()?;
                let fires = x.gt(0.0)?.to_dtype(DType::F64)?.sum(0)?.to_vec1::<f64>()?;
                for i in 0..d {
                    self.sum[i] += sum[i];
                    self.sum_sq[i] += sum_sq[i];
                    self.fire_count[i] += fires[i] as u64;
                }
            }
            self.count_row(mask);
        }
        Ok(())
    }

    fn count_row(&mut self, counted: &[bool]) {
        self.counts.n_rows += 1;
        self.counts.n_tokens += counted.len() as u64;
        self.counts.n_counted += counted.iter().filter(|&&c| c).count() as u64;
    }

    /// Adds `other`'s statistics (another shard of the same corpus, or another corpus with the
    /// same SAE and hook point; differing corpus descriptions are joined with ` + `). The sum is no
    /// single shard, so its shard tag is cleared; [`crate::stats::shard::check_shard_set`] checks
    /// a set of shards before they are added.
    pub fn merge(&mut self, other: &FeatureStats) -> Result<()> {
        let (mine, theirs) = (&self.provenance, &other.provenance);
        if mine.hook_point != theirs.hook_point || mine.sae_id != theirs.sae_id {
            return Err(Error::Mismatch(format!(
                "cannot merge statistics of SAE {} at {} with SAE {} at {}",
                mine.sae_id, mine.hook_point, theirs.sae_id, theirs.hook_point
            )));
        }
        if self.d_sae() != other.d_sae() {
            return Err(Error::Mismatch(format!(
                "cannot merge statistics over {} features with {}",
                self.d_sae(),
                other.d_sae()
            )));
        }
        if mine.corpus != theirs.corpus {
            self.provenance.corpus = format!("{} + {}", mine.corpus, theirs.corpus);
        }
        for i in 0..self.d_sae() {
            self.sum[i] += other.sum[i];
            self.sum_sq[i] += other.sum_sq[i];
            self.fire_count[i] += other.fire_count[i];
        }
        self.counts.n_rows += other.counts.n_rows;
        self.counts.n_tokens += other.counts.n_tokens;
        self.counts.n_counted += other.counts.n_counted;
        self.shard = None;
        Ok(())
    }

    fn per_counted_token(&self, totals: impl Iterator<Item = f64>) -> Vec<f64> {
        let n = self.counts.n_counted;
        totals
            .map(|x| if n == 0 { 0.0 } else { x / n as f64 })
            .collect()
    }

    /// Mean activation `μ_i` over counted tokens (zeros if no token was counted).
    pub fn mean(&self) -> Vec<f64> {
        self.per_counted_token(self.sum.iter().copied())
    }

    /// Mean squared activation `E[a_i²]` over counted tokens.
    pub fn mean_sq(&self) -> Vec<f64> {
        self.per_counted_token(self.sum_sq.iter().copied())
    }

    /// Firing frequency: the fraction of counted tokens with `a_i > 0`.
    pub fn freq(&self) -> Vec<f64> {
        self.per_counted_token(self.fire_count.iter().map(|&c| c as f64))
    }

    /// Writes the statistics to a safetensors file (sums as f64, exact) with the counts and
    /// provenance as JSON metadata.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let header = Header {
            format_version: FORMAT_VERSION,
            d_sae: self.d_sae(),
            provenance: self.provenance.clone(),
            shard: self.shard.clone(),
            counts: self.counts,
        };
        store::write(
            path.as_ref(),
            HEADER_KEY,
            &header,
            &[
                ("sum", Column::F64(&self.sum)),
                ("sum_sq", Column::F64(&self.sum_sq)),
                ("fire_count", Column::U64(&self.fire_count)),
            ],
        )
    }

    /// Reads statistics written by [`FeatureStats::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = StoredFile::open(path)?;
        let header = checked(path, file.header(HEADER_KEY)?)?;
        Ok(FeatureStats {
            provenance: header.provenance,
            shard: header.shard,
            counts: header.counts,
            sum: file.f64s("sum", header.d_sae)?,
            sum_sq: file.f64s("sum_sq", header.d_sae)?,
            fire_count: file.u64s("fire_count", header.d_sae)?,
        })
    }

    /// The shard tag of the statistics file at `path`, reading only its header (see
    /// [`FeatureStats::shard`]).
    pub fn read_shard(path: impl AsRef<Path>) -> Result<Option<ShardTag>> {
        let path = path.as_ref();
        Ok(checked(path, store::read_header(path, HEADER_KEY)?)?.shard)
    }
}

/// `header` of the file at `path`, if its format version is this one.
fn checked(path: &Path, header: Header) -> Result<Header> {
    if header.format_version != FORMAT_VERSION {
        return Err(Error::format(
            path,
            "format_version",
            FORMAT_VERSION.to_string(),
            header.format_version.to_string(),
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn provenance(corpus: &str) -> StatsProvenance {
        StatsProvenance {
            corpus: corpus.into(),
            hook_point: HookPoint::resid_post(3),
            sae_id: "sae-sha".into(),
        }
    }

    /// Two rows over 3 features; the first token of each row is BOS (not counted).
    fn rows() -> (Vec<Vec<f32>>, Vec<Vec<bool>>) {
        let acts = vec![
            vec![9.0, 9.0, 9.0, 1.0, 0.0, 2.0, 0.5, 0.0, 0.0],
            vec![9.0, 9.0, 9.0, 3.0, 0.0, 0.0],
        ];
        let counted = vec![vec![false, true, true], vec![false, true]];
        (acts, counted)
    }

    #[test]
    fn masked_means_match_hand_computation() {
        let (acts, counted) = rows();
        let mut stats = FeatureStats::new(3, provenance("c"));
        for (a, c) in acts.iter().zip(&counted) {
            stats.add_row(a, c).unwrap();
        }
        assert_eq!(
            (stats.n_rows(), stats.n_tokens(), stats.n_counted()),
            (2, 5, 3)
        );
        assert_eq!(stats.mean(), vec![4.5 / 3.0, 0.0, 2.0 / 3.0]);
        assert_eq!(stats.mean_sq(), vec![10.25 / 3.0, 0.0, 4.0 / 3.0]);
        assert_eq!(stats.freq(), vec![1.0, 0.0, 1.0 / 3.0]);
    }

    #[test]
    fn tensor_batch_with_padding_equals_slices() {
        let (acts, counted) = rows();
        let mut by_slices = FeatureStats::new(3, provenance("c"));
        for (a, c) in acts.iter().zip(&counted) {
            by_slices.add_row(a, c).unwrap();
        }
        // Pad row 1 to length 3 with garbage that must be ignored.
        let mut padded = acts[0].clone();
        padded.extend(&acts[1]);
        padded.extend([7.0, 7.0, 7.0]);
        let batch = Tensor::from_vec(padded, (2, 3, 3), &Device::Cpu).unwrap();
        let mut by_tensor = FeatureStats::new(3, provenance("c"));
        by_tensor.add_batch(&batch, &counted).unwrap();
        assert_eq!(by_tensor, by_slices);
    }

    #[test]
    fn merge_equals_sequential_and_checks_identity() {
        let (acts, counted) = rows();
        let mut all = FeatureStats::new(3, provenance("c"));
        let mut first = FeatureStats::new(3, provenance("c"));
        let mut second = FeatureStats::new(3, provenance("c"));
        for (a, c) in acts.iter().zip(&counted) {
            all.add_row(a, c).unwrap();
        }
        first.add_row(&acts[0], &counted[0]).unwrap();
        second.add_row(&acts[1], &counted[1]).unwrap();
        first.merge(&second).unwrap();
        assert_eq!(first, all);

        let mut other_sae = FeatureStats::new(3, provenance("c"));
        other_sae.provenance.sae_id = "another".into();
        assert!(matches!(first.merge(&other_sae), Err(Error::Mismatch(_))));
    }

    #[test]
    fn save_load_round_trip_is_exact() {
        let (acts, counted) = rows();
        let mut stats = FeatureStats::new(3, provenance("wikitext-2 test"));
        for (a, c) in acts.iter().zip(&counted) {
            stats.add_row(a, c).unwrap();
        }
        stats.sum[1] = 0.1 + 0.2; // a value JSON round trips are known to perturb
        let path =
            std::env::temp_dir().join(format!("dsg-stats-{}.safetensors", std::process::id()));
        stats.save(&path).unwrap();
        let back = FeatureStats::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back, stats);
    }

    /// A shard's tag survives a round trip and is read from the header alone; a file without one
    /// (a whole pass, or a file written before shards were recorded: the same bytes) reads as
    /// `None`, and a merge is no single shard.
    #[test]
    fn shard_tags_round_trip_and_merges_clear_them() {
        use crate::stats::shard::Shard;
        let path = std::env::temp_dir().join(format!(
            "dsg-stats-shard-{}.safetensors",
            std::process::id()
        ));
        let mut stats = FeatureStats::new(3, provenance("c"));
        stats.save(&path).unwrap();
        assert_eq!(FeatureStats::read_shard(&path).unwrap(), None);
        let tag = ShardTag {
            shard: Shard { index: 1, count: 4 },
            pass: "abc".into(),
        };
        stats.shard = Some(tag.clone());
        stats.save(&path).unwrap();
        assert_eq!(FeatureStats::read_shard(&path).unwrap(), Some(tag.clone()));
        assert_eq!(FeatureStats::load(&path).unwrap(), stats);
        std::fs::remove_file(&path).unwrap();
        let other = stats.clone();
        stats.merge(&other).unwrap();
        assert_eq!(stats.shard, None);
        std::fs::write(&path, b"short").unwrap();
        let e = FeatureStats::read_shard(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(e.contains("safetensors"), "{e}");
    }

    #[test]
    fn counted_tokens_masks_special_ids() {
        assert_eq!(
            counted_tokens(&[2, 10, 1, 11, 0], &[2, 1, 0]),
            vec![false, true, false, true, false]
        );
    }
}
