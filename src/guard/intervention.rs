//! What a guardrail does to an input its gate fires on: clamp the selected features (the paper's
//! absolute clamp, Farrell et al.'s, or one scaled to the residual norm), or refuse to answer.
//!
//! The clamp kinds are [`ClampSpec`]s applied inside the forward pass by the hook. A refusal
//! edits nothing: the hook only decides, and the caller answers with [`REFUSAL`] instead of the
//! model's output (`dsg generate`), or counts the question as not answered (`dsg eval mcq`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ClampSpec;
use crate::{Error, Result};

/// The answer given in place of the model's when a refusing guardrail fires.
pub const REFUSAL: &str = "I can't help with that.";

/// A guardrail's action when its gate fires.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Intervention {
    /// Edit the residual stream at active tokens.
    Clamp {
        /// How the selected features are set.
        clamp: ClampSpec,
    },
    /// Answer with a refusal (MCQ: not answered).
    Refuse,
}

impl Intervention {
    /// Checks the clamp's parameters (see [`ClampSpec::validate`]).
    pub fn validate(&self) -> Result<()> {
        match self {
            Intervention::Clamp { clamp } => clamp.validate(),
            Intervention::Refuse => Ok(()),
        }
    }
}

impl FromStr for Intervention {
    type Err = Error;

    /// Parses `clamp:C` (every selected feature to −C, the paper's), `farrell:C` (active
    /// selected features to −C), `norm:S` (each feature's clamped contribution of norm S·‖h‖)
    /// or `refuse`; errors name `--intervention`.
    fn from_str(s: &str) -> Result<Intervention> {
        let bad = |why: &str| {
            Error::out_of_range(
                "--intervention",
                s,
                format!("clamp:C, farrell:C or norm:S with C, S > 0, or refuse ({why})"),
            )
        };
        if s == "refuse" {
            return Ok(Intervention::Refuse);
        }
        let (kind, value) = s.split_once(':').ok_or_else(|| bad("no ':'"))?;
        let v: f64 = value.parse().map_err(|_| bad("not a number"))?;
        if !(v.is_finite() && v > 0.0) {
            return Err(bad("not a finite positive number"));
        }
        let clamp = match kind {
            "clamp" => ClampSpec::paper(v),
            "farrell" => ClampSpec::farrell(v),
            "norm" => ClampSpec::NormRelative { scale: v },
            _ => return Err(bad("unknown kind")),
        };
        Ok(Intervention::Clamp { clamp })
    }
}

impl fmt::Display for Intervention {
    /// The form [`Intervention::from_str`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Intervention::Refuse => write!(f, "refuse"),
            Intervention::Clamp { clamp } => match *clamp {
                ClampSpec::ClampAll { value } => write!(f, "clamp:{}", -value),
                ClampSpec::PerFeature { value } => write!(f, "farrell:{}", -value),
                ClampSpec::NormRelative { scale } => write!(f, "norm:{scale}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_kind() {
        for s in ["clamp:500", "farrell:20", "norm:0.5", "refuse"] {
            let i: Intervention = s.parse().unwrap();
            assert_eq!(i.to_string(), s);
            i.validate().unwrap();
        }
        assert_eq!(
            "clamp:500".parse::<Intervention>().unwrap(),
            Intervention::Clamp {
                clamp: ClampSpec::paper(500.0)
            }
        );
        for bad in ["clamp", "clamp:-1", "norm:x", "norm:inf", "scale:2", ""] {
            let e = bad.parse::<Intervention>().unwrap_err().to_string();
            assert!(e.contains("--intervention"), "{e}");
        }
    }
}
