//! ROUGE-1 and ROUGE-L as `rouge-score` 0.1.2 computes them with
//! `RougeScorer(['rouge1', 'rougeL'], use_stemmer=True)` (`rouge_score/rouge_scorer.py`,
//! `tokenize.py`, `tokenizers.py`): the tokenizer lowercases (Python's `str.lower`, which Rust's
//! `to_lowercase` matches), replaces each run of characters outside `[a-z0-9]` with a space,
//! splits on spaces, Porter-stems tokens longer than 3 characters ([`porter_stem`]) and drops
//! empty tokens. Then
//!
//! * ROUGE-1: unigram counts; overlap `Σ min(count_target, count_prediction)`; recall = overlap /
//!   max(target tokens, 1), precision = overlap / max(prediction tokens, 1);
//! * ROUGE-L: the longest common subsequence of the token lists; recall = LCS / target tokens,
//!   precision = LCS / prediction tokens, and all three 0 when either list is empty;
//! * F = 2PR / (P + R), 0 when P + R = 0.

use std::collections::HashMap;

use super::porter::porter_stem;

/// One ROUGE type's precision, recall and F-measure.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct RougeScore {
    /// Matched tokens over the prediction's tokens.
    pub precision: f64,
    /// Matched tokens over the target's tokens.
    pub recall: f64,
    /// Their harmonic mean.
    pub fmeasure: f64,
}

impl RougeScore {
    fn new(precision: f64, recall: f64) -> RougeScore {
        let fmeasure = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        RougeScore {
            precision,
            recall,
            fmeasure,
        }
    }
}

/// ROUGE-1 and ROUGE-L of a prediction against its target.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Rouge {
    /// ROUGE-1 (unigram overlap).
    pub rouge1: RougeScore,
    /// ROUGE-L (longest common subsequence).
    pub rouge_l: RougeScore,
}

/// `rouge-score`'s tokens of `text` with the stemmer on.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let spaced: String = lower
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                ' '
            }
        })
        .collect();
    spaced
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(|t| {
            if t.len() > 3 {
                porter_stem(t)
            } else {
                t.to_string()
            }
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// `scorer.score(target, prediction)` for `rouge1` and `rougeL` (target first, as
/// open-unlearning calls it with the ground truth and the generation).
pub fn rouge(target: &str, prediction: &str) -> Rouge {
    let t = rouge_tokens(target);
    let p = rouge_tokens(prediction);
    Rouge {
        rouge1: rouge_n1(&t, &p),
        rouge_l: rouge_lcs(&t, &p),
    }
}

fn rouge_n1(target: &[String], prediction: &[String]) -> RougeScore {
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    for t in target {
        counts.entry(t).or_default().0 += 1;
    }
    for p in prediction {
        counts.entry(p).or_default().1 += 1;
    }
    let overlap: usize = counts.values().map(|&(t, p)| t.min(p)).sum();
    RougeScore::new(
        overlap as f64 / prediction.len().max(1) as f64,
        overlap as f64 / target.len().max(1) as f64,
    )
}

fn rouge_lcs(target: &[String], prediction: &[String]) -> RougeScore {
    if target.is_empty() || prediction.is_empty() {
        return RougeScore::default();
    }
    let lcs = lcs_len(target, prediction) as f64;
    RougeScore::new(lcs / prediction.len() as f64, lcs / target.len() as f64)
}

/// Length of the longest common subsequence (two rows of the DP table).
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_rouge_score() {
        assert_eq!(
            rouge_tokens("The Geologist’s guide, 1956: running!"),
            ["the", "geologist", "s", "guid", "1956", "run"]
        );
        assert!(rouge_tokens("—…").is_empty());
    }

    #[test]
    fn empty_sides_score_zero() {
        assert_eq!(rouge("", "a b").rouge_l, RougeScore::default());
        assert_eq!(rouge("a b", "").rouge1.recall, 0.0);
        let r = rouge("the cat sat", "the cat");
        assert!((r.rouge_l.recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.rouge1.precision, 1.0);
    }
}
