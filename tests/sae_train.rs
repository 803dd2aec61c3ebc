//! SAE training: convergence and AuxK on a synthetic sparse problem, exact resume, the metrics
//! by hand, the WMDP split rule against the shared split files, and the shipped default SAE.

mod common;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use dsg::data::{self, Split};
use dsg::eval::metrics::auroc;
use dsg::model::HookPoint;
use dsg::sae::metrics::ReconStats;
use dsg::sae::train::{ActivationSource, TrainConfig, Trainer};
use dsg::sae::SaeMeta;

const D_IN: usize = 16;
const CHUNK: usize = 2048;

/// Activations that are sums of 3 of `n` fixed random unit directions with magnitudes in [1, 3],
/// plus an offset; chunk `c` is a pure function of `c`.
struct Synthetic {
    dirs: Vec<Vec<f32>>,
}

impl Synthetic {
    /// `n` directions inside the span of the first `sub` coordinates.
    fn new(n: usize, sub: usize) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let dirs = (0..n)
            .map(|_| {
                let v: Vec<f32> = (0..D_IN)
                    .map(|i| {
                        if i < sub {
                            rng.random::<f32>() - 0.5
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / n).collect()
            })
            .collect();
        Synthetic { dirs }
    }
}

impl ActivationSource for Synthetic {
    fn chunk_tokens(&self) -> usize {
        CHUNK
    }
    fn chunk(&mut self, index: usize) -> dsg::Result<Tensor> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(100 + index as u64);
        let mut data = Vec::with_capacity(CHUNK * D_IN);
        for _ in 0..CHUNK {
            let mut x = vec![0.5f32; D_IN];
            for _ in 0..3 {
                let d = &self.dirs[rng.random_range(0..self.dirs.len())];
                let a = 1.0 + 2.0 * rng.random::<f32>();
                x.iter_mut().zip(d).for_each(|(x, d)| *x += a * d);
            }
            data.extend(x);
        }
        Ok(Tensor::from_vec(data, (CHUNK, D_IN), &Device::Cpu)?)
    }
}

fn config(d_sae: usize, steps: usize, aux_coef: f64) -> TrainConfig {
    TrainConfig {
        hook: HookPoint::resid_post(0),
        d_sae,
        k: 4,
        k_aux: 8,
        aux_coef,
        dead_tokens: 2048,
        batch_size: 256,
        lr: 1e-2,
        warmup_steps: 10,
        decay_fraction: 0.2,
        total_tokens: (steps * 256) as u64,
        seed: 3,
    }
}

/// FVU of `trainer`'s SAE on a fresh synthetic chunk.
fn held_out_fvu(trainer: &Trainer, src: &mut Synthetic) -> f64 {
    let sae = trainer.to_sae(SaeMeta::default()).unwrap();
    let x = src.chunk(9999).unwrap();
    let f = sae.encode(&x).unwrap();
    let mut s = ReconStats::new(D_IN, sae.d_sae());
    s.add(&x, &sae.decode(&f).unwrap(), &f).unwrap();
    s.fvu()
}

#[test]
fn topk_training_learns_a_sparse_code() {
    let mut src = Synthetic::new(32, D_IN);
    let mut t = Trainer::new(config(64, 400, 1.0 / 32.0), &src.chunk(0).unwrap()).unwrap();
    let before = held_out_fvu(&t, &mut src);
    t.run(&mut src, &mut |_, _| Ok(())).unwrap();
    let after = held_out_fvu(&t, &mut src);
    assert!(after < 0.1, "FVU {before:.3} → {after:.3}, wanted < 0.1");
}

/// Bound for the default SAE's FVU on the held-out slice: issue #15's target (its model card has
/// the measured value).
const MAX_DEFAULT_FVU: f64 = 0.1;

#[test]
fn resume_from_checkpoint_equals_an_uninterrupted_run() {
    let dir = std::env::temp_dir().join(format!("dsg-sae-resume-{}", std::process::id()));
    let mut src = Synthetic::new(32, D_IN);
    let first = src.chunk(0).unwrap();
    let mut whole = Trainer::new(config(32, 40, 1.0 / 32.0), &first).unwrap();
    whole.run(&mut src, &mut |_, _| Ok(())).unwrap();

    let mut part = Trainer::new(config(32, 40, 1.0 / 32.0), &first).unwrap();
    let stop = std::cell::Cell::new(false);
    // Interrupt after step 17 (mid-chunk) by checkpointing and abandoning the run.
    let _ = part.run(&mut src, &mut |t, s| {
        if s.step == 17 {
            t.save_checkpoint(&dir)?;
            stop.set(true);
            return Err(dsg::Error::Invalid("interrupted".into()));
        }
        Ok(())
    });
    assert!(stop.get());
    let mut resumed = Trainer::load_checkpoint(&dir, &Device::Cpu).unwrap();
    assert_eq!(resumed.step_count(), 18);
    resumed.run(&mut src, &mut |_, _| Ok(())).unwrap();
    let a = whole.to_sae(SaeMeta::default()).unwrap();
    let b = resumed.to_sae(SaeMeta::default()).unwrap();
    for (x, y) in [
        (a.w_enc(), b.w_enc()),
        (a.w_dec(), b.w_dec()),
        (a.b_dec(), b.b_dec()),
    ] {
        assert_eq!(common::max_abs_diff(x, y), 0.0);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn metrics_by_hand() {
    let t = |v: &[f32], r: usize, c: usize| Tensor::from_slice(v, (r, c), &Device::Cpu).unwrap();
    // x = [[1,0],[3,0]]: mean [2,0], Σ‖x−mean‖² = 2. x̂ = [[1,1],[3,0]]: Σ‖x−x̂‖² = 1 → FVU 0.5.
    let x = t(&[1.0, 0.0, 3.0, 0.0], 2, 2);
    let x_hat = t(&[1.0, 1.0, 3.0, 0.0], 2, 2);
    // Latents: token 0 fires latent 0, token 1 fires latents 0 and 2; latent 1 never fires.
    let f = t(&[0.5, 0.0, 0.0, 1.0, 0.0, 2.0], 2, 3);
    let mut s = ReconStats::new(2, 3);
    s.add(&x, &x_hat, &f).unwrap();
    assert!((s.fvu() - 0.5).abs() < 1e-12);
    assert!((s.l0() - 1.5).abs() < 1e-12);
    assert!((s.dead_fraction() - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(auroc(&[3.0, 2.0], &[1.0, 0.0]).unwrap(), 1.0);
    assert_eq!(auroc(&[1.0], &[1.0]).unwrap(), 0.5);
    assert_eq!(auroc(&[1.0, 3.0], &[2.0]).unwrap(), 0.5);
}

#[test]
fn wmdp_split_matches_the_shared_split_files() {
    for name in ["bio", "cyber", "chem"] {
        let (Some(q), Some(s)) = (
            common::shared_data_or_skip(&format!("wmdp/{name}_questions.json")),
            common::shared_data_or_skip(&format!("splits/wmdp-{name}.json")),
        ) else {
            continue;
        };
        let qs: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&q).unwrap()).unwrap();
        let split: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&s).unwrap()).unwrap();
        let want: Vec<u64> = split["selection"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let got: Vec<u64> = qs
            .iter()
            .enumerate()
            .filter(|(_, v)| Split::of(v["question"].as_str().unwrap()) == Split::Selection)
            .map(|(i, _)| i as u64)
            .collect();
        assert_eq!(got, want, "{name}");
        let texts = data::read_documents(&q, Split::Selection).unwrap();
        assert_eq!(texts.len(), want.len());
    }
}

/// The committed default SAE on held-out WikiText (the tokenised *valid* split; training used the
/// raw *test* split), through the real default model.
#[test]
fn default_sae_reconstructs_held_out_wikitext() {
    let Some(text) = common::shared_data_or_skip("wikitext/wikitext-2-tokenized.valid.txt") else {
        return;
    };
    let sae = dsg::sae::default_sae(&Device::Cpu).unwrap();
    let hook = sae.hook().expect("the default SAE records its hook");
    let lm = dsg::model::load(
        &dsg::model::fetch::ensure_default_model().unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    sae.check_model(lm.model.config().d_model, lm.model.config().n_layers)
        .unwrap();
    let raw = std::fs::read_to_string(&text).unwrap();
    let doc = raw.chars().take(20_000).collect::<String>();
    let rows = data::token_rows(&lm.tokenizer, &[doc], 128).unwrap();
    let mut s = ReconStats::new(sae.d_in(), sae.d_sae());
    for row in rows.iter().take(4) {
        let x = dsg::sae::collect::hook_activations(&lm.model, hook, std::slice::from_ref(row))
            .unwrap();
        let f = sae.encode(&x).unwrap();
        s.add(&x, &sae.decode(&f).unwrap(), &f).unwrap();
    }
    assert!(s.fvu() <= MAX_DEFAULT_FVU, "FVU {:.3}", s.fvu());
    let dsg::sae::Activation::TopK { k } = *sae.activation() else {
        panic!("the default SAE is a TopK SAE");
    };
    assert!(s.l0() <= k as f64, "L0 {} > k {k}", s.l0());
}
