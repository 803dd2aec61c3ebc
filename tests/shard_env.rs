//! `dsg fit --shard auto` as a cluster runs it: one `dsg` process per shard, each told its shard
//! only by the scheduler's environment (a Slurm job array, a Kubernetes Indexed Job), then
//! `dsg stats merge` and `dsg fit --from-stats`. The merged statistics and the guardrail fitted
//! from them must equal one unsharded pass; a merge with a shard missing or given twice, a fit
//! from one shard, and an environment naming no shard must fail with a message naming the problem.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dsg::guard::stats_files::StatsFiles;
use dsg::guard::GuardrailFile;
use dsg::model::HookPoint;
use dsg::sae::SaeMeta;
use dsg::stats::shard::{
    DSG_SHARD_COUNT, JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_ID,
    SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_STEP,
};
use dsg::stats::{FeatureStats, RowActivity};

/// Shards per sharded pass.
const SHARDS: usize = 3;

/// Every variable `--shard auto` reads; cleared in each child so that a test run inside a Slurm
/// job or a Kubernetes pod sees only what the test sets.
const SCHEDULER_VARS: [&str; 6] = [
    SLURM_ARRAY_TASK_ID,
    SLURM_ARRAY_TASK_MIN,
    SLURM_ARRAY_TASK_COUNT,
    SLURM_ARRAY_TASK_STEP,
    JOB_COMPLETION_INDEX,
    DSG_SHARD_COUNT,
];

/// The inputs every fit reads: the tiny GGUF model (with a tokenizer), a random SAE on it, and
/// two small corpora.
struct Inputs {
    dir: PathBuf,
    model: PathBuf,
    sae: PathBuf,
    forget: PathBuf,
    retain: PathBuf,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn inputs(name: &str) -> Inputs {
    let dir = common::scratch("shard_env", name);
    let sae = dir.join("sae");
    common::random_sae(128, HookPoint::resid_post(1))
        .save(&sae, &SaeMeta::default())
        .unwrap();
    let words = |vocab: [&str; 5]| -> String {
        (0..60)
            .map(|line| {
                (0..20)
                    .map(|i| vocab[(line * 7 + i * 3) % 5])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (forget, retain) = (dir.join("forget.txt"), dir.join("retain.txt"));
    std::fs::write(
        &forget,
        words(["virus", "protein", "spike", "cell", "gene"]),
    )
    .unwrap();
    std::fs::write(
        &retain,
        words(["river", "mountain", "city", "music", "law"]),
    )
    .unwrap();
    Inputs {
        dir,
        model: common::fixture("gguf/tiny_f32.gguf"),
        sae,
        forget,
        retain,
    }
}

/// `dsg args…` with the scheduler variables cleared and then `env` set, not yet started.
fn dsg(args: &[String], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dsg"));
    cmd.args(args).env(
        "DSG_CACHE",
        std::env::temp_dir().join("dsg-shard-env-cache"),
    );
    for var in SCHEDULER_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn succeeds(out: Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", stderr(&out));
}

/// The stderr of a run that must fail without panicking.
fn fails(out: Output, what: &str) -> String {
    let e = stderr(&out);
    assert!(!out.status.success(), "{what} should fail; stderr: {e}");
    assert!(!e.contains("panicked"), "{what} panicked: {e}");
    e
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should mention {p:?}");
    }
}

impl Inputs {
    /// `dsg fit` on the corpora (or, with `from_stats`, on statistics) writing `out`, plus `extra`.
    fn fit(&self, out: &Path, from_stats: Option<&Path>, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "fit".into(),
            "--model".into(),
            s(&self.model),
            "--sae".into(),
            s(&self.sae),
        ];
        match from_stats {
            Some(p) => a.extend(["--from-stats".into(), s(p)]),
            None => a.extend([
                "--forget".into(),
                s(&self.forget),
                "--retain".into(),
                s(&self.retain),
            ]),
        }
        for x in [
            "--n-features",
            "5",
            "--p-ratio",
            "50",
            "--rows",
            "16",
            "--ctx",
            "32",
            "--batch",
            "2",
            "--out",
        ] {
            a.push(x.into());
        }
        a.push(s(out));
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    }

    /// Runs one `dsg fit --shard auto` process per shard at once, as a scheduler would, shard `i`
    /// seeing `env(i)` and writing `<folder>/shard-<i>.json`; returns the shard prefixes.
    fn sharded(
        &self,
        folder: &str,
        extra: &[&str],
        env: impl Fn(usize) -> Vec<(&'static str, String)>,
    ) -> Vec<PathBuf> {
        let dir = self.dir.join(folder);
        let prefixes: Vec<PathBuf> = (0..SHARDS)
            .map(|i| dir.join(format!("shard-{i}.json")))
            .collect();
        let mut args = vec!["--shard", "auto"];
        args.extend(extra);
        let children: Vec<_> = prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                dsg(&self.fit(p, None, &args), &env(i))
                    .stderr(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("the dsg binary starts")
            })
            .collect();
        for (i, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            succeeds(out, &format!("{folder} shard {i}"));
        }
        prefixes
    }
}

/// `dsg stats merge --out out shards…`.
fn merge(out: &Path, shards: &[PathBuf]) -> Output {
    let mut args = vec!["stats".into(), "merge".into(), "--out".into(), s(out)];
    args.extend(shards.iter().map(|p| s(p)));
    dsg(&args, &[]).output().unwrap()
}

/// A Slurm array `--array=1-3`: ids from 1, so the index is the id minus SLURM_ARRAY_TASK_MIN.
fn slurm(i: usize) -> Vec<(&'static str, String)> {
    vec![
        (SLURM_ARRAY_TASK_ID, (i + 1).to_string()),
        (SLURM_ARRAY_TASK_MIN, "1".into()),
        (SLURM_ARRAY_TASK_COUNT, SHARDS.to_string()),
    ]
}

/// A Kubernetes Indexed Job with `completions: 3` passed on as DSG_SHARD_COUNT.
fn k8s(i: usize) -> Vec<(&'static str, String)> {
    vec![
        (JOB_COMPLETION_INDEX, i.to_string()),
        (DSG_SHARD_COUNT, SHARDS.to_string()),
    ]
}

/// Asserts that the statistics beside `merged` equal those beside `single` (sums up to the order
/// of f64 additions, counts exactly, token activity up to row order).
fn assert_same_stats(merged: &Path, single: &Path, features: &[u32]) {
    let (m, o) = (StatsFiles::beside(merged), StatsFiles::beside(single));
    for (a, b) in [(&m.forget, &o.forget), (&m.retain, &o.retain)] {
        let (a, b) = (
            FeatureStats::load(a).unwrap(),
            FeatureStats::load(b).unwrap(),
        );
        assert_eq!(a.shard, None, "a merge is no shard");
        assert_eq!(
            (a.n_rows(), a.n_tokens(), a.n_counted()),
            (b.n_rows(), b.n_tokens(), b.n_counted())
        );
        assert_eq!(a.freq(), b.freq());
        assert_eq!(a.provenance, b.provenance);
        for (x, y) in [(a.mean(), b.mean()), (a.mean_sq(), b.mean_sq())] {
            for (x, y) in x.iter().zip(&y) {
                assert!((x - y).abs() <= 1e-12 * y.abs().max(1.0), "{x} vs {y}");
            }
        }
    }
    let sorted = |p: &Path| {
        let mut rows = RowActivity::load(p).unwrap().activity(features).unwrap();
        rows.sort();
        rows
    };
    assert_eq!(sorted(&m.retain_activity), sorted(&o.retain_activity));
}

#[test]
fn shards_from_slurm_and_kubernetes_environments_merge_into_one_pass() {
    let inp = inputs("one_pass");
    let single = inp.dir.join("single/guard.json");
    succeeds(
        dsg(&inp.fit(&single, None, &[]), &[]).output().unwrap(),
        "the unsharded fit",
    );
    let reference = GuardrailFile::load(&single).unwrap();
    for (name, env, extra) in [
        ("slurm", slurm as fn(usize) -> _, &[][..]),
        ("k8s", k8s, &[][..]),
        // Kubernetes with the count given as an option instead of a variable.
        (
            "k8s-option",
            |i: usize| k8s(i)[..1].to_vec(),
            &["--shard-count", "3"][..],
        ),
    ] {
        let mut shards = inp.sharded(name, extra, env);
        for (i, p) in shards.iter().enumerate() {
            let tag = StatsFiles::beside(p).shard_tag().unwrap().unwrap();
            assert_eq!((tag.shard.index, tag.shard.count), (i, SHARDS), "{name}");
        }
        shards.reverse(); // the order given does not matter
        let merged = inp.dir.join(name).join("merged.json");
        succeeds(merge(&merged, &shards), &format!("{name} merge"));
        let guard = inp.dir.join(name).join("guard.json");
        succeeds(
            dsg(&inp.fit(&guard, Some(&merged), &[]), &[])
                .output()
                .unwrap(),
            &format!("{name} fit from the merged statistics"),
        );
        let fitted = GuardrailFile::load(&guard).unwrap();
        assert_eq!(fitted.feature_ids(), reference.feature_ids(), "{name}");
        assert_eq!(fitted.gate, reference.gate, "{name}");
        assert_eq!(fitted.calibration, reference.calibration, "{name}");
        assert_eq!(
            (fitted.provenance.forget_rows, fitted.provenance.retain_rows),
            (
                reference.provenance.forget_rows,
                reference.provenance.retain_rows
            )
        );
        assert_same_stats(&merged, &single, &reference.feature_ids());
    }
}

#[test]
fn incomplete_or_repeated_shard_sets_and_lone_shards_are_refused() {
    let inp = inputs("refused");
    let shards = inp.sharded("k8s", &[], k8s);
    let out = inp.dir.join("merged.json");
    let e = fails(
        merge(&out, &[shards[0].clone(), shards[2].clone()]),
        "merging 0 and 2",
    );
    assert_mentions(&e, &["shard 1/3 is missing", "2 of 3"]);
    // Shard 0 again, from another process of the same pass (a Slurm array from 0).
    let again = inp.dir.join("again/shard-0.json");
    let slurm0 = vec![
        (SLURM_ARRAY_TASK_ID, "0".to_string()),
        (SLURM_ARRAY_TASK_MIN, "0".into()),
        (SLURM_ARRAY_TASK_COUNT, SHARDS.to_string()),
    ];
    succeeds(
        dsg(&inp.fit(&again, None, &["--shard", "auto"]), &slurm0)
            .output()
            .unwrap(),
        "shard 0 again",
    );
    let mut repeated = shards.clone();
    repeated.push(again.clone());
    let e = fails(merge(&out, &repeated), "merging shard 0 twice");
    assert_mentions(
        &e,
        &["shard 0/3 is given twice", &s(&shards[0]), &s(&again)],
    );
    for p in StatsFiles::beside(&out).paths() {
        assert!(!p.exists(), "a refused merge wrote {}", p.display());
    }
    let lone = inp.dir.join("lone.json");
    let e = fails(
        dsg(&inp.fit(&lone, Some(&shards[1]), &[]), &[])
            .output()
            .unwrap(),
        "fitting from one shard",
    );
    assert_mentions(&e, &["--from-stats", "shard 1/3 only", "dsg stats merge"]);
    succeeds(merge(&out, &shards), "merging the whole set");
}

#[test]
fn an_environment_without_a_usable_shard_is_named() {
    let inp = inputs("bad_env");
    let out = inp.dir.join("shard.json");
    let run = |env: &[(&str, String)], extra: &[&str]| {
        let mut args = vec!["--shard", "auto"];
        args.extend(extra);
        fails(
            dsg(&inp.fit(&out, None, &args), env).output().unwrap(),
            &format!("{env:?}"),
        )
    };
    let e = run(&[], &[]);
    assert_mentions(&e, &[SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX]);
    let e = run(&[(JOB_COMPLETION_INDEX, "1".into())], &[]);
    assert_mentions(&e, &["--shard-count", DSG_SHARD_COUNT]);
    let e = run(&k8s(0)[..1], &["--shard-count", "x"]);
    assert_mentions(&e, &["--shard-count"]);
    let mut bad = slurm(0);
    bad[0].1 = "first".into();
    let e = run(&bad, &[]);
    assert_mentions(&e, &[SLURM_ARRAY_TASK_ID, "\"first\""]);
    let e = run(&slurm(3), &[]);
    assert_mentions(&e, &[SLURM_ARRAY_TASK_ID, "4"]);
    let mut both = slurm(1);
    both.push((JOB_COMPLETION_INDEX, "2".into()));
    let e = run(&both, &[]);
    assert_mentions(&e, &["1/3", "2/3"]);
    assert!(!out.exists() && !StatsFiles::beside(&out).forget.exists());
}
