//! `POST /v1/chat/completions` and `POST /v1/completions`: submit the jobs, then answer with
//! one JSON body or a stream of server-sent events, in OpenAI's shapes, each with the `dsg`
//! guardrail report.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::engine::{Event, Finished, TokenLogprob};
use super::error::ApiError;
use super::protocol::{chat_request, completion_request, Job};
use super::routes::body_bytes;
use super::AppState;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An answer collected from its events.
struct Collected {
    logprobs: Vec<TokenLogprob>,
    done: Finished,
}

async fn collect(mut rx: UnboundedReceiver<Event>) -> Result<Collected, ApiError> {
    let mut logprobs = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Token { logprob, .. } => logprobs.extend(logprob),
            Event::Prompt(_) => {}
            Event::Done(done) => {
                return Ok(Collected {
                    logprobs,
                    done: *done,
                })
            }
            Event::Failed(e) => return Err(e),
        }
    }
    Err(ApiError::internal("the model worker stopped"))
}

/// The `dsg` report of an answer: each guardrail's decision, score and action.
fn guard_report(state: &AppState, done: &Finished) -> Value {
    let guards: Vec<Value> = state
        .served
        .guards
        .iter()
        .zip(&done.guards)
        .map(|(info, o)| {
            json!({
                "name": info.name,
                "mandatory": info.mandatory,
                "acting": o.acting,
                "intervention": info.intervention,
                "threshold": info.threshold,
                "prompt": {"score": o.prompt.score, "fired": o.prompt.fired},
                "score": o.last.score,
                "fired": o.last.fired,
                "clamped_tokens": o.clamped_tokens,
            })
        })
        .collect();
    json!({
        "refused_by": done.refused_by.map(|i| state.served.guards[i].name.clone()),
        "guardrails": guards,
    })
}

/// A token's exact bytes and its text (U+FFFD where it holds part of a character).
fn token_piece(state: &AppState, id: u32) -> (Vec<u8>, String) {
    let bytes = state.served.lm.tokenizer.token_bytes(id);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (bytes, text)
}

/// Characters in the longest valid UTF-8 prefix of `bytes`.
fn chars_in(bytes: &[u8]) -> usize {
    let valid = match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    };
    valid.chars().count()
}

/// Chat log-probs: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}`.
fn chat_logprobs(state: &AppState, lps: &[TokenLogprob]) -> Value {
    let entry = |id: u32, lp: f32| {
        let (bytes, token) = token_piece(state, id);
        json!({"token": token, "logprob": lp, "bytes": bytes})
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|t| {
            let mut e = entry(t.id, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

fn usage(done: &Finished) -> Value {
    json!({
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.tokens.len(),
        "total_tokens": done.prompt_tokens + done.tokens.len(),
    })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req = chat_request(&body_bytes(&state, body)?, &state.served)?;
    let want_logprobs = req.job.logprobs.is_some();
    let rx = state.engine.submit(req.job)?;
    let id = new_id("chatcmpl");
    if req.stream {
        return Ok(sse(chat_stream(state, rx, id, want_logprobs)));
    }
    let c = collect(rx).await?;
    let logprobs = want_logprobs.then(|| chat_logprobs(&state, &c.logprobs));
    let dsg = guard_report(&state, &c.done);
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": now(),
        "model": state.served.id,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": c.done.text},
            "logprobs": logprobs,
            "finish_reason": c.done.finish.as_str(),
            "dsg": dsg,
        }],
        "usage": usage(&c.done),
        "dsg": dsg,
    }))
    .into_response())
}

fn sse(stream: impl Stream<Item = Value> + Send + 'static) -> Response {
    let events = stream
        .map(|v| {
            let data = if v.is_null() {
                "[DONE]".to_string()
            } else {
                v.to_string()
            };
            Ok::<_, Infallible>(SseEvent::default().data(data))
        })
        .boxed();
    Sse::new(events).into_response()
}

/// Chat chunks: the role, then content deltas, then the finish with the `dsg` report, then
/// `[DONE]` (a `null` item here). A failure mid-stream is sent as an `error` object.
fn chat_stream(
    state: Arc<AppState>,
    rx: UnboundedReceiver<Event>,
    id: String,
    want_logprobs: bool,
) -> impl Stream<Item = Value> + Send + 'static {
    let created = now();
    let chunk = move |state: &AppState, delta: Value, logprobs: Value, finish: Value| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": state.served.id,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        })
    };
    let first = chunk(
        &state,
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        Value::Null,
    );
    let rest = stream::unfold(Some((state, rx, chunk)), move |st| async move {
        let (state, mut rx, chunk) = st?;
        loop {
            match rx.recv().await {
                Some(Event::Token { text, logprob, .. }) => {
                    if text.is_empty() && !want_logprobs {
                        continue;
                    }
                    let lp = match (&logprob, want_logprobs) {
                        (Some(t), true) => chat_logprobs(&state, std::slice::from_ref(t)),
                        _ => Value::Null,
                    };
                    let c = chunk(&state, json!({"content": text}), lp, Value::Null);
                    return Some((vec![c], Some((state, rx, chunk))));
                }
                Some(Event::Done(done)) => {
                    let mut last =
                        chunk(&state, json!({}), Value::Null, json!(done.finish.as_str()));
                    if done.refused_by.is_some() {
                        last["choices"][0]["delta"] = json!({"content": done.text});
                    }
                    last["dsg"] = guard_report(&state, &done);
                    last["usage"] = usage(&done);
                    return Some((vec![last, Value::Null], None));
                }
                Some(Event::Failed(e)) => return Some((vec![e.body()], None)),
                Some(Event::Prompt(_)) => continue,
                None => return None,
            }
        }
    });
    stream::once(async move { first }).chain(rest.flat_map(stream::iter))
}

/// Completion log-probs for the tokens `ids` (prompt first with `echo`): tokens, token
/// log-probs (`null` for the first prompt token), top log-probs, text offsets.
///
/// `text_bytes` holds the text before these tokens (empty for a whole answer; what earlier chunks
/// sent, in a stream), so offsets count characters from the start of the whole text.
fn completion_logprobs(
    state: &AppState,
    prompt: Option<(&[u32], &[TokenLogprob])>,
    answer: &[TokenLogprob],
    text_bytes: &mut Vec<u8>,
) -> Value {
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    let mut push = |id: u32, lp: Option<&TokenLogprob>| {
        let (bytes, text) = token_piece(state, id);
        offsets.push(chars_in(text_bytes));
        text_bytes.extend_from_slice(&bytes);
        tokens.push(text);
        lps.push(lp.map_or(Value::Null, |t| json!(t.logprob)));
        tops.push(lp.map_or(Value::Null, |t| {
            let mut m = serde_json::Map::new();
            for &(id, lp) in &t.top {
                m.entry(token_piece(state, id).1).or_insert(json!(lp));
            }
            Value::Object(m)
        }));
    };
    if let Some((ids, prompt_lps)) = prompt {
        push(ids[0], None);
        for (&id, lp) in ids[1..].iter().zip(prompt_lps) {
            push(id, Some(lp));
        }
    }
    for t in answer {
        push(t.id, Some(t));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req = completion_request(&body_bytes(&state, body)?, &state.served)?;
    let id = new_id("cmpl");
    if req.stream {
        let job = req.jobs.into_iter().next().expect("a stream has one job");
        let rx = state.engine.submit(job.clone())?;
        return Ok(sse(completion_stream(state, rx, id, job)));
    }
    let mut pending = Vec::with_capacity(req.jobs.len());
    for job in &req.jobs {
        pending.push(state.engine.submit(job.clone())?);
    }
    let mut choices = Vec::with_capacity(pending.len());
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (index, (rx, job)) in pending.into_iter().zip(&req.jobs).enumerate() {
        let c = collect(rx).await?;
        prompt_tokens += c.done.prompt_tokens;
        completion_tokens += c.done.tokens.len();
        let prompt_text = || {
            state
                .served
                .lm
                .tokenizer
                .decode(&job.prompt.ids, false)
                .unwrap_or_default()
        };
        let text = if job.echo {
            prompt_text() + &c.done.text
        } else {
            c.done.text.clone()
        };
        let logprobs = job.logprobs.map(|_| {
            let prompt = c
                .done
                .prompt_logprobs
                .as_deref()
                .map(|lps| (job.prompt.ids.as_slice(), lps));
            completion_logprobs(&state, prompt, &c.logprobs, &mut Vec::new())
        });
        choices.push(json!({
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": c.done.finish.as_str(),
            "dsg": guard_report(&state, &c.done),
        }));
    }
    let dsg = choices.first().map_or(Value::Null, |c| c["dsg"].clone());
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": now(),
        "model": state.served.id,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "dsg": dsg,
    }))
    .into_response())
}

/// Completion chunks: with `echo`, the prompt first; then text deltas (with each token's
/// log-probs when asked for); then the finish with the `dsg` report and usage; then `[DONE]`.
fn completion_stream(
    state: Arc<AppState>,
    rx: UnboundedReceiver<Event>,
    id: String,
    job: Job,
) -> impl Stream<Item = Value> + Send + 'static {
    let created = now();
    let want_logprobs = job.logprobs.is_some();
    let init = Some((state, rx, Vec::<u8>::new()));
    stream::unfold(init, move |st| {
        let id = id.clone();
        let prompt_ids = job.prompt.ids.clone();
        async move {
            let (state, mut rx, mut sent) = st?;
            let chunk = |text: &str, logprobs: Value, finish: Value| {
                json!({
                    "id": id,
                    "object": "text_completion",
                    "created": created,
                    "model": state.served.id,
                    "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
                })
            };
            loop {
                match rx.recv().await {
                    Some(Event::Prompt(lps)) => {
                        let lp = if want_logprobs {
                            completion_logprobs(&state, Some((&prompt_ids, &lps)), &[], &mut sent)
                        } else {
                            Value::Null
                        };
                        let text = state
                            .served
                            .lm
                            .tokenizer
                            .decode(&prompt_ids, false)
                            .unwrap_or_default();
                        let c = chunk(&text, lp, Value::Null);
                        return Some((vec![c], Some((state, rx, sent))));
                    }
                    Some(Event::Token { text, .. }) if text.is_empty() && !want_logprobs => continue,
                    Some(Event::Token { text, logprob, .. }) => {
                        let lp = match (&logprob, want_logprobs) {
                            (Some(t), true) => completion_logprobs(&state, None, std::slice::from_ref(t), &mut sent),
                            _ => Value::Null,
                        };
                        let c = chunk(&text, lp, Value::Null);
                        return Some((vec![c], Some((state, rx, sent))));
                    }
                    Some(Event::Done(done)) => {
                        let text = if done.refused_by.is_some() { done.text.as_str() } else { "" };
                        let mut last = chunk(text, Value::Null, json!(done.finish.as_str()));
                        last["dsg"] = guard_report(&state, &done);
                        last["usage"] = usage(&done);
                        return Some((vec![last, Value::Null], None));
                    }
                    Some(Event::Failed(e)) => return Some((vec![e.body()], None)),
                    None => return None,
                }
            }
        }
    })
    .flat_map(stream::iter)
}
