//! An answer's text as it grows token by token: what can be sent so far, and where a stop string
//! ends it. Text that may still become a stop string, or an incomplete UTF-8 character, is held
//! back until the next token settles it.

/// The text of the tokens generated so far, and how much of it was sent.
#[derive(Debug, Clone)]
pub struct AnswerText {
    stops: Vec<String>,
    sent: String,
}

/// What one more token changed.
#[derive(Debug, Clone, PartialEq)]
pub struct TextUpdate {
    /// Newly sendable text.
    pub delta: String,
    /// A stop string was reached: the answer ends before it.
    pub stopped: bool,
}

impl AnswerText {
    /// An empty answer ended by any of `stops`.
    pub fn new(stops: Vec<String>) -> Self {
        AnswerText {
            stops,
            sent: String::new(),
        }
    }

    /// Everything sent so far.
    pub fn sent(&self) -> &str {
        &self.sent
    }

    /// Takes the decoded text of every token so far; returns what may be sent now. With
    /// `last`, nothing is held back (the answer ended).
    pub fn update(&mut self, text: &str, last: bool) -> TextUpdate {
        if !text.starts_with(&self.sent) {
            // The decoding of earlier tokens changed (a tokenizer merging across tokens): send
            // nothing until it agrees with what was sent again.
            return TextUpdate {
                delta: String::new(),
                stopped: false,
            };
        }
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.sent.len().saturating_sub(longest);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| text[from..].find(s.as_str()).map(|p| p + from))
            .min();
        if let Some(end) = hit {
            let end = end.max(self.sent.len());
            let delta = text[self.sent.len()..end].to_string();
            self.sent.push_str(&delta);
            return TextUpdate {
                delta,
                stopped: true,
            };
        }
        let mut safe = text.len();
        if !last {
            if text.ends_with('\u{FFFD}') {
                safe -= '\u{FFFD}'.len_utf8();
            }
            let held = self
                .stops
                .iter()
                .flat_map(|s| {
                    (1..s.len())
                        .filter(|&k| s.is_char_boundary(k))
                        .map(move |k| &s[..k])
                })
                .filter(|prefix| text[..safe].ends_with(prefix))
                .map(str::len)
                .max()
                .unwrap_or(0);
            safe -= held;
        }
        let safe = safe.max(self.sent.len());
        let delta = text[self.sent.len()..safe].to_string();
        self.sent.push_str(&delta);
        TextUpdate {
            delta,
            stopped: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut answer = AnswerText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut text = String::new();
        let mut deltas = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            text.push_str(p);
            let u = answer.update(&text, i + 1 == pieces.len());
            deltas.push(u.delta);
            if u.stopped {
                return (deltas, true, answer.sent().to_string());
            }
        }
        (deltas, false, answer.sent().to_string())
    }

    #[test]
    fn a_stop_string_across_tokens_ends_the_answer_before_it() {
        let (deltas, stopped, sent) = run(
            &["\nQ:"],
            &["The answer", " is 4.", "\n", "Q", ":", " next"],
        );
        assert!(stopped);
        assert_eq!(sent, "The answer is 4.");
        // The "\n" and "Q" were held back as a possible start of the stop string.
        assert_eq!(deltas, vec!["The answer", " is 4.", "", "", ""]);
    }

    #[test]
    fn a_held_prefix_that_is_not_a_stop_is_sent_later() {
        let (deltas, stopped, sent) = run(&["\nQ:"], &["a", "\n", "b", "c"]);
        assert!(!stopped);
        assert_eq!(sent, "a\nbc");
        assert_eq!(deltas, vec!["a", "", "\nb", "c"]);
    }

    #[test]
    fn an_incomplete_character_waits_for_its_next_token() {
        let mut answer = AnswerText::new(Vec::new());
        assert_eq!(answer.update("caf\u{FFFD}", false).delta, "caf");
        assert_eq!(answer.update("café", false).delta, "é");
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let (_, stopped, sent) = run(&["C", "B"], &["aBcC"]);
        assert!(stopped);
        assert_eq!(sent, "a");
    }
}
