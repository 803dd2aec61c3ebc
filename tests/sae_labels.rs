//! Feature labels imported from Neuronpedia explanation exports: which explanation is kept, how
//! labels are checked against an SAE, and errors that name the file and line.

mod common;

use std::path::{Path, PathBuf};

use dsg::model::HookPoint;
use dsg::sae::labels::{assign, feature_list};
use dsg::sae::FeatureLabels;
use dsg::Error;

fn fixture() -> FeatureLabels {
    FeatureLabels::read_neuronpedia(&common::sae_fixture("neuronpedia/explanations.jsonl")).unwrap()
}

fn written(name: &str, lines: &[&str]) -> PathBuf {
    let dir = common::scratch("sae_labels", name);
    let path = dir.join("explanations.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

#[test]
fn keeps_the_best_explanation_of_each_latent() {
    let l = fixture();
    assert_eq!(l.model_id.as_deref(), Some("gemma-2-2b"));
    assert_eq!(l.source.as_deref(), Some("3-gemmascope-res-16k"));
    assert_eq!((l.layer(), l.width()), (Some(3), Some(16384)));
    assert_eq!(l.labels.len(), 3);
    // Latent 0 has an unscored explanation, then a scored one: the scored one is kept.
    let zero = l.get(0).unwrap();
    assert_eq!(zero.description, "virus names");
    assert_eq!(zero.explainer.as_deref(), Some("claude-3-5-haiku"));
    assert_eq!(zero.method.as_deref(), Some("np_max-act-logits"));
    assert_eq!((zero.score, zero.candidates, zero.line), (Some(0.4), 2, 2));
    // Indices may be strings or numbers; descriptions are trimmed.
    assert_eq!(l.get(7).unwrap().description, "the word \"pathogen\"");
    assert_eq!(
        feature_list(&[0, 1, 5], Some(&l)),
        r#"[0 "virus names", 1, 5 "laboratory equipment"]"#
    );
    assert_eq!(feature_list(&[0, 1], None), "[0, 1]");
}

#[test]
fn first_explanation_wins_among_unscored_ones() {
    let path = written(
        "unscored",
        &[
            r#"{"layer": "3-x-res-16k", "index": 2, "description": "first"}"#,
            "",
            r#"{"layer": "3-x-res-16k", "index": 2, "description": "second"}"#,
        ],
    );
    let l = FeatureLabels::read_neuronpedia(&path).unwrap();
    let two = l.get(2).unwrap();
    assert_eq!(
        (two.description.as_str(), two.candidates, two.line),
        ("first", 2, 1)
    );
}

#[test]
fn labels_for_another_layer_or_width_are_refused() {
    let l = fixture();
    assert!(l.check(Some(HookPoint::resid_post(3)), 16384).is_ok());
    assert!(l.check(None, 16384).is_ok());
    let err = l.check(Some(HookPoint::resid_post(4)), 16384).unwrap_err();
    assert!(matches!(err, Error::Mismatch(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("layer 3") && msg.contains("explanations.jsonl"),
        "{msg}"
    );
    let msg = l
        .check(Some(HookPoint::resid_post(3)), 64)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("16384") && msg.contains("64"), "{msg}");
    // Without a width in the source id, indices are still checked.
    let path = written(
        "no_width",
        &[r#"{"layer": "3-custom", "index": "100", "description": "x"}"#],
    );
    let msg = FeatureLabels::read_neuronpedia(&path)
        .unwrap()
        .check(Some(HookPoint::resid_post(3)), 64)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("latent 100") && msg.contains("line 1"),
        "{msg}"
    );
}

#[test]
fn label_sets_go_to_the_guardrails_they_fit() {
    let sets = [fixture()];
    let saes = [
        (Some(HookPoint::resid_post(5)), 16384),
        (Some(HookPoint::resid_post(3)), 16384),
    ];
    let got = assign(&sets, &saes).unwrap();
    assert!(got[0].is_none() && got[1].is_some());
    let err = assign(&sets, &saes[..1]).unwrap_err();
    assert!(err.to_string().contains("layer 3"), "{err}");
}

#[test]
fn malformed_lines_name_the_file_and_line() {
    let bad = common::sae_fixture("neuronpedia/malformed.jsonl");
    let msg = FeatureLabels::read_neuronpedia(&bad)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("malformed.jsonl") && msg.contains("line 2"),
        "{msg}"
    );
    let cases = [
        (r#"{"index": "a", "description": "x"}"#, "index"),
        (r#"{"index": 1}"#, "description"),
        (r#"[1, 2]"#, "index"),
        (r#"{"index": 1, "description": 5}"#, "description"),
    ];
    for (i, (line, what)) in cases.iter().enumerate() {
        let path = written(&format!("bad{i}"), &[line]);
        let msg = FeatureLabels::read_neuronpedia(&path)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 1") && msg.contains(what),
            "{line}: {msg}"
        );
    }
    // Two sources in one file.
    let path = written(
        "mixed",
        &[
            r#"{"layer": "3-a-16k", "index": 1, "description": "x"}"#,
            r#"{"layer": "4-a-16k", "index": 2, "description": "y"}"#,
        ],
    );
    let msg = FeatureLabels::read_neuronpedia(&path)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("line 2") && msg.contains("4-a-16k"), "{msg}");
    let empty = written("empty", &[""]);
    assert!(FeatureLabels::read_neuronpedia(&empty).is_err());
    let gz = written("gz", &[]).with_extension("jsonl.gz");
    let msg = FeatureLabels::read_neuronpedia(&gz)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("gunzip"), "{msg}");
}

#[test]
fn dsg_inspect_shows_labels_and_refuses_ones_for_another_layer() {
    let guard = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("assets/guards/wmdp-bio-smollm2-135m-L3.json");
    let inspect = |labels: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dsg"))
            .arg("inspect")
            .arg(&guard)
            .arg("--labels")
            .arg(labels)
            .output()
            .unwrap()
    };
    // A label for the shipped guardrail's first feature.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&guard).unwrap()).unwrap();
    let id = file["features"][0]["id"].as_u64().unwrap();
    let line = format!(
        r#"{{"modelId": "smollm2-135m", "layer": "3-dsg-res-8k", "index": "{id}", "description": "virology terms"}}"#
    );
    let fits = written("cli_fits", &[&line]);
    let out = inspect(&fits);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3-dsg-res-8k"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{id} ")))
        .unwrap();
    assert!(row.ends_with("virology terms"), "{row}");
    let other = written(
        "cli_other",
        &[&format!(r#"{{"layer": "4-dsg-res-8k", "index": "{id}", "description": "x"}}"#) as &str],
    );
    let out = inspect(&other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("layer 4") && stderr.contains("blocks.3"),
        "{stderr}"
    );
}
