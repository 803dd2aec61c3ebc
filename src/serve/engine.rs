//! The model worker: one thread owns the model and the guardrails, takes jobs from a bounded
//! queue and decodes every running request in one batched step (continuous batching).
//!
//! A new request is prefilled on its own (with fresh copies of the guardrails, so its gate
//! streams start at its prompt), then joins the running batch: its KV cache rows and its gate
//! streams are appended to the batch's ([`KvCache::append_rows`], [`Guardrail::append_rows`]).
//! Every step decodes one token for each running row; rows that end, time out or whose client
//! went away leave the batch ([`KvCache::retain_rows`]). Per row, the guardrails a request did not
//! choose still gate (their decisions are reported) but never edit it
//! ([`Guardrail::set_acting_rows`]). Since each row attends only its own columns and every kernel
//! computes rows independently, a request's tokens do not depend on what else is running.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::DType;
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::error::ApiError;
use super::metrics::Metrics;
use super::protocol::Job;
use super::text::AnswerText;
use crate::generate::guarded::screen_prompt;
use crate::generate::Sampler;
use crate::guard::{GateDecision, Guardrail, Intervention, REFUSAL};
use crate::model::{Batch, ForwardOptions, HookList, KvCache, LoadedModel, Logits};
use crate::stats::prompts::Prompt;

/// A guardrail as the server runs it.
pub struct ServedGuard {
    /// The name requests choose it by.
    pub name: String,
    /// Whether a request may leave it out.
    pub mandatory: bool,
    /// The loaded guardrail.
    pub guard: Guardrail,
}

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Requests waiting beyond the running batch before new ones get 429.
    pub queue: usize,
    /// Most requests decoded together.
    pub max_batch: usize,
    /// Decode with quantised weights when the model has them.
    pub quantized_decode: bool,
    /// Token ids that end an answer.
    pub stop_tokens: Vec<u32>,
}

/// One token's log-probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's id.
    pub id: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The `k` most likely tokens at that position, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// A refusing guardrail fired on the prompt.
    Refused,
}

impl FinishReason {
    /// OpenAI's name of it.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Refused => "content_filter",
        }
    }
}

/// A guardrail's part in one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardOutcome {
    /// Whether it acted on the request (chosen, or mandatory).
    pub acting: bool,
    /// Its decision on the prompt.
    pub prompt: GateDecision,
    /// Its decision over prompt and answer.
    pub last: GateDecision,
    /// Tokens it clamped (prompt and answer).
    pub clamped_tokens: usize,
}

/// The end of an answer.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The whole answer text (stop string excluded).
    pub text: String,
    /// The generated ids.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Per prompt token after the first, its log-probability (with `echo`).
    pub prompt_logprobs: Option<Vec<TokenLogprob>>,
    /// Per configured guardrail, what it decided and did.
    pub guards: Vec<GuardOutcome>,
    /// The refusing guardrail that stopped the answer.
    pub refused_by: Option<usize>,
}

/// What the worker sends about a running request.
#[derive(Debug, Clone)]
pub enum Event {
    /// One generated token, with the text it made sendable.
    Token {
        /// The token's id.
        id: u32,
        /// Newly sendable text (may be empty).
        text: String,
        /// Its log-probability, when asked for.
        logprob: Option<TokenLogprob>,
    },
    /// With `echo`: the prompt's token log-probabilities (each token after the first), sent
    /// once the prompt pass is done, before any generated token.
    Prompt(Vec<TokenLogprob>),
    /// The answer ended.
    Done(Box<Finished>),
    /// The request failed.
    Failed(ApiError),
}

/// What the selected features did at one prompt token, per guardrail.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InspectGuard {
    /// The decision on the prompt.
    pub score: f64,
    /// Whether the gate fired.
    pub fired: bool,
    /// Per prompt token, the selected features active there.
    pub features: Vec<Vec<u32>>,
    /// Per prompt token, whether it counts as evidence for the gate.
    pub evidence: Vec<bool>,
}

enum Work {
    Generate(Box<Submitted>),
    Inspect(Prompt, oneshot::Sender<Result<Vec<InspectGuard>, ApiError>>),
}

struct Submitted {
    job: Job,
    events: tmpsc::UnboundedSender<Event>,
    deadline: Instant,
}

/// The handle requests reach the worker through.
pub struct Engine {
    tx: Mutex<Option<SyncSender<Work>>>,
    queued: Arc<AtomicUsize>,
    abort: Arc<AtomicBool>,
    worker: Mutex<Option<JoinHandle<()>>>,
    timeout: Duration,
}

impl Engine {
    /// Starts the worker thread with `lm` and `guards`.
    pub fn start(
        lm: Arc<LoadedModel>,
        guards: Vec<ServedGuard>,
        opts: EngineOptions,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Engine {
        let (tx, rx) = mpsc::sync_channel(opts.queue.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let abort = Arc::new(AtomicBool::new(false));
        let mut worker = Worker {
            lm,
            guards,
            opts,
            metrics,
            queued: queued.clone(),
            abort: abort.clone(),
            cache: None,
            rows: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("dsg-engine".into())
            .spawn(move || worker.run(rx))
            .expect("spawning the engine thread");
        Engine {
            tx: Mutex::new(Some(tx)),
            queued,
            abort,
            worker: Mutex::new(Some(handle)),
            timeout,
        }
    }

    fn send(&self, work: Work) -> Result<(), ApiError> {
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let tx = guard.as_ref().ok_or_else(shutting_down)?;
        self.queued.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(work) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => ApiError::busy(1),
                    TrySendError::Disconnected(_) => shutting_down(),
                })
            }
        }
    }

    /// Queues `job`; its events arrive on the returned receiver. Dropping the receiver cancels
    /// the request. A full queue is a 429.
    pub fn submit(&self, job: Job) -> Result<tmpsc::UnboundedReceiver<Event>, ApiError> {
        let (events, rx) = tmpsc::unbounded_channel();
        let deadline = Instant::now() + self.timeout;
        self.send(Work::Generate(Box::new(Submitted {
            job,
            events,
            deadline,
        })))?;
        Ok(rx)
    }

    /// Each guardrail's decision and per-token features on `prompt`, without generating.
    pub async fn inspect(&self, prompt: Prompt) -> Result<Vec<InspectGuard>, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Work::Inspect(prompt, tx))?;
        rx.await.map_err(|_| shutting_down())?
    }

    /// Whether the worker is running (it stops only at shutdown, or if it failed).
    pub fn alive(&self) -> bool {
        self.worker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    /// Requests waiting for the worker.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Stops taking requests, lets the running and queued ones finish for up to `grace`, then
    /// cancels what is left (503) and joins the worker.
    pub fn shutdown(&self, grace: Duration) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(handle) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let end = Instant::now() + grace;
        while !handle.is_finished() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.abort.store(true, Ordering::SeqCst);
        let _ = handle.join();
    }
}

fn shutting_down() -> ApiError {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        )
    }
}

/// A request in the running batch.
struct Row {
    sub: Submitted,
    sampler: Sampler,
    tokens: Vec<u32>,
    text: AnswerText,
    prompt_logprobs: Option<Vec<TokenLogprob>>,
    prompt_decisions: Vec<GateDecision>,
    clamped: Vec<usize>,
    done: bool,
}

struct Worker {
    lm: Arc<LoadedModel>,
    guards: Vec<ServedGuard>,
    opts: EngineOptions,
    metrics: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
    abort: Arc<AtomicBool>,
    cache: Option<KvCache>,
    rows: Vec<Row>,
}

impl Worker {
    fn run(&mut self, rx: Receiver<Work>) {
        let mut open = true;
        loop {
            if self.abort.load(Ordering::SeqCst) {
                for row in self.rows.drain(..) {
                    let _ = row.sub.events.send(Event::Failed(shutting_down()));
                }
                while let Ok(w) = rx.try_recv() {
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                    fail(w, shutting_down());
                }
                return;
            }
            if self.rows.is_empty() && open {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(w) => self.take(w),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
                }
            }
            while open && self.rows.len() < self.opts.max_batch {
                match rx.try_recv() {
                    Ok(w) => self.take(w),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => open = false,
                }
            }
            if self.rows.is_empty() {
                if !open {
                    return;
                }
                continue;
            }
            if let Err(e) = self.step() {
                let err = ApiError::internal(format!("decoding failed: {e}"));
                for row in self.rows.drain(..) {
                    let _ = row.sub.events.send(Event::Failed(err.clone()));
                }
                self.cache = None;
                for g in &mut self.guards {
                    g.guard.retain_rows(&[]);
                }
            }
            self.metrics.set_running(self.rows.len());
        }
    }

    fn take(&mut self, work: Work) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
        match work {
            Work::Inspect(prompt, reply) => {
                let _ =
                    reply.send(self.inspect(&prompt).map_err(|e| {
                        ApiError::internal(format!("inspecting the prompt failed: {e}"))
                    }));
            }
            Work::Generate(sub) => {
                if sub.events.is_closed() {
                    self.metrics.cancelled();
                    return;
                }
                if Instant::now() > sub.deadline {
                    self.metrics.timed_out();
                    let _ = sub.events.send(Event::Failed(timed_out()));
                    return;
                }
                let events = sub.events.clone();
                if let Err(e) = self.admit(*sub) {
                    let _ = events.send(Event::Failed(ApiError::internal(format!(
                        "the prompt pass failed: {e}"
                    ))));
                }
            }
        }
    }

    fn forks(&self, acting: &[bool]) -> Vec<Guardrail> {
        self.guards
            .iter()
            .zip(acting)
            .map(|(g, &a)| {
                let mut f = g.guard.fork();
                f.set_acting_rows(Some(vec![a]));
                f
            })
            .collect()
    }

    fn inspect(&mut self, prompt: &Prompt) -> crate::Result<Vec<InspectGuard>> {
        let mut forks = self.forks(&vec![false; self.guards.len()]);
        screen_prompt(
            &self.lm.model,
            prompt,
            &mut forks.iter_mut().collect::<Vec<_>>(),
        )?;
        Ok(forks
            .iter_mut()
            .map(|f| {
                let decision = f.decisions().first().copied().unwrap_or(GateDecision {
                    score: 0.0,
                    fired: false,
                });
                let records = f.take_records();
                let features = records
                    .first()
                    .map(|r| r.rows[0].active_features.clone())
                    .unwrap_or_default();
                InspectGuard {
                    score: decision.score,
                    fired: decision.fired,
                    features,
                    evidence: prompt.evidence.clone(),
                }
            })
            .collect())
    }

    /// Prefills one request alone, answers it at once if it is refused or done, else adds it to
    /// the running batch.
    fn admit(&mut self, sub: Submitted) -> crate::Result<()> {
        let job = &sub.job;
        let mut forks = self.forks(&job.acting);
        let batch = Batch::single(job.prompt.ids.clone(), self.lm.model.device())?
            .with_evidence(vec![job.prompt.evidence.clone()])?;
        let opts = ForwardOptions {
            logits: if job.echo { Logits::All } else { Logits::Last },
            stop_after: None,
            quantized: false,
        };
        let mut cache = KvCache::new(self.lm.model.config().n_layers, 1);
        let mut hooks = HookList::new();
        for f in forks.iter_mut() {
            hooks.push(f);
        }
        let out = self
            .lm
            .model
            .forward(&batch, &opts, &mut hooks, Some(&mut cache))?;
        drop(hooks);
        self.metrics.tokens_in(job.prompt.ids.len());
        let mut prompt_decisions = Vec::with_capacity(forks.len());
        let mut clamped = Vec::with_capacity(forks.len());
        for f in forks.iter_mut() {
            let records = f.take_records();
            let row = &records[0].rows[0];
            prompt_decisions.push(row.decision);
            clamped.push(row.clamped.iter().filter(|&&c| c).count());
        }
        let logits = out.logits.expect("asked for logits").to_dtype(DType::F32)?;
        let (prompt_logprobs, last) = if job.echo {
            let all = logits.squeeze(0)?.to_vec2::<f32>()?;
            let k = job.logprobs.unwrap_or(0);
            let lps: Vec<TokenLogprob> = job.prompt.ids[1..]
                .iter()
                .zip(&all)
                .map(|(&id, l)| token_logprob(l, id, k))
                .collect();
            (Some(lps), all.last().cloned().unwrap_or_default())
        } else {
            (None, logits.squeeze(0)?.to_vec1::<f32>()?)
        };
        if let Some(lps) = &prompt_logprobs {
            let _ = sub.events.send(Event::Prompt(lps.clone()));
        }
        let mut row = Row {
            sampler: Sampler::new(job.temperature, job.top_p, job.seed),
            tokens: Vec::new(),
            text: AnswerText::new(job.stop.clone()),
            prompt_logprobs,
            prompt_decisions,
            clamped,
            done: false,
            sub,
        };
        let refused_by = self.guards.iter().enumerate().position(|(i, g)| {
            row.sub.job.acting[i]
                && g.guard.intervention() == Intervention::Refuse
                && row.prompt_decisions[i].fired
        });
        let decisions = row.prompt_decisions.clone();
        if let Some(i) = refused_by {
            self.finish(&mut row, FinishReason::Refused, Some(i), &decisions);
            return Ok(());
        }
        if row.sub.job.max_tokens == 0 {
            self.finish(&mut row, FinishReason::Length, None, &decisions);
            return Ok(());
        }
        self.push_token(&mut row, &last, &decisions)?;
        if row.done {
            return Ok(());
        }
        match self.cache.as_mut() {
            Some(c) => c.append_rows(cache)?,
            None => self.cache = Some(cache),
        }
        for (g, f) in self.guards.iter_mut().zip(forks.iter_mut()) {
            g.guard.append_rows(f);
        }
        self.rows.push(row);
        Ok(())
    }

    /// Samples the row's next token from `logits`, sends it, and ends the row when it stops
    /// (`decisions`: each guardrail's current decision for the row).
    fn push_token(
        &self,
        row: &mut Row,
        logits: &[f32],
        decisions: &[GateDecision],
    ) -> crate::Result<()> {
        let id = row.sampler.sample(logits)?;
        let logprob = row.sub.job.logprobs.map(|k| token_logprob(logits, id, k));
        row.tokens.push(id);
        self.metrics.tokens_out(1);
        let stop_token = self.opts.stop_tokens.contains(&id);
        let at_length = row.tokens.len() >= row.sub.job.max_tokens;
        let decoded = self.lm.tokenizer.decode(&row.tokens, true)?;
        let update = row.text.update(&decoded, stop_token || at_length);
        let _ = row.sub.events.send(Event::Token {
            id,
            text: update.delta,
            logprob,
        });
        if update.stopped || stop_token {
            self.finish(row, FinishReason::Stop, None, decisions);
        } else if at_length {
            self.finish(row, FinishReason::Length, None, decisions);
        }
        Ok(())
    }

    /// Sends the row's end; `last` holds each guardrail's decision over prompt and answer.
    fn finish(
        &self,
        row: &mut Row,
        finish: FinishReason,
        refused_by: Option<usize>,
        last: &[GateDecision],
    ) {
        let outcomes: Vec<GuardOutcome> = (0..self.guards.len())
            .map(|i| GuardOutcome {
                acting: row.sub.job.acting[i],
                prompt: row.prompt_decisions[i],
                last: last[i],
                clamped_tokens: row.clamped[i],
            })
            .collect();
        for (g, o) in self.guards.iter().zip(&outcomes) {
            self.metrics
                .guard(&g.name, o.acting && o.last.fired, o.clamped_tokens);
        }
        let text = match finish {
            FinishReason::Refused => REFUSAL.to_string(),
            _ => row.text.sent().to_string(),
        };
        let _ = row.sub.events.send(Event::Done(Box::new(Finished {
            text,
            tokens: row.tokens.clone(),
            finish,
            prompt_tokens: row.sub.job.prompt.ids.len(),
            prompt_logprobs: row.prompt_logprobs.take(),
            guards: outcomes,
            refused_by,
        })));
        row.done = true;
    }

    /// One decoding step for every running row, then the rows that ended leave the batch.
    fn step(&mut self) -> crate::Result<()> {
        let now = Instant::now();
        for row in &mut self.rows {
            if row.sub.events.is_closed() {
                self.metrics.cancelled();
                row.done = true;
            } else if now > row.sub.deadline {
                self.metrics.timed_out();
                let _ = row.sub.events.send(Event::Failed(timed_out()));
                row.done = true;
            }
        }
        self.drop_done()?;
        if self.rows.is_empty() {
            return Ok(());
        }
        for (i, g) in self.guards.iter_mut().enumerate() {
            let acting = self.rows.iter().map(|r| r.sub.job.acting[i]).collect();
            g.guard.set_acting_rows(Some(acting));
        }
        let device = self.lm.model.device().clone();
        let batch = Batch::new(
            self.rows
                .iter()
                .map(|r| vec![*r.tokens.last().expect("a running row has a token")])
                .collect(),
            &device,
        )?;
        let opts = ForwardOptions {
            logits: Logits::Last,
            stop_after: None,
            quantized: self.opts.quantized_decode && self.lm.model.has_quantized(),
        };
        let mut hooks = HookList::new();
        for g in self.guards.iter_mut() {
            hooks.push(&mut g.guard);
        }
        self.metrics.decode_step(self.rows.len());
        let cache = self.cache.as_mut().expect("running rows have a cache");
        let out = self
            .lm
            .model
            .forward(&batch, &opts, &mut hooks, Some(cache))?;
        drop(hooks);
        for (i, g) in self.guards.iter_mut().enumerate() {
            for record in g.guard.take_records() {
                for (row, r) in self.rows.iter_mut().zip(&record.rows) {
                    row.clamped[i] += r.clamped.iter().filter(|&&c| c).count();
                }
            }
        }
        let logits = out
            .logits
            .expect("asked for logits")
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let decisions: Vec<Vec<GateDecision>> =
            self.guards.iter().map(|g| g.guard.decisions()).collect();
        let mut rows = std::mem::take(&mut self.rows);
        let mut result = Ok(());
        for (index, (row, l)) in rows.iter_mut().zip(&logits).enumerate() {
            let last: Vec<GateDecision> = decisions.iter().map(|d| d[index]).collect();
            result = result.and_then(|()| self.push_token(row, l, &last));
        }
        self.rows = rows;
        result?;
        self.drop_done()
    }

    fn drop_done(&mut self) -> crate::Result<()> {
        let keep: Vec<bool> = self.rows.iter().map(|r| !r.done).collect();
        if keep.iter().all(|&k| k) {
            return Ok(());
        }
        if let Some(c) = self.cache.as_mut() {
            c.retain_rows(&keep)?;
        }
        for g in &mut self.guards {
            g.guard.retain_rows(&keep);
        }
        self.rows.retain(|r| !r.done);
        if self.rows.is_empty() {
            self.cache = None;
        }
        Ok(())
    }
}

fn fail(work: Work, err: ApiError) {
    match work {
        Work::Generate(sub) => {
            let _ = sub.events.send(Event::Failed(err));
        }
        Work::Inspect(_, reply) => {
            let _ = reply.send(Err(err));
        }
    }
}

fn timed_out() -> ApiError {
    ApiError {
        code: Some("timeout"),
        ..ApiError::new(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            "timeout_error",
            "the request ran past the server's time limit",
        )
    }
}

/// `id`'s log-probability under `logits` (log-softmax, no temperature), with the `k` most likely
/// tokens.
pub fn token_logprob(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    let lp = |x: f32| (x as f64 - log_sum) as f32;
    let mut top: Vec<(u32, f32)> = Vec::new();
    if k > 0 {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(order.len());
        order.select_nth_unstable_by(k - 1, |&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        order.truncate(k);
        order.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        top = order
            .into_iter()
            .map(|t| (t, lp(logits[t as usize])))
            .collect();
    }
    TokenLogprob {
        id,
        logprob: lp(logits[id as usize]),
        top,
    }
}
