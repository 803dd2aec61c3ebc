//! Every supported SAE format, loaded from the fixtures that `scripts/make_sae_fixtures.py` wrote
//! with the reference tooling, must reproduce the reference outputs.
//!
//! Tolerance: |ours − reference| ≤ 1e-5 · max(1, max |reference|) element-wise, for `pre`,
//! `encode`, `decode` and the full reconstruction. The scale factor only matters for the
//! `constant_norm_rescale` fixture, whose inputs have norms around 160.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dsg::model::{HookPoint, Site};
use dsg::sae::{detect_format, Activation, Normalization, Sae, SaeFormat};

const TOL: f32 = 1e-5;

fn reference(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
    let (i, diff) = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0, 0f32),
            |best, (i, d)| if d > best.1 { (i, d) } else { best },
        );
    assert!(
        diff <= TOL * scale,
        "{what}: max |diff| {diff} at {i} (got {}, want {}, scale {scale})",
        g[i],
        w[i]
    );
}

/// Checks an SAE against its directory's `reference.safetensors`.
fn check_reference(sae: &Sae, dir: &Path) {
    let r = reference(dir);
    let x = &r["x"];
    assert_close("pre", &sae.pre_activations(x).unwrap(), &r["pre"]);
    let f = sae.encode(x).unwrap();
    assert_close("encode", &f, &r["f"]);
    assert_close("decode", &sae.decode(&r["f"]).unwrap(), &r["decode"]);
    assert_close(
        "reconstruct",
        &sae.reconstruct(x).unwrap(),
        &r["reconstruct"],
    );
    let err = (x - &r["reconstruct"]).unwrap();
    assert_close("error", &sae.error(x).unwrap(), &err);
    // Some latents must fire and some must not, or the fixture tests little.
    let active = f.ne(0f32).unwrap().to_dtype(DType::F32).unwrap();
    let l0 = active.sum_all().unwrap().to_scalar::<f32>().unwrap()
        / (f.elem_count() / sae.d_sae()) as f32;
    assert!(l0 > 1.0 && l0 < sae.d_sae() as f32 - 1.0, "fixture L0 {l0}");
    // The selected latents computed alone agree exactly with the full encode.
    let latents: Vec<usize> = (0..sae.d_sae()).step_by(5).collect();
    let idx = Tensor::new(
        latents.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap();
    let want = f.index_select(&idx, 2).unwrap();
    let got = sae.encode_subset(x, &latents).unwrap();
    assert_eq!(
        got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        "encode_subset"
    );
}

fn load(rel: &str) -> (Sae, PathBuf) {
    let path = common::sae_fixture(rel);
    (Sae::load(&path, &Device::Cpu).unwrap(), path)
}

#[test]
fn gemma_scope_npz() {
    let dir = common::sae_fixture("gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_71");
    let file = dir.join("params.npz");
    assert_eq!(detect_format(&file).unwrap(), SaeFormat::GemmaScopeNpz);
    assert_eq!(detect_format(&dir).unwrap(), SaeFormat::GemmaScopeNpz);
    let sae = Sae::load(&file, &Device::Cpu).unwrap();
    assert_eq!((sae.d_in(), sae.d_sae()), (16, 48));
    assert_eq!(sae.hook(), Some(HookPoint::resid_post(3)));
    assert!(matches!(sae.activation(), Activation::JumpRelu { .. }));
    assert!(!sae.apply_b_dec_to_input());
    assert_eq!(
        sae.metadata().source.as_ref().unwrap().format,
        SaeFormat::GemmaScopeNpz
    );
    check_reference(&sae, &dir);
    sae.check_model(16, 26).unwrap();
}

#[test]
fn gemma_scope_2_safetensors_lowercase_keys() {
    let (sae, dir) = load("gemma-scope-2-1b-pt/resid_post_all/layer_7_width_16k_l0_small");
    assert_eq!(
        detect_format(&dir).unwrap(),
        SaeFormat::GemmaScopeSafetensors
    );
    assert_eq!((sae.d_in(), sae.d_sae()), (24, 64));
    assert_eq!(sae.hook(), Some(HookPoint::resid_post(7)));
    assert_eq!(
        sae.metadata().model.as_ref().unwrap().name,
        "gemma-v3-1b-pt"
    );
    check_reference(&sae, &dir);
}

#[test]
fn saelens_v6_jumprelu() {
    let (sae, dir) = load("saelens/v6_jumprelu");
    assert_eq!(detect_format(&dir).unwrap(), SaeFormat::SaeLens);
    assert_eq!(sae.hook(), Some(HookPoint::resid_post(5)));
    assert!(sae.apply_b_dec_to_input());
    assert!(matches!(sae.activation(), Activation::JumpRelu { .. }));
    let meta = sae.metadata();
    assert_eq!(meta.model.as_ref().unwrap().name, "gpt2-small");
    assert_eq!(
        meta.training_data.as_deref(),
        Some("Skylion007/openwebtext")
    );
    check_reference(&sae, &dir);
}

#[test]
fn saelens_v6_topk_with_decoder_norm_rescaling() {
    let (sae, dir) = load("saelens/v6_topk");
    assert!(matches!(sae.activation(), Activation::TopK { k: 6 }));
    // rescale_acts_by_decoder_norm is folded: decoder rows have unit norm afterwards.
    let norms = sae.w_dec().sqr().unwrap().sum(1).unwrap().sqrt().unwrap();
    for n in norms.to_vec1::<f32>().unwrap() {
        assert!((n - 1.0).abs() < 1e-5, "{n}");
    }
    check_reference(&sae, &dir);
    // A TopK encode keeps exactly k latents per token here (the fixture has > k positive values).
    let f = sae.encode(&reference(&dir)["x"]).unwrap();
    let counts = f
        .ne(0f32)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum(2)
        .unwrap();
    assert!(counts
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|&c| c <= 6.0));
}

#[test]
fn saelens_v6_constant_norm_rescale() {
    let (sae, dir) = load("saelens/v6_constant_norm_rescale");
    assert_eq!(sae.normalization(), Normalization::ConstantNormRescale);
    assert!(matches!(sae.activation(), Activation::Relu));
    check_reference(&sae, &dir);
}

#[test]
fn saelens_v6_layer_norm() {
    let (sae, dir) = load("saelens/v6_layer_norm");
    assert_eq!(sae.normalization(), Normalization::LayerNorm);
    assert!(!sae.apply_b_dec_to_input());
    check_reference(&sae, &dir);
}

#[test]
fn saelens_legacy_standard_with_scaling_factor() {
    let (sae, dir) = load("saelens/legacy_standard_scaled");
    assert!(matches!(sae.activation(), Activation::Relu));
    assert!(sae.apply_b_dec_to_input());
    // hook_point (legacy name) → hook_name.
    assert_eq!(
        sae.hook(),
        Some(HookPoint {
            layer: 4,
            site: Site::ResidPre
        })
    );
    check_reference(&sae, &dir);
}

#[test]
fn sparsify_topk_bf16() {
    let (sae, dir) = load("sparsify/topk_bf16/layers.2");
    assert_eq!(detect_format(&dir).unwrap(), SaeFormat::Sparsify);
    assert_eq!(
        detect_format(&dir.join("sae.safetensors")).unwrap(),
        SaeFormat::Sparsify
    );
    // num_latents 0 → d_in × expansion_factor.
    assert_eq!((sae.d_in(), sae.d_sae()), (24, 48));
    assert!(matches!(sae.activation(), Activation::TopK { k: 5 }));
    assert_eq!(sae.hook(), Some(HookPoint::resid_post(2)));
    assert_eq!(
        sae.metadata().model.as_ref().unwrap().name,
        "EleutherAI/pythia-70m"
    );
    assert_eq!(sae.w_enc().dtype(), DType::F32);
    check_reference(&sae, &dir);
}

#[test]
fn sparsify_groupmax() {
    let (sae, dir) = load("sparsify/groupmax_f32/layers.2");
    assert!(matches!(
        sae.activation(),
        Activation::GroupMax { groups: 8 }
    ));
    check_reference(&sae, &dir);
}

#[test]
fn dsg_fixture_written_from_the_spec() {
    let (sae, dir) = load("dsg/jumprelu_f16");
    assert_eq!(detect_format(&dir).unwrap(), SaeFormat::Dsg);
    assert_eq!(sae.hook(), Some(HookPoint::resid_post(1)));
    let meta = sae.metadata();
    let model = meta.model.as_ref().unwrap();
    assert_eq!(model.name, "HuggingFaceTB/SmolLM2-135M");
    assert_eq!(model.sha256.as_deref(), Some("ab".repeat(32).as_str()));
    assert_eq!(meta.metrics.fvu, Some(0.125));
    assert_eq!(meta.metrics.extra.get("custom"), Some(&2.0));
    check_reference(&sae, &dir);
}

fn tensors(sae: &Sae) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = [sae.w_enc(), sae.b_enc(), sae.w_dec(), sae.b_dec()]
        .iter()
        .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    if let Activation::JumpRelu { threshold } = sae.activation() {
        out.push(threshold.to_vec1().unwrap());
    }
    out
}

fn rounded(sae: &Sae, dtype: DType) -> Vec<Vec<f32>> {
    tensors(sae)
        .into_iter()
        .map(|v| {
            let t = Tensor::new(v, &Device::Cpu).unwrap();
            t.to_dtype(dtype)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect()
}

#[test]
fn dsg_round_trip_is_exact() {
    let all = [
        "gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_71",
        "saelens/v6_topk",
        "saelens/v6_layer_norm",
        "saelens/legacy_standard_scaled",
        "sparsify/groupmax_f32/layers.2",
    ];
    for (i, rel) in all.into_iter().enumerate() {
        let (sae, _) = load(rel);
        let mut meta = sae.metadata().clone();
        meta.notes = Some(format!("round trip {i}"));
        meta.metrics.l0 = Some(0.1 + i as f64);
        meta.metrics.extra.insert("delta_kl".into(), 0.25);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let dir = common::scratch("sae_formats", &format!("round_trip_{i}_{dtype:?}"));
            sae.save_as(&dir, &meta, dtype).unwrap();
            assert_eq!(detect_format(&dir).unwrap(), SaeFormat::Dsg);
            let back = Sae::load(&dir, &Device::Cpu).unwrap();
            assert_eq!(back.metadata(), &meta, "{rel}");
            assert_eq!(back.hook(), sae.hook());
            assert_eq!(back.normalization(), sae.normalization());
            assert_eq!(back.apply_b_dec_to_input(), sae.apply_b_dec_to_input());
            assert_eq!(back.activation().name(), sae.activation().name());
            assert_eq!(tensors(&back), rounded(&sae, dtype), "{rel} {dtype:?}");
            // Saving what was loaded again gives identical files.
            let again = common::scratch("sae_formats", &format!("round_trip_{i}_{dtype:?}_again"));
            back.save_as(&again, back.metadata(), dtype).unwrap();
            for f in ["sae.safetensors", "sae.json"] {
                let same =
                    std::fs::read(dir.join(f)).unwrap() == std::fs::read(again.join(f)).unwrap();
                assert!(same, "{rel} {dtype:?}: {f} differs after a second save");
            }
        }
    }
}

#[test]
fn dsg_file_pair() {
    let (sae, dir) = load("saelens/v6_jumprelu");
    let out = common::scratch("sae_formats", "file_pair").join("my_sae.safetensors");
    sae.save(&out, sae.metadata()).unwrap();
    assert!(out.with_extension("json").is_file());
    for p in [out.clone(), out.with_extension("json")] {
        assert_eq!(detect_format(&p).unwrap(), SaeFormat::Dsg);
        let back = Sae::load(&p, &Device::Cpu).unwrap();
        assert_eq!(tensors(&back), tensors(&sae));
        check_reference(&back, &dir);
    }
}

#[test]
fn saelens_log_threshold_is_exponentiated() {
    let dir = common::edited_sae_fixture(
        "saelens/v6_jumprelu",
        "sae_formats",
        "log_threshold",
        |_| {},
    );
    let file = dir.join("sae_weights.safetensors");
    let mut t = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let threshold = t.remove("threshold").unwrap();
    t.insert("log_threshold".into(), threshold.log().unwrap());
    candle_core::safetensors::save(&t, &file).unwrap();
    let sae = Sae::load(&dir, &Device::Cpu).unwrap();
    check_reference(&sae, &common::sae_fixture("saelens/v6_jumprelu"));
}

#[test]
fn saelens_expected_average_only_in_folds_a_known_scale() {
    let s = 2.5f64;
    let dir =
        common::edited_sae_fixture("saelens/v6_jumprelu", "sae_formats", "scaled_input", |c| {
            c["normalize_activations"] = "expected_average_only_in".into()
        });
    // Without a recorded factor the SAE is used as SAELens uses it from disk, with a warning.
    let plain = Sae::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(plain.metadata().warnings.len(), 1);
    check_reference(&plain, &common::sae_fixture("saelens/v6_jumprelu"));

    // With SAELens's activation_scaler.json, inputs are scaled by s inside the SAE: encoding x / s
    // gives the reference's latents for x, and the reconstruction comes back divided by s.
    std::fs::write(
        dir.join("activation_scaler.json"),
        format!("{{\"scaling_factor\": {s}}}"),
    )
    .unwrap();
    let sae = Sae::load(&dir, &Device::Cpu).unwrap();
    assert!(sae.metadata().warnings.is_empty());
    assert_eq!(sae.normalization(), Normalization::None);
    let r = reference(&common::sae_fixture("saelens/v6_jumprelu"));
    let x = (&r["x"] / s).unwrap();
    assert_close("encode", &sae.encode(&x).unwrap(), &r["f"]);
    let want = (&r["reconstruct"] / s).unwrap();
    assert_close("reconstruct", &sae.reconstruct(&x).unwrap(), &want);
}

#[test]
fn qwen_scope_f32_with_strided_and_offset_tensors() {
    let dir = common::sae_fixture("qwen-scope/SAE-Res-Tiny-W64-L0_6");
    let file = dir.join("layer3.sae.pt");
    assert_eq!(detect_format(&file).unwrap(), SaeFormat::QwenScope);
    assert_eq!(detect_format(&dir).unwrap(), SaeFormat::QwenScope);
    let sae = Sae::load(&file, &Device::Cpu).unwrap();
    // W_enc was stored (d_sae, d_model) and W_dec (d_model, d_sae): both oriented by shape.
    assert_eq!((sae.d_in(), sae.d_sae()), (16, 64));
    assert!(matches!(sae.activation(), Activation::TopKSigned { k: 6 }));
    assert!(!sae.apply_b_dec_to_input());
    assert_eq!(sae.hook(), Some(HookPoint::resid_post(3)));
    assert_eq!(
        sae.metadata().model.as_ref().unwrap().name,
        "Qwen/Tiny",
        "model from the repository name"
    );
    check_reference(&sae, &dir);
    // The fixture's first row keeps negative values, which a ReLU'd TopK would zero.
    let f = sae.encode(&reference(&dir)["x"]).unwrap();
    let min = f.flatten_all().unwrap().min(0).unwrap();
    assert!(min.to_scalar::<f32>().unwrap() < 0.0);
}

#[test]
fn qwen_scope_bf16_with_k_and_hook_in_the_file() {
    let dir = common::sae_fixture("qwen-scope/bf16");
    let sae = Sae::load(&dir.join("layer2.sae.pt"), &Device::Cpu).unwrap();
    assert_eq!((sae.d_in(), sae.d_sae()), (16, 48));
    assert!(matches!(sae.activation(), Activation::TopKSigned { k: 5 }));
    // The file's own hook_name wins over the file name's layer.
    assert_eq!(sae.hook(), Some(HookPoint::resid_post(4)));
    assert_eq!(sae.w_enc().dtype(), DType::F32);
    check_reference(&sae, &dir);
}

#[test]
fn qwen_scope_round_trips_through_the_dsg_format() {
    let (sae, dir) = load("qwen-scope/SAE-Res-Tiny-W64-L0_6/layer3.sae.pt");
    let out = common::scratch("sae_formats", "qwen_scope_dsg");
    sae.save(&out, sae.metadata()).unwrap();
    let back = Sae::load(&out, &Device::Cpu).unwrap();
    assert!(matches!(back.activation(), Activation::TopKSigned { k: 6 }));
    check_reference(&back, dir.parent().unwrap());
}

/// Copies the files of SAE fixture folder `rel` into `dst` (created).
fn copy_into(rel: &str, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(common::sae_fixture(rel)).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// A fake Hugging Face hub cache holding the fixtures under their releases' repositories.
fn fake_hub_cache() -> PathBuf {
    let cache = common::scratch("sae_formats", "hub");
    let gs = cache.join("models--google--gemma-scope-2b-pt-res");
    std::fs::create_dir_all(gs.join("refs")).unwrap();
    std::fs::write(gs.join("refs/main"), "abc123\n").unwrap();
    // A stale revision that refs/main does not name must not be used.
    std::fs::create_dir_all(gs.join("snapshots/old999/layer_3/width_16k/average_l0_71")).unwrap();
    copy_into(
        "gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_71",
        &gs.join("snapshots/abc123/layer_3/width_16k/average_l0_71"),
    );
    copy_into(
        "gemma-scope-2-1b-pt/resid_post_all/layer_7_width_16k_l0_small",
        &cache.join(
            "models--google--gemma-scope-2-1b-pt/snapshots/r1/resid_post_all/\
             layer_7_width_16k_l0_small",
        ),
    );
    copy_into(
        "qwen-scope/SAE-Res-Tiny-W64-L0_6",
        &cache.join("models--Qwen--SAE-Res-Qwen3-TINY-W64-L0_6/snapshots/r2"),
    );
    copy_into(
        "sparsify/topk_bf16/layers.2",
        &cache.join("models--EleutherAI--sae-tiny/snapshots/r3/layers.2"),
    );
    cache
}

fn named(name: &str, cache: &Path) -> Sae {
    let path = dsg::sae::registry::resolve_in(name, cache)
        .unwrap()
        .unwrap_or_else(|| panic!("{name} is not a known name"));
    Sae::load(&path, &Device::Cpu).unwrap()
}

#[test]
fn saelens_names_resolve_in_a_hub_cache() {
    let cache = fake_hub_cache();
    let sae = named(
        "gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_71",
        &cache,
    );
    assert_eq!(sae.hook(), Some(HookPoint::resid_post(3)));
    assert!(sae.origin().unwrap().to_str().unwrap().contains("abc123"));
    let sae = named(
        "gemma-scope-2-1b-pt-res-all/layer_7_width_16k_l0_small",
        &cache,
    );
    assert_eq!(sae.hook(), Some(HookPoint::resid_post(7)));
    let sae = named("qwen-scope-3-tiny-w64-l6/layer3", &cache);
    assert!(matches!(sae.activation(), Activation::TopKSigned { k: 6 }));
    assert_eq!(sae.hook(), Some(HookPoint::resid_post(3)));
    let sae = named("EleutherAI/sae-tiny/layers.2", &cache);
    assert_eq!(sae.hook(), Some(HookPoint::resid_post(2)));
    // Sae::load tries a path that does not exist as a name, in $HF_HUB_CACHE (no other test in
    // this binary reads it).
    std::env::set_var("HF_HUB_CACHE", &cache);
    let sae = Sae::load(Path::new("qwen-scope-3-tiny-w64-l6/layer3"), &Device::Cpu).unwrap();
    assert_eq!(sae.d_sae(), 64);
    // Paths and names the table does not know are left to the caller.
    assert_eq!(
        dsg::sae::registry::resolve_in("no-such-release/x", &cache).unwrap(),
        None
    );
}

#[test]
fn unresolvable_names_say_where_they_looked_and_what_is_there() {
    let cache = fake_hub_cache();
    let err = |name: &str| {
        dsg::sae::registry::resolve_in(name, &cache)
            .unwrap_err()
            .to_string()
    };
    // The canonical layer-3 folder (average_l0_59) is not cached; the one that is gets listed.
    let msg = err("gemma-scope-2b-pt-res-canonical/layer_3/width_16k/canonical");
    for part in [
        "average_l0_59",
        "average_l0_71",
        "snapshots/abc123",
        "huggingface-cli",
    ] {
        assert!(msg.contains(part), "{msg:?} should mention {part:?}");
    }
    let msg = err("gemma-scope-9b-pt-res/layer_3/width_16k/average_l0_71");
    let cache_str = cache.display().to_string();
    for part in [
        cache_str.as_str(),
        "models--google--gemma-scope-9b-pt-res",
        "models--google--gemma-scope-2b-pt-res",
    ] {
        assert!(msg.contains(part), "{msg:?} should mention {part:?}");
    }
    // A canonical id the table does not know lists the folders the cache holds for it.
    let gs = cache.join("models--google--gemma-scope-2b-pt-res/snapshots/abc123/layer_3");
    copy_into(
        "gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_71",
        &gs.join("width_65k/average_l0_30"),
    );
    let msg = err("gemma-scope-2b-pt-res-canonical/layer_3/width_65k/canonical");
    for part in ["does not know", "average_l0_30", "width_65k"] {
        assert!(msg.contains(part), "{msg:?} should mention {part:?}");
    }
    let msg = err("qwen-scope-3-tiny-w64-l6/3");
    assert!(msg.contains("layer{n}"), "{msg}");
}

#[test]
fn qwen_scope_state_dicts_and_parameters_load_alike() {
    // A module's state dict (OrderedDict + BUILD, pickle protocol 4) and nn.Parameters.
    for variant in ["state-dict-p4", "parameters"] {
        let dir = common::sae_fixture(&format!("qwen-scope/variants/{variant}"));
        let sae = Sae::load(&dir.join("layer3.sae.pt"), &Device::Cpu).unwrap();
        assert!(matches!(sae.activation(), Activation::TopKSigned { k: 6 }));
        check_reference(&sae, &dir);
    }
}
