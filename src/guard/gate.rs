//! The gate: decides per row whether the guardrail clamps it (§2 of the spec).
//!
//! Every gate reads a row's token signal `a_t`, reduces it to a score, and fires when the score is
//! strictly above its threshold. For an SAE gate the signal is token activity (`a_t` = 1 when some
//! selected feature is > 0 at token `t`; one flag per real token, position 0 of a BOS row already
//! inactive, see [`crate::stats::token_activity`]); for a probe gate it is the probe's per-token
//! logit ([`crate::guard::probe`]). Any [`TokenSignal`] will do:
//!
//! * [`Gate::Paper`]: the mean of the signal over the row's `L` real tokens (BOS included, padding
//!   not): for activity `ρ = #active / L`, the released rule `ρ > τ`; for a probe, mean pooling.
//!   Benign text added to a prompt dilutes it.
//! * [`Gate::Window`]: the largest mean over windows of `width` consecutive tokens (the whole row
//!   when shorter; for a probe, max-of-rolling-mean pooling), so a dense forget passage fires
//!   however much benign text surrounds it.
//! * [`Gate::Cusum`]: one-sided CUSUM `S_t = max(0, S_{t-1} + a_t − drift)`, scored by `max_t S_t`;
//!   run over a whole conversation it accumulates evidence that is spread across turns.
//!
//! On activity all scores are ≥ 0, so a negative threshold fires on every row (static clamping).
//! Each gate also runs incrementally ([`GateStream`]), one O(1) update per token, with results
//! identical to the batch computation bit for bit (the same additions in the same order); that is
//! what a full-prefix gate during generation needs. On 0/1 activity every sum is an exact integer.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One token's value of a gate's input signal: 0/1 activity, or a probe's logit.
pub trait TokenSignal: Copy {
    /// The value as a number: `true` is 1, `false` 0.
    fn value(self) -> f64;
}

impl TokenSignal for bool {
    fn value(self) -> f64 {
        f64::from(u8::from(self))
    }
}

impl TokenSignal for f64 {
    fn value(self) -> f64 {
        self
    }
}

impl TokenSignal for f32 {
    fn value(self) -> f64 {
        f64::from(self)
    }
}

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

    /// [`Gate::validate`], and a threshold a fitted gate over token *activity* can have: for
    /// ρ-style gates (paper, window) in [0, 1], for CUSUM ≥ 0 (scores are never negative, so a
    /// calibrated threshold is not either). What a guardrail file gated by its SAE must hold; a
    /// probe's threshold is any finite logit ([`Gate::validate`]).
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

    /// The score of a whole row's signal.
    pub fn score<S: TokenSignal>(&self, signal: &[S]) -> f64 {
        match *self {
            Gate::Paper { .. } => mean(sum(signal), signal.len()),
            Gate::Window { width, .. } => {
                if signal.len() <= width {
                    return mean(sum(signal), signal.len());
                }
                let mut in_window = sum(&signal[..width]);
                let mut densest = in_window;
                for t in width..signal.len() {
                    in_window = in_window + signal[t].value() - signal[t - width].value();
                    densest = densest.max(in_window);
                }
                mean(densest, width)
            }
            Gate::Cusum { drift, .. } => {
                let mut s = 0.0f64;
                let mut peak = 0.0f64;
                for &a in signal {
                    s = cusum_step(s, a.value(), drift);
                    peak = peak.max(s);
                }
                peak
            }
        }
    }

    /// The verdict on a whole row's signal.
    pub fn decide<S: TokenSignal>(&self, signal: &[S]) -> GateDecision {
        let score = self.score(signal);
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
                recent: vec![0.0; width],
                in_window: 0.0,
                densest: f64::NEG_INFINITY,
            },
            Gate::Cusum { .. } => StreamState::Cusum { s: 0.0, peak: 0.0 },
        };
        GateStream {
            gate: *self,
            len: 0,
            total: 0.0,
            state,
        }
    }
}

/// The signal's sum, added left to right (the order [`GateStream::push`] adds in).
fn sum<S: TokenSignal>(signal: &[S]) -> f64 {
    signal.iter().fold(0.0, |acc, a| acc + a.value())
}

fn mean(total: f64, len: usize) -> f64 {
    if len == 0 {
        0.0
    } else {
        total / len as f64
    }
}

fn cusum_step(s: f64, a: f64, drift: f64) -> f64 {
    (s + a - drift).max(0.0)
}

/// A gate evaluated token by token; after `push`ing a row's signal its [`GateStream::decision`]
/// equals [`Gate::decide`] on the whole row, bit for bit.
#[derive(Debug, Clone)]
pub struct GateStream {
    gate: Gate,
    len: usize,
    /// The signal's running sum.
    total: f64,
    state: StreamState,
}

#[derive(Debug, Clone)]
enum StreamState {
    Fraction,
    Window {
        /// The last `width` values (0 before the row reaches them), as a ring indexed by position
        /// mod width.
        recent: Vec<f64>,
        in_window: f64,
        densest: f64,
    },
    Cusum {
        s: f64,
        peak: f64,
    },
}

impl GateStream {
    /// Adds the next token's signal.
    pub fn push<S: TokenSignal>(&mut self, a: S) {
        let a = a.value();
        match &mut self.state {
            StreamState::Fraction => {}
            StreamState::Window {
                recent,
                in_window,
                densest,
            } => {
                let slot = self.len % recent.len();
                // Before the first window is full this adds `− 0.0`, which leaves the sum exact,
                // so it equals the batch's left-to-right sum of the first window.
                *in_window = *in_window + a - recent[slot];
                recent[slot] = a;
                if self.len + 1 >= recent.len() {
                    *densest = densest.max(*in_window);
                }
            }
            StreamState::Cusum { s, peak } => {
                let Gate::Cusum { drift, .. } = self.gate else {
                    unreachable!("CUSUM state belongs to a CUSUM gate")
                };
                *s = cusum_step(*s, a, drift);
                *peak = peak.max(*s);
            }
        }
        self.len += 1;
        self.total += a;
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
            StreamState::Fraction => mean(self.total, self.len),
            StreamState::Window {
                recent, densest, ..
            } => {
                if self.len <= recent.len() {
                    mean(self.total, self.len)
                } else {
                    mean(*densest, recent.len())
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
        assert_eq!(gate.decide::<bool>(&[]).score, 0.0);
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

    fn gates() -> [Gate; 5] {
        [
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
        ]
    }

    /// Pushes `row` token by token and checks every prefix against the batch gate, bit for bit.
    fn check_stream<S: TokenSignal + std::fmt::Debug>(gate: Gate, row: &[S]) {
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
        assert_eq!(stream.len(), row.len());
    }

    #[test]
    fn streaming_equals_batch_on_random_rows() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let len = rng.random_range(0..60);
            let density: f64 = rng.random();
            let row: Vec<bool> = (0..len).map(|_| rng.random_bool(density)).collect();
            for gate in gates() {
                check_stream(gate, &row);
            }
        }
    }

    #[test]
    fn streaming_equals_batch_on_random_real_signals() {
        // Probe logits: any sign and magnitude, so sums round and windows can be all negative.
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..200 {
            let len = rng.random_range(0..60);
            let scale = 10f64.powi(rng.random_range(-3..4));
            let shift: f64 = rng.random_range(-2.0..1.0);
            let row: Vec<f64> = (0..len)
                .map(|_| scale * (rng.random::<f64>() + shift))
                .collect();
            for gate in gates() {
                check_stream(gate, &row);
            }
            let row32: Vec<f32> = row.iter().map(|&x| x as f32).collect();
            check_stream(Gate::Window { width: 5, tau: 0.0 }, &row32);
        }
    }

    #[test]
    fn bool_and_real_signals_score_alike() {
        let row = flags("0110111010001101");
        let real: Vec<f64> = row.iter().map(|&a| a.value()).collect();
        for gate in gates() {
            assert_eq!(gate.score(&row).to_bits(), gate.score(&real).to_bits());
        }
        // An all-negative signal: the densest window is the least negative one.
        let logits = [-3.0, -1.0, -1.0, -5.0];
        assert_eq!(Gate::Window { width: 2, tau: 0.0 }.score(&logits), -1.0);
        assert_eq!(Gate::Paper { tau: 0.0 }.score(&logits), -2.5);
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
