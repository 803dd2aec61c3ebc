//! `dsg explain`: what the guardrails decided on a prompt, and which features fired on which tokens
//! (text, and optionally an HTML page with the tokens highlighted).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::DType;

use dsg::guard::{Guardrail, RowRecord};
use dsg::model::{Batch, ForwardOptions, HookList, Hooks, LoadedModel, NoHooks};

/// The most likely next token and its probability.
fn top_next(lm: &LoadedModel, ids: &[u32], hooks: &mut dyn Hooks) -> Result<TokenProb> {
    let batch = Batch::single(ids.to_vec(), lm.model.device())?;
    let out = lm
        .model
        .forward(&batch, &ForwardOptions::default(), hooks, None)?;
    let logits = out
        .logits
        .context("no logits")?
        .squeeze(0)?
        .to_dtype(DType::F32)?;
    let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec1::<f32>()?;
    let (id, p) =
        probs.iter().enumerate().fold(
            (0, f32::MIN),
            |best, (i, &p)| if p > best.1 { (i, p) } else { best },
        );
    Ok((lm.tokenizer.token_str(id as u32), p))
}

/// A token's text and its probability.
pub type TokenProb = (String, f32);

/// Runs the prompt through the guardrails and returns each guardrail's record of the prompt row,
/// with the top next token without and with them.
pub fn run(
    lm: &LoadedModel,
    guards: &mut [Guardrail],
    ids: &[u32],
) -> Result<(Vec<RowRecord>, TokenProb, TokenProb)> {
    let plain = top_next(lm, ids, &mut NoHooks)?;
    let guarded = {
        guards.iter_mut().for_each(|g| drop(g.take_records()));
        let mut list = HookList::new();
        for g in guards.iter_mut() {
            list.push(g);
        }
        top_next(lm, ids, &mut list)?
    };
    let records = guards
        .iter_mut()
        .map(|g| g.take_records().remove(0).rows.remove(0))
        .collect();
    Ok((records, plain, guarded))
}

/// Prints a guardrail's decision and the first `max_tokens` tokens where its features fired.
pub fn print_record(
    lm: &LoadedModel,
    guard: &Guardrail,
    name: &str,
    r: &RowRecord,
    max_tokens: usize,
) {
    let gate = &guard.file().gate;
    println!(
        "{name}: score {:.4} vs threshold {:.4} ({:?}) → {}",
        r.decision.score,
        gate.threshold(),
        gate,
        if r.decision.fired {
            "GATED (clamping)"
        } else {
            "pass"
        }
    );
    let active = r.active_features.iter().filter(|f| !f.is_empty()).count();
    println!("  {active} of {} tokens active", r.tokens.len());
    let fired = r
        .tokens
        .iter()
        .zip(&r.active_features)
        .enumerate()
        .filter(|(_, (_, f))| !f.is_empty());
    for (t, (id, feats)) in fired.take(max_tokens) {
        println!(
            "  {t:>4} {:<18} {}{:?}",
            format!("{:?}", lm.tokenizer.token_str(*id)),
            if r.clamped[t] { "clamped " } else { "" },
            feats
        );
    }
    if active > max_tokens {
        println!("  … {} more active tokens", active - max_tokens);
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Writes an HTML page: one section per guardrail, tokens shaded where features fired (red where
/// clamped), features in each token's tooltip.
pub fn write_html(
    lm: &LoadedModel,
    names: &[PathBuf],
    records: &[RowRecord],
    out: &Path,
) -> Result<()> {
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><title>dsg explain</title><style>\
         body{font-family:sans-serif}.t{white-space:pre-wrap;font-family:monospace}\
         .a{background:#fde68a}.c{background:#fca5a5}</style>\n",
    );
    for (name, r) in names.iter().zip(records) {
        html.push_str(&format!(
            "<h3>{}: score {:.4}, {}</h3><div class=t>",
            escape(&name.display().to_string()),
            r.decision.score,
            if r.decision.fired { "gated" } else { "pass" }
        ));
        for (t, (id, feats)) in r.tokens.iter().zip(&r.active_features).enumerate() {
            let class = if r.clamped[t] {
                "c"
            } else if feats.is_empty() {
                ""
            } else {
                "a"
            };
            html.push_str(&format!(
                "<span class=\"{class}\" title=\"features {feats:?}\">{}</span>",
                escape(&lm.tokenizer.token_str(*id))
            ));
        }
        html.push_str("</div>\n");
    }
    std::fs::write(out, html).with_context(|| format!("writing {}", out.display()))
}
