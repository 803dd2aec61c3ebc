//! Splitting a statistics pass across processes, and putting the pieces back together.
//!
//! [`Shard`] `i/n` processes rows `i, i+n, i+2n, …` of each corpus. Where the shard comes from is a
//! [`ShardSpec`]: written out (`--shard 3/8`), or read from a cluster scheduler's environment
//! (`--shard auto`, [`Shard::from_env`]) so that one array-job script serves every task:
//!
//! * a Slurm job array sets `SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_COUNT`
//!   (and `SLURM_ARRAY_TASK_STEP` for `--array=a-b:s`); the index is `(ID − MIN) / STEP`;
//! * a Kubernetes Indexed Job sets `JOB_COMPLETION_INDEX` but no count, so the count comes from
//!   `--shard-count` or `DSG_SHARD_COUNT` (the Job's `completions`).
//!
//! Each shard's statistics carry a [`ShardTag`]: the shard and a digest of what every shard of one
//! pass shares (model, SAE, hook, the full rows). [`check_shard_set`] refuses, before anything is
//! merged, a set with a shard missing or given twice, shards that disagree on the count, or shards
//! of different passes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Slurm's array task id (`--array=MIN-MAX`).
pub const SLURM_ARRAY_TASK_ID: &str = "SLURM_ARRAY_TASK_ID";
/// Slurm's lowest array task id.
pub const SLURM_ARRAY_TASK_MIN: &str = "SLURM_ARRAY_TASK_MIN";
/// Slurm's number of array tasks.
pub const SLURM_ARRAY_TASK_COUNT: &str = "SLURM_ARRAY_TASK_COUNT";
/// Slurm's array step (`--array=MIN-MAX:STEP`); 1 when absent.
pub const SLURM_ARRAY_TASK_STEP: &str = "SLURM_ARRAY_TASK_STEP";
/// A Kubernetes Indexed Job's pod index.
pub const JOB_COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";
/// The number of shards, for schedulers that give no count (Kubernetes).
pub const DSG_SHARD_COUNT: &str = "DSG_SHARD_COUNT";

/// Which rows this process handles: every `count`-th row starting at `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 0-based shard index, below `count`.
    pub index: usize,
    /// Number of shards (≥ 1).
    pub count: usize,
}

impl Shard {
    /// The single shard holding every row.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether row `row` belongs to this shard.
    pub fn contains(&self, row: usize) -> bool {
        row % self.count == self.index
    }

    /// The shard a scheduler's environment names, read through `env` (e.g.
    /// `|k| std::env::var(k).ok()`); `count` is `--shard-count`, when given. A Slurm array and a
    /// Kubernetes Indexed Job are recognised; when both are present they must agree, and any count
    /// given must agree with Slurm's. Errors name the variable and what it held.
    pub fn from_env(count: Option<usize>, env: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let count_env = number(&env, DSG_SHARD_COUNT)?;
        let count = match (count, count_env) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::Mismatch(format!(
                    "--shard-count {a} but {DSG_SHARD_COUNT}={b}"
                )))
            }
            (Some(c), _) | (None, Some(c)) => Some(c),
            (None, None) => None,
        };
        if count == Some(0) {
            return Err(Error::out_of_range(
                "--shard-count (or DSG_SHARD_COUNT)",
                0,
                "at least 1 shard",
            ));
        }
        let slurm = slurm_shard(&env)?;
        let k8s = k8s_shard(&env, count.or(slurm.map(|s| s.count)))?;
        match (slurm, k8s) {
            (Some(s), Some(k)) if s != k => Err(Error::Mismatch(format!(
                "the Slurm array says shard {s} but {JOB_COMPLETION_INDEX} says {k}"
            ))),
            (Some(s), _) => match count {
                Some(c) if c != s.count => Err(Error::Mismatch(format!(
                    "the shard count is {c} (--shard-count or {DSG_SHARD_COUNT}) but \
                     {SLURM_ARRAY_TASK_COUNT}={}",
                    s.count
                ))),
                _ => Ok(s),
            },
            (None, Some(k)) => Ok(k),
            (None, None) => Err(Error::Invalid(format!(
                "--shard auto: no shard in the environment: expected a Slurm job array \
                 ({SLURM_ARRAY_TASK_ID}, {SLURM_ARRAY_TASK_MIN}, {SLURM_ARRAY_TASK_COUNT}) or a \
                 Kubernetes Indexed Job ({JOB_COMPLETION_INDEX} with --shard-count or \
                 {DSG_SHARD_COUNT}), but neither {SLURM_ARRAY_TASK_ID} nor {JOB_COMPLETION_INDEX} \
                 is set"
            ))),
        }
    }
}

/// Variable `name` as a non-negative integer, when set.
fn number(env: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<usize>> {
    env(name)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| Error::out_of_range(name, format!("{v:?}"), "a non-negative integer"))
        })
        .transpose()
}

/// Variable `name`, which must be set because `because` is.
fn required(env: &impl Fn(&str) -> Option<String>, name: &str, because: &str) -> Result<usize> {
    number(env, name)?.ok_or_else(|| {
        Error::Invalid(format!(
            "--shard auto: {because} is set but {name} is not (a Slurm job array sets both)"
        ))
    })
}

/// The shard of a Slurm job array task, when `SLURM_ARRAY_TASK_ID` is set.
fn slurm_shard(env: &impl Fn(&str) -> Option<String>) -> Result<Option<Shard>> {
    let Some(id) = number(env, SLURM_ARRAY_TASK_ID)? else {
        return Ok(None);
    };
    let min = required(env, SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_ID)?;
    let count = required(env, SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_ID)?;
    let step = number(env, SLURM_ARRAY_TASK_STEP)?.unwrap_or(1);
    if step == 0 {
        return Err(Error::out_of_range(SLURM_ARRAY_TASK_STEP, 0, "a step ≥ 1"));
    }
    if id < min || (id - min) % step != 0 {
        return Err(Error::out_of_range(
            SLURM_ARRAY_TASK_ID,
            id,
            format!("{SLURM_ARRAY_TASK_MIN} ({min}) plus a multiple of the step ({step})"),
        ));
    }
    let index = (id - min) / step;
    if index >= count {
        return Err(Error::out_of_range(
            SLURM_ARRAY_TASK_ID,
            id,
            format!(
                "one of the {count} tasks of {SLURM_ARRAY_TASK_COUNT} from {SLURM_ARRAY_TASK_MIN} \
                 ({min}) in steps of {step}; give a contiguous array such as --array=0-{}",
                count.saturating_sub(1)
            ),
        ));
    }
    Ok(Some(Shard { index, count }))
}

/// The shard of a Kubernetes Indexed Job pod, when `JOB_COMPLETION_INDEX` is set.
fn k8s_shard(env: &impl Fn(&str) -> Option<String>, count: Option<usize>) -> Result<Option<Shard>> {
    let Some(index) = number(env, JOB_COMPLETION_INDEX)? else {
        return Ok(None);
    };
    let count = count.ok_or_else(|| {
        Error::Invalid(format!(
            "--shard auto: {JOB_COMPLETION_INDEX} is {index} but the shard count is unknown \
             (Kubernetes sets no count): pass --shard-count N or set {DSG_SHARD_COUNT} to the \
             Job's completions"
        ))
    })?;
    if index >= count {
        return Err(Error::out_of_range(
            JOB_COMPLETION_INDEX,
            index,
            format!("an index below the shard count {count}"),
        ));
    }
    Ok(Some(Shard { index, count }))
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = Error;

    /// Parses `i/n` with `i < n`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Invalid(format!("shard {s:?}: expected i/n with 0 ≤ i < n"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// How a shard is named on the command line: `i/n`, or `auto` (also `env`) for the scheduler's
/// environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSpec {
    /// This shard.
    Fixed(Shard),
    /// The shard the environment names ([`Shard::from_env`]).
    FromEnv,
}

impl ShardSpec {
    /// The shard: a fixed one (which must agree with `count`, when given), or the environment's.
    pub fn resolve(
        self,
        count: Option<usize>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Shard> {
        match self {
            ShardSpec::Fixed(s) => match count {
                Some(c) if c != s.count => Err(Error::Mismatch(format!(
                    "--shard {s} but --shard-count {c}"
                ))),
                _ => Ok(s),
            },
            ShardSpec::FromEnv => Shard::from_env(count, env),
        }
    }
}

impl FromStr for ShardSpec {
    type Err = Error;

    /// Parses `auto`, `env` or `i/n`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "auto" | "env" => Ok(ShardSpec::FromEnv),
            other => other.parse().map(ShardSpec::Fixed).map_err(|_| {
                Error::Invalid(format!(
                    "shard {s:?}: expected i/n with 0 ≤ i < n, or auto (from the Slurm or \
                     Kubernetes environment)"
                ))
            }),
        }
    }
}

/// What a shard's statistics record about the pass they belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardTag {
    /// Which shard.
    pub shard: Shard,
    /// Digest of what every shard of the pass shares (model, SAE, hook, token conventions, the
    /// full rows of both corpora); shards of different passes have different digests.
    pub pass: String,
}

/// Checks that `shards` (a file and its tag, `None` for statistics that are not a shard: older
/// files, unsharded fits, merges) can be merged: every file at most once, and either no tags at
/// all or every shard `0..n` of one pass exactly once. Errors name the files.
pub fn check_shard_set(shards: &[(PathBuf, Option<ShardTag>)]) -> Result<()> {
    let mut seen: BTreeSet<&Path> = BTreeSet::new();
    for (p, _) in shards {
        if !seen.insert(p) {
            return Err(Error::Invalid(format!(
                "{} is given twice; each shard is merged once",
                p.display()
            )));
        }
    }
    let tagged: Vec<(&Path, &ShardTag)> = shards
        .iter()
        .filter_map(|(p, t)| t.as_ref().map(|t| (p.as_path(), t)))
        .collect();
    let Some(&(first, first_tag)) = tagged.first() else {
        return Ok(());
    };
    if let Some((p, _)) = shards.iter().find(|(_, t)| t.is_none()) {
        return Err(Error::Invalid(format!(
            "{} records no shard (written by an unsharded `dsg fit`, a merge, or an older dsg) \
             but {} is shard {}; merge the shards of one `dsg fit --shard` pass only",
            p.display(),
            first.display(),
            first_tag.shard
        )));
    }
    let count = first_tag.shard.count;
    for &(p, t) in &tagged[1..] {
        if t.shard.count != count {
            return Err(Error::Mismatch(format!(
                "{} is shard {} but {} is shard {}: the shards disagree on the shard count",
                first.display(),
                first_tag.shard,
                p.display(),
                t.shard
            )));
        }
        if t.pass != first_tag.pass {
            return Err(Error::Mismatch(format!(
                "{} and {} are shards of different passes (another model, SAE, hook, corpus, \
                 seed, --rows, --fraction or --ctx)",
                first.display(),
                p.display()
            )));
        }
    }
    let mut by_index: BTreeMap<usize, &Path> = BTreeMap::new();
    for &(p, t) in &tagged {
        if let Some(other) = by_index.insert(t.shard.index, p) {
            return Err(Error::Invalid(format!(
                "shard {} is given twice: {} and {}",
                t.shard,
                other.display(),
                p.display()
            )));
        }
    }
    let missing: Vec<String> = (0..count)
        .filter(|i| !by_index.contains_key(i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        let (noun, verb) = match missing.len() {
            1 => ("shard", "is"),
            _ => ("shards", "are"),
        };
        return Err(Error::Invalid(format!(
            "{noun} {} {verb} missing: {} of {count} shards given",
            missing.join(", "),
            tagged.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn slurm(id: &str, min: &str, count: &str) -> Vec<(&'static str, String)> {
        vec![
            (SLURM_ARRAY_TASK_ID, id.to_string()),
            (SLURM_ARRAY_TASK_MIN, min.to_string()),
            (SLURM_ARRAY_TASK_COUNT, count.to_string()),
        ]
    }

    fn resolve(vars: &[(&str, String)], count: Option<usize>) -> Result<Shard> {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Shard::from_env(count, env(&vars))
    }

    fn message(r: Result<Shard>) -> String {
        r.expect_err("should be refused").to_string()
    }

    #[test]
    fn slurm_index_counts_from_the_array_minimum() {
        assert_eq!(
            resolve(&slurm("5", "0", "8"), None).unwrap(),
            Shard { index: 5, count: 8 }
        );
        assert_eq!(
            resolve(&slurm("1", "1", "3"), None).unwrap(),
            Shard { index: 0, count: 3 }
        );
        let mut stepped = slurm("14", "10", "3");
        stepped.push((SLURM_ARRAY_TASK_STEP, "2".into()));
        assert_eq!(
            resolve(&stepped, None).unwrap(),
            Shard { index: 2, count: 3 }
        );
        assert_eq!(
            resolve(&slurm("3", "0", "4"), Some(4)).unwrap(),
            Shard { index: 3, count: 4 }
        );
    }

    #[test]
    fn kubernetes_index_takes_its_count_from_the_option_or_variable() {
        let k8s = |i: &str| vec![(JOB_COMPLETION_INDEX, i.to_string())];
        assert_eq!(
            resolve(&k8s("2"), Some(4)).unwrap(),
            Shard { index: 2, count: 4 }
        );
        let mut with_var = k8s("0");
        with_var.push((DSG_SHARD_COUNT, "2".into()));
        assert_eq!(
            resolve(&with_var, None).unwrap(),
            Shard { index: 0, count: 2 }
        );
        assert_eq!(
            resolve(&with_var, Some(2)).unwrap(),
            Shard { index: 0, count: 2 }
        );
        let e = message(resolve(&k8s("2"), None));
        assert!(
            e.contains(JOB_COMPLETION_INDEX) && e.contains("--shard-count"),
            "{e}"
        );
        assert!(e.contains(DSG_SHARD_COUNT), "{e}");
    }

    #[test]
    fn values_that_are_not_numbers_are_named_with_what_was_found() {
        for (var, vars) in [
            (SLURM_ARRAY_TASK_ID, slurm("three", "0", "8")),
            (SLURM_ARRAY_TASK_MIN, slurm("3", "-1", "8")),
            (SLURM_ARRAY_TASK_COUNT, slurm("3", "0", "")),
            (
                JOB_COMPLETION_INDEX,
                vec![(JOB_COMPLETION_INDEX, "1.5".into())],
            ),
            (
                DSG_SHARD_COUNT,
                vec![
                    (JOB_COMPLETION_INDEX, "1".into()),
                    (DSG_SHARD_COUNT, "eight".into()),
                ],
            ),
        ] {
            let e = message(resolve(&vars, None));
            assert!(e.starts_with(var), "{var}: {e}");
            assert!(e.contains("non-negative integer"), "{var}: {e}");
        }
        let e = message(resolve(&slurm("three", "0", "8"), None));
        assert!(e.contains("\"three\""), "{e}");
    }

    #[test]
    fn an_index_at_or_beyond_the_count_is_refused() {
        let e = message(resolve(&slurm("8", "0", "8"), None));
        assert!(e.contains(SLURM_ARRAY_TASK_ID) && e.contains('8'), "{e}");
        let e = message(resolve(&slurm("7", "1", "3"), None));
        assert!(e.contains("--array=0-2"), "{e}");
        let e = message(resolve(&slurm("0", "1", "3"), None));
        assert!(e.contains(SLURM_ARRAY_TASK_MIN), "{e}");
        let e = message(resolve(&[(JOB_COMPLETION_INDEX, "4".into())], Some(4)));
        assert!(
            e.contains(JOB_COMPLETION_INDEX) && e.contains("below the shard count 4"),
            "{e}"
        );
        let mut bad_step = slurm("3", "0", "4");
        bad_step.push((SLURM_ARRAY_TASK_STEP, "2".into()));
        assert!(message(resolve(&bad_step, None)).contains("step (2)"));
    }

    #[test]
    fn no_scheduler_or_an_incomplete_one_is_named() {
        let e = message(resolve(&[], None));
        assert!(
            e.contains(SLURM_ARRAY_TASK_ID) && e.contains(JOB_COMPLETION_INDEX),
            "{e}"
        );
        let e = message(resolve(&[(SLURM_ARRAY_TASK_ID, "2".into())], None));
        assert!(e.contains(SLURM_ARRAY_TASK_MIN), "{e}");
        let e = message(resolve(&[(DSG_SHARD_COUNT, "0".into())], None));
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn two_sources_that_disagree_are_refused() {
        let mut both = slurm("2", "0", "4");
        both.push((JOB_COMPLETION_INDEX, "2".into()));
        assert_eq!(resolve(&both, None).unwrap(), Shard { index: 2, count: 4 });
        both[3].1 = "1".into();
        let e = message(resolve(&both, None));
        assert!(
            e.contains("2/4") && e.contains("1/4") && e.contains(JOB_COMPLETION_INDEX),
            "{e}"
        );
        let e = message(resolve(&slurm("2", "0", "4"), Some(8)));
        assert!(e.contains(SLURM_ARRAY_TASK_COUNT) && e.contains('8'), "{e}");
        let e = message(resolve(
            &[
                (JOB_COMPLETION_INDEX, "1".into()),
                (DSG_SHARD_COUNT, "3".into()),
            ],
            Some(4),
        ));
        assert!(e.contains("--shard-count 4") && e.contains("=3"), "{e}");
    }

    #[test]
    fn specs_parse_and_fixed_shards_ignore_the_environment() {
        assert_eq!("auto".parse::<ShardSpec>().unwrap(), ShardSpec::FromEnv);
        assert_eq!("env".parse::<ShardSpec>().unwrap(), ShardSpec::FromEnv);
        let fixed: ShardSpec = "1/4".parse().unwrap();
        let everywhere = env(&[(JOB_COMPLETION_INDEX, "3")]);
        assert_eq!(
            fixed.resolve(None, &everywhere).unwrap(),
            Shard { index: 1, count: 4 }
        );
        assert!(fixed.resolve(Some(2), &everywhere).is_err());
        for bad in ["4/4", "x", "automatic"] {
            let e = bad.parse::<ShardSpec>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("auto"), "{e}");
        }
    }

    fn tag(index: usize, count: usize, pass: &str) -> Option<ShardTag> {
        Some(ShardTag {
            shard: Shard { index, count },
            pass: pass.into(),
        })
    }

    fn set(tags: Vec<(&str, Option<ShardTag>)>) -> Result<()> {
        let shards: Vec<(PathBuf, Option<ShardTag>)> = tags
            .into_iter()
            .map(|(p, t)| (PathBuf::from(p), t))
            .collect();
        check_shard_set(&shards)
    }

    fn refused(tags: Vec<(&str, Option<ShardTag>)>) -> String {
        set(tags).expect_err("should be refused").to_string()
    }

    #[test]
    fn a_complete_set_or_untagged_statistics_merge() {
        set(vec![("b", tag(1, 2, "p")), ("a", tag(0, 2, "p"))]).unwrap();
        set(vec![("a", tag(0, 1, "p"))]).unwrap();
        set(vec![("old1", None), ("old2", None)]).unwrap();
    }

    #[test]
    fn a_missing_shard_is_named() {
        let e = refused(vec![("s0", tag(0, 4, "p")), ("s2", tag(2, 4, "p"))]);
        assert!(
            e.contains("1/4, 3/4 are missing") && e.contains("2 of 4"),
            "{e}"
        );
        let e = refused(vec![("s1", tag(1, 2, "p"))]);
        assert!(e.contains("shard 0/2 is missing"), "{e}");
    }

    #[test]
    fn a_duplicated_shard_or_file_is_named() {
        let e = refused(vec![
            ("s0", tag(0, 2, "p")),
            ("s1", tag(1, 2, "p")),
            ("again/s1", tag(1, 2, "p")),
        ]);
        assert!(
            e.contains("shard 1/2 is given twice") && e.contains("s1 and again/s1"),
            "{e}"
        );
        let e = refused(vec![("old", None), ("old", None)]);
        assert!(e.contains("old is given twice"), "{e}");
    }

    #[test]
    fn inconsistent_counts_are_named() {
        let e = refused(vec![("s0", tag(0, 2, "p")), ("t1", tag(1, 3, "p"))]);
        assert!(
            e.contains("s0 is shard 0/2 but t1 is shard 1/3") && e.contains("count"),
            "{e}"
        );
    }

    #[test]
    fn shards_of_different_passes_are_named() {
        let e = refused(vec![("s0", tag(0, 2, "p")), ("other1", tag(1, 2, "q"))]);
        assert!(
            e.contains("s0 and other1") && e.contains("different passes"),
            "{e}"
        );
    }

    #[test]
    fn shards_mixed_with_untagged_statistics_are_named() {
        let e = refused(vec![("s0", tag(0, 2, "p")), ("merged", None)]);
        assert!(
            e.contains("merged records no shard") && e.contains("s0 is shard 0/2"),
            "{e}"
        );
    }
}
