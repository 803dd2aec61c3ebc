//! Question–answer pairs (TOFU): the forget/retain sets and their `_perturbed` variants used for
//! the truth ratio. Not multiple choice: each record has one reference answer, and the perturbed
//! files add a paraphrase and wrong answers.

use std::path::Path;

use serde_json::Value;

use super::format::{found, str_field, DataFile};
use super::Split;
use crate::Result;

/// One question with its answer and, in TOFU's `_perturbed` files, the alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct QaItem {
    /// Index in its file (records in order, from 0).
    pub index: usize,
    /// The question.
    pub question: String,
    /// The reference answer.
    pub answer: String,
    /// The question reworded (`paraphrased_question`), if given.
    pub paraphrased_question: Option<String>,
    /// The answer reworded (`paraphrased_answer`), if given.
    pub paraphrased_answer: Option<String>,
    /// Wrong answers in the same style (`perturbed_answer`); empty if not given.
    pub perturbed_answers: Vec<String>,
}

impl QaItem {
    /// The question, a newline and the answer: the text of a pair read as a document.
    pub fn body(&self) -> String {
        format!("{}\n{}", self.question, self.answer)
    }
}

/// The question–answer pairs of a JSON list or JSONL file (`{question, answer, …}`) in `split`.
pub fn read_qa(path: &Path, split: Split) -> Result<Vec<QaItem>> {
    qa_items(&DataFile::read(path)?, split)
}

/// The pairs of `file`, restricted to `split`.
pub(crate) fn qa_items(file: &DataFile, split: Split) -> Result<Vec<QaItem>> {
    let mut items = Vec::new();
    for (index, r) in file.json_records()?.iter().enumerate() {
        let optional = |name: &str| -> Result<Option<String>> {
            match r.value.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_str().map(|s| Some(s.to_string())).ok_or_else(|| {
                    file.error(&format!("{}: {name}", r.at), "a string", found(Some(v)))
                }),
            }
        };
        let perturbed_answers = match r.value.get("perturbed_answer") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(v) => v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_str().map(String::from))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    file.error(
                        &format!("{}: perturbed_answer", r.at),
                        "a list of strings",
                        found(Some(v)),
                    )
                })?,
        };
        let item = QaItem {
            index,
            question: str_field(file, r, "question")?,
            answer: str_field(file, r, "answer")?,
            paraphrased_question: optional("paraphrased_question")?,
            paraphrased_answer: optional("paraphrased_answer")?,
            perturbed_answers,
        };
        if split.contains(&item.question) {
            items.push(item);
        }
    }
    Ok(items)
}
