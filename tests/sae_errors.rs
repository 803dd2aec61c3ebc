//! Broken or mismatched SAE files must fail with errors that name the file and the field at fault.
//! Each test copies a good fixture into a scratch directory and breaks one thing.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use dsg::sae::Sae;
use dsg::Error;

fn read(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn write(path: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

fn load_err(path: &Path) -> (Error, String) {
    let err = Sae::load(path, &Device::Cpu).expect_err("loading should fail");
    let msg = err.to_string();
    (err, msg)
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} should mention {p:?}");
    }
}

/// `t` with element `i` (flat index) replaced by `v`.
fn poke(t: &Tensor, i: usize, v: f32) -> Tensor {
    let mut data = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    data[i] = v;
    Tensor::from_vec(data, t.dims(), &Device::Cpu).unwrap()
}

#[test]
fn missing_tensor_names_file_and_tensor() {
    let dir = common::copy_sae_fixture(
        "gemma-scope-2-1b-pt/resid_post_all/layer_7_width_16k_l0_small",
        "sae_errors",
        "missing_threshold",
    );
    let file = dir.join("params.safetensors");
    let mut t = read(&file);
    t.remove("threshold").unwrap();
    write(&file, &t);
    let (err, msg) = load_err(&file);
    assert!(matches!(err, Error::Missing { .. }), "{err:?}");
    assert_mentions(&msg, &["params.safetensors", "threshold"]);
}

#[test]
fn shape_mismatch_names_file_tensor_and_shapes() {
    let dir = common::copy_sae_fixture("saelens/v6_jumprelu", "sae_errors", "bad_shape");
    let file = dir.join("sae_weights.safetensors");
    let mut t = read(&file);
    // cfg.json says d_in 32, d_sae 64; a (33, 64) encoder fits neither orientation.
    let w = Tensor::zeros((33, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    t.insert("W_enc".into(), w);
    write(&file, &t);
    let (err, msg) = load_err(&dir);
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    assert_mentions(
        &msg,
        &["sae_weights.safetensors", "W_enc", "[32, 64]", "[33, 64]"],
    );
}

#[test]
fn transposed_matrices_are_oriented_by_shape() {
    let dir = common::copy_sae_fixture("saelens/v6_jumprelu", "sae_errors", "transposed");
    let file = dir.join("sae_weights.safetensors");
    let mut t = read(&file);
    let w_dec = t["W_dec"].t().unwrap().contiguous().unwrap();
    t.insert("W_dec".into(), w_dec);
    write(&file, &t);
    let sae = Sae::load(&dir, &Device::Cpu).unwrap();
    let good = Sae::load(&common::sae_fixture("saelens/v6_jumprelu"), &Device::Cpu).unwrap();
    let same = |a: &Tensor, b: &Tensor| {
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert!(same(sae.w_dec(), good.w_dec()));
}

#[test]
fn nan_weight_names_file_tensor_and_index() {
    let dir = common::copy_sae_fixture("sparsify/topk_bf16/layers.2", "sae_errors", "layers.2");
    let file = dir.join("sae.safetensors");
    let mut t = read(&file);
    let w = t["W_dec"].to_dtype(candle_core::DType::F32).unwrap();
    t.insert("W_dec".into(), poke(&w, 7, f32::NAN));
    write(&file, &t);
    let (err, msg) = load_err(&dir);
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    assert_mentions(&msg, &["sae.safetensors", "W_dec", "NaN", "index 7"]);
}

#[test]
fn infinite_weight_in_npz_names_file_and_member() {
    let dir = common::copy_sae_fixture(
        "gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_71",
        "sae_errors",
        "inf_npz",
    );
    let file = dir.join("params.npz");
    let mut members = Tensor::read_npz(&file).unwrap();
    for (name, t) in members.iter_mut() {
        if name == "b_enc" {
            *t = poke(t, 3, f32::INFINITY);
        }
    }
    let refs: Vec<(&str, &Tensor)> = members.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_npz(&refs, &file).unwrap();
    let (_, msg) = load_err(&file);
    assert_mentions(&msg, &["params.npz", "b_enc", "inf", "index 3"]);
}

#[test]
fn wrong_model_width_names_file_and_sizes() {
    let path =
        common::sae_fixture("gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_71/params.npz");
    let sae = Sae::load(&path, &Device::Cpu).unwrap();
    let err = sae.check_model(2304, 26).unwrap_err();
    assert!(matches!(err, Error::Mismatch(_)), "{err:?}");
    assert_mentions(&err.to_string(), &["params.npz", "d_in", "16", "2304"]);
    // Right width, but the hook's layer 3 does not exist in a 2-layer model.
    let err = sae.check_model(16, 2).unwrap_err();
    assert_mentions(
        &err.to_string(),
        &["params.npz", "blocks.3.hook_resid_post", "2 layers"],
    );
    sae.check_model(16, 4).unwrap();
}

#[test]
fn input_of_wrong_width_is_refused() {
    let sae = Sae::load(&common::sae_fixture("saelens/v6_jumprelu"), &Device::Cpu).unwrap();
    let x = Tensor::zeros((2, 31), candle_core::DType::F32, &Device::Cpu).unwrap();
    let msg = sae.encode(&x).unwrap_err().to_string();
    assert_mentions(&msg, &["v6_jumprelu", "[2, 31]", "32"]);
}

#[test]
fn missing_config_field_names_file_and_field() {
    let dir = common::copy_sae_fixture("saelens/v6_topk", "sae_errors", "no_d_sae");
    let cfg_path = dir.join("cfg.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("d_sae");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (err, msg) = load_err(&dir);
    assert!(matches!(err, Error::Missing { .. }), "{err:?}");
    assert_mentions(&msg, &["cfg.json", "d_sae"]);
}

/// Edits `cfg.json` of a scratch copy of `rel` with `f`.

#[test]
fn gated_and_unknown_architectures_are_unsupported() {
    let dir = common::edited_sae_fixture("saelens/v6_jumprelu", "sae_errors", "gated", |c| {
        c["architecture"] = "gated".into()
    });
    let (err, msg) = load_err(&dir);
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert_mentions(&msg, &["cfg.json", "gated"]);
    let dir = common::edited_sae_fixture(
        "saelens/v6_jumprelu",
        "sae_errors",
        "matching_pursuit",
        |c| c["architecture"] = "matching_pursuit".into(),
    );
    assert_mentions(&load_err(&dir).1, &["cfg.json", "matching_pursuit"]);
}

#[test]
fn hook_z_sae_loads_but_fails_the_model_check() {
    let dir = common::edited_sae_fixture("saelens/v6_jumprelu", "sae_errors", "hook_z", |c| {
        c["metadata"]["hook_name"] = "blocks.5.attn.hook_z".into()
    });
    let sae = Sae::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(sae.hook(), None);
    let err = sae.check_model(32, 12).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert_mentions(&err.to_string(), &["hook_z", "with_hook"]);
    // An explicit hook overrides.
    let sae = sae.with_hook(dsg::model::HookPoint::resid_post(5));
    sae.check_model(32, 12).unwrap();
}

#[test]
fn sparsify_transcoder_and_skip_are_unsupported() {
    let dir = common::edited_sae_fixture(
        "sparsify/topk_bf16/layers.2",
        "sae_errors",
        "transcode/layers.2",
        |c| c["transcode"] = true.into(),
    );
    let (err, msg) = load_err(&dir);
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert_mentions(&msg, &["cfg.json", "transcoder"]);

    let dir =
        common::copy_sae_fixture("sparsify/topk_bf16/layers.2", "sae_errors", "skip/layers.2");
    let file = dir.join("sae.safetensors");
    let mut t = read(&file);
    t.insert(
        "W_skip".into(),
        Tensor::ones((24, 24), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    write(&file, &t);
    assert_mentions(&load_err(&dir).1, &["sae.safetensors", "W_skip"]);
}

#[test]
fn unknown_paths_say_what_was_expected() {
    let missing = common::sae_fixture("no/such/sae");
    let (err, msg) = load_err(&missing);
    assert!(matches!(err, Error::Missing { .. }), "{err:?}");
    assert_mentions(&msg, &["no/such/sae"]);
    let empty = common::copy_sae_fixture("saelens/v6_topk", "sae_errors", "empty");
    for f in std::fs::read_dir(&empty).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    assert_mentions(&load_err(&empty).1, &["empty", "cfg.json", "params.npz"]);
}

#[test]
fn malformed_json_names_the_file() {
    let dir = common::copy_sae_fixture("dsg/jumprelu_f16", "sae_errors", "bad_json");
    std::fs::write(dir.join("sae.json"), "{\"format\": \"dsg-sae\", ").unwrap();
    // The directory is still recognised as dsg's (sae.json exists), and the parse error names it.
    assert_mentions(&load_err(&dir).1, &["sae.json", "JSON"]);
}

#[test]
fn topk_k_outside_one_to_d_sae_names_the_file_and_k() {
    for (name, k) in [("k0/layers.2", 0), ("kbig/layers.2", 49)] {
        let dir =
            common::edited_sae_fixture("sparsify/topk_bf16/layers.2", "sae_errors", name, |c| {
                c["k"] = k.into()
            });
        let (err, msg) = load_err(&dir);
        assert!(matches!(err, Error::OutOfRange { .. }), "{err:?}");
        assert_mentions(&msg, &[name, &format!("k: {k}"), "1..=48"]);
    }
}

/// Saving in f16 an SAE whose values exceed f16's range (Gemma 3's residual means do) is refused,
/// naming the tensor, instead of writing infinities; f32 keeps it.
#[test]
fn f16_storage_refuses_values_past_its_range() {
    use dsg::sae::{Sae, SaeMeta, SaeParts};
    let base = common::random_sae(8, dsg::model::HookPoint::resid_post(1));
    let b_dec: Vec<f32> = (0..64).map(|i| if i == 3 { 1.0e5 } else { 0.5 }).collect();
    let sae = Sae::from_parts(SaeParts {
        w_enc: base.w_enc().clone(),
        b_enc: base.b_enc().clone(),
        w_dec: base.w_dec().clone(),
        b_dec: Tensor::from_vec(b_dec, 64, &Device::Cpu).unwrap(),
        activation: base.activation().clone(),
        apply_b_dec_to_input: false,
        normalization: base.normalization(),
        hook: base.hook(),
        meta: SaeMeta::default(),
    })
    .unwrap();
    let dir = common::scratch("sae_errors", "f16_range");
    let e = sae
        .save_as(
            &dir.join("x.safetensors"),
            &SaeMeta::default(),
            candle_core::DType::F16,
        )
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["b_dec", "f16", "--dtype f32"]);
    sae.save_as(
        &dir.join("y.safetensors"),
        &SaeMeta::default(),
        candle_core::DType::F32,
    )
    .unwrap();
    let back = Sae::load(&dir.join("y.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(back.b_dec().to_vec1::<f32>().unwrap()[3], 1.0e5);
}

#[test]
fn malicious_pickle_is_refused_without_running_it() {
    let probe = Path::new("/tmp/dsg-qwen-scope-pickle-side-effect");
    let _ = std::fs::remove_file(probe);
    let file = common::sae_fixture("qwen-scope/malicious/layer0.sae.pt");
    let (err, msg) = load_err(&file);
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    assert_mentions(&msg, &["layer0.sae.pt", "`posix.system`", "allow-list"]);
    assert!(!probe.exists(), "the pickle's os.system call ran");
}

#[test]
fn broken_torch_checkpoints_are_errors_not_panics() {
    let cases = [
        ("truncated-pickle", "truncated"),
        ("bad-opcode", "0xfe"),
        ("short-storage", "bytes"),
        ("wrong-shape", "[64, 15]"),
    ];
    for (case, what) in cases {
        let file = common::sae_fixture(&format!("qwen-scope/broken/{case}/layer0.sae.pt"));
        let (_, msg) = load_err(&file);
        assert_mentions(&msg, &["layer0.sae.pt", what]);
    }
    // A checkpoint cut short is not a readable archive.
    let dir = common::copy_sae_fixture("qwen-scope/SAE-Res-Tiny-W64-L0_6", "sae_errors", "cut");
    let file = dir.join("layer3.sae.pt");
    let bytes = std::fs::read(&file).unwrap();
    for len in [0, 3, 100, bytes.len() / 2, bytes.len() - 30] {
        std::fs::write(&file, &bytes[..len]).unwrap();
        let (_, msg) = load_err(&file);
        assert_mentions(&msg, &["layer3.sae.pt"]);
    }
}

#[test]
fn qwen_scope_without_k_is_refused_until_a_config_gives_it() {
    // Outside its repository folder the file does not say k.
    let dir = common::copy_sae_fixture("qwen-scope/SAE-Res-Tiny-W64-L0_6", "sae_errors", "no_k");
    let (err, msg) = load_err(&dir.join("layer3.sae.pt"));
    assert!(matches!(err, Error::Missing { .. }), "{err:?}");
    assert_mentions(&msg, &["layer3.sae.pt", "`k`", "L0_"]);
    // A config.json beside it supplies k.
    std::fs::write(dir.join("config.json"), r#"{"k": 6}"#).unwrap();
    assert!(Sae::load(&dir.join("layer3.sae.pt"), &Device::Cpu).is_ok());
}
