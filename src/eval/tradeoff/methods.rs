//! The methods `dsg bench tradeoff` compares and the knob values it sweeps for each: DSG as the
//! paper configures it and as dsg fits it, Farrell et al.'s static clamp, an always-on clamp of
//! DSG's features, and the training baselines (RMU, gradient ascent, GradDiff, NPO) built on
//! [`crate::train`].

use serde::{Deserialize, Serialize};

use crate::guard::Intervention;
use crate::train::{AdamWConfig, Decay, LoraSpec, Method, Objective, TrainConfig};

/// How large a sweep is: the reduced default (fits a 2-core hour) or the full one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sweep {
    /// One or two values of each method's main knob.
    Reduced,
    /// The wider grid (`--full`).
    Full,
}

/// Which guardrail a guard-based method uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardKind {
    /// The paper's configuration: N = 20, p_ratio 95, the ρ gate at P95 of the retain rows.
    DsgPaper,
    /// dsg's fit: the track's selection-split sweep over N, p_ratio and gate kind.
    DsgBest,
    /// Farrell et al.: retain-frequency selection, no gate, active features to −c.
    Static,
    /// DSG's features (dsg's fit) clamped on every input: the gate removed.
    AlwaysOn,
}

/// How one point of the sweep is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Recipe {
    /// The unmodified model.
    Base,
    /// A guardrail on the base model, acting by `intervention`.
    Guard {
        /// The guardrail.
        guard: GuardKind,
        /// What it does when its gate fires.
        intervention: Intervention,
    },
    /// A model unlearned by training.
    Train {
        /// The training run.
        config: TrainConfig,
    },
}

/// One point: a method at one knob setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodPoint {
    /// The method's name in tables and plots (`DSG (paper)`, `RMU`, …).
    pub method: String,
    /// The knob setting, as a label (`c=500`, `s=5 α=100`, `lr=5e-4`).
    pub knob: String,
    /// A file-name-safe identifier, unique in the sweep.
    pub id: String,
    /// How the point is made.
    pub recipe: Recipe,
}

/// The methods that are DSG itself (the goal compares them with the rest).
pub fn is_dsg(method: &str) -> bool {
    method.starts_with("DSG")
}

/// The LoRA every gradient baseline trains (rank 16, α 32, every projection): open-unlearning
/// trains every weight, which costs 2–3× more here (see BENCHMARKS.md).
fn lora() -> Method {
    Method::Lora(LoraSpec::all_projections(16, 32.0))
}

fn train_config(method: Method, objective: Objective, lr: f64, epochs: usize) -> TrainConfig {
    TrainConfig {
        method,
        epochs,
        max_steps: None,
        batch_size: 8,
        grad_accum: 1,
        lr,
        warmup_steps: 0,
        decay: Decay::Constant,
        adamw: AdamWConfig::default(),
        max_grad_norm: Some(1.0),
        seed: 0,
        objective,
    }
}

fn guard(method: &str, kind: GuardKind, i: Intervention) -> MethodPoint {
    let knob = i.to_string();
    MethodPoint {
        method: method.to_string(),
        id: format!("{}-{}", method_id(method), slug(&knob)),
        knob,
        recipe: Recipe::Guard {
            guard: kind,
            intervention: i,
        },
    }
}

fn trained(method: &str, knob: String, config: TrainConfig) -> MethodPoint {
    MethodPoint {
        method: method.to_string(),
        id: format!("{}-{}", method_id(method), slug(&knob)),
        knob,
        recipe: Recipe::Train { config },
    }
}

/// `knob` with every run of characters other than ASCII letters and digits as one `_`.
fn slug(knob: &str) -> String {
    let mut out = String::new();
    for c in knob.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

fn method_id(method: &str) -> String {
    method
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == ' ')
        .collect::<String>()
        .trim()
        .replace(' ', "_")
        .to_lowercase()
}

fn clamp(c: f64) -> Intervention {
    Intervention::Clamp {
        clamp: crate::guard::ClampSpec::paper(c),
    }
}

fn farrell(c: f64) -> Intervention {
    Intervention::Clamp {
        clamp: crate::guard::ClampSpec::farrell(c),
    }
}

fn norm(scale: f64) -> Intervention {
    format!("norm:{scale}")
        .parse()
        .expect("a valid norm-scaled clamp")
}

/// Training epochs of the baselines: RMU's, and the NLL-based objectives' (gradient ascent,
/// GradDiff, NPO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epochs {
    /// RMU's epochs.
    pub rmu: usize,
    /// Gradient ascent's, GradDiff's and NPO's epochs.
    pub gradient: usize,
}

impl Epochs {
    /// Track K (128 forget rows, batch 8: 16 steps an epoch): 64 RMU steps, 32 for the rest.
    pub const KNOWLEDGE: Epochs = Epochs {
        rmu: 4,
        gradient: 2,
    };
    /// Track T (TOFU's 40 forget rows, 5 steps an epoch): about Track K's step counts.
    pub const TOFU: Epochs = Epochs {
        rmu: 12,
        gradient: 6,
    };
}

/// Track T's reduced sweep: one setting of each training baseline (the middle of Track K's),
/// since every TOFU evaluation takes minutes; `--full` runs [`sweep_points`]' full grid.
const TOFU_REDUCED_SKIP: [&str; 3] = ["rmu-s_2_10", "gradient_ascent-lr_5e_4", "npo-1"];

/// Track T's points: [`sweep_points`] with [`Epochs::TOFU`], the reduced sweep without
/// RMU s=2, gradient ascent lr=5e-4 and NPO β=1. Each TOFU evaluation takes 5–10 minutes on 2
/// cores, so the order puts what the comparison needs first: the target, DSG's paper point and
/// dsg's norm-relative point, every training baseline, then the other clamps; a run cut short
/// still compares DSG with every baseline.
pub fn tofu_points(sweep: Sweep, layer: usize) -> Vec<MethodPoint> {
    let rank = |p: &MethodPoint| match &p.recipe {
        Recipe::Base => 0,
        Recipe::Guard {
            guard: GuardKind::DsgPaper,
            ..
        } => 1,
        Recipe::Guard {
            guard: GuardKind::DsgBest,
            intervention:
                Intervention::Clamp {
                    clamp: crate::guard::ClampSpec::NormRelative { .. },
                },
        } => 2,
        Recipe::Train { .. } => 3,
        Recipe::Guard { .. } => 4,
    };
    let mut points: Vec<MethodPoint> = sweep_points(sweep, layer, Epochs::TOFU)
        .into_iter()
        .filter(|p| sweep == Sweep::Full || !TOFU_REDUCED_SKIP.contains(&p.id.as_str()))
        .collect();
    points.sort_by_key(rank);
    points
}

/// Every point of the sweep for a model whose SAE reads after block `layer`, the base model first.
/// Each method's main knob: c for the clamps; the steering coefficient and α for RMU; the learning
/// rate for gradient ascent and GradDiff; β for NPO.
pub fn sweep_points(sweep: Sweep, layer: usize, epochs: Epochs) -> Vec<MethodPoint> {
    let full = sweep == Sweep::Full;
    let mut points = vec![MethodPoint {
        method: "base".into(),
        knob: "-".into(),
        id: "base".into(),
        recipe: Recipe::Base,
    }];
    let cs: &[f64] = if full {
        &[25.0, 100.0, 500.0]
    } else {
        &[500.0]
    };
    for &c in cs {
        points.push(guard("DSG (paper)", GuardKind::DsgPaper, clamp(c)));
    }
    let mut best = vec![clamp(500.0), norm(0.5)];
    if full {
        best.extend([clamp(100.0), norm(0.25), norm(1.0), Intervention::Refuse]);
    }
    for i in best {
        points.push(guard("DSG (dsg)", GuardKind::DsgBest, i));
    }
    for &c in cs {
        points.push(guard(
            "static clamp (Farrell)",
            GuardKind::Static,
            farrell(c),
        ));
    }
    let always: Vec<Intervention> = if full {
        vec![clamp(500.0), norm(0.5)]
    } else {
        vec![norm(0.5)]
    };
    for i in always {
        points.push(guard("always-on clamp", GuardKind::AlwaysOn, i));
    }
    // RMU: adaptive steering (a multiple of the frozen model's activation norm at the layer, so the
    // coefficient transfers across models), the reference's MLP down-projections of blocks l−2…l.
    let rmu: &[(f64, f64)] = if full {
        &[
            (1.0, 10.0),
            (2.0, 10.0),
            (5.0, 10.0),
            (2.0, 100.0),
            (5.0, 100.0),
        ]
    } else {
        &[(2.0, 10.0), (5.0, 10.0)]
    };
    for &(s, alpha) in rmu {
        points.push(trained(
            "RMU",
            format!("s={s} α={alpha}"),
            train_config(
                Method::Weights(crate::train::rmu::rmu_parameters(layer)),
                Objective::Rmu {
                    layer,
                    steering: s,
                    alpha,
                    adaptive: true,
                },
                5e-4,
                epochs.rmu,
            ),
        ));
    }
    let lrs: &[f64] = if full {
        &[1e-4, 3e-4, 1e-3]
    } else {
        &[1e-4, 5e-4]
    };
    for &lr in lrs {
        points.push(trained(
            "gradient ascent",
            format!("lr={lr:e}"),
            train_config(lora(), Objective::GradAscent, lr, epochs.gradient),
        ));
    }
    let gd: &[f64] = if full { &[3e-4, 1e-3] } else { &[5e-4] };
    for &lr in gd {
        points.push(trained(
            "GradDiff",
            format!("lr={lr:e}"),
            train_config(
                lora(),
                Objective::GradDiff {
                    alpha: 1.0,
                    gamma: 1.0,
                },
                lr,
                epochs.gradient,
            ),
        ));
    }
    let betas: &[f64] = if full {
        &[0.05, 0.1, 0.5, 1.0]
    } else {
        &[0.1, 1.0]
    };
    for &beta in betas {
        points.push(trained(
            "NPO",
            format!("β={beta}"),
            train_config(
                lora(),
                Objective::Npo {
                    beta,
                    alpha: 1.0,
                    gamma: 1.0,
                },
                5e-4,
                epochs.gradient,
            ),
        ));
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_every_method_is_swept() {
        for sweep in [Sweep::Reduced, Sweep::Full] {
            let points = sweep_points(sweep, 3, Epochs::KNOWLEDGE);
            let mut ids: Vec<&str> = points.iter().map(|p| p.id.as_str()).collect();
            ids.sort();
            let n = ids.len();
            ids.dedup();
            assert_eq!(ids.len(), n, "{ids:?}");
            for m in [
                "base",
                "DSG (paper)",
                "DSG (dsg)",
                "static clamp (Farrell)",
                "always-on clamp",
                "RMU",
                "gradient ascent",
                "GradDiff",
                "NPO",
            ] {
                assert!(points.iter().any(|p| p.method == m), "{m} missing");
            }
            for p in &points {
                if let Recipe::Train { config } = &p.recipe {
                    config.validate().unwrap();
                }
                assert!(p
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)));
            }
        }
        assert!(
            sweep_points(Sweep::Full, 3, Epochs::KNOWLEDGE).len()
                > sweep_points(Sweep::Reduced, 3, Epochs::KNOWLEDGE).len()
        );
    }

    #[test]
    fn the_tofu_sweep_keeps_one_setting_of_each_baseline() {
        let reduced = tofu_points(Sweep::Reduced, 3);
        for skipped in TOFU_REDUCED_SKIP {
            assert!(
                sweep_points(Sweep::Reduced, 3, Epochs::TOFU)
                    .iter()
                    .any(|p| p.id == skipped),
                "{skipped} names a point of the reduced sweep"
            );
            assert!(!reduced.iter().any(|p| p.id == skipped));
        }
        for m in ["RMU", "gradient ascent", "GradDiff", "NPO"] {
            assert_eq!(reduced.iter().filter(|p| p.method == m).count(), 1, "{m}");
        }
        let epochs: Vec<usize> = reduced
            .iter()
            .filter_map(|p| match &p.recipe {
                Recipe::Train { config } => Some(config.epochs),
                _ => None,
            })
            .collect();
        assert_eq!(epochs, vec![12, 6, 6, 6]);
        let ids: Vec<&str> = reduced.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "base",
                "dsg_paper-clamp_500",
                "dsg_dsg-norm_0_5",
                "rmu-s_5_10",
                "gradient_ascent-lr_1e_4",
                "graddiff-lr_5e_4",
                "npo-0_1",
                "dsg_dsg-clamp_500",
                "static_clamp_farrell-farrell_500",
                "alwayson_clamp-norm_0_5",
            ]
        );
        assert_eq!(
            tofu_points(Sweep::Full, 3).len(),
            sweep_points(Sweep::Full, 3, Epochs::TOFU).len()
        );
    }
}
