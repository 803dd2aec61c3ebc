//! Track K's shortcuts checked against the direct computation on SmolLM2 with the shipped
//! guardrail's features: the gate decisions from one pass to the hook layer equal the decisions
//! the guardrail takes while scoring cloze rows (continuations never count), and a set scored by
//! rescoring only its gated questions equals scoring every question with the guardrail.

mod common;

use candle_core::Device;
use common::{scratch, shared_data_or_skip};
use dsg::assets::{default_guard_file, default_sae_dir};
use dsg::data::Split;
use dsg::eval::mcq::{evaluate, Protocol};
use dsg::eval::track::knowledge::evaluate::{gate_decisions, score_set};
use dsg::eval::track::knowledge::measure::{arc_questions, base_outcomes};
use dsg::eval::track::knowledge::KnowledgeConfig;
use dsg::guard::{Evidence, Gate, Guardrail, GuardrailFile, Intervention};
use dsg::model::{self, fetch};
use dsg::output::Overwrite;

#[test]
fn shortcuts_equal_scoring_every_question_with_the_guardrail() {
    let Some(arc) = shared_data_or_skip("arc/ARC-Easy-Dev.jsonl") else {
        return;
    };
    let data = arc.parent().unwrap().parent().unwrap().to_path_buf();
    let lm = model::load(&fetch::ensure_default_model().unwrap(), &Device::Cpu).unwrap();
    let sae = default_sae_dir().unwrap();
    let dir = scratch("track_knowledge", "shortcuts");
    // The shipped guardrail, counting the user's text, with a threshold low enough that some of
    // these questions are gated and some are not.
    let mut file = GuardrailFile::load(default_guard_file().unwrap()).unwrap();
    file.evidence = Evidence::UserText;
    file.gate = Gate::Paper { tau: 0.02 };
    file.calibration = None;
    let path = dir.join("guard.json");
    file.save(&path).unwrap();
    let guard = Guardrail::load(&path, &lm, Some(&sae)).unwrap();
    let questions: Vec<_> = arc_questions(&data, Split::Heldout)
        .unwrap()
        .into_iter()
        .take(24)
        .collect();

    let fired = gate_decisions(&lm, &guard, &questions, 5).unwrap();
    let mut direct = [guard
        .with_intervention("clamp:500".parse().unwrap())
        .unwrap()];
    let full = evaluate(
        &lm,
        &questions,
        Protocol::Cloze,
        8,
        &mut direct,
        &mut |_| {},
    )
    .unwrap();
    let hook: Vec<bool> = full
        .iter()
        .map(|r| {
            let rows = &r.guards[0];
            assert!(
                rows.iter().all(|d| d.fired == rows[0].fired),
                "{}: options disagree",
                r.id
            );
            rows[0].fired
        })
        .collect();
    assert_eq!(fired, hook);
    let gated = fired.iter().filter(|&&f| f).count();
    // A refusing guardrail edits nothing: the scores are the base model's, and the gated
    // questions are refused and count as wrong.
    let mut refusing = [guard.with_intervention(Intervention::Refuse).unwrap()];
    let refused = evaluate(
        &lm,
        &questions,
        Protocol::Cloze,
        8,
        &mut refusing,
        &mut |_| {},
    )
    .unwrap();
    assert!(
        gated > 0 && gated < questions.len(),
        "{gated} of {} gated",
        questions.len()
    );

    let base = base_outcomes(&lm, &questions, Protocol::Cloze, 8, &mut |_| {}).unwrap();
    let cfg = KnowledgeConfig {
        data,
        sae,
        out: dir.clone(),
        overwrite: Overwrite::Force,
        mmlu_per_subject: 1,
        mmlu_utility_per_subject: 1,
        n_features: 20,
        p_ratio: 95.0,
        p_dyn: 95.0,
        gate: Gate::Paper { tau: 0.0 },
        interventions: vec!["clamp:500".parse().unwrap(), Intervention::Refuse],
        generations: 1,
        max_tokens: 1,
        kl_windows: 1,
        kl_window_tokens: 2,
        batch: 3,
    };
    let _ = std::fs::remove_dir_all(cfg.work());
    let set = score_set(
        &lm,
        &cfg,
        &guard,
        "test",
        "test",
        &questions,
        &base,
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(set.gated.k, gated);
    let clamp = &set.scored[1];
    assert_eq!(clamp.acc.k, full.iter().filter(|r| r.acc.correct).count());
    assert_eq!(
        clamp.acc_norm.k,
        full.iter()
            .filter(|r| r.acc_norm.as_ref().unwrap().correct)
            .count()
    );
    let refuse = &set.scored[2];
    assert_eq!(refuse.refused.k, gated);
    let kept = base
        .iter()
        .zip(&fired)
        .filter(|(o, &f)| !f && o.correct)
        .count();
    assert_eq!(refuse.acc.k, kept);
    for ((r, o), &f) in refused.iter().zip(&base).zip(&fired) {
        assert_eq!(r.refused, f, "{}", r.id);
        assert_eq!(r.acc.correct, o.correct && !f, "{}", r.id);
    }
}
