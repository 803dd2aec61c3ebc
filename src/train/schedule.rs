//! Learning-rate schedules as Hugging Face's `get_{constant,linear,cosine}_schedule_with_warmup`
//! define them: the multiplier at optimiser step `s` (0-based; Hugging Face's first step runs at
//! multiplier 0 when there is warm-up, and so does dsg's).

use serde::{Deserialize, Serialize};

/// The decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Constant after warm-up.
    Constant,
    /// Linear to zero at the last step.
    Linear,
    /// Half a cosine to zero at the last step.
    #[default]
    Cosine,
}

impl std::str::FromStr for Decay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Decay::Constant),
            "linear" => Ok(Decay::Linear),
            "cosine" => Ok(Decay::Cosine),
            _ => Err(format!("expected constant, linear or cosine, found {s:?}")),
        }
    }
}

/// The learning-rate multiplier at step `step` of `total`, after `warmup` warm-up steps.
pub fn lr_multiplier(decay: Decay, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let rest = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / rest;
    match decay {
        Decay::Constant => 1.0,
        Decay::Linear => ((total as f64 - step as f64) / rest).max(0.0),
        Decay::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_hugging_face() {
        // get_cosine_schedule_with_warmup(warmup=2, total=10): 0, .5, 1, then the cosine.
        assert_eq!(lr_multiplier(Decay::Cosine, 0, 2, 10), 0.0);
        assert_eq!(lr_multiplier(Decay::Cosine, 1, 2, 10), 0.5);
        assert_eq!(lr_multiplier(Decay::Cosine, 2, 2, 10), 1.0);
        let mid = lr_multiplier(Decay::Cosine, 6, 2, 10);
        assert!((mid - 0.5).abs() < 1e-12);
        assert!(lr_multiplier(Decay::Cosine, 10, 2, 10).abs() < 1e-12);
        // get_linear_schedule_with_warmup: (total - s) / (total - warmup).
        assert!((lr_multiplier(Decay::Linear, 6, 2, 10) - 0.5).abs() < 1e-12);
        assert_eq!(lr_multiplier(Decay::Constant, 7, 2, 10), 1.0);
        assert_eq!(lr_multiplier(Decay::Linear, 0, 0, 4), 1.0);
    }
}
