//! The OpenAI request bodies the server reads (chat completions, completions, guard inspection),
//! checked field by field into [`Job`]s before any model work: a client's mistake is a 400 that
//! names the field, what was expected and what was found.

use serde_json::{Map, Value};

use super::error::ApiError;
use super::ServedModel;
use crate::model::Message;
use crate::stats::prompts::Prompt;

/// Most stop strings a request may give (OpenAI allows 4; lm-eval's completions client may send a
/// few more for generative tasks).
pub const MAX_STOP: usize = 16;
/// Most top log-probabilities per token a request may ask for.
pub const MAX_TOP_LOGPROBS: u64 = 20;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 256;

/// One generation the engine runs: a prompt and how to continue it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The prompt's ids and which of them count as evidence for gates.
    pub prompt: Prompt,
    /// At most this many new tokens (0: score the prompt only, with `echo`).
    pub max_tokens: usize,
    /// Softmax temperature (0: greedy).
    pub temperature: f64,
    /// Nucleus sampling mass.
    pub top_p: f64,
    /// Sampler seed.
    pub seed: u64,
    /// Strings that end the answer (not included in it).
    pub stop: Vec<String>,
    /// Log-probabilities: `None`, or the chosen token's plus this many alternatives.
    pub logprobs: Option<usize>,
    /// Return the prompt's tokens with their log-probabilities before the answer.
    pub echo: bool,
    /// Per configured guardrail, whether it acts on this request.
    pub acting: Vec<bool>,
}

/// A parsed chat completion request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The job to run.
    pub job: Job,
    /// Answer as server-sent events.
    pub stream: bool,
}

/// A parsed completion request: one job per prompt.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// The jobs, in the order of the prompts.
    pub jobs: Vec<Job>,
    /// Answer as server-sent events.
    pub stream: bool,
}

/// Parses a request body into a JSON object; the error names what was wrong with the bytes.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if std::str::from_utf8(body).is_err() {
        return Err(ApiError::invalid("", "request body is not valid UTF-8"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::invalid(
            "",
            format!(
                "request body must be a JSON object, found {}",
                kind_of(&other)
            ),
        )),
        Err(e) => Err(ApiError::invalid(
            "",
            format!("request body is not valid JSON: {e}"),
        )),
    }
}

/// The JSON type of `v`, for messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(field: &str, expected: &str, found: &Value) -> ApiError {
    ApiError::invalid(
        field,
        format!("`{field}` must be {expected}, found {}", kind_of(found)),
    )
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn opt_f64(obj: &Map<String, Value>, name: &str) -> Result<Option<f64>, ApiError> {
    field(obj, name)
        .map(|v| v.as_f64().ok_or_else(|| wrong(name, "a number", v)))
        .transpose()
}

fn opt_u64(obj: &Map<String, Value>, name: &str) -> Result<Option<u64>, ApiError> {
    field(obj, name)
        .map(|v| {
            v.as_u64()
                .ok_or_else(|| wrong(name, "a non-negative integer", v))
        })
        .transpose()
}

fn opt_bool(obj: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    field(obj, name)
        .map(|v| v.as_bool().ok_or_else(|| wrong(name, "a boolean", v)))
        .transpose()
}

/// `temperature`, `top_p`, `seed`, `stop`, `n`, `dsg` and `model`: shared by both endpoints.
struct Common {
    temperature: f64,
    top_p: f64,
    seed: u64,
    stop: Vec<String>,
    stream: bool,
    acting: Vec<bool>,
}

fn common(obj: &Map<String, Value>, served: &ServedModel) -> Result<Common, ApiError> {
    if let Some(m) = field(obj, "model") {
        let name = m.as_str().ok_or_else(|| wrong("model", "a string", m))?;
        if !served.answers_to(name) {
            return Err(ApiError {
                status: axum::http::StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                code: Some("model_not_found"),
                ..ApiError::invalid(
                    "model",
                    format!(
                        "the model `{name}` does not exist here; this server serves `{}`",
                        served.id
                    ),
                )
            });
        }
    }
    let temperature = opt_f64(obj, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` must be in [0, 2], found {temperature}"),
        ));
    }
    let top_p = opt_f64(obj, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("`top_p` must be in (0, 1], found {top_p}"),
        ));
    }
    // No seed: a fresh one per request, so sampled answers vary as clients expect.
    let seed = match field(obj, "seed") {
        None => rand::random::<u64>(),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_i64().map(|i| i as u64))
            .ok_or_else(|| wrong("seed", "an integer", v))?,
    };
    if let Some(n) = opt_u64(obj, "n")? {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be 1 (one choice per prompt), found {n}"),
            ));
        }
    }
    Ok(Common {
        temperature,
        top_p,
        seed,
        stop: stop_strings(field(obj, "stop"))?,
        stream: opt_bool(obj, "stream")?.unwrap_or(false),
        acting: guard_choice(field(obj, "dsg"), served)?,
    })
}

fn stop_strings(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let list: Vec<&Value> = match v {
        None => return Ok(Vec::new()),
        Some(Value::String(_)) => vec![v.unwrap()],
        Some(Value::Array(items)) => items.iter().collect(),
        Some(other) => return Err(wrong("stop", "a string or an array of strings", other)),
    };
    if list.len() > MAX_STOP {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "`stop` may hold at most {MAX_STOP} strings, found {}",
                list.len()
            ),
        ));
    }
    list.into_iter()
        .map(|s| match s.as_str() {
            Some("") => Err(ApiError::invalid(
                "stop",
                "`stop` strings must not be empty",
            )),
            Some(s) if s.len() > MAX_STOP_LEN => Err(ApiError::invalid(
                "stop",
                format!(
                    "`stop` strings may be at most {MAX_STOP_LEN} bytes, found {}",
                    s.len()
                ),
            )),
            Some(s) => Ok(s.to_string()),
            None => Err(wrong("stop", "a string or an array of strings", s)),
        })
        .collect()
}

/// Which configured guardrails act on the request: all, unless the body's `dsg.guardrails` lists
/// some; mandatory ones cannot be left out.
fn guard_choice(v: Option<&Value>, served: &ServedModel) -> Result<Vec<bool>, ApiError> {
    let all = vec![true; served.guards.len()];
    let Some(v) = v else { return Ok(all) };
    let obj = v
        .as_object()
        .ok_or_else(|| wrong("dsg", "an object like {\"guardrails\": [\"name\"]}", v))?;
    if let Some(unknown) = obj.keys().find(|k| k.as_str() != "guardrails") {
        return Err(ApiError::invalid(
            "dsg",
            format!("unknown field `dsg.{unknown}`; the `dsg` object takes `guardrails`"),
        ));
    }
    let Some(list) = field(obj, "guardrails") else {
        return Ok(all);
    };
    let names = list
        .as_array()
        .ok_or_else(|| wrong("dsg.guardrails", "an array of guardrail names", list))?;
    let mut acting = vec![false; served.guards.len()];
    for n in names {
        let name = n
            .as_str()
            .ok_or_else(|| wrong("dsg.guardrails", "an array of guardrail names", n))?;
        let i = served
            .guards
            .iter()
            .position(|g| g.name == name)
            .ok_or_else(|| {
                ApiError::invalid(
                    "dsg.guardrails",
                    format!(
                        "no guardrail `{name}` on this server; it has: {}",
                        served.guard_names().join(", ")
                    ),
                )
            })?;
        acting[i] = true;
    }
    if let Some(g) = served
        .guards
        .iter()
        .zip(&acting)
        .find(|(g, &a)| g.mandatory && !a)
    {
        return Err(ApiError {
            status: axum::http::StatusCode::FORBIDDEN,
            kind: "permission_error",
            code: Some("mandatory_guardrail"),
            ..ApiError::invalid(
                "dsg.guardrails",
                format!(
                    "the guardrail `{}` is mandatory on this server and cannot be switched off",
                    g.0.name
                ),
            )
        });
    }
    Ok(acting)
}

/// `max_tokens` (or `max_completion_tokens`), checked against the context left after `prompt_len`.
fn max_tokens(
    obj: &Map<String, Value>,
    served: &ServedModel,
    prompt_len: usize,
    allow_zero: bool,
    default: usize,
) -> Result<usize, ApiError> {
    let context = served.context;
    if prompt_len >= context {
        return Err(ApiError::invalid(
            "messages",
            format!("the prompt is {prompt_len} tokens; the model's context is {context}"),
        )
        .with_code("context_length_exceeded"));
    }
    let left = context - prompt_len;
    let asked = match opt_u64(obj, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => opt_u64(obj, "max_tokens")?,
    };
    let n = match asked {
        None => return Ok(default.min(left)),
        Some(n) => n,
    };
    if n == 0 && !allow_zero {
        return Err(ApiError::invalid(
            "max_tokens",
            "`max_tokens` must be at least 1 (0 only with `echo` on completions)",
        ));
    }
    if n > left as u64 {
        return Err(ApiError::invalid(
            "max_tokens",
            format!(
                "`max_tokens` is {n}, but the prompt is {prompt_len} tokens and the context {context}: at most {left}"
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(n as usize)
}

/// Parses a `POST /v1/chat/completions` body.
pub fn chat_request(body: &[u8], served: &ServedModel) -> Result<ChatRequest, ApiError> {
    let obj = parse_object(body)?;
    let common = common(&obj, served)?;
    let messages = messages(field(&obj, "messages"))?;
    let prompt = served
        .chat_prompt(&messages)
        .map_err(|e| ApiError::invalid("messages", format!("cannot render the chat: {e}")))?;
    let max_tokens = max_tokens(
        &obj,
        served,
        prompt.ids.len(),
        false,
        served.default_max_tokens,
    )?;
    let logprobs = match opt_bool(&obj, "logprobs")?.unwrap_or(false) {
        false => None,
        true => Some(top_logprobs(
            opt_u64(&obj, "top_logprobs")?,
            "top_logprobs",
        )?),
    };
    if logprobs.is_none() && field(&obj, "top_logprobs").is_some() {
        top_logprobs(opt_u64(&obj, "top_logprobs")?, "top_logprobs")?;
    }
    Ok(ChatRequest {
        stream: common.stream,
        job: Job {
            prompt,
            max_tokens,
            temperature: common.temperature,
            top_p: common.top_p,
            seed: common.seed,
            stop: common.stop,
            logprobs,
            echo: false,
            acting: common.acting,
        },
    })
}

fn top_logprobs(n: Option<u64>, name: &str) -> Result<usize, ApiError> {
    let n = n.unwrap_or(0);
    if n > MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid(
            name,
            format!("`{name}` must be in [0, {MAX_TOP_LOGPROBS}], found {n}"),
        ));
    }
    Ok(n as usize)
}

/// The chat's messages: each a known role with text content.
fn messages(v: Option<&Value>) -> Result<Vec<Message>, ApiError> {
    let v = v.ok_or_else(|| ApiError::invalid("messages", "`messages` is required"))?;
    let list = v
        .as_array()
        .ok_or_else(|| wrong("messages", "an array of messages", v))?;
    if list.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let obj = m
            .as_object()
            .ok_or_else(|| wrong(&at, "an object with `role` and `content`", m))?;
        let role = field(obj, "role")
            .ok_or_else(|| ApiError::invalid(&at, format!("`{at}.role` is required")))?;
        let role = role
            .as_str()
            .ok_or_else(|| wrong(&format!("{at}.role"), "a string", role))?;
        let role = match role {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    &format!("{at}.role"),
                    format!(
                        "unknown role `{other}`; expected system, developer, user or assistant"
                    ),
                ))
            }
        };
        let content = field(obj, "content")
            .ok_or_else(|| ApiError::invalid(&at, format!("`{at}.content` is required (text)")))?;
        out.push(Message::new(role, &content_text(content, &at)?));
    }
    Ok(out)
}

/// A message's text: a string, or an array of `{"type": "text", "text": ...}` parts.
fn content_text(v: &Value, at: &str) -> Result<String, ApiError> {
    let name = format!("{at}.content");
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| {
                let text = p
                    .as_object()
                    .filter(|o| o.get("type").and_then(Value::as_str) == Some("text"))
                    .and_then(|o| o.get("text"))
                    .and_then(Value::as_str);
                text.map(str::to_string).ok_or_else(|| {
                    ApiError::invalid(
                        &name,
                        format!("`{name}` parts must be {{\"type\": \"text\", \"text\": string}} (only text is supported)"),
                    )
                })
            })
            .collect(),
        other => Err(wrong(&name, "a string or an array of text parts", other)),
    }
}

/// Parses a `POST /v1/completions` body (`prompt`: a string, an array of strings, an array of
/// token ids, or an array of arrays of token ids).
pub fn completion_request(
    body: &[u8],
    served: &ServedModel,
) -> Result<CompletionRequest, ApiError> {
    let obj = parse_object(body)?;
    let common = common(&obj, served)?;
    let echo = opt_bool(&obj, "echo")?.unwrap_or(false);
    let logprobs = opt_u64(&obj, "logprobs")?
        .map(|n| top_logprobs(Some(n), "logprobs"))
        .transpose()?;
    let prompts = completion_prompts(field(&obj, "prompt"), served)?;
    let mut jobs = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let max_tokens = max_tokens(&obj, served, prompt.ids.len(), echo, 16)?;
        jobs.push(Job {
            prompt,
            max_tokens,
            temperature: common.temperature,
            top_p: common.top_p,
            seed: common.seed,
            stop: common.stop.clone(),
            logprobs,
            echo,
            acting: common.acting.clone(),
        });
    }
    if common.stream && jobs.len() > 1 {
        return Err(ApiError::invalid(
            "stream",
            "streaming takes one prompt; send several prompts without `stream`",
        ));
    }
    Ok(CompletionRequest {
        jobs,
        stream: common.stream,
    })
}

/// Most prompts one completion request may hold.
pub const MAX_PROMPTS: usize = 64;

fn completion_prompts(v: Option<&Value>, served: &ServedModel) -> Result<Vec<Prompt>, ApiError> {
    const EXPECTED: &str =
        "a string, an array of strings, an array of token ids or an array of arrays of token ids";
    let v = v.ok_or_else(|| ApiError::invalid("prompt", "`prompt` is required"))?;
    let list: Vec<&Value> = match v {
        Value::String(_) => vec![v],
        Value::Array(items) if items.first().is_some_and(Value::is_number) => vec![v],
        Value::Array(items) if !items.is_empty() => items.iter().collect(),
        Value::Array(_) => return Err(ApiError::invalid("prompt", "`prompt` must not be empty")),
        other => return Err(wrong("prompt", EXPECTED, other)),
    };
    if list.len() > MAX_PROMPTS {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "at most {MAX_PROMPTS} prompts per request, found {}",
                list.len()
            ),
        ));
    }
    list.into_iter()
        .map(|p| {
            let ids = match p {
                Value::String(s) => served.encode_raw(s).map_err(|e| {
                    ApiError::invalid("prompt", format!("cannot tokenize the prompt: {e}"))
                })?,
                Value::Array(ids) => token_ids(ids, served.vocab, "prompt")?,
                other => return Err(wrong("prompt", EXPECTED, other)),
            };
            if ids.is_empty() {
                return Err(ApiError::invalid(
                    "prompt",
                    "the prompt encodes to no tokens",
                ));
            }
            let evidence = vec![true; ids.len()];
            Ok(Prompt { ids, evidence })
        })
        .collect()
}

/// Token ids from a JSON array, each inside the vocabulary.
pub fn token_ids(items: &[Value], vocab: usize, name: &str) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .map(|t| match t.as_u64() {
            Some(id) if (id as usize) < vocab => Ok(id as u32),
            Some(id) => Err(ApiError::invalid(
                name,
                format!("token id {id} is outside the vocabulary (size {vocab})"),
            )),
            None => Err(wrong(name, "token ids (non-negative integers)", t)),
        })
        .collect()
}

/// The text to inspect in a `POST /v1/guard/inspect` body: `messages` (a chat, rendered as for
/// chat completions) or `prompt` (raw text).
pub fn inspect_request(body: &[u8], served: &ServedModel) -> Result<Prompt, ApiError> {
    prompt_of(&parse_object(body)?, served)
}

/// The prompt a parsed body names by `messages` (a chat) or `prompt` (raw text), within the
/// model's context.
pub fn prompt_of(obj: &Map<String, Value>, served: &ServedModel) -> Result<Prompt, ApiError> {
    let prompt = inspect_prompt(obj, served)?;
    if prompt.ids.len() > served.context {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "the prompt is {} tokens; the model's context is {}",
                prompt.ids.len(),
                served.context
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(prompt)
}

fn inspect_prompt(obj: &Map<String, Value>, served: &ServedModel) -> Result<Prompt, ApiError> {
    match (field(obj, "messages"), field(obj, "prompt")) {
        (Some(m), None) => served
            .chat_prompt(&messages(Some(m))?)
            .map_err(|e| ApiError::invalid("messages", format!("cannot render the chat: {e}"))),
        (None, Some(Value::String(s))) => {
            let ids = served
                .encode_raw(s)
                .map_err(|e| ApiError::invalid("prompt", format!("cannot tokenize: {e}")))?;
            if ids.is_empty() {
                return Err(ApiError::invalid(
                    "prompt",
                    "the prompt encodes to no tokens",
                ));
            }
            Ok(Prompt {
                evidence: vec![true; ids.len()],
                ids,
            })
        }
        (None, Some(other)) => Err(wrong("prompt", "a string", other)),
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "prompt",
            "give `messages` or `prompt`, not both",
        )),
        (None, None) => Err(ApiError::invalid(
            "messages",
            "`messages` (a chat) or `prompt` (text) is required",
        )),
    }
}
