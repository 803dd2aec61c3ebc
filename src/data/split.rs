//! The canonical split of every question set (WMDP, MMLU, ARC, TOFU): what may be fitted on and
//! what may only be evaluated.
//!
//! The rule is the one written in `../shared/data/splits/wmdp-*.json`: a question is in
//! `selection` iff the first hex digit of sha256 of its UTF-8 question text is 0–7, otherwise it
//! is `heldout`. It depends on the question text alone, so it is the same for every file that
//! holds the question, and nothing fitted (feature selection, SAE training, calibration) may ever
//! see a held-out question.

use sha2::{Digest, Sha256};

/// Which part of a question set to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Split {
    /// Every question.
    #[default]
    All,
    /// Questions whose sha256 starts with hex digit 0–7: the only ones anything may be fitted on.
    Selection,
    /// The other questions, for evaluation only.
    Heldout,
}

impl Split {
    /// The split `question` is in: [`Split::Selection`] or [`Split::Heldout`], never `All`.
    pub fn of(question: &str) -> Split {
        if Sha256::digest(question.as_bytes())[0] < 0x80 {
            Split::Selection
        } else {
            Split::Heldout
        }
    }

    /// Whether `question` belongs to this split.
    pub fn contains(self, question: &str) -> bool {
        self == Split::All || Split::of(question) == self
    }
}

impl std::str::FromStr for Split {
    type Err = crate::Error;

    /// Parses `selection`, `heldout` or `all`.
    fn from_str(s: &str) -> crate::Result<Split> {
        match s {
            "selection" => Ok(Split::Selection),
            "heldout" => Ok(Split::Heldout),
            "all" => Ok(Split::All),
            _ => Err(crate::Error::out_of_range(
                "split",
                s,
                "selection, heldout or all",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_the_first_hex_digit() {
        // sha256("abc") = ba7816bf… → heldout; sha256("") = e3b0c442… → heldout;
        // sha256("b") = 3e23e816… → selection.
        assert_eq!(Split::of("abc"), Split::Heldout);
        assert_eq!(Split::of(""), Split::Heldout);
        assert_eq!(Split::of("b"), Split::Selection);
        assert!(Split::All.contains("abc"));
        assert!(Split::Selection.contains("b") && !Split::Heldout.contains("b"));
    }

    #[test]
    fn split_names_parse() {
        assert_eq!("heldout".parse::<Split>().unwrap(), Split::Heldout);
        let e = "test".parse::<Split>().unwrap_err().to_string();
        assert!(e.contains("split") && e.contains("test"), "{e}");
    }
}
