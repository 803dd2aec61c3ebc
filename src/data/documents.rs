//! Documents (texts) of any data file, for corpora: guardrail fitting and SAE training read their
//! text through [`read_documents`], so one file gives the same documents to both.

use std::path::Path;

use serde_json::Value;

use super::format::{DataFile, Format};
use super::mcq::{mcq_items, McqItem};
use super::qa::qa_items;
use super::Split;
use crate::Result;

/// The documents of the file at `path`, its format detected ([`Format::detect`]); question sets
/// give only their questions in `split`.
pub fn read_documents(path: &Path, split: Split) -> Result<Vec<String>> {
    let file = DataFile::read(path)?;
    let format = file.detect()?;
    documents(&file, format, split)
}

/// [`read_documents`] with the format given instead of detected.
pub fn read_documents_as(path: &Path, format: Format, split: Split) -> Result<Vec<String>> {
    documents(&DataFile::read(path)?, format, split)
}

fn documents(file: &DataFile, format: Format, split: Split) -> Result<Vec<String>> {
    match format {
        Format::Text => Ok(file.text.lines().map(String::from).collect()),
        Format::TextJson => file
            .json_records()?
            .iter()
            .map(|r| match &r.value {
                Value::String(s) => Ok(s.clone()),
                v => v
                    .get("text")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .ok_or_else(|| {
                        file.error(&r.at, "a string or {text}", super::format::found(Some(v)))
                    }),
            })
            .collect(),
        Format::Qa => Ok(qa_items(file, split)?.iter().map(|q| q.body()).collect()),
        mcq => Ok(mcq_items(file, mcq, split)?
            .iter()
            .map(McqItem::body)
            .collect()),
    }
}
