//! Tokenizer and chat template: a `tokenizers` BPE (from `tokenizer.json` or rebuilt from GGUF metadata)
//! plus the model's Jinja chat template rendered with minijinja.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with the given role.
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A tokenizer with its special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    chat_template: Option<String>,
    add_bos: bool,
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: {e}", path.display()))
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer with its special ids and template.
    pub fn new(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        pad: Option<u32>,
        chat_template: Option<String>,
        add_bos: bool,
    ) -> Self {
        Tokenizer {
            inner,
            bos,
            eos,
            pad,
            chat_template,
            add_bos,
        }
    }

    /// Builds from a `tokenizer.json` value (e.g. rebuilt from GGUF metadata); `path` names the source in errors.
    pub fn from_json_value(
        value: &serde_json::Value,
        path: &Path,
    ) -> Result<tokenizers::Tokenizer> {
        let text = value.to_string();
        text.parse::<tokenizers::Tokenizer>()
            .map_err(|e| tok_err(path, e))
    }

    /// Loads `tokenizer.json` and, if present, `tokenizer_config.json` (special tokens, chat template,
    /// whether BOS is prepended) from a Hugging Face model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::missing(dir, "tokenizer.json"));
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| tok_err(&path, e))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            serde_json::from_str(&text)
                .map_err(|e| Error::format(&cfg_path, "(root)", "valid JSON", e.to_string()))?
        } else {
            serde_json::Value::Null
        };
        let token_id = |key: &str| -> Option<u32> {
            let v = cfg.get(key)?;
            let s = v
                .as_str()
                .or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            inner.token_to_id(s)
        };
        let mut chat_template = cfg
            .get("chat_template")
            .and_then(|v| v.as_str())
            .map(String::from);
        let jinja = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja.exists() {
            chat_template =
                Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?);
        }
        let bos = token_id("bos_token");
        let add_bos = cfg
            .get("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Ok(Tokenizer {
            bos,
            eos: token_id("eos_token"),
            pad: token_id("pad_token"),
            chat_template,
            add_bos: add_bos && bos.is_some(),
            inner,
        })
    }

    /// Encodes `text`; special-token strings in it (e.g. `<|im_start|>`) become their ids. Prepends BOS
    /// when `add_bos` and the model has one.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            if let Some(b) = self.bos {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes ids to text, optionally dropping special tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The text of one token.
    pub fn token_str(&self, id: u32) -> String {
        self.decode(&[id], false)
            .unwrap_or_else(|_| format!("<{id}>"))
    }

    /// Number of ids the tokenizer can produce (including added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Beginning-of-sequence id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Padding id.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Whether the model expects BOS before plain text (tokenizer_config `add_bos_token`).
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The vocabulary entry of an id, as stored (byte-level symbols such as `Ġ` included).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token string, if it is one token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders `messages` with the model's chat template (Jinja, as transformers does).
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::Invalid("this tokenizer has no chat template".into()))?;
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        let tmpl = env
            .template_from_str(template)
            .map_err(|e| Error::Invalid(format!("chat template does not parse: {e}")))?;
        let tok = |id: Option<u32>| id.map(|i| self.token_str(i)).unwrap_or_default();
        let ctx = minijinja::context! {
            messages => minijinja::value::Serde(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => tok(self.bos),
            eos_token => tok(self.eos),
        };
        tmpl.render(ctx)
            .map_err(|e| Error::Invalid(format!("chat template failed: {e}")))
    }

    /// Encodes a chat: the rendered template, with no extra BOS (templates that want one write it).
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }
}
