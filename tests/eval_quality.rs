//! Next-token KL to the unguarded model on the tiny GGUF fixture: zero for the model against itself,
//! and equal to a KL computed directly from the two passes' full logits when a hook shifts the
//! residual stream.

mod common;

use candle_core::{Device, Tensor};
use dsg::data::SplitMix64;
use dsg::eval::quality::next_token_kl;
use dsg::model::{self, Batch, FnHook, ForwardOptions, HookPoint, Hooks, Logits, Model, NoHooks};

fn tiny() -> Model {
    model::load(&common::fixture("gguf/tiny_f32.gguf"), &Device::Cpu)
        .unwrap()
        .model
}

fn tokens(model: &Model, n: usize) -> Vec<u32> {
    let vocab = model.config().vocab_size;
    let mut rng = SplitMix64::new(3);
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

/// Adds 0.5 to every element of the residual after block 0 (one row, so no padding to spare).
fn shift() -> impl Hooks {
    FnHook::new(HookPoint::resid_post(0), |_, act: &Tensor| {
        Ok(Some(act.affine(1.0, 0.5)?))
    })
}

/// All logits of one window as f64 rows.
fn all_logits(model: &Model, row: &[u32], hooks: &mut dyn Hooks) -> Vec<Vec<f64>> {
    let opts = ForwardOptions {
        logits: Logits::All,
        ..Default::default()
    };
    let batch = Batch::single(row.to_vec(), &Device::Cpu).unwrap();
    let logits = model
        .forward(&batch, &opts, hooks, None)
        .unwrap()
        .logits
        .unwrap();
    logits
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    row.iter().map(|x| x - lse).collect()
}

#[test]
fn kl_of_the_model_with_itself_is_zero() {
    let model = tiny();
    let ids = tokens(&model, 21);
    let r = next_token_kl(&model, &ids, 8, &mut NoHooks, &mut NoHooks).unwrap();
    // Windows of 8, 8 and 5 tokens predict 7 + 7 + 4 positions.
    assert_eq!((r.n_windows, r.n_predicted, r.kl.len()), (3, 18, 18));
    assert!(r.max_kl <= 1e-9, "{r:?}");
    assert_eq!(r.changed_fraction, 0.0);
    assert_eq!(r.base_perplexity, r.guarded_perplexity);
    let ppl = dsg::eval::perplexity::perplexity(&model, &ids, 8, &mut NoHooks).unwrap();
    assert!((r.base_perplexity - ppl.perplexity).abs() <= 1e-4 * ppl.perplexity);
}

#[test]
fn kl_under_a_residual_shift_matches_a_direct_computation() {
    let model = tiny();
    let ids = tokens(&model, 21);
    let window = 8;
    let r = next_token_kl(&model, &ids, window, &mut NoHooks, &mut shift()).unwrap();
    let mut direct = Vec::new();
    let mut guarded_nll = 0.0;
    for chunk in ids.chunks(window).filter(|c| c.len() >= 2) {
        let p = all_logits(&model, chunk, &mut NoHooks);
        let q = all_logits(&model, chunk, &mut shift());
        for t in 0..chunk.len() - 1 {
            let (lp, lq) = (log_softmax(&p[t]), log_softmax(&q[t]));
            let mut kl = 0.0;
            for v in 0..lp.len() {
                kl += lp[v].exp() * (lp[v] - lq[v]);
            }
            direct.push(kl);
            guarded_nll -= lq[chunk[t + 1] as usize];
        }
    }
    assert_eq!(direct.len(), r.kl.len());
    for (i, (a, b)) in r.kl.iter().zip(&direct).enumerate() {
        assert!((a - b).abs() <= 1e-6, "position {i}: {a} vs {b}");
    }
    assert!(r.mean_kl > 0.0 && r.max_kl >= r.mean_kl, "{r:?}");
    assert!(r.changed_fraction > 0.0);
    let ppl = (guarded_nll / direct.len() as f64).exp();
    assert!(
        (r.guarded_perplexity - ppl).abs() <= 1e-6 * ppl,
        "{} vs {ppl}",
        r.guarded_perplexity
    );
}

#[test]
fn short_inputs_and_windows_are_refused() {
    let model = tiny();
    let e = next_token_kl(&model, &[1], 8, &mut NoHooks, &mut NoHooks).unwrap_err();
    assert!(e.to_string().contains("at least 2 tokens"), "{e}");
    let e = next_token_kl(&model, &[1, 2, 3], 1, &mut NoHooks, &mut NoHooks).unwrap_err();
    assert!(e.to_string().starts_with("window (--window): 1"), "{e}");
}
