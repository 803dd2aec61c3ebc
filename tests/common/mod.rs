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
