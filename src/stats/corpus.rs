//! Corpora → fixed-length token rows, as the reference builds its scoring data (§1.2 of the spec),
//! and the MCQ prompts used to evaluate and gate questions (§5.1).
//!
//! Documents come from plain text (one document per line, as HF `wikitext` rows), JSONL (a `text`
//! field per line), JSON (a list of strings or `{text}` objects), or MCQ files: the WMDP JSON list
//! `{question, choices, answer}` and MMLU-Redux JSONL `{subject, question, choices, answer}`,
//! turned into text as the question followed by lettered choices. MCQ files can be restricted to
//! the canonical WMDP split ([`McqSplit`]): a question is in `selection` iff the first hex digit of
//! sha256 of its UTF-8 text is 0–7.
//!
//! Rows ([`build_rows`]): keep documents longer than 50 characters; optionally draw a seeded
//! sample of them; join with the EOS token's text; cut into 20 equal character chunks and tokenise
//! each (BOS prepended where the tokenizer adds one, as Gemma's does); concatenate; cut into rows
//! of `ctx` tokens (the tail is dropped); set position 0 of every row to BOS; shuffle the rows with
//! the seed. [`equalize`] then keeps the same number of forget and retain rows, scaled by the data
//! fraction.
//!
//! **RNG.** Sampling and shuffling use SplitMix64 ([`SplitMix64`]) with a partial Fisher–Yates
//! draw. The results are deterministic for a seed but are *not* bit-compatible with Python's
//! `random.sample` or `torch.randperm`; the reference's exact rows cannot be reproduced anyway
//! without its gated forget corpus.

use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::{Message, Tokenizer};
use crate::{Error, Result};

/// Documents of at most this many characters are dropped (the reference's filter is `len > 50`).
pub const MIN_DOC_CHARS: usize = 50;
/// The reference tokenises the joined corpus in this many character chunks.
pub const TOKENIZE_CHUNKS: usize = 20;
/// The reference samples at most this many forget documents.
pub const DEFAULT_MAX_DOCS: usize = 1024;
/// The reference's row-count cap before the data fraction.
pub const DEFAULT_MAX_ROWS: usize = 1024;

/// Which part of an MCQ file to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum McqSplit {
    /// Every question.
    #[default]
    All,
    /// Questions whose sha256 starts with hex digit 0–7: the only ones anything may be fitted on.
    Selection,
    /// The other questions, for evaluation only.
    Heldout,
}

impl McqSplit {
    /// Whether `question` belongs to this split.
    pub fn contains(self, question: &str) -> bool {
        let first_byte = Sha256::digest(question.as_bytes())[0];
        match self {
            McqSplit::All => true,
            McqSplit::Selection => first_byte < 0x80,
            McqSplit::Heldout => first_byte >= 0x80,
        }
    }
}

/// One multiple-choice question.
#[derive(Debug, Clone, PartialEq)]
pub struct McqItem {
    /// Index in its file.
    pub index: usize,
    /// MMLU subject, if the file gives one.
    pub subject: Option<String>,
    /// The question text.
    pub question: String,
    /// The answer options, in order.
    pub choices: Vec<String>,
    /// Index of the correct option.
    pub answer: usize,
}

impl McqItem {
    /// The question followed by `A. …`, `B. …` lines (no subject line, no answer).
    pub fn body(&self) -> String {
        let mut text = self.question.clone();
        for (i, c) in self.choices.iter().enumerate() {
            text.push_str(&format!("\n{}. {c}", letter(i)));
        }
        text
    }
}

fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

fn mcq_from_value(index: usize, v: &Value) -> Option<McqItem> {
    let question = v.get("question")?.as_str()?.to_string();
    let choices = v
        .get("choices")?
        .as_array()?
        .iter()
        .map(|c| c.as_str().map(String::from))
        .collect::<Option<Vec<_>>>()?;
    Some(McqItem {
        index,
        subject: v.get("subject").and_then(Value::as_str).map(String::from),
        question,
        choices,
        answer: v.get("answer").and_then(Value::as_u64).unwrap_or(0) as usize,
    })
}

fn json_values(path: &Path, text: &str) -> Result<Vec<Value>> {
    let bad = |e: serde_json::Error| Error::format(path, "file", "JSON or JSONL", e.to_string());
    if path.extension().is_some_and(|e| e == "jsonl") {
        return text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(bad))
            .collect();
    }
    match serde_json::from_str(text).map_err(bad)? {
        Value::Array(items) => Ok(items),
        _ => Err(Error::format(path, "file", "a JSON list", "another value")),
    }
}

/// Reads the MCQ items of a WMDP JSON list or MMLU-Redux JSONL file that fall in `split`.
pub fn load_mcq(path: &Path, split: McqSplit) -> Result<Vec<McqItem>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut items = Vec::new();
    for (i, v) in json_values(path, &text)?.iter().enumerate() {
        let item = mcq_from_value(i, v).ok_or_else(|| {
            Error::format(
                path,
                format!("item {i}"),
                "{question, choices: [strings], answer}",
                v.to_string().chars().take(80).collect::<String>(),
            )
        })?;
        if split.contains(&item.question) {
            items.push(item);
        }
    }
    Ok(items)
}

/// Reads the documents of a text, JSONL or JSON corpus file; MCQ files (items with `question` and
/// `choices`) give one document per question in `split`, as [`McqItem::body`].
pub fn load_documents(path: &Path, split: McqSplit) -> Result<Vec<String>> {
    let is_json = path
        .extension()
        .is_some_and(|e| e == "json" || e == "jsonl");
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if !is_json {
        return Ok(text.lines().map(String::from).collect());
    }
    let values = json_values(path, &text)?;
    if values.first().is_some_and(|v| v.get("question").is_some()) {
        return Ok(load_mcq(path, split)?.iter().map(McqItem::body).collect());
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            _ => v
                .get("text")
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| {
                    Error::format(path, format!("item {i}"), "a string or {text}", "neither")
                }),
        })
        .collect()
}

/// The chat-formatted MCQ prompt of §5.1: "The following are multiple choice questions (with
/// answers) about {subject}." + question + lettered choices as the user message, rendered with the
/// model's chat template (generation prompt on), followed by `Answer: (`. No extra BOS is added.
pub fn mcq_prompt(tokenizer: &Tokenizer, subject: &str, item: &McqItem) -> Result<Vec<u32>> {
    let user = format!(
        "The following are multiple choice questions (with answers) about {}.\n{}",
        subject.replace('_', " "),
        item.body()
    );
    let text = tokenizer.apply_chat_template(&[Message::new("user", &user)], true)?;
    tokenizer.encode(&(text + "Answer: ("), false)
}

/// [`mcq_prompt`] for each item, about `subject` when given, else about the item's own subject
/// (or "general knowledge" when it has none).
pub fn mcq_prompts(
    tokenizer: &Tokenizer,
    items: &[McqItem],
    subject: Option<&str>,
) -> Result<Vec<Vec<u32>>> {
    items
        .iter()
        .map(|q| {
            let s = subject
                .or(q.subject.as_deref())
                .unwrap_or("general knowledge");
            mcq_prompt(tokenizer, s, q)
        })
        .collect()
}

/// A small seeded generator (SplitMix64, Steele et al. 2014): deterministic and portable.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (> 0), by rejection.
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }

    /// Moves a uniform sample of `k` elements (in draw order) to the front of `items` and drops
    /// the rest: a partial Fisher–Yates shuffle. `k ≥ len` shuffles everything.
    pub fn sample<T>(&mut self, items: &mut Vec<T>, k: usize) {
        let k = k.min(items.len());
        for i in 0..k {
            let j = i + self.below(items.len() - i);
            items.swap(i, j);
        }
        items.truncate(k);
    }
}

/// How [`build_rows`] turns documents into rows.
#[derive(Debug, Clone)]
pub struct RowOptions {
    /// Tokens per row (the reference: 1024).
    pub ctx: usize,
    /// Seed of document sampling and row shuffling.
    pub seed: u64,
    /// Sample at most this many documents (forget corpus: 1024); `None` keeps all, in order.
    pub max_docs: Option<usize>,
}

/// Cuts a token stream into rows of `ctx` tokens (dropping the tail), sets position 0 of every row
/// to `bos` when there is one, and shuffles the rows with `seed`.
pub fn rows_from_tokens(tokens: &[u32], ctx: usize, bos: Option<u32>, seed: u64) -> Vec<Vec<u32>> {
    let mut rows: Vec<Vec<u32>> = tokens
        .chunks_exact(ctx.max(1))
        .map(|r| {
            let mut r = r.to_vec();
            if let Some(b) = bos {
                r[0] = b;
            }
            r
        })
        .collect();
    let n = rows.len();
    SplitMix64::new(seed).sample(&mut rows, n);
    rows
}

/// The reference's scoring rows from documents (see the module documentation).
pub fn build_rows(
    tokenizer: &Tokenizer,
    documents: &[String],
    opts: &RowOptions,
) -> Result<Vec<Vec<u32>>> {
    let mut docs: Vec<&String> = documents
        .iter()
        .filter(|d| d.chars().count() > MIN_DOC_CHARS)
        .collect();
    let mut rng = SplitMix64::new(opts.seed);
    if let Some(k) = opts.max_docs {
        rng.sample(&mut docs, k);
    }
    let eos = tokenizer
        .eos_id()
        .map(|e| tokenizer.token_str(e))
        .unwrap_or_default();
    let joined: Vec<char> = docs
        .iter()
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join(&eos)
        .chars()
        .collect();
    let chunk = joined.len().div_ceil(TOKENIZE_CHUNKS).max(1);
    let mut tokens = Vec::new();
    for piece in joined.chunks(chunk) {
        let text: String = piece.iter().collect();
        tokens.extend(tokenizer.encode(&text, tokenizer.adds_bos())?);
    }
    Ok(rows_from_tokens(
        &tokens,
        opts.ctx,
        tokenizer.bos_id(),
        rng.next_u64(),
    ))
}

/// Keeps the first `min(max_rows, |forget|, |retain|) · fraction/100` rows of both corpora (at
/// least one), as the reference does with `dataset_fraction`.
pub fn equalize(
    forget: &mut Vec<Vec<u32>>,
    retain: &mut Vec<Vec<u32>>,
    max_rows: usize,
    fraction_percent: f64,
) -> Result<usize> {
    if forget.is_empty() || retain.is_empty() {
        return Err(Error::Invalid(format!(
            "need rows in both corpora, have {} forget and {} retain (corpora shorter than one row?)",
            forget.len(),
            retain.len()
        )));
    }
    let n = max_rows.min(forget.len()).min(retain.len());
    let n = ((n as f64 * fraction_percent / 100.0).floor() as usize).max(1);
    forget.truncate(n);
    retain.truncate(n);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_have_bos_fixed_length_and_seeded_order() {
        let tokens: Vec<u32> = (10..45).collect();
        let rows = rows_from_tokens(&tokens, 8, Some(1), 3);
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|r| r.len() == 8 && r[0] == 1));
        let mut firsts: Vec<u32> = rows.iter().map(|r| r[1]).collect();
        assert_eq!(rows, rows_from_tokens(&tokens, 8, Some(1), 3));
        assert_ne!(rows, rows_from_tokens(&tokens, 8, Some(1), 4));
        firsts.sort();
        assert_eq!(firsts, vec![11, 19, 27, 35]);
    }

    #[test]
    fn sample_is_a_seeded_subset() {
        let mut v: Vec<u32> = (0..100).collect();
        SplitMix64::new(0).sample(&mut v, 10);
        assert_eq!(v.len(), 10);
        let mut sorted = v.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 10);
    }

    #[test]
    fn equalize_takes_the_fraction_of_the_smaller() {
        let mut f = vec![vec![0u32]; 10];
        let mut r = vec![vec![0u32]; 4];
        assert_eq!(equalize(&mut f, &mut r, 1024, 50.0).unwrap(), 2);
        assert_eq!((f.len(), r.len()), (2, 2));
    }

    #[test]
    fn mcq_body_letters_choices() {
        let item = McqItem {
            index: 0,
            subject: None,
            question: "Q?".into(),
            choices: vec!["x".into(), "y".into()],
            answer: 1,
        };
        assert_eq!(item.body(), "Q?\nA. x\nB. y");
    }
}
