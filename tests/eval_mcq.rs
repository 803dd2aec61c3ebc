//! `dsg::eval::mcq`: scoring against logits computed here, batch invariance, the order filter, the
//! report files, and agreement with transformers on SmolLM2 (`scripts/make_mcq_reference.py`).

mod common;

use candle_core::{Device, IndexOp};
use common::fixture;
use dsg::data::{McqItem, Split};
use dsg::eval::mcq::{
    self, evaluate, filter_questions, protocol, McqConfig, Orders, Protocol, Question,
};
use dsg::eval::track::topics::Topic;
use dsg::guard::{Gate, Intervention};
use dsg::model::{self, fetch, Batch, ForwardOptions, Logits, NoHooks};
use dsg::output::Overwrite;

fn tiny() -> model::LoadedModel {
    model::load(&fixture("gguf/tiny_f32.gguf"), &Device::Cpu).unwrap()
}

fn questions() -> Vec<Question> {
    let q = |i: usize, question: &str, choices: &[&str], answer| Question {
        id: format!("t:{i}"),
        item: McqItem {
            index: i,
            id: None,
            subject: Some(
                if i.is_multiple_of(2) {
                    "alpha"
                } else {
                    "beta_gamma"
                }
                .into(),
            ),
            question: question.into(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            answer,
        },
    };
    vec![
        q(
            0,
            "What is two plus two?",
            &["three", "four", "five", "six"],
            1,
        ),
        q(1, "Which is a colour?", &["red", "dog", "run"], 0),
        q(
            2,
            "Pick one",
            &["a much longer answer", "b", "c c", "d", "e"],
            3,
        ),
    ]
}

/// Log-softmax of the full logits of `row` at `pos`, from a plain forward pass.
fn logp_at(lm: &model::LoadedModel, row: &[u32], pos: usize) -> Vec<f64> {
    let opts = ForwardOptions {
        logits: Logits::All,
        ..Default::default()
    };
    let out = lm
        .model
        .forward(
            &Batch::single(row.to_vec(), &Device::Cpu).unwrap(),
            &opts,
            &mut NoHooks,
            None,
        )
        .unwrap();
    let l: Vec<f64> = out
        .logits
        .unwrap()
        .i((0, pos))
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + l.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    l.into_iter().map(|x| x - lse).collect()
}

#[test]
fn loglikelihood_scores_match_the_logits() {
    let lm = tiny();
    let qs = questions();
    for p in [Protocol::LmEval, Protocol::Cloze] {
        let results = evaluate(&lm, &qs, p, 2, &mut [], &mut |_| {}).unwrap();
        for (q, r) in qs.iter().zip(&results) {
            let text = protocol::prompt_text(
                &lm.tokenizer,
                p,
                q.item.subject.as_deref().unwrap(),
                &q.item,
            )
            .unwrap();
            let ctx = lm.tokenizer.encode(&text, false).unwrap();
            let conts = protocol::continuation_texts(p, &q.item);
            let mut expected = Vec::new();
            for c in &conts {
                let whole = lm.tokenizer.encode(&format!("{text}{c}"), false).unwrap();
                let cont = &whole[ctx.len()..];
                let row = [ctx.as_slice(), cont].concat();
                let ll: f64 = (0..cont.len())
                    .map(|k| logp_at(&lm, &row, ctx.len() - 1 + k)[cont[k] as usize])
                    .sum();
                expected.push(ll);
            }
            for (got, want) in r.acc.scores.iter().zip(&expected) {
                assert!((got - want).abs() < 1e-3, "{p:?} {}: {got} vs {want}", q.id);
            }
            let argmax =
                (0..expected.len()).fold(0, |b, i| if expected[i] > expected[b] { i } else { b });
            assert_eq!(r.acc.prediction, argmax, "{p:?} {}", q.id);
            assert_eq!(r.acc.correct, argmax == q.item.answer);
            if p == Protocol::Cloze {
                let norm = r.acc_norm.as_ref().expect("cloze has acc_norm");
                for ((n, e), c) in norm.scores.iter().zip(&expected).zip(&conts) {
                    assert!((n - e / c.len() as f64).abs() < 1e-3);
                }
            } else {
                assert!(r.acc_norm.is_none());
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_batch_size() {
    let lm = tiny();
    let qs = questions();
    for p in [Protocol::LmEval, Protocol::Cloze] {
        let one = evaluate(&lm, &qs, p, 1, &mut [], &mut |_| {}).unwrap();
        let many = evaluate(&lm, &qs, p, 5, &mut [], &mut |_| {}).unwrap();
        for (a, b) in one.iter().zip(&many) {
            assert_eq!(a.acc.prediction, b.acc.prediction);
            for (x, y) in a.acc.scores.iter().zip(&b.acc.scores) {
                assert!((x - y).abs() < 1e-4, "{p:?} {}: {x} vs {y}", a.id);
            }
        }
    }
}

#[test]
fn order_filter_counts_every_order_and_keeps_only_all_correct() {
    let lm = tiny();
    let qs = questions();
    let all = filter_questions(&lm, &qs, Protocol::Cloze, Orders::All, 8, &mut |_, _| {}).unwrap();
    assert_eq!(
        all.iter().map(|o| o.orders).collect::<Vec<_>>(),
        vec![24, 6, 120]
    );
    let cyclic =
        filter_questions(&lm, &qs, Protocol::Cloze, Orders::Cyclic, 8, &mut |_, _| {}).unwrap();
    assert_eq!(
        cyclic.iter().map(|o| o.orders).collect::<Vec<_>>(),
        vec![4, 3, 5]
    );
    // Cloze scores depend on the option texts only, not on their positions: a question is right
    // under every order or under none.
    for o in all.iter().chain(&cyclic) {
        assert!(o.correct == 0 || o.correct == o.orders, "{o:?}");
    }
    let base = evaluate(&lm, &qs, Protocol::Cloze, 8, &mut [], &mut |_| {}).unwrap();
    for (o, r) in all.iter().zip(&base) {
        assert_eq!(o.kept(), r.acc.correct, "{}", o.id);
    }
}

#[test]
fn run_writes_the_report_and_a_reusable_question_list() {
    let lm = tiny();
    let dir = common::scratch("eval_mcq", "run");
    let file = dir.join("q.jsonl");
    let lines: String = (0..6)
        .map(|i| {
            format!(
                "{{\"question\": \"Question {i}?\", \"choices\": [\"x{i}\", \"yy\", \"z\", \"w w\"], \"answer\": {}, \"subject\": \"s{}\"}}\n",
                i % 4,
                i % 2
            )
        })
        .collect();
    std::fs::write(&file, lines).unwrap();
    let mut cfg = McqConfig {
        files: vec![file.clone()],
        split: Split::All,
        subjects: vec![],
        topics: vec![],
        questions: None,
        limit: None,
        protocol: Protocol::LmEval,
        filter: Some(Orders::Cyclic),
        batch: 4,
        gate_on: false,
        out: dir.join("out"),
        overwrite: Overwrite::Refuse,
    };
    cfg.check(&[]).unwrap();
    let report = mcq::run(&lm, &mut [], &[], &cfg, &mut |_, _, _| {}).unwrap();
    let f = report.filter.as_ref().unwrap();
    assert_eq!((f.of, report.selected), (6, 6));
    assert_eq!(report.overall.acc.n, f.kept);
    if f.kept > 0 {
        assert!((report.overall.chance - 0.25).abs() < 1e-12);
    }
    assert_eq!(
        report.overall.acc.k, f.kept,
        "kept questions are answered in the original order"
    );
    for name in ["report.json", "report.md", "questions.jsonl", "kept.jsonl"] {
        assert!(cfg.out.join(name).exists(), "{name}");
    }
    let e = cfg.check(&[]).unwrap_err().to_string();
    assert!(e.contains("--force"), "{e}");
    // The kept list selects the same questions again.
    let kept = cfg.out.join("kept.jsonl");
    let list = mcq::read_question_list(&kept).unwrap();
    assert_eq!(list.len(), f.kept);
    cfg.filter = None;
    cfg.questions = Some(dir.join("kept-copy.jsonl"));
    std::fs::copy(&kept, cfg.questions.as_ref().unwrap()).unwrap();
    if f.kept > 0 {
        let ids: Vec<String> = cfg.questions().unwrap().into_iter().map(|q| q.id).collect();
        assert_eq!(ids.len(), f.kept);
        assert!(ids.iter().all(|id| list.contains(id)));
    }
    cfg.batch = 0;
    let e = cfg.check(&[]).unwrap_err().to_string();
    assert!(e.contains("--batch"), "{e}");
}

/// `--topic` keeps ARC questions by dsg's keyword rule; `--gate-on` scores every question under the
/// intervention: a refusing guardrail forced on refuses them all, the same guardrail with its own
/// gate scores exactly as the unguarded model where it does not fire.
#[test]
fn topics_select_questions_and_gate_on_forces_the_intervention() {
    let lm = tiny();
    let dir = common::scratch("eval_mcq", "gate_on");
    let file = dir.join("arc.jsonl");
    let arc = |id: &str, stem: &str| {
        format!(
            "{{\"id\": \"{id}\", \"question\": {{\"stem\": \"{stem}\", \"choices\": [{{\"text\": \"a\", \"label\": \"A\"}}, {{\"text\": \"b b\", \"label\": \"B\"}}, {{\"text\": \"c\", \"label\": \"C\"}}]}}, \"answerKey\": \"B\"}}\n"
        )
    };
    let lines = [
        arc(
            "L1",
            "Which organ pumps blood through the body of an animal?",
        ),
        arc("L2", "Which part of a plant cell makes food?"),
        arc("O1", "Which rock forms when lava cools?"),
    ]
    .concat();
    std::fs::write(&file, lines).unwrap();
    let guard_file = dir.join("guard.json");
    std::fs::write(&guard_file, "{}").unwrap();
    let mut cfg = McqConfig {
        files: vec![file.clone()],
        split: Split::All,
        subjects: vec![],
        topics: vec![Topic::Life],
        questions: None,
        limit: None,
        protocol: Protocol::Cloze,
        filter: None,
        batch: 2,
        gate_on: false,
        out: dir.join("plain"),
        overwrite: Overwrite::Refuse,
    };
    let ids: Vec<String> = cfg.questions().unwrap().into_iter().map(|q| q.id).collect();
    assert_eq!(ids, ["arc.jsonl:L1", "arc.jsonl:L2"]);
    cfg.topics = vec![Topic::Other];
    assert_eq!(cfg.questions().unwrap().len(), 1);
    cfg.topics = vec![];
    let base = mcq::run(&lm, &mut [], &[], &cfg, &mut |_, _, _| {}).unwrap();
    assert_eq!(base.overall.acc.n, 3);

    cfg.gate_on = true;
    cfg.out = dir.join("forced");
    let e = cfg.check(&[]).unwrap_err().to_string();
    assert!(e.contains("--gate-on") && e.contains("--guard"), "{e}");
    cfg.check(std::slice::from_ref(&guard_file)).unwrap();
    let refusing = common::tiny_guardrail(&lm)
        .with_intervention(Intervention::Refuse)
        .unwrap();
    let names = ["tiny".to_string()];
    let forced = mcq::run(
        &lm,
        &mut [refusing.with_intervention(Intervention::Refuse).unwrap()],
        &names,
        &cfg,
        &mut |_, _, _| {},
    )
    .unwrap();
    assert!(forced.gate_on);
    assert_eq!(forced.overall.refused.k, 3);
    assert_eq!(forced.overall.acc.k, 0);
    assert_eq!(forced.guards[0].fired.k, 3);
    assert!(forced.markdown().contains("gate forced on"));

    // Its own gate, shut (τ above any score): no question is touched.
    cfg.gate_on = false;
    cfg.out = dir.join("shut");
    let shut = refusing.with_gate(Gate::Paper { tau: 1e9 }).unwrap();
    let report = mcq::run(&lm, &mut [shut], &names, &cfg, &mut |_, _, _| {}).unwrap();
    assert_eq!(report.overall.refused.k, 0);
    let scores = |r: &mcq::McqReport| -> Vec<String> {
        r.questions
            .iter()
            .map(|q| serde_json::to_string(&(&q.acc, &q.acc_norm)).unwrap())
            .collect()
    };
    assert_eq!(scores(&report), scores(&base));
}

/// The reference of `scripts/make_mcq_reference.py`: 40 held-out MMLU and 20 held-out WMDP-bio
/// questions scored by transformers on the same GGUF.
#[test]
fn smollm2_agrees_with_transformers_on_every_protocol() {
    let file = fixture("mcq/reference.json");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let path = fetch::ensure_default_model().expect("fetch the default model");
    let lm = model::load(&path, &Device::Cpu).unwrap();
    let refs = reference["questions"].as_array().unwrap();
    let qs: Vec<Question> = refs
        .iter()
        .enumerate()
        .map(|(i, r)| Question {
            id: r["id"].as_str().unwrap().into(),
            item: McqItem {
                index: i,
                id: None,
                subject: Some(r["subject"].as_str().unwrap().into()),
                question: r["question"].as_str().unwrap().into(),
                choices: r["choices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().into())
                    .collect(),
                answer: r["answer"].as_u64().unwrap() as usize,
            },
        })
        .collect();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for (p, key) in [
        (Protocol::Paper, "paper"),
        (Protocol::LmEval, "lm_eval"),
        (Protocol::Cloze, "cloze"),
    ] {
        for (q, r) in qs.iter().zip(refs) {
            let text = protocol::prompt_text(
                &lm.tokenizer,
                p,
                q.item.subject.as_deref().unwrap(),
                &q.item,
            )
            .unwrap();
            assert_eq!(
                text,
                r[key]["text"].as_str().unwrap(),
                "{key} text of {}",
                q.id
            );
            assert_eq!(
                lm.tokenizer.encode(&text, false).unwrap(),
                ids(&r[key]["ids"]),
                "{key} ids of {}",
                q.id
            );
        }
        let results = evaluate(&lm, &qs, p, 8, &mut [], &mut |_| {}).unwrap();
        let mut agree = 0;
        let (mut ours, mut theirs) = (0, 0);
        let mut max_diff = 0f64;
        for (res, r) in results.iter().zip(refs) {
            let want = r[key]["prediction"].as_u64().unwrap() as usize;
            agree += usize::from(res.acc.prediction == want);
            ours += usize::from(res.acc.correct);
            theirs += usize::from(want == res.answer);
            for (a, b) in res
                .acc
                .scores
                .iter()
                .zip(r[key]["scores"].as_array().unwrap())
            {
                max_diff = max_diff.max((a - b.as_f64().unwrap()).abs());
            }
        }
        eprintln!(
            "{key}: dsg {ours}/{n} correct, transformers {theirs}/{n}; predictions agree on {agree}/{n}; max |Δscore| {max_diff:.2e}",
            n = qs.len()
        );
        assert!(
            ours.abs_diff(theirs) <= 1,
            "{key}: accuracy {ours} vs {theirs}"
        );
        assert!(
            agree + 2 >= qs.len(),
            "{key}: predictions agree on only {agree}"
        );
    }
}
