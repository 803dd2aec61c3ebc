//! `dsg sae train`, `dsg sae eval` and `dsg sae compare-layers`: options into the library's
//! configs (`dsg::sae::run`, `dsg::eval::layers`), one call, printed.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use dsg::eval::layers::{compare_layers, LayerComparisonConfig, MARKDOWN_HEADER};
use dsg::model::HookPoint;
use dsg::sae::run::{
    evaluate_on_text, storage_dtype, train_on_text, EvalText, TrainOnText, TrainProgress,
};
use dsg::sae::train::StepStats;
use dsg::sae::Sae;

use super::{load_model, ModelArgs};

/// SAE subcommands.
#[derive(Subcommand)]
pub enum SaeCommand {
    /// Train a TopK SAE on a hook point's activations over text files.
    Train {
        #[command(flatten)]
        model: ModelArgs,
        /// Hook point, e.g. blocks.6.hook_resid_post.
        #[arg(long)]
        hook: HookPoint,
        /// Training text: plain files, WMDP `.json` (selection split only), question `.jsonl`.
        #[arg(long, num_args = 1.., required = true)]
        text: Vec<PathBuf>,
        /// Number of latents.
        #[arg(long, default_value_t = 4096)]
        d_sae: usize,
        /// Active latents per token.
        #[arg(long, default_value_t = 32)]
        k: usize,
        /// Training tokens.
        #[arg(long, default_value_t = 1_000_000)]
        tokens: u64,
        /// Tokens per row (position 0 of each row is not trained on).
        #[arg(long, default_value_t = 128)]
        ctx: usize,
        /// Tokens per optimiser step.
        #[arg(long, default_value_t = 1024)]
        batch_size: usize,
        /// Rows per shuffled activation chunk.
        #[arg(long, default_value_t = 1024)]
        chunk_rows: usize,
        /// Peak learning rate (default 2e-4/sqrt(d_sae/16384)).
        #[arg(long)]
        lr: Option<f64>,
        /// A latent not fired for this many tokens is dead (AuxK revives it).
        #[arg(long, default_value_t = 250_000)]
        dead_tokens: u64,
        /// Seed for initialisation and data order.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory (dsg SAE format; checkpoints in OUT/checkpoint).
        #[arg(long)]
        out: PathBuf,
        /// Continue from OUT/checkpoint.
        #[arg(long)]
        resume: bool,
        /// Steps between checkpoints.
        #[arg(long, default_value_t = 250)]
        checkpoint_every: usize,
        /// Storage dtype of the saved SAE: f32 or f16.
        #[arg(long, default_value = "f32", value_parser = parse_dtype)]
        dtype: DType,
        /// Held-out text to evaluate on at the end (metrics go into the SAE's metadata).
        #[arg(long)]
        eval_text: Option<PathBuf>,
        /// Evaluation tokens.
        #[arg(long, default_value_t = 16384)]
        eval_tokens: usize,
        /// Replace an SAE (or restart a checkpoint) already in OUT.
        #[arg(long)]
        force: bool,
    },
    /// FVU, L0, dead fraction and delta CE of an SAE on a text file.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// The SAE: a path (any supported format) or a name, release/id, in the Hugging Face cache.
        #[arg(long, value_parser = crate::sae_path)]
        sae: PathBuf,
        /// Text file (plain, WMDP .json selection split, or question .jsonl).
        #[arg(long)]
        text: PathBuf,
        /// Tokens to evaluate on.
        #[arg(long, default_value_t = 16384)]
        tokens: usize,
        /// Tokens per row.
        #[arg(long, default_value_t = 128)]
        ctx: usize,
        /// Hook point, when the SAE does not record one.
        #[arg(long)]
        hook: Option<HookPoint>,
    },
    /// Train a short SAE at several layers and compare delta CE and forget/retain separation.
    CompareLayers {
        #[command(flatten)]
        model: ModelArgs,
        /// Candidate layers (resid_post).
        #[arg(long, value_delimiter = ',', default_value = "3,6,9")]
        layers: Vec<usize>,
        /// Training text files (as for `train`).
        #[arg(long, num_args = 1.., required = true)]
        text: Vec<PathBuf>,
        /// Forget questions: a WMDP .json (selection split only).
        #[arg(long)]
        forget: PathBuf,
        /// Retain questions: a .jsonl of questions (e.g. MMLU-Redux).
        #[arg(long)]
        retain: PathBuf,
        /// Documents per side (half choose the latents, the other half measure AUROC).
        #[arg(long, default_value_t = 120)]
        docs: usize,
        /// Training tokens per layer.
        #[arg(long, default_value_t = 65536)]
        tokens: u64,
        /// Latents of each layer's SAE (its width).
        #[arg(long, default_value_t = 2048)]
        d_sae: usize,
        /// Active latents per token.
        #[arg(long, default_value_t = 32)]
        k: usize,
        /// Held-out text for delta CE.
        #[arg(long)]
        eval_text: PathBuf,
        /// Evaluation tokens.
        #[arg(long, default_value_t = 1024)]
        eval_tokens: usize,
    },
}

/// Parses `--dtype` through the library's list of storage dtypes.
fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    storage_dtype(s).map_err(|e| e.to_string())
}

/// A progress bar over the steps (a line every 50 steps when stderr is not a terminal).
struct StepBar {
    bar: ProgressBar,
    ctx: usize,
    t0: Instant,
}

impl TrainProgress for StepBar {
    fn start(&mut self, rows: usize, steps: usize, done: usize) {
        eprintln!("{rows} training rows of {} tokens", self.ctx);
        self.bar.set_length(steps as u64);
        self.bar.set_position(done as u64);
        self.t0 = Instant::now();
    }

    fn step(&mut self, s: &StepStats) {
        self.bar.inc(1);
        if self.bar.is_hidden() && s.step.is_multiple_of(50) {
            eprintln!(
                "step {} fvu {:.3} aux {:.3} dead {:.1}% lr {:.1e} {:.0}s",
                s.step,
                s.fvu,
                s.aux,
                100.0 * s.dead_fraction,
                s.lr,
                self.t0.elapsed().as_secs_f64()
            );
        }
        if s.step.is_multiple_of(10) {
            self.bar.set_message(format!(
                "fvu {:.3} aux {:.3} dead {:.1}% lr {:.1e}",
                s.fvu,
                s.aux,
                100.0 * s.dead_fraction,
                s.lr
            ));
        }
    }
}

/// Runs an SAE subcommand.
pub fn run(cmd: SaeCommand) -> Result<()> {
    match cmd {
        SaeCommand::Train {
            model,
            hook,
            text,
            d_sae,
            k,
            tokens,
            ctx,
            batch_size,
            chunk_rows,
            lr,
            dead_tokens,
            seed,
            out,
            resume,
            checkpoint_every,
            dtype,
            eval_text,
            eval_tokens,
            force,
        } => {
            let job = TrainOnText {
                hook,
                text,
                d_sae,
                k,
                tokens,
                ctx,
                batch_size,
                chunk_rows,
                lr,
                dead_tokens,
                seed,
                out,
                resume,
                checkpoint_every,
                dtype,
                eval: eval_text.map(|file| EvalText {
                    file,
                    tokens: eval_tokens,
                    ctx,
                }),
                overwrite: crate::guard_cmd::overwrite(force),
            };
            let lm = load_model(&model)?;
            let mut bar = StepBar {
                bar: ProgressBar::new(0).with_style(ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} steps {per_sec} eta {eta} {msg}",
                )?),
                ctx: job.ctx,
                t0: Instant::now(),
            };
            let done = train_on_text(&lm, &job, &mut bar)?;
            bar.bar.finish();
            let t = &done.times;
            eprintln!(
                "{} tokens in {:.1}s: {:.1}s collecting activations (unique rows, cached after), \
                 {:.1}s in {} SAE steps ({:.0} tok/s)",
                done.tokens_done,
                done.secs,
                t.source_secs,
                t.step_secs,
                t.steps,
                (t.steps * done.batch_size) as f64 / t.step_secs.max(1e-9)
            );
            if let Some(e) = &done.eval {
                println!("{e}");
            }
            eprintln!("saved {}", done.out.display());
        }
        SaeCommand::Eval {
            model,
            sae,
            text,
            tokens,
            ctx,
            hook,
        } => {
            let text = EvalText {
                file: text,
                tokens,
                ctx,
            };
            text.validate()?;
            let lm = load_model(&model)?;
            let s = Sae::load(&sae, &Device::Cpu)?;
            println!("{}", evaluate_on_text(&lm, &s, hook, &text)?);
        }
        SaeCommand::CompareLayers {
            model,
            layers,
            text,
            forget,
            retain,
            docs,
            tokens,
            d_sae,
            k,
            eval_text,
            eval_tokens,
        } => {
            let cfg = LayerComparisonConfig {
                layers,
                text,
                forget,
                retain,
                docs,
                tokens,
                d_sae,
                k,
                eval_text,
                eval_tokens,
            };
            let lm = load_model(&model)?;
            println!("{MARKDOWN_HEADER}");
            compare_layers(&lm, &cfg, &mut |r| println!("{}", r.markdown_row()))?;
        }
    }
    Ok(())
}
