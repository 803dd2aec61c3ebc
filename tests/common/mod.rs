//! Shared helpers for integration tests: fixture paths, the shared benchmark data, tensor comparisons.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// `<shared data>/<rel>` (the folder of [`dsg::runtime::shared_data_dir`]: `$DSG_SHARED_DATA`, else
/// `../shared/data` beside the repository) when it exists; otherwise `None`, after printing why the
/// calling test skips (libtest names each test's thread after the test).
pub fn shared_data_or_skip(rel: &str) -> Option<PathBuf> {
    let path = dsg::runtime::shared_data_dir(None)
        .ok()
        .map(|dir| dir.join(rel))
        .filter(|p| p.exists());
    if path.is_none() {
        let test = std::thread::current()
            .name()
            .unwrap_or("this test")
            .to_string();
        let base = std::env::var(dsg::runtime::SHARED_DATA_ENV)
            .unwrap_or_else(|_| "../shared/data".into());
        eprintln!(
            "skipping {test}: {base}/{rel} not found (set {})",
            dsg::runtime::SHARED_DATA_ENV
        );
    }
    path
}

/// Loads a safetensors file into a name → tensor map on the CPU.
pub fn load_st(path: &std::path::Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Maximum absolute difference of two same-shaped tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `‖a − b‖ / ‖b‖` over all elements of two same-shaped tensors.
pub fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    norm(&(a - b).unwrap()) / norm(b)
}

/// A real model's next-token top-1 at every position of `tokens`, and the NLL of each next token,
/// from the residual stream `residual` (seq, d_model), 512 positions of logits at a time.
pub fn top1_and_nll(
    model: &dsg::model::Model,
    residual: &Tensor,
    tokens: &[u32],
) -> (Vec<u32>, Vec<f64>) {
    use candle_core::IndexOp;
    let n = tokens.len();
    let (mut top1, mut nll) = (Vec::with_capacity(n), Vec::with_capacity(n - 1));
    for start in (0..n).step_by(512) {
        let len = 512.min(n - start);
        let logits = model
            .logits_of(&residual.i(start..start + len).unwrap(), false)
            .unwrap();
        top1.extend(logits.argmax(1).unwrap().to_vec1::<u32>().unwrap());
        let logp = candle_nn::ops::log_softmax(&logits, 1).unwrap();
        for (t, row) in logp.to_vec2::<f32>().unwrap().iter().enumerate() {
            if let Some(&next) = tokens.get(start + t + 1) {
                nll.push(-row[next as usize] as f64);
            }
        }
    }
    (top1, nll)
}

/// Token ids stored as an int64 tensor, as u32.
pub fn ids(t: &Tensor) -> Vec<u32> {
    t.to_dtype(candle_core::DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

/// `tests/fixtures/sae/<rel>`.
pub fn sae_fixture(rel: &str) -> PathBuf {
    fixture("sae").join(rel)
}

/// A fresh, empty scratch folder `<target tmp>/<group>/<name>`.
pub fn scratch(group: &str, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(group)
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh scratch copy (under `group/name`) of the files of SAE fixture folder `rel`.
pub fn copy_sae_fixture(rel: &str, group: &str, name: &str) -> PathBuf {
    let dir = scratch(group, name);
    for entry in std::fs::read_dir(sae_fixture(rel)).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// [`copy_sae_fixture`] with its `cfg.json` edited by `edit`.
pub fn edited_sae_fixture(
    rel: &str,
    group: &str,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let dir = copy_sae_fixture(rel, group, name);
    let cfg_path = dir.join("cfg.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    dir
}

/// The tiny Llama fixture (`tests/fixtures/tiny/llama_gqa`, d_model 64) and its sha256.
pub fn tiny_llama() -> (dsg::model::Model, String) {
    let dir = fixture("tiny/llama_gqa");
    let cfg = dsg::model::ModelConfig::from_hf_json(&dir.join("config.json")).unwrap();
    let src = dsg::model::WeightSource::open_safetensors_dir(&dir).unwrap();
    let sha = dsg::guard::hook::artifact_sha256(&dir).unwrap();
    (
        dsg::model::Model::load(cfg, &src, &Device::Cpu).unwrap(),
        sha,
    )
}

/// A ReLU SAE of `d_sae` latents reading 64-wide residuals at `hook`, with seeded normal-ish
/// weights (sums of uniforms).
pub fn random_sae(d_sae: usize, hook: dsg::model::HookPoint) -> dsg::sae::Sae {
    use dsg::sae::{Activation, Normalization, Sae, SaeMeta, SaeParts};
    let mut rng = dsg::data::SplitMix64::new(7);
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
        w_enc: t(draw(64 * d_sae, 0.4), &[64, d_sae]),
        b_enc: t(draw(d_sae, 0.1), &[d_sae]),
        w_dec: t(draw(d_sae * 64, 0.3), &[d_sae, 64]),
        b_dec: t(vec![0.0; 64], &[64]),
        activation: Activation::Relu,
        apply_b_dec_to_input: false,
        normalization: Normalization::None,
        hook: Some(hook),
        meta: SaeMeta::default(),
    })
    .unwrap()
}

/// `n` rows of `len` tokens drawn from `lo..hi` (seeded), token 1 (BOS) first.
pub fn token_rows(n: usize, len: usize, lo: u32, hi: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = dsg::data::SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let mut r = vec![1];
            r.extend((1..len).map(|_| lo + rng.below((hi - lo) as usize) as u32));
            r
        })
        .collect()
}

/// The placeholder SHA-256 the tiny guardrail records for its random SAE.
pub const RANDOM_SAE_SHA: &str = "abababababababababababababababababababababababababababababababab";

/// A guardrail on the tiny GGUF fixture, fitted with [`random_sae`] (32 latents at block 0) on
/// random token rows (forget ids 3..100, retain 150..256), 4 features, the paper's ρ gate.
pub fn tiny_guardrail(lm: &dsg::model::LoadedModel) -> dsg::guard::Guardrail {
    use dsg::guard::file::ArtifactIdentity;
    use dsg::guard::hook::artifact_sha256;
    use dsg::guard::{fit, FitConfig, Guardrail, PercentileRule, SelectionRule};
    use dsg::model::HookPoint;
    let sha = artifact_sha256(&fixture("gguf/tiny_f32.gguf")).unwrap();
    let sae = random_sae(32, HookPoint::resid_post(0));
    let id = |name: &str, sha256: &str| ArtifactIdentity {
        name: name.into(),
        sha256: sha256.into(),
    };
    let mut cfg = FitConfig::paper(
        id("tiny_f32.gguf", &sha),
        id("random", RANDOM_SAE_SHA),
        HookPoint::resid_post(0),
    );
    cfg.rule = SelectionRule::Percentile(PercentileRule::official(50.0));
    cfg.n_features = 4;
    cfg.special_ids = vec![1, 2];
    cfg.batch_size = 3;
    let (file, _, _) = fit(
        &lm.model,
        &sae,
        &token_rows(8, 24, 3, 100, 1),
        &token_rows(8, 24, 150, 256, 2),
        &cfg,
        &mut |_, _, _| {},
    )
    .unwrap();
    Guardrail::new(file, &sae, &sha, RANDOM_SAE_SHA, 64).unwrap()
}
