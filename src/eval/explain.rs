//! What guardrails decided on one prompt and which of their features fired on which tokens
//! (`dsg explain`, `dsg demo`): the record of each guardrail, a text rendering and an HTML page
//! with the tokens highlighted. Features are named by their [`FeatureLabels`] where the caller has
//! them (e.g. imported from Neuronpedia).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use candle_core::DType;

use crate::guard::{Guardrail, RowRecord};
use crate::model::{Batch, ForwardOptions, HookList, Hooks, LoadedModel, NoHooks, Tokenizer};
use crate::output::{check_output, Overwrite};
use crate::sae::labels::{feature_list, FeatureLabels};
use crate::{Error, Result};

/// A token's text and its probability.
pub type TokenProb = (String, f32);

/// What the guardrails made of one prompt.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Each guardrail's record of the prompt row, in the guardrails' order.
    pub records: Vec<RowRecord>,
    /// The most likely next token without the guardrails.
    pub plain: TokenProb,
    /// The most likely next token with all of them active.
    pub guarded: TokenProb,
}

/// The most likely next token and its probability.
fn top_next(
    lm: &LoadedModel,
    ids: &[u32],
    evidence: Option<&[bool]>,
    hooks: &mut dyn Hooks,
) -> Result<TokenProb> {
    let mut batch = Batch::single(ids.to_vec(), lm.model.device())?;
    if let Some(e) = evidence {
        batch = batch.with_evidence(vec![e.to_vec()])?;
    }
    let out = lm
        .model
        .forward(&batch, &ForwardOptions::default(), hooks, None)?;
    let logits = out
        .logits
        .ok_or_else(|| Error::Invalid("the forward pass returned no logits".into()))?
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

/// Runs the prompt `ids` without and with `guards` (at least one) and returns each guardrail's
/// record of it with the top next token both ways; `evidence` marks the user's tokens (what
/// [`crate::guard::Evidence::UserText`] gates count).
pub fn explain(
    lm: &LoadedModel,
    guards: &mut [Guardrail],
    ids: &[u32],
    evidence: Option<&[bool]>,
) -> Result<Explanation> {
    if guards.is_empty() {
        return Err(Error::Invalid("explain needs at least one --guard".into()));
    }
    let plain = top_next(lm, ids, evidence, &mut NoHooks)?;
    let guarded = {
        guards.iter_mut().for_each(|g| drop(g.take_records()));
        let mut list = HookList::new();
        for g in guards.iter_mut() {
            list.push(g);
        }
        top_next(lm, ids, evidence, &mut list)?
    };
    let mut records = Vec::with_capacity(guards.len());
    for g in guards.iter_mut() {
        let row = g
            .take_records()
            .into_iter()
            .next()
            .and_then(|r| r.rows.into_iter().next())
            .ok_or_else(|| Error::Invalid("a guardrail recorded no row of the prompt".into()))?;
        records.push(row);
    }
    Ok(Explanation {
        records,
        plain,
        guarded,
    })
}

/// A guardrail's decision and the first `max_tokens` tokens where its features fired, as lines
/// of text (each ending in a newline); each feature is followed by its label from `labels`, if any.
pub fn record_text(
    tok: &Tokenizer,
    guard: &Guardrail,
    name: &str,
    r: &RowRecord,
    max_tokens: usize,
    labels: Option<&FeatureLabels>,
) -> String {
    let gate = &guard.file().gate;
    let mut s = String::new();
    let _ = writeln!(
        s,
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
    let _ = writeln!(s, "  {active} of {} tokens active", r.tokens.len());
    let fired = r
        .tokens
        .iter()
        .zip(&r.active_features)
        .enumerate()
        .filter(|(_, (_, f))| !f.is_empty());
    for (t, (id, feats)) in fired.take(max_tokens) {
        let _ = writeln!(
            s,
            "  {t:>4} {:<18} {}{}",
            format!("{:?}", tok.token_str(*id)),
            if r.clamped[t] { "clamped " } else { "" },
            feature_list(feats, labels)
        );
    }
    if active > max_tokens {
        let _ = writeln!(s, "  … {} more active tokens", active - max_tokens);
    }
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An HTML page: one section per guardrail (`names`, `records` and `labels` aligned; a missing
/// `labels` entry means none), tokens shaded where features fired (red where clamped), features
/// (with their labels) in each token's tooltip.
pub fn html_page(
    tok: &Tokenizer,
    names: &[PathBuf],
    records: &[RowRecord],
    labels: &[Option<&FeatureLabels>],
) -> String {
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><title>dsg explain</title><style>\
         body{font-family:sans-serif}.t{white-space:pre-wrap;font-family:monospace}\
         .a{background:#fde68a}.c{background:#fca5a5}</style>\n",
    );
    for (i, (name, r)) in names.iter().zip(records).enumerate() {
        let labels = labels.get(i).copied().flatten();
        let _ = write!(
            html,
            "<h3>{}: score {:.4}, {}</h3><div class=t>",
            escape(&name.display().to_string()),
            r.decision.score,
            if r.decision.fired { "gated" } else { "pass" }
        );
        for (t, (id, feats)) in r.tokens.iter().zip(&r.active_features).enumerate() {
            let class = if r.clamped[t] {
                "c"
            } else if feats.is_empty() {
                ""
            } else {
                "a"
            };
            let _ = write!(
                html,
                "<span class=\"{class}\" title=\"features {}\">{}</span>",
                escape(&feature_list(feats, labels)),
                escape(&tok.token_str(*id))
            );
        }
        html.push_str("</div>\n");
    }
    html
}

/// Checks that `out` may receive the HTML page (`--html`): not one of `inputs` (the guardrails,
/// the model, the SAE), and not an existing file unless forced. Call it before any work.
pub fn check_html_output(out: &Path, inputs: &[&Path], overwrite: Overwrite) -> Result<()> {
    check_output(out, "--html", inputs, overwrite)
}

/// Writes [`html_page`] to `out`.
pub fn write_html(
    tok: &Tokenizer,
    names: &[PathBuf],
    records: &[RowRecord],
    labels: &[Option<&FeatureLabels>],
    out: &Path,
) -> Result<()> {
    std::fs::write(out, html_page(tok, names, records, labels)).map_err(|e| Error::io(out, e))
}

/// For each of `guards`, the first of the label sets `sets` that fits its SAE (layer, width and
/// indices; [`crate::sae::labels::assign`]); a set that fits no guardrail is an error.
pub fn labels_for_guards<'a>(
    sets: &'a [FeatureLabels],
    guards: &[Guardrail],
) -> Result<Vec<Option<&'a FeatureLabels>>> {
    let saes: Vec<_> = guards
        .iter()
        .map(|g| (Some(g.file().hook_point), g.file().d_sae))
        .collect();
    crate::sae::labels::assign(sets, &saes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_output_may_not_replace_a_guardrail_or_an_existing_page() {
        let d = std::env::temp_dir().join(format!("dsg-explain-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let guard = d.join("guard.json");
        std::fs::write(&guard, "{}").unwrap();
        let e = check_html_output(&guard, &[&guard], Overwrite::Force).unwrap_err();
        assert!(e.to_string().contains("--html names an input"), "{e}");
        let page = d.join("page.html");
        std::fs::write(&page, "old").unwrap();
        let e = check_html_output(&page, &[&guard], Overwrite::Refuse).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(check_html_output(&page, &[&guard], Overwrite::Force).is_ok());
    }
}
