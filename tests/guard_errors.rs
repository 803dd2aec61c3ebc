//! Bad guard inputs are refused with an error that names the field or option, before any
//! expensive work: `dsg fit` requests ([`FitRequest::validate`], [`dsg::guard::fit::run`]), output
//! paths, statistics shards, and guardrail files ([`GuardrailFile::load`], [`Guardrail::load`]).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use dsg::guard::recipe::wmdp_bio;
use dsg::guard::stats_files::{merge_shards, StatsFiles};
use dsg::guard::{FitRequest, Gate, Guardrail, GuardrailFile};
use dsg::output::Overwrite;
use dsg::Error;
use serde_json::Value;

/// One edit of a valid request or file, named by the field it breaks.
type Edit<T> = Box<dyn FnOnce(&mut T)>;

const SHIPPED: &str = "assets/guards/wmdp-bio-smollm2-135m-L3.json";

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A valid request on small scratch corpora and the SAE fixture, writing into `dir`.
fn request(dir: &Path) -> FitRequest {
    let forget = dir.join("forget.txt");
    let retain = dir.join("retain.txt");
    std::fs::write(&forget, "virus spike protein ".repeat(50)).unwrap();
    std::fs::write(&retain, "the river flows north ".repeat(50)).unwrap();
    let mut req = wmdp_bio(
        dir,
        common::sae_fixture("dsg/jumprelu_f16"),
        dir.join("g.json"),
    );
    req.forget = vec![forget];
    req.retain = vec![retain.clone()];
    req.calibrate_mcq = vec![];
    req
}

/// The option (or field) a range error names.
fn field_of(e: &Error) -> &str {
    match e {
        Error::OutOfRange { field, .. } => field,
        Error::Format { field, .. } => field,
        other => panic!("expected a range or format error, got {other}"),
    }
}

fn refused(name: &str, edit: impl FnOnce(&mut FitRequest)) -> Error {
    let dir = common::scratch("guard_errors", name);
    let mut req = request(&dir);
    req.validate().expect("the unedited request is valid");
    edit(&mut req);
    req.validate().unwrap_err()
}

#[test]
fn fit_options_out_of_range_name_the_option() {
    let cases: Vec<(&str, Edit<FitRequest>)> = vec![
        ("--n-features", Box::new(|r| r.n_features = 0)),
        ("--p-ratio", Box::new(|r| r.p_ratio = 150.0)),
        (
            "--min-forget-freq",
            Box::new(|r| r.min_forget_freq = Some(-0.1)),
        ),
        (
            "--min-forget-freq",
            Box::new(|r| r.min_forget_freq = Some(2.0)),
        ),
        ("--p-dyn", Box::new(|r| r.p_dyn = 101.0)),
        ("--rows", Box::new(|r| r.rows = 0)),
        ("--fraction", Box::new(|r| r.fraction = 0.0)),
        ("--fraction", Box::new(|r| r.fraction = 200.0)),
        ("--ctx", Box::new(|r| r.ctx = 0)),
        ("--ctx", Box::new(|r| r.ctx = 1)),
        ("--batch", Box::new(|r| r.batch = 0)),
        ("--clamp", Box::new(|r| r.clamp = f64::NAN)),
        ("--clamp", Box::new(|r| r.clamp = 0.0)),
        ("--clamp", Box::new(|r| r.clamp = -500.0)),
        (
            "--calibrate-limit",
            Box::new(|r| r.calibrate_limit = Some(0)),
        ),
        (
            "gate.width",
            Box::new(|r| r.gate = Gate::Window { width: 0, tau: 0.0 }),
        ),
        (
            "gate.drift",
            Box::new(|r| {
                r.gate = Gate::Cusum {
                    drift: -0.1,
                    threshold: 0.0,
                }
            }),
        ),
        (
            "gate.drift",
            Box::new(|r| {
                r.gate = Gate::Cusum {
                    drift: f64::NAN,
                    threshold: 0.0,
                }
            }),
        ),
    ];
    for (i, (option, edit)) in cases.into_iter().enumerate() {
        let e = refused(&format!("range-{i}"), edit);
        assert_eq!(field_of(&e), option, "{e}");
    }
}

#[test]
fn missing_input_files_are_named() {
    for (i, option) in ["--forget", "--retain", "--calibrate-mcq"]
        .iter()
        .enumerate()
    {
        let e = refused(&format!("missing-{i}"), |r| {
            let absent = r.out.with_file_name("absent.json");
            match i {
                0 => r.forget = vec![absent],
                1 => r.retain = vec![absent],
                _ => r.calibrate_mcq = vec![absent],
            }
        });
        assert!(
            matches!(&e, Error::Missing { what, path } if what.contains(option) && path.ends_with("absent.json")),
            "{e}"
        );
    }
    let e = refused("missing-stats", |r| {
        r.from_stats = Some(r.out.with_file_name("none"))
    });
    assert!(
        matches!(&e, Error::Missing { what, .. } if what.contains("--from-stats")),
        "{e}"
    );
}

#[test]
fn outputs_that_are_inputs_or_exist_are_refused() {
    let e = refused("out-forget", |r| r.out = r.forget[0].clone());
    assert!(
        matches!(&e, Error::Output { reason, .. } if reason.contains("input")),
        "{e}"
    );
    let e = refused("out-in-sae", |r| r.out = r.sae.join("guard.json"));
    assert!(
        matches!(&e, Error::Output { reason, .. } if reason.contains("inside the input folder")),
        "{e}"
    );
    let e = refused("out-exists", |r| std::fs::write(&r.out, "{}").unwrap());
    assert!(
        matches!(&e, Error::Output { reason, .. } if reason.contains("--force")),
        "{e}"
    );
    let dir = common::scratch("guard_errors", "out-forced");
    let mut req = request(&dir);
    std::fs::write(&req.out, "{}").unwrap();
    req.overwrite = Overwrite::Force;
    req.validate().unwrap();
    // The statistics beside --out are outputs too.
    let e = refused("stats-exist", |r| {
        std::fs::write(&StatsFiles::beside(&r.out).retain, "x").unwrap()
    });
    assert!(
        matches!(&e, Error::Output { path, .. } if path.to_string_lossy().contains("retain.stats")),
        "{e}"
    );
}

#[test]
fn bad_fit_arguments_fail_in_under_2_s() {
    let Some(wikitext) = common::shared_data_or_skip("wikitext/wikitext-2-raw-v1.test.raw") else {
        return;
    };
    let lm = dsg::model::load(&common::fixture("gguf/tiny_f32.gguf"), &Device::Cpu).unwrap();
    let dir = common::scratch("guard_errors", "fast");
    let mut req = request(&dir);
    req.forget = vec![wikitext.clone()];
    req.retain = vec![wikitext];
    req.ctx = 1;
    let t = Instant::now();
    let e = dsg::guard::fit::run(&lm, &req, None).unwrap_err();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(field_of(&e), "--ctx", "{e}");
    assert!(secs < 2.0, "an argument error took {secs:.2} s");
    assert!(!req.out.exists());
}

#[test]
fn merging_refuses_missing_shards_and_protected_outputs() {
    let dir = common::scratch("guard_errors", "merge");
    let e = merge_shards(
        &[dir.join("shard0.json")],
        &dir.join("m.json"),
        Overwrite::Refuse,
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::Missing { what, .. } if what.contains("statistics file")),
        "{e}"
    );
    let shard = dir.join("shard0.json");
    let e = merge_shards(std::slice::from_ref(&shard), &shard, Overwrite::Force).unwrap_err();
    assert!(matches!(&e, Error::Output { .. }), "{e}");
    let e = merge_shards(&[], &dir.join("m.json"), Overwrite::Refuse).unwrap_err();
    assert_eq!(field_of(&e), "shards");
}

/// The shipped guardrail with `edit` applied, loaded from a scratch copy.
fn load_edited(name: &str, edit: impl FnOnce(&mut Value)) -> Error {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(repo(SHIPPED)).unwrap()).unwrap();
    edit(&mut v);
    let path = common::scratch("guard_errors", name).join("g.json");
    std::fs::write(&path, v.to_string()).unwrap();
    GuardrailFile::load(&path).unwrap_err()
}

#[test]
fn guardrail_files_with_bad_values_name_the_field() {
    use serde_json::json;
    let cases: Vec<(&str, Edit<Value>)> = vec![
        (
            "gate.threshold",
            Box::new(|v| v["gate"]["threshold"] = json!(-1.0)),
        ),
        (
            "gate.tau",
            Box::new(|v| v["gate"] = json!({"kind": "paper", "tau": 1.5})),
        ),
        (
            "gate.tau",
            Box::new(|v| v["gate"] = json!({"kind": "window", "width": 8, "tau": -0.1})),
        ),
        ("gate.drift", Box::new(|v| v["gate"]["drift"] = json!(-0.2))),
        (
            "clamp.value",
            Box::new(|v| v["clamp"]["value"] = json!(500.0)),
        ),
        (
            "clamp.scale",
            Box::new(|v| v["clamp"] = json!({"kind": "norm_relative", "scale": -1.0})),
        ),
        // JSON has no NaN: serde_json writes it as null, which no number field accepts.
        ("gate", Box::new(|v| v["gate"]["drift"] = Value::Null)),
        (
            "features",
            Box::new(|v| v["features"][0]["forget"]["mean"] = Value::Null),
        ),
        ("features", Box::new(|v| v["features"] = json!([]))),
        (
            "features",
            Box::new(|v| v["features"][1]["id"] = v["features"][0]["id"].clone()),
        ),
        (
            "features",
            // One past the last latent.
            Box::new(|v| v["features"][0]["id"] = v["d_sae"].clone()),
        ),
        (
            "selection.ratio_percentile",
            Box::new(|v| v["selection"]["ratio_percentile"] = json!(101.0)),
        ),
        (
            "provenance.data_fraction",
            Box::new(|v| v["provenance"]["data_fraction"] = json!(0.0)),
        ),
    ];
    for (i, (field, edit)) in cases.into_iter().enumerate() {
        let e = load_edited(&format!("file-{i}"), edit);
        assert_eq!(field_of(&e), field, "{e}");
    }
}

#[test]
fn a_guardrail_whose_hook_differs_from_its_saes_is_refused() {
    let model = dsg::model::fetch::default_model_path();
    if !model.is_file() {
        eprintln!("skipped: no default model at {}", model.display());
        return;
    }
    let lm = dsg::model::load(&model, &Device::Cpu).unwrap();
    let sae = repo("assets/sae/smollm2-135m-instruct-L3");
    let dir = common::scratch("guard_errors", "hook");
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(repo(SHIPPED)).unwrap()).unwrap();
    v["hook_point"] = "blocks.2.hook_resid_post".into();
    let path = dir.join("g.json");
    std::fs::write(&path, v.to_string()).unwrap();
    let Err(e) = Guardrail::load(&path, &lm, Some(&sae)) else {
        panic!("a guardrail at another hook was applied")
    };
    assert!(
        matches!(&e, Error::Mismatch(m) if m.contains("blocks.2.hook_resid_post") && m.contains("blocks.3")),
        "{e}"
    );
    // Without --guard-sae, the copy names an SAE relative to its own folder, which is not there.
    let Err(e) = Guardrail::load(&path, &lm, None) else {
        panic!("a guardrail without its SAE was applied")
    };
    assert!(
        matches!(&e, Error::Missing { what, .. } if what.contains("--guard-sae")),
        "{e}"
    );
    // The shipped file, read in place, finds its SAE beside it.
    Guardrail::load(&repo(SHIPPED), &lm, None).unwrap();
}

#[test]
fn the_shipped_recipe_is_valid_and_the_built_in_questions_equal_the_data() {
    let Some(data) = common::shared_data_or_skip("wmdp") else {
        return;
    };
    let data = data.parent().unwrap().to_path_buf();
    let dir = common::scratch("guard_errors", "recipe");
    let req = wmdp_bio(
        &data,
        repo("assets/sae/smollm2-135m-instruct-L3"),
        dir.join("g.json"),
    );
    req.validate().unwrap();
    let shipped = GuardrailFile::load(repo(SHIPPED)).unwrap();
    assert_eq!(shipped.gate.with_threshold(0.0), req.gate);
    assert_eq!(shipped.clamp, req.clamp_spec());
    assert_eq!(shipped.features.len(), req.n_features);
    let from_data = dsg::guard::recipe::demo_questions(&data).unwrap();
    let built_in = dsg::guard::recipe::demo_questions(&dir.join("no-data")).unwrap();
    assert_eq!(from_data, built_in);
}

/// Every guardrail JSON under `dir` (recursively, skipping the untracked `work/` stage folders).
fn guardrail_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "work") {
                guardrail_files(&p, out);
            }
        } else if p.extension().is_some_and(|e| e == "json") {
            let Ok(v) = serde_json::from_str::<Value>(&std::fs::read_to_string(&p).unwrap()) else {
                continue;
            };
            if v.get("hook_point").is_some() && v["sae"]["sha256"].is_string() {
                out.push(p);
            }
        }
    }
}

#[test]
fn every_committed_guardrail_matches_the_sae_it_names() {
    // A guardrail refuses to load when its SAE's digest differs (fail closed), and the digest
    // covers the SAE folder's every file, model card included: editing a card after fitting
    // would leave a committed guardrail that cannot load. The CLI's rule: the recorded path when
    // it exists, else the built-in SAE when the digest is the built-in one's (fitted elsewhere).
    let mut files = Vec::new();
    guardrail_files(&repo("assets"), &mut files);
    guardrail_files(&repo("results"), &mut files);
    assert!(files.len() >= 5, "found only {} guardrails", files.len());
    let built_in = dsg::assets::default_sae_sha256();
    for path in files {
        let file = GuardrailFile::load(&path).unwrap();
        let sae = dsg::guard::load::resolve_sae_path(&path, &file);
        let got = if sae.exists() {
            dsg::guard::hook::artifact_sha256(&sae).unwrap()
        } else {
            built_in.clone()
        };
        assert_eq!(
            got,
            file.sae.sha256,
            "{} names {} (built-in SAE: {built_in})",
            path.display(),
            sae.display()
        );
    }
}
