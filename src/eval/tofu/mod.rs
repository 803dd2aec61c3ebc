//! TOFU evaluation as open-unlearning defines it: the shared question–answer encoding
//! ([`encode`]) and the metrics ([`metrics`]).

pub mod encode;
pub mod metrics;
