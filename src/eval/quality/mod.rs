//! Output quality under a guardrail: a degenerate-output ("gibberish") detector for free
//! generations ([`degenerate`]), the gibberish, refusal and gate rates of guarded free generation
//! on a prompt set ([`generation`]), the next-token KL divergence of a guarded model from the
//! unguarded one ([`kl`]), and the `dsg eval quality` report that puts them side by side for the
//! base and the guarded model ([`report`]).

pub mod degenerate;
pub mod generation;
pub mod kl;
pub mod report;

pub use degenerate::{
    assess, gibberish_rate, DegenerateReport, DegenerateThresholds, REASON_EMPTY, REASON_NON_WORDS,
    REASON_REPEATED_PHRASE, REASON_REPEATED_TRIGRAMS, REASON_REPEATED_WORD, REASON_SYMBOLS,
    REASON_WORD_SALAD, SALAD_CONJUNCTIONS, SALAD_MIN_WORDS,
};
pub use generation::{generation_quality, question_stems, FreePrompt, GenerationQuality, Sample};
pub use kl::{next_token_kl, next_token_kl_between, KlReport, KL_CHANGED};
pub use report::{QualityConfig, QualityReport, WikiWindows};
