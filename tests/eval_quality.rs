//! Output quality on the tiny GGUF fixture. Next-token KL to the unguarded model: zero for the
//! model against itself, and equal to a KL computed directly from the two passes' full logits when
//! a hook shifts the residual stream. Guarded free generation with a guardrail fitted on a seeded
//! random SAE: a refusing guardrail forced on refuses every prompt, one whose gate is shut answers
//! exactly as the unguarded model. The degenerate-output detector against hand-labelled real
//! answers of SmolLM2-135M-Instruct (`tests/fixtures/quality/labelled_answers.json`).

mod common;

use candle_core::{Device, Tensor};
use dsg::data::SplitMix64;
use dsg::eval::quality::{
    assess, generation_quality, next_token_kl, next_token_kl_between, DegenerateThresholds,
    FreePrompt,
};
use dsg::generate::GenerateOptions;
use dsg::guard::{Gate, Guardrail, Intervention};
use dsg::model::{
    self, Batch, FnHook, ForwardOptions, HookPoint, Hooks, LoadedModel, Logits, Model, NoHooks,
};

fn tiny() -> Model {
    model::load(&common::fixture("gguf/tiny_f32.gguf"), &Device::Cpu)
        .unwrap()
        .model
}

fn tokens(model: &Model, n: usize) -> Vec<u32> {
    let vocab = model.config().vocab_size;
    let mut rng = SplitMix64::new(3);
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

/// Adds 0.5 to every element of the residual after block 0 (one row, so no padding to spare).
fn shift() -> impl Hooks {
    FnHook::new(HookPoint::resid_post(0), |_, act: &Tensor| {
        Ok(Some(act.affine(1.0, 0.5)?))
    })
}

/// All logits of one window as f64 rows.
fn all_logits(model: &Model, row: &[u32], hooks: &mut dyn Hooks) -> Vec<Vec<f64>> {
    let opts = ForwardOptions {
        logits: Logits::All,
        ..Default::default()
    };
    let batch = Batch::single(row.to_vec(), &Device::Cpu).unwrap();
    let logits = model
        .forward(&batch, &opts, hooks, None)
        .unwrap()
        .logits
        .unwrap();
    logits
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    row.iter().map(|x| x - lse).collect()
}

#[test]
fn kl_of_the_model_with_itself_is_zero() {
    let model = tiny();
    let ids = tokens(&model, 21);
    let r = next_token_kl(&model, &ids, 8, None, &mut NoHooks, &mut NoHooks).unwrap();
    // Windows of 8, 8 and 5 tokens predict 7 + 7 + 4 positions.
    assert_eq!((r.n_windows, r.n_predicted, r.kl.len()), (3, 18, 18));
    assert!(r.max_kl <= 1e-9, "{r:?}");
    assert_eq!(r.changed_fraction, 0.0);
    assert_eq!(r.base_perplexity, r.guarded_perplexity);
    let ppl = dsg::eval::perplexity::perplexity(&model, &ids, 8, &mut NoHooks).unwrap();
    assert!((r.base_perplexity - ppl.perplexity).abs() <= 1e-4 * ppl.perplexity);
    // With a leading BOS each window is BOS + 7 tokens, and every one of the 21 tokens is predicted.
    let r = next_token_kl(&model, &ids, 8, Some(0), &mut NoHooks, &mut NoHooks).unwrap();
    assert_eq!((r.n_windows, r.n_predicted), (3, 21));
    assert!(r.max_kl <= 1e-9, "{r:?}");
}

#[test]
fn kl_under_a_residual_shift_matches_a_direct_computation() {
    let model = tiny();
    let ids = tokens(&model, 21);
    let window = 8;
    let r = next_token_kl(&model, &ids, window, None, &mut NoHooks, &mut shift()).unwrap();
    let mut direct = Vec::new();
    let mut guarded_nll = 0.0;
    for chunk in ids.chunks(window).filter(|c| c.len() >= 2) {
        let p = all_logits(&model, chunk, &mut NoHooks);
        let q = all_logits(&model, chunk, &mut shift());
        for t in 0..chunk.len() - 1 {
            let (lp, lq) = (log_softmax(&p[t]), log_softmax(&q[t]));
            let mut kl = 0.0;
            for v in 0..lp.len() {
                kl += lp[v].exp() * (lp[v] - lq[v]);
            }
            direct.push(kl);
            guarded_nll -= lq[chunk[t + 1] as usize];
        }
    }
    assert_eq!(direct.len(), r.kl.len());
    for (i, (a, b)) in r.kl.iter().zip(&direct).enumerate() {
        assert!((a - b).abs() <= 1e-6, "position {i}: {a} vs {b}");
    }
    assert!(r.mean_kl > 0.0 && r.max_kl >= r.mean_kl, "{r:?}");
    assert!(r.changed_fraction > 0.0);
    let ppl = (guarded_nll / direct.len() as f64).exp();
    assert!(
        (r.guarded_perplexity - ppl).abs() <= 1e-6 * ppl,
        "{} vs {ppl}",
        r.guarded_perplexity
    );
}

/// The KL between two models (the trade-off's KL of an unlearned copy to its base): a Q4_0 copy
/// of the tiny model against the f32 one, each position checked against a direct computation.
#[test]
fn kl_between_two_models_matches_a_direct_computation() {
    let base = tiny();
    let other = model::load(&common::fixture("gguf/tiny_q4_0.gguf"), &Device::Cpu)
        .unwrap()
        .model;
    let ids = tokens(&base, 19);
    let window = 8;
    let r = next_token_kl_between(
        (&base, &mut NoHooks),
        (&other, &mut NoHooks),
        &ids,
        window,
        None,
    )
    .unwrap();
    let mut direct = Vec::new();
    for chunk in ids.chunks(window).filter(|c| c.len() >= 2) {
        let p = all_logits(&base, chunk, &mut NoHooks);
        let q = all_logits(&other, chunk, &mut NoHooks);
        for t in 0..chunk.len() - 1 {
            let (lp, lq) = (log_softmax(&p[t]), log_softmax(&q[t]));
            direct.push(
                (0..lp.len())
                    .map(|v| lp[v].exp() * (lp[v] - lq[v]))
                    .sum::<f64>(),
            );
        }
    }
    assert_eq!(direct.len(), r.kl.len());
    for (i, (a, b)) in r.kl.iter().zip(&direct).enumerate() {
        assert!((a - b).abs() <= 1e-6, "position {i}: {a} vs {b}");
    }
    assert!(
        r.mean_kl > 0.0,
        "quantisation changes the distribution: {r:?}"
    );
    let same = next_token_kl_between(
        (&base, &mut NoHooks),
        (&base, &mut NoHooks),
        &ids,
        window,
        None,
    )
    .unwrap();
    assert!(same.max_kl <= 1e-9);
}

#[test]
fn short_inputs_and_windows_are_refused() {
    let model = tiny();
    let e = next_token_kl(&model, &[1], 8, None, &mut NoHooks, &mut NoHooks).unwrap_err();
    assert!(e.to_string().contains("at least 2 tokens"), "{e}");
    let e = next_token_kl(&model, &[1, 2, 3], 1, None, &mut NoHooks, &mut NoHooks).unwrap_err();
    assert!(e.to_string().starts_with("window (--window): 1"), "{e}");
}

fn tiny_lm() -> LoadedModel {
    model::load(&common::fixture("gguf/tiny_f32.gguf"), &Device::Cpu).unwrap()
}

fn free_prompts(lm: &LoadedModel) -> Vec<FreePrompt> {
    [
        "The 3 cats sat on 12 mats.",
        "What is a virus?",
        "Tell me about 1998.",
    ]
    .iter()
    .map(|t| FreePrompt::chat(&lm.tokenizer, t).unwrap())
    .collect()
}

fn options(lm: &LoadedModel) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: 10,
        stop_tokens: lm.tokenizer.eos_id().into_iter().collect(),
        ..Default::default()
    }
}

#[test]
fn a_forced_refusal_refuses_everything_and_a_shut_gate_changes_nothing() {
    let lm = tiny_lm();
    let guard = common::tiny_guardrail(&lm);
    let prompts = free_prompts(&lm);
    let (opts, th) = (options(&lm), DegenerateThresholds::default());
    let quality = |guards: &mut [Guardrail]| {
        generation_quality(&lm, &prompts, guards, &opts, &th, &mut |_, _| {}).unwrap()
    };
    let base = quality(&mut []);
    assert_eq!((base.refusal.k, base.gated.k), (0, 0));
    assert!(base.samples.iter().all(|s| s.tokens > 0));

    let refusing = guard
        .with_gate(Gate::Paper { tau: -1.0 })
        .unwrap()
        .with_intervention(Intervention::Refuse)
        .unwrap();
    let refused = quality(&mut [refusing]);
    assert_eq!((refused.refusal.k, refused.refusal.n), (3, 3));
    assert_eq!((refused.gated.k, refused.gibberish_answered.n), (3, 0));
    assert_eq!(refused.gibberish_all.k, 0);
    for s in &refused.samples {
        assert_eq!((s.answer.as_str(), s.tokens), (dsg::guard::REFUSAL, 0));
    }

    let shut = quality(&mut [guard.with_gate(Gate::Paper { tau: 1.0 }).unwrap()]);
    assert_eq!((shut.gated.k, shut.refusal.k), (0, 0));
    assert_eq!(shut.samples, base.samples);

    // Not vacuous: the same guardrail forced on, clamping, changes some answer.
    let on = quality(&mut [guard.with_gate(Gate::Paper { tau: -1.0 }).unwrap()]);
    assert_eq!(on.gated.k, 3);
    let answers = |q: &dsg::eval::quality::GenerationQuality| {
        q.samples
            .iter()
            .map(|s| s.answer.clone())
            .collect::<Vec<_>>()
    };
    assert_ne!(answers(&on), answers(&base));
}

/// One hand-labelled answer of the fixture.
#[derive(serde::Deserialize)]
struct Labelled {
    source: String,
    text: String,
    gibberish: bool,
    why: String,
    #[serde(default)]
    detector_misses: bool,
}

#[test]
fn the_detector_agrees_with_hand_labels_on_real_answers() {
    let path = common::fixture("quality/labelled_answers.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let answers: Vec<Labelled> = serde_json::from_value(file["answers"].clone()).unwrap();
    assert!(answers.len() >= 20, "{} answers", answers.len());
    assert!(answers.iter().any(|a| a.gibberish) && answers.iter().any(|a| !a.gibberish));
    let th = DegenerateThresholds::default();
    let mut agree = 0;
    let mut wrong = Vec::new();
    for a in &answers {
        let r = assess(&a.text, &th);
        agree += usize::from(r.degenerate == a.gibberish);
        // A documented miss must still be missed, or the module documentation is out of date.
        if (r.degenerate == a.gibberish) == a.detector_misses {
            let label = if a.gibberish { "gibberish" } else { "fluent" };
            wrong.push(format!(
                "{} (labelled {label}: {}; documented miss: {}): {r:?}\n  {:?}",
                a.source, a.why, a.detector_misses, a.text
            ));
        }
    }
    let misses = answers.iter().filter(|a| a.detector_misses).count();
    eprintln!(
        "detector agrees with {agree}/{} labels; {misses} documented misses",
        answers.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn quality_options_are_checked_by_name_before_any_model_work() {
    use dsg::data::Split;
    use dsg::eval::quality::{QualityConfig, WikiWindows};
    use dsg::output::Overwrite;
    let dir = common::scratch("eval_quality", "check");
    let mcq = dir.join("bio_questions.json");
    let rows: Vec<serde_json::Value> = (0..5)
        .map(|i| serde_json::json!({"question": format!(" Question {i}? "), "choices": ["a", "b", "c", "d"], "answer": 0}))
        .collect();
    std::fs::write(&mcq, serde_json::to_string(&rows).unwrap()).unwrap();
    let stems = dsg::eval::quality::question_stems(&mcq, Split::All, None, 0).unwrap();
    assert_eq!(stems[0], "Question 0?");
    assert_eq!(stems.len(), 5);
    let sample = dsg::eval::quality::question_stems(&mcq, Split::All, Some(2), 0).unwrap();
    assert_eq!(sample.len(), 2);
    assert!(sample.iter().all(|s| stems.contains(s)));
    let guard = vec![dir.join("guard.json")];
    let cfg = QualityConfig {
        forget: mcq.clone(),
        benign: vec![mcq.clone()],
        split: Split::All,
        limit: Some(2),
        seed: 0,
        max_new_tokens: 8,
        gate_on: false,
        thresholds: DegenerateThresholds::default(),
        wikitext: Some(WikiWindows {
            file: mcq.clone(),
            windows: 1,
            window_tokens: 16,
        }),
        out: dir.join("out"),
        overwrite: Overwrite::Refuse,
    };
    cfg.check(&guard).unwrap();
    let refused = |edit: &dyn Fn(&mut QualityConfig), guards: &[std::path::PathBuf]| {
        let mut c = cfg.clone();
        edit(&mut c);
        c.check(guards).unwrap_err().to_string()
    };
    let e = refused(&|_| {}, &[]);
    assert!(e.starts_with("--guard: none"), "{e}");
    let e = refused(&|c| c.limit = Some(0), &guard);
    assert!(e.starts_with("--limit: 0"), "{e}");
    let e = refused(&|c| c.max_new_tokens = 0, &guard);
    assert!(e.starts_with("--max-tokens: 0"), "{e}");
    let e = refused(&|c| c.benign.clear(), &guard);
    assert!(e.starts_with("--benign: none"), "{e}");
    let e = refused(&|c| c.wikitext.as_mut().unwrap().window_tokens = 1, &guard);
    assert!(e.starts_with("--window-tokens: 1"), "{e}");
    let e = refused(&|c| c.forget = dir.join("missing.json"), &guard);
    assert!(e.contains("missing --forget file"), "{e}");
    let e = refused(&|c| c.out = mcq.clone(), &guard);
    assert!(e.contains("--out"), "{e}");
}
