//! Training and LoRA adapters on the tiny models: PEFT parity (adapters written by `peft`, logits by
//! `transformers + peft`, `scripts/make_lora_fixtures.py`), gradients against finite differences,
//! the loss falling, exact resume, and the answer-only loss mask.

mod common;

use std::path::Path;

use candle_core::{Device, IndexOp, Tensor};
use dsg::model::{
    Adapter, AdapterMode, Batch, Execution, ForwardOptions, Logits, Model, ModelConfig, NoHooks,
    WeightSource,
};
use dsg::train::{
    batch_nll, mean_nll, AdamWConfig, Decay, Example, LoraSpec, Method, TrainConfig, Trainer,
};

use common::{fixture, ids, load_st, max_abs_diff};

fn tiny(name: &str) -> Model {
    let dir = fixture(&format!("tiny/{name}"));
    let cfg = ModelConfig::from_hf_json(&dir.join("config.json")).unwrap();
    let src = WeightSource::open_safetensors_dir(&dir).unwrap();
    Model::load(cfg, &src, &Device::Cpu).unwrap()
}

fn logits(model: &Model, row: &[u32]) -> Tensor {
    let opts = ForwardOptions {
        logits: Logits::All,
        stop_after: None,
        quantized: false,
    };
    let batch = Batch::single(row.to_vec(), model.device()).unwrap();
    let out = model.forward(&batch, &opts, &mut NoHooks, None).unwrap();
    out.logits.unwrap().i(0).unwrap()
}

const CASES: [&str; 4] = [
    "llama_gqa_all_r8",
    "qwen2_qv_r4",
    "gemma2_rslora_r8",
    "gpt2_conv1d_r4",
];

fn case_base(case: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("lora/{case}/case.json"))).unwrap(),
    )
    .unwrap();
    json["base_model"].as_str().unwrap().to_string()
}

/// An adapter written by `peft` gives transformers + peft's logits on every execution path, applied
/// on the fly or merged (1e-4), and changes the logits clearly.
#[test]
fn peft_adapters_match_transformers_and_peft() {
    for case in CASES {
        let dir = fixture(&format!("lora/{case}"));
        let adapter = Adapter::load(&dir.join("adapter"), &Device::Cpu).unwrap();
        let reference = load_st(&dir.join("reference.safetensors"));
        for mode in [AdapterMode::OnTheFly, AdapterMode::Merged] {
            let mut model = tiny(&case_base(case));
            model.apply_adapter(&adapter, mode).unwrap();
            for exec in [
                Execution::VectorPass,
                Execution::TensorOps,
                Execution::Autograd,
            ] {
                model.set_execution(exec);
                for i in 0..3 {
                    let row = ids(&reference[&format!("input_ids_{i}")]);
                    let got = logits(&model, &row);
                    let want = &reference[&format!("logits_peft_{i}")];
                    let diff = max_abs_diff(&got, want);
                    assert!(diff < 1e-4, "{case} {mode:?} {exec:?} row {i}: {diff}");
                    let base = &reference[&format!("logits_base_{i}")];
                    assert!(
                        max_abs_diff(&got, base) > 0.1,
                        "{case}: adapter had no effect"
                    );
                }
            }
        }
    }
}

/// Two adapters stacked on the fly (`--adapter A --adapter B`, or a baseline trained on top of a
/// fine-tuned target) add both updates to the same outputs: equal to merging both, on every
/// execution path (1e-4), and unlike one alone.
#[test]
fn stacked_adapters_add_their_updates() {
    for case in CASES {
        let dir = fixture(&format!("lora/{case}"));
        let adapter = Adapter::load(&dir.join("adapter"), &Device::Cpu).unwrap();
        let reference = load_st(&dir.join("reference.safetensors"));
        let row = ids(&reference["input_ids_0"]);
        let mut merged = tiny(&case_base(case));
        merged.apply_adapter(&adapter, AdapterMode::Merged).unwrap();
        merged.apply_adapter(&adapter, AdapterMode::Merged).unwrap();
        let want = logits(&merged, &row);
        let mut stacked = tiny(&case_base(case));
        stacked
            .apply_adapter(&adapter, AdapterMode::OnTheFly)
            .unwrap();
        stacked
            .apply_adapter(&adapter, AdapterMode::OnTheFly)
            .unwrap();
        for exec in [
            Execution::VectorPass,
            Execution::TensorOps,
            Execution::Autograd,
        ] {
            stacked.set_execution(exec);
            let got = logits(&stacked, &row);
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-4, "{case} {exec:?}: {diff}");
            let once = &reference["logits_peft_0"];
            assert!(
                max_abs_diff(&got, once) > 0.1,
                "{case}: the second adapter did nothing"
            );
        }
    }
}

/// Saving and re-reading an adapter keeps its configuration and tensors; removing it restores the
/// base model's logits.
#[test]
fn adapters_round_trip_and_come_off() {
    let dir = fixture("lora/llama_gqa_all_r8");
    let adapter = Adapter::load(&dir.join("adapter"), &Device::Cpu).unwrap();
    let out = tempdir("roundtrip");
    adapter.save(&out).unwrap();
    let again = Adapter::load(&out, &Device::Cpu).unwrap();
    assert_eq!(adapter.config, again.config);
    assert_eq!(adapter.modules.len(), again.modules.len());
    for (m, (a, b)) in &adapter.modules {
        let (a2, b2) = &again.modules[m];
        assert_eq!(max_abs_diff(a, a2), 0.0);
        assert_eq!(max_abs_diff(b, b2), 0.0);
    }
    let reference = load_st(&dir.join("reference.safetensors"));
    let mut model = tiny("llama_gqa");
    model.apply_adapter(&again, AdapterMode::OnTheFly).unwrap();
    model.clear_lora();
    let row = ids(&reference["input_ids_1"]);
    let diff = max_abs_diff(&logits(&model, &row), &reference["logits_base_1"]);
    assert!(diff < 1e-4, "{diff}");
}

/// An adapter for another model is refused before anything is applied, naming the module: one for
/// another architecture, one for a deeper model, one whose factors do not fit the maps.
#[test]
fn an_adapter_for_another_model_is_refused() {
    let adapter = Adapter::load(&fixture("lora/llama_gqa_all_r8/adapter"), &Device::Cpu).unwrap();
    let mut gpt2 = tiny("gpt2");
    let e = gpt2
        .apply_adapter(&adapter, AdapterMode::OnTheFly)
        .err()
        .unwrap();
    assert!(e.to_string().contains("model.layers.0."), "{e}");

    let mut deeper = adapter.clone();
    let (m, ab) = deeper.modules.pop_first().unwrap();
    deeper
        .modules
        .insert(m.replace("layers.0.", "layers.99."), ab);
    let e = tiny("llama_gqa")
        .apply_adapter(&deeper, AdapterMode::OnTheFly)
        .err()
        .unwrap();
    assert!(e.to_string().contains("block 99"), "{e}");

    let mut narrow = adapter.clone();
    let (a, b) = narrow.modules.values_mut().next().unwrap();
    *a = a.narrow(1, 0, a.dim(1).unwrap() - 1).unwrap();
    let _ = b;
    let mut model = tiny("llama_gqa");
    let e = model
        .apply_adapter(&narrow, AdapterMode::OnTheFly)
        .err()
        .unwrap();
    assert!(e.to_string().contains("another model"), "{e}");
    // Nothing was applied: the model still gives the base logits.
    let reference = load_st(&fixture("lora/llama_gqa_all_r8/reference.safetensors"));
    let row = ids(&reference["input_ids_0"]);
    assert!(max_abs_diff(&logits(&model, &row), &reference["logits_base_0"]) < 1e-4);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dsg-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn examples() -> Vec<Example> {
    // Fixed "questions" (prompt) and "answers": the loss covers the answer only.
    (0..6u32)
        .map(|k| {
            let prompt: Vec<u32> = (0..5).map(|i| 3 + (k * 7 + i * 3) % 200).collect();
            let answer: Vec<u32> = (0..3 + k as usize % 3)
                .map(|i| 10 + (k * 11 + i as u32 * 5) % 200)
                .collect();
            let loss_from = prompt.len();
            Example {
                ids: [prompt, answer].concat(),
                loss_from,
            }
        })
        .collect()
}

fn config(method: Method) -> TrainConfig {
    TrainConfig {
        method,
        epochs: 40,
        max_steps: None,
        batch_size: 2,
        grad_accum: 2,
        lr: 1e-2,
        warmup_steps: 2,
        decay: Decay::Cosine,
        adamw: AdamWConfig::default(),
        max_grad_norm: Some(1.0),
        seed: 7,
        objective: dsg::train::Objective::Nll,
    }
}

fn lora() -> Method {
    let mut spec = LoraSpec::all_projections(4, 8.0);
    spec.dropout = 0.1;
    Method::Lora(spec)
}

/// The summed NLL over answer tokens equals the sum of the model's own per-token log-probabilities
/// over those positions, in a padded batch of rows of different lengths.
#[test]
fn the_loss_covers_answer_tokens_only() {
    let model = tiny("llama_gqa");
    let ex = examples();
    let refs: Vec<&Example> = ex.iter().take(3).collect();
    let (nll, n) = batch_nll(&model, &refs, &mut NoHooks).unwrap();
    let mut want = 0f64;
    let mut count = 0;
    for e in &refs {
        let batch = Batch::single(e.ids.clone(), model.device()).unwrap();
        let lp = model
            .token_logprobs(&batch, &mut NoHooks)
            .unwrap()
            .remove(0);
        for v in &lp[e.loss_from - 1..] {
            want -= *v as f64;
            count += 1;
        }
    }
    assert_eq!(n, count);
    let got = nll.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-4 * want.abs(), "{got} vs {want}");
}

/// The gradient of the loss with respect to LoRA factors and to full-model weights matches central
/// finite differences (f32: step 1e-2, agreement within 2% or 2e-3).
#[test]
fn gradients_match_finite_differences() {
    for method in [lora(), Method::Full] {
        let mut model = tiny("llama_gqa");
        model.set_execution(Execution::Autograd);
        let ex = examples();
        let trainer = Trainer::new(&mut model, config(method.clone()), &ex).unwrap();
        // Move LoRA's B off zero so that A's gradient is not zero.
        for (name, t) in trainer.parameters() {
            if name.ends_with("lora_B.weight") {
                let r = Tensor::randn(0f32, 0.2, t.dims(), t.device()).unwrap();
                dsg_set(t, &r);
            }
        }
        let refs: Vec<&Example> = ex.iter().take(2).collect();
        let loss = |m: &Model| -> f64 {
            let (nll, n) = batch_nll(m, &refs, &mut NoHooks).unwrap();
            nll.to_scalar::<f32>().unwrap() as f64 / n as f64
        };
        let (nll, n) = batch_nll(&model, &refs, &mut NoHooks).unwrap();
        let grads = (nll / n as f64).unwrap().backward().unwrap();
        let mut checked = 0;
        for (name, t) in trainer.parameters() {
            let wanted = name.contains("layers.1.self_attn.q_proj")
                || name.contains("layers.0.mlp.down_proj")
                || name == "blocks.1.attn.qkv.weight"
                || name == "blocks.0.mlp_norm.scale"
                || name == "embed";
            if !wanted {
                continue;
            }
            let g = grads.get(t).expect("gradient").flatten_all().unwrap();
            let gv = g.to_vec1::<f32>().unwrap();
            // The entry with the largest gradient, where finite differences are least noisy.
            let (idx, &gmax) = gv
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap();
            let orig = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let h = 1e-2f32;
            let mut plus = orig.clone();
            plus[idx] += h;
            dsg_set(t, &Tensor::from_vec(plus, t.dims(), t.device()).unwrap());
            let lp = loss(&model);
            let mut minus = orig.clone();
            minus[idx] -= h;
            dsg_set(t, &Tensor::from_vec(minus, t.dims(), t.device()).unwrap());
            let lm = loss(&model);
            dsg_set(t, &Tensor::from_vec(orig, t.dims(), t.device()).unwrap());
            let fd = (lp - lm) / (2.0 * h as f64);
            let err = (fd - gmax as f64).abs();
            assert!(
                err < 2e-3 || err < 0.02 * fd.abs(),
                "{method:?} {name}[{idx}]: autograd {gmax}, finite difference {fd}"
            );
            checked += 1;
        }
        assert!(
            checked >= 2,
            "{method:?}: only {checked} parameters checked"
        );
    }
}

/// Writes `v` into the variable behind `t` (the trainer's parameters are variables).
fn dsg_set(t: &Tensor, v: &Tensor) {
    let var = candle_core::Var::from_tensor(t).unwrap();
    assert!(t.is_variable());
    var.set(v).unwrap();
}

fn train(model: &mut Model, cfg: TrainConfig, ex: &[Example]) -> Trainer {
    let mut trainer = Trainer::new(model, cfg, ex).unwrap();
    trainer
        .run(model, ex, &mut NoHooks, &mut |_, _| Ok(()))
        .unwrap();
    trainer
}

/// LoRA and full fine-tuning both drive the answer loss down on a small set; the trained adapter,
/// saved in PEFT's format and applied to a fresh model, gives the trained model's loss.
#[test]
fn the_loss_falls_and_the_adapter_reproduces_the_model() {
    let ex = examples();
    for method in [lora(), Method::Full] {
        let mut model = tiny("llama_gqa");
        let before = mean_nll(&model, &ex, 4).unwrap();
        let mut cfg = config(method.clone());
        cfg.epochs = 30;
        let trainer = train(&mut model, cfg, &ex);
        let after = mean_nll(&model, &ex, 4).unwrap();
        assert!(after < 0.3 * before, "{method:?}: {before} -> {after}");
        let first = trainer.log.first().unwrap().loss;
        let last = trainer.log.last().unwrap().loss;
        assert!(last < first, "{method:?}: logged {first} -> {last}");
        if let Some(adapter) = trainer.adapter("llama_gqa").unwrap() {
            let dir = tempdir("adapter");
            adapter.save(&dir).unwrap();
            let mut fresh = tiny("llama_gqa");
            let loaded = Adapter::load(&dir, &Device::Cpu).unwrap();
            fresh.apply_adapter(&loaded, AdapterMode::OnTheFly).unwrap();
            let again = mean_nll(&fresh, &ex, 4).unwrap();
            assert!((again - after).abs() < 1e-5, "{after} vs {again}");
        }
    }
}

fn params_of(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    t.parameters()
        .into_iter()
        .map(|(n, t)| {
            (
                n.to_string(),
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect()
}

/// Stopping after a checkpoint and resuming on a freshly loaded model gives exactly the weights of an
/// uninterrupted run (LoRA with dropout, and full fine-tuning); resuming on other data is refused.
#[test]
fn resuming_from_a_checkpoint_matches_an_uninterrupted_run() {
    let ex = examples();
    for method in [lora(), Method::Full] {
        let mut cfg = config(method.clone());
        cfg.epochs = 3;
        let mut model = tiny("llama_gqa");
        let whole = train(&mut model, cfg.clone(), &ex);

        let dir = tempdir("resume");
        let ckpt = dir.join("checkpoint");
        let mut first = tiny("llama_gqa");
        let mut t = Trainer::new(&mut first, cfg.clone(), &ex).unwrap();
        let stop_at = 2;
        let r = t.run(&mut first, &ex, &mut NoHooks, &mut |t, _| {
            if t.step_count() == stop_at {
                t.save_checkpoint(&ckpt)?;
                return Err(dsg::Error::Invalid("interrupted".into()));
            }
            Ok(())
        });
        assert!(r.is_err());
        let mut second = tiny("llama_gqa");
        let mut resumed = Trainer::resume(&mut second, &ckpt, &ex).unwrap();
        assert_eq!(resumed.step_count(), stop_at);
        resumed
            .run(&mut second, &ex, &mut NoHooks, &mut |_, _| Ok(()))
            .unwrap();
        assert_eq!(resumed.log.len(), whole.log.len());
        for ((n1, a), (n2, b)) in params_of(&whole).iter().zip(params_of(&resumed).iter()) {
            assert_eq!(n1, n2);
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert_eq!(d, 0.0, "{method:?} {n1}: resumed run differs by {d}");
        }
        let mut other = ex.clone();
        other[0].ids[1] += 1;
        let mut third = tiny("llama_gqa");
        let e = Trainer::resume(&mut third, &ckpt, &other).err().unwrap();
        assert!(e.to_string().contains("other examples"), "{e}");
        let _ = Path::new(&dir);
    }
}

fn split_examples() -> (Vec<Example>, Vec<Example>) {
    let ex = examples();
    (ex[..3].to_vec(), ex[3..].to_vec())
}

/// Gradient ascent, GradDiff and NPO raise the forget set's NLL; GradDiff and NPO, which also descend
/// on the retain set, end with a lower retain NLL than gradient ascent.
#[test]
fn unlearning_objectives_raise_the_forget_loss() {
    use dsg::train::Objective;
    let (forget, retain) = split_examples();
    let mut retain_after = Vec::new();
    for objective in [
        Objective::GradAscent,
        Objective::GradDiff {
            alpha: 1.0,
            gamma: 1.0,
        },
        Objective::Npo {
            beta: 0.5,
            alpha: 1.0,
            gamma: 1.0,
        },
    ] {
        let mut model = tiny("llama_gqa");
        let f0 = mean_nll(&model, &forget, 4).unwrap();
        let mut cfg = config(lora());
        cfg.epochs = 6;
        cfg.lr = 5e-3;
        cfg.objective = objective;
        let mut t = Trainer::unlearn(&mut model, cfg, &forget, &retain).unwrap();
        t.run(&mut model, &forget, &mut NoHooks, &mut |_, _| Ok(()))
            .unwrap();
        let (f1, r1) = (
            mean_nll(&model, &forget, 4).unwrap(),
            mean_nll(&model, &retain, 4).unwrap(),
        );
        assert!(f1 > f0 + 0.5, "{objective:?}: forget NLL {f0} -> {f1}");
        retain_after.push(r1);
    }
    assert!(
        retain_after[1] < retain_after[0] && retain_after[2] < retain_after[0],
        "retain NLL after (GA, GradDiff, NPO): {retain_after:?}"
    );
    // An unlearning objective without a retain set is refused before any work.
    let mut cfg = config(lora());
    cfg.objective = Objective::GradDiff {
        alpha: 1.0,
        gamma: 1.0,
    };
    let e = Trainer::unlearn(&mut tiny("llama_gqa"), cfg, &forget, &[])
        .err()
        .unwrap();
    assert!(e.to_string().contains("retain"), "{e}");
}

/// NPO's first step sees the model equal to its reference: the step's objective is
/// `(2/β)·ln 2` per forget sequence (plus the retain NLL term), and per-row NLLs add up to the
/// batch NLL.
#[test]
fn npo_starts_at_two_over_beta_ln_two() {
    use dsg::train::{row_nll, Objective};
    let (forget, retain) = split_examples();
    let model = tiny("llama_gqa");
    let refs: Vec<&Example> = forget.iter().collect();
    let rows = row_nll(&model, &refs, &mut NoHooks).unwrap();
    let (sum, _) = batch_nll(&model, &refs, &mut NoHooks).unwrap();
    let total: f32 = rows.to_vec1::<f32>().unwrap().iter().sum();
    assert!((total - sum.to_scalar::<f32>().unwrap()).abs() < 1e-3);

    let mut model = tiny("llama_gqa");
    let mut cfg = config(lora());
    let beta = 0.5;
    cfg.objective = Objective::Npo {
        beta,
        alpha: 0.0,
        gamma: 1.0,
    };
    cfg.batch_size = 3;
    cfg.grad_accum = 1;
    let mut t = Trainer::unlearn(&mut model, cfg, &forget, &retain).unwrap();
    model.set_execution(Execution::Autograd);
    let log = t.step(&model, &forget, &mut NoHooks).unwrap();
    let want = 2.0 / beta * 2f64.ln();
    assert!((log.loss - want).abs() < 1e-4, "{} vs {want}", log.loss);
}

/// RMU moves the forget text's activations after its layer toward the control vector and keeps the
/// retain text's near the frozen model's, training only the named down-projections.
#[test]
fn rmu_steers_forget_activations_and_trains_only_its_weights() {
    use dsg::train::rmu::{control_direction, residual_after, rmu_parameters};
    use dsg::train::Objective;
    let (forget, retain) = split_examples();
    let layer = 1;
    let steering = 20.0;
    let mut model = tiny("llama_gqa");
    let before = model.hf_tensors().unwrap();
    let dist = |m: &Model, ex: &[Example], target: Option<&Tensor>| -> Vec<f32> {
        let refs: Vec<&Example> = ex.iter().collect();
        let (h, mask) = residual_after(m, &refs, layer).unwrap();
        let t = target.cloned().unwrap_or_else(|| h.zeros_like().unwrap());
        let d = h
            .broadcast_sub(&t)
            .unwrap()
            .sqr()
            .unwrap()
            .broadcast_mul(&mask)
            .unwrap();
        d.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let d = model.config().d_model;
    let control = (Tensor::new(control_direction(d, 7), &Device::Cpu).unwrap() * steering).unwrap();
    let sum = |v: Vec<f32>| v.iter().map(|&x| x as f64).sum::<f64>();
    let forget_before = sum(dist(&model, &forget, Some(&control)));
    let refs: Vec<&Example> = retain.iter().collect();
    let (retain_h0, _) = residual_after(&model, &refs, layer).unwrap();

    let mut cfg = config(Method::Weights(rmu_parameters(layer)));
    cfg.epochs = 20;
    cfg.lr = 5e-3;
    cfg.objective = Objective::Rmu {
        layer,
        steering,
        alpha: 10.0,
        adaptive: false,
    };
    let mut t = Trainer::unlearn(&mut model, cfg, &forget, &retain).unwrap();
    t.run(&mut model, &forget, &mut NoHooks, &mut |_, _| Ok(()))
        .unwrap();
    let forget_after = sum(dist(&model, &forget, Some(&control)));
    assert!(
        forget_after < 0.5 * forget_before,
        "forget distance to c·u: {forget_before} -> {forget_after}"
    );
    let (retain_h1, mask) = residual_after(&model, &refs, layer).unwrap();
    let moved = sum((&retain_h1 - &retain_h0)
        .unwrap()
        .sqr()
        .unwrap()
        .broadcast_mul(&mask)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap());
    assert!(
        moved < 0.1 * (forget_before - forget_after),
        "retain activations moved {moved}, forget ones {}",
        forget_before - forget_after
    );
    // Only blocks 0 and 1's down-projections changed (Hugging Face names of dsg's blocks.i.mlp.down).
    let after = model.hf_tensors().unwrap();
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        let changed = max_abs_diff(a, b) > 0.0;
        let named = name == "model.layers.0.mlp.down_proj.weight"
            || name == "model.layers.1.mlp.down_proj.weight";
        assert_eq!(changed, named, "{name}: changed {changed}");
    }
}
