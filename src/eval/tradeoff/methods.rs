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

/// Every point of the sweep for a model whose SAE reads after block `layer`, the base model first.
/// Each method's main knob: c for the clamps; the steering coefficient and α for RMU; the learning
/// rate for gradient ascent and GradDiff; β for NPO.
pub fn sweep_points(sweep: Sweep, layer: usize) -> Vec<MethodPoint> {
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
                4,
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
            train_config(lora(), Objective::GradAscent, lr, 2),
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
                2,
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
                2,
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
            let points = sweep_points(sweep, 3);
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
        assert!(sweep_points(Sweep::Full, 3).len() > sweep_points(Sweep::Reduced, 3).len());
    }
}
