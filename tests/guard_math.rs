//! End-to-end checks of the guardrail maths on synthetic SAE latents: statistics → selection →
//! calibration → gate → clamp, with features 3 and 7 specific to the forget corpus.

use candle_core::{Device, Tensor};
use dsg::guard::calibrate::rate_above;
use dsg::guard::select::PercentileRule;
use dsg::guard::{
    calibrate, clamp_mask, clamp_residual, percentile, ClampSpec, Gate, SelectionRule,
};
use dsg::model::HookPoint;
use dsg::stats::{select_features, token_activity, FeatureStats, RowActivity, StatsProvenance};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const D_SAE: usize = 32;
const D_MODEL: usize = 8;
const SEQ: usize = 64;
const ROWS: usize = 60;
const FORGET_FEATURES: [usize; 2] = [3, 7];
/// Fires often and strongly on both corpora: high forget importance, ratio ≈ 1.
const COMMON_FEATURE: usize = 11;

/// One token's latents. `forget_rate` is the probability that some forget feature fires.
fn token(rng: &mut StdRng, forget_rate: f64) -> Vec<f32> {
    let per_feature = 1.0 - (1.0 - forget_rate).sqrt();
    (0..D_SAE)
        .map(|f| {
            let p = if FORGET_FEATURES.contains(&f) {
                per_feature
            } else if f == COMMON_FEATURE {
                0.5
            } else {
                0.05
            };
            let scale = if f == COMMON_FEATURE { 10.0 } else { 1.0 };
            if rng.random_bool(p) {
                scale * rng.random_range(1.0..3.0)
            } else {
                0.0
            }
        })
        .collect()
}

/// A right-padded batch of rows (BOS first), with rates drawn per row; padding holds garbage.
fn corpus(rng: &mut StdRng, rate: impl Fn(&mut StdRng) -> f64) -> (Tensor, Vec<usize>) {
    let mut values = Vec::with_capacity(ROWS * SEQ * D_SAE);
    let mut lengths = Vec::with_capacity(ROWS);
    for _ in 0..ROWS {
        let len = rng.random_range(40..=SEQ);
        let r = rate(rng);
        for t in 0..SEQ {
            if t < len {
                values.extend(token(rng, r));
            } else {
                values.extend([99.0; D_SAE]);
            }
        }
        lengths.push(len);
    }
    let tensor = Tensor::from_vec(values, (ROWS, SEQ, D_SAE), &Device::Cpu).unwrap();
    (tensor, lengths)
}

fn stats_of(latents: &Tensor, lengths: &[usize], name: &str) -> FeatureStats {
    let provenance = StatsProvenance {
        corpus: name.into(),
        hook_point: HookPoint::resid_post(3),
        sae_id: "synthetic".into(),
    };
    let counted: Vec<Vec<bool>> = lengths
        .iter()
        .map(|&l| (0..l).map(|t| t > 0).collect())
        .collect();
    let mut stats = FeatureStats::new(D_SAE, provenance);
    stats.add_batch(latents, &counted).unwrap();
    stats
}

/// A single prompt: BOS, then segments of (length, forget rate).
fn prompt(rng: &mut StdRng, segments: &[(usize, f64)]) -> Tensor {
    let mut values = vec![0.0; D_SAE];
    for &(len, rate) in segments {
        for _ in 0..len {
            values.extend(token(rng, rate));
        }
    }
    let len = values.len() / D_SAE;
    Tensor::from_vec(values, (len, D_SAE), &Device::Cpu).unwrap()
}

fn activity_of(latents: &Tensor, features: &[u32]) -> Vec<bool> {
    let selected = select_features(latents, features).unwrap();
    let len = latents.dim(0).unwrap();
    token_activity(&selected, &[len], true).unwrap().remove(0)
}

#[test]
fn synthetic_pipeline_selects_calibrates_gates_and_clamps() {
    let mut rng = StdRng::seed_from_u64(2025);
    let (forget, forget_len) = corpus(&mut rng, |_| 0.9);
    let (retain, retain_len) = corpus(&mut rng, |rng| rng.random_range(0.0..0.5));
    let forget_stats = stats_of(&forget, &forget_len, "forget");
    let retain_stats = stats_of(&retain, &retain_len, "retain");

    // Selection: the ratio filter removes the strong common feature; 3 and 7 come first.
    let ranking = SelectionRule::Percentile(PercentileRule::official(90.0))
        .rank(&forget_stats, &retain_stats)
        .unwrap();
    let mut top = ranking.top(2).unwrap().to_vec();
    top.sort();
    assert_eq!(top, vec![3, 7]);
    assert!(!ranking.order.contains(&(COMMON_FEATURE as u32)));
    let no_ratio_filter = SelectionRule::Percentile(PercentileRule::official(0.0));
    let unfiltered = no_ratio_filter.rank(&forget_stats, &retain_stats).unwrap();
    assert_eq!(unfiltered.order[0], COMMON_FEATURE as u32);
    let selected = ranking.top(2).unwrap();

    // Activity recorded once (all features) equals the two-pass fixed-set path.
    let mut record = RowActivity::new(D_SAE, None).unwrap();
    record.push_batch(&retain, &retain_len, true).unwrap();
    let retain_activity = record.activity(selected).unwrap();
    let two_pass = token_activity(
        &select_features(&retain, selected).unwrap(),
        &retain_len,
        true,
    )
    .unwrap();
    assert_eq!(retain_activity, two_pass);

    // τ is the linear 95th percentile of the retain ρ (BOS counted in L, padding not).
    let rho: Vec<f64> = retain_activity
        .iter()
        .map(|row| row.iter().filter(|&&a| a).count() as f64 / row.len() as f64)
        .collect();
    let paper = calibrate(Gate::Paper { tau: 0.0 }, &retain_activity, 95.0).unwrap();
    assert_eq!(
        paper.gate.threshold().to_bits(),
        percentile(&rho, 95.0).unwrap().to_bits()
    );
    assert!(paper.false_positive_rate() <= 0.05);
    let window = calibrate(
        Gate::Window {
            width: 32,
            tau: 0.0,
        },
        &retain_activity,
        95.0,
    )
    .unwrap();
    let cusum = calibrate(
        Gate::Cusum {
            drift: 0.5,
            threshold: 0.0,
        },
        &retain_activity,
        95.0,
    )
    .unwrap();

    // Every gate catches an undiluted forget prompt.
    let direct = activity_of(&prompt(&mut rng, &[(48, 0.9)]), selected);
    for gate in [paper.gate, window.gate, cusum.gate] {
        assert!(
            gate.decide(&direct).fired,
            "{gate:?} misses a plain forget prompt"
        );
    }

    // A forget passage diluted by 5× benign text: the paper gate misses it, window and CUSUM do not.
    let diluted_latents = prompt(&mut rng, &[(40, 0.9), (200, 0.1)]);
    let diluted = activity_of(&diluted_latents, selected);
    let verdict = paper.gate.decide(&diluted);
    assert!(
        !verdict.fired,
        "paper gate: ρ = {} vs τ = {}",
        verdict.score,
        paper.gate.threshold()
    );
    assert!(window.gate.decide(&diluted).fired);
    assert!(cusum.gate.decide(&diluted).fired);

    // Benign prompts stay below the window gate about as often as calibrated.
    let benign: Vec<f64> = (0..40)
        .map(|_| {
            window
                .gate
                .score(&activity_of(&prompt(&mut rng, &[(60, 0.1)]), selected))
        })
        .collect();
    assert!(rate_above(&benign, window.gate.threshold()) <= 0.1);

    // Clamp the diluted prompt: an exact residual edit at active tokens only.
    let decoder = Tensor::from_vec(
        (0..D_SAE * D_MODEL)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect::<Vec<_>>(),
        (D_SAE, D_MODEL),
        &Device::Cpu,
    )
    .unwrap();
    let len = diluted.len();
    let h = Tensor::randn(0f32, 1.0, (len, D_MODEL), &Device::Cpu).unwrap();
    let mask = clamp_mask(&diluted, window.gate.decide(&diluted).fired);
    let a = select_features(&diluted_latents, selected).unwrap();
    let ids = Tensor::from_slice(selected, selected.len(), &Device::Cpu).unwrap();
    let w = decoder.index_select(&ids, 0).unwrap();
    let out = clamp_residual(&h, &a, &w, &mask, &ClampSpec::paper(500.0)).unwrap();
    let (h_rows, out_rows): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
        (h.to_vec2().unwrap(), out.to_vec2().unwrap());
    let a_rows: Vec<Vec<f32>> = a.to_vec2().unwrap();
    let w_rows: Vec<Vec<f32>> = w.to_vec2().unwrap();
    assert!(!mask[0] && mask.iter().any(|&m| m));
    for t in 0..len {
        if !mask[t] {
            assert_eq!(out_rows[t], h_rows[t], "unclamped token {t} changed");
            continue;
        }
        for k in 0..D_MODEL {
            let delta: f32 = (0..2).map(|j| (-500.0 - a_rows[t][j]) * w_rows[j][k]).sum();
            assert!((out_rows[t][k] - (h_rows[t][k] + delta)).abs() < 1e-3);
        }
    }
}

#[test]
fn streaming_gate_matches_batch_over_a_generated_conversation() {
    // Policy "recompute ρ over the full prefix at every step" in O(1) per token.
    let mut rng = StdRng::seed_from_u64(9);
    let conversation = activity_of(
        &prompt(&mut rng, &[(30, 0.05), (10, 0.9), (30, 0.05), (10, 0.9)]),
        &[3, 7],
    );
    for gate in [
        Gate::Paper { tau: 0.2 },
        Gate::Window {
            width: 16,
            tau: 0.6,
        },
        Gate::Cusum {
            drift: 0.3,
            threshold: 3.0,
        },
    ] {
        let mut stream = gate.stream();
        for (t, &a) in conversation.iter().enumerate() {
            stream.push(a);
            assert_eq!(stream.decision(), gate.decide(&conversation[..=t]));
        }
    }
}
