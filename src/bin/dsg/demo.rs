//! `dsg demo`: the shipped WMDP-bio guardrail (or one fitted anew with the same recipe,
//! [`dsg::guard::recipe::wmdp_bio`]) on the default model, showing a hazardous and a benign
//! held-out question ([`dsg::guard::recipe::demo_questions`]) answered with and without it.
//!
//! The guardrail and its SAE are built into dsg ([`dsg::assets`]), so the demo runs from any
//! directory; the questions come from the shared data when it is there, else from built-in copies.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;

use crate::explain;
use crate::guard_cmd;
use dsg::data::McqItem;
use dsg::generate::{generate, GenerateOptions};
use dsg::guard::hook::artifact_sha256;
use dsg::guard::recipe::{demo_questions, wmdp_bio};
use dsg::guard::Guardrail;
use dsg::model::{self, fetch, HookPoint, Hooks, LoadedModel, NoHooks};
use dsg::output::Overwrite;
use dsg::stats::prompts::mcq_prompt;

/// Options of `dsg demo`.
#[derive(Args, Clone)]
pub struct DemoArgs {
    /// The SAE to use; default: the SmolLM2-135M-Instruct SAE built into dsg (`assets/sae/`).
    #[arg(long, value_parser = crate::sae_path)]
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

/// Runs the demo.
pub fn demo(args: &DemoArgs) -> Result<()> {
    let model_path = fetch::ensure_default_model().context("fetching the default model")?;
    let lm = model::load(&model_path, &Device::Cpu)?;
    // A missing data folder is an error only for a refit; the questions have built-in copies.
    let data = dsg::runtime::shared_data_dir(args.data.as_deref());
    let (guard_path, sae) = if args.sae.is_none() && !args.refit {
        let shipped = dsg::assets::default_guard_file()?;
        eprintln!("using the shipped guardrail {}", shipped.display());
        (shipped, None)
    } else {
        let sae = match &args.sae {
            Some(p) if !p.exists() => bail!(
                "no SAE at {}: pass --sae PATH with an SAE for this model's residual stream (any supported format)",
                p.display()
            ),
            Some(p) => p.clone(),
            None => dsg::assets::default_sae_dir()?,
        };
        let sae_sha = artifact_sha256(&sae)?;
        let path = fetch::cache_dir().join("demo").join(format!(
            "wmdp-bio-{}-{}.json",
            &sae_sha[..12],
            args.rows
        ));
        if args.refit || !path.exists() {
            eprintln!("fitting the WMDP-bio guardrail (forget: WMDP-bio selection-split questions, standing in for the gated forget corpus; retain: WikiText-2 and selection-split MMLU)");
            let data = data.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut request = wmdp_bio(data, sae.clone(), path.clone());
            request.hook = args.hook;
            request.rows = args.rows;
            request.ctx = args.ctx;
            request.overwrite = Overwrite::Force;
            guard_cmd::fit(&lm, &request)?;
        } else {
            eprintln!("using cached guardrail {}", path.display());
        }
        (path, Some(sae))
    };
    let mut guard = Guardrail::load(&guard_path, &lm, sae.as_deref())
        .with_context(|| format!("loading guardrail {}", guard_path.display()))?;
    let data = data.unwrap_or_default();
    for q in demo_questions(&data)? {
        show(
            &lm,
            &mut guard,
            q.label,
            q.subject,
            &q.item,
            args.max_tokens,
        )?;
    }
    Ok(())
}
