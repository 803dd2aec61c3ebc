//! `dsg fit`, `dsg stats merge`, `dsg inspect`, and loading guardrails for `generate`/`explain`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;

use dsg::data::rows::DEFAULT_MAX_DOCS;
use dsg::data::{build_rows, equalize, read_documents, read_mcq, RowOptions, Split, SplitMix64};
use dsg::guard::file::ArtifactIdentity;
use dsg::guard::fit::{collect_pair, fit_from_stats, PromptCalibration};
use dsg::guard::hook::artifact_sha256;
use dsg::guard::{ClampSpec, FitConfig, Gate, Guardrail, GuardrailFile, PercentileRule};
use dsg::model::{HookPoint, LoadedModel};
use dsg::sae::Sae;
use dsg::stats::collect::{prompt_activity, CorpusStats, Shard};
use dsg::stats::prompts::mcq_prompts;
use dsg::stats::{FeatureStats, RowActivity};

/// Options of `dsg fit`.
#[derive(Args, Clone)]
pub struct FitArgs {
    /// The SAE (any supported format).
    #[arg(long)]
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
    /// Process only shard i/n and write its statistics (merge with `dsg stats merge`).
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Fit from statistics written earlier under this prefix instead of running the model.
    #[arg(long)]
    pub from_stats: Option<PathBuf>,
    /// Calibrate the gate on the --split questions of these MCQ files as chat-formatted prompts
    /// (§5.1), instead of on the retain rows: benign traffic shaped like the prompts to be gated.
    #[arg(long, num_args = 1..)]
    pub calibrate_mcq: Vec<PathBuf>,
    /// At most this many calibration prompts (seeded sample).
    #[arg(long)]
    pub calibrate_limit: Option<usize>,
    /// The guardrail file to write; statistics go beside it (`<stem>.forget.stats.safetensors`, …).
    #[arg(long)]
    pub out: PathBuf,
}

/// Parses `selection`, `heldout` or `all`.
pub fn parse_split(s: &str) -> std::result::Result<Split, String> {
    match s {
        "selection" => Ok(Split::Selection),
        "heldout" => Ok(Split::Heldout),
        "all" => Ok(Split::All),
        _ => Err("expected selection, heldout or all".into()),
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

/// The statistics files beside a guardrail path: forget stats, retain stats, retain activity.
fn stats_paths(out: &Path) -> [PathBuf; 3] {
    let stem = out.with_extension("");
    let with = |s: &str| PathBuf::from(format!("{}.{s}.safetensors", stem.display()));
    [
        with("forget.stats"),
        with("retain.stats"),
        with("retain.activity"),
    ]
}

fn save_stats(out: &Path, forget: &CorpusStats, retain: &CorpusStats) -> Result<()> {
    let [f, r, a] = stats_paths(out);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    forget.features.save(&f)?;
    retain.features.save(&r)?;
    retain
        .activity
        .as_ref()
        .context("retain statistics lack activity")?
        .save(&a)?;
    eprintln!(
        "statistics: {} {} {}",
        f.display(),
        r.display(),
        a.display()
    );
    Ok(())
}

fn load_stats(prefix: &Path) -> Result<(CorpusStats, CorpusStats)> {
    let [f, r, a] = stats_paths(prefix);
    let forget = CorpusStats {
        features: FeatureStats::load(&f)?,
        activity: None,
    };
    let retain = CorpusStats {
        features: FeatureStats::load(&r)?,
        activity: Some(RowActivity::load(&a)?),
    };
    Ok((forget, retain))
}

/// `dsg stats merge`: adds shard statistics written by `dsg fit --shard` into one set.
pub fn merge_stats(shards: &[PathBuf], out: &Path) -> Result<()> {
    let (first, rest) = shards.split_first().context("no shards given")?;
    let (mut forget, mut retain) = load_stats(first)?;
    for s in rest {
        let (f, r) = load_stats(s).with_context(|| format!("loading shard {}", s.display()))?;
        forget.merge(&f)?;
        retain.merge(&r)?;
    }
    save_stats(out, &forget, &retain)
}

/// The SAE with its hook point settled (`--hook` or the file's).
pub fn load_sae(path: &Path, hook: Option<HookPoint>) -> Result<Sae> {
    let sae =
        Sae::load(path, &Device::Cpu).with_context(|| format!("loading SAE {}", path.display()))?;
    Ok(match (hook, sae.hook()) {
        (Some(h), _) => sae.with_hook(h),
        (None, Some(_)) => sae,
        (None, None) => bail!(
            "{}: the SAE names no hook point; pass --hook",
            path.display()
        ),
    })
}

fn identity(path: &Path) -> Result<ArtifactIdentity> {
    Ok(ArtifactIdentity {
        name: path.display().to_string(),
        sha256: artifact_sha256(path)?,
    })
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

fn describe(files: &[PathBuf], split: Split) -> String {
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    format!("{} (MCQ split: {split:?})", names.join(", "))
}

/// Token rows of the forget and retain corpora, equalised (§1.2).
pub fn corpus_rows(lm: &LoadedModel, args: &FitArgs) -> Result<[Vec<Vec<u32>>; 2]> {
    let docs = |files: &[PathBuf]| -> Result<Vec<String>> {
        let mut all = Vec::new();
        for f in files {
            all.extend(read_documents(f, args.split)?);
        }
        Ok(all)
    };
    let opts = |max_docs| RowOptions {
        ctx: args.ctx,
        seed: args.seed,
        max_docs,
    };
    let mut forget = build_rows(
        &lm.tokenizer,
        &docs(&args.forget)?,
        &opts(Some(DEFAULT_MAX_DOCS)),
    )?;
    let mut retain = build_rows(&lm.tokenizer, &docs(&args.retain)?, &opts(None))?;
    let n = equalize(&mut forget, &mut retain, args.rows, args.fraction)?;
    eprintln!("{n} rows of {} tokens per corpus", args.ctx);
    Ok([forget, retain])
}

/// The chat-formatted MCQ prompts of `--calibrate-mcq` (each question under its own subject, or
/// "general knowledge"), sampled down to `--calibrate-limit`.
fn calibration_prompts(lm: &LoadedModel, args: &FitArgs) -> Result<Vec<Vec<u32>>> {
    let mut items = Vec::new();
    for f in &args.calibrate_mcq {
        items.extend(read_mcq(f, args.split)?);
    }
    if let Some(k) = args.calibrate_limit {
        SplitMix64::new(args.seed).sample(&mut items, k);
    }
    if items.is_empty() {
        bail!("no calibration questions in the --split of the --calibrate-mcq files");
    }
    Ok(mcq_prompts(&lm.tokenizer, &items, None)?)
}

/// `dsg fit`: statistics, selection, calibration; writes the guardrail and its statistics. With
/// `--shard` only the shard's statistics are written, and there is no guardrail yet.
pub fn fit(lm: &LoadedModel, args: &FitArgs) -> Result<Option<GuardrailFile>> {
    let sae = load_sae(&args.sae, args.hook)?;
    let hook = sae.hook().expect("load_sae settles the hook");
    let mut model = identity(&lm.path)?;
    // The digest identifies the model; its folder is this machine's business, not the file's.
    if let Some(name) = lm.path.file_name() {
        model.name = name.to_string_lossy().into_owned();
    }
    let mut config = FitConfig::paper(model, identity(&args.sae)?, hook);
    config.rule = dsg::guard::SelectionRule::Percentile(PercentileRule::official(args.p_ratio));
    config.n_features = args.n_features;
    config.p_dyn = args.p_dyn;
    config.gate = args.gate;
    config.clamp = ClampSpec::paper(args.clamp);
    config.batch_size = args.batch;
    let tok = &lm.tokenizer;
    config.special_ids = [tok.bos_id(), tok.eos_id(), tok.pad_id()]
        .into_iter()
        .flatten()
        .collect();
    config.starts_with_bos = tok.bos_id().is_some();
    config.corpora = (
        describe(&args.forget, args.split),
        describe(&args.retain, args.split),
    );
    config.seed = args.seed;
    config.data_fraction = args.fraction;
    let (forget, retain) = match &args.from_stats {
        Some(prefix) => {
            let stats = load_stats(prefix)?;
            config.corpora = (
                stats.0.features.provenance.corpus.clone(),
                stats.1.features.provenance.corpus.clone(),
            );
            stats
        }
        None => {
            let [f_rows, r_rows] = corpus_rows(lm, args)?;
            let shard = args.shard.unwrap_or(Shard::ALL);
            let stats = collect_pair(
                &lm.model,
                &sae,
                &f_rows,
                &r_rows,
                &config,
                shard,
                &mut progress_bar(),
            )?;
            save_stats(&args.out, &stats.0, &stats.1)?;
            if args.shard.is_some() {
                eprintln!(
                    "shard {shard} done; merge with `dsg stats merge`, then fit with --from-stats"
                );
                return Ok(None);
            }
            stats
        }
    };
    let file = if args.calibrate_mcq.is_empty() {
        fit_from_stats(&forget, &retain, &config, None)?
    } else {
        let prompts = calibration_prompts(lm, args)?;
        eprintln!("calibrating on {} prompts", prompts.len());
        let mut activity = |ids: &[u32]| {
            let set: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
            let mut bar = progress_bar();
            let mut per_set =
                prompt_activity(&lm.model, &sae, hook, &[set], &prompts, 8, &mut |d, t| {
                    bar("prompts", d, t)
                })?;
            Ok(per_set.remove(0))
        };
        let calibration = PromptCalibration {
            name: format!(
                "{} as chat MCQ prompts ({} prompts)",
                describe(&args.calibrate_mcq, args.split),
                prompts.len()
            ),
            activity: &mut activity,
        };
        fit_from_stats(&forget, &retain, &config, Some(calibration))?
    };
    file.save(&args.out)?;
    eprintln!("guardrail: {}", args.out.display());
    Ok(Some(file))
}

/// `dsg inspect`: a guardrail's identity, features, gate and calibration.
pub fn inspect(file: &GuardrailFile) {
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
    println!(
        "{:>6} {:>12} {:>12} {:>9} {:>9}",
        "id", "mean forget", "mean retain", "freq F", "freq R"
    );
    for f in &file.features {
        let (mf, ff) = f.forget.map_or((f64::NAN, f64::NAN), |s| (s.mean, s.freq));
        let (mr, fr) = f.retain.map_or((f64::NAN, f64::NAN), |s| (s.mean, s.freq));
        println!("{:>6} {mf:>12.5} {mr:>12.5} {ff:>9.4} {fr:>9.4}", f.id);
    }
}

/// Options naming guardrails to apply.
#[derive(Args, Clone, Default)]
pub struct GuardArgs {
    /// Guardrail files to apply (several may be active at once).
    #[arg(long = "guard")]
    pub guards: Vec<PathBuf>,
    /// The SAE, when not at the path recorded in the guardrail.
    #[arg(long = "guard-sae")]
    pub sae: Option<PathBuf>,
}

/// Loads the guardrails for `lm`, refusing any built for another model or SAE.
pub fn load_guardrails(lm: &LoadedModel, args: &GuardArgs) -> Result<Vec<Guardrail>> {
    if args.guards.is_empty() {
        return Ok(Vec::new());
    }
    let model_sha = artifact_sha256(&lm.path)?;
    args.guards
        .iter()
        .map(|g| {
            let file = GuardrailFile::load(g)?;
            let sae_path = args
                .sae
                .clone()
                .unwrap_or_else(|| PathBuf::from(&file.sae.name));
            let sae = load_sae(&sae_path, Some(file.hook_point))?;
            let sae_sha = artifact_sha256(&sae_path)?;
            Guardrail::new(file, &sae, &model_sha, &sae_sha, lm.model.config().d_model)
                .with_context(|| format!("applying guardrail {}", g.display()))
        })
        .collect()
}

/// One line per guardrail: its final decision on the (single-row) sequence.
pub fn report_decisions(guards: &[Guardrail], paths: &[PathBuf]) {
    for (g, p) in guards.iter().zip(paths) {
        if let Some(first) = g.records().first() {
            let prompt = &first.rows[0].decision;
            let last = g.decisions()[0];
            eprintln!(
                "guard {}: prompt score {:.4} vs threshold {:.4} → {}; after generation score {:.4} → {}",
                p.display(),
                prompt.score,
                g.file().gate.threshold(),
                if prompt.fired { "GATED" } else { "pass" },
                last.score,
                if last.fired { "GATED" } else { "pass" },
            );
        }
    }
}
