//! Human-readable labels of SAE latents, imported from Neuronpedia's explanation exports.
//!
//! Neuronpedia publishes its auto-interpretation explanations as JSON lines (the bulk exports
//! `…/{model}/{source}/explanations/*.jsonl.gz`, decompressed, or `/api/explanation/export`), one
//! explanation per line:
//! `{"modelId": "gemma-2-2b", "layer": "3-gemmascope-res-16k", "index": "5", "description": "…",
//! "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair", "scores": [0.9]}`.
//! `layer` is the source id: the model layer first, the SAE's width (`16k` = 16384 latents) last.
//!
//! A latent may have several explanations. [`FeatureLabels`] keeps one per latent,
//! deterministically: the highest score (the largest number in `scores`), else — no explanation
//! of the latent being scored — the first in the file; ties keep the earlier line. Each label
//! says which explainer wrote it and how many explanations it was chosen from.
//!
//! Labels are checked against the SAE they are shown with ([`FeatureLabels::check`]): the layer
//! and width the source id names, and every index, must fit, or the labels are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::HookPoint;
use crate::{Error, Result};

/// One latent's label.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureLabel {
    /// The explanation (trimmed).
    pub description: String,
    /// The model that wrote it (`explanationModelName`).
    pub explainer: Option<String>,
    /// The explanation method (`typeName`).
    pub method: Option<String>,
    /// Its score, when it was scored.
    pub score: Option<f64>,
    /// How many explanations of this latent the file held (this one included).
    pub candidates: usize,
    /// The file line it came from (1-based).
    pub line: usize,
}

/// Labels of one SAE's latents, by latent index.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureLabels {
    /// The file they were read from.
    pub path: PathBuf,
    /// Neuronpedia's model id (`modelId`), e.g. `gemma-2-2b`.
    pub model_id: Option<String>,
    /// Neuronpedia's source id (`layer`), e.g. `3-gemmascope-res-16k`.
    pub source: Option<String>,
    /// The label of each latent that has one.
    pub labels: BTreeMap<usize, FeatureLabel>,
}

/// How one label was chosen among a latent's explanations, for reports.
pub const CHOICE: &str = "the highest-scored explanation, else the first in the file";

impl FeatureLabels {
    /// Reads a Neuronpedia explanations export (JSON lines; blank lines are skipped). A line
    /// that is not a JSON object with an `index` and a `description`, or whose model or source
    /// differs from the first line's, is an error naming the file and line.
    pub fn read_neuronpedia(path: &Path) -> Result<FeatureLabels> {
        if path.extension().is_some_and(|e| e == "gz") {
            return Err(Error::Unsupported(format!(
                "{}: compressed labels; decompress it first (gunzip -k)",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut out = FeatureLabels {
            path: path.to_path_buf(),
            model_id: None,
            source: None,
            labels: BTreeMap::new(),
        };
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            out.add(line, i + 1)?;
        }
        if out.labels.is_empty() {
            return Err(Error::missing(
                path,
                "Neuronpedia explanations (the file has none)",
            ));
        }
        Ok(out)
    }

    /// Reads several exports ([`FeatureLabels::read_neuronpedia`]), in order.
    pub fn read_all(paths: &[PathBuf]) -> Result<Vec<FeatureLabels>> {
        paths.iter().map(|p| Self::read_neuronpedia(p)).collect()
    }

    fn add(&mut self, line: &str, n: usize) -> Result<()> {
        let bad = |expected: &str, found: String| {
            Error::format(&self.path, format!("line {n}"), expected, found)
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad("a JSON object", e.to_string()))?;
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());
        let text = |k: &str| -> Result<Option<String>> {
            match field(k) {
                None => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.trim().to_string())),
                Some(other) => Err(bad(&format!("`{k}` a string"), other.to_string())),
            }
        };
        let index = match field("index") {
            Some(serde_json::Value::Number(x)) => x.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| bad("`index` a latent number", format!("{:?}", field("index"))))?;
        let description = text("description")?
            .filter(|d| !d.is_empty())
            .ok_or_else(|| bad("a non-empty `description`", line.chars().take(80).collect()))?;
        for (key, seen) in [("modelId", &mut self.model_id), ("layer", &mut self.source)] {
            let value = text(key)?;
            match (seen.as_ref(), value) {
                (Some(s), Some(v)) if *s != v => {
                    return Err(bad(&format!("`{key}` {s:?} as on the lines before"), v))
                }
                (None, Some(v)) => *seen = Some(v),
                _ => {}
            }
        }
        let score = match field("scores") {
            Some(serde_json::Value::Array(xs)) => xs
                .iter()
                .filter_map(|x| x.as_f64())
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
            Some(x) => x.as_f64(),
            None => None,
        };
        let label = FeatureLabel {
            description,
            explainer: text("explanationModelName")?,
            method: text("typeName")?,
            score,
            candidates: 1,
            line: n,
        };
        let index = index as usize;
        match self.labels.get_mut(&index) {
            None => {
                self.labels.insert(index, label);
            }
            Some(kept) => {
                let candidates = kept.candidates + 1;
                if label
                    .score
                    .is_some_and(|s| kept.score.is_none_or(|k| s > k))
                {
                    *kept = label;
                }
                kept.candidates = candidates;
            }
        }
        Ok(())
    }

    /// The label of `latent`, if it has one.
    pub fn get(&self, latent: usize) -> Option<&FeatureLabel> {
        self.labels.get(&latent)
    }

    /// The model layer the source id names (`3` in `3-gemmascope-res-16k`).
    pub fn layer(&self) -> Option<usize> {
        self.source.as_deref()?.split('-').next()?.parse().ok()
    }

    /// The SAE width the source id names (`16384` for `…-16k`, `1048576` for `…-1m`).
    pub fn width(&self) -> Option<usize> {
        let last = self.source.as_deref()?.rsplit('-').next()?;
        let (digits, scale) = match last.as_bytes().last()? {
            b'k' => (&last[..last.len() - 1], 1024),
            b'm' => (&last[..last.len() - 1], 1024 * 1024),
            _ => return None,
        };
        digits.parse::<usize>().ok().map(|d| d * scale)
    }

    /// Refuses these labels for an SAE of `d_sae` latents at `hook` when the source id names
    /// another layer or width, or an index is not below `d_sae`.
    pub fn check(&self, hook: Option<HookPoint>, d_sae: usize) -> Result<()> {
        let source = self.source.as_deref().unwrap_or("(no source id)");
        let refuse = |why: String| {
            Err(Error::Mismatch(format!(
                "labels {} ({source}) do not fit this SAE: {why}",
                self.path.display()
            )))
        };
        if let (Some(layer), Some(hook)) = (self.layer(), hook) {
            if layer != hook.layer {
                return refuse(format!("they are for layer {layer}, the SAE reads {hook}"));
            }
        }
        if let Some(width) = self.width().filter(|&w| w != d_sae) {
            return refuse(format!("they are for {width} latents, the SAE has {d_sae}"));
        }
        match self.labels.range(d_sae..).next() {
            Some((i, l)) => refuse(format!(
                "line {} labels latent {i}, but the SAE has {d_sae}",
                l.line
            )),
            None => Ok(()),
        }
    }

    /// `id` followed by its label in quotes, when it has one: `12 "virus names"`.
    pub fn name(&self, id: usize) -> String {
        match self.get(id) {
            Some(l) => format!("{id} {:?}", l.description),
            None => id.to_string(),
        }
    }
}

/// A list of latent ids, each followed by its label where `labels` has one:
/// `[12 "virus names", 40]`.
pub fn feature_list(ids: &[u32], labels: Option<&FeatureLabels>) -> String {
    let names: Vec<String> = ids
        .iter()
        .map(|&i| match labels {
            Some(l) => l.name(i as usize),
            None => i.to_string(),
        })
        .collect();
    format!("[{}]", names.join(", "))
}

/// For each SAE (`(hook, d_sae)`), the first of `sets` that fits it ([`FeatureLabels::check`]);
/// an error when one of `sets` fits none of them, naming why it fits the first.
pub fn assign<'a>(
    sets: &'a [FeatureLabels],
    saes: &[(Option<HookPoint>, usize)],
) -> Result<Vec<Option<&'a FeatureLabels>>> {
    for set in sets {
        if !saes.iter().any(|&(h, d)| set.check(h, d).is_ok()) {
            if let Some(&(h, d)) = saes.first() {
                set.check(h, d)?;
            }
        }
    }
    Ok(saes
        .iter()
        .map(|&(h, d)| sets.iter().find(|s| s.check(h, d).is_ok()))
        .collect())
}
