//! Hook points: named places in the forward pass where a caller can read or replace activations.
//!
//! Names follow TransformerLens (`blocks.{L}.hook_resid_post`, …). The Hugging Face module path of a
//! decoder layer (`model.layers.{L}`, sparsify's `layers.{L}`, GPT-2's `transformer.h.{L}`) names the
//! layer's output, i.e. `blocks.{L}.hook_resid_post`.

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;

use crate::{Error, Result};

/// Where inside a block an activation is taken.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Site {
    /// The residual stream entering the block.
    ResidPre,
    /// The attention sublayer's output (after Gemma 2's post-attention norm), before it is added.
    AttnOut,
    /// The residual stream between attention and MLP.
    ResidMid,
    /// The MLP sublayer's output (after Gemma 2's post-feedforward norm), before it is added.
    MlpOut,
    /// The residual stream leaving the block.
    ResidPost,
}

impl Site {
    /// All sites in the order the forward pass visits them.
    pub const ALL: [Site; 5] = [
        Site::ResidPre,
        Site::AttnOut,
        Site::ResidMid,
        Site::MlpOut,
        Site::ResidPost,
    ];

    /// The TransformerLens suffix (`hook_resid_post`, …).
    pub fn tl_name(self) -> &'static str {
        match self {
            Site::ResidPre => "hook_resid_pre",
            Site::AttnOut => "hook_attn_out",
            Site::ResidMid => "hook_resid_mid",
            Site::MlpOut => "hook_mlp_out",
            Site::ResidPost => "hook_resid_post",
        }
    }
}

/// A hook point: a block index and a site within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookPoint {
    /// 0-based block index.
    pub layer: usize,
    /// The site within the block.
    pub site: Site,
}

impl HookPoint {
    /// The residual stream after block `layer` (DSG's usual site).
    pub fn resid_post(layer: usize) -> Self {
        HookPoint {
            layer,
            site: Site::ResidPost,
        }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocks.{}.{}", self.layer, self.site.tl_name())
    }
}

impl FromStr for HookPoint {
    type Err = Error;

    /// Parses TransformerLens names and the HF/sparsify/GPT-2 module paths of a decoder layer.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "hook point {s:?}: expected `blocks.{{L}}.hook_{{resid_pre,attn_out,resid_mid,mlp_out,resid_post}}` \
                 or a layer path `model.layers.{{L}}` / `layers.{{L}}` / `transformer.h.{{L}}`"
            ))
        };
        let parse_layer = |t: &str| t.parse::<usize>().map_err(|_| bad());
        if let Some(rest) = s.strip_prefix("blocks.") {
            let (layer, suffix) = rest.split_once('.').ok_or_else(bad)?;
            let site = Site::ALL
                .into_iter()
                .find(|site| site.tl_name() == suffix)
                .ok_or_else(bad)?;
            return Ok(HookPoint {
                layer: parse_layer(layer)?,
                site,
            });
        }
        for prefix in ["model.layers.", "layers.", "transformer.h.", "h."] {
            if let Some(layer) = s.strip_prefix(prefix) {
                return Ok(HookPoint::resid_post(parse_layer(layer)?));
            }
        }
        Err(bad())
    }
}

impl serde::Serialize for HookPoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HookPoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a hook knows about the batch whose activation it sees.
#[derive(Debug, Clone, Copy)]
pub struct HookContext<'a> {
    /// Number of real (non-padding) new tokens in each row of this pass; padding is on the right.
    pub lengths: &'a [usize],
    /// Position of each row's first new token in its sequence (0 for a prompt pass without cache).
    pub start_positions: &'a [usize],
    /// The new token ids of each row (unpadded).
    pub tokens: &'a [Vec<u32>],
    /// Per row and new token, whether it counts as evidence for a gate ([`super::Batch::with_evidence`]);
    /// `None`: every token does.
    pub evidence: Option<&'a [Vec<bool>]>,
}

/// Observers and editors of activations. The forward pass calls [`Hooks::visit`] at every point for
/// which [`Hooks::wants`] is true; returning `Some(t)` replaces the activation with `t` (same shape).
///
/// Activations are `(batch, seq, d_model)` f32 tensors; rows are right-padded to the longest row and
/// padding positions must be left alone (their values never reach real tokens).
pub trait Hooks {
    /// Whether this hook set needs to see `point`.
    fn wants(&self, point: HookPoint) -> bool;
    /// Sees the activation at `point`; may return a replacement.
    fn visit(
        &mut self,
        point: HookPoint,
        ctx: &HookContext,
        act: &Tensor,
    ) -> Result<Option<Tensor>>;
}

/// No hooks: the plain forward pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn wants(&self, _: HookPoint) -> bool {
        false
    }
    fn visit(&mut self, _: HookPoint, _: &HookContext, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// Records the activations at chosen hook points (the last pass's value for each point).
#[derive(Debug, Default)]
pub struct Capture {
    points: Vec<HookPoint>,
    /// Captured activations, in the order of `points`; `None` until the pass reaches the point.
    pub values: Vec<Option<Tensor>>,
}

impl Capture {
    /// Captures the given points.
    pub fn new(points: impl IntoIterator<Item = HookPoint>) -> Self {
        let points: Vec<_> = points.into_iter().collect();
        let values = vec![None; points.len()];
        Capture { points, values }
    }

    /// The captured activation at `point`, if it was captured.
    pub fn get(&self, point: HookPoint) -> Option<&Tensor> {
        let i = self.points.iter().position(|p| *p == point)?;
        self.values[i].as_ref()
    }
}

impl Hooks for Capture {
    fn wants(&self, point: HookPoint) -> bool {
        self.points.contains(&point)
    }
    fn visit(&mut self, point: HookPoint, _: &HookContext, act: &Tensor) -> Result<Option<Tensor>> {
        if let Some(i) = self.points.iter().position(|p| *p == point) {
            self.values[i] = Some(act.clone());
        }
        Ok(None)
    }
}

/// A closure at one hook point.
pub struct FnHook<F> {
    point: HookPoint,
    f: F,
}

impl<F> FnHook<F>
where
    F: FnMut(&HookContext, &Tensor) -> Result<Option<Tensor>>,
{
    /// Calls `f` at `point`.
    pub fn new(point: HookPoint, f: F) -> Self {
        FnHook { point, f }
    }
}

impl<F> Hooks for FnHook<F>
where
    F: FnMut(&HookContext, &Tensor) -> Result<Option<Tensor>>,
{
    fn wants(&self, point: HookPoint) -> bool {
        point == self.point
    }
    fn visit(
        &mut self,
        point: HookPoint,
        ctx: &HookContext,
        act: &Tensor,
    ) -> Result<Option<Tensor>> {
        if point == self.point {
            (self.f)(ctx, act)
        } else {
            Ok(None)
        }
    }
}

/// Several hook sets applied in order; each sees the previous one's replacement.
#[derive(Default)]
pub struct HookList<'a> {
    hooks: Vec<&'a mut dyn Hooks>,
}

impl<'a> HookList<'a> {
    /// An empty list.
    pub fn new() -> Self {
        HookList { hooks: Vec::new() }
    }

    /// Appends a hook set.
    pub fn push(&mut self, hooks: &'a mut dyn Hooks) {
        self.hooks.push(hooks);
    }
}

impl Hooks for HookList<'_> {
    fn wants(&self, point: HookPoint) -> bool {
        self.hooks.iter().any(|h| h.wants(point))
    }
    fn visit(
        &mut self,
        point: HookPoint,
        ctx: &HookContext,
        act: &Tensor,
    ) -> Result<Option<Tensor>> {
        let mut current: Option<Tensor> = None;
        for h in self.hooks.iter_mut() {
            if h.wants(point) {
                let input = current.as_ref().unwrap_or(act);
                if let Some(t) = h.visit(point, ctx, input)? {
                    current = Some(t);
                }
            }
        }
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tl_and_hf_names() {
        let p: HookPoint = "blocks.3.hook_resid_post".parse().unwrap();
        assert_eq!(p, HookPoint::resid_post(3));
        assert_eq!(p.to_string(), "blocks.3.hook_resid_post");
        assert_eq!(
            "model.layers.7".parse::<HookPoint>().unwrap(),
            HookPoint::resid_post(7)
        );
        assert_eq!(
            "layers.0".parse::<HookPoint>().unwrap(),
            HookPoint::resid_post(0)
        );
        assert_eq!(
            "transformer.h.11".parse::<HookPoint>().unwrap(),
            HookPoint::resid_post(11)
        );
        let mid: HookPoint = "blocks.2.hook_resid_mid".parse().unwrap();
        assert_eq!(mid.site, Site::ResidMid);
        assert!("blocks.x.hook_resid_post".parse::<HookPoint>().is_err());
        assert!("blocks.1.hook_nothing".parse::<HookPoint>().is_err());
        assert!("decoder.3".parse::<HookPoint>().is_err());
    }
}
