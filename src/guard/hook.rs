//! The guardrail as a model hook: at its hook point, encode the selected SAE features, gate each
//! row, and clamp the gated rows' firing tokens (§3 of the spec).
//!
//! Per row, on its real tokens only (so a row's decision and output do not depend on padding or
//! on the other rows of the batch):
//! 1. `activity[t]`: some selected feature is > 0 at token `t`; the token at absolute position 0
//!    is never active (the reference zeroes it);
//! 2. the gate's decision over the row's sequence so far;
//! 3. the clamp ([`clamp_residual`], e.g. the paper's ClampAll −c) at active tokens of gated rows.
//!
//! **Generation policy.** A pass whose row starts at position 0 (a prompt) starts a new
//! [`GateStream`] for that row, pushes every prompt token and decides on the whole prompt, as the
//! paper's single-pass evaluation does. A pass whose row starts later (a KV-cached decoding step)
//! continues the row's stream: each new token is pushed (O(1)) and the gate is re-decided over the
//! full prefix, prompt included; the new token is clamped iff it is active and the gate is then
//! on. So the gate can switch on during generation (the answer drifts into forget territory) or
//! off (for ρ, enough benign tokens dilute it), and the decision always equals the batch gate over
//! the whole prefix; it never degenerates to the one-token ρ of naive KV-cached decoding.
//!
//! **Evidence.** When the guardrail counts user text ([`Evidence::UserText`]) and the batch says
//! which tokens are evidence ([`crate::model::Batch::with_evidence`]:
//! say, what the user wrote, not the chat template's own tokens), only those are pushed to the gate;
//! once the gate is on, every active token of the row is clamped, evidence or not.
//!
//! **Refusal.** A guardrail acting by [`Intervention::Refuse`] decides and records as above but
//! edits nothing; its caller refuses the gated rows.
//!
//! **Probe gate.** When the file holds a [`super::Probe`], the gate's per-token signal is the
//! probe's logit (on the residual `act`, or on the SAE's full encoding of it) instead of the
//! activity, pushed for every evidence token except absolute position 0; the activity still says
//! which tokens of a gated row are clamped (probe decides, SAE clamps).
//!
//! Rows whose gate never fires, and tokens that are not clamped, are returned bit for bit as they
//! came in. Every call is recorded ([`PassRecord`]) for `dsg explain`.

use std::path::Path;

use candle_core::Tensor;

use super::file::Evidence;
use super::intervention::Intervention;
use super::{clamp_mask, clamp_residual, GateDecision, GateStream, GuardrailFile};
use crate::model::fetch::sha256_file;
use crate::model::{HookContext, HookPoint, Hooks};
use crate::sae::{Normalization, Sae};
use crate::{Error, Result};

/// One row of one hooked forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct RowRecord {
    /// Position of the row's first token in this pass.
    pub start: usize,
    /// The row's tokens in this pass.
    pub tokens: Vec<u32>,
    /// The selected features (ids) active at each of these tokens.
    pub active_features: Vec<Vec<u32>>,
    /// Whether each token was clamped.
    pub clamped: Vec<bool>,
    /// The gate's decision over the row's whole sequence up to the end of this pass.
    pub decision: GateDecision,
}

/// What one call of the hook saw and did, per row.
#[derive(Debug, Clone, PartialEq)]
pub struct PassRecord {
    /// One record per batch row.
    pub rows: Vec<RowRecord>,
}

/// A loaded guardrail bound to its SAE: a [`Hooks`] implementation at the guardrail's hook point.
pub struct Guardrail {
    file: GuardrailFile,
    sae: Sae,
    features: Vec<usize>,
    decoder_rows: Tensor,
    streams: Vec<GateStream>,
    records: Vec<PassRecord>,
    refuse: bool,
    /// Per batch row, whether the guardrail may edit it (`None`: every row).
    acting: Option<Vec<bool>>,
}

/// The sha256 of a model or SAE: of the file itself, or, for a directory, of the listing of its
/// files' names and sha256s (sorted).
pub fn artifact_sha256(path: &Path) -> Result<String> {
    if !path.is_dir() {
        return sha256_file(path);
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let p = entry.map_err(|e| Error::io(path, e))?.path();
        if p.is_file() {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            entries.push((name, sha256_file(&p)?));
        }
    }
    Ok(listing_sha256(entries))
}

/// The digest [`artifact_sha256`] gives a folder whose files have these names and sha256s.
pub(crate) fn listing_sha256(files: Vec<(String, String)>) -> String {
    use sha2::Digest;
    let mut lines: Vec<String> = files
        .into_iter()
        .map(|(name, sha)| format!("{name} {sha}\n"))
        .collect();
    lines.sort();
    format!("{:x}", sha2::Sha256::digest(lines.concat()))
}

impl Guardrail {
    /// Binds `file` to `sae`, refusing (fail closed) unless the model and SAE digests match the
    /// file's, the SAE has the file's width, reads `d_model`-wide activations, and sits at the
    /// file's hook point.
    pub fn new(
        file: GuardrailFile,
        sae: &Sae,
        model_sha256: &str,
        sae_sha256: &str,
        d_model: usize,
    ) -> Result<Self> {
        file.validate()?;
        file.check_identity(model_sha256, sae_sha256)?;
        if sae.d_sae() != file.d_sae || sae.d_in() != d_model {
            return Err(Error::Mismatch(format!(
                "guardrail expects an SAE with {} features reading d_model {d_model}; the SAE has {} features and d_in {}",
                file.d_sae,
                sae.d_sae(),
                sae.d_in()
            )));
        }
        if let Some(h) = sae.hook() {
            if h != file.hook_point {
                return Err(Error::Mismatch(format!(
                    "guardrail hooks {}, but the SAE reads {h}",
                    file.hook_point
                )));
            }
        }
        if let Some(probe) = &file.probe {
            probe.validate(probe.input.width(d_model, sae.d_sae()))?;
        }
        if sae.normalization() != Normalization::None {
            return Err(Error::Unsupported(format!(
                "guardrails on SAEs with {} input normalisation (the clamp edits raw residuals)",
                sae.normalization().name()
            )));
        }
        let features: Vec<usize> = file.feature_ids().iter().map(|&f| f as usize).collect();
        let decoder_rows = sae.decoder_rows(&features)?;
        Ok(Guardrail {
            file,
            sae: sae.clone(),
            features,
            decoder_rows,
            streams: Vec::new(),
            records: Vec::new(),
            refuse: false,
            acting: None,
        })
    }

    /// The same guardrail with another gate (e.g. a hand-set threshold, or `τ < 0` to clamp
    /// every active token); the calibration record is dropped, and no state is carried over.
    pub fn with_gate(&self, gate: super::Gate) -> Result<Guardrail> {
        gate.validate()?;
        let mut file = self.file.clone();
        file.gate = gate;
        file.calibration = None;
        file.validate()?;
        Ok(Guardrail {
            file,
            ..self.fork()
        })
    }

    /// The same guardrail acting by `intervention` when its gate fires: another clamp, or a
    /// refusal (the hook then decides but edits nothing; see [`Intervention`]). No state is carried
    /// over.
    pub fn with_intervention(&self, intervention: Intervention) -> Result<Guardrail> {
        intervention.validate()?;
        let mut g = self.with_gate(self.file.gate)?;
        g.file.calibration = self.file.calibration.clone();
        match intervention {
            Intervention::Clamp { clamp } => {
                g.file.clamp = clamp;
                g.refuse = false;
            }
            Intervention::Refuse => g.refuse = true,
        }
        Ok(g)
    }

    /// The same guardrail (gate, calibration, intervention) with no row state: for a request
    /// prefilled on its own before it joins a running batch ([`Self::append_rows`]).
    pub fn fork(&self) -> Guardrail {
        Guardrail {
            file: self.file.clone(),
            sae: self.sae.clone(),
            features: self.features.clone(),
            decoder_rows: self.decoder_rows.clone(),
            streams: Vec::new(),
            records: Vec::new(),
            refuse: self.refuse,
            acting: None,
        }
    }

    /// Moves `other`'s rows (their gate streams) after this guardrail's rows, as
    /// [`crate::model::KvCache::append_rows`] does with their caches; `other` keeps no rows.
    pub fn append_rows(&mut self, other: &mut Guardrail) {
        self.streams.append(&mut other.streams);
    }

    /// Keeps the rows where `keep` is true (in order), as
    /// [`crate::model::KvCache::retain_rows`] does.
    pub fn retain_rows(&mut self, keep: &[bool]) {
        let mut flags = keep.iter();
        self.streams
            .retain(|_| flags.next().copied().unwrap_or(false));
    }

    /// Per batch row, whether the guardrail may edit it (`None`, the default: every row). A row
    /// it may not edit is still gated and recorded (its decision is reported) but passes
    /// through unchanged: a server's per-request choice of guardrails.
    pub fn set_acting_rows(&mut self, acting: Option<Vec<bool>>) {
        self.acting = acting;
    }

    /// What the guardrail does when its gate fires.
    pub fn intervention(&self) -> Intervention {
        if self.refuse {
            Intervention::Refuse
        } else {
            Intervention::Clamp {
                clamp: self.file.clamp,
            }
        }
    }

    /// The SAE the guardrail reads its features with.
    pub fn sae(&self) -> &Sae {
        &self.sae
    }

    /// The guardrail's description.
    pub fn file(&self) -> &GuardrailFile {
        &self.file
    }

    /// Every call recorded so far, oldest first.
    pub fn records(&self) -> &[PassRecord] {
        &self.records
    }

    /// Removes and returns the recorded calls.
    pub fn take_records(&mut self) -> Vec<PassRecord> {
        std::mem::take(&mut self.records)
    }

    /// The current decision of each row's gate (over everything it has seen).
    pub fn decisions(&self) -> Vec<GateDecision> {
        self.streams.iter().map(GateStream::decision).collect()
    }

    /// Row `b`'s activity from its selected features, its gate updated with `signal` (one value
    /// per token, pushed where `pushed`), and its clamp mask.
    fn row(
        &mut self,
        b: usize,
        start: usize,
        tokens: &[u32],
        selected: &[Vec<f32>],
        signal: Option<&[f64]>,
        pushed: &[bool],
    ) -> Result<RowRecord> {
        let active_features: Vec<Vec<u32>> = selected
            .iter()
            .enumerate()
            .map(|(t, values)| {
                let first_token = start + t == 0;
                self.features
                    .iter()
                    .zip(values)
                    .filter(|(_, &v)| !first_token && v > 0.0)
                    .map(|(&f, _)| f as u32)
                    .collect()
            })
            .collect();
        let activity: Vec<bool> = active_features.iter().map(|f| !f.is_empty()).collect();
        // The SAE gate's signal is the activity itself (0/1, exact in f64).
        let value = |t: usize| signal.map_or(f64::from(u8::from(activity[t])), |s| s[t]);
        if start == 0 {
            let mut stream = self.file.gate.stream();
            for t in (0..activity.len()).filter(|&t| pushed[t]) {
                stream.push(value(t));
            }
            if b < self.streams.len() {
                self.streams[b] = stream;
            } else {
                self.streams.push(stream);
            }
        }
        let stream = self.streams.get_mut(b).ok_or_else(|| {
            Error::Invalid(format!(
                "row {b} continues at position {start} but its prompt never passed the guardrail"
            ))
        })?;
        let clamped = if start == 0 {
            clamp_mask(&activity, stream.decision().fired)
        } else {
            activity
                .iter()
                .enumerate()
                .map(|(t, &a)| {
                    if pushed[t] {
                        stream.push(value(t));
                    }
                    a && stream.decision().fired
                })
                .collect()
        };
        Ok(RowRecord {
            start,
            tokens: tokens.to_vec(),
            active_features,
            clamped,
            decision: stream.decision(),
        })
    }
}

impl Hooks for Guardrail {
    fn wants(&self, point: HookPoint) -> bool {
        point == self.file.hook_point
    }

    fn visit(
        &mut self,
        point: HookPoint,
        ctx: &HookContext,
        act: &Tensor,
    ) -> Result<Option<Tensor>> {
        if point != self.file.hook_point {
            return Ok(None);
        }
        let (batch, seq, _) = act.dims3()?;
        let selected = self.sae.encode_subset(act, &self.features)?;
        let values = selected.to_vec3::<f32>()?;
        let logits = match &self.file.probe {
            Some(p) => Some(p.token_logits(&p.input.features(&self.sae, act)?, ctx.lengths)?),
            None => None,
        };
        let evidence = ctx
            .evidence
            .filter(|_| self.file.evidence == Evidence::UserText);
        let mut mask = vec![false; batch * seq];
        let mut rows = Vec::with_capacity(batch);
        for (b, row_values) in values.iter().enumerate() {
            let (len, start) = (ctx.lengths[b], ctx.start_positions[b]);
            // A probe never scores absolute position 0; the SAE gate counts it (as inactive).
            let pushed: Vec<bool> = (0..len)
                .map(|t| evidence.is_none_or(|e| e[b][t]) && (logits.is_none() || start + t != 0))
                .collect();
            let mut record = self.row(
                b,
                start,
                &ctx.tokens[b],
                &row_values[..len],
                logits.as_ref().map(|l| l[b].as_slice()),
                &pushed,
            )?;
            if self
                .acting
                .as_ref()
                .is_some_and(|a| !a.get(b).copied().unwrap_or(true))
            {
                record.clamped.fill(false);
            }
            mask[b * seq..b * seq + len].copy_from_slice(&record.clamped);
            rows.push(record);
        }
        self.records.push(PassRecord { rows });
        if self.refuse || !mask.contains(&true) {
            return Ok(None);
        }
        clamp_residual(act, &selected, &self.decoder_rows, &mask, &self.file.clamp).map(Some)
    }
}
