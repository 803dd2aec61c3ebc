//! The `dsg bench` tables, built from the [`speed`](mod@super::speed) measurements: prefill and
//! decode throughput, and a guardrail's cost on a forward pass.

use std::path::Path;

use super::speed::{self, Overhead, Throughput};
use crate::guard::Guardrail;
use crate::model::{FnHook, HookPoint, Model, NoHooks, Tokenizer};
use crate::{Error, Result};

/// Prompt text when no `--text` is given and the shared data is absent.
const FALLBACK_TEXT: &str = "The quick brown fox jumps over the lazy dog. ";

/// The benchmark's prompt tokens (no BOS): `text`, else WikiText-2 test from the shared data
/// folder ([`crate::runtime::shared_data_dir`]), else a built-in text.
pub fn bench_tokens(tok: &Tokenizer, text: Option<&Path>) -> Result<Vec<u32>> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::io(p, e));
    let shared = crate::runtime::shared_data_dir(None)
        .map(|d| d.join("wikitext/wikitext-2-raw-v1.test.raw"))
        .ok()
        .filter(|p| p.exists());
    let text = match (text, shared) {
        (Some(p), _) => read(p)?,
        (None, Some(p)) => read(&p)?,
        (None, None) => FALLBACK_TEXT.repeat(400),
    };
    tok.encode(&text, false)
}

fn check_lengths(option: &str, lengths: &[usize]) -> Result<()> {
    if lengths.is_empty() {
        return Err(Error::out_of_range(option, "(none)", "at least one length"));
    }
    match lengths.iter().find(|&&n| n == 0) {
        Some(_) => Err(Error::out_of_range(
            option,
            0,
            "lengths of at least 1 token",
        )),
        None => Ok(()),
    }
}

fn check_reps(reps: usize) -> Result<()> {
    if reps == 0 {
        return Err(Error::out_of_range("reps (--reps)", 0, "at least 1"));
    }
    Ok(())
}

/// What the throughput table measures.
#[derive(Debug, Clone)]
pub struct ThroughputConfig {
    /// Prefill lengths.
    pub prefill: Vec<usize>,
    /// Tokens generated in the decode measurements.
    pub decode_tokens: usize,
    /// Repetitions (median reported).
    pub reps: usize,
}

impl ThroughputConfig {
    /// Checks the ranges: lengths, decode tokens and repetitions all at least 1.
    pub fn validate(&self) -> Result<()> {
        check_lengths("prefill (--prefill)", &self.prefill)?;
        if self.decode_tokens == 0 {
            return Err(Error::out_of_range(
                "decode_tokens (--decode-tokens)",
                0,
                "at least 1",
            ));
        }
        check_reps(self.reps)
    }
}

/// The column header of [`Throughput::table_row`] rows.
pub fn throughput_header() -> String {
    format!(
        "{:<20} {:>8} {:>12} {:>10}",
        "phase", "tokens", "median s", "tok/s"
    )
}

impl Throughput {
    /// The measurement as a row under [`throughput_header`].
    pub fn table_row(&self) -> String {
        format!(
            "{:<20} {:>8} {:>12.4} {:>10.1}",
            self.phase, self.tokens, self.median_secs, self.tokens_per_sec
        )
    }
}

/// Prefill at each length, then f32 decoding and (if the model has quantised weights) quantised
/// decoding after a 32-token prompt, with a pass-through hook at block 3 so that the hook
/// machinery is in the measured path.
pub fn throughput(
    model: &Model,
    tokens: &[u32],
    cfg: &ThroughputConfig,
) -> Result<Vec<Throughput>> {
    cfg.validate()?;
    let mut hook = FnHook::new(HookPoint::resid_post(3), |_, _| Ok(None));
    let mut rows = Vec::new();
    for &n in &cfg.prefill {
        rows.push(speed::prefill(model, tokens, n, cfg.reps, &mut hook)?);
    }
    let prompt = &tokens[..32.min(tokens.len())];
    rows.push(speed::decode(
        model,
        prompt,
        cfg.decode_tokens,
        false,
        cfg.reps,
        &mut hook,
    )?);
    if model.has_quantized() {
        rows.push(speed::decode(
            model,
            prompt,
            cfg.decode_tokens,
            true,
            cfg.reps,
            &mut hook,
        )?);
    }
    Ok(rows)
}

/// One guardrail's cost at one prompt length.
#[derive(Debug, Clone)]
pub struct GuardOverhead {
    /// The guardrail's name and gate setting (`as fitted` or forced open).
    pub label: String,
    /// Plain and guarded medians of the pass and the time spent in the guardrail's hooks.
    pub overhead: Overhead,
    /// Tokens clamped in the last guarded pass.
    pub clamped: usize,
}

/// The column header of [`GuardOverhead::table_row`] rows.
pub fn guard_overhead_header() -> String {
    format!(
        "{:<34} {:>7} {:>11} {:>11} {:>9} {:>10} {:>8} {:>8}",
        "guardrail",
        "tokens",
        "plain s",
        "guarded s",
        "overhead",
        "in hook s",
        "in hook",
        "clamped"
    )
}

impl GuardOverhead {
    /// The measurement as a row under [`guard_overhead_header`].
    pub fn table_row(&self) -> String {
        let o = &self.overhead;
        format!(
            "{:<34} {:>7} {:>11.4} {:>11.4} {:>8.1}% {:>10.4} {:>7.1}% {:>8}",
            self.label,
            o.tokens,
            o.plain_secs,
            o.hooked_secs,
            o.overhead_pct,
            o.in_hook_secs,
            o.in_hook_pct,
            self.clamped
        )
    }
}

/// A full forward pass with each named guardrail against none, with its gate as fitted and forced
/// open (τ = −1: every active token clamped), at each prompt length; `on_row` sees each result as
/// it is measured.
pub fn guard_overhead(
    model: &Model,
    tokens: &[u32],
    guards: Vec<(String, Guardrail)>,
    lengths: &[usize],
    reps: usize,
    on_row: &mut dyn FnMut(&GuardOverhead),
) -> Result<Vec<GuardOverhead>> {
    check_lengths("overhead (--overhead)", lengths)?;
    check_reps(reps)?;
    let mut out = Vec::new();
    for (name, g) in guards {
        let forced = g.with_gate(g.file().gate.with_threshold(-1.0))?;
        for (setting, mut g) in [("as fitted", g), ("forced open (τ = −1)", forced)] {
            for &n in lengths {
                let overhead = speed::hook_overhead(model, tokens, n, reps, &mut NoHooks, &mut g)?;
                let clamped = g
                    .take_records()
                    .last()
                    .map_or(0, |r| r.rows[0].clamped.iter().filter(|&&c| c).count());
                let row = GuardOverhead {
                    label: format!("{name} {setting}"),
                    overhead,
                    clamped,
                };
                on_row(&row);
                out.push(row);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_lengths_and_repetitions_are_refused_by_name() {
        let ok = ThroughputConfig {
            prefill: vec![128, 512],
            decode_tokens: 64,
            reps: 3,
        };
        assert!(ok.validate().is_ok());
        let e = ThroughputConfig {
            reps: 0,
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("reps (--reps): 0"), "{e}");
        let e = ThroughputConfig {
            prefill: vec![128, 0],
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("prefill (--prefill): 0"), "{e}");
        let e = ThroughputConfig {
            decode_tokens: 0,
            ..ok
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("decode_tokens (--decode-tokens): 0"),
            "{e}"
        );
        assert!(check_lengths("overhead", &[]).is_err());
    }
}
