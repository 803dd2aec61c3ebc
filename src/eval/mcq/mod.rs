//! `dsg eval mcq`: multiple-choice accuracy under three protocols ([`protocol`]), optionally on
//! the questions the base model answers under every reordering of their options ([`filter`]),
//! with any guardrails active, batched ([`score`]), reported with Wilson intervals ([`report`]).
//!
//! Every question has a source id, `<file name>:<id>` (ARC's own id) or `<file name>:<index>` (its
//! record index in the file), so a filtered set written as a question list (`kept.jsonl`) selects
//! the same questions in a later run (`--questions`).

pub mod filter;
pub mod protocol;
pub mod report;
pub mod score;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::{read_mcq, McqItem, Split};
use crate::eval::track::topics::{topic, Topic};
use crate::guard::{Gate, Guardrail, Intervention};
use crate::model::LoadedModel;
use crate::output::{check_output_dir, Overwrite};
use crate::{Error, Result};
pub use filter::Orders;
pub use protocol::Protocol;
pub use report::McqReport;

/// One question with its source id.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// `<file name>:<id or index>`.
    pub id: String,
    /// The question; its subject is the file's subject when the file names none.
    pub item: McqItem,
}

/// The subject named in prompts of a file whose records name none: WMDP's from its file name,
/// else "general knowledge".
pub fn default_subject(path: &Path) -> &'static str {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match name {
        n if n.starts_with("bio") => "biology",
        n if n.starts_with("cyber") => "cyber security",
        n if n.starts_with("chem") => "chemistry",
        _ => "general knowledge",
    }
}

/// The questions of `path` in `split`, with source ids.
pub fn read_questions(path: &Path, split: Split) -> Result<Vec<Question>> {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let subject = default_subject(path);
    Ok(read_mcq(path, split)?
        .into_iter()
        .map(|mut item| {
            let id = match &item.id {
                Some(id) => format!("{file}:{id}"),
                None => format!("{file}:{}", item.index),
            };
            item.subject.get_or_insert_with(|| subject.to_string());
            Question { id, item }
        })
        .collect())
}

/// The source ids of a question list (JSONL, one `{"id": …}` per line, as `kept.jsonl`).
pub fn read_question_list(path: &Path) -> Result<HashSet<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).map_err(|e| {
                Error::format(
                    path,
                    format!("line {}", i + 1),
                    "a JSON object",
                    e.to_string(),
                )
            })?;
            v.get("id")
                .and_then(|x| x.as_str())
                .map(String::from)
                .ok_or_else(|| {
                    Error::format(
                        path,
                        format!("line {}: id", i + 1),
                        "a string",
                        l.to_string(),
                    )
                })
        })
        .collect()
}

/// A guardrail's decision on one scored row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decision {
    /// The gate's score.
    pub score: f64,
    /// Whether the gate fired.
    pub fired: bool,
}

/// A prediction and the per-option scores it is the argmax of.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judged {
    /// The predicted option (the first of equal maxima).
    pub prediction: usize,
    /// Whether it is the answer.
    pub correct: bool,
    /// Per option: a probability (paper) or a log-likelihood (lm-eval, cloze; `acc_norm` per
    /// UTF-8 byte of the continuation).
    pub scores: Vec<f64>,
}

impl Judged {
    fn new(scores: Vec<f64>, answer: usize) -> Judged {
        let prediction = scores
            .iter()
            .enumerate()
            .fold(0, |best, (i, &s)| if s > scores[best] { i } else { best });
        Judged {
            prediction,
            correct: prediction == answer,
            scores,
        }
    }
}

/// One question's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuestionResult {
    /// Source id.
    pub id: String,
    /// Subject.
    pub subject: String,
    /// The right option.
    pub answer: usize,
    /// Number of options.
    pub n_choices: usize,
    /// The protocol's metric (`acc`).
    pub acc: Judged,
    /// The length-normalised metric (`acc_norm`; cloze only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<Judged>,
    /// Per guardrail (in `--guard` order), its decision on each scored row (one, or one per option).
    pub guards: Vec<Vec<Decision>>,
    /// Whether a refusing guardrail fired on the question (it is then not answered: `acc` and
    /// `acc_norm` count it as wrong).
    pub refused: bool,
}

/// Scores `questions` under `protocol`, `batch` rows per pass, with `guards` active.
pub fn evaluate(
    lm: &LoadedModel,
    questions: &[Question],
    protocol: Protocol,
    batch: usize,
    guards: &mut [Guardrail],
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<QuestionResult>> {
    let requests = questions
        .iter()
        .map(|q| {
            let subject = q.item.subject.as_deref().unwrap_or("general knowledge");
            protocol::request(&lm.tokenizer, protocol, subject, &q.item)
        })
        .collect::<Result<Vec<_>>>()?;
    let refusing: Vec<bool> = guards
        .iter()
        .map(|g| g.intervention() == Intervention::Refuse)
        .collect();
    let scored = score::score(&lm.model, &requests, batch, guards, progress)?;
    Ok(questions
        .iter()
        .zip(scored)
        .map(|(q, s)| {
            let item = &q.item;
            let best: Vec<f64> = s
                .logprobs
                .iter()
                .map(|c| c.iter().copied().fold(f64::NEG_INFINITY, f64::max))
                .collect();
            let acc = match protocol {
                Protocol::Paper => Judged::new(best.iter().map(|l| l.exp()).collect(), item.answer),
                _ => Judged::new(best.clone(), item.answer),
            };
            let acc_norm = (protocol == Protocol::Cloze).then(|| {
                let norm = protocol::continuation_texts(protocol, item)
                    .iter()
                    .zip(&best)
                    .map(|(c, l)| l / c.len() as f64)
                    .collect();
                Judged::new(norm, item.answer)
            });
            let refused = s
                .decisions
                .iter()
                .zip(&refusing)
                .any(|(d, &r)| r && d.iter().any(|x| x.fired));
            let (mut acc, mut acc_norm) = (acc, acc_norm);
            if refused {
                acc.correct = false;
                if let Some(n) = acc_norm.as_mut() {
                    n.correct = false;
                }
            }
            QuestionResult {
                id: q.id.clone(),
                subject: item.subject.clone().unwrap_or_default(),
                answer: item.answer,
                n_choices: item.choices.len(),
                acc,
                acc_norm,
                guards: s
                    .decisions
                    .iter()
                    .map(|d| {
                        d.iter()
                            .map(|x| Decision {
                                score: x.score,
                                fired: x.fired,
                            })
                            .collect()
                    })
                    .collect(),
                refused,
            }
        })
        .collect())
}

/// How many of a question's orders the base model answered correctly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterOutcome {
    /// Source id.
    pub id: String,
    /// Subject.
    pub subject: String,
    /// Orders answered correctly (`acc`).
    pub correct: usize,
    /// Orders tried.
    pub orders: usize,
}

impl FilterOutcome {
    /// Whether every order was answered correctly.
    pub fn kept(&self) -> bool {
        self.correct == self.orders
    }
}

/// Runs the base model (no guardrails) on every order of every question's options; `progress`
/// is told (done, total) in reordered questions.
pub fn filter_questions(
    lm: &LoadedModel,
    questions: &[Question],
    protocol: Protocol,
    orders: Orders,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<FilterOutcome>> {
    let mut expanded = Vec::new();
    let mut owner = Vec::new();
    for (k, q) in questions.iter().enumerate() {
        for perm in orders.of(q.item.choices.len())? {
            expanded.push(Question {
                id: q.id.clone(),
                item: filter::permuted(&q.item, &perm),
            });
            owner.push(k);
        }
    }
    let total = expanded.len();
    let results = evaluate(lm, &expanded, protocol, batch, &mut [], &mut |d| {
        progress(d, total)
    })?;
    let mut out: Vec<FilterOutcome> = questions
        .iter()
        .map(|q| FilterOutcome {
            id: q.id.clone(),
            subject: q.item.subject.clone().unwrap_or_default(),
            correct: 0,
            orders: 0,
        })
        .collect();
    for (k, r) in owner.into_iter().zip(results) {
        out[k].orders += 1;
        out[k].correct += usize::from(r.acc.correct);
    }
    Ok(out)
}

/// The configuration of `dsg eval mcq`.
#[derive(Debug, Clone)]
pub struct McqConfig {
    /// MCQ files (any format [`read_mcq`] reads).
    pub files: Vec<PathBuf>,
    /// Which split of each file.
    pub split: Split,
    /// Keep only these subjects (empty: all).
    pub subjects: Vec<String>,
    /// Keep only the questions of these topics under the keyword rule of [`crate::eval::track::topics`] (empty:
    /// all); meant for ARC, whose questions carry no subject.
    pub topics: Vec<Topic>,
    /// Keep only the questions of this list (`kept.jsonl` of an earlier run).
    pub questions: Option<PathBuf>,
    /// At most this many questions per file, in file order, after the other selections.
    pub limit: Option<usize>,
    /// The scoring protocol.
    pub protocol: Protocol,
    /// Keep only questions the base model answers under these orders of their options.
    pub filter: Option<Orders>,
    /// Rows per forward pass.
    pub batch: usize,
    /// Force every guardrail's gate on (τ < 0), so that every question is scored under the
    /// intervention: what it does to the knowledge itself, whatever the gate would decide.
    pub gate_on: bool,
    /// Folder for the report files.
    pub out: PathBuf,
    /// Whether existing report files may be replaced.
    pub overwrite: Overwrite,
}

/// The files `dsg eval mcq` writes into `--out`.
pub const OUTPUT_FILES: [&str; 4] = ["report.json", "report.md", "questions.jsonl", "kept.jsonl"];

impl McqConfig {
    /// Checks the options and the output folder before any work.
    pub fn check(&self, guard_files: &[PathBuf]) -> Result<()> {
        if self.files.is_empty() {
            return Err(Error::out_of_range(
                "--file",
                "none",
                "at least one MCQ file",
            ));
        }
        if self.batch == 0 {
            return Err(Error::out_of_range("--batch", 0, "at least 1"));
        }
        if self.limit == Some(0) {
            return Err(Error::out_of_range("--limit", 0, "at least 1"));
        }
        if self.gate_on && guard_files.is_empty() {
            return Err(Error::Invalid(
                "--gate-on forces guardrails' gates on, but no --guard was given".into(),
            ));
        }
        let mut inputs: Vec<&Path> = self.files.iter().map(PathBuf::as_path).collect();
        inputs.extend(guard_files.iter().map(PathBuf::as_path));
        inputs.extend(self.questions.as_deref());
        check_output_dir(&self.out, "--out", &OUTPUT_FILES, &inputs, self.overwrite)
    }

    /// The selected questions of every file.
    pub fn questions(&self) -> Result<Vec<Question>> {
        let list = self
            .questions
            .as_deref()
            .map(read_question_list)
            .transpose()?;
        let mut all = Vec::new();
        for f in &self.files {
            let selected = read_questions(f, self.split)?.into_iter().filter(|q| {
                (self.subjects.is_empty()
                    || q.item
                        .subject
                        .as_ref()
                        .is_some_and(|s| self.subjects.contains(s)))
                    && (self.topics.is_empty() || self.topics.contains(&topic(&q.item)))
                    && list.as_ref().is_none_or(|l| l.contains(&q.id))
            });
            all.extend(selected.take(self.limit.unwrap_or(usize::MAX)));
        }
        if all.is_empty() {
            return Err(Error::Invalid(format!(
                "no questions selected from {} (split, --subject, --topic, --questions and --limit \
                 leave none)",
                self.files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(all)
    }
}

/// Runs the evaluation of `cfg` (filter first, on the base model, if asked) with `guards` active,
/// named by `guard_names` in the report, and writes the report files.
pub fn run(
    lm: &LoadedModel,
    guards: &mut [Guardrail],
    guard_names: &[String],
    cfg: &McqConfig,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<McqReport> {
    let started = std::time::Instant::now();
    let mut forced: Vec<Guardrail>;
    let guards: &mut [Guardrail] = if cfg.gate_on {
        forced = guards
            .iter()
            .map(|g| g.with_gate(Gate::Paper { tau: -1.0 }))
            .collect::<Result<_>>()?;
        &mut forced
    } else {
        guards
    };
    let mut questions = cfg.questions()?;
    let selected = questions.len();
    let filter = match cfg.filter {
        Some(orders) => {
            let outcomes = filter_questions(
                lm,
                &questions,
                cfg.protocol,
                orders,
                cfg.batch,
                &mut |d, t| progress("filter", d, t),
            )?;
            let kept: HashSet<&str> = outcomes
                .iter()
                .filter(|o| o.kept())
                .map(|o| o.id.as_str())
                .collect();
            questions.retain(|q| kept.contains(q.id.as_str()));
            Some((orders, outcomes))
        }
        None => None,
    };
    let total = questions.len();
    let results = evaluate(lm, &questions, cfg.protocol, cfg.batch, guards, &mut |d| {
        progress("evaluate", d, total)
    })?;
    let report = McqReport::new(
        cfg,
        &lm.name(),
        guard_names,
        selected,
        filter,
        results,
        started.elapsed().as_secs_f64(),
    );
    report.write(&cfg.out)?;
    Ok(report)
}
