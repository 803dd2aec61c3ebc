//! `dsg eval quality`: the base (unguarded) and the guarded model side by side on free generation
//! for a forget prompt set and a benign one ([`generation_quality`]), and optionally their
//! next-token KL and perplexities on WikiText windows ([`next_token_kl`]).
//!
//! Decoding is greedy, stops at the tokenizer's end-of-sequence token, and the base model answers
//! the same prompts with the same options, so any difference is the guardrails'. Files written
//! into the output folder: `report.json` (the rates, no answers), `report.md`, and
//! `samples.jsonl` (one line per answer: set, model, prompt, answer, refused, gated and the
//! detector's measurements).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::degenerate::DegenerateThresholds;
use super::generation::{generation_quality, question_stems, FreePrompt, GenerationQuality};
use super::kl::next_token_kl;
use crate::data::Split;
use crate::eval::metrics::Rate;
use crate::generate::GenerateOptions;
use crate::guard::{Gate, Guardrail};
use crate::model::{HookList, LoadedModel, NoHooks};
use crate::output::{check_output_dir, Overwrite};
use crate::{Error, Result};

/// WikiText windows for the KL and perplexity comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WikiWindows {
    /// The text file (read as UTF-8, tokenised without BOS).
    pub file: PathBuf,
    /// How many windows, from the start of the text.
    pub windows: usize,
    /// Tokens per window.
    pub window_tokens: usize,
}

/// The configuration of `dsg eval quality`.
#[derive(Debug, Clone)]
pub struct QualityConfig {
    /// The forget domain's MCQ file; its question stems are the forget prompts.
    pub forget: PathBuf,
    /// Benign MCQ files; their question stems are the benign prompts.
    pub benign: Vec<PathBuf>,
    /// Which split of each file.
    pub split: Split,
    /// At most this many prompts per file (a seeded sample); default all.
    pub limit: Option<usize>,
    /// Seed of that sample.
    pub seed: u64,
    /// New tokens per answer.
    pub max_new_tokens: usize,
    /// Force every guardrail's gate on (`τ < 0`), to measure the intervention itself.
    pub gate_on: bool,
    /// When the detector calls an answer degenerate.
    pub thresholds: DegenerateThresholds,
    /// The KL comparison, if wanted.
    pub wikitext: Option<WikiWindows>,
    /// Folder for the report files.
    pub out: PathBuf,
    /// Whether existing report files may be replaced.
    pub overwrite: Overwrite,
}

/// The files `dsg eval quality` writes into `--out`.
pub const OUTPUT_FILES: [&str; 3] = ["report.json", "report.md", "samples.jsonl"];

impl QualityConfig {
    /// Checks the options, the inputs' existence and the output folder before any model work;
    /// errors name the option.
    pub fn check(&self, guard_files: &[PathBuf]) -> Result<()> {
        if guard_files.is_empty() {
            return Err(Error::out_of_range(
                "--guard",
                "none",
                "at least one guardrail",
            ));
        }
        if self.benign.is_empty() {
            return Err(Error::out_of_range("--benign", "none", "at least one file"));
        }
        if self.limit == Some(0) {
            return Err(Error::out_of_range("--limit", 0, "at least 1"));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::out_of_range("--max-tokens", 0, "at least 1"));
        }
        self.thresholds.validate()?;
        let mut inputs: Vec<(&str, &Path)> = vec![("--forget", &self.forget)];
        inputs.extend(self.benign.iter().map(|b| ("--benign", b.as_path())));
        if let Some(w) = &self.wikitext {
            if w.windows == 0 {
                return Err(Error::out_of_range("--windows", 0, "at least 1"));
            }
            if w.window_tokens < 2 {
                return Err(Error::out_of_range(
                    "--window-tokens",
                    w.window_tokens,
                    "at least 2",
                ));
            }
            inputs.push(("--wikitext", &w.file));
        }
        for (option, path) in &inputs {
            if !path.is_file() {
                return Err(Error::missing(path, format!("{option} file")));
            }
        }
        let mut all: Vec<&Path> = inputs.iter().map(|(_, p)| *p).collect();
        all.extend(guard_files.iter().map(PathBuf::as_path));
        check_output_dir(&self.out, "--out", &OUTPUT_FILES, &all, self.overwrite)
    }
}

/// One prompt set under the base and the guarded model.
#[derive(Debug, Clone, Serialize)]
pub struct SetQuality {
    /// `forget` or `benign`.
    pub name: String,
    /// The files its prompts come from.
    pub files: Vec<PathBuf>,
    /// The base model's generations.
    pub base: GenerationQuality,
    /// The guarded model's generations.
    pub guarded: GenerationQuality,
}

/// KL and perplexity on WikiText windows.
#[derive(Debug, Clone, Serialize)]
pub struct WikiQuality {
    /// Which windows.
    pub windows: WikiWindows,
    /// Mean KL(p_base ‖ p_guarded), nats.
    pub mean_kl: f64,
    /// Largest KL at a position, nats.
    pub max_kl: f64,
    /// Fraction of positions with KL above [`super::KL_CHANGED`].
    pub changed_fraction: f64,
    /// Perplexity of the base model.
    pub base_perplexity: f64,
    /// Perplexity of the guarded model.
    pub guarded_perplexity: f64,
    /// Predicted positions.
    pub n_predicted: usize,
}

/// The report of `dsg eval quality`.
#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    /// The model's name.
    pub model: String,
    /// The guardrails, as named by the caller.
    pub guards: Vec<String>,
    /// Per guardrail, its intervention (`clamp:500`, `refuse`, …).
    pub interventions: Vec<String>,
    /// Whether every gate was forced on.
    pub gate_on: bool,
    /// Which split of the MCQ files.
    pub split: String,
    /// New tokens per answer (greedy decoding).
    pub max_new_tokens: usize,
    /// The detector's thresholds.
    pub thresholds: DegenerateThresholds,
    /// The forget and benign sets.
    pub sets: Vec<SetQuality>,
    /// The WikiText comparison, when asked for.
    pub wikitext: Option<WikiQuality>,
    /// Wall time of the run, seconds.
    pub seconds: f64,
}

/// Runs `dsg eval quality` with `guards` (named by `guard_names`) and writes the report files;
/// `progress(stage, done, total)` as it goes.
pub fn run(
    lm: &LoadedModel,
    guards: &[Guardrail],
    guard_names: &[String],
    cfg: &QualityConfig,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<QualityReport> {
    let started = std::time::Instant::now();
    let mut guards: Vec<Guardrail> = guards
        .iter()
        .map(|g| match cfg.gate_on {
            true => g.with_gate(Gate::Paper { tau: -1.0 }),
            false => g.with_intervention(g.intervention()),
        })
        .collect::<Result<_>>()?;
    let opts = GenerateOptions {
        max_new_tokens: cfg.max_new_tokens,
        stop_tokens: lm.tokenizer.eos_id().into_iter().collect(),
        ..Default::default()
    };
    let wiki_ids = match &cfg.wikitext {
        Some(w) => Some(wiki_tokens(lm, w)?),
        None => None,
    };
    let forget = std::slice::from_ref(&cfg.forget);
    let mut sets = Vec::new();
    for (name, files) in [("forget", forget), ("benign", cfg.benign.as_slice())] {
        let mut prompts = Vec::new();
        for f in files {
            for stem in question_stems(f, cfg.split, cfg.limit, cfg.seed)? {
                prompts.push(FreePrompt::chat(&lm.tokenizer, &stem)?);
            }
        }
        if prompts.is_empty() {
            return Err(Error::Invalid(format!(
                "no {name} prompts in the {:?} split of {}",
                cfg.split,
                files[0].display()
            )));
        }
        let base_stage = format!("{name} base");
        let base = generation_quality(
            lm,
            &prompts,
            &mut [],
            &opts,
            &cfg.thresholds,
            &mut |d, t| progress(&base_stage, d, t),
        )?;
        let stage = format!("{name} guarded");
        let guarded = generation_quality(
            lm,
            &prompts,
            &mut guards,
            &opts,
            &cfg.thresholds,
            &mut |d, t| progress(&stage, d, t),
        )?;
        sets.push(SetQuality {
            name: name.into(),
            files: files.to_vec(),
            base,
            guarded,
        });
    }
    let wikitext = match (&cfg.wikitext, wiki_ids) {
        (Some(w), Some(ids)) => {
            progress("wikitext", 0, 1);
            let mut hooks = HookList::new();
            for g in guards.iter_mut() {
                hooks.push(g);
            }
            let bos = lm.tokenizer.leading_bos();
            let kl = next_token_kl(
                &lm.model,
                &ids,
                w.window_tokens,
                bos,
                &mut NoHooks,
                &mut hooks,
            )?;
            progress("wikitext", 1, 1);
            Some(WikiQuality {
                windows: w.clone(),
                mean_kl: kl.mean_kl,
                max_kl: kl.max_kl,
                changed_fraction: kl.changed_fraction,
                base_perplexity: kl.base_perplexity,
                guarded_perplexity: kl.guarded_perplexity,
                n_predicted: kl.n_predicted,
            })
        }
        _ => None,
    };
    let report = QualityReport {
        model: lm.name(),
        guards: guard_names.to_vec(),
        interventions: guards
            .iter()
            .map(|g| g.intervention().to_string())
            .collect(),
        gate_on: cfg.gate_on,
        split: format!("{:?}", cfg.split).to_lowercase(),
        max_new_tokens: cfg.max_new_tokens,
        thresholds: cfg.thresholds,
        sets,
        wikitext,
        seconds: started.elapsed().as_secs_f64(),
    };
    report.write(&cfg.out)?;
    Ok(report)
}

/// The first `windows × window_tokens` tokens of the WikiText file; fewer is an error naming
/// `--windows`, and a window longer than the model's context one naming `--window-tokens`.
fn wiki_tokens(lm: &LoadedModel, w: &WikiWindows) -> Result<Vec<u32>> {
    lm.model
        .config()
        .check_context("--window-tokens", w.window_tokens, w.window_tokens)?;
    let text = std::fs::read_to_string(&w.file).map_err(|e| Error::io(&w.file, e))?;
    let mut ids = lm.tokenizer.encode(&text, false)?;
    let want = w.windows.saturating_mul(w.window_tokens);
    if ids.len() < want {
        return Err(Error::out_of_range(
            "--windows",
            w.windows,
            format!(
                "at most {} windows of {} tokens ({} holds {} tokens)",
                ids.len() / w.window_tokens,
                w.window_tokens,
                w.file.display(),
                ids.len()
            ),
        ));
    }
    ids.truncate(want);
    Ok(ids)
}

fn pct(r: &Rate) -> String {
    if r.n == 0 {
        return "–".into();
    }
    r.percent()
}

impl QualityReport {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::from("# Output quality under guardrails\n\n");
        let _ = writeln!(
            md,
            "Model {}; guardrails {} ({}); gate {}; {} split; greedy, at most {} new tokens; {:.0} s.\n",
            self.model,
            self.guards.join(", "),
            self.interventions.join(", "),
            if self.gate_on { "forced on (τ < 0)" } else { "as calibrated" },
            self.split,
            self.max_new_tokens,
            self.seconds
        );
        md.push_str(
            "Gibberish: the degenerate-output detector (`dsg::eval::quality::degenerate`). \
             *answered*: among generated answers (refusals left out); *all*: over every prompt, \
             a refusal counting as not gibberish; *gated*: among generated answers whose gate fired. \
             95% Wilson intervals.\n\n",
        );
        md.push_str("| set | model | gibberish (answered) | gibberish (all) | gibberish (gated) | refused | gated |\n");
        md.push_str("|---|---|---|---|---|---|---|\n");
        for s in &self.sets {
            for (model, q) in [("base", &s.base), ("guarded", &s.guarded)] {
                let _ = writeln!(
                    md,
                    "| {} | {model} | {} | {} | {} | {} | {} |",
                    s.name,
                    pct(&q.gibberish_answered),
                    pct(&q.gibberish_all),
                    pct(&q.gibberish_gated),
                    pct(&q.refusal),
                    pct(&q.gated)
                );
            }
        }
        if let Some(w) = &self.wikitext {
            let _ = writeln!(
                md,
                "\n## WikiText ({} windows of {} tokens, {})\n\n\
                 | perplexity base | perplexity guarded | mean KL (nats) | max KL | positions changed |\n\
                 |---|---|---|---|---|\n\
                 | {:.3} | {:.3} | {:.5} | {:.4} | {:.1}% of {} |",
                w.windows.windows,
                w.windows.window_tokens,
                w.windows.file.display(),
                w.base_perplexity,
                w.guarded_perplexity,
                w.mean_kl,
                w.max_kl,
                100.0 * w.changed_fraction,
                w.n_predicted
            );
        }
        md
    }

    /// Writes `report.json` (rates only), `report.md` and `samples.jsonl` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let put = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| Error::io(p, e))
        };
        let mut json = serde_json::to_value(self).expect("the report serialises");
        for set in json["sets"].as_array_mut().into_iter().flatten() {
            for model in ["base", "guarded"] {
                if let Some(q) = set[model].as_object_mut() {
                    q.remove("samples");
                }
            }
        }
        put(
            "report.json",
            serde_json::to_string_pretty(&json).expect("a value serialises") + "\n",
        )?;
        put("report.md", self.markdown())?;
        let mut lines = String::new();
        for s in &self.sets {
            for (model, q) in [("base", &s.base), ("guarded", &s.guarded)] {
                for sample in &q.samples {
                    let mut v = serde_json::to_value(sample).expect("a sample serialises");
                    v["set"] = s.name.clone().into();
                    v["model"] = model.into();
                    lines.push_str(&v.to_string());
                    lines.push('\n');
                }
            }
        }
        put("samples.jsonl", lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::quality::{assess, Sample};

    fn quality(texts: &[&str]) -> GenerationQuality {
        GenerationQuality::new(
            texts
                .iter()
                .map(|t| Sample {
                    prompt: "Q?".into(),
                    answer: t.to_string(),
                    tokens: 3,
                    refused: false,
                    gated: false,
                    degenerate: assess(t, &DegenerateThresholds::default()),
                })
                .collect(),
        )
    }

    #[test]
    fn the_report_keeps_answers_out_of_its_json_and_in_the_samples() {
        let report = QualityReport {
            model: "m".into(),
            guards: vec!["g.json".into()],
            interventions: vec!["clamp:500".into()],
            gate_on: true,
            split: "heldout".into(),
            max_new_tokens: 8,
            thresholds: DegenerateThresholds::default(),
            sets: vec![SetQuality {
                name: "forget".into(),
                files: vec!["bio.json".into()],
                base: quality(&["Paris is in France."]),
                guarded: quality(&["or or or or", "It is."]),
            }],
            wikitext: None,
            seconds: 1.0,
        };
        let dir = std::env::temp_dir().join(format!("dsg-quality-report-{}", std::process::id()));
        report.write(&dir).unwrap();
        let json = std::fs::read_to_string(dir.join("report.json")).unwrap();
        assert!(
            !json.contains("samples") && !json.contains("Paris"),
            "{json}"
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["sets"][0]["guarded"]["gibberish_answered"]["k"], 1);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("samples.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            (&lines[1]["set"], &lines[1]["model"]),
            (&"forget".into(), &"guarded".into())
        );
        assert_eq!(lines[1]["degenerate"]["reason"], "repeated word");
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(md.contains("| forget | guarded | 50.0%"), "{md}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
