//! Evaluation harnesses driven through the library.
//!
//! * [`perplexity`] and [`speed`]: the model itself; [`bench`](mod@bench): the `dsg bench` tables.
//! * [`prompts`]: chat-formatted MCQ prompts and their bypass variants.
//! * [`detection`]: gate quality (AUROC, TPR/FPR, bypass rates) from per-prompt token activity.
//! * [`metrics`]: AUROC with bootstrap intervals, rates with Wilson intervals.
//! * [`plot`]: SVG histograms.
//! * [`explain`]: one prompt's decisions and firing features, as text or an HTML page.
//! * [`gate_report`]: the `dsg eval gate` report over a suite, and its files.
//! * [`layers`]: which layer to put an SAE at (short SAEs compared).
//! * [`suite`]: the prompt sets of a forget domain's gate evaluation.
//! * [`track`]: the `dsg forgetting` tracks (one command, one report folder each).
//! * [`tradeoff`](mod@tradeoff): `dsg bench tradeoff`, DSG against the unlearning baselines.
//! * [`mcq`]: MCQ accuracy (paper, lm-eval and cloze protocols), the option-order filters.
//! * [`quality`]: output quality under a guardrail: the gibberish, refusal and gate rates of free
//!   generations, next-token KL to the unguarded model, the `dsg eval quality` report.

pub mod bench;
pub mod detection;
pub mod explain;
pub mod gate_report;
pub mod layers;
pub mod mcq;
pub mod metrics;
pub mod perplexity;
pub mod plot;
pub mod prompts;
pub mod quality;
pub mod speed;
pub mod suite;
pub mod tofu;
pub mod track;
pub mod tradeoff;
