//! Multiple-choice questions from every MCQ format, as one [`McqItem`] type.

use std::path::Path;

use serde_json::Value;

use super::csv;
use super::format::{found, str_field, DataFile, Format, Record};
use super::Split;
use crate::Result;

/// One multiple-choice question.
#[derive(Debug, Clone, PartialEq)]
pub struct McqItem {
    /// Index in its file (records in order, from 0).
    pub index: usize,
    /// The source's own id of the question (ARC's `id`), if it has one.
    pub id: Option<String>,
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
    /// The question followed by `A. …`, `B. …` lines (no subject line, no answer): the text of a
    /// question wherever one is read as a document or put in a prompt.
    pub fn body(&self) -> String {
        let mut text = self.question.clone();
        for (i, c) in self.choices.iter().enumerate() {
            text.push_str(&format!("\n{}. {c}", letter(i)));
        }
        text
    }
}

/// MMLU subjects about biology or medicine: the hard negatives of a biology guardrail.
pub const MMLU_BIO_SUBJECTS: [&str; 9] = [
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "high_school_biology",
    "medical_genetics",
    "nutrition",
    "professional_medicine",
    "virology",
];

/// The letter of option `i` (`A` for 0).
pub fn letter(i: usize) -> char {
    char::from(b'A' + (i % 26) as u8)
}

/// The questions of an MCQ file in `split`, its format detected ([`Format::detect`]).
pub fn read_mcq(path: &Path, split: Split) -> Result<Vec<McqItem>> {
    let file = DataFile::read(path)?;
    let format = file.detect()?;
    mcq_items(&file, format, split)
}

/// The questions of an MCQ file in `split`, read as `format`.
pub fn read_mcq_as(path: &Path, format: Format, split: Split) -> Result<Vec<McqItem>> {
    mcq_items(&DataFile::read(path)?, format, split)
}

/// The questions of `file` as `format`, restricted to `split`.
pub(crate) fn mcq_items(file: &DataFile, format: Format, split: Split) -> Result<Vec<McqItem>> {
    let items = match format {
        Format::MmluCsv => mmlu_csv(file)?,
        Format::McqJson | Format::Arc | Format::TofuOptions => {
            let read = match format {
                Format::McqJson => mcq_json,
                Format::Arc => arc,
                _ => tofu_options,
            };
            file.json_records()?
                .iter()
                .enumerate()
                .map(|(i, r)| read(file, i, r))
                .collect::<Result<Vec<_>>>()?
        }
        other => {
            return Err(file.error(
                "file",
                "a multiple-choice format (mcq-json, mmlu-csv, arc, tofu-options)",
                other.name(),
            ))
        }
    };
    Ok(items
        .into_iter()
        .filter(|q| split.contains(&q.question))
        .collect())
}

fn string_list(file: &DataFile, r: &Record, name: &str) -> Result<Vec<String>> {
    let bad = || {
        file.error(
            &format!("{}: {name}", r.at),
            "a list of strings",
            found(r.value.get(name)),
        )
    };
    r.value
        .get(name)
        .and_then(Value::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|c| c.as_str().map(String::from).ok_or_else(bad))
        .collect()
}

fn checked(file: &DataFile, at: &str, item: McqItem) -> Result<McqItem> {
    if item.choices.len() < 2 {
        return Err(file.error(
            &format!("{at}: choices"),
            "at least 2 choices",
            item.choices.len().to_string(),
        ));
    }
    if item.answer >= item.choices.len() {
        return Err(file.error(
            &format!("{at}: answer"),
            &format!("an index below {}", item.choices.len()),
            item.answer.to_string(),
        ));
    }
    Ok(item)
}

/// `{question, choices, answer, subject?}` (WMDP, MMLU-Redux).
fn mcq_json(file: &DataFile, index: usize, r: &Record) -> Result<McqItem> {
    let answer = r
        .value
        .get("answer")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            file.error(
                &format!("{}: answer", r.at),
                "an option index",
                found(r.value.get("answer")),
            )
        })?;
    let item = McqItem {
        index,
        id: None,
        subject: r
            .value
            .get("subject")
            .and_then(Value::as_str)
            .map(String::from),
        question: str_field(file, r, "question")?,
        choices: string_list(file, r, "choices")?,
        answer: usize::try_from(answer).unwrap_or(usize::MAX),
    };
    checked(file, &r.at, item)
}

/// `{id, question: {stem, choices: [{text, label}]}, answerKey}` (ARC).
fn arc(file: &DataFile, index: usize, r: &Record) -> Result<McqItem> {
    let at = |f: &str| format!("{}: {f}", r.at);
    let q = r.value.get("question").unwrap_or(&Value::Null);
    let stem = q
        .get("stem")
        .and_then(Value::as_str)
        .ok_or_else(|| file.error(&at("question.stem"), "a string", found(q.get("stem"))))?;
    let bad_choices = || {
        file.error(
            &at("question.choices"),
            "a list of {text, label}",
            found(q.get("choices")),
        )
    };
    let (choices, labels): (Vec<String>, Vec<String>) = q
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(bad_choices)?
        .iter()
        .map(|c| {
            let s = |k| c.get(k).and_then(Value::as_str).map(String::from);
            s("text").zip(s("label")).ok_or_else(bad_choices)
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let key = str_field(file, r, "answerKey")?;
    let answer = labels.iter().position(|l| *l == key).ok_or_else(|| {
        file.error(
            &at("answerKey"),
            &format!("one of the labels {}", labels.join(", ")),
            key.clone(),
        )
    })?;
    let item = McqItem {
        index,
        id: r.value.get("id").and_then(Value::as_str).map(String::from),
        subject: None,
        question: stem.to_string(),
        choices,
        answer,
    };
    checked(file, &r.at, item)
}

/// `{question, option1, option2, …, answer: text of the right option}` (TOFU utility sets).
fn tofu_options(file: &DataFile, index: usize, r: &Record) -> Result<McqItem> {
    let choices: Vec<String> = (1..)
        .map_while(|k| {
            r.value
                .get(format!("option{k}"))
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect();
    let answer_text = str_field(file, r, "answer")?;
    let answer = choices
        .iter()
        .position(|c| *c == answer_text)
        .ok_or_else(|| {
            file.error(
                &format!("{}: answer", r.at),
                "the text of one of option1..",
                answer_text.chars().take(60).collect::<String>(),
            )
        })?;
    let item = McqItem {
        index,
        id: None,
        subject: None,
        question: str_field(file, r, "question")?,
        choices,
        answer,
    };
    checked(file, &r.at, item)
}

/// MMLU's headerless CSV: `question, A, B, C, D, answer letter`, subject from the file name.
fn mmlu_csv(file: &DataFile) -> Result<Vec<McqItem>> {
    let stem = file
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let subject = ["_test", "_dev", "_val"]
        .iter()
        .find_map(|s| stem.strip_suffix(s))
        .unwrap_or(&stem)
        .to_string();
    csv::records(&file.path, &file.text)?
        .into_iter()
        .enumerate()
        .map(|(index, rec)| {
            let at = format!("line {}", rec.line);
            let [question, a, b, c, d, key]: [String; 6] =
                rec.fields.clone().try_into().map_err(|_| {
                    file.error(
                        &at,
                        "6 fields (question, 4 choices, answer letter)",
                        format!("{} fields", rec.fields.len()),
                    )
                })?;
            let answer = ["A", "B", "C", "D"]
                .iter()
                .position(|l| *l == key.trim())
                .ok_or_else(|| file.error(&format!("{at}: answer"), "a letter A-D", key.clone()))?;
            Ok(McqItem {
                index,
                id: None,
                subject: Some(subject.clone()),
                question,
                choices: vec![a, b, c, d],
                answer,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcq_body_letters_choices() {
        let item = McqItem {
            index: 0,
            id: None,
            subject: None,
            question: "Q?".into(),
            choices: vec!["x".into(), "y".into()],
            answer: 1,
        };
        assert_eq!(item.body(), "Q?\nA. x\nB. y");
    }
}
