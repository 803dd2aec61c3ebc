//! The probe gate: the logistic regression against scikit-learn, convergence on separable data,
//! calibration by the SAE gates' percentile rule, linearity of mean pooling, the guardrail file's
//! probe field, and the probe-gated hook's streaming decision during generation — on the tiny
//! Llama fixture with a seeded random SAE.

mod common;

use candle_core::Device;
use dsg::generate::{generate, GenerateOptions};
use dsg::guard::file::ArtifactIdentity;
use dsg::guard::logistic::Solver;
use dsg::guard::probe::ProbeTraining;
use dsg::guard::probe_fit::{
    fit_probe_gate, prompt_signals, train_and_calibrate, ProbeData, ProbeGateConfig, SignalRequest,
};
use dsg::guard::{
    calibrate, fit, percentile, FitConfig, Gate, Guardrail, GuardrailFile, PercentileRule, Probe,
    ProbeInput, SelectionRule,
};
use dsg::model::{Batch, HookPoint, Model};
use dsg::sae::Sae;
use dsg::stats::collect::activations_at;

const D_SAE: usize = 32;
const SAE_SHA: &str = "abababababababababababababababababababababababababababababababab";

fn hook() -> HookPoint {
    HookPoint::resid_post(0)
}

fn forget_rows(n: usize, seed: u64) -> Vec<Vec<u32>> {
    common::token_rows(n, 16, 3, 100, seed)
}

fn benign_rows(n: usize, seed: u64) -> Vec<Vec<u32>> {
    common::token_rows(n, 16, 150, 256, seed)
}

/// An SAE guardrail fitted on the tiny model (paper gate over activity).
fn fitted() -> (Model, Sae, String, GuardrailFile) {
    let (model, sha) = common::tiny_llama();
    let sae = common::random_sae(D_SAE, hook());
    let mut c = FitConfig::paper(
        ArtifactIdentity {
            name: "tiny/llama_gqa".into(),
            sha256: sha.clone(),
        },
        ArtifactIdentity {
            name: "random".into(),
            sha256: SAE_SHA.into(),
        },
        hook(),
    );
    c.rule = SelectionRule::Percentile(PercentileRule::official(50.0));
    c.n_features = 4;
    c.special_ids = vec![1, 2];
    c.corpora = ("tokens 3..100".into(), "tokens 150..256".into());
    let (file, _, _) = fit(
        &model,
        &sae,
        &forget_rows(8, 1),
        &benign_rows(8, 2),
        &c,
        &mut |_, _, _| {},
    )
    .unwrap();
    (model, sae, sha, file)
}

fn config(input: ProbeInput, pooling: Gate) -> ProbeGateConfig {
    ProbeGateConfig {
        input,
        pooling,
        p_dyn: 90.0,
        solver: Solver::default(),
        batch: 4,
    }
}

#[test]
fn logistic_regression_matches_scikit_learn() {
    let text = std::fs::read_to_string(common::fixture("probe/reference.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let x: Vec<Vec<f32>> = serde_json::from_value(r["x"].clone()).unwrap();
    let y: Vec<u8> = serde_json::from_value(r["y"].clone()).unwrap();
    let w: Vec<f64> = serde_json::from_value(r["weights"].clone()).unwrap();
    let b = r["bias"].as_f64().unwrap();
    let (pos, neg): (Vec<_>, Vec<_>) = x.into_iter().zip(&y).partition(|(_, &y)| y == 1);
    let pos: Vec<Vec<f32>> = pos.into_iter().map(|p| p.0).collect();
    let neg: Vec<Vec<f32>> = neg.into_iter().map(|p| p.0).collect();
    let solver = Solver {
        tol: 1e-10,
        ..Solver::default()
    };
    let probe = Probe::train(ProbeInput::Residual, &pos, &neg, solver).unwrap();
    assert!(probe.training.converged);
    assert_eq!((probe.training.n_pos, probe.training.n_neg), (30, 30));
    for (got, want) in probe.weights.iter().zip(&w) {
        assert!((f64::from(*got) - want).abs() < 1e-5, "{got} vs {want}");
    }
    assert!((probe.bias - b).abs() < 1e-5, "{} vs {b}", probe.bias);
    // The data are not separable, so training AUROC is below 1.
    assert!(probe.training.train_auroc > 0.8 && probe.training.train_auroc < 1.0);
}

#[test]
fn separable_data_converge_to_finite_weights() {
    // Two well-separated clouds in 6 dimensions: without the L2 term the weights would diverge.
    let mut rng = dsg::data::SplitMix64::new(3);
    let mut cloud = |centre: f32, n: usize| -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| {
                (0..6)
                    .map(|_| centre + (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
                    .collect()
            })
            .collect()
    };
    let (pos, neg) = (cloud(3.0, 40), cloud(0.0, 50));
    let probe = Probe::train(ProbeInput::SaeLatents, &pos, &neg, Solver::default()).unwrap();
    let t = &probe.training;
    assert!(t.converged && t.iterations > 0, "{t:?}");
    assert_eq!(t.train_auroc, 1.0);
    assert!(probe
        .weights
        .iter()
        .all(|w| w.is_finite() && w.abs() < 100.0));
    assert!(pos.iter().all(|p| probe.logit(p) > 0.0));
    assert!(neg.iter().all(|n| probe.logit(n) < 0.0));
    // Weaker regularisation gives larger weights, still finite.
    let loose = Probe::train(
        ProbeInput::SaeLatents,
        &pos,
        &neg,
        Solver {
            c: 100.0,
            ..Solver::default()
        },
    )
    .unwrap();
    let norm = |p: &Probe| p.weights.iter().map(|w| w * w).sum::<f32>();
    assert!(loose.training.converged && norm(&loose) > norm(&probe));
    assert!(norm(&loose).is_finite());
}

#[test]
fn mean_pooled_score_is_the_logit_of_the_mean_residual() {
    let (model, sae, _, _) = fitted();
    let prompts: Vec<Vec<u32>> = forget_rows(3, 5)
        .into_iter()
        .chain(common::token_rows(2, 9, 3, 256, 6))
        .collect();
    for input in ProbeInput::ALL {
        let width = input.width(64, D_SAE);
        let probe = Probe {
            input,
            weights: (0..width).map(|j| (j as f32 * 0.37).sin()).collect(),
            bias: -0.25,
            training: ProbeTraining {
                n_pos: 0,
                n_neg: 0,
                c: 1.0,
                iterations: 0,
                converged: false,
                train_auroc: 0.5,
                standardisation_folded: true,
            },
        };
        let req = SignalRequest {
            probes: std::slice::from_ref(&probe),
            ..Default::default()
        };
        let logits = prompt_signals(&model, &sae, hook(), &prompts, 2, req, &mut |_, _| {})
            .unwrap()
            .logits
            .remove(0);
        for (p, l) in prompts.iter().zip(&logits) {
            assert_eq!(l.len(), p.len() - 1, "position 0 is never scored");
            let batch = Batch::single(p.clone(), &Device::Cpu).unwrap();
            let x = input
                .features(&sae, &activations_at(&model, &batch, hook()).unwrap())
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let mean: Vec<f64> = (0..width)
                .map(|j| x[1..].iter().map(|r| f64::from(r[j])).sum::<f64>() / (x.len() - 1) as f64)
                .collect();
            let direct = probe.bias
                + probe
                    .weights
                    .iter()
                    .zip(&mean)
                    .map(|(&w, m)| f64::from(w) * m)
                    .sum::<f64>();
            let pooled = Gate::Paper { tau: 0.0 }.score(l);
            assert!(
                (pooled - direct).abs() < 1e-6,
                "{input}: {pooled} vs {direct}"
            );
        }
    }
}

#[test]
fn probe_gate_is_calibrated_by_the_sae_gates_rule() {
    let (model, sae, _, _) = fitted();
    let (pos, neg) = (forget_rows(12, 11), benign_rows(12, 12));
    let cal: Vec<Vec<u32>> = benign_rows(9, 13)
        .into_iter()
        .chain(common::token_rows(3, 24, 3, 256, 14))
        .collect();
    let data = ProbeData {
        positives: &pos,
        negatives: &neg,
        calibration: &cal,
        calibration_name: "benign rows",
    };
    for pooling in [
        Gate::Paper { tau: 0.0 },
        Gate::Window { width: 4, tau: 0.0 },
    ] {
        let cfg = config(ProbeInput::Residual, pooling);
        let (probe, c) =
            train_and_calibrate(&model, &sae, hook(), data, &cfg, &mut |_, _, _| {}).unwrap();
        assert!(probe.training.converged);
        assert_eq!(probe.training.train_auroc, 1.0, "separable token ranges");
        // Independently: the probe's pooled scores of the calibration prompts, their P90.
        let req = SignalRequest {
            probes: std::slice::from_ref(&probe),
            ..Default::default()
        };
        let logits = prompt_signals(&model, &sae, hook(), &cal, 3, req, &mut |_, _| {})
            .unwrap()
            .logits
            .remove(0);
        let scores: Vec<f64> = logits.iter().map(|l| pooling.score(l)).collect();
        assert_eq!(c.retain_scores, scores);
        assert_eq!(c.gate.threshold(), percentile(&scores, 90.0).unwrap());
        assert_eq!(c.gate, calibrate(pooling, &logits, 90.0).unwrap().gate);
        assert_eq!(
            std::mem::discriminant(&c.gate),
            std::mem::discriminant(&pooling)
        );
    }
}

#[test]
fn probe_gated_guardrail_file_round_trips_and_is_validated() {
    let (model, sae, _, file) = fitted();
    let plain = serde_json::to_string(&file).unwrap();
    assert!(!plain.contains("probe"), "no probe field on SAE guardrails");
    let (pos, neg, cal) = (forget_rows(10, 21), benign_rows(10, 22), benign_rows(8, 23));
    let data = ProbeData {
        positives: &pos,
        negatives: &neg,
        calibration: &cal,
        calibration_name: "benign rows",
    };
    let cfg = config(ProbeInput::SaeLatents, Gate::Window { width: 6, tau: 0.0 });
    let probed = fit_probe_gate(&model, &sae, &file, data, &cfg, &mut |_, _, _| {}).unwrap();
    assert_eq!(probed.features, file.features);
    assert_eq!(probed.clamp, file.clamp);
    let dir = common::scratch("probe_gate", "file");
    let path = dir.join("probed.json");
    probed.save(&path).unwrap();
    assert_eq!(GuardrailFile::load(&path).unwrap(), probed);
    // A probe's threshold is a logit: any finite number, where an SAE gate's is a fraction.
    let mut logit = probed.clone();
    logit.gate = logit.gate.with_threshold(-2.5);
    logit.calibration = None;
    logit.save(dir.join("logit.json")).unwrap();
    let mut sae_gate = logit.clone();
    sae_gate.probe = None;
    let e = sae_gate.save(dir.join("sae.json")).unwrap_err().to_string();
    assert!(e.contains("gate.tau"), "{e}");

    let mut bad = probed.clone();
    bad.probe.as_mut().unwrap().weights.pop();
    let e = bad.save(dir.join("bad.json")).unwrap_err().to_string();
    assert!(
        e.contains("probe.weights") && e.contains("d_sae = 32"),
        "{e}"
    );
    let mut bad = probed.clone();
    bad.gate = Gate::Cusum {
        drift: 0.1,
        threshold: 1.0,
    };
    bad.calibration = None;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("gate") && e.contains("CUSUM"), "{e}");
    let mut bad = probed.clone();
    bad.probe.as_mut().unwrap().input = ProbeInput::Residual;
    let e = Guardrail::new(bad, &sae, &file.model.sha256, SAE_SHA, 64)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("32 weights") && e.contains("64 wide"), "{e}");
    let e = fit_probe_gate(
        &model,
        &sae,
        &file,
        data,
        &config(
            ProbeInput::Residual,
            Gate::Cusum {
                drift: 0.0,
                threshold: 0.0,
            },
        ),
        &mut |_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("CUSUM"), "{e}");
}

#[test]
fn probe_decides_during_generation_as_the_batch_gate_over_the_whole_sequence() {
    let (model, sae, sha, file) = fitted();
    let (pos, neg, cal) = (forget_rows(10, 31), benign_rows(10, 32), benign_rows(8, 33));
    let data = ProbeData {
        positives: &pos,
        negatives: &neg,
        calibration: &cal,
        calibration_name: "benign rows",
    };
    let prompt = forget_rows(1, 34).remove(0);
    for pooling in [
        Gate::Paper { tau: 0.0 },
        Gate::Window { width: 5, tau: 0.0 },
    ] {
        for input in ProbeInput::ALL {
            let cfg = config(input, pooling);
            let probed =
                fit_probe_gate(&model, &sae, &file, data, &cfg, &mut |_, _, _| {}).unwrap();
            let mut streaming = Guardrail::new(probed.clone(), &sae, &sha, SAE_SHA, 64).unwrap();
            let opts = GenerateOptions {
                max_new_tokens: 10,
                quantized_decode: false,
                ..Default::default()
            };
            let g = generate(&model, &prompt, &opts, &mut streaming, |_| {}).unwrap();
            let seq: Vec<u32> = prompt
                .iter()
                .chain(&g.tokens[..g.tokens.len() - 1])
                .copied()
                .collect();
            // The batch gate over the whole sequence, from a plain pass.
            let req = SignalRequest {
                probes: std::slice::from_ref(probed.probe.as_ref().unwrap()),
                ..Default::default()
            };
            let logits = prompt_signals(
                &model,
                &sae,
                hook(),
                std::slice::from_ref(&seq),
                1,
                req,
                &mut |_, _| {},
            )
            .unwrap()
            .logits
            .remove(0)
            .remove(0);
            let batch = probed.gate.decide(&logits);
            let streamed = streaming.decisions()[0];
            // KV-cached decoding reproduces the residual up to float rounding.
            assert!(
                (streamed.score - batch.score).abs() < 1e-4,
                "{input} {pooling:?}: {} vs {}",
                streamed.score,
                batch.score
            );
            assert_eq!(streamed.fired, batch.fired);
            // The same guardrail over the whole sequence in one pass decides the same.
            let mut whole = Guardrail::new(probed.clone(), &sae, &sha, SAE_SHA, 64).unwrap();
            model
                .forward_until(
                    &Batch::single(seq.clone(), &Device::Cpu).unwrap(),
                    0,
                    &mut whole,
                )
                .unwrap();
            let one_pass = whole.records()[0].rows[0].decision;
            assert_eq!(one_pass.score.to_bits(), batch.score.to_bits());
            if input == ProbeInput::Residual {
                // The residual probe separates the tiny model's token ranges out of sample too
                // (the random 32-latent SAE's probe need not).
                assert!(
                    streaming.records()[0].rows[0].decision.fired,
                    "a forget prompt"
                );
            }
            // Probe decides, SAE clamps: clamped tokens are active tokens of a gated row.
            for rec in streaming.records() {
                let row = &rec.rows[0];
                for (c, f) in row.clamped.iter().zip(&row.active_features) {
                    assert!(!c || !f.is_empty());
                }
            }
        }
    }
}

#[test]
fn dsg_guard_probe_names_the_bad_option_before_any_model_work() {
    let dir = common::scratch("probe_gate", "cli");
    let file = dir.join("questions.jsonl");
    std::fs::write(&file, "{}\n").unwrap();
    let f = file.to_str().unwrap();
    let out = dir.join("p.json");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "guard",
            "--model",
            "/nonexistent/model.gguf",
            "probe",
            "--guard",
            f,
            "--forget",
            f,
            "--retain",
            f,
            "--calibrate-mcq",
            f,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dsg"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    for (extra, named) in [
        (&["--pooling", "max-rolling-mean:0"][..], "--pooling"),
        (&["--input", "dense"][..], "--input"),
        (&["--p-dyn", "101"][..], "--p-dyn"),
        (&["--batch", "0"][..], "--batch"),
        (&["--retain", "/nonexistent/wiki.txt"][..], "--retain"),
    ] {
        let e = run(extra);
        assert!(
            e.contains(named) && !e.contains("loading model"),
            "{extra:?}: {e}"
        );
    }
}
