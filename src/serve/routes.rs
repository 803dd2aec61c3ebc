//! The router: every route, the API-key and metrics layers, and the small endpoints (models,
//! health, metrics, tokenizer, guard inspection, playground).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::completions::{chat_completions, completions};
use super::error::ApiError;
use super::protocol::{self, kind_of, token_ids};
use super::AppState;

/// The playground page (plain HTML and JavaScript).
const PLAYGROUND: &str = include_str!("playground.html");

/// Every route, behind the API-key check (all but `/health` and `/`) and the metrics layer.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.body_limit;
    Router::new()
        .route("/", get(|| async { Html(PLAYGROUND) }))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/guard/inspect", post(inspect))
        .route("/v1/guardrails", get(guardrails))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/tokenizer_info", get(tokenizer_info))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "no such route; see GET /v1/models, POST /v1/chat/completions, POST /v1/completions",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "this route does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        // Bodies up to 4x the limit are read to the end and then refused (413), so the client
        // reads the answer instead of a reset connection; past that the read stops.
        .layer(DefaultBodyLimit::max(body_limit.saturating_mul(4)))
        .with_state(state)
}

/// Counts every request by route and status, with its latency.
async fn record(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let start = Instant::now();
    let response = next.run(req).await;
    state.metrics.request(
        &route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

async fn authorize(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let open = matches!(req.uri().path(), "/" | "/health");
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|h| h.as_bytes());
    if open || state.keys.allows(header) {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// The body's bytes, or the OpenAI-shaped error for a body that could not be read or is past the
/// server's limit (413).
pub fn body_bytes(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "request body is larger than the server's limit of {} bytes",
                state.body_limit
            ),
        )
    };
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::new(
                e.status(),
                "invalid_request_error",
                format!("cannot read the request body: {}", e.body_text()),
            )
        }
    })?;
    if bytes.len() > state.body_limit {
        return Err(too_large());
    }
    Ok(bytes)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let alive = state.engine.alive();
    let status = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Json(json!({
        "status": if alive { "ok" } else { "unavailable" },
        "model": state.served.id,
        "guardrails": state.served.guard_names(),
        "queued": state.engine.queued(),
    }));
    (status, body).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state
        .metrics
        .render(state.engine.queued(), &state.served.guard_names());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.served.id,
            "object": "model",
            "created": 0,
            "owned_by": "dsg",
            "max_model_len": state.served.context,
            "guardrails": state.served.guards,
        }],
    }))
}

async fn guardrails(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "guardrails": state.served.guards }))
}

async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let obj = protocol::parse_object(&body_bytes(&state, body)?)?;
    let tok = &state.served.lm.tokenizer;
    let add_special = match obj.get("add_special_tokens") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::invalid(
                "add_special_tokens",
                format!(
                    "`add_special_tokens` must be a boolean, found {}",
                    kind_of(other)
                ),
            ))
        }
    };
    let tokens = match (obj.get("prompt"), obj.get("messages")) {
        (Some(Value::String(text)), None) => tok
            .encode(text, add_special && tok.adds_bos())
            .map_err(|e| ApiError::invalid("prompt", format!("cannot tokenize: {e}")))?,
        (None, Some(_)) => protocol::prompt_of(&obj, &state.served)?.ids,
        (Some(other), None) => {
            return Err(ApiError::invalid(
                "prompt",
                format!("`prompt` must be a string, found {}", kind_of(other)),
            ))
        }
        _ => {
            return Err(ApiError::invalid(
                "prompt",
                "give `prompt` (text) or `messages` (a chat), one of them",
            ))
        }
    };
    Ok(Json(json!({
        "count": tokens.len(),
        "max_model_len": state.served.context,
        "tokens": tokens,
    })))
}

async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let obj = protocol::parse_object(&body_bytes(&state, body)?)?;
    let ids = match obj.get("tokens") {
        Some(Value::Array(items)) => token_ids(items, state.served.vocab, "tokens")?,
        Some(other) => {
            return Err(ApiError::invalid(
                "tokens",
                format!(
                    "`tokens` must be an array of token ids, found {}",
                    kind_of(other)
                ),
            ))
        }
        None => return Err(ApiError::invalid("tokens", "`tokens` is required")),
    };
    let prompt = state
        .served
        .lm
        .tokenizer
        .decode(&ids, false)
        .map_err(|e| ApiError::invalid("tokens", format!("cannot decode: {e}")))?;
    Ok(Json(json!({ "prompt": prompt })))
}

async fn tokenizer_info(State(state): State<Arc<AppState>>) -> Json<Value> {
    let tok = &state.served.lm.tokenizer;
    let text = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    Json(json!({
        "eos_token": text(tok.eos_id()),
        "bos_token": text(tok.bos_id()),
        "pad_token": text(tok.pad_id()),
        "chat_template": tok.chat_template(),
        "add_bos_token": tok.adds_bos(),
        "model_max_length": state.served.context,
        "vocab_size": state.served.vocab,
    }))
}

async fn inspect(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let prompt = protocol::inspect_request(&body_bytes(&state, body)?, &state.served)?;
    let tok = &state.served.lm.tokenizer;
    let tokens: Vec<Value> = prompt
        .ids
        .iter()
        .zip(&prompt.evidence)
        .map(|(&id, &e)| {
            json!({
                "id": id,
                "text": tok.decode(&[id], false).unwrap_or_default(),
                "evidence": e,
            })
        })
        .collect();
    let results = state.engine.inspect(prompt).await?;
    let guards: Vec<Value> = state
        .served
        .guards
        .iter()
        .zip(results)
        .map(|(info, r)| {
            json!({
                "name": info.name,
                "mandatory": info.mandatory,
                "intervention": info.intervention,
                "threshold": info.threshold,
                "score": r.score,
                "fired": r.fired,
                "features": info.features,
                "active_features": r.features,
            })
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens, "guardrails": guards })))
}
