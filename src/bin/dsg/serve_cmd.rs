//! `dsg serve`: the guarded model behind an OpenAI-compatible HTTP API (see `dsg::serve`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use dsg::guard::Guardrail;
use dsg::serve::{parse_guard_arg, ApiKeys, EngineOptions, GuardSpec, ServeOptions, Server};

use crate::ModelArgs;

/// Options of `dsg serve`.
#[derive(Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A guardrail to serve: NAME=PATH or PATH (named by its file stem); NAME! marks it mandatory
    /// (requests cannot leave it out). Repeat for several; they run in the order given. Default:
    /// the shipped WMDP-bio guardrail, named `wmdp-bio`.
    #[arg(long = "guard", value_name = "NAME=PATH")]
    pub guards: Vec<String>,
    /// Serve the model without any guardrail.
    #[arg(long, conflicts_with = "guards")]
    pub no_guard: bool,
    /// An SAE to bind every guardrail to, instead of the path each file records.
    #[arg(long, value_parser = crate::sae_path)]
    pub sae: Option<PathBuf>,
    /// Address to bind; 127.0.0.1 keeps the server local (use 0.0.0.0 in a container).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The model id clients name (default: the model's file name).
    #[arg(long)]
    pub model_id: Option<String>,
    /// A file of API keys, one per line; requests must send `Authorization: Bearer <key>`.
    /// Keys also come from the environment variable DSG_API_KEYS (comma separated).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Requests that may wait for the model beyond the running batch; more get 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Most requests decoded together in one step.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// A request's time limit in seconds, waiting included.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// `max_tokens` of a chat request that gives none.
    #[arg(long, default_value_t = 256)]
    pub default_max_tokens: usize,
    /// Decode with f32 weights instead of the GGUF's quantised ones.
    #[arg(long)]
    pub f32_decode: bool,
    /// Seconds in-flight requests get to finish after SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
}

fn positive(value: usize, option: &str) -> Result<()> {
    if value == 0 {
        bail!("{option} must be at least 1, found 0");
    }
    Ok(())
}

/// Runs `dsg serve`: checks the options, loads the model and every guardrail (any failure stops
/// the server before it binds: fail closed), then serves until SIGTERM or Ctrl-C.
pub fn serve(args: &ServeArgs) -> Result<()> {
    positive(args.queue, "--queue")?;
    positive(args.max_batch, "--max-batch")?;
    positive(args.max_body, "--max-body")?;
    positive(args.default_max_tokens, "--default-max-tokens")?;
    if args.timeout == 0 {
        bail!("--timeout must be at least 1 second, found 0");
    }
    let specs: Vec<(String, bool, PathBuf)> = if args.no_guard {
        Vec::new()
    } else if args.guards.is_empty() {
        vec![("wmdp-bio".into(), false, dsg::assets::default_guard_file()?)]
    } else {
        args.guards
            .iter()
            .map(|g| parse_guard_arg(g).map_err(|e| anyhow::anyhow!("--guard: {e}")))
            .collect::<Result<_>>()?
    };
    for (_, _, path) in &specs {
        if !path.is_file() {
            bail!("--guard: no guardrail file at {}", path.display());
        }
    }
    if let Some(sae) = &args.sae {
        if !sae.exists() {
            bail!("--sae: no SAE at {}", sae.display());
        }
    }
    let env_keys = std::env::var("DSG_API_KEYS").ok();
    let keys = ApiKeys::load(args.api_key_file.as_deref(), env_keys.as_deref())
        .context("--api-key-file / DSG_API_KEYS")?;
    let lm = crate::load_model(&args.model)?;
    let mut guards: Vec<GuardSpec> = Vec::with_capacity(specs.len());
    for (name, mandatory, path) in specs {
        let guard = Guardrail::load(&path, &lm, args.sae.as_deref()).with_context(|| {
            format!(
                "loading guardrail `{name}` from {} (the server does not start without it)",
                path.display()
            )
        })?;
        guards.push((name, mandatory, guard));
    }
    let stop_tokens = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| lm.tokenizer.token_id(t))
        .chain(lm.tokenizer.eos_id())
        .collect();
    let model_id = args.model_id.clone().unwrap_or_else(|| lm.name());
    let names: Vec<String> = guards
        .iter()
        .map(|(n, m, _)| {
            if *m {
                format!("{n} (mandatory)")
            } else {
                n.clone()
            }
        })
        .collect();
    let opts = ServeOptions {
        addr: SocketAddr::new(args.host, args.port),
        keys,
        engine: EngineOptions {
            queue: args.queue,
            max_batch: args.max_batch,
            quantized_decode: !args.f32_decode,
            stop_tokens,
        },
        timeout: Duration::from_secs(args.timeout),
        body_limit: args.max_body,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    };
    let auth = opts.keys.enabled();
    let server = Server::bind(lm, guards, model_id.clone(), args.default_max_tokens, opts)?;
    let addr = server.local_addr()?;
    eprintln!(
        "dsg serve: {model_id} with guardrails [{}]{} listening on http://{addr}",
        names.join(", "),
        if auth { ", API keys required," } else { "" }
    );
    server.run(std::future::pending(), true)?;
    Ok(())
}
