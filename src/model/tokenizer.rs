//! Tokenizer and chat template: a `tokenizers` BPE (from `tokenizer.json` or rebuilt from GGUF metadata)
//! plus the model's Jinja chat template rendered with minijinja.

use std::path::Path;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message's text, as the chat template receives it.
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
    /// `inner` with special-token matching off, built on first need: it encodes message content.
    plain: OnceLock<tokenizers::Tokenizer>,
    /// Texts of the special (control) tokens, e.g. `<|im_start|>`.
    control: Vec<String>,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    chat_template: Option<String>,
    add_bos: bool,
}

/// Marks where message `i` goes when the template is rendered with placeholders: private-use
/// characters around a counter, text no template writes itself.
const MARK: char = '\u{F8FF}';

fn placeholder(i: usize) -> String {
    format!("{MARK}dsg-message-{i}{MARK}")
}

/// A piece of a rendered chat: template text, or the content of message `i`.
enum Piece<'a> {
    Template(&'a str),
    Content(usize),
}

/// How a template inserts a message's content: as it is, or trimmed.
type Inserted = fn(&str) -> &str;

/// [`Piece`] with its template text owned.
enum OwnedPiece {
    Template(String),
    Content(usize),
}

/// A chat's ids with, per id, the message whose content it encodes ([`Tokenizer::encode_chat_sources`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatEncoding {
    /// The ids, as [`Tokenizer::encode_chat`] gives them.
    pub ids: Vec<u32>,
    /// Per id, the index of the message whose content it encodes; `None` for template text.
    pub source: Vec<Option<usize>>,
}

impl ChatEncoding {
    /// Per id, whether it encodes the content of a message whose role is `role` (say `"user"`).
    pub fn written_by(&self, messages: &[Message], role: &str) -> Vec<bool> {
        self.source
            .iter()
            .map(|s| s.is_some_and(|i| messages.get(i).is_some_and(|m| m.role == role)))
            .collect()
    }
}

/// Splits a chat rendered with [`placeholder`]s into template text and message slots.
fn split_placeholders(rendered: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = rendered;
    while let Some(start) = rest.find(MARK) {
        let after = &rest[start + MARK.len_utf8()..];
        let slot = after.find(MARK).and_then(|end| {
            let i = after[..end].strip_prefix("dsg-message-")?.parse().ok()?;
            Some((i, &after[end + MARK.len_utf8()..]))
        });
        let Some((i, tail)) = slot else { break };
        pieces.push(Piece::Template(&rest[..start]));
        pieces.push(Piece::Content(i));
        rest = tail;
    }
    pieces.push(Piece::Template(rest));
    pieces
}

/// Checks a parsed `tokenizer.json` for the problems the `tokenizers` library reports only as
/// "data did not match any variant of untagged enum", and names them.
fn check_tokenizer_json(v: &serde_json::Value, path: &Path) -> Result<()> {
    const KINDS: &str = "BPE, WordPiece, WordLevel or Unigram";
    let model = v.get("model").filter(|m| m.is_object()).ok_or_else(|| {
        Error::missing(
            path,
            format!("object `model` (the tokenization model: {KINDS})"),
        )
    })?;
    if let Some(kind) = model.get("type") {
        let known = ["BPE", "WordPiece", "WordLevel", "Unigram"];
        if !kind.as_str().is_some_and(|k| known.contains(&k)) {
            return Err(Error::format(path, "model.type", KINDS, kind.to_string()));
        }
    }
    if model.get("vocab").is_none_or(|v| v.is_null()) {
        return Err(Error::missing(path, "`model.vocab` (the token vocabulary)"));
    }
    Ok(())
}

/// Parses a `tokenizer.json` text already checked by [`check_tokenizer_json`].
fn parse_tokenizer(text: &str, path: &Path) -> Result<tokenizers::Tokenizer> {
    text.parse::<tokenizers::Tokenizer>().map_err(|e| {
        Error::format(
            path,
            "(tokenizer)",
            "a tokenizer.json the `tokenizers` library can read",
            e.to_string(),
        )
    })
}

/// The template of a model that has none (a base model such as Gemma-3-270M): BOS when the
/// tokenizer adds one, the messages' contents joined by blank lines, and a newline for the
/// generation prompt — plain text, as a base model is prompted.
pub const PLAIN_TEMPLATE: &str = "{% if add_bos_token %}{{ bos_token }}{% endif %}{% for message in \
    messages %}{% if not loop.first %}{{ '\\n\\n' }}{% endif %}{{ message['content'] }}{% endfor %}{% if \
    add_generation_prompt %}{{ '\\n' }}{% endif %}";

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
        let control = inner
            .get_added_tokens_decoder()
            .into_values()
            .filter(|t| t.special && !t.content.is_empty())
            .map(|t| t.content)
            .collect();
        Tokenizer {
            inner,
            plain: OnceLock::new(),
            control,
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
        check_tokenizer_json(value, path)?;
        parse_tokenizer(&value.to_string(), path)
    }

    /// Loads `tokenizer.json` and, if present, `tokenizer_config.json` (special tokens, chat template,
    /// whether BOS is prepended) from a Hugging Face model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::missing(dir, "tokenizer.json"));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&path, "(root)", "valid JSON", e.to_string()))?;
        check_tokenizer_json(&value, &path)?;
        let inner = parse_tokenizer(&text, &path)?;
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
        let (eos, pad) = (token_id("eos_token"), token_id("pad_token"));
        Ok(Self::new(
            inner,
            bos,
            eos,
            pad,
            chat_template,
            add_bos && bos.is_some(),
        ))
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

    /// [`Self::encode`] without BOS, with, per id, whether it encodes text inside one of the byte
    /// ranges `spans` of `text` (say, the question inside a prompt's fixed wording).
    pub fn encode_marked(
        &self,
        text: &str,
        spans: &[std::ops::Range<usize>],
    ) -> Result<(Vec<u32>, Vec<bool>)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let marks = enc
            .get_offsets()
            .iter()
            .map(|&(start, end)| {
                spans
                    .iter()
                    .any(|r| start < r.end && r.start < end.max(start + 1))
            })
            .collect();
        Ok((enc.get_ids().to_vec(), marks))
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

    /// The bytes one token stands for: exact even for a token that holds part of a UTF-8
    /// character (which [`Self::token_str`] can only show as U+FFFD). Byte-level vocabularies
    /// (GPT-2's alphabet) map back through it; SentencePiece pieces turn `▁` into a space and
    /// `<0xNN>` into the byte.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(piece) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        if self.byte_level() {
            if let Some(bytes) = piece.chars().map(byte_level_byte).collect() {
                return bytes;
            }
        }
        if let Some(hex) = piece.strip_prefix("<0x").and_then(|r| r.strip_suffix('>')) {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                return vec![b];
            }
        }
        piece.replace('\u{2581}', " ").into_bytes()
    }

    /// Whether the decoder maps byte-level symbols (GPT-2's alphabet) back to bytes.
    fn byte_level(&self) -> bool {
        use tokenizers::decoders::DecoderWrapper as D;
        fn has(d: &D) -> bool {
            match d {
                D::ByteLevel(_) => true,
                D::Sequence(s) => s.get_decoders().iter().any(has),
                _ => false,
            }
        }
        self.inner.get_decoder().is_some_and(has)
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

    /// The token every sequence cut from a text stream should start with: BOS when the model's
    /// tokenizer adds one (Gemma), else `None` (SmolLM2).
    pub fn leading_bos(&self) -> Option<u32> {
        self.bos.filter(|_| self.add_bos)
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

    /// Renders `messages` with the model's chat template (Jinja, as transformers does), or, for a
    /// model without one (a base model), [`PLAIN_TEMPLATE`].
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.chat_template.as_deref().unwrap_or(PLAIN_TEMPLATE);
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
            add_bos_token => self.add_bos,
        };
        tmpl.render(ctx)
            .map_err(|e| Error::Invalid(format!("chat template failed: {e}")))
    }

    /// Encodes a chat: the rendered template, with no extra BOS (templates that want one write it).
    ///
    /// Only the template inserts control tokens: control-token text typed inside a message (say
    /// `<|im_end|>\n<|im_start|>assistant`) is encoded as plain text, so no one can forge a turn. A chat
    /// whose messages hold no such text encodes exactly as its rendered text does.
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        if !self.forged(messages) {
            return self.encode(&text, false);
        }
        Ok(self
            .encode_chat_guarded(messages, add_generation_prompt, &text)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// [`Self::encode_chat`] with, per id, the message whose content it encodes (`None`: the
    /// template's own text), so that a gate can count what a user wrote and not what the template
    /// adds. The ids are those of [`Self::encode_chat`]. A token that spans template text and a
    /// content is attributed to the content.
    pub fn encode_chat_sources(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<ChatEncoding> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        let layout = self.layout(messages, add_generation_prompt, &text)?;
        let tokens: Vec<(u32, (usize, usize))> = if self.forged(messages) {
            self.encode_chat_guarded(messages, add_generation_prompt, &text)?
        } else {
            let enc = self
                .inner
                .encode(text.as_str(), false)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            enc.get_ids()
                .iter()
                .copied()
                .zip(enc.get_offsets().iter().copied())
                .collect()
        };
        let source = tokens
            .iter()
            .map(|&(_, (start, end))| {
                layout
                    .iter()
                    .find(|(_, r)| start < r.end && r.start < end.max(start + 1))
                    .map(|(i, _)| *i)
            })
            .collect();
        Ok(ChatEncoding {
            ids: tokens.into_iter().map(|(id, _)| id).collect(),
            source,
        })
    }

    /// Whether any message holds control-token text.
    fn forged(&self, messages: &[Message]) -> bool {
        messages
            .iter()
            .any(|m| self.control.iter().any(|c| m.content.contains(c.as_str())))
    }

    /// Where each message's content lies in `text` (the chat as rendered): renders the template
    /// with placeholders, and checks that the contents are inserted as they are or trimmed
    /// (Gemma); any other transformation is refused, since the contents could not be told apart
    /// from the template.
    fn layout(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        text: &str,
    ) -> Result<Vec<(usize, std::ops::Range<usize>)>> {
        let (pieces, content) = self.pieces(messages, add_generation_prompt, text)?;
        let mut at = 0;
        let mut ranges = Vec::new();
        for piece in &pieces {
            let len = match piece {
                OwnedPiece::Template(t) => t.len(),
                OwnedPiece::Content(i) => {
                    let c = content(&messages[*i].content).len();
                    ranges.push((*i, at..at + c));
                    c
                }
            };
            at += len;
        }
        Ok(ranges)
    }

    /// The chat rendered with placeholders, split into template text and message slots, and how
    /// the template inserts a content (as it is, or trimmed).
    fn pieces(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        text: &str,
    ) -> Result<(Vec<OwnedPiece>, Inserted)> {
        let untracked = |why: &str| {
            Error::Unsupported(format!(
                "the chat template {why}, so dsg cannot tell the messages' text from the \
                 template's (needed to keep control-token text in a message from acting as \
                 control tokens, and to gate on what the user wrote)"
            ))
        };
        if messages.iter().any(|m| m.content.contains(MARK)) {
            return Err(untracked("cannot be split around contents holding U+F8FF"));
        }
        let marked: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message::new(&m.role, &placeholder(i)))
            .collect();
        let rendered = self.apply_chat_template(&marked, add_generation_prompt)?;
        let pieces: Vec<OwnedPiece> = split_placeholders(&rendered)
            .into_iter()
            .map(|p| match p {
                Piece::Template(t) => OwnedPiece::Template(t.to_string()),
                Piece::Content(i) => OwnedPiece::Content(i),
            })
            .collect();
        let rebuild = |content: fn(&str) -> &str| -> String {
            pieces
                .iter()
                .map(|p| match p {
                    OwnedPiece::Template(t) => t.as_str(),
                    OwnedPiece::Content(i) => messages.get(*i).map_or("", |m| content(&m.content)),
                })
                .collect()
        };
        // Templates insert the content as it is, or trimmed (Gemma); anything else is not tracked.
        let content: fn(&str) -> &str = if rebuild(|c| c) == text {
            |c| c
        } else if rebuild(str::trim) == text {
            str::trim
        } else {
            return Err(untracked("transforms message contents"));
        };
        if pieces
            .iter()
            .any(|p| matches!(p, OwnedPiece::Content(i) if *i >= messages.len()))
        {
            return Err(untracked("writes a message slot that does not exist"));
        }
        Ok((pieces, content))
    }

    /// [`Self::encode_chat`] for messages that contain control-token text: keeps the control tokens
    /// of the template text, and encodes everything between them (template text and contents
    /// together, as the tokenizer would) with special-token matching off. Each id comes with its
    /// byte span in `text`.
    fn encode_chat_guarded(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        text: &str,
    ) -> Result<Vec<(u32, (usize, usize))>> {
        let (pieces, content) = self.pieces(messages, add_generation_prompt, text)?;
        let mut out = Vec::new();
        let mut pending = String::new();
        // Byte position in `text` of the start of `pending`, and of the current piece.
        let mut pending_at = 0;
        let mut at = 0;
        for piece in &pieces {
            match piece {
                OwnedPiece::Content(i) => {
                    let c = content(&messages[*i].content);
                    pending.push_str(c);
                    at += c.len();
                }
                OwnedPiece::Template(t) => {
                    let enc = self
                        .inner
                        .encode(t.as_str(), false)
                        .map_err(|e| Error::Tokenizer(e.to_string()))?;
                    let mut done = 0;
                    for (&id, &(start, end)) in enc.get_ids().iter().zip(enc.get_offsets()) {
                        if self.is_control(id) {
                            pending.push_str(&t[done..start]);
                            out.extend(self.encode_plain(&pending, pending_at)?);
                            pending.clear();
                            out.push((id, (at + start, at + end)));
                            done = end;
                            pending_at = at + end;
                        }
                    }
                    pending.push_str(&t[done..]);
                    at += t.len();
                }
            }
        }
        out.extend(self.encode_plain(&pending, pending_at)?);
        Ok(out)
    }

    /// Whether `id` is a special (control) token.
    fn is_control(&self, id: u32) -> bool {
        self.inner
            .id_to_token(id)
            .is_some_and(|t| self.control.contains(&t))
    }

    /// Encodes `text` with special-token matching off (`<|im_end|>` in it becomes ordinary
    /// tokens); each id with its byte span, shifted by `at`.
    fn encode_plain(&self, text: &str, at: usize) -> Result<Vec<(u32, (usize, usize))>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let plain = self.plain.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        let enc = plain
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc
            .get_ids()
            .iter()
            .zip(enc.get_offsets())
            .map(|(&id, &(s, e))| (id, (at + s, at + e)))
            .collect())
    }
}

/// The byte a GPT-2 byte-level symbol stands for: printable bytes (`!`..`~`, `¡`..`¬`,
/// `®`..`ÿ`) map to themselves, the other 68 bytes in order to U+0100 onwards.
fn byte_level_byte(c: char) -> Option<u8> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let code = c as u32;
    if code < 256 {
        return printable(code).then_some(code as u8);
    }
    let n = (code - 256) as usize;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(n)
        .map(|b| b as u8)
}
