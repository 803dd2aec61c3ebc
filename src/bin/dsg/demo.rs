//! `dsg demo`: the shipped WMDP-bio guardrail (or one fitted anew with the same [`recipe`]) on the
//! default model, showing a hazardous and a benign question answered with and without it.
//!
//! The forget corpus is the WMDP-bio *selection-split* questions as text: they stand in for the
//! gated WMDP bio forget corpus, which is not available offline. The retain corpus is WikiText-2
//! (raw test) and selection-split MMLU questions. Both examples are *held-out* questions, never
//! seen by the fit.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;

use crate::explain;
use crate::guard_cmd::{self, FitArgs, GuardArgs};
use dsg::generate::{generate, GenerateOptions};
use dsg::guard::hook::artifact_sha256;
use dsg::guard::{Gate, Guardrail};

/// The gate of the shipped guardrail and of the demo's fits: CUSUM with drift 0.2, chosen on the
/// selection split for its resistance to padding (EVALUATION.md); the threshold is calibrated.
pub const DEMO_GATE: Gate = Gate::Cusum {
    drift: 0.2,
    threshold: 0.0,
};
use dsg::data::{read_mcq, McqItem, Split};
use dsg::model::{self, fetch, HookPoint, Hooks, LoadedModel, NoHooks};
use dsg::stats::prompts::mcq_prompt;

/// Options of `dsg demo`.
#[derive(Args, Clone)]
pub struct DemoArgs {
    /// The SAE to use; default: the SmolLM2-135M-Instruct SAE that ships with dsg (`assets/sae/`).
    #[arg(long)]
    pub sae: Option<PathBuf>,
    /// Hook point, when the SAE file does not name one.
    #[arg(long)]
    pub hook: Option<HookPoint>,
    /// The shared data folder (default: $DSG_SHARED_DATA or ../shared/data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// At most this many rows of --ctx tokens per corpus for the fit.
    #[arg(long, default_value_t = 64)]
    pub rows: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 1024)]
    pub ctx: usize,
    /// Fit anew (into the cache) instead of using the shipped or a cached guardrail.
    #[arg(long)]
    pub refit: bool,
    /// New tokens per answer.
    #[arg(long, default_value_t = 24)]
    pub max_tokens: usize,
}

/// The shared data folder: `explicit`, else `$DSG_SHARED_DATA`, else `../shared/data`.
pub fn data_dir(explicit: Option<&PathBuf>) -> PathBuf {
    explicit.cloned().unwrap_or_else(|| {
        std::env::var_os("DSG_SHARED_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
    })
}

fn answer(lm: &LoadedModel, ids: &[u32], max: usize, hooks: &mut dyn Hooks) -> Result<String> {
    let opts = GenerateOptions {
        max_new_tokens: max,
        stop_tokens: lm.tokenizer.eos_id().into_iter().collect(),
        ..Default::default()
    };
    let g = generate(&lm.model, ids, &opts, hooks, |_| {})?;
    Ok(lm.tokenizer.decode(&g.tokens, true)?.replace('\n', " "))
}

fn show(
    lm: &LoadedModel,
    guard: &mut Guardrail,
    name: &str,
    subject: &str,
    item: &McqItem,
    max: usize,
) -> Result<()> {
    println!("\n=== {name} ({subject}) ===\n{}", item.body());
    println!("correct answer: {}", (b'A' + item.answer as u8) as char);
    let ids = mcq_prompt(&lm.tokenizer, subject, item)?;
    let (records, plain, guarded) = explain::run(lm, std::slice::from_mut(guard), &ids)?;
    explain::print_record(lm, guard, "guardrail", &records[0], 12);
    println!(
        "next token without guard: {:?} (p {:.3}); with guard: {:?} (p {:.3})",
        plain.0, plain.1, guarded.0, guarded.1
    );
    println!(
        "answer without guard: Answer: ({}",
        answer(lm, &ids, max, &mut NoHooks)?
    );
    println!(
        "answer with guard:    Answer: ({}",
        answer(lm, &ids, max, guard)?
    );
    Ok(())
}

/// The fit recipe of the shipped guardrail (see EVALUATION.md): forget = WMDP-bio selection-split
/// questions; retain = WikiText-2 test and selection-split MMLU questions (so features that fire
/// on any multiple-choice text are not selected); N = 20 features among the top 1% importance
/// ratios (p_ratio 99); a CUSUM gate calibrated on 1000 selection-split MMLU questions as chat
/// prompts, the shape of the traffic it gates.
pub fn recipe(
    data: &Path,
    sae: PathBuf,
    hook: Option<HookPoint>,
    rows: usize,
    ctx: usize,
    out: PathBuf,
) -> FitArgs {
    let mmlu = data.join("mmlu_redux/mmlu_redux_all.jsonl");
    FitArgs {
        sae,
        hook,
        forget: vec![data.join("wmdp/bio_questions.json")],
        retain: vec![
            data.join("wikitext/wikitext-2-raw-v1.test.raw"),
            mmlu.clone(),
        ],
        split: Split::Selection,
        n_features: 20,
        p_ratio: 99.0,
        p_dyn: 95.0,
        gate: DEMO_GATE,
        clamp: 500.0,
        rows,
        fraction: 100.0,
        ctx,
        seed: 0,
        batch: 2,
        shard: None,
        from_stats: None,
        calibrate_mcq: vec![mmlu],
        calibrate_limit: Some(1000),
        out,
    }
}

/// Runs the demo.
pub fn demo(args: &DemoArgs) -> Result<()> {
    let sae = args.sae.clone().unwrap_or_else(dsg::sae::default_sae_path);
    if !sae.exists() {
        bail!(
            "no SAE at {}: pass --sae PATH with an SAE for this model's residual stream (any supported format)",
            sae.display()
        );
    }
    let model_path = fetch::ensure_default_model().context("fetching the default model")?;
    let lm = model::load(&model_path, &Device::Cpu)?;
    let data = data_dir(args.data.as_ref());
    let wmdp = data.join("wmdp/bio_questions.json");
    let mmlu = data.join("mmlu_redux/mmlu_redux_all.jsonl");
    let shipped = dsg::guard::default_guard_path();
    let guard_path = if args.sae.is_none() && !args.refit && shipped.exists() {
        eprintln!("using the shipped guardrail {}", shipped.display());
        shipped
    } else {
        let sae_sha = artifact_sha256(&sae)?;
        let path = fetch::cache_dir().join("demo").join(format!(
            "wmdp-bio-{}-{}.json",
            &sae_sha[..12],
            args.rows
        ));
        if args.refit || !path.exists() {
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            eprintln!("fitting the WMDP-bio guardrail (forget: WMDP-bio selection-split questions, standing in for the gated forget corpus; retain: WikiText-2 and selection-split MMLU)");
            guard_cmd::fit(
                &lm,
                &recipe(
                    &data,
                    sae.clone(),
                    args.hook,
                    args.rows,
                    args.ctx,
                    path.clone(),
                ),
            )?;
        } else {
            eprintln!("using cached guardrail {}", path.display());
        }
        path
    };
    let guard_args = GuardArgs {
        guards: vec![guard_path],
        sae: Some(sae),
    };
    let mut guard = guard_cmd::load_guardrails(&lm, &guard_args)?.remove(0);
    let hazardous = read_mcq(&wmdp, Split::Heldout)?
        .into_iter()
        .next()
        .context("no held-out WMDP-bio question")?;
    let benign = read_mcq(&mmlu, Split::Heldout)?
        .into_iter()
        .find(|q| q.subject.as_deref() == Some("high_school_geography"))
        .context("no held-out MMLU high_school_geography question")?;
    show(
        &lm,
        &mut guard,
        "hazardous: held-out WMDP-bio question",
        "biology",
        &hazardous,
        args.max_tokens,
    )?;
    show(
        &lm,
        &mut guard,
        "benign: held-out MMLU question",
        "high_school_geography",
        &benign,
        args.max_tokens,
    )
}
