//! The README's "Reproducing the paper on Gemma-2-2B-it" path, end to end through the library
//! calls its commands make, on tiny random Gemma 2 weights (`tests/fixtures/tiny/gemma2_softcap`)
//! and a random JumpReLU SAE written here in the Gemma Scope `params.npz` format:
//!
//! * `dsg fit` = [`dsg::guard::fit::run`] on a [`FitRequest`] with the paper's `p_ratio` 95,
//!   `p_dyn` 95 and `c` 500 (N scaled down to a 64-latent SAE), forget = a WMDP-format question
//!   file in its selection split, retain = a WikiText-like text file;
//! * `dsg eval mcq --protocol paper [--guard G]` = [`evaluate`] with [`Protocol::Paper`], with the
//!   guardrail loaded by [`Guardrail::load`] as `--guard` loads it.
//!
//! The model directory is laid out as the Hub's `google/gemma-2-2b-it` is: `config.json` in the
//! transformers 4 layout, `model.safetensors`, `tokenizer.json` and `tokenizer_config.json` with
//! Gemma's own chat template. The SAE sits at `gemma-scope-2b-pt-res/layer_1/width_64/
//! average_l0_*/params.npz`, so its hook comes from the release layout, as the real one's does.
//!
//! The corpora are built so that a random model can tell them apart: forget documents are made of
//! the letters `qxzjkv`, retain documents of common English words. The tokenizer is character-level.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, IndexOp, Tensor};
use dsg::data::{McqItem, SplitMix64};
use dsg::eval::mcq::{evaluate, Protocol, Question, QuestionResult};
use dsg::guard::hook::artifact_sha256;
use dsg::guard::{
    ClampSpec, Evidence, FitOutcome, FitRequest, Gate, Guardrail, GuardrailFile, PercentileRule,
    SelectionRule,
};
use dsg::model::{self, Batch, ForwardOptions, HookPoint, LoadedModel, Logits, NoHooks};
use dsg::output::Overwrite;
use dsg::stats::collect::activations_at;
use dsg::stats::prompts::{mcq_prompt, mcq_prompt_text};

/// The SAE's layer: the middle of the tiny model's three (the paper's is 3 of Gemma-2-2B's 26).
const LAYER: usize = 1;
const D_MODEL: usize = 64;
/// SAE latents (the paper's SAE has 16384).
const D_SAE: usize = 64;
/// Selected features (the paper's 20 would be more than the candidates here: p_ratio 95 admits
/// the top 5% of 64 importance ratios, about 4).
const N_FEATURES: usize = 3;
const FORGET_LETTERS: &[u8] = b"qxzjkv";
/// The retain documents' words, space-separated.
const RETAIN_WORDS: &str =
    "the river town old mill road south north market church built year was and of \
     in on a near hill stone bridge people lived there for many centuries school station";

/// Gemma 2's chat template as in `google/gemma-2-2b-it`'s `tokenizer_config.json`.
const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";

/// GPT-2's byte-level symbol of an ASCII byte (`Ġ` for space, `Ċ` for newline).
fn byte_symbol(b: u8) -> char {
    match b {
        0x21..=0x7e => char::from(b),
        0x00..=0x20 => char::from_u32(0x100 + u32::from(b)).unwrap(),
        _ => unreachable!("ASCII only"),
    }
}

/// A Hugging Face directory with the tiny Gemma 2 weights and a character-level byte-level BPE
/// tokenizer: ids 0–4 `<pad> <bos> <eos> <start_of_turn> <end_of_turn>` (bos 1 and eos 2 as the
/// tiny config has them), then tab, newline and printable ASCII, then `ĠA`…`ĠD` merged, so the
/// paper protocol's letters and space-letters are one token each, as in Gemma's vocabulary.
/// (`tests/model_gguf.rs` borrows the GGUF fixture's 253 byte symbols instead, which fill the
/// 256 ids and leave no room for the space-letters.) `max_position_embeddings` is raised from 128
/// to 512 so that character-level MCQ prompts fit; RoPE has no learned positions, so no weight
/// depends on it.
fn gemma_dir(root: &Path) -> PathBuf {
    let dir = root.join("gemma-2-tiny-it");
    std::fs::create_dir_all(&dir).unwrap();
    let src = common::fixture("tiny/gemma2_softcap");
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config_v4.json")).unwrap())
            .unwrap();
    cfg["max_position_embeddings"] = 512.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();

    let specials = [
        "<pad>",
        "<bos>",
        "<eos>",
        "<start_of_turn>",
        "<end_of_turn>",
    ];
    let mut vocab = serde_json::Map::new();
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            vocab.insert(s.to_string(), i.into());
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    for b in [b'\t', b'\n'].into_iter().chain(0x20..=0x7e) {
        let id = vocab.len();
        vocab.insert(byte_symbol(b).to_string(), id.into());
    }
    let mut merges = Vec::new();
    for l in ["A", "B", "C", "D"] {
        let id = vocab.len();
        vocab.insert(format!("Ġ{l}"), id.into());
        merges.push(format!("Ġ {l}"));
    }
    assert!(vocab.len() <= 256, "the tiny model has 256 ids");
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let tok_cfg = serde_json::json!({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "add_bos_token": true, "chat_template": GEMMA_TEMPLATE});
    std::fs::write(dir.join("tokenizer_config.json"), tok_cfg.to_string()).unwrap();
    dir
}

/// A seeded draw of `n` roughly standard normal numbers (a sum of four uniforms, rescaled).
fn normals(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u: f32 = (0..4)
                .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
                .sum();
            (u - 2.0) * 3f32.sqrt()
        })
        .collect()
}

/// The random SAE's parameters, as written to `params.npz` (row-major).
struct SaeParams {
    w_enc: Vec<f32>,
    b_enc: Vec<f32>,
    threshold: Vec<f32>,
}

impl SaeParams {
    /// `x·W_enc + b_enc` for one residual vector, in f64.
    fn pre_activations(&self, x: &[f32]) -> Vec<f64> {
        (0..D_SAE)
            .map(|j| {
                let dot: f64 = (0..D_MODEL)
                    .map(|d| f64::from(x[d]) * f64::from(self.w_enc[d * D_SAE + j]))
                    .sum();
                dot + f64::from(self.b_enc[j])
            })
            .collect()
    }
}

/// Root-mean-square of the residual stream at the SAE's layer over `texts`.
fn residual_rms(lm: &LoadedModel, texts: &[String]) -> f32 {
    let (mut sum, mut n) = (0f64, 0usize);
    for t in texts {
        let ids = lm.tokenizer.encode(t, true).unwrap();
        let h = activations_at(
            &lm.model,
            &Batch::single(ids, &Device::Cpu).unwrap(),
            HookPoint::resid_post(LAYER),
        )
        .unwrap();
        // Position 0 (BOS) has a much larger norm in Gemma; the SAE reads the text tokens.
        let v = h.i((0, 1..)).unwrap().flatten_all().unwrap();
        for x in v.to_vec1::<f32>().unwrap() {
            sum += f64::from(x) * f64::from(x);
            n += 1;
        }
    }
    (sum / n as f64).sqrt() as f32
}

/// Writes a seeded random JumpReLU SAE in the Gemma Scope layout under `root`, scaled to the
/// model's residual stream so that pre-activations are about standard normal; thresholds in
/// [0.5, 1], so a fair share of positive pre-activations stay below them (where a ReLU SAE would
/// fire and a JumpReLU one must not).
fn write_gemma_scope_sae(root: &Path, rms: f32) -> (PathBuf, SaeParams) {
    let dir = root.join(format!(
        "gemma-scope-2b-pt-res/layer_{LAYER}/width_{D_SAE}/average_l0_20"
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = SplitMix64::new(2025);
    let scale = 1.0 / (rms * (D_MODEL as f32).sqrt());
    let w_enc: Vec<f32> = normals(&mut rng, D_MODEL * D_SAE)
        .into_iter()
        .map(|x| x * scale)
        .collect();
    let b_enc: Vec<f32> = normals(&mut rng, D_SAE)
        .into_iter()
        .map(|x| 0.1 * x)
        .collect();
    let w_dec: Vec<f32> = normals(&mut rng, D_SAE * D_MODEL)
        .into_iter()
        .map(|x| x * rms / (D_SAE as f32).sqrt())
        .collect();
    let b_dec: Vec<f32> = normals(&mut rng, D_MODEL)
        .into_iter()
        .map(|x| 0.1 * rms * x)
        .collect();
    let threshold: Vec<f32> = (0..D_SAE)
        .map(|_| 0.5 + 0.5 * (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
        .collect();
    let t = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, &Device::Cpu).unwrap();
    let members = [
        ("W_enc", t(&w_enc, &[D_MODEL, D_SAE])),
        ("W_dec", t(&w_dec, &[D_SAE, D_MODEL])),
        ("b_enc", t(&b_enc, &[D_SAE])),
        ("b_dec", t(&b_dec, &[D_MODEL])),
        ("threshold", t(&threshold, &[D_SAE])),
    ];
    let refs: Vec<(&str, &Tensor)> = members.iter().map(|(n, t)| (*n, t)).collect();
    let path = dir.join("params.npz");
    Tensor::write_npz(&refs, &path).unwrap();
    (
        path,
        SaeParams {
            w_enc,
            b_enc,
            threshold,
        },
    )
}

/// A pseudo-word of 2–5 letters drawn from `letters`.
fn word(rng: &mut SplitMix64, letters: &[u8]) -> String {
    let n = 2 + rng.below(4);
    (0..n)
        .map(|_| char::from(letters[rng.below(letters.len())]))
        .collect()
}

fn forget_words(rng: &mut SplitMix64, n: usize) -> String {
    (0..n)
        .map(|_| word(rng, FORGET_LETTERS))
        .collect::<Vec<_>>()
        .join(" ")
}

fn retain_words(rng: &mut SplitMix64, n: usize) -> String {
    let words: Vec<&str> = RETAIN_WORDS.split_whitespace().collect();
    (0..n)
        .map(|_| words[rng.below(words.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The forget corpus as a WMDP-format question file (`bio_questions.json`, as the README's fit
/// reads `wmdp/bio_questions.json`), and the retain corpus as raw text, one document a line.
fn write_corpora(root: &Path) -> (PathBuf, PathBuf) {
    let mut rng = SplitMix64::new(11);
    let questions: Vec<serde_json::Value> = (0..80)
        .map(|_| {
            let q = format!("{}?", forget_words(&mut rng, 8));
            let choices: Vec<String> = (0..4).map(|_| forget_words(&mut rng, 2)).collect();
            serde_json::json!({"question": q, "choices": choices, "answer": rng.below(4)})
        })
        .collect();
    let forget = root.join("bio_questions.json");
    std::fs::write(&forget, serde_json::Value::from(questions).to_string()).unwrap();
    let lines: String = (0..60)
        .map(|_| format!(" {} .\n", retain_words(&mut rng, 16)))
        .collect();
    let retain = root.join("wiki.test.raw");
    std::fs::write(&retain, lines).unwrap();
    (forget, retain)
}

/// Everything the README's commands produce, here.
struct Fitted {
    lm: LoadedModel,
    sae_path: PathBuf,
    params: SaeParams,
    guard_path: PathBuf,
    file: GuardrailFile,
}

/// Model, SAE and corpora under a fresh scratch folder, and the guardrail `dsg fit` writes from
/// them (the paper's p_ratio, p_dyn, clamp and gate; `N_FEATURES` features; 16 rows of 64 tokens).
fn fitted(name: &str) -> Fitted {
    let root = common::scratch("paper_setting_gemma2", name);
    let lm = model::load(&gemma_dir(&root), &Device::Cpu).unwrap();
    let (forget, retain) = write_corpora(&root);
    let mut rng = SplitMix64::new(5);
    let mut sample: Vec<String> = (0..4).map(|_| forget_words(&mut rng, 10)).collect();
    sample.extend((0..4).map(|_| retain_words(&mut rng, 10)));
    let (sae_path, params) = write_gemma_scope_sae(&root, residual_rms(&lm, &sample));
    let guard_path = root.join("guards/wmdp-bio-gemma-2-tiny-L1.json");
    let req = FitRequest {
        sae: sae_path.clone(),
        hook: None,
        forget: vec![forget],
        retain: vec![retain],
        split: dsg::data::Split::Selection,
        n_features: N_FEATURES,
        p_ratio: 95.0,
        min_forget_freq: None,
        p_dyn: 95.0,
        gate: Gate::Paper { tau: 0.0 },
        clamp: 500.0,
        rows: 16,
        fraction: 100.0,
        ctx: 64,
        seed: 0,
        batch: 2,
        shard: None,
        from_stats: None,
        calibrate_mcq: vec![],
        calibrate_free_form: Vec::new(),
        calibrate_limit: None,
        evidence: Evidence::AllTokens,
        out: guard_path.clone(),
        overwrite: Overwrite::Refuse,
    };
    let file = match dsg::guard::fit::run(&lm, &req, None).unwrap() {
        FitOutcome::Guardrail { file, stats } => {
            assert!(
                stats.is_some(),
                "statistics are written beside the guardrail"
            );
            *file
        }
        other => panic!("expected a guardrail, got {other:?}"),
    };
    Fitted {
        lm,
        sae_path,
        params,
        guard_path,
        file,
    }
}

fn question(id: &str, subject: &str, q: String, choices: Vec<String>, answer: usize) -> Question {
    Question {
        id: id.into(),
        item: McqItem {
            index: 0,
            id: None,
            subject: Some(subject.into()),
            question: q,
            choices,
            answer,
        },
    }
}

/// Two forget-like questions (about "biology", as the WMDP-bio file's) and two retain-like ones
/// (about one of the paper's MMLU subjects), of different lengths so that batches are padded.
fn questions() -> Vec<Question> {
    let mut rng = SplitMix64::new(99);
    let mut f = |n| forget_words(&mut rng, n);
    let forget = [
        question(
            "bio:0",
            "biology",
            format!("{}?", f(9)),
            vec![f(2), f(2), f(1), f(2)],
            0,
        ),
        question(
            "bio:1",
            "biology",
            format!("{}?", f(14)),
            vec![f(1), f(3), f(2), f(2)],
            2,
        ),
    ];
    let retain = [
        question(
            "geo:0",
            "high_school_geography",
            "Which road runs past the old mill near the river in the south of the town?".into(),
            [
                "the north road by the hill",
                "the old market road",
                "the road on the stone bridge",
                "the road near the church",
            ]
            .map(String::from)
            .to_vec(),
            1,
        ),
        question(
            "geo:1",
            "high_school_geography",
            "In which year was the stone school near the station built by the people of the town?"
                .into(),
            [
                "many centuries",
                "the old year",
                "near the station",
                "in the south",
            ]
            .map(String::from)
            .to_vec(),
            3,
        ),
    ];
    vec![
        forget[0].clone(),
        retain[0].clone(),
        forget[1].clone(),
        retain[1].clone(),
    ]
}

/// The paper protocol's option scores by hand: softmax of the last position's logits of a plain
/// (optionally hooked) forward pass over the §5.1 prompt, max over `X` and ` X` per letter.
fn direct_scores(lm: &LoadedModel, q: &Question, hooks: &mut dyn dsg::model::Hooks) -> Vec<f64> {
    let subject = q.item.subject.as_deref().unwrap();
    let ids = mcq_prompt(&lm.tokenizer, subject, &q.item).unwrap();
    let out = lm
        .model
        .forward(
            &Batch::single(ids, &Device::Cpu).unwrap(),
            &ForwardOptions {
                logits: Logits::Last,
                ..Default::default()
            },
            hooks,
            None,
        )
        .unwrap();
    let logits: Vec<f64> = out
        .logits
        .unwrap()
        .i(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
    let p = |token: &str| {
        let id = lm.tokenizer.token_id(token).unwrap() as usize;
        (logits[id] - m).exp() / z
    };
    ["A", "B", "C", "D"]
        .iter()
        .map(|l| p(l).max(p(&format!("Ġ{l}"))))
        .collect()
}

fn scores(results: &[QuestionResult]) -> Vec<Vec<f64>> {
    results.iter().map(|r| r.acc.scores.clone()).collect()
}

/// The largest relative difference between two lists of scores: paper-protocol scores are
/// probabilities of a random model, some below 1e-15.
fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| match x.abs().max(y.abs()) {
            0.0 => 0.0,
            m => (x - y).abs() / m,
        })
        .fold(0.0, f64::max)
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    let d = rel_diff(got, want);
    assert!(
        d <= 1e-4,
        "{what}: relative difference {d:e}: {got:?} vs {want:?}"
    );
}

fn load_guard(fx: &Fitted) -> Guardrail {
    Guardrail::load(&fx.guard_path, &fx.lm, None).unwrap()
}

fn run(fx: &Fitted, batch: usize, guards: &mut [Guardrail]) -> Vec<QuestionResult> {
    evaluate(
        &fx.lm,
        &questions(),
        Protocol::Paper,
        batch,
        guards,
        &mut |_| {},
    )
    .unwrap()
}

fn is_forget(r: &QuestionResult) -> bool {
    r.id.starts_with("bio:")
}

#[test]
fn fit_writes_a_guardrail_at_the_sae_hook_with_the_paper_settings() {
    let fx = fitted("fit");
    // The hook comes from the Gemma Scope folder layout, as for the real SAE (no --hook needed).
    let sae = dsg::guard::load_sae(&fx.sae_path, None).unwrap();
    assert_eq!(sae.hook(), Some(HookPoint::resid_post(LAYER)));
    assert_eq!((sae.d_in(), sae.d_sae()), (D_MODEL, D_SAE));
    assert_eq!(sae.activation().name(), "jumprelu");

    let file = &fx.file;
    assert_eq!(file.hook_point, HookPoint::resid_post(LAYER));
    let json = std::fs::read_to_string(&fx.guard_path).unwrap();
    assert!(
        json.contains(r#""hook_point": "blocks.1.hook_resid_post""#),
        "{json}"
    );
    assert_eq!(file.d_sae, D_SAE);
    let ids = file.feature_ids();
    assert_eq!(ids.len(), N_FEATURES);
    assert!(ids.iter().all(|&i| (i as usize) < D_SAE), "{ids:?}");
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), N_FEATURES, "{ids:?}");
    // Every selected feature fires more on the forget rows than on the retain rows.
    for f in &file.features {
        let (forget, retain) = (f.forget.as_ref().unwrap(), f.retain.as_ref().unwrap());
        assert!(forget.mean > retain.mean, "feature {}: {f:?}", f.id);
    }

    assert_eq!(
        file.selection,
        SelectionRule::Percentile(PercentileRule::official(95.0))
    );
    assert_eq!(file.clamp, ClampSpec::paper(500.0));
    let cal = file.calibration.as_ref().unwrap();
    assert_eq!((cal.percentile, cal.n_rows), (95.0, 16));
    let Gate::Paper { tau } = file.gate else {
        panic!("the paper gate, got {:?}", file.gate)
    };
    assert!((0.0..1.0).contains(&tau) && tau == cal.threshold, "{tau}");
    assert_eq!(
        (file.provenance.forget_rows, file.provenance.retain_rows),
        (16, 16)
    );
    // The SAE is named relative to the guardrail's folder; the model by its folder's digest.
    assert_eq!(
        file.sae.name,
        format!("../gemma-scope-2b-pt-res/layer_{LAYER}/width_{D_SAE}/average_l0_20/params.npz")
    );
    assert_eq!(file.model.sha256, artifact_sha256(&fx.lm.path).unwrap());

    let guard = load_guard(&fx);
    assert_eq!(guard.file(), file);
    assert_eq!(guard.sae().hook(), Some(HookPoint::resid_post(LAYER)));
}

#[test]
fn unguarded_scores_are_the_paper_protocol_computed_by_hand() {
    let fx = fitted("unguarded");
    let tok = &fx.lm.tokenizer;
    let qs = questions();
    // The §5.1 prompt in Gemma's chat format, with exactly one BOS.
    let text = mcq_prompt_text(tok, "high_school_geography", &qs[1].item).unwrap();
    assert_eq!(
        text,
        "<bos><start_of_turn>user\nThe following are multiple choice questions (with answers) about \
         high school geography.\nWhich road runs past the old mill near the river in the south of \
         the town?\nA. the north road by the hill\nB. the old market road\nC. the road \
         on the stone bridge\nD. the road near the church<end_of_turn>\n<start_of_turn>model\nAnswer: ("
    );
    let ids = mcq_prompt(tok, "high_school_geography", &qs[1].item).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&t| t == 1).count(), 1, "one BOS");

    let results = run(&fx, 2, &mut []);
    let by_hand: Vec<Vec<f64>> = qs
        .iter()
        .map(|q| direct_scores(&fx.lm, q, &mut NoHooks))
        .collect();
    assert_close(
        &scores(&results).concat(),
        &by_hand.concat(),
        "unguarded vs by hand",
    );
    for (r, s) in results.iter().zip(&by_hand) {
        let argmax = (0..4).fold(0, |b, i| if s[i] > s[b] { i } else { b });
        assert_eq!(r.acc.prediction, argmax, "{}", r.id);
        assert_eq!(r.acc.correct, argmax == r.answer);
        assert!(r.guards.is_empty());
    }
}

#[test]
fn the_fitted_gate_fires_on_forget_like_prompts_and_only_their_scores_change() {
    let fx = fitted("gate");
    let plain = run(&fx, 1, &mut []);
    let mut guard = load_guard(&fx);
    let guarded = run(&fx, 1, std::slice::from_mut(&mut guard));
    let tau = fx.file.gate.threshold();
    for (p, g) in plain.iter().zip(&guarded) {
        let d = g.guards[0][0];
        assert_eq!(
            d.fired,
            is_forget(g),
            "{}: rho {} vs tau {tau}",
            g.id,
            d.score
        );
        assert_eq!(d.fired, d.score > tau);
        if d.fired {
            assert!(
                rel_diff(&p.acc.scores, &g.acc.scores) > 0.1,
                "{}: the clamp changes the scores",
                g.id
            );
            // The same numbers as a forward pass with the guardrail as its hook.
            let mut fresh = load_guard(&fx);
            let q = questions().into_iter().find(|q| q.id == g.id).unwrap();
            assert_close(
                &g.acc.scores,
                &direct_scores(&fx.lm, &q, &mut fresh),
                "guarded vs a hooked forward pass",
            );
        } else {
            // A row whose gate stays shut passes through bit for bit.
            assert_eq!(p.acc.scores, g.acc.scores, "{}", g.id);
        }
    }
}

#[test]
fn a_gate_forced_open_clamps_every_prompt_and_one_forced_shut_changes_nothing() {
    let fx = fitted("forced");
    let plain = run(&fx, 3, &mut []);
    let guard = load_guard(&fx);
    let mut open = guard.with_gate(Gate::Paper { tau: -1.0 }).unwrap();
    let opened = run(&fx, 3, std::slice::from_mut(&mut open));
    for (p, o) in plain.iter().zip(&opened) {
        assert!(o.guards[0][0].fired, "{}", o.id);
        assert!(
            rel_diff(&p.acc.scores, &o.acc.scores) > 0.1,
            "{}: clamped at its active tokens",
            o.id
        );
    }
    let mut shut = guard.with_gate(Gate::Paper { tau: 2.0 }).unwrap();
    let shut_results = run(&fx, 3, std::slice::from_mut(&mut shut));
    assert_eq!(scores(&plain), scores(&shut_results));
    assert!(shut_results.iter().all(|r| !r.guards[0][0].fired));
}

#[test]
fn scores_and_decisions_do_not_depend_on_the_batch() {
    let fx = fitted("batch");
    assert_eq!(scores(&run(&fx, 1, &mut [])), scores(&run(&fx, 3, &mut [])));
    let mut one = load_guard(&fx);
    let mut three = load_guard(&fx);
    let a = run(&fx, 1, std::slice::from_mut(&mut one));
    let b = run(&fx, 3, std::slice::from_mut(&mut three));
    assert_eq!(scores(&a), scores(&b));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.guards, y.guards, "{}", x.id);
    }
    assert!(a.iter().any(|r| r.guards[0][0].fired) && a.iter().any(|r| !r.guards[0][0].fired));
}

#[test]
fn the_jumprelu_threshold_decides_which_tokens_are_active() {
    let fx = fitted("jumprelu");
    let features: Vec<usize> = fx.file.feature_ids().iter().map(|&f| f as usize).collect();
    let hook = HookPoint::resid_post(LAYER);
    let sae = dsg::guard::load_sae(&fx.sae_path, None).unwrap();
    let mut guard = load_guard(&fx);
    let (mut below_threshold, mut relu_would_differ, mut checked) = (0, 0, 0);
    for q in questions() {
        let ids = mcq_prompt(
            &fx.lm.tokenizer,
            q.item.subject.as_deref().unwrap(),
            &q.item,
        )
        .unwrap();
        let batch = Batch::single(ids.clone(), &Device::Cpu).unwrap();
        let h = activations_at(&fx.lm.model, &batch, hook).unwrap();
        let encoded = sae
            .encode(&h)
            .unwrap()
            .i(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let h = h.i(0).unwrap().to_vec2::<f32>().unwrap();
        direct_scores(&fx.lm, &q, &mut guard);
        let record = guard.take_records().remove(0).rows.remove(0);
        assert_eq!(record.tokens, ids);
        for (t, x) in h.iter().enumerate() {
            let z = fx.params.pre_activations(x);
            // The whole SAE: a = z where z > θ, else 0.
            for j in 0..D_SAE {
                let theta = f64::from(fx.params.threshold[j]);
                let want = if z[j] > theta { z[j] } else { 0.0 };
                let got = f64::from(encoded[t][j]);
                assert!(
                    (got - want).abs() < 1e-3 || (z[j] - theta).abs() < 1e-3,
                    "token {t} latent {j}: {got} vs {want} (z {}, θ {theta})",
                    z[j]
                );
            }
            if t == 0 {
                assert!(record.active_features[0].is_empty(), "BOS is never active");
                continue;
            }
            if features
                .iter()
                .any(|&j| (z[j] - f64::from(fx.params.threshold[j])).abs() < 1e-4)
            {
                continue; // too close to call in f32
            }
            checked += 1;
            let active: Vec<u32> = features
                .iter()
                .filter(|&&j| z[j] > f64::from(fx.params.threshold[j]))
                .map(|&j| j as u32)
                .collect();
            assert_eq!(record.active_features[t], active, "{} token {t}", q.id);
            let relu_active = features.iter().any(|&j| z[j] > 0.0);
            below_threshold += features
                .iter()
                .filter(|&&j| z[j] > 0.0 && z[j] <= f64::from(fx.params.threshold[j]))
                .count();
            // θ > 0, so a JumpReLU-active token is ReLU-active; the converse is what θ decides.
            relu_would_differ += usize::from(relu_active && active.is_empty());
        }
        // ρ: active tokens over all tokens, BOS included in the length.
        let n_active = record
            .active_features
            .iter()
            .filter(|a| !a.is_empty())
            .count();
        assert_eq!(record.decision.score, n_active as f64 / ids.len() as f64);
    }
    assert!(checked > 400, "{checked} tokens compared");
    assert!(
        below_threshold > 0 && relu_would_differ > 0,
        "the thresholds matter: {below_threshold} positive pre-activations below θ, \
         {relu_would_differ} tokens a ReLU would call differently"
    );
}
