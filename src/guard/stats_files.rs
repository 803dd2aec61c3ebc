//! The statistics a guardrail is fitted from, stored beside it: `<stem>.forget.stats.safetensors`,
//! `<stem>.retain.stats.safetensors` and `<stem>.retain.activity.safetensors` for a guardrail
//! `<stem>.json`. `dsg fit --shard` writes one set per shard, [`merge_shards`] adds them into one,
//! and `dsg fit --from-stats <prefix>` fits from a set without running the model.

use std::path::{Path, PathBuf};

use crate::output::{check_output, Overwrite};
use crate::stats::collect::CorpusStats;
use crate::stats::{FeatureStats, RowActivity};
use crate::{Error, Result};

/// The three statistics files of one guardrail (or shard) path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsFiles {
    /// Forget-corpus feature statistics.
    pub forget: PathBuf,
    /// Retain-corpus feature statistics.
    pub retain: PathBuf,
    /// Retain-corpus token activity (what the gate is calibrated on).
    pub retain_activity: PathBuf,
}

impl StatsFiles {
    /// The files beside `guardrail` (its extension, if any, replaced).
    pub fn beside(guardrail: &Path) -> Self {
        let stem = guardrail.with_extension("");
        let with = |s: &str| PathBuf::from(format!("{}.{s}.safetensors", stem.display()));
        StatsFiles {
            forget: with("forget.stats"),
            retain: with("retain.stats"),
            retain_activity: with("retain.activity"),
        }
    }

    /// The three paths, forget first.
    pub fn paths(&self) -> [&Path; 3] {
        [&self.forget, &self.retain, &self.retain_activity]
    }

    /// Checks that none of the files is one of `inputs` or inside an input folder, and (unless
    /// forced) that none exists yet.
    pub fn check_writable(&self, inputs: &[&Path], overwrite: Overwrite) -> Result<()> {
        self.paths()
            .into_iter()
            .try_for_each(|p| check_output(p, "statistics file beside --out", inputs, overwrite))
    }

    /// Writes the forget and retain statistics (the retain ones with their activity), creating the
    /// folder if needed.
    pub fn save(&self, forget: &CorpusStats, retain: &CorpusStats) -> Result<()> {
        if let Some(dir) = self.forget.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let activity = retain.activity.as_ref().ok_or_else(|| {
            Error::Invalid("retain statistics lack the token activity calibration needs".into())
        })?;
        forget.features.save(&self.forget)?;
        retain.features.save(&self.retain)?;
        activity.save(&self.retain_activity)
    }

    /// Reads the forget and retain statistics; a missing file is named with what writes it.
    pub fn load(&self) -> Result<(CorpusStats, CorpusStats)> {
        for p in self.paths() {
            if !p.is_file() {
                return Err(Error::missing(
                    p,
                    "statistics file (written by `dsg fit --out` or `--shard`, or `dsg stats merge`)",
                ));
            }
        }
        let forget = CorpusStats {
            features: FeatureStats::load(&self.forget)?,
            activity: None,
        };
        let retain = CorpusStats {
            features: FeatureStats::load(&self.retain)?,
            activity: Some(RowActivity::load(&self.retain_activity)?),
        };
        Ok((forget, retain))
    }
}

/// Adds the statistics of `shards` (guardrail or shard paths, as given to `dsg fit --out`) into one
/// set beside `out`. Every output file is checked before anything is read: none may be an input or
/// exist already unless `overwrite` forces it. A shard that does not fit the first (another SAE,
/// hook or width) is named in the error.
pub fn merge_shards(shards: &[PathBuf], out: &Path, overwrite: Overwrite) -> Result<StatsFiles> {
    let (first, rest) = shards
        .split_first()
        .ok_or_else(|| Error::out_of_range("shards", "none", "at least one shard path"))?;
    let target = StatsFiles::beside(out);
    let sets: Vec<StatsFiles> = shards.iter().map(|s| StatsFiles::beside(s)).collect();
    let inputs: Vec<&Path> = sets.iter().flat_map(|s| s.paths()).collect();
    target.check_writable(&inputs, overwrite)?;
    let (mut forget, mut retain) = StatsFiles::beside(first).load()?;
    for s in rest {
        let (f, r) = StatsFiles::beside(s).load()?;
        forget
            .merge(&f)
            .and_then(|()| retain.merge(&r))
            .map_err(|e| {
                Error::Mismatch(format!(
                    "shard {} does not fit shard {}: {e}",
                    s.display(),
                    first.display()
                ))
            })?;
    }
    target.save(&forget, &retain)?;
    Ok(target)
}
