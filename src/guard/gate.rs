//! The gate: decides per row whether the guardrail clamps it (§2 of the spec).
//!
//! Every gate reads a row's token activity (`activity[t]`: some selected feature is > 0 at token
//! `t`; one flag per real token, position 0 of a BOS row already inactive, see
//! [`crate::stats::token_activity`]), reduces it to a score, and fires when the score is strictly
//! above its threshold.
//!
//! * [`Gate::Paper`]: `ρ = #active / L`, with `L` the row's real length (BOS included, padding
//!   not). The released rule `ρ > τ`. Benign text added to a prompt dilutes ρ.
//! * [`Gate::Window`]: the largest ρ over windows of `width` consecutive tokens (the whole row when
//!   shorter), so a dense forget passage fires however much benign text surrounds it.
//! * [`Gate::Cusum`]: one-sided CUSUM `S_t = max(0, S_{t-1} + a_t − drift)`, scored by `max_t S_t`;
//!   run over a whole conversation it accumulates evidence that is spread across turns.
//!
//! All scores are ≥ 0, so a negative threshold fires on every row (static clamping). Each gate
//! also runs incrementally ([`GateStream`]), one O(1) update per token, with results identical to
//! the batch computation; that is what a full-prefix gate during generation needs.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A gate kind, its parameters and its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Gate {
    /// The paper's gate: fires when `ρ > tau`.
    Paper {
        /// Threshold on the fraction of active tokens.
        tau: f64,
    },
    /// Fires when the densest window of `width` tokens has `ρ > tau`.
    Window {
        /// Window length in tokens (≥ 1).
        width: usize,
        /// Threshold on the windowed fraction.
        tau: f64,
    },
    /// Fires when the CUSUM of token activity exceeds `threshold`.
    Cusum {
        /// Subtracted per token; the activity rate the statistic tolerates indefinitely.
        drift: f64,
        /// Threshold on `max_t S_t`.
        threshold: f64,
    },
}

/// A gate's verdict on one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateDecision {
    /// The row's score under the gate.
    pub score: f64,
    /// Whether the score is strictly above the threshold.
    pub fired: bool,
}

impl Gate {
    /// Checks the parameters: `width ≥ 1`, a finite `drift ≥ 0`, a finite threshold (of any sign:
    /// a negative one clamps every active token). Errors name the field (`gate.width`, …).
    pub fn validate(&self) -> Result<()> {
        let finite = |field: &str, x: f64| {
            if x.is_finite() {
                Ok(())
            } else {
                Err(Error::out_of_range(field, x, "a finite number"))
            }
        };
        match *self {
            Gate::Paper { tau } => finite("gate.tau", tau),
            Gate::Window { width, tau } => {
                if width == 0 {
                    return Err(Error::out_of_range(
                        "gate.width",
                        width,
                        "a window of ≥ 1 token",
                    ));
                }
                finite("gate.tau", tau)
            }
            Gate::Cusum { drift, threshold } => {
                if !(drift.is_finite() && drift >= 0.0) {
                    return Err(Error::out_of_range(
                        "gate.drift",
                        drift,
                        "a finite number ≥ 0",
                    ));
                }
                finite("gate.threshold", threshold)
            }
        }
    }

    /// [`Gate::validate`], and a threshold a fitted gate can have: for ρ-style gates (paper,
    /// window) in [0, 1], for CUSUM ≥ 0 (scores are never negative, so a calibrated threshold is not
    /// either). What a guardrail file must hold.
    pub fn validate_fitted(&self) -> Result<()> {
        self.validate()?;
        match *self {
            Gate::Paper { tau } | Gate::Window { tau, .. } if !(0.0..=1.0).contains(&tau) => Err(
                Error::out_of_range("gate.tau", tau, "a fraction of active tokens in [0, 1]"),
            ),
            Gate::Cusum { threshold, .. } if threshold < 0.0 => Err(Error::out_of_range(
                "gate.threshold",
                threshold,
                "a CUSUM peak ≥ 0",
            )),
            _ => Ok(()),
        }
    }

    /// The threshold the score is compared with.
    pub fn threshold(&self) -> f64 {
        match *self {
            Gate::Paper { tau } | Gate::Window { tau, .. } => tau,
            Gate::Cusum { threshold, .. } => threshold,
        }
    }

    /// The same gate with another threshold.
    pub fn with_threshold(self, t: f64) -> Gate {
        match self {
            Gate::Paper { .. } => Gate::Paper { tau: t },
            Gate::Window { width, .. } => Gate::Window { width, tau: t },
            Gate::Cusum { drift, .. } => Gate::Cusum {
                drift,
                threshold: t,
            },
        }
    }

    /// The score of a whole row.
    pub fn score(&self, activity: &[bool]) -> f64 {
        match *self {
            Gate::Paper { .. } => fraction(count(activity), activity.len()),
            Gate::Window { width, .. } => {
                if activity.len() <= width {
                    return fraction(count(activity), activity.len());
                }
                let mut in_window = count(&activity[..width]);
                let mut densest = in_window;
                for t in width..activity.len() {
                    in_window =
                        in_window + usize::from(activity[t]) - usize::from(activity[t - width]);
                    densest = densest.max(in_window);
                }
                fraction(densest, width)
            }
            Gate::Cusum { drift, .. } => {
                let mut s = 0.0f64;
                let mut peak = 0.0f64;
                for &a in activity {
                    s = cusum_step(s, a, drift);
                    peak = peak.max(s);
                }
                peak
            }
        }
    }

    /// The verdict on a whole row.
    pub fn decide(&self, activity: &[bool]) -> GateDecision {
        let score = self.score(activity);
        GateDecision {
            score,
            fired: score > self.threshold(),
        }
    }

    /// An incremental evaluation of this gate, starting from an empty row.
    pub fn stream(&self) -> GateStream {
        let state = match *self {
            Gate::Paper { .. } => StreamState::Fraction,
            Gate::Window { width, .. } => StreamState::Window {
                recent: vec![false; width],
                in_window: 0,
                densest: 0,
            },
            Gate::Cusum { .. } => StreamState::Cusum { s: 0.0, peak: 0.0 },
        };
        GateStream {
            gate: *self,
            len: 0,
            active: 0,
            state,
        }
    }
}

fn count(activity: &[bool]) -> usize {
    activity.iter().filter(|&&a| a).count()
}

fn fraction(active: usize, len: usize) -> f64 {
    if len == 0 {
        0.0
    } else {
        active as f64 / len as f64
    }
}

fn cusum_step(s: f64, active: bool, drift: f64) -> f64 {
    (s + f64::from(u8::from(active)) - drift).max(0.0)
}

/// A gate evaluated token by token; after `push`ing a row's activity its [`GateStream::decision`]
/// equals [`Gate::decide`] on the whole row.
#[derive(Debug, Clone)]
pub struct GateStream {
    gate: Gate,
    len: usize,
    active: usize,
    state: StreamState,
}

#[derive(Debug, Clone)]
enum StreamState {
    Fraction,
    Window {
        /// The last `width` flags, as a ring indexed by position mod width.
        recent: Vec<bool>,
        in_window: usize,
        densest: usize,
    },
    Cusum {
        s: f64,
        peak: f64,
    },
}

impl GateStream {
    /// Adds the next token's activity.
    pub fn push(&mut self, active: bool) {
        match &mut self.state {
            StreamState::Fraction => {}
            StreamState::Window {
                recent,
                in_window,
                densest,
            } => {
                let slot = self.len % recent.len();
                *in_window = *in_window + usize::from(active) - usize::from(recent[slot]);
                recent[slot] = active;
                if self.len + 1 >= recent.len() {
                    *densest = (*densest).max(*in_window);
                }
            }
            StreamState::Cusum { s, peak } => {
                let Gate::Cusum { drift, .. } = self.gate else {
                    unreachable!("CUSUM state belongs to a CUSUM gate")
                };
                *s = cusum_step(*s, active, drift);
                *peak = peak.max(*s);
            }
        }
        self.len += 1;
        self.active += usize::from(active);
    }

    /// Tokens pushed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The verdict on the tokens pushed so far.
    pub fn decision(&self) -> GateDecision {
        let score = match &self.state {
            StreamState::Fraction => fraction(self.active, self.len),
            StreamState::Window {
                recent, densest, ..
            } => {
                if self.len <= recent.len() {
                    fraction(self.active, self.len)
                } else {
                    fraction(*densest, recent.len())
                }
            }
            StreamState::Cusum { peak, .. } => *peak,
        };
        GateDecision {
            score,
            fired: score > self.gate.threshold(),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn flags(s: &str) -> Vec<bool> {
        s.chars().map(|c| c == '1').collect()
    }

    #[test]
    fn paper_gate_is_strict_and_counts_bos_in_length() {
        // BOS (position 0) inactive but counted: ρ = 2 / 4.
        let row = flags("0101");
        let gate = Gate::Paper { tau: 0.5 };
        assert_eq!(
            gate.decide(&row),
            GateDecision {
                score: 0.5,
                fired: false
            }
        );
        assert!(Gate::Paper { tau: 0.49 }.decide(&row).fired);
        assert_eq!(gate.decide(&[]).score, 0.0);
        assert!(
            Gate::Paper { tau: -1.0 }.decide(&flags("000")).fired,
            "static clamping"
        );
    }

    #[test]
    fn window_gate_finds_the_dense_passage() {
        let row = flags("0000110111000000");
        assert_eq!(Gate::Paper { tau: 0.0 }.score(&row), 5.0 / 16.0);
        assert_eq!(Gate::Window { width: 4, tau: 0.0 }.score(&row), 0.75);
        assert_eq!(Gate::Window { width: 6, tau: 0.0 }.score(&row), 5.0 / 6.0);
        // Shorter than the window: the whole row.
        assert_eq!(
            Gate::Window {
                width: 32,
                tau: 0.0
            }
            .score(&row),
            5.0 / 16.0
        );
    }

    #[test]
    fn cusum_by_hand() {
        // drift 0.5: S = 0, 0.5, 1.0, 0.5, 1.0, 1.5, 1.0, 0.5, 0 → max 1.5
        let row = flags("011011000");
        let gate = Gate::Cusum {
            drift: 0.5,
            threshold: 1.4,
        };
        assert_eq!(
            gate.decide(&row),
            GateDecision {
                score: 1.5,
                fired: true
            }
        );
    }

    #[test]
    fn streaming_equals_batch_on_random_rows() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let gates = [
            Gate::Paper { tau: 0.3 },
            Gate::Window { width: 1, tau: 0.5 },
            Gate::Window { width: 7, tau: 0.4 },
            Gate::Cusum {
                drift: 0.3,
                threshold: 2.0,
            },
            Gate::Cusum {
                drift: 0.9,
                threshold: 0.5,
            },
        ];
        for _ in 0..200 {
            let len = rng.random_range(0..60);
            let density: f64 = rng.random();
            let row: Vec<bool> = (0..len).map(|_| rng.random_bool(density)).collect();
            for gate in gates {
                let mut stream = gate.stream();
                for (t, &a) in row.iter().enumerate() {
                    stream.push(a);
                    let prefix = gate.decide(&row[..=t]);
                    let got = stream.decision();
                    assert_eq!(
                        got.score.to_bits(),
                        prefix.score.to_bits(),
                        "{gate:?} {row:?}"
                    );
                    assert_eq!(got.fired, prefix.fired);
                }
                assert_eq!(stream.len(), len);
            }
        }
    }

    #[test]
    fn serde_and_validation() {
        let gate = Gate::Window {
            width: 64,
            tau: 0.25,
        };
        let json = serde_json::to_string(&gate).unwrap();
        assert_eq!(json, r#"{"kind":"window","width":64,"tau":0.25}"#);
        assert_eq!(serde_json::from_str::<Gate>(&json).unwrap(), gate);
        assert!(Gate::Window { width: 0, tau: 0.1 }.validate().is_err());
        assert!(Gate::Paper { tau: f64::NAN }.validate().is_err());
        assert_eq!(gate.with_threshold(0.5).threshold(), 0.5);
    }
}
