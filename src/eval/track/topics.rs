//! Science topics of ARC questions, which carry no subject: a documented keyword rule, so that a
//! forget cluster ("life science") and its retain side can be built from a set the default model
//! does know something about.
//!
//! A question (stem and choices, lower-cased, split on non-letters) scores one point per word that
//! starts with a stem of a topic's list. It is [`Topic::Life`] when its life-science points exceed
//! the other two topics' together, [`Topic::Other`] when it has no life-science point at all, and
//! [`Topic::Mixed`] otherwise (kept out of both sides of the split, so neither side leaks into the
//! other).

use serde::Serialize;

use crate::data::McqItem;

/// Life science: organisms, their parts, health, heredity, ecology.
const LIFE: &[&str] = &[
    "organism",
    "cell",
    "plant",
    "animal",
    "species",
    "gene",
    "dna",
    "chromosom",
    "bacteri",
    "virus",
    "disease",
    "infect",
    "body",
    "blood",
    "heart",
    "lung",
    "muscle",
    "bone",
    "skin",
    "digest",
    "stomach",
    "brain",
    "nerve",
    "organs",
    "tissue",
    "food chain",
    "food web",
    "ecosystem",
    "photosynth",
    "reproduc",
    "offspring",
    "inherit",
    "trait",
    "predator",
    "prey",
    "habitat",
    "adapt",
    "evolv",
    "evolution",
    "insect",
    "bird",
    "fish",
    "mammal",
    "reptile",
    "amphibian",
    "frog",
    "seed",
    "flower",
    "leaf",
    "leaves",
    "root",
    "fung",
    "nutrient",
    "health",
    "vaccin",
    "protein",
    "enzyme",
    "hormone",
    "egg",
    "embryo",
    "pollin",
    "breath",
    "oxygen",
    "carbon dioxide",
    "decompos",
    "producer",
    "consumer",
    "population",
    "extinct",
    "fossil",
    "tree",
    "crop",
    "worm",
    "whale",
    "dog",
    "cow",
    "horse",
    "human",
    "baby",
    "tooth",
    "teeth",
    "vitamin",
];

/// Earth and space science.
const EARTH: &[&str] = &[
    "rock",
    "mineral",
    "soil",
    "weather",
    "climat",
    "earth",
    "moon",
    "sun",
    "planet",
    "stars",
    "ocean",
    "river",
    "erosion",
    "volcan",
    "earthquake",
    "glacier",
    "cloud",
    "rain",
    "season",
    "orbit",
    "galax",
    "solar",
    "tide",
    "atmospher",
    "sediment",
    "mountain",
    "continent",
    "storm",
];

/// Physical science: matter, energy, forces.
const PHYSICAL: &[&str] = &[
    "energy",
    "force",
    "motion",
    "magnet",
    "electric",
    "circuit",
    "light",
    "sound",
    "heat",
    "temperature",
    "mass",
    "density",
    "chemical",
    "atom",
    "molecul",
    "element",
    "mixture",
    "metal",
    "speed",
    "gravity",
    "friction",
    "wave",
    "liquid",
    "gas",
    "solid",
    "boil",
    "melt",
    "freez",
    "battery",
    "machine",
    "lens",
    "mirror",
    "volume",
    "weight",
];

/// A question's topic under the keyword rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// Life-science points exceed all others together.
    Life,
    /// No life-science point.
    Other,
    /// Some life-science points, but not a majority.
    Mixed,
}

impl Topic {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Life => "life science",
            Topic::Other => "other science",
            Topic::Mixed => "mixed",
        }
    }
}

impl std::str::FromStr for Topic {
    type Err = crate::Error;

    /// `life`, `other` or `mixed`.
    fn from_str(s: &str) -> crate::Result<Topic> {
        match s {
            "life" => Ok(Topic::Life),
            "other" => Ok(Topic::Other),
            "mixed" => Ok(Topic::Mixed),
            _ => Err(crate::Error::Invalid(format!(
                "unknown topic `{s}`: expected life, other or mixed"
            ))),
        }
    }
}

fn points(words: &[&str], text: &str, stems: &[&str]) -> usize {
    let multi = stems
        .iter()
        .filter(|s| s.contains(' ') && text.contains(*s))
        .count();
    let single = words
        .iter()
        .filter(|w| stems.iter().any(|s| !s.contains(' ') && w.starts_with(s)))
        .count();
    multi + single
}

/// The topic of `item` (stem and choices).
pub fn topic(item: &McqItem) -> Topic {
    let text = format!("{} {}", item.question, item.choices.join(" ")).to_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let life = points(&words, &text, LIFE);
    let other = points(&words, &text, EARTH) + points(&words, &text, PHYSICAL);
    match (life, other) {
        (0, _) => Topic::Other,
        (l, o) if l > o => Topic::Life,
        _ => Topic::Mixed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(q: &str, choices: &[&str]) -> McqItem {
        McqItem {
            index: 0,
            id: None,
            subject: None,
            question: q.into(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            answer: 0,
        }
    }

    #[test]
    fn keyword_rule_on_examples() {
        let fever = item(
            "Which factor will most likely cause a person to develop a fever?",
            &[
                "a leg muscle relaxing after exercise",
                "a bacterial population in the bloodstream",
                "several viral particles on the skin",
                "carbohydrates being digested in the stomach",
            ],
        );
        assert_eq!(topic(&fever), Topic::Life);
        let rocks = item(
            "Which process breaks rocks into soil?",
            &["weathering", "melting", "condensation", "evaporation"],
        );
        assert_eq!(topic(&rocks), Topic::Other);
        let mixed = item(
            "Which energy source do plants use?",
            &[
                "light from the sun",
                "heat from rocks",
                "wind",
                "electric current",
            ],
        );
        assert_eq!(topic(&mixed), Topic::Mixed);
        // Stems match word starts only: "scatter" is not "cat"-like noise, "seedless" is "seed".
        assert_eq!(
            topic(&item("What does light scatter off?", &["a mirror"])),
            Topic::Other
        );
        assert_eq!(
            topic(&item("Who discovered the cell?", &["Hooke"])),
            Topic::Life
        );
        assert_eq!(
            topic(&item("Why are grapes seedless?", &["breeding"])),
            Topic::Life
        );
    }
}
