//! What the base model knows: per-subject full-MMLU accuracy under each protocol (selection-split
//! sample), ARC-Easy under cloze by topic, and the forget cluster chosen from those numbers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{checkpoint, KnowledgeConfig, Progress};
use crate::data::MMLU_BIO_SUBJECTS;
use crate::data::{read_mcq, Split};
use crate::eval::mcq::{evaluate, read_questions, Protocol, Question, QuestionResult};
use crate::eval::metrics::Rate;
use crate::eval::track::topics::{topic, Topic};
use crate::model::LoadedModel;
use crate::{Error, Result};

/// ARC-Easy, under the shared data folder.
pub const ARC_FILES: [&str; 2] = ["arc/ARC-Easy-Train.jsonl", "arc/ARC-Easy-Dev.jsonl"];
/// The full MMLU test folder, under the shared data folder.
pub const MMLU_TEST: &str = "mmlu/test";
/// WikiText-2 raw test, under the shared data folder.
pub const WIKITEXT: &str = "wikitext/wikitext-2-raw-v1.test.raw";

/// One question's base-model outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Source id.
    pub id: String,
    /// Subject (MMLU) or topic (ARC).
    pub subject: String,
    /// Number of options.
    pub n_choices: usize,
    /// `acc` correct.
    pub correct: bool,
    /// `acc_norm` correct (cloze).
    pub correct_norm: Option<bool>,
}

impl Outcome {
    fn of(r: &QuestionResult, subject: &str) -> Outcome {
        Outcome {
            id: r.id.clone(),
            subject: subject.to_string(),
            n_choices: r.n_choices,
            correct: r.acc.correct,
            correct_norm: r.acc_norm.as_ref().map(|j| j.correct),
        }
    }

    /// Known: right under `acc` and, where there is one, `acc_norm`.
    pub fn known(&self) -> bool {
        self.correct && self.correct_norm.unwrap_or(true)
    }
}

/// Accuracy of one subject or topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubjectAccuracy {
    /// Subject or topic.
    pub subject: String,
    /// `acc`.
    pub acc: Rate,
    /// `acc_norm`, under cloze.
    pub acc_norm: Option<Rate>,
    /// Known (right under both).
    pub known: Rate,
    /// Expected accuracy of a uniform guess.
    pub chance: f64,
}

/// Per-subject accuracies of `outcomes`, with an `all` row first.
pub fn by_subject(outcomes: &[Outcome]) -> Vec<SubjectAccuracy> {
    let mut groups: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes {
        groups.entry(&o.subject).or_default().push(o);
    }
    let row = |name: &str, os: &[&Outcome]| {
        let n = os.len();
        let norm: Vec<bool> = os.iter().filter_map(|o| o.correct_norm).collect();
        SubjectAccuracy {
            subject: name.to_string(),
            acc: Rate::new(os.iter().filter(|o| o.correct).count(), n),
            acc_norm: (!norm.is_empty())
                .then(|| Rate::new(norm.iter().filter(|&&c| c).count(), norm.len())),
            known: Rate::new(os.iter().filter(|o| o.known()).count(), n),
            chance: os.iter().map(|o| 1.0 / o.n_choices as f64).sum::<f64>() / n.max(1) as f64,
        }
    };
    let all: Vec<&Outcome> = outcomes.iter().collect();
    std::iter::once(row("all", &all))
        .chain(groups.iter().map(|(s, os)| row(s, os)))
        .collect()
}

/// The MMLU test files, sorted.
pub fn mmlu_files(data: &Path) -> Result<Vec<std::path::PathBuf>> {
    let dir = data.join(MMLU_TEST);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    Ok(files)
}

/// The `split` questions of every MMLU test file, at most `per_subject` of each, with their
/// subjects (taken from the file name, `<subject>_test.csv`).
pub fn mmlu_questions(data: &Path, split: Split, per_subject: usize) -> Result<Vec<Question>> {
    let mut all = Vec::new();
    for f in mmlu_files(data)? {
        let subject = f
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix("_test.csv"))
            .unwrap_or("unknown")
            .to_string();
        let mut qs = read_questions(&f, split)?;
        qs.truncate(per_subject);
        for q in &mut qs {
            q.item.subject = Some(subject.clone());
        }
        all.extend(qs);
    }
    Ok(all)
}

/// ARC-Easy questions (train and dev) in `split`, each with its topic as subject.
pub fn arc_questions(data: &Path, split: Split) -> Result<Vec<Question>> {
    let mut all = Vec::new();
    for f in ARC_FILES {
        for mut q in read_questions(&data.join(f), split)? {
            q.item.subject = Some(topic(&q.item).name().to_string());
            all.push(q);
        }
    }
    Ok(all)
}

/// The base model's outcomes on `questions` under `protocol` (no guardrail).
pub fn base_outcomes(
    lm: &LoadedModel,
    questions: &[Question],
    protocol: Protocol,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Outcome>> {
    let results = evaluate(lm, questions, protocol, batch, &mut [], progress)?;
    Ok(questions
        .iter()
        .zip(&results)
        .map(|(q, r)| Outcome::of(r, q.item.subject.as_deref().unwrap_or("")))
        .collect())
}

/// The knowledge measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Per protocol (`paper`, `lm-eval`, `cloze`): per-subject accuracy on the MMLU sample.
    pub mmlu: Vec<(String, Vec<SubjectAccuracy>)>,
    /// MMLU biology/medicine subjects pooled, per protocol.
    pub mmlu_bio: Vec<(String, SubjectAccuracy)>,
    /// ARC-Easy by topic, cloze, selection split.
    pub arc_selection: Vec<SubjectAccuracy>,
    /// ARC-Easy by topic, cloze, held-out split.
    pub arc_heldout: Vec<SubjectAccuracy>,
    /// The chosen forget cluster and why.
    pub cluster: ClusterChoice,
}

/// Which questions are forgotten and which are kept.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterChoice {
    /// `mmlu-bio` (MMLU biology/medicine vs the other subjects) or `arc-life` (ARC life science
    /// vs other science).
    pub name: String,
    /// The rule and the numbers it was applied to.
    pub why: String,
}

/// The ARC base outcomes on every question (both splits), checkpointed.
pub fn arc_outcomes(
    lm: &LoadedModel,
    cfg: &KnowledgeConfig,
    progress: &mut Progress,
) -> Result<Vec<Outcome>> {
    let qs = arc_questions(&cfg.data, Split::All)?;
    let mut outcomes = checkpoint(&cfg.work(), "base-arc-cloze.json", || {
        let n = qs.len();
        base_outcomes(lm, &qs, Protocol::Cloze, cfg.batch, &mut |d| {
            progress("base model on ARC-Easy (cloze)", d, n)
        })
    })?;
    // Topics come from the rule, not the checkpoint, so a changed rule needs no new run.
    let topics: HashMap<&str, &str> = qs
        .iter()
        .map(|q| (q.id.as_str(), q.item.subject.as_deref().unwrap_or("")))
        .collect();
    for o in &mut outcomes {
        if let Some(t) = topics.get(o.id.as_str()) {
            o.subject = t.to_string();
        }
    }
    Ok(outcomes)
}

/// Measures MMLU (each protocol) and ARC, and chooses the cluster: MMLU biology/medicine when the
/// base model's pooled cloze accuracy there has a Wilson lower bound at least 10 points above
/// chance; otherwise ARC life science.
pub fn measure(
    lm: &LoadedModel,
    cfg: &KnowledgeConfig,
    progress: &mut Progress,
) -> Result<Measurement> {
    let sample = mmlu_questions(&cfg.data, Split::Selection, cfg.mmlu_per_subject)?;
    let mut mmlu = Vec::new();
    let mut mmlu_bio = Vec::new();
    for protocol in [Protocol::Paper, Protocol::LmEval, Protocol::Cloze] {
        let name = format!(
            "base-mmlu-{}-{}.json",
            protocol.name(),
            cfg.mmlu_per_subject
        );
        let n = sample.len();
        let outcomes = checkpoint(&cfg.work(), &name, || {
            base_outcomes(lm, &sample, protocol, cfg.batch, &mut |d| {
                progress(&format!("MMLU sample ({})", protocol.name()), d, n)
            })
        })?;
        let bio: Vec<Outcome> = outcomes
            .iter()
            .filter(|o| MMLU_BIO_SUBJECTS.contains(&o.subject.as_str()))
            .cloned()
            .collect();
        let mut pooled = by_subject(&bio).remove(0);
        pooled.subject = "biology/medicine (pooled)".into();
        mmlu_bio.push((protocol.name().to_string(), pooled));
        mmlu.push((protocol.name().to_string(), by_subject(&outcomes)));
    }
    let arc = arc_outcomes(lm, cfg, progress)?;
    let selection: HashSet<String> = arc_questions(&cfg.data, Split::Selection)?
        .into_iter()
        .map(|q| q.id)
        .collect();
    let (sel, held): (Vec<Outcome>, Vec<Outcome>) =
        arc.into_iter().partition(|o| selection.contains(&o.id));
    let cloze_bio = &mmlu_bio
        .iter()
        .find(|(p, _)| p == "cloze")
        .expect("cloze was measured")
        .1;
    let knows_mmlu_bio = cloze_bio.acc.lo >= cloze_bio.chance + 0.10;
    let life = by_subject(&sel)
        .into_iter()
        .find(|a| a.subject == Topic::Life.name());
    let why = format!(
        "MMLU biology/medicine, cloze acc {:.1}% [{:.1}, {:.1}] on {} selection questions against chance {:.1}%: \
         the rule needs the interval's lower end ≥ chance + 10 points. {} ARC-Easy life science (selection, cloze): {}.",
        100.0 * cloze_bio.acc.rate,
        100.0 * cloze_bio.acc.lo,
        100.0 * cloze_bio.acc.hi,
        cloze_bio.acc.n,
        100.0 * cloze_bio.chance,
        if knows_mmlu_bio { "Met: MMLU biology/medicine is the cluster." } else { "Not met: the cluster is" },
        life.map(|a| format!(
            "acc {:.1}% [{:.1}, {:.1}], known {} of {}",
            100.0 * a.acc.rate,
            100.0 * a.acc.lo,
            100.0 * a.acc.hi,
            a.known.k,
            a.known.n
        ))
        .unwrap_or_else(|| "no questions".into())
    );
    Ok(Measurement {
        mmlu,
        mmlu_bio,
        arc_selection: by_subject(&sel),
        arc_heldout: by_subject(&held),
        cluster: ClusterChoice {
            name: if knows_mmlu_bio {
                "mmlu-bio"
            } else {
                "arc-life"
            }
            .into(),
            why,
        },
    })
}

/// The forget and retain questions of a cluster, in `split`: for `arc-life`, ARC life science and
/// other science (mixed questions in neither); for `mmlu-bio`, the MMLU biology/medicine subjects
/// and the rest (`per_subject` questions of each).
pub fn cluster_questions(
    data: &Path,
    cluster: &str,
    split: Split,
    per_subject: usize,
) -> Result<(Vec<Question>, Vec<Question>)> {
    let (forget, rest): (Vec<Question>, Vec<Question>) = match cluster {
        "arc-life" => arc_questions(data, split)?
            .into_iter()
            .filter(|q| q.item.subject.as_deref() != Some(Topic::Mixed.name()))
            .partition(|q| q.item.subject.as_deref() == Some(Topic::Life.name())),
        _ => mmlu_questions(data, split, per_subject)?
            .into_iter()
            .partition(|q| MMLU_BIO_SUBJECTS.contains(&q.item.subject.as_deref().unwrap_or(""))),
    };
    Ok((forget, rest))
}

/// Checks that every MMLU and ARC file reads (before the long runs).
pub fn check_files(data: &Path) -> Result<()> {
    for f in mmlu_files(data)? {
        read_mcq(&f, Split::All)?;
    }
    for f in ARC_FILES {
        read_mcq(&data.join(f), Split::All)?;
    }
    Ok(())
}
