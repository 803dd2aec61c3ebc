//! Parity of the decoder with Hugging Face transformers on tiny random models of every architecture
//! (fixtures from `scripts/make_tiny_models.py`), plus batch invariance, KV-cache decoding, early stop
//! and hook semantics; parity, batch invariance and caching on each of the three ways a pass runs.
//!
//! Tolerances: logits and residual states within 1e-4 (f32, max |diff|) of transformers; a row inside a
//! padded batch within 1e-5 of the same row alone.

mod common;

use candle_core::{Device, IndexOp, Tensor};
use common::{fixture, ids, load_st, max_abs_diff};
use dsg::model::{
    Batch, Capture, Execution, FnHook, ForwardOptions, HookPoint, KvCache, Logits, Model,
    ModelConfig, NoHooks, Site, WeightSource,
};
use serde_json::{json, Value};

const MODELS: [&str; 9] = [
    "llama_gqa",
    "llama3_tied",
    "mistral_window",
    "qwen2_bias",
    "gemma2_softcap",
    "gemma2_small_caps",
    "gemma3_local_global",
    "gemma3_scaled",
    "gpt2",
];

fn load(name: &str, config_file: &str) -> Model {
    let dir = fixture(&format!("tiny/{name}"));
    let cfg = ModelConfig::from_hf_json(&dir.join(config_file)).unwrap();
    let src = WeightSource::open_safetensors_dir(&dir).unwrap();
    Model::load(cfg, &src, &Device::Cpu).unwrap()
}

struct Reference {
    rows: Vec<Vec<u32>>,
    logits: Vec<Tensor>,
    hidden: Vec<Tensor>,
}

fn reference(name: &str) -> Reference {
    let st = load_st(&fixture(&format!("tiny/{name}/reference.safetensors")));
    let rows = (0..3)
        .map(|i| ids(&st[&format!("input_ids_{i}")]))
        .collect();
    let logits = (0..3).map(|i| st[&format!("logits_{i}")].clone()).collect();
    let hidden = (0..3).map(|i| st[&format!("hidden_{i}")].clone()).collect();
    Reference {
        rows,
        logits,
        hidden,
    }
}

fn all_logits(model: &Model, batch: &Batch) -> Tensor {
    let opts = ForwardOptions {
        logits: Logits::All,
        ..Default::default()
    };
    model
        .forward(batch, &opts, &mut NoHooks, None)
        .unwrap()
        .logits
        .unwrap()
}

/// The three ways a pass can run: the CPU's vector pass (the default here), candle's tensor ops with
/// fused kernels (GPUs, CPUs without AVX2), and the differentiable ops (training).
const PATHS: [(&str, Execution); 3] = [
    ("vector pass", Execution::VectorPass),
    ("tensor path", Execution::TensorOps),
    ("differentiable ops", Execution::Autograd),
];

/// `name` loaded to run its passes as `path` (one of [`PATHS`]) says.
fn load_on(name: &str, config_file: &str, path: (&str, Execution)) -> Model {
    let mut model = load(name, config_file);
    model.set_execution(path.1);
    model
}

#[test]
fn logits_and_residuals_match_transformers() {
    for name in MODELS {
        for (config, path) in ["config.json", "config_v4.json"]
            .into_iter()
            .flat_map(|c| PATHS.map(|p| (c, p)))
        {
            let model = load_on(name, config, path);
            let config = format!("{config}, {}", path.0);
            let r = reference(name);
            let n_layers = model.config().n_layers;
            for (i, row) in r.rows.iter().enumerate() {
                let batch = Batch::single(row.clone(), &Device::Cpu).unwrap();
                let mut points = vec![HookPoint {
                    layer: 0,
                    site: Site::ResidPre,
                }];
                points.extend((0..n_layers - 1).map(HookPoint::resid_post));
                let mut cap = Capture::new(points.clone());
                let opts = ForwardOptions {
                    logits: Logits::All,
                    ..Default::default()
                };
                let out = model.forward(&batch, &opts, &mut cap, None).unwrap();
                let logits = out.logits.unwrap().squeeze(0).unwrap();
                let d = max_abs_diff(&logits, &r.logits[i]);
                assert!(d <= 1e-4, "{name} ({config}) seq {i}: logits differ by {d}");
                for (k, p) in points.iter().enumerate() {
                    let ours = cap.get(*p).unwrap().squeeze(0).unwrap();
                    let theirs = r.hidden[i].i(k).unwrap();
                    let d = max_abs_diff(&ours, &theirs);
                    assert!(
                        d <= 1e-4,
                        "{name} seq {i}: {p} differs from hidden_states[{k}] by {d}"
                    );
                }
            }
        }
    }
}

#[test]
fn rows_do_not_depend_on_the_rest_of_the_batch() {
    for (name, path) in MODELS.into_iter().flat_map(|m| PATHS.map(|p| (m, p))) {
        let model = load_on(name, "config.json", path);
        let r = reference(name);
        let name = format!("{name} ({})", path.0);
        let batch = Batch::new(r.rows.clone(), &Device::Cpu).unwrap();
        let batched = all_logits(&model, &batch);
        // Also a different mix: row 1 alone with a longer neighbour.
        let mixed = Batch::new(vec![r.rows[2].clone(), r.rows[1].clone()], &Device::Cpu).unwrap();
        let mixed = all_logits(&model, &mixed);
        for (i, row) in r.rows.iter().enumerate() {
            let alone = all_logits(&model, &Batch::single(row.clone(), &Device::Cpu).unwrap());
            let alone = alone.squeeze(0).unwrap();
            let inside = batched.i((i, ..row.len())).unwrap();
            let d = max_abs_diff(&alone, &inside);
            assert!(
                d <= 1e-5,
                "{name} row {i}: padded batch differs from alone by {d}"
            );
        }
        let alone = all_logits(
            &model,
            &Batch::single(r.rows[1].clone(), &Device::Cpu).unwrap(),
        );
        let d = max_abs_diff(
            &alone.squeeze(0).unwrap(),
            &mixed.i((1, ..r.rows[1].len())).unwrap(),
        );
        assert!(d <= 1e-5, "{name}: row in a mixed batch differs by {d}");
    }
}

#[test]
fn kv_cache_decoding_matches_the_full_pass() {
    for (name, path) in MODELS.into_iter().flat_map(|m| PATHS.map(|p| (m, p))) {
        let model = load_on(name, "config.json", path);
        let r = reference(name);
        let name = format!("{name} ({})", path.0);
        let row = &r.rows[2];
        let full = all_logits(&model, &Batch::single(row.clone(), &Device::Cpu).unwrap())
            .squeeze(0)
            .unwrap();
        let mut cache = KvCache::new(model.config().n_layers, 1);
        let split = 5;
        let opts = ForwardOptions::default();
        let first = Batch::single(row[..split].to_vec(), &Device::Cpu).unwrap();
        let out = model
            .forward(&first, &opts, &mut NoHooks, Some(&mut cache))
            .unwrap();
        let d = max_abs_diff(
            &out.logits.unwrap().squeeze(0).unwrap(),
            &full.i(split - 1).unwrap(),
        );
        assert!(d <= 1e-4, "{name}: prefill logits differ by {d}");
        for (t, &tok) in row.iter().enumerate().skip(split) {
            let step = Batch::single(vec![tok], &Device::Cpu).unwrap();
            let out = model
                .forward(&step, &opts, &mut NoHooks, Some(&mut cache))
                .unwrap();
            let d = max_abs_diff(
                &out.logits.unwrap().squeeze(0).unwrap(),
                &full.i(t).unwrap(),
            );
            assert!(
                d <= 1e-4,
                "{name}: cached step at position {t} differs by {d}"
            );
        }
    }
}

/// Edits at every kind of hook point, through a full pass and through cached single-token steps
/// (which run without tensor ops between the hook points), give the same logits.
#[test]
fn hooks_edit_cached_decoding_steps_like_the_full_pass() {
    use dsg::model::HookList;
    for name in MODELS {
        let model = load(name, "config.json");
        let row = reference(name).rows[2].clone();
        let sites = [
            (0, Site::ResidPre, 0.5),
            (0, Site::AttnOut, 2.0),
            (1, Site::ResidMid, -1.0),
            (0, Site::MlpOut, 0.25),
            (1, Site::ResidPost, 1.5),
        ];
        let run = |batch: &Batch, cache: Option<&mut KvCache>| {
            let mut hooks: Vec<_> = sites
                .iter()
                .map(|&(layer, site, f)| {
                    FnHook::new(HookPoint { layer, site }, move |_, t| Ok(Some((t * f)?)))
                })
                .collect();
            let mut list = HookList::new();
            hooks.iter_mut().for_each(|h| list.push(h));
            let opts = ForwardOptions {
                logits: Logits::All,
                ..Default::default()
            };
            let out = model.forward(batch, &opts, &mut list, cache).unwrap();
            out.logits.unwrap().squeeze(0).unwrap()
        };
        let full = run(&Batch::single(row.clone(), &Device::Cpu).unwrap(), None);
        let plain = all_logits(&model, &Batch::single(row.clone(), &Device::Cpu).unwrap());
        assert!(max_abs_diff(&full, &plain.squeeze(0).unwrap()) > 1e-3);
        let mut cache = KvCache::new(model.config().n_layers, 1);
        let split = 4;
        run(
            &Batch::single(row[..split].to_vec(), &Device::Cpu).unwrap(),
            Some(&mut cache),
        );
        for (t, &tok) in row.iter().enumerate().skip(split) {
            let step = run(
                &Batch::single(vec![tok], &Device::Cpu).unwrap(),
                Some(&mut cache),
            );
            let d = max_abs_diff(&step.squeeze(0).unwrap(), &full.i(t).unwrap());
            assert!(
                d <= 1e-4,
                "{name}: hooked step at position {t} differs by {d}"
            );
        }
    }
}

#[test]
fn batched_decoding_with_a_cache_keeps_rows_apart() {
    let model = load("gemma2_softcap", "config.json");
    let r = reference("gemma2_softcap");
    let (a, b) = (&r.rows[0], &r.rows[2]);
    let mut cache = KvCache::new(model.config().n_layers, 2);
    let prompts = Batch::new(vec![a[..3].to_vec(), b[..9].to_vec()], &Device::Cpu).unwrap();
    model
        .forward(
            &prompts,
            &ForwardOptions::default(),
            &mut NoHooks,
            Some(&mut cache),
        )
        .unwrap();
    let step = Batch::new(vec![vec![a[3]], vec![b[9]]], &Device::Cpu).unwrap();
    let out = model
        .forward(
            &step,
            &ForwardOptions::default(),
            &mut NoHooks,
            Some(&mut cache),
        )
        .unwrap();
    let logits = out.logits.unwrap();
    for (i, (row, pos)) in [(a, 3), (b, 9)].into_iter().enumerate() {
        let full = all_logits(&model, &Batch::single(row.clone(), &Device::Cpu).unwrap());
        let d = max_abs_diff(&logits.i(i).unwrap(), &full.i((0, pos)).unwrap());
        assert!(d <= 1e-4, "row {i}: batched cached step differs by {d}");
    }
}

/// Continuous batching: rows prefilled alone, joined into one cache ([`KvCache::append_rows`]),
/// decoded together, one of them dropped ([`KvCache::retain_rows`]) and another joining later,
/// give every row the logits it gets decoding alone, bit for bit, on every architecture.
#[test]
fn joined_and_retained_cache_rows_decode_as_they_do_alone() {
    for name in MODELS {
        let model = load(name, "config.json");
        let r = reference(name);
        let step = |cache: &mut KvCache, tokens: Vec<u32>| -> Vec<Vec<f32>> {
            let batch =
                Batch::new(tokens.into_iter().map(|t| vec![t]).collect(), &Device::Cpu).unwrap();
            let out = model
                .forward(
                    &batch,
                    &ForwardOptions::default(),
                    &mut NoHooks,
                    Some(cache),
                )
                .unwrap();
            out.logits.unwrap().to_vec2::<f32>().unwrap()
        };
        let prefill = |row: &[u32]| -> KvCache {
            let mut cache = KvCache::new(model.config().n_layers, 1);
            let batch = Batch::single(row.to_vec(), &Device::Cpu).unwrap();
            model
                .forward(
                    &batch,
                    &ForwardOptions::default(),
                    &mut NoHooks,
                    Some(&mut cache),
                )
                .unwrap();
            cache
        };
        // Prompts of different lengths, then 3 decoding steps each, alone.
        let prompts = [&r.rows[0][..4], &r.rows[1][..2], &r.rows[2][..6]];
        let next = |i: usize, t: usize| r.rows[i][prompts[i].len() + t];
        let alone: Vec<Vec<Vec<f32>>> = (0..3)
            .map(|i| {
                let mut cache = prefill(prompts[i]);
                (0..3)
                    .map(|t| step(&mut cache, vec![next(i, t)]).remove(0))
                    .collect()
            })
            .collect();
        // Rows 0 and 1 join; one step; row 2 joins; one step; row 1 leaves; one step; and so on.
        let mut cache = prefill(prompts[0]);
        cache.append_rows(prefill(prompts[1])).unwrap();
        let s0 = step(&mut cache, vec![next(0, 0), next(1, 0)]);
        assert_eq!(s0[0], alone[0][0], "{name}: row 0, step 0");
        assert_eq!(s0[1], alone[1][0], "{name}: row 1, step 0");
        cache.append_rows(prefill(prompts[2])).unwrap();
        let s1 = step(&mut cache, vec![next(0, 1), next(1, 1), next(2, 0)]);
        assert_eq!(s1[0], alone[0][1], "{name}: row 0, step 1");
        assert_eq!(s1[1], alone[1][1], "{name}: row 1, step 1");
        assert_eq!(s1[2], alone[2][0], "{name}: row 2 joining, step 0");
        cache.retain_rows(&[true, false, true]).unwrap();
        assert_eq!(cache.rows(), 2);
        let s2 = step(&mut cache, vec![next(0, 2), next(2, 1)]);
        assert_eq!(s2[0], alone[0][2], "{name}: row 0 after row 1 left");
        assert_eq!(s2[1], alone[2][1], "{name}: row 2 after row 1 left");
        cache.retain_rows(&[false, true]).unwrap();
        let s3 = step(&mut cache, vec![next(2, 2)]);
        assert_eq!(s3[0], alone[2][2], "{name}: row 2 alone again");
        assert_eq!(cache.row_lengths(), vec![prompts[2].len() + 3]);
        assert!(cache
            .append_rows(KvCache::new(model.config().n_layers + 1, 1))
            .is_err());
        assert!(cache.retain_rows(&[true, true]).is_err());
    }
}

#[test]
fn forward_until_stops_at_the_requested_block() {
    let model = load("llama_gqa", "config.json");
    let r = reference("llama_gqa");
    let batch = Batch::new(r.rows.clone(), &Device::Cpu).unwrap();
    let mut cap = Capture::new([HookPoint::resid_post(0)]);
    model
        .forward(&batch, &ForwardOptions::default(), &mut cap, None)
        .unwrap();
    let early = model.forward_until(&batch, 0, &mut NoHooks).unwrap();
    assert_eq!(
        max_abs_diff(&early, cap.get(HookPoint::resid_post(0)).unwrap()),
        0.0
    );
    assert!(
        model.forward_until(&batch, 2, &mut NoHooks).is_err(),
        "block 2 of 2 must be rejected"
    );
}

#[test]
fn hooks_edit_the_residual_stream() {
    let model = load("qwen2_bias", "config.json");
    let r = reference("qwen2_bias");
    let batch = Batch::new(r.rows.clone(), &Device::Cpu).unwrap();
    let base = all_logits(&model, &batch);
    let opts = ForwardOptions {
        logits: Logits::All,
        ..Default::default()
    };
    // Returning the activation unchanged leaves the logits bit-identical.
    let mut same = FnHook::new(HookPoint::resid_post(0), |_, t| Ok(Some(t.clone())));
    let out = model
        .forward(&batch, &opts, &mut same, None)
        .unwrap()
        .logits
        .unwrap();
    assert_eq!(max_abs_diff(&out, &base), 0.0);
    // Editing only row 1 changes row 1 and nothing else.
    let mut edit = FnHook::new(HookPoint::resid_post(0), |ctx, t| {
        assert_eq!(ctx.lengths, &[7, 13, 20]);
        let mut rows: Vec<Tensor> = (0..3).map(|i| t.i(i).unwrap()).collect();
        rows[1] = (&rows[1] * 0.0).unwrap();
        Ok(Some(Tensor::stack(&rows, 0).unwrap()))
    });
    let out = model
        .forward(&batch, &opts, &mut edit, None)
        .unwrap()
        .logits
        .unwrap();
    assert_eq!(max_abs_diff(&out.i(0).unwrap(), &base.i(0).unwrap()), 0.0);
    assert_eq!(max_abs_diff(&out.i(2).unwrap(), &base.i(2).unwrap()), 0.0);
    assert!(max_abs_diff(&out.i(1).unwrap(), &base.i(1).unwrap()) > 1e-3);
    // A replacement of the wrong shape is an error, not garbage.
    let mut bad = FnHook::new(HookPoint::resid_post(0), |_, t| {
        Ok(Some(t.narrow(1, 0, 2).unwrap()))
    });
    assert!(model.forward(&batch, &opts, &mut bad, None).is_err());
}

#[test]
fn token_logprobs_agree_with_log_softmax_of_the_logits() {
    let model = load("mistral_window", "config.json");
    let r = reference("mistral_window");
    let row = r.rows[2].clone();
    let lp = model
        .token_logprobs(
            &Batch::single(row.clone(), &Device::Cpu).unwrap(),
            &mut NoHooks,
        )
        .unwrap();
    let logits = &r.logits[2];
    for t in 0..row.len() - 1 {
        let v = logits.i(t).unwrap().to_vec1::<f32>().unwrap();
        let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + v.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
        let expected = v[row[t + 1] as usize] - lse;
        assert!(
            (lp[0][t] - expected).abs() < 1e-4,
            "position {t}: {} vs {expected}",
            lp[0][t]
        );
    }
}

#[test]
fn hooks_see_the_prompt_and_every_generated_token() {
    use dsg::generate::{generate, GenerateOptions};
    let model = load("gemma2_softcap", "config.json");
    let r = reference("gemma2_softcap");
    let prompt = r.rows[1].clone();
    let mut seen: Vec<(usize, usize)> = Vec::new();
    let mut hook = FnHook::new(HookPoint::resid_post(1), |ctx, _| {
        seen.push((ctx.start_positions[0], ctx.lengths[0]));
        Ok(None)
    });
    let opts = GenerateOptions {
        max_new_tokens: 5,
        ..Default::default()
    };
    let g = generate(&model, &prompt, &opts, &mut hook, |_| {}).unwrap();
    assert_eq!(g.tokens.len(), 5);
    let n = prompt.len();
    assert_eq!(
        seen,
        vec![(0, n), (n, 1), (n + 1, 1), (n + 2, 1), (n + 3, 1)]
    );
    // Greedy generation equals argmax of a full forward pass over the growing sequence.
    let mut seq = prompt.clone();
    for &t in &g.tokens {
        let logits = all_logits(&model, &Batch::single(seq.clone(), &Device::Cpu).unwrap());
        let last = logits.i((0, seq.len() - 1)).unwrap().argmax(0).unwrap();
        assert_eq!(last.to_scalar::<u32>().unwrap(), t);
        seq.push(t);
    }
}

#[test]
fn perplexity_windows_score_each_window_from_its_own_start() {
    use dsg::eval::perplexity::perplexity;
    let model = load("llama_gqa", "config.json");
    let r = reference("llama_gqa");
    let row = r.rows[2].clone(); // 20 tokens
    let whole = perplexity(&model, &row, 64, &mut NoHooks).unwrap();
    assert_eq!((whole.n_predicted, whole.n_windows), (19, 1));
    let lp = model
        .token_logprobs(
            &Batch::single(row.clone(), &Device::Cpu).unwrap(),
            &mut NoHooks,
        )
        .unwrap();
    let mean = -lp[0].iter().map(|&x| x as f64).sum::<f64>() / 19.0;
    assert!((whole.mean_nll - mean).abs() < 1e-6 && (whole.perplexity - mean.exp()).abs() < 1e-5);
    // Windows of 8: [0..8) [8..16) [16..20), each predicting 7, 7 and 3 tokens.
    let split = perplexity(&model, &row, 8, &mut NoHooks).unwrap();
    assert_eq!((split.n_predicted, split.n_windows), (17, 3));
    assert!(perplexity(&model, &row[..1], 8, &mut NoHooks).is_err());
}

fn config_json(name: &str, file: &str) -> Value {
    let path = fixture(&format!("tiny/{name}/{file}"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn parse(cfg: &Value) -> dsg::Result<ModelConfig> {
    ModelConfig::from_hf_value(cfg, std::path::Path::new("config.json"))
}

/// The sliding layers' and the global layers' inverse frequencies of a Gemma 3 config.
fn gemma3_rope(cfg: &ModelConfig) -> (Vec<f32>, Vec<f32>) {
    match &cfg.positions {
        dsg::model::config::Positions::Rope {
            inv_freq,
            local_inv_freq: Some(local),
            ..
        } => (local.clone(), inv_freq.clone()),
        other => panic!("Gemma 3 needs two RoPEs, got {other:?}"),
    }
}

/// Gemma 3's layer pattern, RoPE bases, scaling and scale read as transformers reads them, from
/// transformers 5's layout (`layer_types`, nested `rope_parameters`), 4.x's (`sliding_window_pattern`,
/// `rope_local_base_freq`, `rope_scaling`) and a multimodal `gemma3` config's `text_config`.
#[test]
fn gemma3_configs_read_as_transformers_does() {
    let v5 = parse(&config_json("gemma3_local_global", "config.json")).unwrap();
    assert_eq!(v5.layer_windows, [Some(4), Some(4), None, Some(4)]);
    assert!(v5.qk_norm && v5.sandwich_norms);
    assert_eq!((v5.attn_softcap, v5.final_softcap), (None, None));
    assert_eq!(v5.attn_scale, 16f64.powf(-0.5));
    assert_eq!(v5.embed_scale, Some(8.0));
    let (local, global) = gemma3_rope(&v5);
    assert_eq!(local, dsg::model::config::rope_inv_freq(1e4, 16));
    assert_eq!(global, dsg::model::config::rope_inv_freq(1e6, 16));
    for name in ["gemma3_local_global", "gemma3_scaled"] {
        let text = config_json(name, "config.json");
        let v5 = parse(&text).unwrap();
        assert_eq!(
            parse(&config_json(name, "config_v4.json")).unwrap(),
            v5,
            "{name}"
        );
        let multimodal = json!({"model_type": "gemma3", "text_config": text});
        assert_eq!(parse(&multimodal).unwrap(), v5, "{name} inside text_config");
    }
    let scaled = parse(&config_json("gemma3_scaled", "config.json")).unwrap();
    let (local, global) = gemma3_rope(&scaled);
    assert_eq!(local, dsg::model::config::rope_inv_freq(1e3, 32));
    let plain = dsg::model::config::rope_inv_freq(1e5, 32);
    for (g, p) in global.iter().zip(&plain) {
        assert!(
            (g - p / 4.0).abs() <= f32::EPSILON * p,
            "linear factor 4: {g} vs {p}/4"
        );
    }
    assert_eq!(scaled.layer_windows, [Some(6), None, Some(6)]);
    assert_eq!(scaled.attn_scale, 24f64.powf(-0.5));

    // A multimodal checkpoint's text_config (gemma-3-4b-it's, as published) gives only what differs
    // from transformers' defaults: 8/4 heads of 256, bases 1e6 (linear 8) and 1e4, every 6th layer global.
    let hub = json!({"model_type": "gemma3", "tie_word_embeddings": true, "text_config": {
        "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
        "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024}});
    let c = parse(&hub).unwrap();
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (8, 4, 256));
    assert_eq!((c.vocab_size, c.max_positions), (262_208, 131_072));
    assert_eq!(c.attn_scale, 256f64.powf(-0.5));
    let globals: Vec<usize> = (0..34).filter(|&i| c.layer_windows[i].is_none()).collect();
    assert_eq!(globals, [5, 11, 17, 23, 29]);
    assert_eq!(c.layer_windows[0], Some(1024));
    let (local, global) = gemma3_rope(&c);
    assert_eq!(local, dsg::model::config::rope_inv_freq(1e4, 256));
    assert!((global[1] - dsg::model::config::rope_inv_freq(1e6, 256)[1] / 8.0).abs() < 1e-9);
    assert!(c.tie_embeddings);
}

/// Bad Gemma 3 settings are refused with the field, what it must be and what it was.
#[test]
fn gemma3_bad_config_values_name_the_field() {
    let base = config_json("gemma3_local_global", "config_v4.json");
    let with = |key: &str, v: Value| {
        let mut c = base.clone();
        c[key] = v;
        c
    };
    let cases = [
        (
            with("sliding_window_pattern", json!(0)),
            "sliding_window_pattern",
        ),
        (
            with("sliding_window_pattern", json!("six")),
            "sliding_window_pattern",
        ),
        (
            with("rope_local_base_freq", json!(-1.0)),
            "rope_local_base_freq",
        ),
        (with("rope_theta", json!(0.0)), "rope_theta"),
        (
            with("use_bidirectional_attention", json!(true)),
            "use_bidirectional_attention",
        ),
        (
            with("rope_parameters", json!({"full_attention": 5})),
            "rope_parameters.full_attention",
        ),
        (json!({"model_type": "gemma3"}), "text_config"),
        (
            json!({"model_type": "gemma3", "text_config": [1]}),
            "text_config",
        ),
    ];
    for (cfg, field) in cases {
        let err = parse(&cfg).expect_err(field).to_string();
        assert!(
            err.contains(field),
            "error for {field} does not name it: {err}"
        );
    }
}

/// Every weight comes back under its Hugging Face name and value (Gemma's norm offset removed, the
/// fused maps split, Gemma 3's q/k norms included), as full fine-tuning writes them.
#[test]
fn hf_tensors_give_back_the_checkpoint() {
    for name in MODELS.into_iter().filter(|n| *n != "gpt2") {
        let model = load(name, "config.json");
        let file = load_st(&fixture(&format!("tiny/{name}/model.safetensors")));
        let ours = model.hf_tensors().unwrap();
        let mut names: Vec<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
        let mut theirs: Vec<&str> = file.keys().map(String::as_str).collect();
        names.sort();
        theirs.sort();
        assert_eq!(names, theirs, "{name}");
        for (n, t) in &ours {
            let d = max_abs_diff(t, &file[n]);
            assert!(d <= 1e-6, "{name}: {n} differs by {d}");
        }
    }
}

/// A multimodal Gemma 3 checkpoint (`model_type: gemma3`) keeps the decoder under
/// `model.language_model.` (transformers 5) or `language_model.model.` (4.x): loaded from either,
/// with its `text_config`, it gives the text model's logits bit for bit.
#[test]
fn gemma3_multimodal_checkpoint_loads_its_language_model() {
    let name = "gemma3_scaled";
    let plain = load(name, "config.json");
    let r = reference(name);
    let batch = Batch::new(r.rows.clone(), &Device::Cpu).unwrap();
    let expected = all_logits(&plain, &batch);
    let weights = load_st(&fixture(&format!("tiny/{name}/model.safetensors")));
    let cfg = json!({"model_type": "gemma3", "text_config": config_json(name, "config.json")});
    for prefix in ["model.language_model.", "language_model.model."] {
        let dir = common::scratch(
            "model_tiny",
            &format!("gemma3_mm_{}", prefix.replace('.', "_")),
        );
        let renamed: std::collections::HashMap<String, Tensor> = weights
            .iter()
            .map(|(k, v)| {
                (
                    format!("{prefix}{}", k.strip_prefix("model.").unwrap()),
                    v.clone(),
                )
            })
            .collect();
        candle_core::safetensors::save(&renamed, dir.join("model.safetensors")).unwrap();
        let src = WeightSource::open_safetensors_dir(&dir).unwrap();
        let model = Model::load(parse(&cfg).unwrap(), &src, &Device::Cpu).unwrap();
        let d = max_abs_diff(&all_logits(&model, &batch), &expected);
        assert_eq!(d, 0.0, "{prefix}: logits differ by {d}");
    }
}
