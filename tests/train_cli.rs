//! `dsg train` end to end on the tiny GGUF models: a LoRA run writes a PEFT adapter that `--adapter`
//! applies in other commands (over quantised weights too), a full run writes weights that `--weights`
//! loads over the base, and a finished or unfinished run is never silently overwritten.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dsg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dsg"))
        .args(args)
        .env(
            "DSG_CACHE",
            std::env::temp_dir().join("dsg-train-cli-cache"),
        )
        .output()
        .expect("the dsg binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = dsg(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dsg {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dsg-train-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text_file(dir: &Path) -> PathBuf {
    let p = dir.join("train.txt");
    let line = "The heron waits by the river at dawn, and the river answers with fog. ";
    std::fs::write(&p, line.repeat(12)).unwrap();
    p
}

/// The perplexity figure `dsg perplexity` prints.
fn perplexity(args: &[&str]) -> f64 {
    let out = ok(args);
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_lora_run_writes_an_adapter_other_commands_apply() {
    let dir = scratch("lora");
    let text = text_file(&dir);
    let out = dir.join("run");
    for model in ["tiny_f32.gguf", "tiny_q4_1.gguf"] {
        let m = common::fixture(&format!("gguf/{model}"));
        let args = [
            "train",
            "--model",
            s(&m),
            "--text",
            s(&text),
            "--seq",
            "24",
            "--max-steps",
            "6",
            "--batch-size",
            "2",
            "--lr",
            "1e-2",
            "--out",
            s(&out),
            "--force",
        ];
        let summary: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
        assert_eq!(summary["steps"], 6);
        assert!(summary["last_loss"].as_f64().unwrap() < summary["first_loss"].as_f64().unwrap());
        assert!(out.join("adapter/adapter_config.json").is_file());
        assert!(out.join("adapter/adapter_model.safetensors").is_file());
        let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
        assert_eq!(log.lines().count(), 6);

        let base = perplexity(&[
            "perplexity",
            "--model",
            s(&m),
            "--file",
            s(&text),
            "--window",
            "64",
        ]);
        let adapter = out.join("adapter");
        let tuned = perplexity(&[
            "perplexity",
            "--model",
            s(&m),
            "--adapter",
            s(&adapter),
            "--file",
            s(&text),
            "--window",
            "64",
        ]);
        let merged = perplexity(&[
            "perplexity",
            "--model",
            s(&m),
            "--adapter",
            s(&adapter),
            "--merge-adapter",
            "--file",
            s(&text),
            "--window",
            "64",
        ]);
        assert!(
            tuned < base,
            "{model}: trained on the text, perplexity {base} -> {tuned}"
        );
        assert!(
            (merged - tuned).abs() < 0.02 * tuned,
            "{model}: merged {merged} vs {tuned}"
        );

        // The adapted model is another model to a guardrail: its identity differs from the base's.
        let dev = candle_core::Device::Cpu;
        let base_lm = dsg::model::load(&m, &dev).unwrap();
        let adapted = dsg::model::load_adapted(
            &m,
            None,
            std::slice::from_ref(&adapter),
            dsg::model::AdapterMode::OnTheFly,
            &dev,
        )
        .unwrap();
        let id = |lm| dsg::guard::ArtifactIdentity::of_model(lm).unwrap();
        assert_ne!(id(&base_lm).sha256, id(&adapted).sha256);
        assert!(
            id(&adapted).name.contains("adapter"),
            "{}",
            id(&adapted).name
        );

        // A finished run is kept unless --force.
        let again = dsg(&args[..args.len() - 1]);
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    }
}

#[test]
fn a_full_run_writes_weights_that_load_over_the_base() {
    let dir = scratch("full");
    let text = text_file(&dir);
    let out = dir.join("run");
    let m = common::fixture("gguf/tiny_f32.gguf");
    ok(&[
        "train",
        "--model",
        s(&m),
        "--full",
        "--text",
        s(&text),
        "--seq",
        "24",
        "--max-steps",
        "4",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--out",
        s(&out),
    ]);
    let weights = out.join("model.safetensors");
    assert!(weights.is_file());
    let base = perplexity(&[
        "perplexity",
        "--model",
        s(&m),
        "--file",
        s(&text),
        "--window",
        "64",
    ]);
    let tuned = perplexity(&[
        "perplexity",
        "--model",
        s(&m),
        "--weights",
        s(&weights),
        "--file",
        s(&text),
        "--window",
        "64",
    ]);
    assert!(tuned < base, "{base} -> {tuned}");
    // Weights of another model are refused, naming the tensor.
    let other = common::fixture("tiny/llama_gqa/model.safetensors");
    let bad = dsg(&[
        "perplexity",
        "--model",
        s(&m),
        "--weights",
        s(&other),
        "--file",
        s(&text),
        "--window",
        "64",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("shape") || err.contains("not a tensor"),
        "{err}"
    );
}

#[test]
fn bad_training_options_are_named() {
    let dir = scratch("bad");
    let text = text_file(&dir);
    let m = common::fixture("gguf/tiny_f32.gguf");
    let cases: [(&[&str], &str); 5] = [
        (&["--lr", "0"], "--lr"),
        (&["--lora-rank", "0"], "--lora-rank"),
        (&["--lora-targets", "qq_proj"], "qq_proj"),
        (&["--batch-size", "0"], "--batch-size"),
        (&["--resume"], "--resume"),
    ];
    for (extra, named) in cases {
        let out = dir.join("run");
        let mut args = vec![
            "train",
            "--model",
            s(&m),
            "--text",
            s(&text),
            "--seq",
            "24",
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        let r = dsg(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{extra:?} accepted");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(named), "{extra:?}: {err}");
    }
}
