//! Every data file dsg reads, read once and the same way for every consumer: SAE training
//! ([`crate::sae`]), guardrail fitting ([`crate::stats`], [`crate::guard`]) and evaluation
//! ([`crate::eval`]). Also the canonical split of question sets, token rows and the seeded RNG.
//!
//! **Formats** ([`Format`]; detected from the extension and, for JSON, the first record's fields,
//! or named explicitly with the `*_as` readers). One rule per format:
//!
//! | format | file | one record is |
//! |---|---|---|
//! | [`Format::McqJson`] | WMDP `*_questions.json` (JSON list), MMLU-Redux `.jsonl` | `{question, choices, answer, subject?}` |
//! | [`Format::MmluCsv`] | MMLU `<subject>_<split>.csv`, headerless RFC 4180 | `question, A, B, C, D, letter`; subject from the file name |
//! | [`Format::Arc`] | ARC `.jsonl` | `{id, question: {stem, choices: [{text, label}]}, answerKey}`; 3–5 choices, labels A–E or 1–4 |
//! | [`Format::TofuOptions`] | TOFU `real_authors.json`, `world_facts.json` | `{question, option1.., answer: the right option's text}` |
//! | [`Format::Qa`] | TOFU `forget*.json`, `retain*.json`, `*_perturbed.json` | `{question, answer, paraphrased_answer?, perturbed_answer?}` |
//! | [`Format::TextJson`] | `.json`/`.jsonl` of texts | a string or `{text}` |
//! | [`Format::Text`] | anything else | one line |
//!
//! A `.json` file is a JSON list when it starts with `[` and JSONL otherwise (TOFU's `.json` files
//! are JSON Lines). Multiple-choice records become one [`McqItem`] type; question–answer records a
//! [`QaItem`]. Read as documents ([`read_documents`]), a question is [`McqItem::body`] (the
//! question, then `A. …` lines), a pair is `question\nanswer`, a text line or `text` field is one
//! document. Every question set is restricted to a [`Split`] by the same rule. Errors name the
//! file, the record (`line N` of JSONL or CSV, `item N` of a JSON list), the field, what was
//! expected and what was found; an empty file is an error.
//!
//! **Rows** ([`rows`]): the reference's scoring rows for guardrail fitting and the SAE's training
//! rows. **RNG** ([`SplitMix64`]): every seeded sample and shuffle of data.

mod csv;
mod documents;
mod format;
mod mcq;
mod qa;
pub mod rng;
pub mod rows;
mod split;
pub mod tofu;

pub use documents::{read_documents, read_documents_as};
pub use format::Format;
pub use mcq::{letter, read_mcq, read_mcq_as, McqItem, MMLU_BIO_SUBJECTS};
pub use qa::{read_qa, QaItem};
pub use rng::SplitMix64;
pub use rows::{build_rows, equalize, rows_from_tokens, token_rows, RowOptions};
pub use split::Split;
