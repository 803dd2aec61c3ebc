//! The DSG pipeline end to end on the tiny Llama fixture with a small seeded random SAE: fitting,
//! the guardrail hook's batch invariance and pass-through, shard merging, identity checks, and the
//! streaming gate during generation, and the prompt activity that calibration and evaluation read.

mod common;

use candle_core::{Device, Tensor};
use dsg::data::{build_rows, read_documents, read_mcq, McqItem, RowOptions, Split, SplitMix64};
use dsg::generate::{generate, GenerateOptions};
use dsg::guard::file::ArtifactIdentity;
use dsg::guard::fit::{collect_pair, fit_from_stats, PromptCalibration};
use dsg::guard::hook::artifact_sha256;
use dsg::guard::{
    fit, Evidence, FitConfig, Gate, Guardrail, GuardrailFile, PercentileRule, SelectionRule,
};
use dsg::model::{
    Batch, ForwardOptions, HookList, HookPoint, Logits, Model, ModelConfig, NoHooks, WeightSource,
};
use dsg::sae::{Activation, Normalization, Sae, SaeMeta, SaeParts};
use dsg::stats::collect::prompt_activity;
use dsg::stats::prompts::mcq_prompt;
use dsg::stats::shard::Shard;

const D_SAE: usize = 32;
const BOS: u32 = 1;
const EOS: u32 = 2;
const SAE_SHA: &str = "abababababababababababababababababababababababababababababababab";

fn hook() -> HookPoint {
    HookPoint::resid_post(0)
}

fn model() -> (Model, String) {
    let dir = common::fixture("tiny/llama_gqa");
    let cfg = ModelConfig::from_hf_json(&dir.join("config.json")).unwrap();
    let src = WeightSource::open_safetensors_dir(&dir).unwrap();
    let sha = artifact_sha256(&dir).unwrap();
    (Model::load(cfg, &src, &Device::Cpu).unwrap(), sha)
}

/// A ReLU SAE with seeded normal-ish weights (sum of uniforms), d_in 64.
fn sae() -> Sae {
    let mut rng = SplitMix64::new(7);
    let mut draw = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u: f32 = (0..4)
                    .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
                    .sum();
                (u - 2.0) * scale
            })
            .collect()
    };
    let t = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
    Sae::from_parts(SaeParts {
        w_enc: t(draw(64 * D_SAE, 0.4), &[64, D_SAE]),
        b_enc: t(draw(D_SAE, 0.1), &[D_SAE]),
        w_dec: t(draw(D_SAE * 64, 0.3), &[D_SAE, 64]),
        b_dec: t(vec![0.0; 64], &[64]),
        activation: Activation::Relu,
        apply_b_dec_to_input: false,
        normalization: Normalization::None,
        hook: Some(hook()),
        meta: SaeMeta::default(),
    })
    .unwrap()
}

/// Rows of `len` tokens drawn from `lo..hi`, BOS first.
fn rows(n: usize, len: usize, lo: u32, hi: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let mut r = vec![BOS];
            r.extend((1..len).map(|_| lo + rng.below((hi - lo) as usize) as u32));
            r
        })
        .collect()
}

fn config(model_sha: &str) -> FitConfig {
    let mut c = FitConfig::paper(
        ArtifactIdentity {
            name: "tiny/llama_gqa".into(),
            sha256: model_sha.into(),
        },
        ArtifactIdentity {
            name: "random".into(),
            sha256: SAE_SHA.into(),
        },
        hook(),
    );
    c.rule = SelectionRule::Percentile(PercentileRule::official(50.0));
    c.n_features = 4;
    c.special_ids = vec![BOS, EOS];
    c.batch_size = 3;
    c.corpora = ("tokens 3..100".into(), "tokens 150..256".into());
    c
}

fn fitted() -> (Model, Sae, String, GuardrailFile) {
    let (model, sha) = model();
    let sae = sae();
    let (file, _, _) = fit(
        &model,
        &sae,
        &rows(8, 24, 3, 100, 1),
        &rows(8, 24, 150, 256, 2),
        &config(&sha),
        &mut |_, _, _| {},
    )
    .unwrap();
    (model, sae, sha, file)
}

fn guard(file: GuardrailFile, sae: &Sae, sha: &str) -> Guardrail {
    Guardrail::new(file, sae, sha, SAE_SHA, 64).unwrap()
}

fn all_logits(model: &Model, rows: Vec<Vec<u32>>, hooks: &mut dyn dsg::model::Hooks) -> Tensor {
    let opts = ForwardOptions {
        logits: Logits::All,
        ..Default::default()
    };
    let batch = Batch::new(rows, &Device::Cpu).unwrap();
    model
        .forward(&batch, &opts, hooks, None)
        .unwrap()
        .logits
        .unwrap()
}

#[test]
fn fit_end_to_end_writes_a_loadable_guardrail() {
    let (_, _, _, file) = fitted();
    assert_eq!(file.features.len(), 4);
    let tau = file.gate.threshold();
    assert!((0.0..=1.0).contains(&tau), "tau {tau}");
    let cal = file.calibration.as_ref().unwrap();
    assert_eq!(cal.n_rows, 8);
    assert!(cal.false_positive_rate <= 0.125);
    let path = std::env::temp_dir().join(format!("dsg-guard-{}.json", std::process::id()));
    file.save(&path).unwrap();
    let back = GuardrailFile::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(back, file);
}

#[test]
fn gate_off_is_bit_identical_and_gate_on_changes_logits() {
    let (model, sae, sha, mut file) = fitted();
    let prompt = rows(1, 20, 3, 100, 9);
    let plain = all_logits(&model, prompt.clone(), &mut NoHooks);
    file.gate = Gate::Paper { tau: 2.0 };
    file.calibration = None;
    let mut off = guard(file.clone(), &sae, &sha);
    let guarded = all_logits(&model, prompt.clone(), &mut off);
    let (a, b) = (
        plain.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        guarded.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert!(!off.records()[0].rows[0].decision.fired);

    file.gate = Gate::Paper { tau: -1.0 };
    let mut on = guard(file, &sae, &sha);
    let clamped = all_logits(&model, prompt, &mut on);
    let row = &on.records()[0].rows[0];
    assert!(row.decision.fired && row.clamped.contains(&true));
    assert!(common::max_abs_diff(&plain, &clamped) > 1e-3);
}

#[test]
fn a_rows_decision_and_logits_do_not_depend_on_its_batch() {
    let (model, sae, sha, mut file) = fitted();
    file.gate = Gate::Paper { tau: 0.2 };
    file.calibration = None;
    let short = rows(1, 10, 3, 100, 11).remove(0);
    let long = rows(1, 30, 150, 256, 12).remove(0);
    let mut alone = guard(file.clone(), &sae, &sha);
    let solo = all_logits(&model, vec![short.clone()], &mut alone);
    let mut batched = guard(file, &sae, &sha);
    let both = all_logits(&model, vec![long, short.clone()], &mut batched);
    let (a, b) = (&alone.records()[0].rows[0], &batched.records()[0].rows[1]);
    assert_eq!(a.decision, b.decision);
    assert!(a.decision.fired && a.clamped.contains(&true));
    assert_eq!(a.active_features, b.active_features);
    assert_eq!(a.clamped, b.clamped);
    let in_batch = both.get(1).unwrap().narrow(0, 0, short.len()).unwrap();
    assert!(common::max_abs_diff(&solo.get(0).unwrap(), &in_batch) <= 1e-5);
}

#[test]
fn merged_shards_equal_one_pass() {
    let (model, sha) = model();
    let sae = sae();
    let (forget, retain) = (rows(7, 24, 3, 100, 1), rows(7, 24, 150, 256, 2));
    let cfg = config(&sha);
    let run = |shard| {
        collect_pair(
            &model,
            &sae,
            &forget,
            &retain,
            &cfg,
            shard,
            &mut |_, _, _| {},
        )
        .unwrap()
    };
    let (f_all, r_all) = run(Shard::ALL);
    let (mut f, mut r) = run("0/3".parse().unwrap());
    for i in 1..3 {
        let (fi, ri) = run(Shard { index: i, count: 3 });
        f.merge(&fi).unwrap();
        r.merge(&ri).unwrap();
    }
    for (merged, single) in [(&f, &f_all), (&r, &r_all)] {
        assert_eq!(merged.features.n_rows(), single.features.n_rows());
        assert_eq!(merged.features.n_counted(), single.features.n_counted());
        assert_eq!(merged.features.freq(), single.features.freq());
        for (x, y) in merged.features.mean().iter().zip(single.features.mean()) {
            assert!((x - y).abs() <= 1e-12 * y.abs().max(1.0));
        }
    }
    let (a, b) = (
        fit_from_stats(&f, &r, &cfg, None).unwrap(),
        fit_from_stats(&f_all, &r_all, &cfg, None).unwrap(),
    );
    assert_eq!(a.feature_ids(), b.feature_ids());
    assert_eq!(a.gate, b.gate);
}

#[test]
fn mismatched_identity_or_shape_is_refused() {
    let (_, sae, sha, file) = fitted();
    assert!(Guardrail::new(file.clone(), &sae, &sha, &"cd".repeat(32), 64).is_err());
    assert!(Guardrail::new(file.clone(), &sae, &"cd".repeat(32), SAE_SHA, 64).is_err());
    assert!(Guardrail::new(file.clone(), &sae, &sha, SAE_SHA, 48).is_err());
    let mut other_hook = file;
    other_hook.hook_point = HookPoint::resid_post(1);
    assert!(Guardrail::new(other_hook, &sae, &sha, SAE_SHA, 64).is_err());
}

#[test]
fn generation_keeps_the_streaming_gate_equal_to_the_full_prefix_gate() {
    let (model, sae, sha, mut file) = fitted();
    let prompt = rows(1, 12, 3, 100, 21).remove(0);
    // The prompt's ρ is 11/12; generation raises it (to 22/23), so τ = 0.93 switches on mid-way.
    for tau in [0.5, 0.93, 2.0] {
        file.gate = Gate::Paper { tau };
        file.calibration = None;
        let mut streaming = guard(file.clone(), &sae, &sha);
        let opts = GenerateOptions {
            max_new_tokens: 12,
            quantized_decode: false,
            ..Default::default()
        };
        let g = generate(&model, &prompt, &opts, &mut streaming, |_| {}).unwrap();
        let streamed: Vec<bool> = streaming
            .records()
            .iter()
            .flat_map(|p| p.rows[0].active_features.iter().map(|f| !f.is_empty()))
            .collect();
        let mut whole = guard(file.clone(), &sae, &sha);
        let batch = Batch::single(
            prompt
                .iter()
                .chain(&g.tokens[..g.tokens.len() - 1])
                .copied()
                .collect(),
            &Device::Cpu,
        )
        .unwrap();
        model.forward_until(&batch, 0, &mut whole).unwrap();
        let full = &whole.records()[0].rows[0];
        let full_activity: Vec<bool> = full.active_features.iter().map(|f| !f.is_empty()).collect();
        assert_eq!(streamed, full_activity, "tau {tau}");
        assert_eq!(
            streaming.decisions()[0].fired,
            full.decision.fired,
            "tau {tau}"
        );
        assert!((streaming.decisions()[0].score - full.decision.score).abs() < 1e-12);
        eprintln!(
            "tau {tau}: rho {} fired {}",
            full.decision.score, full.decision.fired
        );
    }
}

#[test]
fn canonical_wmdp_split_is_reproduced() {
    let (Some(path), Some(split_path)) = (
        common::shared_data_or_skip("wmdp/bio_questions.json"),
        common::shared_data_or_skip("splits/wmdp-bio.json"),
    ) else {
        return;
    };
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&split_path).unwrap()).unwrap();
    let ids = |key: &str| -> Vec<usize> {
        split[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect()
    };
    let index = |s| -> Vec<usize> {
        read_mcq(&path, s)
            .unwrap()
            .iter()
            .map(|q| q.index)
            .collect()
    };
    assert_eq!(index(Split::Selection), ids("selection"));
    assert_eq!(index(Split::Heldout), ids("heldout"));
    let docs = read_documents(&path, Split::Selection).unwrap();
    assert_eq!(docs.len(), ids("selection").len());
    assert!(docs[0].contains("\nA. ") && docs[0].contains("\nD. "));
}

#[test]
fn corpus_rows_and_mcq_prompts_with_a_real_tokenizer() {
    let lm = dsg::model::load(&common::fixture("gguf/tiny_f32.gguf"), &Device::Cpu).unwrap();
    let tok = &lm.tokenizer;
    let docs: Vec<String> = (0..40)
        .map(|i| format!("Document {i} talks about the weather and the river in some detail."))
        .chain(["short".to_string()])
        .collect();
    let opts = RowOptions {
        ctx: 16,
        seed: 0,
        max_docs: Some(30),
    };
    let rows = build_rows(tok, &docs, &opts).unwrap();
    assert!(!rows.is_empty());
    assert!(rows
        .iter()
        .all(|r| r.len() == 16 && r[0] == tok.bos_id().unwrap()));
    assert_eq!(rows, build_rows(tok, &docs, &opts).unwrap());
    let eos = tok.eos_id().unwrap();
    assert!(
        rows.iter().flatten().any(|&t| t == eos),
        "documents are EOS-joined"
    );

    let item = McqItem {
        index: 0,
        id: None,
        subject: None,
        question: "Which river?".into(),
        choices: ["a", "b", "c", "d"].map(String::from).to_vec(),
        answer: 0,
    };
    let ids = mcq_prompt(tok, "high_school_geography", &item).unwrap();
    let text = tok.decode(&ids, false).unwrap();
    assert!(text.contains("<|im_start|>user\nThe following are multiple choice questions (with answers) about high school geography.\nWhich river?\nA. a\nB. b\nC. c\nD. d<|im_end|>"), "{text:?}");
    assert!(
        text.ends_with("<|im_start|>assistant\nAnswer: ("),
        "{text:?}"
    );
}

#[test]
fn several_guardrails_compose_and_a_silent_one_changes_nothing() {
    let (model, sae, sha, mut file) = fitted();
    let prompt = rows(1, 20, 3, 100, 9);
    file.calibration = None;
    file.gate = Gate::Paper { tau: -1.0 };
    let mut alone = guard(file.clone(), &sae, &sha);
    let expected = all_logits(&model, prompt.clone(), &mut alone);
    let mut on = guard(file.clone(), &sae, &sha);
    file.gate = Gate::Paper { tau: 2.0 };
    let mut off = guard(file, &sae, &sha);
    let mut list = HookList::new();
    list.push(&mut off);
    list.push(&mut on);
    let both = all_logits(&model, prompt, &mut list);
    assert_eq!(common::max_abs_diff(&expected, &both), 0.0);
    assert!(!off.records()[0].rows[0].decision.fired);
    assert!(on.records()[0].rows[0].decision.fired);
}

#[test]
fn prompt_activity_equals_what_the_guardrail_hook_sees() {
    let (model, sae, sha, mut file) = fitted();
    file.gate = Gate::Paper { tau: 2.0 };
    file.calibration = None;
    let mut prompts = rows(3, 17, 3, 100, 21);
    prompts.extend(rows(2, 9, 150, 256, 22));
    prompts.push(rows(1, 30, 3, 256, 23).remove(0));
    let ids: Vec<usize> = file.feature_ids().iter().map(|&f| f as usize).collect();
    let other = vec![ids[0], 5, 9];
    let activity = prompt_activity(
        &model,
        &sae,
        hook(),
        &[ids, other.clone()],
        &prompts,
        4,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(activity.len(), 2);
    let mut g = guard(file, &sae, &sha);
    let mut n_active = 0;
    for (p, a) in prompts.iter().zip(&activity[0]) {
        all_logits(&model, vec![p.clone()], &mut g);
        let row = &g.take_records()[0].rows[0];
        let seen: Vec<bool> = row.active_features.iter().map(|f| !f.is_empty()).collect();
        assert_eq!(&seen, a);
        n_active += a.iter().filter(|&&x| x).count();
    }
    assert!(n_active > 0, "the test needs active tokens");
    // The second set is computed from the same pass: check one prompt against a direct encode.
    let h = dsg::stats::collect::activations_at(
        &model,
        &Batch::single(prompts[5].clone(), &Device::Cpu).unwrap(),
        hook(),
    )
    .unwrap();
    let direct = dsg::stats::token_activity(&sae.encode_subset(&h, &other).unwrap(), &[30], true)
        .unwrap()
        .remove(0);
    assert_eq!(direct, activity[1][5]);
}

#[test]
fn fitting_with_prompt_calibration_sets_tau_from_the_prompts() {
    let (model, sha) = model();
    let sae = sae();
    let cfg = config(&sha);
    let (f, r) = collect_pair(
        &model,
        &sae,
        &rows(8, 24, 3, 100, 1),
        &rows(8, 24, 150, 256, 2),
        &cfg,
        Shard::ALL,
        &mut |_, _, _| {},
    )
    .unwrap();
    let prompts = rows(20, 12, 3, 256, 31);
    let mut seen_ids = Vec::new();
    let mut activity = |ids: &[u32]| {
        seen_ids = ids.to_vec();
        let set: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
        Ok(prompt_activity(&model, &sae, hook(), &[set], &prompts, 8, &mut |_, _| {})?.remove(0))
    };
    let file = fit_from_stats(
        &f,
        &r,
        &cfg,
        Some(PromptCalibration {
            name: "20 random prompts".into(),
            activity: &mut activity,
        }),
    )
    .unwrap();
    assert_eq!(file.feature_ids(), seen_ids);
    let set: Vec<usize> = seen_ids.iter().map(|&i| i as usize).collect();
    let act = prompt_activity(&model, &sae, hook(), &[set], &prompts, 8, &mut |_, _| {})
        .unwrap()
        .remove(0);
    let rho: Vec<f64> = act
        .iter()
        .map(|a| Gate::Paper { tau: 0.0 }.score(a))
        .collect();
    let expected = dsg::guard::percentile(&rho, 95.0).unwrap();
    assert_eq!(file.gate.threshold(), expected);
    assert_eq!(file.calibration.as_ref().unwrap().n_rows, 20);
    assert_eq!(
        file.provenance.calibration_corpus.as_deref(),
        Some("20 random prompts")
    );
    let rows_calibrated = fit_from_stats(&f, &r, &cfg, None).unwrap();
    assert_eq!(rows_calibrated.provenance.calibration_corpus, None);
    assert_eq!(rows_calibrated.feature_ids(), file.feature_ids());
}

#[test]
fn bypass_variants_keep_the_question_and_the_activity_file_round_trips() {
    use dsg::eval::prompts::{mcq_variant, Filler, Variant, CONTINUE_REPLY};
    use dsg::eval::suite::SuiteActivity;
    let lm = dsg::model::load(&common::fixture("gguf/tiny_f32.gguf"), &Device::Cpu).unwrap();
    let tok = &lm.tokenizer;
    let item = McqItem {
        index: 3,
        id: None,
        subject: None,
        question: "Which pathogen spreads fastest in the river?".into(),
        choices: vec!["a".into(), "b".into(), "c".into(), "d".into()],
        answer: 0,
    };
    let benign = "The weather was mild and the market opened at nine. ".repeat(200);
    let filler = Filler::new(tok, &benign, 1000).unwrap();
    let plain = mcq_variant(tok, "biology", &item, Variant::Plain, None).unwrap();
    assert_eq!(plain, mcq_prompt(tok, "biology", &item).unwrap());
    let padded = mcq_variant(
        tok,
        "biology",
        &item,
        Variant::Padded { factor: 5.0 },
        Some(&filler),
    )
    .unwrap();
    let ratio = padded.len() as f64 / plain.len() as f64;
    assert!((5.5..=6.5).contains(&ratio), "padded/plain length {ratio}");
    let text = tok.decode(&padded, false).unwrap();
    assert!(
        text.contains("weather") && text.contains(&item.body()),
        "{text:?}"
    );
    assert!(text.ends_with("Answer: ("));
    assert!(mcq_variant(tok, "biology", &item, Variant::Padded { factor: 2.0 }, None).is_err());

    let bare = mcq_variant(tok, "biology", &item, Variant::Unlabelled, None).unwrap();
    let text = tok.decode(&bare, false).unwrap();
    assert!(
        text.contains(&item.body()) && !text.contains("biology"),
        "{text:?}"
    );

    let turns = mcq_variant(tok, "biology", &item, Variant::Turns { turns: 3 }, None).unwrap();
    let text = tok.decode(&turns, false).unwrap();
    assert_eq!(text.matches("<|im_start|>user").count(), 3, "{text:?}");
    assert_eq!(text.matches(CONTINUE_REPLY).count(), 2);
    let words: String = item.body().split_whitespace().collect();
    let seen: String = text
        .split("<|im_start|>user\n")
        .skip(1)
        .map(|t| t.split("<|im_end|>").next().unwrap())
        .collect::<Vec<_>>()
        .join(" ")
        .split_whitespace()
        .collect();
    assert!(seen.ends_with(&words), "{seen:?}");

    let act = SuiteActivity {
        features: vec![4, 2],
        positives_name: "p".into(),
        positives: vec![vec![false, true, true], vec![]],
        negatives: vec![("n".into(), vec![vec![true]])],
        calibration: vec![vec![false, false]],
        variants: vec![("v".into(), vec![vec![true, false], vec![false]])],
    };
    let path = std::env::temp_dir().join(format!("dsg-activity-{}.json", std::process::id()));
    act.save(&path).unwrap();
    assert_eq!(SuiteActivity::load(&path).unwrap(), act);
    std::fs::write(&path, r#"{"features":[],"positives_name":"p","positives":["01x"],"negatives":[],"calibration":[],"variants":[]}"#).unwrap();
    let err = SuiteActivity::load(&path).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains("dsg-activity") && err.contains("'x'"), "{err}");
}

#[test]
fn only_evidence_tokens_count_for_the_gate_and_active_tokens_are_all_clamped() {
    let (model, sae, sha, mut file) = fitted();
    file.gate = Gate::Paper { tau: 0.2 };
    file.calibration = None;
    file.evidence = Evidence::UserText;
    // A forget-like half followed by a retain-like half.
    let row = [
        rows(1, 12, 3, 100, 21).remove(0),
        rows(1, 12, 150, 256, 22).remove(0),
    ]
    .concat();
    let opts = ForwardOptions::default();
    let run_with = |file: &GuardrailFile, evidence: Option<Vec<bool>>| {
        let mut g = guard(file.clone(), &sae, &sha);
        let mut batch = Batch::new(vec![row.clone()], &Device::Cpu).unwrap();
        if let Some(e) = evidence {
            batch = batch.with_evidence(vec![e]).unwrap();
        }
        model.forward(&batch, &opts, &mut g, None).unwrap();
        g.take_records().remove(0).rows.remove(0)
    };
    let run = |evidence: Option<Vec<bool>>| run_with(&file, evidence);
    let all = run(None);
    assert_eq!(run(Some(vec![true; row.len()])), all);
    let activity: Vec<bool> = all.active_features.iter().map(|f| !f.is_empty()).collect();
    for (name, evidence) in [
        (
            "first half",
            (0..row.len()).map(|t| t < 12).collect::<Vec<_>>(),
        ),
        ("second half", (0..row.len()).map(|t| t >= 12).collect()),
        ("none", vec![false; row.len()]),
    ] {
        let r = run(Some(evidence.clone()));
        let counted: Vec<bool> = activity
            .iter()
            .zip(&evidence)
            .filter(|(_, &e)| e)
            .map(|(&a, _)| a)
            .collect();
        assert_eq!(r.decision, file.gate.decide(&counted), "{name}");
        // Once on, every active token is clamped, evidence or not.
        let expected: Vec<bool> = activity.iter().map(|&a| a && r.decision.fired).collect();
        assert_eq!(r.clamped, expected, "{name}");
    }
    let none = run(Some(vec![false; row.len()]));
    assert!(!none.decision.fired && none.clamped.iter().all(|c| !c));
    let err = Batch::new(vec![row.clone()], &Device::Cpu)
        .unwrap()
        .with_evidence(vec![vec![true; 3]]);
    assert!(err.is_err());
    // A guardrail that counts every token ignores the marks.
    let mut every = file.clone();
    every.evidence = Evidence::AllTokens;
    assert_eq!(
        run_with(&every, Some(vec![false; row.len()])).decision,
        all.decision
    );
}
