//! [`FitRequest`]: everything `dsg fit` takes, and the checks that reject a bad request before the
//! model runs.

use std::path::{Path, PathBuf};

use super::super::select::check_percentile;
use super::super::stats_files::StatsFiles;
use super::super::{ClampSpec, Evidence, Gate};
use crate::data::Split;
use crate::model::HookPoint;
use crate::output::{check_output, Overwrite};
use crate::stats::shard::Shard;
use crate::{Error, Result};

/// One `dsg fit`: the SAE, the corpora, the selection, gate, clamp and calibration parameters, how
/// rows are built, and where the guardrail goes. Range errors name the `dsg fit` option.
#[derive(Debug, Clone, PartialEq)]
pub struct FitRequest {
    /// The SAE (any supported format).
    pub sae: PathBuf,
    /// Hook point, when the SAE file does not name one.
    pub hook: Option<HookPoint>,
    /// Forget corpus files (text, JSONL/JSON with `text`, or WMDP/MMLU MCQ files).
    pub forget: Vec<PathBuf>,
    /// Retain corpus files.
    pub retain: Vec<PathBuf>,
    /// Which questions of MCQ files to use; only `selection` may be fitted on for reported results.
    pub split: Split,
    /// Number of selected features `N` (≥ 1).
    pub n_features: usize,
    /// Importance-ratio percentile `p_ratio`, in [0, 100].
    pub p_ratio: f64,
    /// Drop candidates firing on fewer than this fraction of forget tokens (dsg's addition, see
    /// [`PercentileRule::min_forget_frequency`](super::super::PercentileRule)), in [0, 1].
    pub min_forget_freq: Option<f64>,
    /// Calibration percentile `p_dyn`, in [0, 100].
    pub p_dyn: f64,
    /// The gate kind and parameters; its threshold is calibrated.
    pub gate: Gate,
    /// Clamp strength `c` > 0: selected features are set to `−c`.
    pub clamp: f64,
    /// At most this many rows per corpus (before `fraction`), ≥ 1.
    pub rows: usize,
    /// Percentage of the rows to use (the reference's `dataset_fraction`), in (0, 100].
    pub fraction: f64,
    /// Tokens per row, ≥ 2 (a BOS and at least one text token).
    pub ctx: usize,
    /// Seed of document sampling, row shuffling and calibration-prompt sampling.
    pub seed: u64,
    /// Rows per forward pass, ≥ 1.
    pub batch: usize,
    /// Process only this shard and write its statistics (no guardrail yet).
    pub shard: Option<Shard>,
    /// Fit from the statistics beside this path instead of running the model.
    pub from_stats: Option<PathBuf>,
    /// Calibrate the gate on the `split` questions of these MCQ files as chat prompts, instead of
    /// on the retain rows.
    pub calibrate_mcq: Vec<PathBuf>,
    /// Calibrate the gate (also) on the `split` questions' stems of these MCQ files, each alone as
    /// a user's chat message (no options, no subject line): free-form requests.
    pub calibrate_free_form: Vec<PathBuf>,
    /// At most this many calibration prompts (seeded sample) of each shape, ≥ 1.
    pub calibrate_limit: Option<usize>,
    /// Which tokens the gate counts; with [`Evidence::UserText`] calibration counts the prompts'
    /// user text only, as the hook will.
    pub evidence: Evidence,
    /// The guardrail file to write; its statistics go beside it ([`StatsFiles::beside`]).
    pub out: PathBuf,
    /// Whether existing output files may be replaced.
    pub overwrite: Overwrite,
}

fn at_least(option: &str, value: usize, min: usize, what: &str) -> Result<()> {
    if value >= min {
        Ok(())
    } else {
        Err(Error::out_of_range(option, value, what))
    }
}

fn existing_file(option: &str, path: &Path) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else if path.is_dir() {
        Err(Error::format(path, option, "a file", "a folder"))
    } else {
        Err(Error::missing(path, format!("{option} file")))
    }
}

impl FitRequest {
    /// The files this request reads (corpora, calibration questions, the SAE, input statistics).
    pub fn inputs(&self) -> Vec<&Path> {
        let mut inputs: Vec<&Path> = self
            .forget
            .iter()
            .chain(&self.retain)
            .chain(&self.calibrate_mcq)
            .chain(&self.calibrate_free_form)
            .map(PathBuf::as_path)
            .collect();
        inputs.push(&self.sae);
        inputs
    }

    /// The statistics this request reads instead of running the model.
    pub fn input_stats(&self) -> Option<StatsFiles> {
        self.from_stats.as_deref().map(StatsFiles::beside)
    }

    /// Checks every option's range and sign, that every input exists (and that `--from-stats`
    /// statistics are not one shard of several), and that no output replaces an input, lies
    /// inside an input folder, or (unless forced) exists; cheap, and run by
    /// [`run`](super::run()) before anything else.
    pub fn validate(&self) -> Result<()> {
        at_least("--n-features", self.n_features, 1, "at least 1 feature")?;
        check_percentile("--p-ratio", self.p_ratio)?;
        if let Some(f) = self.min_forget_freq {
            if !(0.0..=1.0).contains(&f) {
                return Err(Error::out_of_range(
                    "--min-forget-freq",
                    f,
                    "a fraction of forget tokens in [0, 1]",
                ));
            }
        }
        check_percentile("--p-dyn", self.p_dyn)?;
        self.gate.validate()?;
        if !(self.clamp.is_finite() && self.clamp > 0.0) {
            return Err(Error::out_of_range(
                "--clamp",
                self.clamp,
                "a finite strength c > 0 (features are set to −c)",
            ));
        }
        self.clamp_spec().validate()?;
        at_least("--rows", self.rows, 1, "at least 1 row per corpus")?;
        if !(self.fraction > 0.0 && self.fraction <= 100.0) {
            return Err(Error::out_of_range(
                "--fraction",
                self.fraction,
                "a percentage in (0, 100]",
            ));
        }
        at_least(
            "--ctx",
            self.ctx,
            2,
            "at least 2 tokens per row (BOS and text)",
        )?;
        at_least("--batch", self.batch, 1, "at least 1 row per forward pass")?;
        if let Some(k) = self.calibrate_limit {
            at_least("--calibrate-limit", k, 1, "at least 1 prompt")?;
        }
        if !self.sae.exists() {
            return Err(Error::missing(&self.sae, "--sae (an SAE file or folder)"));
        }
        let stats_in = self.input_stats();
        match &stats_in {
            Some(stats) => {
                if self.shard.is_some() {
                    return Err(Error::out_of_range(
                        "--shard",
                        "given with --from-stats",
                        "--shard only when the model runs (not with --from-stats)",
                    ));
                }
                for p in stats.paths() {
                    existing_file("--from-stats statistics", p)?;
                }
                if let Some(tag) = stats.shard_tag()?.filter(|t| t.shard.count > 1) {
                    return Err(Error::out_of_range(
                        "--from-stats",
                        format!("{} (shard {} only)", stats.forget.display(), tag.shard),
                        format!(
                            "the statistics of a whole pass: merge all {} shards with \
                             `dsg stats merge` first",
                            tag.shard.count
                        ),
                    ));
                }
            }
            None => {
                for (option, files) in [("--forget", &self.forget), ("--retain", &self.retain)] {
                    if files.is_empty() {
                        return Err(Error::out_of_range(option, "none", "at least one file"));
                    }
                    files.iter().try_for_each(|f| existing_file(option, f))?;
                }
            }
        }
        for f in &self.calibrate_mcq {
            existing_file("--calibrate-mcq", f)?;
        }
        for f in &self.calibrate_free_form {
            existing_file("--calibrate-free-form", f)?;
        }
        let mut inputs = self.inputs();
        if let Some(stats) = &stats_in {
            inputs.extend(stats.paths());
        }
        if self.shard.is_none() {
            check_output(&self.out, "--out", &inputs, self.overwrite)?;
        }
        if stats_in.is_none() {
            StatsFiles::beside(&self.out).check_writable(&inputs, self.overwrite)?;
        }
        Ok(())
    }

    /// The clamp this request fits: all selected features to `−clamp`.
    pub fn clamp_spec(&self) -> ClampSpec {
        ClampSpec::paper(self.clamp)
    }
}
