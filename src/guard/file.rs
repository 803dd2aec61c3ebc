//! The guardrail file: everything needed to apply a guardrail, and to refuse to apply it to the
//! wrong model or SAE (JSON).
//!
//! It names the model and SAE by sha256, the hook point, the selected features with the statistics
//! and scores they were chosen by, the selection rule, the clamp, the gate with its threshold, a
//! summary of the calibration, and where the data came from. [`GuardrailFile::load`] reports any
//! problem as file + field + expected + found.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::calibrate::CalibrationSummary;
use super::clamp::ClampSpec;
use super::gate::Gate;
use super::probe::{check_probe_gate, Probe, ProbeInput};
use super::select::{check_percentile, FeatureScores, SelectionRule};
use crate::model::HookPoint;
use crate::stats::FeatureStats;
use crate::{Error, Result};

/// The format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// A model or SAE, by name and the sha256 of its weights file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactIdentity {
    /// Human-readable name or path (e.g. `google/gemma-2-2b-it`).
    pub name: String,
    /// Lower-case hex sha256 of the weights file.
    pub sha256: String,
}

/// A selected feature's statistics on one corpus.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FeatureSummary {
    /// Masked mean activation.
    pub mean: f64,
    /// Masked mean squared activation.
    pub mean_sq: f64,
    /// Firing frequency.
    pub freq: f64,
}

/// The selection rule's scores for one feature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RuleScore {
    /// Forget-corpus importance (or frequency).
    pub forget: f64,
    /// Retain-corpus importance (or frequency).
    pub retain: f64,
    /// Importance ratio.
    pub ratio: f64,
}

/// One selected feature and the evidence it was selected on (absent for hand-given lists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectedFeature {
    /// SAE feature id.
    pub id: u32,
    /// Statistics on the forget corpus.
    pub forget: Option<FeatureSummary>,
    /// Statistics on the retain corpus.
    pub retain: Option<FeatureSummary>,
    /// The rule's scores.
    pub score: Option<RuleScore>,
}

/// Where the selection and calibration data came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataProvenance {
    /// Forget corpus description (absent for zero-shot guardrails).
    pub forget_corpus: Option<String>,
    /// Retain corpus description.
    pub retain_corpus: Option<String>,
    /// Forget rows used.
    pub forget_rows: u64,
    /// Retain rows used.
    pub retain_rows: u64,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// Percentage of the available rows used (the reference's `dataset_fraction`).
    pub data_fraction: f64,
    /// The prompts the gate threshold was calibrated on; absent: the retain rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_corpus: Option<String>,
}

/// A complete guardrail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardrailFile {
    /// Always [`FORMAT_VERSION`] when written by this code.
    pub format_version: u32,
    /// The model the guardrail was built on.
    pub model: ArtifactIdentity,
    /// The SAE whose features it uses.
    pub sae: ArtifactIdentity,
    /// The SAE's width.
    pub d_sae: usize,
    /// Where the SAE reads and the clamp writes.
    pub hook_point: HookPoint,
    /// The selected features, in selection order.
    pub features: Vec<SelectedFeature>,
    /// The rule that selected them.
    pub selection: SelectionRule,
    /// What the selected features are set to at clamped tokens.
    pub clamp: ClampSpec,
    /// The gate, with its threshold.
    pub gate: Gate,
    /// How the threshold was calibrated; absent when it was set by hand.
    pub calibration: Option<CalibrationSummary>,
    /// Which tokens the gate counts (the threshold was calibrated counting those).
    pub evidence: Evidence,
    /// Data provenance.
    pub provenance: DataProvenance,
    /// The probe whose per-token logits the gate pools instead of the selected features'
    /// activity (the SAE still clamps); absent: the SAE gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
}

/// Which tokens of an input a guardrail's gate counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// Every token (the paper's rule; files without the field).
    #[default]
    AllTokens,
    /// Only the tokens the input marks as evidence ([`crate::model::Batch::with_evidence`]): in a
    /// chat, the user's text, not the template's tokens or a system prompt. Inputs that mark
    /// nothing (plain text) count every token.
    UserText,
}

/// Describes `ids` with their corpus statistics and rule scores, where available.
pub fn describe_features(
    ids: &[u32],
    corpora: Option<(&FeatureStats, &FeatureStats)>,
    scores: Option<&FeatureScores>,
) -> Vec<SelectedFeature> {
    let summaries = |stats: &FeatureStats| (stats.mean(), stats.mean_sq(), stats.freq());
    let corpora = corpora.map(|(f, r)| (summaries(f), summaries(r)));
    let summary = |s: &(Vec<f64>, Vec<f64>, Vec<f64>), i: usize| FeatureSummary {
        mean: s.0[i],
        mean_sq: s.1[i],
        freq: s.2[i],
    };
    ids.iter()
        .map(|&id| {
            let i = id as usize;
            SelectedFeature {
                id,
                forget: corpora.as_ref().map(|(f, _)| summary(f, i)),
                retain: corpora.as_ref().map(|(_, r)| summary(r, i)),
                score: scores.map(|s| RuleScore {
                    forget: s.forget[i],
                    retain: s.retain[i],
                    ratio: s.ratio[i],
                }),
            }
        })
        .collect()
}

/// A problem with a guardrail's content: field, expected, found.
struct Problem(String, String, String);

impl Problem {
    fn new(field: &str, expected: impl Into<String>, found: impl Into<String>) -> Self {
        Problem(field.to_string(), expected.into(), found.into())
    }

    /// A parameter check's range error as a problem of the file; `section` names the field it
    /// came from when the error does not.
    fn from_check(section: &str, e: Error) -> Self {
        match e {
            Error::OutOfRange {
                field,
                value,
                allowed,
            } => Problem(field, allowed, value),
            other => Problem::new(section, "valid parameters", other.to_string()),
        }
    }
}

/// The first of `values` (named by `field`) that is not a finite number.
fn non_finite<'a>(values: impl IntoIterator<Item = (&'a str, f64)>) -> Option<Problem> {
    values
        .into_iter()
        .find(|(_, x)| !x.is_finite())
        .map(|(field, x)| Problem::new(field, "a finite number", x.to_string()))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl GuardrailFile {
    /// The selected feature ids, in order.
    pub fn feature_ids(&self) -> Vec<u32> {
        self.features.iter().map(|f| f.id).collect()
    }

    /// The first problem of the content; `stored` adds what a file on disk must also hold (a
    /// fitted gate threshold, [`Gate::validate_fitted`]), which guardrails forced open or shut in
    /// memory (`τ < 0`, `τ > 1`) do not.
    fn problem(&self, stored: bool) -> Option<Problem> {
        let hex = "64 lower-case hex digits";
        if self.format_version != FORMAT_VERSION {
            return Some(Problem::new(
                "format_version",
                FORMAT_VERSION.to_string(),
                self.format_version.to_string(),
            ));
        }
        if !is_sha256(&self.model.sha256) {
            return Some(Problem::new("model.sha256", hex, self.model.sha256.clone()));
        }
        if !is_sha256(&self.sae.sha256) {
            return Some(Problem::new("sae.sha256", hex, self.sae.sha256.clone()));
        }
        let mut seen = vec![false; self.d_sae];
        for id in self.feature_ids() {
            match seen.get_mut(id as usize) {
                None => {
                    return Some(Problem::new(
                        "features",
                        format!("ids below d_sae = {}", self.d_sae),
                        id.to_string(),
                    ))
                }
                Some(true) => {
                    return Some(Problem::new(
                        "features",
                        "distinct ids",
                        format!("{id} twice"),
                    ))
                }
                Some(slot) => *slot = true,
            }
        }
        if self.features.is_empty() {
            return Some(Problem::new("features", "at least one feature", "none"));
        }
        if let Some(p) = non_finite(self.numbers()) {
            return Some(p);
        }
        if let Err(e) = self.selection.validate() {
            return Some(Problem::from_check("selection", e));
        }
        let gate = match &self.probe {
            Some(_) => check_probe_gate(&self.gate),
            None if stored => self.gate.validate_fitted(),
            None => self.gate.validate(),
        };
        if let Err(e) = gate {
            return Some(Problem::from_check("gate", e));
        }
        if let Some(p) = self.probe.as_ref().and_then(|p| self.probe_problem(p)) {
            return Some(p);
        }
        if let Err(e) = self.clamp.validate() {
            return Some(Problem::from_check("clamp", e));
        }
        if !(self.provenance.data_fraction > 0.0 && self.provenance.data_fraction <= 100.0) {
            return Some(Problem::new(
                "provenance.data_fraction",
                "a percentage in (0, 100]",
                self.provenance.data_fraction.to_string(),
            ));
        }
        if let Some(cal) = &self.calibration {
            if let Err(e) = check_percentile("calibration.percentile", cal.percentile) {
                return Some(Problem::from_check("calibration", e));
            }
            if cal.threshold.to_bits() != self.gate.threshold().to_bits() {
                return Some(Problem::new(
                    "calibration.threshold",
                    format!("the gate's threshold {}", self.gate.threshold()),
                    cal.threshold.to_string(),
                ));
            }
        }
        None
    }

    /// A probe's finite weights, and its width where the file knows it (`d_sae` for an SAE-latent
    /// probe; a residual probe's `d_model` is checked when the guardrail is bound to a model).
    fn probe_problem(&self, probe: &Probe) -> Option<Problem> {
        if probe.input == ProbeInput::SaeLatents && probe.weights.len() != self.d_sae {
            return Some(Problem::new(
                "probe.weights",
                format!("d_sae = {} weights", self.d_sae),
                probe.weights.len().to_string(),
            ));
        }
        if let Some(w) = probe.weights.iter().find(|w| !w.is_finite()) {
            return Some(Problem::new(
                "probe.weights",
                "finite numbers",
                w.to_string(),
            ));
        }
        non_finite([("probe.bias", probe.bias)])
    }

    /// The recorded feature statistics and scores, named by field (gate and clamp parameters are
    /// checked by their own `validate`).
    fn numbers(&self) -> Vec<(&'static str, f64)> {
        let mut all = Vec::new();
        for f in &self.features {
            for (field, s) in [("features.forget", f.forget), ("features.retain", f.retain)] {
                if let Some(s) = s {
                    all.extend([(field, s.mean), (field, s.mean_sq), (field, s.freq)]);
                }
            }
            if let Some(s) = f.score {
                all.extend([
                    ("features.score", s.forget),
                    ("features.score", s.retain),
                    ("features.score", s.ratio),
                ]);
            }
        }
        if let Some(c) = &self.calibration {
            all.push(("calibration.false_positive_rate", c.false_positive_rate));
            all.extend(
                c.score_percentiles
                    .iter()
                    .map(|&[_, v]| ("calibration.score_percentiles", v)),
            );
        }
        all
    }

    /// Checks the content (identities, feature ids, parameters, calibration vs gate); any finite
    /// gate threshold is accepted here, a fitted one only when saving or loading.
    pub fn validate(&self) -> Result<()> {
        self.check(false)
    }

    fn check(&self, stored: bool) -> Result<()> {
        match self.problem(stored) {
            None => Ok(()),
            Some(Problem(field, expected, found)) => Err(Error::Invalid(format!(
                "guardrail {field}: expected {expected}, found {found}"
            ))),
        }
    }

    /// Validates (as a stored file, with a fitted gate threshold) and writes the guardrail as
    /// pretty-printed JSON.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.check(true)?;
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Invalid(format!("cannot serialise guardrail: {e}")))?;
        std::fs::write(path, json + "\n").map_err(|e| Error::io(path, e))
    }

    /// Reads and validates a guardrail file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, "file", "JSON", e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(Error::format(
                path,
                "file",
                "a JSON object",
                "another JSON value",
            ));
        };
        let fields = Fields { path, obj: &obj };
        fields.reject_unknown()?;
        let format_version: u32 = fields.get("format_version", "an integer")?;
        if format_version != FORMAT_VERSION {
            return Err(Error::format(
                path,
                "format_version",
                FORMAT_VERSION.to_string(),
                format_version.to_string(),
            ));
        }
        let file = GuardrailFile {
            format_version,
            model: fields.get("model", "{name, sha256}")?,
            sae: fields.get("sae", "{name, sha256}")?,
            d_sae: fields.get("d_sae", "an integer")?,
            hook_point: fields.get(
                "hook_point",
                "a hook point like \"blocks.3.hook_resid_post\"",
            )?,
            features: fields.get("features", "a list of {id, forget, retain, score}")?,
            selection: fields.get(
                "selection",
                "a selection rule {rule: percentile|frequency|manual, …}",
            )?,
            clamp: fields.get(
                "clamp",
                "a clamp {kind: clamp_all|per_feature|norm_relative, …}",
            )?,
            gate: fields.get("gate", "a gate {kind: paper|window|cusum, …}")?,
            calibration: fields.get_optional("calibration", "a calibration summary or null")?,
            evidence: fields
                .get_optional("evidence", "\"all_tokens\" or \"user_text\"")?
                .unwrap_or_default(),
            provenance: fields.get(
                "provenance",
                "{forget_corpus, retain_corpus, forget_rows, retain_rows, seed, data_fraction}",
            )?,
            probe: fields.get_optional("probe", "a probe {input, weights, bias, training}")?,
        };
        match file.problem(true) {
            None => Ok(file),
            Some(Problem(field, expected, found)) => {
                Err(Error::format(path, field, expected, found))
            }
        }
    }

    /// Errors unless the guardrail was built for the model and SAE with these sha256 digests.
    pub fn check_identity(&self, model_sha256: &str, sae_sha256: &str) -> Result<()> {
        for (what, built, loaded) in [
            ("model", &self.model, model_sha256),
            ("SAE", &self.sae, sae_sha256),
        ] {
            if !built.sha256.eq_ignore_ascii_case(loaded) {
                return Err(Error::Mismatch(format!(
                    "guardrail was built for {what} {} (sha256 {}), but the loaded {what} has sha256 {loaded}",
                    built.name, built.sha256
                )));
            }
        }
        Ok(())
    }
}

/// Field-by-field reading of the top-level JSON object, for errors that name the field.
struct Fields<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
}

const FIELD_NAMES: [&str; 13] = [
    "format_version",
    "model",
    "sae",
    "d_sae",
    "hook_point",
    "features",
    "selection",
    "clamp",
    "gate",
    "calibration",
    "evidence",
    "provenance",
    "probe",
];

impl Fields<'_> {
    fn reject_unknown(&self) -> Result<()> {
        match self.obj.keys().find(|k| !FIELD_NAMES.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(Error::format(
                self.path,
                k.as_str(),
                "no such field in this format version",
                "present",
            )),
        }
    }

    fn get<T: DeserializeOwned>(&self, name: &str, expected: &str) -> Result<T> {
        let value = self
            .obj
            .get(name)
            .ok_or_else(|| Error::missing(self.path, format!("field `{name}`")))?;
        serde_json::from_value(value.clone())
            .map_err(|e| Error::format(self.path, name, expected, e.to_string()))
    }

    fn get_optional<T: DeserializeOwned>(&self, name: &str, expected: &str) -> Result<Option<T>> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.get(name, expected).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::select::PercentileRule;

    fn sha(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn example() -> GuardrailFile {
        GuardrailFile {
            format_version: FORMAT_VERSION,
            model: ArtifactIdentity {
                name: "gemma-2-2b-it".into(),
                sha256: sha('a'),
            },
            sae: ArtifactIdentity {
                name: "gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_142".into(),
                sha256: sha('b'),
            },
            d_sae: 16,
            hook_point: HookPoint::resid_post(3),
            features: describe_features(&[7, 3], None, None),
            selection: SelectionRule::Percentile(PercentileRule::official(95.0)),
            clamp: ClampSpec::paper(500.0),
            gate: Gate::Paper { tau: 0.5 },
            calibration: None,
            evidence: Evidence::AllTokens,
            provenance: DataProvenance {
                forget_corpus: Some("bio-forget-corpus".into()),
                retain_corpus: Some("wikitext-2-raw-v1 test".into()),
                forget_rows: 275,
                retain_rows: 275,
                seed: Some(0),
                data_fraction: 100.0,
                calibration_corpus: None,
            },
            probe: None,
        }
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("dsg-{name}-{}.json", std::process::id()))
    }

    #[test]
    fn round_trip() {
        let path = temp("guard-roundtrip");
        example().save(&path).unwrap();
        let back = GuardrailFile::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back, example());
        assert_eq!(back.feature_ids(), vec![7, 3]);
    }

    fn load_edited(name: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> Error {
        let path = temp(name);
        let mut value = serde_json::to_value(example()).unwrap();
        edit(value.as_object_mut().unwrap());
        std::fs::write(&path, value.to_string()).unwrap();
        let err = GuardrailFile::load(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        err
    }

    #[test]
    fn errors_name_the_field() {
        let err = load_edited("bad-gate", |o| {
            o.insert(
                "gate".into(),
                serde_json::json!({"kind": "sigmoid", "tau": 0.5}),
            );
        });
        assert!(
            matches!(&err, Error::Format { field, .. } if field == "gate"),
            "{err}"
        );
        let err = load_edited("no-clamp", |o| {
            o.remove("clamp");
        });
        assert!(
            matches!(&err, Error::Missing { what, .. } if what.contains("clamp")),
            "{err}"
        );
        let err = load_edited("version", |o| {
            o.insert("format_version".into(), 2.into());
        });
        assert!(
            matches!(&err, Error::Format { field, found, .. } if field == "format_version" && found == "2")
        );
        let err = load_edited("range", |o| {
            o.insert("d_sae".into(), 5.into());
        });
        assert!(
            matches!(&err, Error::Format { field, .. } if field == "features"),
            "{err}"
        );
        let err = load_edited("unknown", |o| {
            o.insert("tau".into(), 0.3.into());
        });
        assert!(
            matches!(&err, Error::Format { field, .. } if field == "tau"),
            "{err}"
        );
    }

    #[test]
    fn identity_check() {
        let file = example();
        file.check_identity(&sha('a'), &sha('B')).unwrap();
        assert!(matches!(
            file.check_identity(&sha('c'), &sha('b')),
            Err(Error::Mismatch(_))
        ));
        assert!(matches!(
            file.check_identity(&sha('a'), &sha('c')),
            Err(Error::Mismatch(_))
        ));
    }
}
