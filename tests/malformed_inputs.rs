//! A generated battery of malformed inputs, files and arguments, run through the `dsg` binary as a
//! user would: every case must exit non-zero, must not panic, and must name the offending file or
//! option in its message. The valid starting points (a tiny GGUF model, an SAE trained on it, a
//! guardrail fitted with both, small corpora) are made first and checked to work, so each case
//! differs from a working command by exactly one broken input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

/// One malformed invocation: the arguments, and the words of which at least one must appear in
/// the message (the broken file's path or name, or the option).
struct Case {
    name: String,
    args: Vec<String>,
    names: Vec<String>,
}

/// An edit of a JSON file, named by what it breaks and the word its message must contain.
type JsonEdit = (&'static str, &'static str, Box<dyn Fn(&mut Value)>);

/// A model folder's three files (config.json, model.safetensors, tokenizer.json); `None` leaves
/// one out.
type FolderFiles = (
    &'static str,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

/// An edit of a JSON file named by what it breaks.
type NamedEdit = (&'static str, Box<dyn Fn(&mut Value)>);

/// An SAE folder's two files (sae.json, sae.safetensors); `None` leaves one out.
type SaeFiles = (&'static str, Option<Vec<u8>>, Option<Vec<u8>>);

/// The valid inputs every case starts from.
struct Valid {
    dir: PathBuf,
    model: PathBuf,
    sae: PathBuf,
    guard: PathBuf,
    forget: PathBuf,
    retain: PathBuf,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn dsg(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dsg"))
        .args(args)
        .env(
            "DSG_CACHE",
            std::env::temp_dir().join("dsg-malformed-cache"),
        )
        .output()
        .expect("the dsg binary runs")
}

fn ok(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = dsg(&args);
    assert!(
        out.status.success(),
        "the valid command {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the corpora, trains a small SAE on the tiny model and fits a guardrail with it.
fn valid() -> Valid {
    let dir = common::scratch("malformed_inputs", "valid");
    let model = dir.join("tiny.gguf");
    std::fs::copy(common::fixture("gguf/tiny_f32.gguf"), &model).unwrap();
    let words = |offset: usize| -> String {
        let vocab = [
            "virus", "protein", "spike", "cell", "gene", "river", "mountain", "city", "music",
            "law",
        ];
        (0..120)
            .map(|line| {
                (0..20)
                    .map(|i| vocab[offset + (line * 7 + i * 3) % 5])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (forget, retain) = (dir.join("forget.txt"), dir.join("retain.txt"));
    std::fs::write(&forget, words(0)).unwrap();
    std::fs::write(&retain, words(5)).unwrap();
    let sae = dir.join("sae");
    let guard = dir.join("guard.json");
    let (m, f, r, sa, g) = (s(&model), s(&forget), s(&retain), s(&sae), s(&guard));
    ok(&[
        "sae",
        "train",
        "--model",
        &m,
        "--hook",
        "blocks.1.hook_resid_post",
        "--text",
        &r,
        &f,
        "--d-sae",
        "128",
        "--k",
        "8",
        "--tokens",
        "4096",
        "--ctx",
        "32",
        "--out",
        &sa,
    ]);
    ok(&[
        "fit",
        "--model",
        &m,
        "--sae",
        &sa,
        "--forget",
        &f,
        "--retain",
        &r,
        "--n-features",
        "5",
        "--rows",
        "16",
        "--ctx",
        "32",
        "--out",
        &g,
    ]);
    ok(&["inspect", &g]);
    ok(&[
        "generate",
        "--model",
        &m,
        "--guard",
        &g,
        "-p",
        "virus protein",
        "--max-tokens",
        "2",
    ]);
    Valid {
        dir,
        model,
        sae,
        guard,
        forget,
        retain,
    }
}

impl Valid {
    /// A fresh folder for one case's files.
    fn case_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.join("cases").join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `dsg fit` on the valid inputs writing into `out`, with `extra` options appended.
    fn fit_args(&self, sae: &Path, forget: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "fit",
            "--model",
            &s(&self.model),
            "--sae",
            &s(sae),
            "--forget",
            &s(forget),
            "--retain",
            &s(&self.retain),
            "--n-features",
            "5",
            "--rows",
            "16",
            "--ctx",
            "32",
            "--out",
            &s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    }
}

fn case(name: impl Into<String>, args: Vec<String>, names: &[&str]) -> Case {
    Case {
        name: name.into(),
        args,
        names: names.iter().map(|n| n.to_string()).collect(),
    }
}

/// `args` without `opt` and its value (each option in these commands takes one value).
fn without(args: Vec<String>, opt: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if a == opt {
            skip = true;
        } else {
            out.push(a);
        }
    }
    out
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Truncated, emptied and overwritten copies of the GGUF model, each loaded by `dsg info`.
fn broken_models(v: &Valid, cases: &mut Vec<Case>) {
    let bytes = std::fs::read(&v.model).unwrap();
    let n = bytes.len();
    let d = v.case_dir("models");
    let cuts = [
        0,
        1,
        3,
        4,
        7,
        8,
        12,
        16,
        23,
        24,
        40,
        64,
        100,
        500,
        1000,
        n / 4,
        n / 2,
        3 * n / 4,
        n - 1,
    ];
    for cut in cuts {
        let p = d.join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        cases.push(case(
            format!("GGUF cut at {cut} of {n} bytes"),
            strings(&["info", "--model", &s(&p)]),
            &[&s(&p)],
        ));
    }
    let mut garbage = bytes.clone();
    garbage[..4].copy_from_slice(b"GGML");
    let mut counts = bytes.clone();
    // The tensor count (bytes 8..16) claims far more tensors than the file holds.
    counts[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut version = bytes.clone();
    version[4..8].copy_from_slice(&99u32.to_le_bytes());
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for (name, content) in [
        ("magic", garbage),
        ("tensor count", counts),
        ("version", version),
        ("noise", noise),
        ("text", b"this is not a model\n".to_vec()),
    ] {
        let p = d.join(format!("{}.gguf", name.replace(' ', "_")));
        std::fs::write(&p, content).unwrap();
        cases.push(case(
            format!("GGUF with a bad {name}"),
            strings(&["info", "--model", &s(&p)]),
            &[&s(&p)],
        ));
    }
    let missing = d.join("absent.gguf");
    cases.push(case(
        "a model path that does not exist",
        strings(&["info", "--model", &s(&missing)]),
        &[&s(&missing)],
    ));
}

/// Copies of a tiny Hugging Face model folder with one file broken.
fn broken_hf_dirs(v: &Valid, cases: &mut Vec<Case>) {
    let src = common::fixture("tiny/llama_gqa");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    let tokenizer = json!({
        "version": "1.0",
        "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "<unk>": 2}, "unk_token": "<unk>"},
        "pre_tokenizer": {"type": "Whitespace"}
    });
    let edits: Vec<JsonEdit> = vec![
        (
            "heads zero",
            "config.json",
            Box::new(|c| c["num_attention_heads"] = json!(0)),
        ),
        (
            "heads do not divide width",
            "config.json",
            Box::new(|c| {
                c["num_attention_heads"] = json!(5);
                c.as_object_mut().unwrap().remove("head_dim");
            }),
        ),
        (
            "kv heads do not divide heads",
            "config.json",
            Box::new(|c| c["num_key_value_heads"] = json!(3)),
        ),
        (
            "zero layers",
            "config.json",
            Box::new(|c| c["num_hidden_layers"] = json!(0)),
        ),
        (
            "width a string",
            "config.json",
            Box::new(|c| c["hidden_size"] = json!("wide")),
        ),
        (
            "unknown architecture",
            "config.json",
            Box::new(|c| c["model_type"] = json!("mamba9")),
        ),
        (
            "more layers than weights",
            "model.safetensors",
            Box::new(|c| c["num_hidden_layers"] = json!(7)),
        ),
    ];
    for (i, (name, blamed, edit)) in edits.into_iter().enumerate() {
        let d = v.case_dir(&format!("hf{i}"));
        let mut c = config.clone();
        edit(&mut c);
        std::fs::write(d.join("config.json"), c.to_string()).unwrap();
        std::fs::write(d.join("model.safetensors"), &weights).unwrap();
        std::fs::write(d.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        cases.push(case(
            format!("config.json: {name}"),
            strings(&["info", "--model", &s(&d)]),
            &[blamed, "blk.", "model.layers"],
        ));
    }
    let files: Vec<FolderFiles> = vec![
        (
            "config.json missing",
            None,
            Some(weights.clone()),
            Some(tokenizer.to_string().into_bytes()),
        ),
        (
            "config.json not JSON",
            Some(b"{not json".to_vec()),
            Some(weights.clone()),
            Some(tokenizer.to_string().into_bytes()),
        ),
        (
            "config.json empty",
            Some(Vec::new()),
            Some(weights.clone()),
            Some(tokenizer.to_string().into_bytes()),
        ),
        (
            "model.safetensors missing",
            Some(config.to_string().into_bytes()),
            None,
            Some(tokenizer.to_string().into_bytes()),
        ),
        (
            "model.safetensors truncated",
            Some(config.to_string().into_bytes()),
            Some(weights[..weights.len() / 2].to_vec()),
            Some(tokenizer.to_string().into_bytes()),
        ),
        (
            "model.safetensors empty",
            Some(config.to_string().into_bytes()),
            Some(Vec::new()),
            Some(tokenizer.to_string().into_bytes()),
        ),
        (
            "model.safetensors header too long",
            Some(config.to_string().into_bytes()),
            Some({
                let mut w = weights.clone();
                w[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
                w
            }),
            Some(tokenizer.to_string().into_bytes()),
        ),
        (
            "tokenizer.json missing",
            Some(config.to_string().into_bytes()),
            Some(weights.clone()),
            None,
        ),
        (
            "tokenizer.json not JSON",
            Some(config.to_string().into_bytes()),
            Some(weights.clone()),
            Some(b"<html>".to_vec()),
        ),
        (
            "tokenizer.json without a model",
            Some(config.to_string().into_bytes()),
            Some(weights.clone()),
            Some(b"{}".to_vec()),
        ),
        (
            "tokenizer.json of an unknown model type",
            Some(config.to_string().into_bytes()),
            Some(weights.clone()),
            Some(br#"{"model": {"type": "Magic", "vocab": {}}}"#.to_vec()),
        ),
    ];
    for (i, (name, c, w, t)) in files.into_iter().enumerate() {
        let d = v.case_dir(&format!("hffile{i}"));
        for (file, content) in [
            ("config.json", c),
            ("model.safetensors", w),
            ("tokenizer.json", t),
        ] {
            if let Some(bytes) = content {
                std::fs::write(d.join(file), bytes).unwrap();
            }
        }
        let blamed = name.split(' ').next().unwrap();
        cases.push(case(name, strings(&["info", "--model", &s(&d)]), &[blamed]));
    }
    // One NaN in the first f32 tensor of the weights: the message names that tensor.
    let header_len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&weights[8..8 + header_len]).unwrap();
    let (tensor, info) = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, t)| *k != "__metadata__" && t["dtype"] == "F32")
        .expect("an f32 tensor");
    let start = 8 + header_len + info["data_offsets"][0].as_u64().unwrap() as usize;
    for (label, value) in [("NaN", f32::NAN), ("inf", f32::INFINITY)] {
        let d = v.case_dir(&format!("hf-{label}"));
        let mut w = weights.clone();
        w[start + 4..start + 8].copy_from_slice(&value.to_le_bytes());
        std::fs::write(d.join("config.json"), config.to_string()).unwrap();
        std::fs::write(d.join("model.safetensors"), w).unwrap();
        std::fs::write(d.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        cases.push(case(
            format!("{label} in weight {tensor}"),
            strings(&["info", "--model", &s(&d)]),
            &[tensor],
        ));
    }
}

/// Copies of the valid SAE with one field or file broken, each given to `dsg fit`.
fn broken_saes(v: &Valid, cases: &mut Vec<Case>) {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(v.sae.join("sae.json")).unwrap()).unwrap();
    let weights = std::fs::read(v.sae.join("sae.safetensors")).unwrap();
    let edits: Vec<NamedEdit> = vec![
        ("k zero", Box::new(|c| c["k"] = json!(0))),
        ("k above d_sae", Box::new(|c| c["k"] = json!(1000))),
        ("d_sae zero", Box::new(|c| c["d_sae"] = json!(0))),
        ("d_in not the weights'", Box::new(|c| c["d_in"] = json!(32))),
        (
            "unknown activation",
            Box::new(|c| c["activation"] = json!("softplus")),
        ),
        (
            "hook past the last layer",
            Box::new(|c| {
                c["hook"] = json!("blocks.9.hook_resid_post");
                c["hook_name"] = json!("blocks.9.hook_resid_post");
            }),
        ),
        (
            "hook not a hook name",
            Box::new(|c| {
                c["hook"] = json!("blocks.x.nowhere");
                c["hook_name"] = json!("blocks.x.nowhere");
            }),
        ),
        ("unknown dtype", Box::new(|c| c["dtype"] = json!("f7"))),
        (
            "format version from the future",
            Box::new(|c| c["format_version"] = json!(99)),
        ),
    ];
    let out_name = "g.json";
    for (i, (name, edit)) in edits.into_iter().enumerate() {
        let d = v.case_dir(&format!("sae{i}"));
        let sae = d.join("sae");
        std::fs::create_dir_all(&sae).unwrap();
        let mut c = cfg.clone();
        edit(&mut c);
        std::fs::write(sae.join("sae.json"), c.to_string()).unwrap();
        std::fs::write(sae.join("sae.safetensors"), &weights).unwrap();
        cases.push(case(
            format!("SAE: {name}"),
            v.fit_args(&sae, &v.forget, &d.join(out_name), &[]),
            &[&s(&sae), "sae.json", "blocks."],
        ));
    }
    let files: Vec<SaeFiles> = vec![
        ("sae.json missing", None, Some(weights.clone())),
        (
            "sae.json not JSON",
            Some(b"{".to_vec()),
            Some(weights.clone()),
        ),
        (
            "sae.safetensors missing",
            Some(cfg.to_string().into_bytes()),
            None,
        ),
        (
            "sae.safetensors truncated",
            Some(cfg.to_string().into_bytes()),
            Some(weights[..weights.len() / 3].to_vec()),
        ),
        (
            "sae.safetensors empty",
            Some(cfg.to_string().into_bytes()),
            Some(Vec::new()),
        ),
    ];
    for (i, (name, c, w)) in files.into_iter().enumerate() {
        let d = v.case_dir(&format!("saefile{i}"));
        let sae = d.join("sae");
        std::fs::create_dir_all(&sae).unwrap();
        for (file, content) in [("sae.json", c), ("sae.safetensors", w)] {
            if let Some(bytes) = content {
                std::fs::write(sae.join(file), bytes).unwrap();
            }
        }
        cases.push(case(
            format!("SAE: {name}"),
            v.fit_args(&sae, &v.forget, &d.join(out_name), &[]),
            &[&s(&sae)],
        ));
    }
    let absent = v.dir.join("no-such-sae");
    cases.push(case(
        "SAE path that does not exist",
        v.fit_args(&absent, &v.forget, &v.dir.join("never.json"), &[]),
        &[&s(&absent)],
    ));
}

/// Copies of the valid guardrail with one field broken, given to `dsg inspect` and to guarded
/// generation.
fn broken_guards(v: &Valid, cases: &mut Vec<Case>) {
    let text = std::fs::read_to_string(&v.guard).unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    let edits: Vec<JsonEdit> = vec![
        (
            "threshold below 0",
            "tau",
            Box::new(|g| g["gate"]["tau"] = json!(-0.5)),
        ),
        (
            "ρ threshold above 1",
            "tau",
            Box::new(|g| g["gate"]["tau"] = json!(2.0)),
        ),
        (
            "negative CUSUM drift",
            "drift",
            Box::new(|g| g["gate"] = json!({"kind": "cusum", "drift": -0.2, "threshold": 1.0})),
        ),
        (
            "window of width 0",
            "width",
            Box::new(|g| g["gate"] = json!({"kind": "window", "width": 0, "tau": 0.1})),
        ),
        (
            "unknown gate",
            "gate",
            Box::new(|g| g["gate"] = json!({"kind": "oracle"})),
        ),
        (
            "positive clamp value",
            "clamp",
            Box::new(|g| g["clamp"]["value"] = json!(500.0)),
        ),
        (
            "no features",
            "features",
            Box::new(|g| g["features"] = json!([])),
        ),
        (
            "feature id past d_sae",
            "features",
            Box::new(|g| g["features"][0]["id"] = json!(4096)),
        ),
        (
            "duplicate feature ids",
            "features",
            Box::new(|g| {
                let first = g["features"][0]["id"].clone();
                g["features"][1]["id"] = first;
            }),
        ),
        (
            "format version from the future",
            "format_version",
            Box::new(|g| g["format_version"] = json!(99)),
        ),
        ("d_sae zero", "d_sae", Box::new(|g| g["d_sae"] = json!(0))),
        (
            "hook not a hook name",
            "hook_point",
            Box::new(|g| g["hook_point"] = json!("blocks.one")),
        ),
    ];
    for (i, (name, field, edit)) in edits.into_iter().enumerate() {
        let d = v.case_dir(&format!("guard{i}"));
        let mut g = file.clone();
        edit(&mut g);
        g["sae"]["name"] = json!(s(&v.sae));
        let p = d.join("guard.json");
        std::fs::write(&p, serde_json::to_string_pretty(&g).unwrap()).unwrap();
        cases.push(case(
            format!("guardrail: {name} (inspect)"),
            strings(&["inspect", &s(&p)]),
            &[&s(&p), field],
        ));
        cases.push(case(
            format!("guardrail: {name} (generate)"),
            strings(&[
                "generate",
                "--model",
                &s(&v.model),
                "--guard",
                &s(&p),
                "-p",
                "hi",
            ]),
            &[&s(&p), field],
        ));
    }
    // Files that parse but belong to something else: refused when applied to this model.
    let identity: Vec<JsonEdit> = vec![
        (
            "another model's digest",
            "model",
            Box::new(|g| g["model"]["sha256"] = json!("ab".repeat(32))),
        ),
        (
            "another SAE's digest",
            "SAE",
            Box::new(|g| g["sae"]["sha256"] = json!("cd".repeat(32))),
        ),
        (
            "a hook other than the SAE's",
            "hook",
            Box::new(|g| g["hook_point"] = json!("blocks.0.hook_resid_post")),
        ),
        (
            "an SAE that is not there",
            "no-such-sae",
            Box::new(|g| g["sae"]["name"] = json!("no-such-sae")),
        ),
    ];
    for (i, (name, word, edit)) in identity.into_iter().enumerate() {
        let d = v.case_dir(&format!("identity{i}"));
        let mut g = file.clone();
        g["sae"]["name"] = json!(s(&v.sae));
        edit(&mut g);
        let p = d.join("guard.json");
        std::fs::write(&p, serde_json::to_string_pretty(&g).unwrap()).unwrap();
        cases.push(case(
            format!("guardrail for {name}"),
            strings(&[
                "generate",
                "--model",
                &s(&v.model),
                "--guard",
                &s(&p),
                "-p",
                "hi",
            ]),
            &[&s(&p), word],
        ));
    }
    let d = v.case_dir("guardtext");
    for (name, content) in [
        ("empty", String::new()),
        ("not JSON", "guard".to_string()),
        ("cut in half", text[..text.len() / 2].to_string()),
        ("a JSON list", "[]".to_string()),
    ] {
        let p = d.join(format!("{}.json", name.replace(' ', "_")));
        std::fs::write(&p, content).unwrap();
        cases.push(case(
            format!("guardrail file {name}"),
            strings(&["inspect", &s(&p)]),
            &[&s(&p)],
        ));
    }
    cases.push(case(
        "guardrail path is a folder",
        strings(&["inspect", &s(&d)]),
        &[&s(&d)],
    ));
}

/// Corpus files that cannot be read as what their name says, each given to `dsg fit --forget`.
fn broken_corpora(v: &Valid, cases: &mut Vec<Case>) {
    let d = v.case_dir("corpora");
    let files: Vec<(&str, &[u8])> = vec![
        ("empty.txt", b""),
        ("cut.json", br#"[{"question": "What?", "choices": ["a", "b""#),
        ("object.json", br#"{"question": "What?"}"#),
        ("bad-line.jsonl", b"{\"text\": \"fine\"}\n{not json}\n"),
        ("no-text.jsonl", b"{\"body\": \"no text field\"}\n"),
        ("three-fields.csv", b"What is it?,a,b\n"),
        ("bad-letter.csv", b"What is it?,a,b,c,d,Z\n"),
        ("arc.jsonl", b"{\"id\": \"x\", \"question\": {\"stem\": \"Why?\", \"choices\": [{\"text\": \"a\", \"label\": \"A\"}, {\"text\": \"b\", \"label\": \"B\"}, {\"text\": \"c\", \"label\": \"C\"}]}, \"answerKey\": \"E\"}\n"),
        ("answer-out-of-range.json", br#"[{"question": "What?", "choices": ["a", "b", "c", "d"], "answer": 7}]"#),
        ("binary.json", &[0xff, 0xfe, 0x00, 0x9f, 0x92, 0x96]),
    ];
    for (i, (name, content)) in files.into_iter().enumerate() {
        let p = d.join(name);
        std::fs::write(&p, content).unwrap();
        cases.push(case(
            format!("forget corpus {name}"),
            v.fit_args(&v.sae, &p, &d.join(format!("g{i}.json")), &[]),
            &[&s(&p)],
        ));
    }
    let absent = d.join("absent.txt");
    cases.push(case(
        "forget corpus that does not exist",
        v.fit_args(&v.sae, &absent, &d.join("ga.json"), &[]),
        &[&s(&absent)],
    ));
    cases.push(case(
        "forget corpus is a folder",
        v.fit_args(&v.sae, &d, &v.dir.join("gd.json"), &[]),
        &[&s(&d)],
    ));
}

/// Options out of range, unparsable values and protected outputs.
fn bad_options(v: &Valid, cases: &mut Vec<Case>) {
    let (m, g, f) = (s(&v.model), s(&v.guard), s(&v.forget));
    let out = v.dir.join("new-guard.json");
    let gen = |opt: &str, val: &str| strings(&["generate", "--model", &m, "-p", "hello", opt, val]);
    for (opt, val) in [
        ("--temperature", "NaN"),
        ("--temperature", "-1"),
        ("--temperature", "inf"),
        ("--temperature", "warm"),
        ("--top-p", "0"),
        ("--top-p", "1.5"),
        ("--top-p", "NaN"),
        ("--top-p", "-0.1"),
        ("--max-tokens", "0"),
        ("--max-tokens", "100000"),
        ("--max-tokens", "-3"),
        ("--seed", "x"),
    ] {
        cases.push(case(format!("generate {opt} {val}"), gen(opt, val), &[opt]));
    }
    let long_prompt = "virus protein spike ".repeat(60);
    cases.push(case(
        "a prompt longer than the context",
        strings(&[
            "generate",
            "--model",
            &m,
            "-p",
            &long_prompt,
            "--max-tokens",
            "4",
        ]),
        &["context", "--max-tokens"],
    ));
    for (opt, val) in [
        ("--n-features", "0"),
        ("--p-ratio", "150"),
        ("--p-ratio", "-1"),
        ("--p-dyn", "101"),
        ("--rows", "0"),
        ("--fraction", "0"),
        ("--fraction", "200"),
        ("--ctx", "0"),
        ("--ctx", "1"),
        ("--batch", "0"),
        ("--gate", "oracle"),
        ("--gate", "window:0"),
        ("--gate", "window:x"),
        ("--gate", "cusum:-1"),
        ("--gate", "cusum:NaN"),
        ("--clamp", "NaN"),
        ("--clamp", "0"),
        ("--clamp", "-5"),
        ("--shard", "3/2"),
        ("--shard", "0/0"),
        ("--shard", "one"),
        ("--split", "train"),
        ("--calibrate-limit", "0"),
        ("--hook", "blocks.x"),
        ("--seed", "-1"),
    ] {
        let mut args = without(v.fit_args(&v.sae, &v.forget, &out, &[]), opt);
        args.extend([opt.to_string(), val.to_string()]);
        cases.push(case(format!("fit {opt} {val}"), args, &[opt, &opt[2..]]));
    }
    let absent = v.dir.join("absent.jsonl");
    cases.push(case(
        "fit --calibrate-mcq missing file",
        v.fit_args(&v.sae, &v.forget, &out, &["--calibrate-mcq", &s(&absent)]),
        &[&s(&absent)],
    ));
    cases.push(case(
        "fit --out names the forget corpus",
        v.fit_args(&v.sae, &v.forget, &v.forget, &[]),
        &[&f],
    ));
    let inside = v.sae.join("guard.json");
    cases.push(case(
        "fit --out inside the SAE folder",
        v.fit_args(&v.sae, &v.forget, &inside, &[]),
        &[&s(&inside)],
    ));
    cases.push(case(
        "fit --out exists",
        v.fit_args(&v.sae, &v.forget, &v.guard, &[]),
        &[&g],
    ));
    cases.push(case(
        "fit --from-stats without statistics",
        v.fit_args(
            &v.sae,
            &v.forget,
            &out,
            &["--from-stats", &s(&v.dir.join("none"))],
        ),
        &["none"],
    ));
    cases.push(case(
        "explain --html names the guardrail",
        strings(&[
            "explain", "--model", &m, "--guard", &g, "-p", "hi", "--html", &g,
        ]),
        &[&g],
    ));
    cases.push(case(
        "explain --html names the model",
        strings(&[
            "explain", "--model", &m, "--guard", &g, "-p", "hi", "--html", &m,
        ]),
        &[&m],
    ));
    cases.push(case(
        "explain without a guardrail",
        strings(&["explain", "--model", &m, "-p", "hi"]),
        &["--guard"],
    ));
    let text = s(&v.retain);
    for (args, opt) in [
        (
            vec![
                "perplexity",
                "--model",
                &m,
                "--file",
                &text,
                "--window",
                "0",
            ],
            "--window",
        ),
        (
            vec![
                "perplexity",
                "--model",
                &m,
                "--file",
                &text,
                "--window",
                "1000",
            ],
            "context",
        ),
        (
            vec!["perplexity", "--model", &m, "--file", "/no/such/text.txt"],
            "/no/such/text.txt",
        ),
        (vec!["bench", "--model", &m, "--reps", "0"], "--reps"),
        (vec!["bench", "--model", &m, "--prefill", "0"], "--prefill"),
        (
            vec!["bench", "--model", &m, "--decode-tokens", "0"],
            "--decode-tokens",
        ),
    ] {
        cases.push(case(args.join(" "), strings(&args), &[opt]));
    }
    let sae_out = v.dir.join("new-sae");
    let train = |opt: &str, val: &str| {
        let valid = [
            "sae",
            "train",
            "--model",
            &m,
            "--hook",
            "blocks.1.hook_resid_post",
            "--text",
            &text,
            "--d-sae",
            "64",
            "--k",
            "4",
            "--tokens",
            "2048",
            "--ctx",
            "32",
            "--out",
            &s(&sae_out),
        ];
        let mut args = without(strings(&valid), opt);
        args.extend([opt.to_string(), val.to_string()]);
        args
    };
    for (opt, val) in [
        ("--k", "0"),
        ("--k", "999"),
        ("--d-sae", "0"),
        ("--lr", "0"),
        ("--lr", "NaN"),
        ("--batch-size", "0"),
        ("--tokens", "0"),
        ("--ctx", "0"),
        ("--dtype", "f7"),
        ("--hook", "blocks.9.hook_resid_post"),
    ] {
        cases.push(case(
            format!("sae train {opt} {val}"),
            train(opt, val),
            &[opt, &opt[2..], "blocks.9"],
        ));
    }
    cases.push(case(
        "sae train --out names its training text",
        train("--out", &text),
        &[&text],
    ));
    cases.push(case(
        "sae eval --tokens 0",
        strings(&[
            "sae",
            "eval",
            "--model",
            &m,
            "--sae",
            &s(&v.sae),
            "--text",
            &text,
            "--tokens",
            "0",
        ]),
        &["--tokens"],
    ));
    cases.push(case(
        "stats merge with a missing shard",
        strings(&[
            "stats",
            "merge",
            "--out",
            &s(&v.dir.join("merged.json")),
            &s(&v.dir.join("shard9")),
        ]),
        &["shard9"],
    ));
    cases.push(case(
        "stats merge without shards",
        strings(&["stats", "merge", "--out", &s(&v.dir.join("merged.json"))]),
        &["shard"],
    ));
    cases.push(case(
        "eval gate --out is the guardrail",
        strings(&["eval", "--model", &m, "gate", "--guard", &g, "--out", &g]),
        &[&g],
    ));
    cases.push(case(
        "an unknown option",
        strings(&["generate", "--model", &m, "-p", "hi", "--temprature", "0.5"]),
        &["--temprature"],
    ));
}

#[test]
fn every_malformed_input_fails_cleanly_and_names_what_is_wrong() {
    let v = valid();
    let mut cases = Vec::new();
    broken_models(&v, &mut cases);
    broken_hf_dirs(&v, &mut cases);
    broken_saes(&v, &mut cases);
    broken_guards(&v, &mut cases);
    broken_corpora(&v, &mut cases);
    bad_options(&v, &mut cases);
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let out = dsg(&c.args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let problem = if out.status.success() {
            Some("exited 0".to_string())
        } else if stderr.contains("panicked") || out.status.code().is_none() {
            Some("panicked or was killed".to_string())
        } else if !c.names.iter().any(|n| stderr.contains(n.as_str())) {
            Some(format!("names none of {:?}", c.names))
        } else {
            None
        };
        if let Some(p) = problem {
            let last = stderr.lines().last().unwrap_or("").to_string();
            failures.push(format!("{}: {p}; stderr: {last}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} malformed inputs were not handled well:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} malformed inputs, all refused with a message naming the input",
        cases.len()
    );
}
