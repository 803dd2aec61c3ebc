//! TOFU (Maini et al. 2024): 200 fictitious authors × 20 question–answer pairs, the forget/retain
//! splits, their `_perturbed` variants for the truth ratio, and the two utility sets of real
//! authors and world facts.
//!
//! Every file is JSON Lines despite its `.json` name (a JSON list is read too). Three row shapes:
//!
//! | rows | files | fields |
//! |---|---|---|
//! | plain | `full`, `forget01/05/10`, `retain90/95/99` | `question`, `answer` |
//! | paraphrased | `forget*_perturbed`, `retain_perturbed` | + `paraphrased_question`, `paraphrased_answer`, `perturbed_answer` (5 strings) |
//! | perturbed | `real_authors_perturbed`, `world_facts_perturbed` | `question`, `answer`, `perturbed_answer` (3 strings) |
//!
//! **Authors.** `full.json` lists author `k`'s 20 pairs as rows `20k..20k+20`, in order. The forget
//! split `forgetNN` is the last `NN`% of the authors (rows `4000 − 40·NN..4000`) and `retain{100−NN}`
//! the others; `retain_perturbed` is rows 0–399 (the first 20 authors), the retain set every
//! forget split is evaluated on.
//!
//! Errors name the file, the line (`line N`, 1-based) and the field, what was expected and what
//! was found.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::format::{found, DataFile};
use super::qa::{qa_items, QaItem};
use super::Split;
use crate::{Error, Result};

/// Question–answer pairs per author, in `full.json` order.
pub const QA_PER_AUTHOR: usize = 20;

/// Authors in `full.json`.
pub const AUTHORS: usize = 200;

/// The author of row `row` of `full.json` (rows `20k..20k+20` are author `k`).
pub fn author_of(row: usize) -> usize {
    row / QA_PER_AUTHOR
}

/// The rows of each author: `full` (all rows of `full.json`, or any prefix of whole authors) cut
/// into runs of [`QA_PER_AUTHOR`]. `path` names the file in the error when the row count is not a
/// multiple of 20.
pub fn authors<'a>(full: &'a [QaItem], path: &Path) -> Result<Vec<&'a [QaItem]>> {
    if full.is_empty() || !full.len().is_multiple_of(QA_PER_AUTHOR) {
        return Err(Error::format(
            path,
            "rows",
            format!("a positive multiple of {QA_PER_AUTHOR} rows (one run of {QA_PER_AUTHOR} per author)"),
            format!("{} rows", full.len()),
        ));
    }
    Ok(full.chunks(QA_PER_AUTHOR).collect())
}

/// One of TOFU's three forget splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForgetSplit {
    /// `forget01`: the last 2 authors (40 rows).
    Forget01,
    /// `forget05`: the last 10 authors (200 rows).
    Forget05,
    /// `forget10`: the last 20 authors (400 rows); open-unlearning's default.
    #[default]
    Forget10,
}

impl ForgetSplit {
    /// Every split, smallest first.
    pub const ALL: [ForgetSplit; 3] = [
        ForgetSplit::Forget01,
        ForgetSplit::Forget05,
        ForgetSplit::Forget10,
    ];

    /// The split's name and file stem (`forget10`).
    pub fn name(self) -> &'static str {
        match self {
            ForgetSplit::Forget01 => "forget01",
            ForgetSplit::Forget05 => "forget05",
            ForgetSplit::Forget10 => "forget10",
        }
    }

    /// The complementary retain split's name (`retain90` for `forget10`).
    pub fn retain_name(self) -> &'static str {
        match self {
            ForgetSplit::Forget01 => "retain99",
            ForgetSplit::Forget05 => "retain95",
            ForgetSplit::Forget10 => "retain90",
        }
    }

    /// The forgotten authors (indices into [`authors`] of `full.json`).
    pub fn author_range(self) -> Range<usize> {
        let n = match self {
            ForgetSplit::Forget01 => 2,
            ForgetSplit::Forget05 => 10,
            ForgetSplit::Forget10 => 20,
        };
        AUTHORS - n..AUTHORS
    }

    /// The forgotten rows of `full.json`.
    pub fn row_range(self) -> Range<usize> {
        let a = self.author_range();
        a.start * QA_PER_AUTHOR..a.end * QA_PER_AUTHOR
    }
}

impl std::str::FromStr for ForgetSplit {
    type Err = Error;

    /// Parses `forget01`, `forget05` or `forget10` (or `1`, `5`, `10`, `01`, `05`).
    fn from_str(s: &str) -> Result<ForgetSplit> {
        let digits = s.strip_prefix("forget").unwrap_or(s);
        match digits {
            "01" | "1" => Ok(ForgetSplit::Forget01),
            "05" | "5" => Ok(ForgetSplit::Forget05),
            "10" => Ok(ForgetSplit::Forget10),
            _ => Err(Error::out_of_range(
                "TOFU forget split",
                s,
                "forget01, forget05 or forget10",
            )),
        }
    }
}

/// The four files a TOFU evaluation reads, as open-unlearning's `configs/eval/tofu_metrics/`
/// name them: the forget split's and the retain set's paraphrased rows, and the two utility sets'
/// perturbed rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TofuFiles {
    /// `forgetNN_perturbed.json`.
    pub forget: PathBuf,
    /// `retain_perturbed.json`.
    pub retain: PathBuf,
    /// `real_authors_perturbed.json`.
    pub real_authors: PathBuf,
    /// `world_facts_perturbed.json`.
    pub world_facts: PathBuf,
}

impl TofuFiles {
    /// The files of `split` in a TOFU folder (the shared data's `tofu/`).
    pub fn in_dir(dir: &Path, split: ForgetSplit) -> TofuFiles {
        TofuFiles {
            forget: dir.join(format!("{}_perturbed.json", split.name())),
            retain: dir.join("retain_perturbed.json"),
            real_authors: dir.join("real_authors_perturbed.json"),
            world_facts: dir.join("world_facts_perturbed.json"),
        }
    }
}

/// Every row of a plain TOFU file (`{question, answer}`; extra fields are read too), in order.
pub fn read_tofu_qa(path: &Path) -> Result<Vec<QaItem>> {
    read_rows(path, Needs::Answer)
}

/// Every row of a perturbed TOFU file: each needs a non-empty `perturbed_answer` list, of the same
/// length in every row (`real_authors_perturbed`, `world_facts_perturbed`; the paraphrased files
/// qualify too).
pub fn read_tofu_perturbed(path: &Path) -> Result<Vec<QaItem>> {
    read_rows(path, Needs::Perturbed)
}

/// Every row of a paraphrased TOFU file (`forget*_perturbed`, `retain_perturbed`): as
/// [`read_tofu_perturbed`], and each row needs a `paraphrased_answer`.
pub fn read_tofu_paraphrased(path: &Path) -> Result<Vec<QaItem>> {
    read_rows(path, Needs::Paraphrased)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Needs {
    Answer,
    Perturbed,
    Paraphrased,
}

fn read_rows(path: &Path, needs: Needs) -> Result<Vec<QaItem>> {
    let file = DataFile::read(path)?;
    let items = qa_items(&file, Split::All)?;
    if needs == Needs::Answer {
        return Ok(items);
    }
    let records = file.json_records()?;
    let mut width = None;
    for (item, r) in items.iter().zip(&records) {
        let n = item.perturbed_answers.len();
        if n == 0 {
            return Err(file.error(
                &format!("{}: perturbed_answer", r.at),
                "a non-empty list of wrong answers",
                found(r.value.get("perturbed_answer")),
            ));
        }
        let (w, first) = width.get_or_insert_with(|| (n, r.at.clone()));
        if *w != n {
            return Err(file.error(
                &format!("{}: perturbed_answer", r.at),
                &format!("{w} wrong answers, as at {first}"),
                format!("{n}"),
            ));
        }
        if needs == Needs::Paraphrased && item.paraphrased_answer.is_none() {
            return Err(file.error(
                &format!("{}: paraphrased_answer", r.at),
                "a string (the truth ratio's correct answer)",
                found(r.value.get("paraphrased_answer")),
            ));
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dsg-tofu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn splits_parse_and_cover_the_last_authors() {
        assert_eq!(
            "forget05".parse::<ForgetSplit>().unwrap(),
            ForgetSplit::Forget05
        );
        assert_eq!("1".parse::<ForgetSplit>().unwrap(), ForgetSplit::Forget01);
        let e = "forget20".parse::<ForgetSplit>().unwrap_err().to_string();
        assert!(e.contains("forget01, forget05 or forget10"), "{e}");
        assert_eq!(ForgetSplit::Forget10.row_range(), 3600..4000);
        assert_eq!(ForgetSplit::Forget01.author_range(), 198..200);
        assert_eq!(author_of(3619), 180);
    }

    #[test]
    fn perturbed_rows_need_their_lists() {
        let ok = temp(
            "ok.json",
            "{\"question\":\"q\",\"answer\":\"a\",\"perturbed_answer\":[\"x\",\"y\"]}\n",
        );
        assert_eq!(
            read_tofu_perturbed(&ok).unwrap()[0].perturbed_answers,
            ["x", "y"]
        );
        let e = read_tofu_paraphrased(&ok).unwrap_err().to_string();
        assert!(e.contains("ok.json: line 1: paraphrased_answer"), "{e}");
        let ragged = temp(
            "ragged.json",
            "{\"question\":\"q\",\"answer\":\"a\",\"perturbed_answer\":[\"x\",\"y\"]}\n\
             {\"question\":\"q\",\"answer\":\"a\",\"perturbed_answer\":[\"x\"]}\n",
        );
        let e = read_tofu_perturbed(&ragged).unwrap_err().to_string();
        assert!(
            e.contains("line 2: perturbed_answer: expected 2 wrong answers, as at line 1, found 1"),
            "{e}"
        );
        let plain = temp("plain.json", "{\"question\":\"q\",\"answer\":\"a\"}\n");
        let e = read_tofu_perturbed(&plain).unwrap_err().to_string();
        assert!(
            e.contains("line 1: perturbed_answer: expected a non-empty list"),
            "{e}"
        );
        let e = read_tofu_qa(&temp("bad.json", "{\"question\":\"q\"}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.json: line 1: answer: expected a string, found no such field"),
            "{e}"
        );
    }

    #[test]
    fn authors_are_runs_of_twenty() {
        let rows: Vec<QaItem> = (0..40)
            .map(|i| QaItem {
                index: i,
                question: format!("q{i}"),
                answer: "a".into(),
                paraphrased_question: None,
                paraphrased_answer: None,
                perturbed_answers: Vec::new(),
            })
            .collect();
        let a = authors(&rows, Path::new("full.json")).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1][0].question, "q20");
        let e = authors(&rows[..39], Path::new("full.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("full.json: rows: expected a positive multiple of 20"),
            "{e}"
        );
    }
}
