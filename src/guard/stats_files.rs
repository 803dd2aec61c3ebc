//! The statistics a guardrail is fitted from, stored beside it: `<stem>.forget.stats.safetensors`,
//! `<stem>.retain.stats.safetensors` and `<stem>.retain.activity.safetensors` for a guardrail
//! `<stem>.json`. `dsg fit --shard` writes one set per shard, [`merge_shards`] adds them into one,
//! and `dsg fit --from-stats <prefix>` fits from a set without running the model.
//!
//! A shard's feature statistics record which shard of which pass they are
//! ([`crate::stats::shard::ShardTag`]); [`merge_shards`] reads those tags from the files' headers
//! and refuses an incomplete, repeated, inconsistent or mixed set before it reads any numbers.

use std::path::{Path, PathBuf};

use crate::output::{check_output, Overwrite};
use crate::stats::collect::CorpusStats;
use crate::stats::shard::{check_shard_set, ShardTag};
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

    /// Checks that all three files exist; a missing one is named with what writes it.
    fn check_present(&self) -> Result<()> {
        for p in self.paths() {
            if !p.is_file() {
                return Err(Error::missing(
                    p,
                    "statistics file (written by `dsg fit --out` or `--shard`, or `dsg stats merge`)",
                ));
            }
        }
        Ok(())
    }

    /// Which shard of which pass these statistics are (`None`: not a shard), from the forget and
    /// retain files' headers alone; the two must agree.
    pub fn shard_tag(&self) -> Result<Option<ShardTag>> {
        self.check_present()?;
        let forget = FeatureStats::read_shard(&self.forget)?;
        let retain = FeatureStats::read_shard(&self.retain)?;
        if forget != retain {
            let show = |t: &Option<ShardTag>| {
                t.as_ref().map_or("no shard".to_string(), |t| {
                    let pass: String = t.pass.chars().take(12).collect();
                    format!("shard {} of pass {pass}", t.shard)
                })
            };
            return Err(Error::Mismatch(format!(
                "{} records {} but {} records {}: they are not the statistics of one \
                 `dsg fit --shard` run",
                self.forget.display(),
                show(&forget),
                self.retain.display(),
                show(&retain),
            )));
        }
        Ok(forget)
    }

    /// Reads the forget and retain statistics; a missing file is named with what writes it.
    pub fn load(&self) -> Result<(CorpusStats, CorpusStats)> {
        self.check_present()?;
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
/// set beside `out`. Before any statistics are read, every output file is checked (none may be an
/// input or exist already unless `overwrite` forces it) and so is the set, from the files' headers
/// ([`check_shard_set`]): every shard `0..n` of one `dsg fit --shard` pass exactly once, or only
/// statistics that are no shard (whole passes, merges, older files), each once. Shards are added in
/// index order whatever the order given. A shard that does not fit the first (another SAE, hook or
/// width) is named in the error.
pub fn merge_shards(shards: &[PathBuf], out: &Path, overwrite: Overwrite) -> Result<StatsFiles> {
    if shards.is_empty() {
        return Err(Error::out_of_range(
            "shards",
            "none",
            "at least one shard path",
        ));
    }
    let target = StatsFiles::beside(out);
    let sets: Vec<StatsFiles> = shards.iter().map(|s| StatsFiles::beside(s)).collect();
    let inputs: Vec<&Path> = sets.iter().flat_map(|s| s.paths()).collect();
    target.check_writable(&inputs, overwrite)?;
    let mut tagged = shards
        .iter()
        .zip(&sets)
        .map(|(s, files)| Ok((s.clone(), files.shard_tag()?)))
        .collect::<Result<Vec<_>>>()?;
    check_shard_set(&tagged)?;
    tagged.sort_by_key(|(_, tag)| tag.as_ref().map(|t| t.shard.index));
    let (first, rest) = tagged.split_first().expect("checked non-empty above");
    let first = &first.0;
    let (mut forget, mut retain) = StatsFiles::beside(first).load()?;
    for (s, _) in rest {
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
    // The sum is a whole pass (a set of one shard, too), not a shard to merge again.
    forget.features.shard = None;
    retain.features.shard = None;
    target.save(&forget, &retain)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HookPoint;
    use crate::stats::shard::Shard;
    use crate::stats::StatsProvenance;

    /// A fresh folder for one test's files.
    fn folder(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("dsg-stats-files-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes a shard's three files beside `dir/name.json` (one row per corpus, with `value` as
    /// every feature's activation), tagged with `tag`; returns the prefix.
    fn shard(dir: &Path, name: &str, tag: Option<(usize, usize, &str)>, value: f32) -> PathBuf {
        let provenance = |corpus: &str| StatsProvenance {
            corpus: corpus.into(),
            hook_point: HookPoint::resid_post(0),
            sae_id: "sae".into(),
        };
        let tag = tag.map(|(index, count, pass)| ShardTag {
            shard: Shard { index, count },
            pass: pass.into(),
        });
        let stats = |corpus: &str, activity: bool| {
            let mut features = FeatureStats::new(2, provenance(corpus));
            features.add_row(&[value, 0.0], &[true]).unwrap();
            features.shard = tag.clone();
            let activity = activity.then(|| {
                let mut a = RowActivity::new(2, None).unwrap();
                a.push_row(&[value, 0.0], false).unwrap();
                a
            });
            CorpusStats { features, activity }
        };
        let prefix = dir.join(format!("{name}.json"));
        StatsFiles::beside(&prefix)
            .save(&stats("f", false), &stats("r", true))
            .unwrap();
        prefix
    }

    /// `merge_shards` into `dir/merged.json`, which must fail without writing anything.
    fn refused(dir: &Path, shards: &[PathBuf]) -> String {
        let out = dir.join("merged.json");
        let e = merge_shards(shards, &out, Overwrite::Refuse)
            .expect_err("the merge should be refused")
            .to_string();
        for p in StatsFiles::beside(&out).paths() {
            assert!(!p.exists(), "{} was written: {e}", p.display());
        }
        e
    }

    #[test]
    fn a_whole_set_merges_in_index_order_into_an_untagged_pass() {
        let dir = folder("whole");
        let s1 = shard(&dir, "s1", Some((1, 2, "p")), 0.0);
        let s0 = shard(&dir, "s0", Some((0, 2, "p")), 1.0);
        let out = dir.join("merged.json");
        let files = merge_shards(&[s1, s0], &out, Overwrite::Refuse).unwrap();
        assert_eq!(files.shard_tag().unwrap(), None);
        let (forget, retain) = files.load().unwrap();
        assert_eq!(forget.features.n_rows(), 2);
        assert_eq!(forget.features.mean(), vec![0.5, 0.0]);
        let activity = retain.activity.unwrap();
        assert_eq!(activity.n_rows(), 2);
        // Shard 0's row first, although shard 1 was named first.
        assert_eq!(
            activity.activity(&[0]).unwrap(),
            vec![vec![true], vec![false]]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_shard_is_refused_before_any_work() {
        let dir = folder("missing");
        let shards: Vec<PathBuf> = [0, 2]
            .iter()
            .map(|&i| shard(&dir, &format!("s{i}"), Some((i, 3, "p")), 1.0))
            .collect();
        let e = refused(&dir, &shards);
        assert!(e.contains("shard 1/3 is missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_duplicated_shard_is_refused_naming_both_files() {
        let dir = folder("duplicate");
        let a = shard(&dir, "a0", Some((0, 2, "p")), 1.0);
        let b = shard(&dir, "b0", Some((0, 2, "p")), 1.0);
        let c = shard(&dir, "c1", Some((1, 2, "p")), 1.0);
        let e = refused(&dir, &[a.clone(), b, c.clone()]);
        assert!(
            e.contains("shard 0/2 is given twice")
                && e.contains("a0.json")
                && e.contains("b0.json"),
            "{e}"
        );
        let e = refused(&dir, &[a.clone(), c, a]);
        assert!(e.contains("a0.json is given twice"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shards_with_inconsistent_counts_are_refused() {
        let dir = folder("counts");
        let a = shard(&dir, "a", Some((0, 2, "p")), 1.0);
        let b = shard(&dir, "b", Some((1, 3, "p")), 1.0);
        let e = refused(&dir, &[a, b]);
        assert!(e.contains("a.json is shard 0/2 but"), "{e}");
        assert!(e.contains("b.json is shard 1/3"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shards_of_different_fits_are_refused() {
        let dir = folder("passes");
        let a = shard(&dir, "fit1-0", Some((0, 2, "one")), 1.0);
        let b = shard(&dir, "fit2-1", Some((1, 2, "two")), 1.0);
        let e = refused(&dir, &[a, b]);
        assert!(
            e.contains("fit1-0.json and")
                && e.contains("fit2-1.json are shards of different passes"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_shard_mixed_with_an_older_file_is_refused_and_older_files_still_merge() {
        let dir = folder("older");
        let tagged = shard(&dir, "s0", Some((0, 1, "p")), 1.0);
        let old1 = shard(&dir, "old1", None, 1.0);
        let old2 = shard(&dir, "old2", None, 3.0);
        let e = refused(&dir, &[tagged, old1.clone()]);
        assert!(e.contains("old1.json records no shard"), "{e}");
        let files = merge_shards(&[old1, old2], &dir.join("m.json"), Overwrite::Refuse).unwrap();
        assert_eq!(files.load().unwrap().0.features.mean(), vec![2.0, 0.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn forget_and_retain_files_of_different_shards_are_refused() {
        let dir = folder("halves");
        let a = shard(&dir, "a", Some((0, 2, "p")), 1.0);
        let b = shard(&dir, "b", Some((1, 2, "p")), 1.0);
        let (fa, fb) = (StatsFiles::beside(&a), StatsFiles::beside(&b));
        std::fs::copy(&fb.retain, &fa.retain).unwrap();
        let e = refused(&dir, &[a, b]);
        assert!(
            e.contains("a.forget.stats.safetensors records shard 0/2")
                && e.contains("a.retain.stats.safetensors records shard 1/2"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
