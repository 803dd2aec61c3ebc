//! Evaluation tracks of issue #11 (`dsg forgetting …`): each track is one command that fits or
//! loads a guardrail, measures it, and writes `report.json` (every number), `report.md` (the
//! tables and the exact command) and SVG figures into one folder. What is generic lives here: the
//! output folder check, the stage timer and the writing of the files.
//!
//! * [`hazard`]: Track H, WMDP-bio detection on free-form and MCQ prompts.
//! * [`knowledge`]: Track K, knowledge the default model has (ARC-Easy life science, MMLU).
//! * [`topics`]: the keyword rule that gives ARC questions a science topic.

pub mod hazard;
pub mod knowledge;
pub mod tofu;
pub mod topics;

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::output::{check_output_dir, Overwrite};
use crate::{Error, Result};

/// A track's progress callback: (stage, done, total).
pub type Progress<'a> = dyn FnMut(&str, usize, usize) + 'a;

/// Passes a fit's progress on to a track's callback, its stages prefixed `fit: `.
pub(crate) struct FitRelay<'a, 'b>(pub(crate) &'a mut Progress<'b>);

impl crate::guard::FitObserver for FitRelay<'_, '_> {
    fn progress(&mut self, stage: &str, done: usize, total: usize) {
        (self.0)(&format!("fit: {stage}"), done, total);
    }
}

/// Wall-clock time of a track's stages, in order.
#[derive(Debug, Clone)]
pub struct Stopwatch {
    started: Instant,
    last: Instant,
    stages: Vec<Stage>,
}

/// One timed stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// What ran.
    pub name: String,
    /// Its wall-clock seconds.
    pub seconds: f64,
}

impl Default for Stopwatch {
    fn default() -> Self {
        Self::new()
    }
}

impl Stopwatch {
    /// Starts timing now.
    pub fn new() -> Stopwatch {
        let now = Instant::now();
        Stopwatch {
            started: now,
            last: now,
            stages: Vec::new(),
        }
    }

    /// Ends the current stage as `name` and starts the next one.
    pub fn lap(&mut self, name: &str) {
        let now = Instant::now();
        self.stages.push(Stage {
            name: name.to_string(),
            seconds: (now - self.last).as_secs_f64(),
        });
        self.last = now;
    }

    /// The stages ended so far.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Seconds since the start.
    pub fn total(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// A track's result files: the report as JSON and Markdown, and figures (file name, SVG text).
#[derive(Debug, Clone)]
pub struct TrackFiles {
    /// `report.json`.
    pub json: serde_json::Value,
    /// `report.md`.
    pub markdown: String,
    /// SVG figures: file name and content.
    pub figures: Vec<(String, String)>,
}

/// The fixed report names of a track's folder.
pub const REPORT_NAMES: [&str; 2] = ["report.json", "report.md"];

/// Checks that `dir` (the `--out` option) may receive `names`, besides the reports: not an input,
/// and (unless forced) none of them exists yet.
pub fn check_out(dir: &Path, names: &[&str], inputs: &[&Path], overwrite: Overwrite) -> Result<()> {
    let all: Vec<&str> = REPORT_NAMES
        .iter()
        .copied()
        .chain(names.iter().copied())
        .collect();
    check_output_dir(dir, "--out", &all, inputs, overwrite)
}

/// Any serialisable report as a JSON value.
pub fn to_json(report: &impl Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(report)
        .map_err(|e| Error::Invalid(format!("cannot serialise the report: {e}")))
}

impl TrackFiles {
    /// Writes the files into `dir`, creating it.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = serde_json::to_string_pretty(&self.json)
            .map_err(|e| Error::Invalid(format!("cannot serialise the report: {e}")))?;
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
        };
        write("report.json", &(json + "\n"))?;
        write("report.md", &self.markdown)?;
        for (name, svg) in &self.figures {
            write(name, svg)?;
        }
        Ok(())
    }
}
