//! The `dsg` binary on bad options and protected outputs: it must exit non-zero without a panic,
//! with a message that names the option or file at fault, and (for outputs) before any work.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The tiny GGUF model (2 layers, d_model 64, with a tokenizer).
fn tiny_model() -> PathBuf {
    common::fixture("gguf/tiny_f32.gguf")
}

/// Runs `dsg args…` and returns its stderr after checking it failed without panicking.
fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dsg"))
        .args(args)
        .env(
            "DSG_CACHE",
            std::env::temp_dir().join("dsg-cli-errors-cache"),
        )
        .output()
        .expect("the dsg binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "dsg {args:?} should fail; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "dsg {args:?} panicked: {stderr}"
    );
    stderr
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should mention {p:?}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test paths")
}

/// A scratch folder with a small training text.
fn text_dir(name: &str) -> (PathBuf, PathBuf) {
    let dir = common::scratch("cli_errors", name);
    let text = dir.join("train.txt");
    std::fs::write(&text, "The cat sat on the mat. ".repeat(200)).unwrap();
    (dir, text)
}

#[test]
fn sae_train_options_out_of_range_are_named() {
    let (dir, text) = text_dir("train_options");
    let out = dir.join("sae");
    let model = tiny_model();
    let base = [
        "sae",
        "train",
        "--model",
        s(&model),
        "--hook",
        "blocks.0.hook_resid_post",
        "--text",
        s(&text),
        "--out",
        s(&out),
        "--d-sae",
        "32",
        "--tokens",
        "2048",
        "--batch-size",
        "256",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    assert_mentions(&fails(&with(&["--k", "0"])), &["k (--k): 0", "1..=32"]);
    assert_mentions(&fails(&with(&["--k", "33"])), &["k (--k): 33"]);
    assert_mentions(&fails(&with(&["--lr", "NaN"])), &["lr (--lr): NaN"]);
    assert_mentions(&fails(&with(&["--lr=-1"])), &["lr (--lr): -1"]);
    assert_mentions(&fails(&with(&["--ctx", "1"])), &["ctx (--ctx): 1"]);
    assert_mentions(&fails(&with(&["--dtype", "bf16"])), &["--dtype", "bf16"]);
    let mut bad_hook = with(&[]);
    bad_hook[5] = "blocks.9.hook_resid_post";
    let e = fails(&bad_hook);
    assert_mentions(&e, &["hook", "blocks.9", "below 2"]);
    assert!(!out.exists(), "nothing may be written on a refused run");
}

#[test]
fn sae_train_refuses_its_input_and_an_existing_sae_before_training() {
    let (dir, text) = text_dir("train_out");
    let model = tiny_model();
    let args = |out: &Path| -> Vec<String> {
        [
            "sae",
            "train",
            "--model",
            s(&model),
            "--hook",
            "blocks.0.hook_resid_post",
            "--text",
            s(&text),
            "--d-sae",
            "32",
            "--k",
            "4",
            "--tokens",
            "2048",
            "--batch-size",
            "256",
            "--out",
            s(out),
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |a: Vec<String>| fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_mentions(&run(args(&text)), &["--out", "input"]);
    let existing = dir.join("old");
    std::fs::create_dir_all(&existing).unwrap();
    std::fs::write(existing.join("sae.json"), "{}").unwrap();
    assert_mentions(&run(args(&existing)), &["sae.json", "--force"]);
    assert!(
        !existing.join("checkpoint").exists(),
        "refused before training"
    );
}

#[test]
fn sae_eval_refuses_zero_tokens_and_a_bad_sae_file() {
    let (_, text) = text_dir("eval");
    let model = tiny_model();
    let sae = common::sae_fixture("sparsify/topk_bf16/layers.2");
    let e = fails(&[
        "sae",
        "eval",
        "--model",
        s(&model),
        "--sae",
        s(&sae),
        "--text",
        s(&text),
        "--tokens",
        "0",
    ]);
    assert_mentions(&e, &["tokens (--tokens, --eval-tokens): 0"]);
    let broken = common::edited_sae_fixture(
        "sparsify/topk_bf16/layers.2",
        "cli_errors",
        "k0/layers.2",
        |c| c["k"] = 0.into(),
    );
    let e = fails(&[
        "sae",
        "eval",
        "--model",
        s(&model),
        "--sae",
        s(&broken),
        "--text",
        s(&text),
    ]);
    assert_mentions(&e, &["k0/layers.2", "k: 0"]);
}

#[test]
fn zero_windows_repetitions_and_lengths_are_named() {
    let (_, text) = text_dir("bench");
    let model = tiny_model();
    let m = s(&model);
    let e = fails(&[
        "perplexity",
        "--model",
        m,
        "--file",
        s(&text),
        "--window",
        "0",
    ]);
    assert_mentions(&e, &["window (--window): 0"]);
    assert_mentions(
        &fails(&["bench", "--model", m, "--reps", "0"]),
        &["reps (--reps): 0"],
    );
    let e = fails(&["bench", "--model", m, "--prefill", "128,0"]);
    assert_mentions(&e, &["prefill (--prefill): 0"]);
    let e = fails(&["bench", "--model", m, "--decode-tokens", "0"]);
    assert_mentions(&e, &["decode_tokens (--decode-tokens): 0"]);
}

#[test]
fn explain_html_may_not_replace_an_input_or_an_existing_page() {
    let dir = common::scratch("cli_errors", "explain");
    let guard = dir.join("guard.json");
    std::fs::write(&guard, "{}").unwrap();
    let model = tiny_model();
    let base = [
        "explain",
        "--model",
        s(&model),
        "--guard",
        s(&guard),
        "-p",
        "hi",
    ];
    let with = |extra: &[&str]| -> String {
        let a: Vec<&str> = base.iter().chain(extra).copied().collect();
        fails(&a)
    };
    assert_mentions(&with(&["--html", s(&guard)]), &["--html", "input"]);
    assert_mentions(&with(&["--html", s(&model)]), &["--html", "input"]);
    let page = dir.join("page.html");
    std::fs::write(&page, "old").unwrap();
    assert_mentions(&with(&["--html", s(&page)]), &["page.html", "--force"]);
    assert_eq!(std::fs::read_to_string(&page).unwrap(), "old");
}

#[test]
fn eval_gate_keeps_earlier_reports_and_checks_options() {
    let dir = common::scratch("cli_errors", "eval_gate");
    let guard = dir.join("guard.json");
    std::fs::write(&guard, "{}").unwrap();
    let out = dir.join("report");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("report.md"), "old").unwrap();
    let model = tiny_model();
    let base = [
        "eval",
        "--model",
        s(&model),
        "gate",
        "--guard",
        s(&guard),
        "--data",
        s(&dir),
    ];
    let with = |extra: &[&str]| -> String {
        let a: Vec<&str> = base.iter().chain(extra).copied().collect();
        fails(&a)
    };
    assert_mentions(&with(&["--out", s(&out)]), &["report.md", "--force"]);
    assert_mentions(&with(&["--out", s(&guard)]), &["--out", "input"]);
    let fresh = dir.join("fresh");
    assert_mentions(
        &with(&["--out", s(&fresh), "--batch", "0"]),
        &["batch (--batch): 0"],
    );
    let missing = dir.join("no-data");
    let e = fails(&[
        "eval",
        "--model",
        s(&model),
        "gate",
        "--guard",
        s(&guard),
        "--data",
        s(&missing),
        "--out",
        s(&fresh),
    ]);
    assert_mentions(&e, &["no-data", "--data"]);
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).unwrap(),
        "old"
    );
}

/// A guardrail fitted on the built-in SAE loads wherever it is copied (its recorded SAE path then
/// points nowhere): the CLI falls back to the built-in SAE, whose digest the file names. A file
/// naming another SAE still fails, and names `--guard-sae`.
#[test]
fn a_copied_guardrail_on_the_built_in_sae_still_loads() {
    let dir = common::scratch("cli_errors", "copied_guard");
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/guards/wmdp-bio-smollm2-135m-L3.json");
    let copy = dir.join("guard.json");
    std::fs::copy(&shipped, &copy).unwrap();
    let run = |guard: &Path| {
        Command::new(env!("CARGO_BIN_EXE_dsg"))
            .args([
                "explain",
                "--guard",
                s(guard),
                "-p",
                "How does the heart pump blood?",
            ])
            .output()
            .expect("the dsg binary runs")
    };
    let out = run(&copy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("score"));
    let text = std::fs::read_to_string(&copy).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["sae"]["sha256"] = serde_json::Value::String("0".repeat(64));
    let other = dir.join("other.json");
    std::fs::write(&other, v.to_string()).unwrap();
    let out = run(&other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert_mentions(&stderr, &["--guard-sae", "other.json"]);
}

#[test]
fn tofu_tradeoff_checks_its_inputs_before_training() {
    let dir = common::scratch("cli_errors", "tofu_tradeoff");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let out = dir.join("out");
    let model = tiny_model();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "tradeoff",
            "tofu",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        fails(&args)
    };
    // Bad fine-tuning options are refused before anything is loaded.
    assert_mentions(&run(&["--epochs", "0"]), &["epochs"]);
    // The default SAE reads SmolLM2's 576-wide residual, not the tiny model's 64.
    assert_mentions(&run(&[]), &["576", "64"]);
    assert!(
        !out.join("work").exists(),
        "nothing is trained or written when an input is wrong"
    );
}
