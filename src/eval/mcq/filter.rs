//! Question filters: keep a question only if the base model (no guardrails) answers it correctly
//! under every reordering of its options.
//!
//! * [`Orders::All`], the paper's (spec §5.1): all `n!` orders (24 for four options). A small model
//!   rarely passes it: SmolLM2-135M prefers some letters whatever they hold.
//! * [`Orders::Cyclic`]: the original order and its `n − 1` cyclic shifts, so every option is seen
//!   once at every position: a letter preference alone cannot pass, while the cost is `n` passes,
//!   not `n!`.
//!
//! An order is a permutation `perm` with `perm[j]` the original index of the option shown at
//! position `j`; the answer follows its option ([`permuted`]).

use std::str::FromStr;

use crate::data::McqItem;
use crate::{Error, Result};

/// Which reorderings of the options a question must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orders {
    /// Every permutation (the paper's 24-order filter).
    All,
    /// The original order and its cyclic shifts.
    Cyclic,
}

/// More options than this make [`Orders::All`] too expensive (6! = 720 passes per question).
pub const MAX_ALL_ORDERS_CHOICES: usize = 5;

impl Orders {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Orders::All => "all-orders",
            Orders::Cyclic => "cyclic",
        }
    }

    /// The orders of `n` options, the identity first.
    pub fn of(self, n: usize) -> Result<Vec<Vec<usize>>> {
        match self {
            Orders::Cyclic => Ok((0..n)
                .map(|s| (0..n).map(|j| (j + s) % n).collect())
                .collect()),
            Orders::All if n > MAX_ALL_ORDERS_CHOICES => Err(Error::out_of_range(
                "--filter",
                format!("all-orders on a question with {n} options"),
                format!("at most {MAX_ALL_ORDERS_CHOICES} options (or --filter cyclic)"),
            )),
            Orders::All => Ok(permutations(n)),
        }
    }
}

impl FromStr for Orders {
    type Err = Error;

    /// Parses `all-orders` or `cyclic`.
    fn from_str(s: &str) -> Result<Orders> {
        match s {
            "all-orders" => Ok(Orders::All),
            "cyclic" => Ok(Orders::Cyclic),
            _ => Err(Error::out_of_range("--filter", s, "all-orders or cyclic")),
        }
    }
}

/// All permutations of `0..n` in lexicographic order (the identity first).
pub fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for first in 0..n {
        for rest in permutations(n - 1) {
            let mut p = vec![first];
            p.extend(rest.into_iter().map(|x| if x >= first { x + 1 } else { x }));
            out.push(p);
        }
    }
    out
}

/// `item` with its options shown in `perm` order; the answer index follows the right option.
pub fn permuted(item: &McqItem, perm: &[usize]) -> McqItem {
    McqItem {
        choices: perm.iter().map(|&i| item.choices[i].clone()).collect(),
        answer: perm
            .iter()
            .position(|&i| i == item.answer)
            .expect("a permutation holds every index"),
        ..item.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> McqItem {
        McqItem {
            index: 0,
            id: None,
            subject: None,
            question: "Q".into(),
            choices: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            answer: 2,
        }
    }

    #[test]
    fn twenty_four_distinct_orders_identity_first() {
        let p = Orders::All.of(4).unwrap();
        assert_eq!(p.len(), 24);
        assert_eq!(p[0], vec![0, 1, 2, 3]);
        let mut sorted = p.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 24);
        assert!(p.iter().all(|q| {
            let mut s = q.clone();
            s.sort();
            s == vec![0, 1, 2, 3]
        }));
    }

    #[test]
    fn answer_follows_its_option_in_every_order() {
        let q = item();
        for perm in Orders::All.of(4).unwrap() {
            let r = permuted(&q, &perm);
            assert_eq!(r.choices[r.answer], "c", "order {perm:?}");
        }
        let r = permuted(&q, &[3, 2, 1, 0]);
        assert_eq!((r.choices.concat(), r.answer), ("dcba".to_string(), 1));
    }

    #[test]
    fn cyclic_shifts_put_each_option_at_each_position() {
        let p = Orders::Cyclic.of(4).unwrap();
        assert_eq!(p[0], vec![0, 1, 2, 3]);
        assert_eq!(p[1], vec![1, 2, 3, 0]);
        for pos in 0..4 {
            let mut seen: Vec<usize> = p.iter().map(|q| q[pos]).collect();
            seen.sort();
            assert_eq!(seen, vec![0, 1, 2, 3]);
        }
        let answers: Vec<usize> = p.iter().map(|q| permuted(&item(), q).answer).collect();
        assert_eq!(answers, vec![2, 1, 0, 3]);
    }

    #[test]
    fn all_orders_refuses_six_options() {
        let e = Orders::All.of(6).unwrap_err().to_string();
        assert!(e.contains("--filter") && e.contains("6 options"), "{e}");
        assert_eq!(Orders::All.of(5).unwrap().len(), 120);
    }
}
