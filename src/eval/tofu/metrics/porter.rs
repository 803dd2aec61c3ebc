//! The Porter stemmer as `rouge-score` uses it: NLTK's `PorterStemmer()` in its default
//! `NLTK_EXTENSIONS` mode (`nltk/stem/porter.py`, NLTK 3.9/3.10), ported rule for rule: the table of
//! irregular forms, Porter's steps 1a–5b with Martin Porter's and NLTK's extensions, and NLTK's
//! quirks (a failed condition on the first matching suffix ends a step; `alli` is tried before the
//! step-2 table; `logi` keeps its `l` with the stem).
//!
//! Words are lowercase ASCII letters and digits (what the ROUGE tokenizer hands over); anything
//! else is returned unchanged.

/// NLTK's irregular forms: word → stem, looked up before any rule.
const IRREGULAR: [(&str, &str); 16] = [
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

/// The stem of `word` (see the [module documentation](self)).
pub fn porter_stem(word: &str) -> String {
    if !word
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return word.to_string();
    }
    if let Some((_, stem)) = IRREGULAR.iter().find(|(w, _)| *w == word) {
        return stem.to_string();
    }
    if word.len() <= 2 {
        return word.to_string();
    }
    let mut w = word.to_string();
    for step in [step1a, step1b, step1c, step2, step3, step4, step5a, step5b] {
        w = step(&w);
    }
    w
}

/// Per letter, whether it is a consonant: not a vowel, and `y` only after a vowel (or first).
fn consonants(w: &str) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, c) in w.bytes().enumerate() {
        let cons = match c {
            b'a' | b'e' | b'i' | b'o' | b'u' => false,
            b'y' => i == 0 || !flags[i - 1],
            _ => true,
        };
        flags.push(cons);
    }
    flags
}

fn is_consonant(w: &str, i: usize) -> bool {
    consonants(&w[..=i])[i]
}

/// Porter's m: the number of vowel→consonant transitions.
fn measure(stem: &str) -> usize {
    consonants(stem)
        .windows(2)
        .filter(|p| !p[0] && p[1])
        .count()
}

fn positive_measure(stem: &str) -> bool {
    measure(stem) > 0
}

fn contains_vowel(stem: &str) -> bool {
    consonants(stem).contains(&false)
}

/// `*d`: ends with a double consonant.
fn ends_double_consonant(w: &str) -> bool {
    let b = w.as_bytes();
    b.len() >= 2 && b[b.len() - 1] == b[b.len() - 2] && is_consonant(w, b.len() - 1)
}

/// `*o`: ends consonant–vowel–consonant, the last not `w`, `x` or `y`; or (NLTK) is a two-letter
/// vowel–consonant word.
fn ends_cvc(w: &str) -> bool {
    let n = w.len();
    let c = consonants(w);
    (n >= 3
        && c[n - 3]
        && !c[n - 2]
        && c[n - 1]
        && !matches!(w.as_bytes()[n - 1], b'w' | b'x' | b'y'))
        || (n == 2 && !c[0] && c[1])
}

/// A rule's condition on the stem left after removing its suffix.
type Cond<'a> = Option<&'a dyn Fn(&str) -> bool>;

/// `f` as a rule's condition.
fn when(f: &dyn Fn(&str) -> bool) -> Cond<'_> {
    Some(f)
}

/// NLTK's `_apply_rule_list`: the first rule whose suffix matches decides; if its condition fails,
/// the word is returned unchanged. The suffix `*d` matches a double consonant (both removed).
fn apply_rules(word: &str, rules: &[(&str, &str, Cond)]) -> String {
    for (suffix, replacement, cond) in rules {
        if *suffix == "*d" && ends_double_consonant(word) {
            let stem = &word[..word.len() - 2];
            return if cond.is_none_or(|c| c(stem)) {
                format!("{stem}{replacement}")
            } else {
                word.to_string()
            };
        }
        if let Some(stem) = word.strip_suffix(suffix) {
            return if cond.is_none_or(|c| c(stem)) {
                format!("{stem}{replacement}")
            } else {
                word.to_string()
            };
        }
    }
    word.to_string()
}

fn step1a(w: &str) -> String {
    if w.len() == 4 && w.ends_with("ies") {
        return format!("{}ie", &w[..1]);
    }
    apply_rules(
        w,
        &[
            ("sses", "ss", None),
            ("ies", "i", None),
            ("ss", "ss", None),
            ("s", "", None),
        ],
    )
}

fn step1b(w: &str) -> String {
    if let Some(stem) = w.strip_suffix("ied") {
        return if w.len() == 4 {
            format!("{stem}ie")
        } else {
            format!("{stem}i")
        };
    }
    if let Some(stem) = w.strip_suffix("eed") {
        return if positive_measure(stem) {
            format!("{stem}ee")
        } else {
            w.to_string()
        };
    }
    let Some(inter) = ["ed", "ing"]
        .iter()
        .filter_map(|s| w.strip_suffix(s))
        .find(|stem| contains_vowel(stem))
    else {
        return w.to_string();
    };
    let last = inter.as_bytes()[inter.len() - 1];
    let single = (last as char).to_string();
    let not_lsz = move |_: &str| !matches!(last, b'l' | b's' | b'z');
    let cvc = |stem: &str| measure(stem) == 1 && ends_cvc(stem);
    apply_rules(
        inter,
        &[
            ("at", "ate", None),
            ("bl", "ble", None),
            ("iz", "ize", None),
            ("*d", single.as_str(), when(&not_lsz)),
            ("", "e", when(&cvc)),
        ],
    )
}

fn step1c(w: &str) -> String {
    let cond = |stem: &str| stem.len() > 1 && is_consonant(stem, stem.len() - 1);
    apply_rules(w, &[("y", "i", when(&cond))])
}

fn step2(w: &str) -> String {
    if let Some(stem) = w.strip_suffix("alli") {
        if positive_measure(stem) {
            return step2(&format!("{stem}al"));
        }
    }
    let m: &dyn Fn(&str) -> bool = &positive_measure;
    let logi = |_: &str| positive_measure(&w[..w.len() - 3]);
    apply_rules(
        w,
        &[
            ("ational", "ate", Some(m)),
            ("tional", "tion", Some(m)),
            ("enci", "ence", Some(m)),
            ("anci", "ance", Some(m)),
            ("izer", "ize", Some(m)),
            ("bli", "ble", Some(m)),
            ("alli", "al", Some(m)),
            ("entli", "ent", Some(m)),
            ("eli", "e", Some(m)),
            ("ousli", "ous", Some(m)),
            ("ization", "ize", Some(m)),
            ("ation", "ate", Some(m)),
            ("ator", "ate", Some(m)),
            ("alism", "al", Some(m)),
            ("iveness", "ive", Some(m)),
            ("fulness", "ful", Some(m)),
            ("ousness", "ous", Some(m)),
            ("aliti", "al", Some(m)),
            ("iviti", "ive", Some(m)),
            ("biliti", "ble", Some(m)),
            ("fulli", "ful", Some(m)),
            ("logi", "log", when(&logi)),
        ],
    )
}

fn step3(w: &str) -> String {
    let m: &dyn Fn(&str) -> bool = &positive_measure;
    apply_rules(
        w,
        &[
            ("icate", "ic", Some(m)),
            ("ative", "", Some(m)),
            ("alize", "al", Some(m)),
            ("iciti", "ic", Some(m)),
            ("ical", "ic", Some(m)),
            ("ful", "", Some(m)),
            ("ness", "", Some(m)),
        ],
    )
}

fn step4(w: &str) -> String {
    let m: &dyn Fn(&str) -> bool = &|stem: &str| measure(stem) > 1;
    let ion = |stem: &str| measure(stem) > 1 && matches!(stem.as_bytes().last(), Some(b's' | b't'));
    let rules: Vec<(&str, &str, Cond)> = [
        "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent",
    ]
    .into_iter()
    .map(|s| (s, "", Some(m)))
    .chain([("ion", "", when(&ion))])
    .chain(
        ["ou", "ism", "ate", "iti", "ous", "ive", "ize"]
            .into_iter()
            .map(|s| (s, "", Some(m))),
    )
    .collect();
    apply_rules(w, &rules)
}

fn step5a(w: &str) -> String {
    if let Some(stem) = w.strip_suffix('e') {
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_string();
        }
    }
    w.to_string()
}

fn step5b(w: &str) -> String {
    let cond = |_: &str| measure(&w[..w.len() - 1]) > 1;
    apply_rules(w, &[("ll", "l", when(&cond))])
}

#[cfg(test)]
mod tests {
    use super::porter_stem;

    #[test]
    fn paper_examples() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("hopping", "hop"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("geology", "geolog"),
            ("controlling", "control"),
            ("skies", "sky"),
            ("dying", "die"),
            ("1956", "1956"),
        ] {
            assert_eq!(porter_stem(w), s, "{w}");
        }
    }
}
