//! `dsg serve`: the guarded model behind an OpenAI-compatible HTTP API (axum + tokio).
//!
//! Routes: `POST /v1/chat/completions` and `POST /v1/completions` (streaming or not, log-probs,
//! `echo` as lm-eval's `local-completions` reads it), `GET /v1/models`, `GET /health`,
//! `GET /metrics` (Prometheus), `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info`
//! (lm-eval's remote tokenizer), `POST /v1/guard/inspect`, `GET /v1/guardrails`, and a playground
//! page at `/`. Model work runs on one worker thread with a bounded queue and continuous batching
//! ([`engine`]); every answer carries each guardrail's decision in a `dsg` field, and a request
//! may choose guardrails in a `dsg` object of its body, but not leave out mandatory ones.
//!
//! The server fails closed: a guardrail that cannot load or does not match the model stops it
//! before it binds. It binds to 127.0.0.1 unless told otherwise, and checks API keys when given.

pub mod auth;
mod completions;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod protocol;
mod routes;
pub mod text;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::guard::Guardrail;
use crate::model::{LoadedModel, Message};
use crate::stats::prompts::Prompt;
use crate::{Error, Result};

pub use auth::ApiKeys;
pub use engine::{Engine, EngineOptions, ServedGuard};
pub use error::ApiError;

/// A guardrail as requests see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GuardInfo {
    /// The name requests choose it by.
    pub name: String,
    /// Whether a request may leave it out.
    pub mandatory: bool,
    /// What it does when its gate fires (`clamp:...`, `refuse`).
    pub intervention: String,
    /// Its gate (kind and parameters).
    pub gate: serde_json::Value,
    /// The gate's threshold.
    pub threshold: f64,
    /// The hook point it reads and edits.
    pub hook: String,
    /// Its selected SAE features.
    pub features: Vec<u32>,
}

impl GuardInfo {
    /// The description of `guard` served as `name`.
    pub fn of(name: &str, mandatory: bool, guard: &Guardrail) -> GuardInfo {
        let file = guard.file();
        GuardInfo {
            name: name.to_string(),
            mandatory,
            intervention: guard.intervention().to_string(),
            gate: serde_json::to_value(file.gate).unwrap_or_default(),
            threshold: file.gate.threshold(),
            hook: file.hook_point.to_string(),
            features: file.feature_ids(),
        }
    }
}

/// The model and guardrails a server answers with, as the request parser needs them.
pub struct ServedModel {
    /// The model id clients name.
    pub id: String,
    /// The model and tokenizer.
    pub lm: Arc<LoadedModel>,
    /// Context length in tokens.
    pub context: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// `max_tokens` of a chat request that gives none.
    pub default_max_tokens: usize,
    /// The configured guardrails, in the order they run.
    pub guards: Vec<GuardInfo>,
}

impl ServedModel {
    /// Whether a request naming `model` means this one (its id, or its file name).
    pub fn answers_to(&self, model: &str) -> bool {
        model == self.id || model == self.lm.name()
    }

    /// The guardrails' names.
    pub fn guard_names(&self) -> Vec<String> {
        self.guards.iter().map(|g| g.name.clone()).collect()
    }

    /// A chat rendered with the model's template (generation prompt on); the users' text is
    /// the gates' evidence.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Prompt> {
        let enc = self.lm.tokenizer.encode_chat_sources(messages, true)?;
        let evidence = enc.written_by(messages, "user");
        Ok(Prompt {
            ids: enc.ids,
            evidence,
        })
    }

    /// Raw text as a prompt (BOS added when the tokenizer adds one).
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        self.lm.tokenizer.encode(text, self.lm.tokenizer.adds_bos())
    }
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind (port 0: any free port).
    pub addr: SocketAddr,
    /// API keys (none: no check).
    pub keys: ApiKeys,
    /// The worker's queue and batch.
    pub engine: EngineOptions,
    /// A request's time limit, queueing included.
    pub timeout: Duration,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_grace: Duration,
}

/// Everything the request handlers share.
pub struct AppState {
    /// The model and guardrails as requests see them.
    pub served: ServedModel,
    /// The model worker.
    pub engine: Engine,
    /// The counters.
    pub metrics: Arc<metrics::Metrics>,
    /// The API keys.
    pub keys: ApiKeys,
    /// Largest request body, in bytes.
    pub body_limit: usize,
}

/// A server bound to its address, not yet serving.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    grace: Duration,
    runtime: tokio::runtime::Runtime,
}

/// `guards` as `(name, mandatory, guardrail)`; names must be unique.
pub type GuardSpec = (String, bool, Guardrail);

impl Server {
    /// Starts the worker with `lm` and `guards` and binds `opts.addr`. Errors (a taken port, a
    /// duplicate guardrail name) come before the worker starts.
    pub fn bind(
        lm: LoadedModel,
        guards: Vec<GuardSpec>,
        model_id: String,
        default_max_tokens: usize,
        opts: ServeOptions,
    ) -> Result<Server> {
        for (i, (name, _, _)) in guards.iter().enumerate() {
            if guards[..i].iter().any(|(n, _, _)| n == name) {
                return Err(Error::Invalid(format!(
                    "two guardrails are named `{name}`: give each --guard a distinct NAME=PATH"
                )));
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start the async runtime: {e}")))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(opts.addr))
            .map_err(|e| Error::Invalid(format!("cannot bind {}: {e}", opts.addr)))?;
        let lm = Arc::new(lm);
        let served = ServedModel {
            id: model_id,
            context: lm.model.config().max_positions,
            vocab: lm.model.config().vocab_size,
            default_max_tokens,
            guards: guards
                .iter()
                .map(|(n, m, g)| GuardInfo::of(n, *m, g))
                .collect(),
            lm: lm.clone(),
        };
        let metrics = Arc::new(metrics::Metrics::default());
        let guards = guards
            .into_iter()
            .map(|(name, mandatory, guard)| ServedGuard {
                name,
                mandatory,
                guard,
            })
            .collect();
        let engine = Engine::start(lm, guards, opts.engine, opts.timeout, metrics.clone());
        Ok(Server {
            listener,
            state: Arc::new(AppState {
                served,
                engine,
                metrics,
                keys: opts.keys,
                body_limit: opts.body_limit,
            }),
            grace: opts.shutdown_grace,
            runtime,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::Invalid(format!("no local address: {e}")))
    }

    /// Serves until `shutdown` completes (or SIGTERM / Ctrl-C when `signals`), then stops
    /// taking connections, lets in-flight requests finish for the grace period and cancels the
    /// rest.
    pub fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        signals: bool,
    ) -> Result<()> {
        let app = routes::router(self.state.clone());
        let state = self.state.clone();
        let grace = self.grace;
        let listener = self.listener;
        self.runtime.block_on(async move {
            let stop = async move {
                if signals {
                    tokio::select! {
                        _ = shutdown => {},
                        _ = termination() => {},
                    }
                } else {
                    shutdown.await;
                }
                eprintln!("dsg serve: shutting down (in-flight requests get {grace:?})");
                // The engine stops taking jobs; running ones finish within the grace period.
                let engine_state = state.clone();
                tokio::task::spawn_blocking(move || engine_state.engine.shutdown(grace));
            };
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
                .map_err(|e| Error::Invalid(format!("the server failed: {e}")))
        })?;
        self.state.engine.shutdown(Duration::ZERO);
        Ok(())
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Where a guardrail for `dsg serve` comes from: `NAME=PATH`, or a bare `PATH` (named by its file
/// stem); a trailing `!` on the name marks it mandatory.
pub fn parse_guard_arg(arg: &str) -> std::result::Result<(String, bool, PathBuf), String> {
    let (name, path) = match arg.split_once('=') {
        Some((n, p)) => (n.to_string(), PathBuf::from(p)),
        None => {
            let p = PathBuf::from(arg);
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            (stem, p)
        }
    };
    let (name, mandatory) = match name.strip_suffix('!') {
        Some(n) => (n.to_string(), true),
        None => (name, false),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "guardrail name `{name}` in `{arg}`: expected NAME=PATH with NAME of letters, digits, '-', '_' or '.'"
        ));
    }
    Ok((name, mandatory, path))
}
