//! `dsg fit`, `dsg stats merge`, `dsg inspect`, and loading guardrails for `generate`/`explain`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use dsg::data::Split;
use dsg::generate::GuardedAnswer;
use dsg::guard::stats_files::merge_shards;
use dsg::guard::{
    Evidence, FitObserver, FitOutcome, FitRequest, Gate, Guardrail, GuardrailFile, Intervention,
};
use dsg::model::{HookPoint, LoadedModel};
use dsg::output::Overwrite;
use dsg::sae::labels::{FeatureLabels, CHOICE};
use dsg::stats::shard::ShardSpec;

/// Options of `dsg fit`.
#[derive(Args, Clone)]
pub struct FitArgs {
    /// The SAE: a path (any supported format) or a name, release/id, in the Hugging Face cache.
    #[arg(long, value_parser = crate::sae_path)]
    pub sae: PathBuf,
    /// Hook point, when the SAE file does not name one (e.g. blocks.3.hook_resid_post).
    #[arg(long)]
    pub hook: Option<HookPoint>,
    /// Forget corpus files (text, JSONL/JSON with `text`, or WMDP/MMLU MCQ files).
    #[arg(long, num_args = 1.., required_unless_present = "from_stats")]
    pub forget: Vec<PathBuf>,
    /// Retain corpus files.
    #[arg(long, num_args = 1.., required_unless_present = "from_stats")]
    pub retain: Vec<PathBuf>,
    /// Which questions of MCQ files to use; only `selection` may be fitted on for reported results.
    #[arg(long, default_value = "selection", value_parser = parse_split)]
    pub split: Split,
    /// Number of selected features N.
    #[arg(long, default_value_t = 20)]
    pub n_features: usize,
    /// Importance-ratio percentile p_ratio.
    #[arg(long, default_value_t = 95.0)]
    pub p_ratio: f64,
    /// Drop candidate features that fire on fewer than this fraction of forget tokens (not in the
    /// paper; e.g. 0.01 where near-silent latents would be picked for never firing on retain).
    #[arg(long)]
    pub min_forget_freq: Option<f64>,
    /// Calibration percentile p_dyn.
    #[arg(long, default_value_t = 95.0)]
    pub p_dyn: f64,
    /// Gate: paper, window:W, or cusum:DRIFT (the threshold is calibrated).
    #[arg(long, default_value = "paper", value_parser = parse_gate)]
    pub gate: Gate,
    /// Clamp strength c (features set to −c).
    #[arg(long, default_value_t = 500.0)]
    pub clamp: f64,
    /// At most this many rows per corpus (before --fraction).
    #[arg(long, default_value_t = 1024)]
    pub rows: usize,
    /// Percentage of the rows to use (the reference's dataset_fraction).
    #[arg(long, default_value_t = 100.0)]
    pub fraction: f64,
    /// Tokens per row.
    #[arg(long, default_value_t = 1024)]
    pub ctx: usize,
    /// Seed of document sampling and row shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Process only shard i/n and write its statistics (merge with `dsg stats merge`); `auto`
    /// (or `env`) takes i/n from a Slurm job array (SLURM_ARRAY_TASK_ID, _MIN, _COUNT) or a
    /// Kubernetes Indexed Job (JOB_COMPLETION_INDEX, with --shard-count or DSG_SHARD_COUNT).
    #[arg(long)]
    pub shard: Option<ShardSpec>,
    /// The number of shards, for `--shard auto` under a scheduler that sets none (Kubernetes).
    #[arg(long, requires = "shard")]
    pub shard_count: Option<usize>,
    /// Fit from statistics written earlier under this prefix instead of running the model.
    #[arg(long)]
    pub from_stats: Option<PathBuf>,
    /// Calibrate the gate on the --split questions of these MCQ files as chat-formatted prompts
    /// (§5.1), instead of on the retain rows: benign traffic shaped like the prompts to be gated.
    #[arg(long, num_args = 1..)]
    pub calibrate_mcq: Vec<PathBuf>,
    /// Calibrate the gate (also) on the --split questions' stems of these MCQ files, each alone
    /// as a user's chat message (no options, no subject line): free-form requests.
    #[arg(long, num_args = 1..)]
    pub calibrate_free_form: Vec<PathBuf>,
    /// At most this many calibration prompts of each shape (seeded sample).
    #[arg(long)]
    pub calibrate_limit: Option<usize>,
    /// Which tokens the gate counts: all-tokens (the paper's rule) or user-text (in a chat, what
    /// the user wrote; calibration then counts the same tokens).
    #[arg(long, default_value = "all-tokens", value_parser = parse_evidence)]
    pub evidence: Evidence,
    /// The guardrail file to write; statistics go beside it (`<stem>.forget.stats.safetensors`, …).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
}

impl FitArgs {
    /// The library request these options describe; `--shard auto` is resolved from this
    /// process's environment.
    pub fn request(&self) -> Result<FitRequest> {
        let env = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
        let shard = self
            .shard
            .map(|s| s.resolve(self.shard_count, env))
            .transpose()?;
        Ok(FitRequest {
            sae: self.sae.clone(),
            hook: self.hook,
            forget: self.forget.clone(),
            retain: self.retain.clone(),
            split: self.split,
            n_features: self.n_features,
            p_ratio: self.p_ratio,
            min_forget_freq: self.min_forget_freq,
            p_dyn: self.p_dyn,
            gate: self.gate,
            clamp: self.clamp,
            rows: self.rows,
            fraction: self.fraction,
            ctx: self.ctx,
            seed: self.seed,
            batch: self.batch,
            shard,
            from_stats: self.from_stats.clone(),
            calibrate_mcq: self.calibrate_mcq.clone(),
            calibrate_free_form: self.calibrate_free_form.clone(),
            calibrate_limit: self.calibrate_limit,
            evidence: self.evidence,
            out: self.out.clone(),
            overwrite: overwrite(self.force),
        })
    }
}

/// `--force` as the library's overwrite policy.
pub fn overwrite(force: bool) -> Overwrite {
    if force {
        Overwrite::Force
    } else {
        Overwrite::Refuse
    }
}

/// Parses `selection`, `heldout` or `all`.
pub fn parse_split(s: &str) -> std::result::Result<Split, String> {
    s.parse().map_err(|e: dsg::Error| e.to_string())
}

/// Parses `all-tokens` or `user-text`.
pub fn parse_evidence(s: &str) -> std::result::Result<Evidence, String> {
    match s {
        "all-tokens" => Ok(Evidence::AllTokens),
        "user-text" => Ok(Evidence::UserText),
        _ => Err(format!("{s:?}: expected all-tokens or user-text")),
    }
}

/// Parses `paper`, `window:W` or `cusum:DRIFT` (threshold 0, to be calibrated).
pub fn parse_gate(s: &str) -> std::result::Result<Gate, String> {
    let num = |x: &str| x.parse::<f64>().map_err(|e| format!("{x:?}: {e}"));
    match s.split(':').collect::<Vec<_>>()[..] {
        ["paper"] => Ok(Gate::Paper { tau: 0.0 }),
        ["window", w] => Ok(Gate::Window {
            width: w.parse().map_err(|e| format!("{w:?}: {e}"))?,
            tau: 0.0,
        }),
        ["cusum", d] => Ok(Gate::Cusum {
            drift: num(d)?,
            threshold: 0.0,
        }),
        _ => Err("expected paper, window:W or cusum:DRIFT".into()),
    }
}

/// `dsg stats merge`: adds shard statistics written by `dsg fit --shard` into one set.
pub fn merge_stats(shards: &[PathBuf], out: &Path, force: bool) -> Result<()> {
    let files = merge_shards(shards, out, overwrite(force))?;
    let [f, r, a] = files.paths();
    eprintln!(
        "statistics: {} {} {}",
        f.display(),
        r.display(),
        a.display()
    );
    Ok(())
}

/// Progress bars for `progress(name, done, total)` callbacks: a new bar whenever the name changes.
pub fn progress_bar() -> impl FnMut(&str, usize, usize) {
    let mut current: Option<(String, indicatif::ProgressBar)> = None;
    move |corpus, done, total| {
        if current.as_ref().is_none_or(|(c, _)| c != corpus) {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{msg:>7} {bar:40} {pos}/{len} {elapsed}")
                    .expect("valid template"),
            );
            bar.set_message(corpus.to_string());
            current = Some((corpus.to_string(), bar));
        }
        let (_, bar) = current.as_ref().expect("set above");
        bar.set_position(done as u64);
        if done == total {
            bar.finish();
        }
    }
}

/// Fit progress as bars on stderr, and each finished step as a line.
struct Progress<F>(F);

impl<F: FnMut(&str, usize, usize)> FitObserver for Progress<F> {
    fn progress(&mut self, stage: &str, done: usize, total: usize) {
        (self.0)(stage, done, total)
    }

    fn note(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

/// `dsg fit`: one library call ([`dsg::guard::fit::run`]) with progress bars.
pub fn fit(lm: &LoadedModel, req: &FitRequest) -> Result<FitOutcome> {
    let outcome = dsg::guard::fit::run(lm, req, Some(&mut Progress(progress_bar())))?;
    if let FitOutcome::Shard { shard, .. } = &outcome {
        eprintln!("shard {shard} done; merge with `dsg stats merge`, then fit with --from-stats");
    }
    Ok(outcome)
}

/// `dsg inspect`: a guardrail's identity, features (with their labels, if given), gate and
/// calibration.
pub fn inspect(file: &GuardrailFile, labels: Option<&FeatureLabels>) {
    println!(
        "model      {} (sha256 {})",
        file.model.name, file.model.sha256
    );
    println!(
        "sae        {} (sha256 {}), d_sae {}",
        file.sae.name, file.sae.sha256, file.d_sae
    );
    println!("hook       {}", file.hook_point);
    println!("gate       {:?}", file.gate);
    if let Some(probe) = &file.probe {
        let t = &probe.training;
        println!(
            "probe      {} ({} weights): {} forget vs {} benign prompts, C {}, converged {}, \
             training AUROC {:.4}; the gate pools its per-token logits",
            probe.input,
            probe.weights.len(),
            t.n_pos,
            t.n_neg,
            t.c,
            t.converged,
            t.train_auroc
        );
    }
    println!("clamp      {:?}", file.clamp);
    if let Some(c) = &file.calibration {
        let on = file
            .provenance
            .calibration_corpus
            .as_deref()
            .unwrap_or("the retain rows");
        println!(
            "calibrated P{} over {} rows of {on}; false-positive rate there {:.3}",
            c.percentile, c.n_rows, c.false_positive_rate
        );
        let ps: Vec<String> = c
            .score_percentiles
            .iter()
            .map(|[p, v]| format!("P{p}={v:.4}"))
            .collect();
        println!("calibration scores {}", ps.join(" "));
    }
    let p = &file.provenance;
    println!(
        "forget     {} ({} rows)",
        p.forget_corpus.as_deref().unwrap_or("-"),
        p.forget_rows
    );
    println!(
        "retain     {} ({} rows)",
        p.retain_corpus.as_deref().unwrap_or("-"),
        p.retain_rows
    );
    if let Some(l) = labels {
        println!(
            "labels     {} ({}), {} latents labelled; each is {CHOICE}",
            l.path.display(),
            l.source.as_deref().unwrap_or("no source id"),
            l.labels.len()
        );
    }
    println!(
        "{:>6} {:>12} {:>12} {:>9} {:>9}{}",
        "id",
        "mean forget",
        "mean retain",
        "freq F",
        "freq R",
        if labels.is_some() { "  label" } else { "" }
    );
    for f in &file.features {
        let (mf, ff) = f.forget.map_or((f64::NAN, f64::NAN), |s| (s.mean, s.freq));
        let (mr, fr) = f.retain.map_or((f64::NAN, f64::NAN), |s| (s.mean, s.freq));
        let label = labels
            .and_then(|l| l.get(f.id as usize))
            .map(|l| format!("  {}", l.description))
            .unwrap_or_default();
        println!(
            "{:>6} {mf:>12.5} {mr:>12.5} {ff:>9.4} {fr:>9.4}{label}",
            f.id
        );
    }
}

/// Options naming guardrails to apply.
#[derive(Args, Clone, Default)]
pub struct GuardArgs {
    /// Guardrail files to apply (several may be active at once).
    #[arg(long = "guard")]
    pub guards: Vec<PathBuf>,
    /// The SAE, when not at the path recorded in the guardrail.
    #[arg(long = "guard-sae", value_parser = crate::sae_path)]
    pub sae: Option<PathBuf>,
    /// What every guardrail does when its gate fires, instead of its file's clamp: clamp:C (all
    /// selected features to −C), farrell:C, norm:S (each feature's edit of norm S·‖h‖) or refuse.
    #[arg(long, value_parser = parse_intervention)]
    pub intervention: Option<Intervention>,
}

fn parse_intervention(s: &str) -> std::result::Result<Intervention, String> {
    s.parse().map_err(|e: dsg::Error| e.to_string())
}

/// Loads the guardrails for `lm`, refusing any built for another model or SAE.
pub fn load_guardrails(lm: &LoadedModel, args: &GuardArgs) -> Result<Vec<Guardrail>> {
    args.guards
        .iter()
        .map(|g| {
            let sae = match &args.sae {
                Some(s) => Some(s.clone()),
                None => built_in_sae_for(g)?,
            };
            let guard = Guardrail::load(g, lm, sae.as_deref())
                .with_context(|| format!("loading guardrail {}", g.display()))?;
            match args.intervention {
                Some(i) => Ok(guard.with_intervention(i)?),
                None => Ok(guard),
            }
        })
        .collect()
}

/// The built-in default SAE, when the guardrail at `path` was fitted on it and the SAE path it
/// records does not exist here (a guardrail fitted on another machine, whose cache lies elsewhere);
/// `None` otherwise, so that the recorded path is used and checked.
fn built_in_sae_for(path: &Path) -> Result<Option<PathBuf>> {
    let Ok(file) = GuardrailFile::load(path) else {
        return Ok(None);
    };
    if dsg::guard::load::resolve_sae_path(path, &file).exists()
        || file.sae.sha256 != dsg::assets::default_sae_sha256()
    {
        return Ok(None);
    }
    Ok(Some(dsg::assets::default_sae_dir()?))
}

/// One line per guardrail: its decision on the prompt and after the answer, and its action.
pub fn report_decisions(guards: &[Guardrail], paths: &[PathBuf], answer: &GuardedAnswer) {
    let word = |fired: bool| if fired { "GATED" } else { "pass" };
    for (i, (g, p)) in guards.iter().zip(paths).enumerate() {
        let (prompt, last) = (answer.prompt_decisions[i], answer.final_decisions[i]);
        let action = match (answer.refused_by == Some(i), g.intervention()) {
            (true, _) => "refused".to_string(),
            (false, i) => i.to_string(),
        };
        eprintln!(
            "guard {} ({action}): prompt score {:.4} vs threshold {:.4} → {}; after generation score {:.4} → {}",
            p.display(),
            prompt.score,
            g.file().gate.threshold(),
            word(prompt.fired),
            last.score,
            word(last.fired),
        );
    }
}
