//! Which format a data file is in: named explicitly, or detected from its extension and, for JSON,
//! from the shape of its first record. Also the JSON record reader every JSON format shares.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{Error, Result};

/// The formats dsg reads (see the module documentation of [`crate::data`] for each one's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{question, choices: [..], answer: index, subject?}` records: WMDP's JSON list, MMLU-Redux's
    /// JSONL.
    McqJson,
    /// MMLU as released: headerless CSV `question, A, B, C, D, answer letter`; the subject is the
    /// file name without its `_test`/`_dev`/`_val` suffix.
    MmluCsv,
    /// ARC JSONL: `{id, question: {stem, choices: [{text, label}]}, answerKey}`.
    Arc,
    /// TOFU's utility questions: `{question, option1.., answer: the right option's text}`.
    TofuOptions,
    /// Question–answer pairs (TOFU): `{question, answer, paraphrased_answer?, perturbed_answer?}`.
    Qa,
    /// JSON list or JSONL of strings or `{text}` objects: one document each.
    TextJson,
    /// Plain UTF-8 text: one document per line.
    Text,
}

impl Format {
    /// The name used by [`Format::from_str`](std::str::FromStr).
    pub fn name(self) -> &'static str {
        match self {
            Format::McqJson => "mcq-json",
            Format::MmluCsv => "mmlu-csv",
            Format::Arc => "arc",
            Format::TofuOptions => "tofu-options",
            Format::Qa => "qa",
            Format::TextJson => "text-json",
            Format::Text => "text",
        }
    }

    /// Whether the format holds multiple-choice questions.
    pub fn is_mcq(self) -> bool {
        matches!(
            self,
            Format::McqJson | Format::MmluCsv | Format::Arc | Format::TofuOptions
        )
    }

    /// Detects the format of the file at `path` (reads it).
    pub fn detect(path: &Path) -> Result<Format> {
        DataFile::read(path)?.detect()
    }
}

const FORMATS: [Format; 7] = [
    Format::McqJson,
    Format::MmluCsv,
    Format::Arc,
    Format::TofuOptions,
    Format::Qa,
    Format::TextJson,
    Format::Text,
];

impl std::str::FromStr for Format {
    type Err = Error;

    /// Parses a format name (`mcq-json`, `mmlu-csv`, `arc`, `tofu-options`, `qa`, `text-json`,
    /// `text`).
    fn from_str(s: &str) -> Result<Format> {
        FORMATS.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = FORMATS.iter().map(|f| f.name()).collect();
            Error::out_of_range("data format", s, names.join(", "))
        })
    }
}

/// One JSON record and where it is (`item 3` of a list, `line 4` of JSONL), for error messages.
pub(crate) struct Record {
    /// `item N` (0-based, in a JSON list) or `line N` (1-based, in JSONL).
    pub at: String,
    /// The record.
    pub value: Value,
}

/// A data file's path and contents.
pub(crate) struct DataFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its UTF-8 contents.
    pub text: String,
}

impl DataFile {
    /// Reads `path`; an empty (or whitespace-only) file is an error.
    pub fn read(path: &Path) -> Result<DataFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        if text.trim().is_empty() {
            return Err(Error::format(
                path,
                "file",
                "at least one record",
                "an empty file",
            ));
        }
        Ok(DataFile {
            path: path.to_path_buf(),
            text,
        })
    }

    fn has_extension(&self, exts: &[&str]) -> bool {
        self.path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
    }

    /// A format error at `at` in this file.
    pub fn error(&self, at: &str, expected: &str, found: impl Into<String>) -> Error {
        Error::format(&self.path, at, expected, found)
    }

    /// The records of a JSON list (a file starting with `[`) or of JSONL (anything else: one value
    /// per non-blank line, as TOFU's `.json` files are).
    pub fn json_records(&self) -> Result<Vec<Record>> {
        if self.text.trim_start().starts_with('[') {
            let value: Value = serde_json::from_str(&self.text)
                .map_err(|e| self.error("JSON list", "valid JSON", e.to_string()))?;
            let Value::Array(items) = value else {
                return Err(self.error("file", "a JSON list", "another value"));
            };
            return Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, value)| Record {
                    at: format!("item {i}"),
                    value,
                })
                .collect());
        }
        self.text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let at = format!("line {}", i + 1);
                let value = serde_json::from_str(l)
                    .map_err(|e| self.error(&at, "one JSON value per line", e.to_string()))?;
                Ok(Record { at, value })
            })
            .collect()
    }

    /// The format by extension (`.csv`: MMLU CSV; `.json`/`.jsonl`: by the first record's fields;
    /// anything else: text).
    pub fn detect(&self) -> Result<Format> {
        if self.has_extension(&["csv"]) {
            return Ok(Format::MmluCsv);
        }
        if !self.has_extension(&["json", "jsonl"]) {
            return Ok(Format::Text);
        }
        let records = self.json_records()?;
        let Some(first) = records.first() else {
            return Err(self.error("JSON list", "at least one record", "an empty list"));
        };
        let v = &first.value;
        let has = |k: &str| v.get(k).is_some();
        Ok(match v {
            Value::String(_) => Format::TextJson,
            _ if v.get("question").is_some_and(Value::is_object) => Format::Arc,
            _ if has("question") && has("choices") => Format::McqJson,
            _ if has("question") && has("option1") => Format::TofuOptions,
            _ if has("question") && has("answer") => Format::Qa,
            _ if has("text") => Format::TextJson,
            _ => {
                return Err(self.error(
                    &first.at,
                    "a string or an object with `text`, `question` + `choices` (MCQ), `question` + `answer` (QA)",
                    v.to_string().chars().take(80).collect::<String>(),
                ))
            }
        })
    }
}

/// The string field `name` of record `r` in `file`.
pub(crate) fn str_field(file: &DataFile, r: &Record, name: &str) -> Result<String> {
    r.value
        .get(name)
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| {
            file.error(
                &format!("{}: {name}", r.at),
                "a string",
                found(r.value.get(name)),
            )
        })
}

/// A short description of what a field holds, for error messages.
pub(crate) fn found(v: Option<&Value>) -> String {
    match v {
        None => "no such field".into(),
        Some(v) => v.to_string().chars().take(60).collect(),
    }
}
