//! A degenerate-output ("gibberish") detector for free generations.
//!
//! [`assess`] measures four things on a text, all without a dictionary file:
//!
//! * **Repetition.** The text is split on whitespace into words; each word is lowercased and stripped
//!   of leading and trailing characters that are not letters or digits (a word that is nothing but
//!   such characters, like `####`, is kept as written). `repeated_trigram_fraction` is the fraction of
//!   word trigrams (3 consecutive words) that equal an earlier trigram of the text, i.e.
//!   `1 − distinct / total`, and 0 for fewer than 3 words. `longest_word_run` is the longest run of
//!   one word repeated back to back (0 when the text has no words).
//! * **Non-words.** The letter words are the maximal runs of letters and digits (`char::is_alphanumeric`)
//!   holding at least one letter; apostrophes and hyphens split words (`can't` → `can`, `t`). A letter
//!   word is *not a plausible English word* when any of these holds (vowels are `aeiouy`, either case):
//!   1. it holds a letter outside ASCII (the rules judge English text);
//!   2. it has more than 3 letters and no vowel, unless it is an all-capital acronym of at most
//!      5 letters (`HTML`, `NTSC`);
//!   3. it has a run of 5 or more consonants (4 would flag `instruct`, `length`, `abstract`), with
//!      the same acronym exception;
//!   4. it has 3 or more identical letters in a row (`aaa`, either case);
//!   5. it switches from a lower-case to an upper-case letter twice or more (`xKqZp`; one switch is
//!      allowed, for `iPhone`, `JavaScript`, `camelCase`);
//!   6. it has a digit with a letter on either side (`a1b`; `5kg`, `x86`, `mp3` are fine).
//!
//!   `non_word_fraction` is the fraction of letter words that are not plausible (0 when there are
//!   none).
//! * **Symbols.** `symbol_fraction` is the fraction of the non-whitespace characters that are neither
//!   letters, digits nor common punctuation. Common punctuation is
//!   ``. , ; : ! ? ' " ` ( ) [ ] { } < > - _ / \ + = * % & |`` and the typographic
//!   `‘ ’ “ ” – — … °`; so `#`, `@`, `$`, `^`, `~`, emoji and the replacement character count as
//!   symbols.
//!
//! A text is **degenerate** when, checked in this order (the first that holds is the `reason`):
//! it is empty or whitespace only (`"empty"`); `longest_word_run ≥ repeated_word_run` (default 4,
//! `"repeated word"`); `repeated_trigram_fraction > max_repeated_trigram_fraction` (default 0.5,
//! `"repeated trigrams"`); `non_word_fraction > max_non_word_fraction` (default 0.3, `"non-words"`);
//! `symbol_fraction > max_symbol_fraction` (default 0.2, `"symbols"`). [`gibberish_rate`] counts the
//! degenerate texts of a set.

use std::collections::HashSet;

use crate::{Error, Result};

/// Reason of an empty or whitespace-only text.
pub const REASON_EMPTY: &str = "empty";
/// Reason of a word repeated back to back too often.
pub const REASON_REPEATED_WORD: &str = "repeated word";
/// Reason of too many repeated word trigrams.
pub const REASON_REPEATED_TRIGRAMS: &str = "repeated trigrams";
/// Reason of too many implausible words.
pub const REASON_NON_WORDS: &str = "non-words";
/// Reason of too many characters outside letters, digits and common punctuation.
pub const REASON_SYMBOLS: &str = "symbols";

/// When a text counts as degenerate (see the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DegenerateThresholds {
    /// Degenerate when the repeated-trigram fraction exceeds this (default 0.5).
    pub max_repeated_trigram_fraction: f64,
    /// Degenerate when one word repeats this many times in a row (default 4).
    pub repeated_word_run: usize,
    /// Degenerate when the non-word fraction exceeds this (default 0.3).
    pub max_non_word_fraction: f64,
    /// Degenerate when the symbol fraction exceeds this (default 0.2).
    pub max_symbol_fraction: f64,
}

impl Default for DegenerateThresholds {
    fn default() -> Self {
        DegenerateThresholds {
            max_repeated_trigram_fraction: 0.5,
            repeated_word_run: 4,
            max_non_word_fraction: 0.3,
            max_symbol_fraction: 0.2,
        }
    }
}

impl DegenerateThresholds {
    /// Checks the ranges: the fractions in `[0, 1]`, `repeated_word_run ≥ 2`.
    pub fn validate(&self) -> Result<()> {
        let fractions = [
            (
                "max_repeated_trigram_fraction",
                self.max_repeated_trigram_fraction,
            ),
            ("max_non_word_fraction", self.max_non_word_fraction),
            ("max_symbol_fraction", self.max_symbol_fraction),
        ];
        for (field, value) in fractions {
            if !(0.0..=1.0).contains(&value) {
                return Err(Error::out_of_range(field, value, "a fraction in [0, 1]"));
            }
        }
        if self.repeated_word_run < 2 {
            return Err(Error::out_of_range(
                "repeated_word_run",
                self.repeated_word_run,
                "at least 2",
            ));
        }
        Ok(())
    }
}

/// The measurements of one text and the verdict.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DegenerateReport {
    /// Fraction of word trigrams equal to an earlier one.
    pub repeated_trigram_fraction: f64,
    /// Longest run of one word repeated back to back (0 for an empty text).
    pub longest_word_run: usize,
    /// Fraction of letter words that are not plausible English words.
    pub non_word_fraction: f64,
    /// Fraction of non-whitespace characters that are not letters, digits or common punctuation.
    pub symbol_fraction: f64,
    /// Whether the text is degenerate.
    pub degenerate: bool,
    /// Why, when degenerate: one of the `REASON_*` constants.
    pub reason: Option<&'static str>,
}

/// Measures `text` and judges it against `thresholds` (see the [module documentation](self)).
pub fn assess(text: &str, thresholds: &DegenerateThresholds) -> DegenerateReport {
    let words = repetition_words(text);
    let repeated_trigram_fraction = repeated_trigram_fraction(&words);
    let longest_word_run = longest_run(&words);
    let non_word_fraction = non_word_fraction(text);
    let symbol_fraction = symbol_fraction(text);
    let reason = if text.trim().is_empty() {
        Some(REASON_EMPTY)
    } else if longest_word_run >= thresholds.repeated_word_run {
        Some(REASON_REPEATED_WORD)
    } else if repeated_trigram_fraction > thresholds.max_repeated_trigram_fraction {
        Some(REASON_REPEATED_TRIGRAMS)
    } else if non_word_fraction > thresholds.max_non_word_fraction {
        Some(REASON_NON_WORDS)
    } else if symbol_fraction > thresholds.max_symbol_fraction {
        Some(REASON_SYMBOLS)
    } else {
        None
    };
    DegenerateReport {
        repeated_trigram_fraction,
        longest_word_run,
        non_word_fraction,
        symbol_fraction,
        degenerate: reason.is_some(),
        reason,
    }
}

/// How many of `texts` are degenerate under `thresholds`, and how many texts there are.
pub fn gibberish_rate<S: AsRef<str>>(
    texts: impl IntoIterator<Item = S>,
    thresholds: &DegenerateThresholds,
) -> (usize, usize) {
    texts.into_iter().fold((0, 0), |(count, n), t| {
        let bad = assess(t.as_ref(), thresholds).degenerate;
        (count + usize::from(bad), n + 1)
    })
}

/// Whitespace-separated words, lowercased, stripped of surrounding non-alphanumerics (kept as
/// written when nothing alphanumeric is left).
fn repetition_words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            let s = w.trim_matches(|c: char| !c.is_alphanumeric());
            if s.is_empty() { w } else { s }.to_lowercase()
        })
        .collect()
}

fn repeated_trigram_fraction(words: &[String]) -> f64 {
    if words.len() < 3 {
        return 0.0;
    }
    let total = words.len() - 2;
    let distinct: HashSet<&[String]> = words.windows(3).collect();
    (total - distinct.len()) as f64 / total as f64
}

fn longest_run(words: &[String]) -> usize {
    let mut best = 0;
    let mut run = 0;
    for (i, w) in words.iter().enumerate() {
        run = if i > 0 && words[i - 1] == *w {
            run + 1
        } else {
            1
        };
        best = best.max(run);
    }
    best
}

fn non_word_fraction(text: &str) -> f64 {
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().any(char::is_alphabetic))
        .collect();
    if words.is_empty() {
        return 0.0;
    }
    let bad = words.iter().filter(|w| !plausible_word(w)).count();
    bad as f64 / words.len() as f64
}

fn is_vowel(c: char) -> bool {
    matches!(c.to_ascii_lowercase(), 'a' | 'e' | 'i' | 'o' | 'u' | 'y')
}

/// Whether an alphanumeric word holding a letter passes the rules of the module documentation.
fn plausible_word(word: &str) -> bool {
    let chars: Vec<char> = word.chars().collect();
    if chars.iter().any(|c| c.is_alphabetic() && !c.is_ascii()) {
        return false;
    }
    let letters: Vec<char> = chars
        .iter()
        .copied()
        .filter(char::is_ascii_alphabetic)
        .collect();
    let acronym = letters.len() <= 5 && letters.iter().all(char::is_ascii_uppercase);
    if !acronym {
        if letters.len() > 3 && !letters.iter().copied().any(is_vowel) {
            return false;
        }
        let mut consonants = 0;
        for &c in &chars {
            consonants = if c.is_ascii_alphabetic() && !is_vowel(c) {
                consonants + 1
            } else {
                0
            };
            if consonants >= 5 {
                return false;
            }
        }
    }
    let tripled = chars.windows(3).any(|w| {
        w[0].is_ascii_alphabetic()
            && w[0].eq_ignore_ascii_case(&w[1])
            && w[1].eq_ignore_ascii_case(&w[2])
    });
    let case_switches = chars
        .windows(2)
        .filter(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase())
        .count();
    let digit_inside = chars
        .windows(3)
        .any(|w| w[0].is_ascii_alphabetic() && w[1].is_ascii_digit() && w[2].is_ascii_alphabetic());
    !tripled && case_switches < 2 && !digit_inside
}

fn symbol_fraction(text: &str) -> f64 {
    const COMMON: &str = ".,;:!?'\"`()[]{}<>-_/\\+=*%&|‘’“”–—…°";
    let (mut n, mut symbols) = (0usize, 0usize);
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        n += 1;
        if !(c.is_alphanumeric() || COMMON.contains(c)) {
            symbols += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        symbols as f64 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(text: &str) -> DegenerateReport {
        assess(text, &DegenerateThresholds::default())
    }

    #[test]
    fn fluent_answers_are_not_degenerate() {
        let fluent = [
            "I can't help with that.",
            "The capital of France is Paris, which lies on the Seine.",
            "Here are three options:\n1. Wash your hands often.\n2. Stay home when sick.\n3. Get vaccinated.",
            "The tank holds 12.5 L (about 3.3 gallons) at 20 °C; that's 5kg of water per 10 cm.",
            "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5",
            "Instructions: construct the abstract strengths list using HTML and JavaScript on an iPhone.",
        ];
        for text in fluent {
            let r = judge(text);
            assert!(!r.degenerate, "{text:?}: {r:?}");
            assert_eq!(r.reason, None);
        }
    }

    #[test]
    fn degenerate_outputs_are_caught_with_their_reason() {
        let cases = [
            ("the the the the", REASON_REPEATED_WORD),
            ("virus virus virus virus virus virus", REASON_REPEATED_WORD),
            (
                "the cat sat on the cat sat on the cat sat on the cat sat on",
                REASON_REPEATED_TRIGRAMS,
            ),
            ("asdkjh qwrtzp xkcd", REASON_NON_WORDS),
            ("############", REASON_SYMBOLS),
            ("", REASON_EMPTY),
            (" \n\t ", REASON_EMPTY),
        ];
        for (text, reason) in cases {
            let r = judge(text);
            assert!(r.degenerate, "{text:?}: {r:?}");
            assert_eq!(r.reason, Some(reason), "{text:?}: {r:?}");
        }
    }

    #[test]
    fn measurements_follow_their_definitions() {
        let r = judge("The the THE the.");
        assert_eq!(r.longest_word_run, 4);
        assert_eq!(r.repeated_trigram_fraction, 0.5);
        let r = judge("one two three one two three");
        assert_eq!(r.longest_word_run, 1);
        assert_eq!(r.repeated_trigram_fraction, 1.0 / 4.0);
        assert_eq!(judge("a b").repeated_trigram_fraction, 0.0);
        // aaa (tripled), xKqZp (two case switches), a1b (digit inside), café (non-ASCII),
        // rhythm/NTSC/5kg/x86 are plausible.
        let r = judge("aaa xKqZp a1b café rhythm NTSC 5kg x86");
        assert_eq!(r.non_word_fraction, 0.5);
        let r = judge("ab#$");
        assert_eq!(r.symbol_fraction, 0.5);
        assert_eq!(judge("").longest_word_run, 0);
    }

    #[test]
    fn gibberish_rate_counts_degenerate_texts() {
        let texts = ["Paris is in France.", "", "virus virus virus virus"];
        assert_eq!(
            gibberish_rate(texts, &DegenerateThresholds::default()),
            (2, 3)
        );
        let none: [&str; 0] = [];
        assert_eq!(
            gibberish_rate(none, &DegenerateThresholds::default()),
            (0, 0)
        );
    }

    #[test]
    fn thresholds_are_validated_by_name() {
        let t = DegenerateThresholds::default();
        assert!(t.validate().is_ok());
        let e = DegenerateThresholds {
            max_non_word_fraction: 1.5,
            ..t
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string().starts_with("max_non_word_fraction: 1.5"),
            "{e}"
        );
        let e = DegenerateThresholds {
            repeated_word_run: 1,
            ..t
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("repeated_word_run: 1"), "{e}");
    }
}
