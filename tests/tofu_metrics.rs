//! TOFU: every metric of `dsg::eval::tofu::metrics` against the Python reference
//! (`scripts/make_tofu_reference.py`: open-unlearning's formulas, SciPy, rouge-score, NLTK) to
//! 1e-6, the TOFU readers on the shared data, `encode_qa`, and the evaluation end to end on the
//! tiny GGUF model, unguarded and guarded.

mod common;

use serde_json::Value;

use dsg::eval::tofu::metrics::{
    closer_to_1_better, harmonic_mean, ks_2samp, kstwo_sf, normalised_probability, porter_stem,
    probability, rouge, rouge_tokens, smirnov_sf, true_better, truth_ratio, KsMethod,
};

fn reference() -> Value {
    let path = common::fixture("tofu/reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// `|got − want| ≤ 1e-6`, and for values under 1e-6 also relative agreement to 1e-6.
#[track_caller]
fn close(got: f64, want: f64, what: &str) {
    let abs = (got - want).abs();
    let ok = if want.abs() < 1e-6 && want != 0.0 {
        abs <= 1e-6 * want.abs()
    } else {
        abs <= 1e-6
    };
    assert!(ok, "{what}: got {got:e}, want {want:e}");
}

/// A stored sample: a list, or a generator `{n, a, c, m, scale, offset}`.
fn sample(v: &Value) -> Vec<f64> {
    if v.is_array() {
        return f64s(v);
    }
    let g = |k: &str| v[k].as_u64().unwrap() as i64;
    let (scale, offset) = (v["scale"].as_f64().unwrap(), v["offset"].as_f64().unwrap());
    (0..g("n"))
        .map(|i| ((g("a") * i + g("c")) % g("m")) as f64 / g("m") as f64 * scale + offset)
        .collect()
}

#[test]
fn probability_matches_open_unlearning() {
    for case in reference()["probability"].as_array().unwrap() {
        let p = probability(&f64s(&case["logprobs"]));
        close(p.prob, case["prob"].as_f64().unwrap(), "prob");
        close(p.avg_loss, case["avg_loss"].as_f64().unwrap(), "avg_loss");
    }
}

#[test]
fn truth_ratio_and_aggregates_match_open_unlearning() {
    for set in reference()["truth_ratio"].as_array().unwrap() {
        let name = set["name"].as_str().unwrap();
        let correct = f64s(&set["correct_avg_loss"]);
        let wrong: Vec<Vec<f64>> = set["wrong_avg_loss"]
            .as_array()
            .unwrap()
            .iter()
            .map(f64s)
            .collect();
        let ratios: Vec<f64> = correct
            .iter()
            .zip(&wrong)
            .map(|(&c, w)| truth_ratio(c, w))
            .collect();
        for (got, want) in ratios.iter().zip(f64s(&set["truth_ratio"])) {
            close(*got, want, &format!("{name}: truth ratio"));
        }
        close(
            closer_to_1_better(&ratios),
            set["closer_to_1_better"].as_f64().unwrap(),
            name,
        );
        close(
            true_better(&ratios),
            set["true_better"].as_f64().unwrap(),
            name,
        );
        let pert: Vec<Vec<f64>> = wrong
            .iter()
            .map(|w| w.iter().map(|l| (-l).exp()).collect())
            .collect();
        let per_sample: Vec<f64> = pert
            .iter()
            .map(|p| p.iter().sum::<f64>() / p.len() as f64)
            .collect();
        close(
            per_sample.iter().sum::<f64>() / per_sample.len() as f64,
            set["perturbed_prob_agg"].as_f64().unwrap(),
            name,
        );
        let norm: Vec<f64> = correct
            .iter()
            .zip(&pert)
            .map(|(c, p)| normalised_probability((-c).exp(), p))
            .collect();
        for (got, want) in norm.iter().zip(f64s(&set["normalised"])) {
            close(*got, want, &format!("{name}: normalised"));
        }
    }
}

#[test]
fn harmonic_mean_matches_scipy() {
    for case in reference()["hmean"].as_array().unwrap() {
        close(
            harmonic_mean(&f64s(&case["values"])),
            case["hmean"].as_f64().unwrap(),
            "hmean",
        );
    }
}

#[test]
fn ks_2samp_matches_scipy() {
    for case in reference()["ks_2samp"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let r = ks_2samp(&sample(&case["a"]), &sample(&case["b"])).unwrap();
        let method = match case["method"].as_str().unwrap() {
            "exact" => KsMethod::Exact,
            _ => KsMethod::Asymp,
        };
        assert_eq!(r.method, method, "{name}");
        close(r.statistic, case["statistic"].as_f64().unwrap(), name);
        close(r.pvalue, case["pvalue"].as_f64().unwrap(), name);
    }
}

#[test]
fn kstwo_and_smirnov_match_scipy() {
    let reference = reference();
    for case in reference["kstwo_sf"].as_array().unwrap() {
        let (n, x) = (case["n"].as_u64().unwrap(), case["x"].as_f64().unwrap());
        close(
            kstwo_sf(x, n),
            case["sf"].as_f64().unwrap(),
            &format!("kstwo.sf({x}, {n})"),
        );
    }
    for case in reference["smirnov"].as_array().unwrap() {
        let (n, x) = (case["n"].as_u64().unwrap(), case["x"].as_f64().unwrap());
        close(
            smirnov_sf(n, x),
            case["sf"].as_f64().unwrap(),
            &format!("smirnov({n}, {x})"),
        );
    }
}

#[test]
fn rouge_matches_rouge_score() {
    for case in reference()["rouge"].as_array().unwrap() {
        let (t, p) = (
            case["target"].as_str().unwrap(),
            case["prediction"].as_str().unwrap(),
        );
        let want_tokens: Vec<String> = case["target_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        assert_eq!(rouge_tokens(t), want_tokens, "tokens of {t:?}");
        let r = rouge(t, p);
        let what = format!("{t:?} vs {p:?}");
        for (got, want) in [
            (r.rouge1.precision, &case["rouge1"][0]),
            (r.rouge1.recall, &case["rouge1"][1]),
            (r.rouge1.fmeasure, &case["rouge1"][2]),
            (r.rouge_l.precision, &case["rougeL"][0]),
            (r.rouge_l.recall, &case["rougeL"][1]),
            (r.rouge_l.fmeasure, &case["rougeL"][2]),
        ] {
            close(got, want.as_f64().unwrap(), &what);
        }
    }
}

#[test]
fn porter_stems_match_nltk() {
    let reference = reference();
    let stems = reference["stems"].as_object().unwrap();
    let wrong: Vec<String> = stems
        .iter()
        .filter(|(w, s)| porter_stem(w) != s.as_str().unwrap())
        .map(|(w, s)| format!("{w}: got {}, want {s}", porter_stem(w)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} stems differ: {wrong:?}",
        wrong.len(),
        stems.len()
    );
}

// --- the TOFU files ------------------------------------------------------------------------

use dsg::data::tofu::{
    authors, read_tofu_paraphrased, read_tofu_perturbed, read_tofu_qa, ForgetSplit, AUTHORS,
};

#[test]
fn readers_on_the_shared_tofu_files() {
    let Some(dir) = common::shared_data_or_skip("tofu") else {
        return;
    };
    let full = read_tofu_qa(&dir.join("full.json")).unwrap();
    assert_eq!(full.len(), 4000);
    assert_eq!(
        authors(&full, &dir.join("full.json")).unwrap().len(),
        AUTHORS
    );
    let pairs = |items: &[dsg::data::QaItem]| -> Vec<(String, String)> {
        items
            .iter()
            .map(|q| (q.question.clone(), q.answer.clone()))
            .collect()
    };
    for split in ForgetSplit::ALL {
        let forget = read_tofu_qa(&dir.join(format!("{}.json", split.name()))).unwrap();
        assert_eq!(
            pairs(&forget),
            pairs(&full[split.row_range()]),
            "{}",
            split.name()
        );
        let retain = read_tofu_qa(&dir.join(format!("{}.json", split.retain_name()))).unwrap();
        assert_eq!(pairs(&retain), pairs(&full[..split.row_range().start]));
        let path = dir.join(format!("{}_perturbed.json", split.name()));
        let perturbed = read_tofu_paraphrased(&path).unwrap();
        assert_eq!(pairs(&perturbed), pairs(&forget));
        assert!(perturbed.iter().all(|q| q.perturbed_answers.len() == 5));
    }
    let retain = read_tofu_paraphrased(&dir.join("retain_perturbed.json")).unwrap();
    assert_eq!(pairs(&retain), pairs(&full[..400]));
    for (name, rows) in [("real_authors", 100), ("world_facts", 117)] {
        let path = dir.join(format!("{name}_perturbed.json"));
        let items = read_tofu_perturbed(&path).unwrap();
        assert_eq!(items.len(), rows, "{name}");
        assert!(items.iter().all(|q| q.perturbed_answers.len() == 3));
        let e = read_tofu_paraphrased(&path).unwrap_err().to_string();
        assert!(
            e.contains("line 1: paraphrased_answer: expected a string"),
            "{e}"
        );
    }
    let sets = TofuSets::read_dir(&dir, ForgetSplit::Forget01).unwrap();
    assert_eq!(sets.forget.items.len(), 40);
    assert_eq!(sets.retain.items.len(), 400);
    let e = read_tofu_perturbed(&dir.join("full.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("full.json: line 1: perturbed_answer"), "{e}");
}

// --- encoding and the evaluation on the tiny model -------------------------------------------

use candle_core::Device;
use dsg::data::QaItem;
use dsg::eval::tofu::encode::end_of_turn;
use dsg::eval::tofu::{
    encode_chat_qa, encode_chat_question, encode_qa, encode_question, evaluate, RetainReference,
    SetKind, SetSizes, TofuOptions, TofuSet, TofuSets, MODEL_UTILITY_METRICS,
};
use dsg::guard::{Gate, Intervention, REFUSAL};
use dsg::model::{self, Batch, LoadedModel, NoHooks};

fn tiny_lm() -> LoadedModel {
    model::load(&common::fixture("gguf/tiny_f32.gguf"), &Device::Cpu).unwrap()
}

#[test]
fn encode_qa_is_the_prompt_then_answer_end_of_turn_and_eos() {
    let lm = tiny_lm();
    let tok = &lm.tokenizer;
    let ex = encode_qa(tok, "Who is Bo?", "Bo is a cat.").unwrap();
    let prompt = encode_question(tok, "Who is Bo?").unwrap();
    assert_eq!(&ex.ids[..ex.answer_start], prompt.as_slice());
    let answer = tok.decode(ex.answer_ids(), false).unwrap();
    // ChatML: the rendering ends "<|im_end|>\n", so EOS (<|im_end|>) is appended, as
    // open-unlearning's preprocess_chat_instance does.
    assert_eq!(answer, "Bo is a cat.<|im_end|>\n<|im_end|>");
    assert_eq!(ex.ids.last(), tok.eos_id().as_ref());
    assert_eq!(end_of_turn(tok).unwrap(), tok.token_id("<|im_end|>"));
    let rendered = tok
        .apply_chat_template(&[model::Message::new("user", "Who is Bo?")], true)
        .unwrap();
    assert!(rendered.ends_with("<|im_start|>assistant\n"), "{rendered}");
    let with_system = encode_chat_qa(tok, Some("Be brief."), "Who is Bo?", "Bo is a cat.").unwrap();
    let system_prompt = encode_chat_question(tok, Some("Be brief."), "Who is Bo?").unwrap();
    assert_eq!(
        &with_system.ids[..with_system.answer_start],
        system_prompt.as_slice()
    );
    assert_eq!(with_system.answer_ids(), ex.answer_ids());
    assert_ne!(system_prompt, prompt);
}

fn item(index: usize, q: &str, a: &str, para: Option<&str>, wrong: &[&str]) -> QaItem {
    QaItem {
        index,
        question: q.into(),
        answer: a.into(),
        paraphrased_question: None,
        paraphrased_answer: para.map(String::from),
        perturbed_answers: wrong.iter().map(|w| w.to_string()).collect(),
    }
}

/// Small sets in TOFU's shapes whose prompts fit the tiny model's 128-token context.
fn tiny_sets() -> TofuSets {
    let set = |kind, items| TofuSet {
        kind,
        path: format!("{kind:?}.json").into(),
        items,
    };
    let five = ["Al.", "Cy.", "Di.", "Ed.", "Fa."];
    TofuSets {
        forget: set(
            SetKind::Forget,
            vec![
                item(0, "Who is Bo?", "Bo is a cat.", Some("A cat."), &five),
                item(1, "Bo's age?", "Bo is 3.", Some("Three."), &five),
                item(2, "Bo's town?", "Oslo.", Some("It is Oslo."), &five),
            ],
        ),
        retain: set(
            SetKind::Retain,
            vec![
                item(0, "Who is Ky?", "Ky is a dog.", Some("A dog."), &five),
                item(1, "Ky's age?", "Ky is 5.", Some("Five."), &five),
            ],
        ),
        real_authors: set(
            SetKind::RealAuthors,
            vec![
                item(
                    0,
                    "Who wrote Emma?",
                    "Jane Austen",
                    None,
                    &["Twain", "Woolf", "Poe"],
                ),
                item(
                    1,
                    "Who wrote Ulysses?",
                    "James Joyce",
                    None,
                    &["Orwell", "Eco", "Poe"],
                ),
            ],
        ),
        world_facts: set(
            SetKind::WorldFacts,
            vec![item(
                0,
                "Capital of France?",
                "Paris",
                None,
                &["Rome", "Oslo", "Bern"],
            )],
        ),
    }
}

fn tiny_options(batch_size: usize) -> TofuOptions {
    TofuOptions {
        sizes: SetSizes::all(),
        batch_size,
        max_new_tokens: 6,
        ..TofuOptions::default()
    }
}

#[test]
fn evaluation_end_to_end_on_the_tiny_model() {
    let lm = tiny_lm();
    let sets = tiny_sets();
    let report = evaluate(&lm, &[], &sets, &tiny_options(4), None, &mut |_, _, _| {}).unwrap();
    for set in report.sets() {
        for s in &set.samples {
            let probs = [s.answer]
                .into_iter()
                .chain(s.paraphrased)
                .chain(s.perturbed.iter().copied());
            for p in probs {
                assert!(p.prob > 0.0 && p.prob <= 1.0, "{:?}: {p:?}", set.kind);
                assert!((p.prob - (-p.avg_loss).exp()).abs() < 1e-12);
            }
            assert!(s.truth_ratio > 0.0 && s.truth_ratio.is_finite());
            assert!((0.0..=1.0).contains(&s.generation.rouge.rouge_l.recall));
            assert!(!s.generation.refused && s.generation.tokens <= 6);
        }
    }
    // The scored probability is the model's own: one unbatched pass over the encoded pair.
    let ex = encode_qa(&lm.tokenizer, "Who is Bo?", "Bo is a cat.").unwrap();
    let lp = lm
        .model
        .token_logprobs(
            &Batch::single(ex.ids.clone(), &Device::Cpu).unwrap(),
            &mut NoHooks,
        )
        .unwrap();
    let answer_lp: Vec<f64> = lp[0][ex.answer_start - 1..]
        .iter()
        .map(|&x| x as f64)
        .collect();
    let direct = dsg::eval::tofu::metrics::probability(&answer_lp);
    assert!((report.forget.samples[0].answer.prob - direct.prob).abs() < 1e-5);
    // Batching does not change a number.
    let one = evaluate(&lm, &[], &sets, &tiny_options(1), None, &mut |_, _, _| {}).unwrap();
    for (a, b) in report.sets().iter().zip(one.sets()) {
        for (x, y) in a.samples.iter().zip(&b.samples) {
            assert!((x.answer.prob - y.answer.prob).abs() < 1e-5);
            assert!((x.truth_ratio - y.truth_ratio).abs() < 1e-4 * x.truth_ratio);
            assert_eq!(x.generation.text, y.generation.text);
        }
    }
    // open-unlearning's JSON shape.
    let logs = report.eval_logs();
    for key in [
        "forget_Q_A_Prob",
        "forget_Q_A_PARA_Prob",
        "forget_Q_A_PERT_Prob",
        "forget_truth_ratio",
        "forget_Q_A_ROUGE",
        "forget_quality",
        "model_utility",
        "retain_Q_A_Prob",
        "retain_Truth_Ratio",
        "ra_Q_A_Prob_normalised",
        "wf_Q_A_ROUGE",
        "forget_gibberish_rate",
    ] {
        assert!(
            logs.contains_key(key),
            "{key} missing from {:?}",
            logs.keys()
        );
    }
    assert!(logs["forget_quality"]["agg_value"].is_null());
    let pert = &logs["forget_Q_A_PERT_Prob"]["value_by_index"]["2"]["prob"];
    assert_eq!(pert.as_array().unwrap().len(), 5);
    let rouge = &logs["forget_Q_A_ROUGE"]["value_by_index"]["0"];
    assert_eq!(rouge["ground_truth"], "Bo is a cat.");
    assert!(rouge["rougeL_recall"].is_number() && rouge["generation"].is_string());
    let tr = &logs["retain_Truth_Ratio"];
    assert!((tr["agg_value"].as_f64().unwrap() - report.retain.truth_ratio()).abs() < 1e-15);
    let parts = report.model_utility_parts().unwrap();
    assert_eq!(
        parts.iter().map(|p| p.0).collect::<Vec<_>>(),
        MODEL_UTILITY_METRICS
    );
    let mu = report.model_utility().unwrap();
    let hm = parts.len() as f64 / parts.iter().map(|p| 1.0 / p.1).sum::<f64>();
    assert!(
        (0.0..=1.0).contains(&mu) && (mu - hm).abs() < 1e-12,
        "{mu} vs {hm}"
    );
    // Forget quality against itself as the retain model: the same distribution, p = 1.
    let mut again = report.clone();
    again
        .set_forget_quality(&RetainReference::from_report(&report))
        .unwrap();
    assert_eq!(again.forget_quality.as_ref().unwrap().ks.pvalue, 1.0);
    let dir = common::scratch("tofu", "end_to_end");
    let written = report.write(&dir).unwrap();
    assert_eq!(written.len(), 3);
    let read = RetainReference::read(&dir.join("TOFU_EVAL.json")).unwrap();
    assert_eq!(read.truth_ratios, report.forget.truth_ratios());
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("TOFU_SUMMARY.json")).unwrap())
            .unwrap();
    assert!(summary["model_utility"].is_number() && summary.get("forget_quality").is_none());
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"forget_Q_A_Prob\": {}}").unwrap();
    let e = RetainReference::read(&bad).unwrap_err().to_string();
    assert!(
        e.contains("missing forget_truth_ratio.value_by_index"),
        "{e}"
    );
    let mut unparaphrased = tiny_sets();
    unparaphrased.forget.items[1].paraphrased_answer = None;
    let e = evaluate(
        &lm,
        &[],
        &unparaphrased,
        &tiny_options(4),
        None,
        &mut |_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("Forget.json: row 1: paraphrased_answer"), "{e}");
}

#[test]
fn guarded_evaluation_clamps_in_the_scored_pass_and_refuses_in_answers() {
    let lm = tiny_lm();
    let mut sets = tiny_sets();
    sets.retain.items.truncate(1);
    let opts = TofuOptions {
        sizes: SetSizes {
            real_authors: Some(1),
            ..SetSizes::all()
        },
        ..tiny_options(3)
    };
    let plain = evaluate(&lm, &[], &sets, &opts, None, &mut |_, _, _| {}).unwrap();
    let guard = common::tiny_guardrail(&lm);
    let on = guard.with_gate(Gate::Paper { tau: -1.0 }).unwrap();
    let clamped = evaluate(
        &lm,
        std::slice::from_ref(&on),
        &sets,
        &opts,
        None,
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(clamped.guards.len(), 1);
    assert!(clamped.sets().iter().all(|s| s.gated().rate == 1.0));
    let changed = plain
        .sets()
        .iter()
        .zip(clamped.sets())
        .flat_map(|(a, b)| a.samples.iter().zip(&b.samples))
        .filter(|(x, y)| (x.answer.prob - y.answer.prob).abs() > 1e-6)
        .count();
    assert!(
        changed > 0,
        "a gate that always fires must change some probability"
    );
    let refusing = on.with_intervention(Intervention::Refuse).unwrap();
    let refused = evaluate(&lm, &[refusing], &sets, &opts, None, &mut |_, _, _| {}).unwrap();
    for (a, b) in plain.sets().iter().zip(refused.sets()) {
        for (x, y) in a.samples.iter().zip(&b.samples) {
            assert_eq!(y.generation.text, REFUSAL);
            assert!(y.generation.refused && y.generation.tokens == 0);
            // A refusing guardrail edits nothing: the scored probabilities are the model's.
            assert!((x.answer.prob - y.answer.prob).abs() < 1e-6);
        }
    }
    let logs = refused.eval_logs();
    assert_eq!(logs["forget_refusal_rate"]["agg_value"], 1.0);
    assert!(logs["forget_gibberish_rate"]["agg_value"].is_null());
}

/// open-unlearning's own pipeline on SmolLM2 for a few real TOFU rows
/// (`scripts/make_tofu_smollm2_reference.py`): the same token ids, answer probabilities within
/// f32 noise, the same truth ratios and greedy answers.
#[test]
fn smollm2_matches_open_unlearning_on_tofu_rows() {
    let path = model::fetch::ensure_default_model().expect("fetch the default model");
    let lm = model::load(&path, &Device::Cpu).unwrap();
    let text = std::fs::read_to_string(common::fixture("tofu/smollm2.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    let set_of = |key: &str, kind: SetKind| -> TofuSet {
        let items = reference["sets"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let answers = strs(&s["answers"]);
                let para = kind == SetKind::Forget;
                QaItem {
                    index: s["index"].as_u64().unwrap() as usize,
                    question: s["question"].as_str().unwrap().into(),
                    answer: answers[0].clone(),
                    paraphrased_question: None,
                    paraphrased_answer: para.then(|| answers[1].clone()),
                    perturbed_answers: answers[if para { 2 } else { 1 }..].to_vec(),
                }
            })
            .collect();
        TofuSet {
            kind,
            path: format!("{key}.json").into(),
            items,
        }
    };
    let empty = |kind| TofuSet {
        kind,
        path: "none.json".into(),
        items: Vec::new(),
    };
    let sets = TofuSets {
        forget: set_of("forget", SetKind::Forget),
        retain: empty(SetKind::Retain),
        real_authors: set_of("ra", SetKind::RealAuthors),
        world_facts: empty(SetKind::WorldFacts),
    };
    for set in [&sets.forget, &sets.real_authors] {
        let key = set.kind.prefix();
        for (item, s) in set
            .items
            .iter()
            .zip(reference["sets"][key].as_array().unwrap())
        {
            for (answer, want) in strs(&s["answers"])
                .iter()
                .zip(s["scored"].as_array().unwrap())
            {
                let ex = encode_qa(&lm.tokenizer, &item.question, answer).unwrap();
                let ids: Vec<u32> = want["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect();
                assert_eq!(ex.ids, ids, "{answer:?}");
                assert_eq!(
                    ex.answer_start as u64,
                    want["answer_start"].as_u64().unwrap()
                );
            }
        }
    }
    let opts = TofuOptions {
        max_new_tokens: reference["max_new_tokens"].as_u64().unwrap() as usize,
        ..TofuOptions::default()
    };
    let report = evaluate(&lm, &[], &sets, &opts, None, &mut |_, _, _| {}).unwrap();
    for set in [&report.forget, &report.real_authors] {
        let key = set.kind.prefix();
        for (got, want) in set
            .samples
            .iter()
            .zip(reference["sets"][key].as_array().unwrap())
        {
            let probs: Vec<_> = [got.answer]
                .into_iter()
                .chain(got.paraphrased)
                .chain(got.perturbed.iter().copied())
                .collect();
            for (p, w) in probs.iter().zip(want["scored"].as_array().unwrap()) {
                let (wp, wl) = (w["prob"].as_f64().unwrap(), w["avg_loss"].as_f64().unwrap());
                assert!(
                    (p.avg_loss - wl).abs() < 2e-4,
                    "{key}: avg_loss {} vs {wl}",
                    p.avg_loss
                );
                assert!(
                    (p.prob - wp).abs() < 2e-4 * wp.max(1e-3),
                    "{key}: prob {} vs {wp}",
                    p.prob
                );
            }
            let tr = want["truth_ratio"].as_f64().unwrap();
            assert!(
                (got.truth_ratio - tr).abs() < 1e-3 * tr,
                "{key}: {} vs {tr}",
                got.truth_ratio
            );
            let norm = want["normalised"].as_f64().unwrap();
            assert!(
                (got.normalised - norm).abs() < 1e-4,
                "{key}: {} vs {norm}",
                got.normalised
            );
            assert_eq!(
                got.generation.text,
                want["generation"].as_str().unwrap(),
                "{key}"
            );
            close(
                got.generation.rouge.rouge_l.recall,
                want["rougeL_recall"].as_f64().unwrap(),
                "rougeL_recall",
            );
        }
    }
}
