//! Training and evaluation text for SAEs: plain text files, WMDP question files restricted to the
//! canonical `selection` split, MMLU-style JSONL, and fixed-length token rows cut from them.
//!
//! The WMDP split rule (`../shared/data/splits/wmdp-*.json`): a question belongs to `selection` iff
//! the first hex digit of sha256 of its UTF-8 question text is 0–7; otherwise it is `heldout` and
//! nothing fitted may ever see it.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::model::Tokenizer;
use crate::{Error, Result};

/// Which part of the canonical WMDP split a question is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WmdpSplit {
    /// May be used to fit (feature selection, SAE training).
    Selection,
    /// Evaluation only.
    Heldout,
}

/// The split of a WMDP question: `Selection` iff sha256(question) starts with hex digit 0–7.
pub fn wmdp_split(question: &str) -> WmdpSplit {
    let digest = Sha256::digest(question.as_bytes());
    if digest[0] >> 4 < 8 {
        WmdpSplit::Selection
    } else {
        WmdpSplit::Heldout
    }
}

#[derive(serde::Deserialize)]
struct Question {
    question: String,
    choices: Vec<String>,
}

/// A multiple-choice question as text: the question, then one choice per line.
fn question_text(q: &Question) -> String {
    let mut s = q.question.clone();
    for c in &q.choices {
        s.push('\n');
        s.push_str(c);
    }
    s
}

/// The questions of a WMDP JSON file (a list of `{question, choices, answer}`) in `split`, as
/// text (question + choices), in file order.
pub fn read_wmdp(path: &Path, split: WmdpSplit) -> Result<Vec<String>> {
    let raw = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let qs: Vec<Question> = serde_json::from_str(&raw)
        .map_err(|e| Error::format(path, "WMDP questions", "a JSON list", e.to_string()))?;
    Ok(qs
        .iter()
        .filter(|q| wmdp_split(&q.question) == split)
        .map(question_text)
        .collect())
}

/// Every question of an MMLU-style JSONL file (one `{question, choices, ...}` per line) as text.
pub fn read_jsonl_questions(path: &Path) -> Result<Vec<String>> {
    let raw = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    raw.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let q: Question = serde_json::from_str(l).map_err(|e| {
                Error::format(path, format!("line {}", i + 1), "a question", e.to_string())
            })?;
            Ok(question_text(&q))
        })
        .collect()
}

/// The documents of a file, by extension: `.json` is a WMDP question file (selection split only),
/// `.jsonl` a file of questions (all of them), anything else one plain UTF-8 document.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => read_wmdp(path, WmdpSplit::Selection),
        Some("jsonl") => read_jsonl_questions(path),
        _ => Ok(vec![
            std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?
        ]),
    }
}

/// Tokenises `docs` (no BOS), joins them with EOS (when the tokenizer has one) and cuts the stream
/// into rows of exactly `ctx` tokens; the incomplete tail is dropped.
pub fn token_rows(tokenizer: &Tokenizer, docs: &[String], ctx: usize) -> Result<Vec<Vec<u32>>> {
    if ctx < 2 {
        return Err(Error::Invalid(format!("context {ctx} is below 2 tokens")));
    }
    let mut stream = Vec::new();
    for d in docs {
        stream.extend(tokenizer.encode(d, false)?);
        stream.extend(tokenizer.eos_id());
    }
    Ok(stream.chunks_exact(ctx).map(<[u32]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_the_first_hex_digit() {
        // sha256("abc") = ba7816bf… → 'b' → heldout; sha256("") = e3b0c442… → heldout;
        // sha256("a") = ca978112… → heldout; sha256("b") = 3e23e816… → selection.
        assert_eq!(wmdp_split("abc"), WmdpSplit::Heldout);
        assert_eq!(wmdp_split(""), WmdpSplit::Heldout);
        assert_eq!(wmdp_split("b"), WmdpSplit::Selection);
    }
}
